//! DARTS-PT (Wang et al., ICLR 2021; reference `ruocwang/darts-pt`, `sota/cnn/projection.py`):
//! perturbation-based architecture selection after a search, instead of reading the genotype off
//! the largest α.
//!
//! Starting from the searched supernet, the weights are fine-tuned (SGD restarted at a tenth of
//! the search's learning rate, cosine to `lr_min`, the architecture steps going on) for
//! `interval · P + 1` epochs, where `P = edges + (nodes − 1) − 1` decisions are taken, one every
//! `interval` epochs, on both cell types:
//!
//! 1. **Operations**, one undecided edge at a time in random order: for each candidate, the
//!    validation accuracy of the supernet with that candidate's weight zeroed on that edge; the
//!    candidate whose removal *lowers* the accuracy most is the edge's op (its weights become the
//!    op's one-hot vector).
//! 2. **Topology**, one node with more than two inputs at a time in random order: while more
//!    than two edges remain, the edge whose removal (all its weights zeroed) leaves the highest
//!    accuracy goes.
//!
//! The evaluations run in training mode (batch statistics, as the reference's
//! `infer(..., _eval=False)`) over the whole validation split, without gradients. The genotype is
//! then derived from the projected weights by the usual rule.

use super::search::{SearchLoaders, ValSampling};
use super::{evaluate, to_batch, Net, SearchConfig};
use crate::run::{progress, RunError};
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use darts_bilevel::{CosineLr, Sgd};
use darts_cell::cnn::supernet::CellProjection;
use darts_cell::ImageBatch;
use darts_genotype::Genotype;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// How the genotype is chosen after the search.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// Read it off the architecture weights (the method's derivation rule).
    #[default]
    Darts,
    /// DARTS-PT's perturbation-based selection with fine-tuning.
    Pt {
        /// Fine-tuning epochs between two decisions (the reference's `--proj_intv`, 5).
        interval: usize,
    },
}

/// One DARTS-PT decision, as written to `selection.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PtDecision {
    /// Fine-tuning epoch at which it was taken.
    pub epoch: usize,
    /// `normal` or `reduce`.
    pub cell: String,
    /// `op` (an edge's operation) or `edge` (a node's inputs).
    pub kind: String,
    /// The edge (for `op`) or the node, 0-based among the intermediate nodes (for `edge`).
    pub target: usize,
    /// The op index chosen (for `op`) or the edges kept (for `edge`).
    pub chosen: Vec<usize>,
    /// Validation accuracy of each evaluated removal, in evaluation order: `(removed, acc)`,
    /// `removed` an op index (for `op`) or an edge (for `edge`).
    pub accuracies: Vec<(usize, f64)>,
}

/// The result of DARTS-PT (`selection.json` of a search run with [`Selection::Pt`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PtSelection {
    /// The decisions, in order.
    pub decisions: Vec<PtDecision>,
    /// The genotype of the projected supernet.
    pub genotype: Genotype,
    /// Fine-tuning epochs run.
    pub tune_epochs: usize,
}

/// Edges of node `i`.
fn node_edges(i: usize) -> std::ops::Range<usize> {
    let start = i * (i + 3) / 2;
    start..start + 2 + i
}

fn cell_of<B: AutodiffBackend>(net: &mut Net<B>, reduce: bool) -> &mut CellProjection {
    if reduce {
        &mut net.projection.reduce
    } else {
        &mut net.projection.normal
    }
}

/// Validation accuracy of the supernet with `mask` added to the projection of one cell type.
fn accuracy_with<B: AutodiffBackend>(
    search: &darts_bilevel::Bilevel<B, Net<B>>,
    loaders: &SearchLoaders,
    device: &B::Device,
    reduce: bool,
    mask: (usize, Option<usize>),
) -> f64 {
    let mut net = search.model.clone();
    cell_of(&mut net, reduce).masked.push(mask);
    let eval = net.valid();
    darts_ops::mode::train_mode(|| {
        evaluate::<B::InnerBackend, _>(&loaders.infer, device, |x| eval.forward(x)).1
    })
}

