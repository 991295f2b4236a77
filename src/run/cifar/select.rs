//! DARTS-PT after a CIFAR-10 search ([`crate::select`] does the decisions): the target is the
//! searched supernet. Candidate decisions are evaluated over the whole validation split in
//! training mode (batch statistics, as the reference's `infer(..., _eval=False)`), without
//! gradients. Fine-tuning restarts SGD at a tenth of the search's learning rate, cosine to
//! `lr_min`, and keeps the architecture steps going. The genotype is then derived from the
//! projected weights by the usual rule.

use super::search::{shard_host, SearchLoaders};
use super::{evaluate, to_batch, Net, SearchConfig};
use crate::run::peer::group_error;
use crate::run::{progress, RunError};
pub use crate::select::PtDecision;
use crate::select::{perturbation_select, tune_epochs, PtCell, PtTarget};
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use darts_bilevel::sync::average_buffers;
use darts_bilevel::{CosineLr, Sgd};
use darts_cell::cnn::supernet::{darts_node_edges, CellProjection};
use darts_genotype::Genotype;
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

/// The searched supernet as DARTS-PT's target: evaluations on the validation split in training
/// mode, fine-tuning epochs of the search's steps.
struct Target<'a, B: AutodiffBackend> {
    search: &'a mut darts_bilevel::Bilevel<B, Net<B>>,
    loaders: &'a SearchLoaders,
    cfg: &'a SearchConfig,
    lr: CosineLr,
    device: &'a B::Device,
    progress: indicatif::ProgressBar,
}

fn set<B: AutodiffBackend>(net: &mut Net<B>, p: &[CellProjection]) {
    net.projection.normal = p[0].clone();
    net.projection.reduce = p[1].clone();
}

impl<B: AutodiffBackend> PtTarget for Target<'_, B> {
    type Error = RunError;

    fn accuracy(&mut self, p: &[CellProjection]) -> f64 {
        let mut net = self.search.model.clone();
        set(&mut net, p);
        let eval = net.valid();
        // Data-parallel: each peer evaluates whole batches (every `world`-th), so the batch
        // statistics and the correct counts are those of one device; the counts are summed.
        let sync = self.search.sync.clone();
        darts_ops::mode::train_mode(|| {
            evaluate::<B::InnerBackend, _>(&self.loaders.infer, self.device, sync.as_deref(), |x| {
                eval.forward(x)
            })
            .1
        })
    }

    fn tune(&mut self, epoch: usize, _: usize, p: &[CellProjection]) -> Result<(), RunError> {
        set(&mut self.search.model, p);
        let lr = self.lr.at(epoch);
        tune_epoch(self.search, self.loaders, self.cfg, epoch, lr, self.device)?;
        self.progress.inc(1);
        Ok(())
    }
}

/// Run DARTS-PT on the searched supernet in `search` ([`crate::select`]).
pub(super) fn select_pt<B: AutodiffBackend>(
    search: &mut darts_bilevel::Bilevel<B, Net<B>>,
    loaders: &SearchLoaders,
    cfg: &SearchConfig,
    interval: usize,
    show: bool,
    device: &B::Device,
) -> Result<PtSelection, RunError> {
    let ops = search.model.op_names.len();
    let cells: Vec<PtCell> = ["normal", "reduce"]
        .into_iter()
        .map(|name| PtCell {
            name: name.into(),
            ops,
            node_edges: darts_node_edges(cfg.steps),
            topology: true,
        })
        .collect();
    let tune_epochs = tune_epochs(&cells, interval);
    // Fine-tuning: SGD restarted at lr/10, cosine over the tuning epochs.
    search.w_opt = Sgd::new(cfg.momentum, cfg.weight_decay);
    search.w_opt.nesterov = cfg.method.nesterov;
    let mut target = Target {
        search,
        loaders,
        cfg,
        lr: CosineLr {
            max: cfg.lr / 10.0,
            min: cfg.lr_min,
            epochs: tune_epochs,
        },
        device,
        progress: progress(tune_epochs, "DARTS-PT".into(), show),
    };
    let out = perturbation_select(&mut target, &cells, interval, cfg.seed)?;
    target.progress.finish_and_clear();
    set(&mut target.search.model, &out.projections);
    Ok(PtSelection {
        genotype: target.search.model.genotype(),
        decisions: out.decisions,
        tune_epochs: out.tune_epochs,
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
    // Data-parallel: every peer takes its rows of each batch, as in the search's epochs.
    let (rank, world) = search
        .sync
        .as_ref()
        .map_or((0, 1), |s| (s.rank(), s.world()));
    let mut train = loaders
        .train
        .epoch(key, 0)
        .filter(move |h| h.len() >= world)
        .map(move |h| to_batch::<B>(&shard_host(&h, rank, world), device));
    let mut val_stream = loaders.val_stream::<B>(
        cfg.val_sampling,
        (1 << 41) + t * (1 << 20),
        (1 << 31) + t * 1000,
        (rank, world),
        device,
    );
    let stats = search.run_epoch_with(
        key,
        |_, _| Some((train.next()?, val_stream.next()?, lr)),
        |_| {},
    );
    if let Some(why) = stats.aborted {
        return Err(group_error(rank, why));
    }
    if let Some(s) = &search.sync {
        // The replicas' running statistics followed their own shards: average them.
        search.model = average_buffers(search.model.clone(), s.as_ref());
    }
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
