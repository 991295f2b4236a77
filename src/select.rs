//! DARTS-PT (Wang et al., ICLR 2021; reference `ruocwang/darts-pt`, `sota/cnn/projection.py`,
//! `nasbench201/`): perturbation-based architecture selection after a search, for any supernet
//! that can apply [`CellProjection`]s to its op weights.
//!
//! [`perturbation_select`] takes the decisions and calls back into a [`PtTarget`] to evaluate
//! candidate decisions and to fine-tune between them. The CIFAR-10 driver
//! (`cifar10_search --select pt`) and the NAS-Bench-201 example implement it.
//!
//! With `P` decisions in all (one per edge, and one per node that has more than two inputs and
//! allows topology decisions), the schedule runs `interval · (P − 1) + 1` fine-tuning epochs.
//! One decision per cell type is taken every `interval` epochs, and at the last epoch:
//!
//! 1. **Operations.** One undecided edge at a time, in seeded random order. For each candidate,
//!    the target reports the validation accuracy with that candidate's weight on that edge set
//!    to zero. The candidate whose removal *lowers* the accuracy most becomes the edge's op: its
//!    weights become the op's one-hot vector.
//! 2. **Topology.** Once every edge is decided, one eligible node at a time, in random order.
//!    While more than two edges remain, the edge whose removal (all its weights zeroed) leaves
//!    the highest accuracy is dropped.

use darts_cell::cnn::supernet::CellProjection;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::ops::Range;

/// One cell type, as DARTS-PT sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PtCell {
    /// Its name in the decisions (`normal`, `reduce`, `cell`).
    pub name: String,
    /// Candidates per edge.
    pub ops: usize,
    /// The edges of each intermediate node (consecutive ranges, in order).
    pub node_edges: Vec<Range<usize>>,
    /// Whether nodes with more than two inputs are pruned to two (DARTS cells; a
    /// NAS-Bench-201 cell keeps every edge).
    pub topology: bool,
}

impl PtCell {
    fn edges(&self) -> usize {
        self.node_edges.last().map_or(0, |r| r.end)
    }

    fn wide_nodes(&self) -> Vec<usize> {
        if !self.topology {
            return Vec::new();
        }
        (0..self.node_edges.len())
            .filter(|&i| self.node_edges[i].len() > 2)
            .collect()
    }
}

/// What DARTS-PT needs from a search: evaluations of candidate decisions, and fine-tuning.
pub trait PtTarget {
    /// The error fine-tuning may end with.
    type Error;

    /// Validation accuracy of the supernet with `projections` (one per cell type, in the order
    /// of the [`PtCell`]s; the candidate decision is in their `masked` entries), without
    /// gradients and without changing the supernet.
    fn accuracy(&mut self, projections: &[CellProjection]) -> f64;

    /// Fine-tune for one epoch (`epoch` of `epochs`) with `projections` applied, which the
    /// supernet keeps afterwards.
    fn tune(
        &mut self,
        epoch: usize,
        epochs: usize,
        projections: &[CellProjection],
    ) -> Result<(), Self::Error>;
}

/// One DARTS-PT decision, as written to `selection.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PtDecision {
    /// Fine-tuning epoch at which it was taken.
    pub epoch: usize,
    /// The cell type's name.
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

/// The outcome of [`perturbation_select`].
#[derive(Clone, Debug, PartialEq)]
pub struct PtOutcome {
    /// The decisions, in order.
    pub decisions: Vec<PtDecision>,
    /// The final projection of each cell type.
    pub projections: Vec<CellProjection>,
    /// Fine-tuning epochs run.
    pub tune_epochs: usize,
}

/// The fine-tuning epochs DARTS-PT runs for `cells`: `interval · (P − 1) + 1`, `P` the
/// decisions of the cell type that takes the most (one per edge, one per node pruned to two
/// inputs).
pub fn tune_epochs(cells: &[PtCell], interval: usize) -> usize {
    let decisions = cells
        .iter()
        .map(|c| c.edges() + c.wide_nodes().len())
        .max()
        .unwrap_or(0);
    interval.max(1) * decisions.saturating_sub(1) + 1
}

/// Run DARTS-PT on `target` (see the module documentation): fine-tuning epochs every
/// `interval` (≥ 1), edge and node orders drawn from `seed`.
pub fn perturbation_select<T: PtTarget>(
    target: &mut T,
    cells: &[PtCell],
    interval: usize,
    seed: u64,
) -> Result<PtOutcome, T::Error> {
    let interval = interval.max(1);
    let tune_epochs = tune_epochs(cells, interval);
    let mut projections: Vec<CellProjection> = cells
        .iter()
        .map(|c| CellProjection {
            ops: vec![None; c.edges()],
            edges: vec![None; c.node_edges.len()],
            masked: Vec::new(),
        })
        .collect();
    let mut undecided_edges: Vec<Vec<usize>> =
        cells.iter().map(|c| (0..c.edges()).collect()).collect();
    let mut undecided_nodes: Vec<Vec<usize>> = cells.iter().map(PtCell::wide_nodes).collect();
    let mut rng = StdRng::seed_from_u64(seed ^ 0xDA27_5E1E);
    let mut decisions = Vec::new();
    for t in 0..tune_epochs {
        if t % interval == 0 || t + 1 == tune_epochs {
            for (c, cell) in cells.iter().enumerate() {
                let mut evaluate = |mask: (usize, Option<usize>)| {
                    let mut p = projections.clone();
                    p[c].masked.push(mask);
                    target.accuracy(&p)
                };
                if !undecided_edges[c].is_empty() {
                    let pick = rng.random_range(0..undecided_edges[c].len());
                    let e = undecided_edges[c].remove(pick);
                    let accs: Vec<(usize, f64)> =
                        (0..cell.ops).map(|k| (k, evaluate((e, Some(k))))).collect();
                    // The op whose removal hurts most (lowest accuracy; first on ties).
                    let best = accs
                        .iter()
                        .fold(accs[0], |b, &a| if a.1 < b.1 { a } else { b })
                        .0;
                    projections[c].ops[e] = Some(best);
                    decisions.push(PtDecision {
                        epoch: t,
                        cell: cell.name.clone(),
                        kind: "op".into(),
                        target: e,
                        chosen: vec![best],
                        accuracies: accs,
                    });
                } else if !undecided_nodes[c].is_empty() {
                    let pick = rng.random_range(0..undecided_nodes[c].len());
                    let i = undecided_nodes[c].remove(pick);
                    let mut kept: Vec<usize> = cell.node_edges[i].clone().collect();
                    let mut accs = Vec::new();
                    while kept.len() > 2 {
                        let mut worst: Option<(usize, f64)> = None;
                        for &e in &kept {
                            let acc = evaluate((e, None));
                            accs.push((e, acc));
                            // The edge whose removal leaves the highest accuracy (first on ties).
                            if worst.is_none_or(|w| acc > w.1) {
                                worst = Some((e, acc));
                            }
                        }
                        let drop = worst.expect("edges to evaluate").0;
                        kept.retain(|&e| e != drop);
                    }
                    projections[c].edges[i] = Some(kept.clone());
                    decisions.push(PtDecision {
                        epoch: t,
                        cell: cell.name.clone(),
                        kind: "edge".into(),
                        target: i,
                        chosen: kept,
                        accuracies: accs,
                    });
                }
            }
        }
        target.tune(t, tune_epochs, &projections)?;
    }
    Ok(PtOutcome {
        decisions,
        projections,
        tune_epochs,
    })
}