/// Run DARTS-PT on the searched supernet in `search`; see the module documentation.
pub(super) fn select_pt<B: AutodiffBackend>(
    search: &mut darts_bilevel::Bilevel<B, Net<B>>,
    loaders: &SearchLoaders,
    cfg: &SearchConfig,
    interval: usize,
    show: bool,
    device: &B::Device,
) -> Result<PtSelection, RunError> {
    let steps = cfg.steps;
    let edges: usize = (0..steps).map(|i| 2 + i).sum();
    let ops = search.model.op_names.len();
    let wide_nodes: Vec<usize> = (0..steps).filter(|&i| 2 + i > 2).collect();
    let decisions_total = edges + wide_nodes.len();
    let tune_epochs = interval * decisions_total.saturating_sub(1) + 1;
    for reduce in [false, true] {
        let p = cell_of(&mut search.model, reduce);
        p.ops = vec![None; edges];
        p.edges = vec![None; steps];
        p.masked.clear();
    }
    // Fine-tuning: SGD restarted at lr/10, cosine over the tuning epochs.
    search.w_opt = Sgd::new(cfg.momentum, cfg.weight_decay);
    search.w_opt.nesterov = cfg.method.nesterov;
    let lr = CosineLr {
        max: cfg.lr / 10.0,
        min: cfg.lr_min,
        epochs: tune_epochs,
    };
    let mut rng = StdRng::seed_from_u64(cfg.seed ^ 0xDA27_5E1E);
    let mut decisions = Vec::new();
    let mut undecided_edges: [Vec<usize>; 2] = [(0..edges).collect(), (0..edges).collect()];
    let mut undecided_nodes: [Vec<usize>; 2] = [wide_nodes.clone(), wide_nodes.clone()];
    let pb = progress(tune_epochs, "DARTS-PT".into(), show);
    for t in 0..tune_epochs {
        if t % interval.max(1) == 0 || t + 1 == tune_epochs {
            for (c, reduce) in [(0, false), (1, true)] {
                let cell = if reduce { "reduce" } else { "normal" };
                if !undecided_edges[c].is_empty() {
                    let pick = rng.random_range(0..undecided_edges[c].len());
                    let e = undecided_edges[c].remove(pick);
                    let accs: Vec<(usize, f64)> = (0..ops)
                        .map(|k| {
                            (
                                k,
                                accuracy_with(search, loaders, device, reduce, (e, Some(k))),
                            )
                        })
                        .collect();
                    // The op whose removal hurts most (lowest accuracy; first on ties).
                    let best = accs
                        .iter()
                        .fold(accs[0], |b, &a| if a.1 < b.1 { a } else { b })
                        .0;
                    cell_of(&mut search.model, reduce).ops[e] = Some(best);
                    decisions.push(PtDecision {
                        epoch: t,
                        cell: cell.into(),
                        kind: "op".into(),
                        target: e,
                        chosen: vec![best],
                        accuracies: accs,
                    });
                } else if !undecided_nodes[c].is_empty() {
                    let pick = rng.random_range(0..undecided_nodes[c].len());
                    let i = undecided_nodes[c].remove(pick);
                    let mut kept: Vec<usize> = node_edges(i).collect();
                    let mut accs = Vec::new();
                    while kept.len() > 2 {
                        let mut worst: Option<(usize, f64)> = None;
                        for &e in &kept {
                            let acc = accuracy_with(search, loaders, device, reduce, (e, None));
                            accs.push((e, acc));
                            // The edge whose removal leaves the highest accuracy (first on ties).
                            if worst.is_none_or(|w| acc > w.1) {
                                worst = Some((e, acc));
                            }
                        }
                        let drop = worst.expect("edges to evaluate").0;
                        kept.retain(|&e| e != drop);
                    }
                    cell_of(&mut search.model, reduce).edges[i] = Some(kept.clone());
                    decisions.push(PtDecision {
                        epoch: t,
                        cell: cell.into(),
                        kind: "edge".into(),
                        target: i,
                        chosen: kept,
                        accuracies: accs,
                    });
                }
            }
        }
        tune_epoch(search, loaders, cfg, t, lr.at(t), device)?;
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(PtSelection {
        genotype: search.model.genotype(),
        decisions,
        tune_epochs,
    })
}

/// One fine-tuning epoch (architecture and weight steps on the projected supernet) at `lr`,
/// with data orders keyed apart from the search's epochs.
fn tune_epoch<B: AutodiffBackend>(
    search: &mut darts_bilevel::Bilevel<B, Net<B>>,
    loaders: &SearchLoaders,
    cfg: &SearchConfig,
    t: usize,
    lr: f64,
    device: &B::Device,
) -> Result<(), RunError> {
    let key = (1 << 30) + t;
    let mut train = loaders
        .train
        .epoch(key, 0)
        .map(|h| to_batch::<B>(&h, device));
    let val = &loaders.val;
    let mut val_stream: Box<dyn Iterator<Item = ImageBatch<B>>> = match cfg.val_sampling {
        ValSampling::Redraw => Box::new((0..).map(move |step: usize| {
            let k = (1 << 41) + t * (1 << 20) + step;
            to_batch::<B>(&val.batch(k, 0, &val.order(k)), device)
        })),
        ValSampling::Cycle => Box::new(
            (0..)
                .flat_map(move |k| val.epoch((1 << 31) + t * 1000 + k, 0))
                .map(|h| to_batch::<B>(&h, device)),
        ),
    };
    let stats = search.run_epoch_with(
        key,
        |_, _| Some((train.next()?, val_stream.next()?, lr)),
        |_| {},
    );
    match stats.non_finite {
        Some(bad) => Err(RunError::diverged(
            "DARTS-PT fine-tuning",
            t,
            bad.step,
            &bad.what,
            "; lower --lr",
        )),
        None => Ok(()),
    }
}
