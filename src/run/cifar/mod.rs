//! The CIFAR-10 protocol of the paper (§3.1–3.2), as library functions that the examples
//! `cifar10_search` and `cifar10_train` wrap: architecture search on a train/val split of the
//! training set, and training a derived network from scratch.
//!
//! Both write into an output directory: `metrics.jsonl` (one JSON object per epoch), plots
//! (SVG), an atomic `checkpoint.safetensors` after every epoch (resumable), and for the search the
//! genotype of every epoch (`genotypes/epoch_NNN.{json,py}`), the final genotype and its cell
//! diagrams.

use burn::tensor::backend::Backend;
use burn::tensor::ElementConversion;
use darts_cell::batch::{correct, cross_entropy};
use darts_cell::{ImageBatch, SearchNetwork};
use darts_data::cifar::{Cifar10, HostBatch, Loader};
use darts_ops::DartsOp;
use std::path::Path;
use std::sync::Arc;

mod search;
mod select;
mod train;

pub use super::{RunError, RunOptions};

/// Why a network needs at least 3 cells.
const LAYERS_RULE: &str = "must be at least 3 (two reduction cells at layers/3 and 2·layers/3)";
pub use search::{
    run_search, run_search_parallel, run_search_peer, SearchConfig, SearchEpoch, SearchSummary,
    ValSampling,
};
pub use select::{PtDecision, PtSelection, Selection};
pub use train::{
    evaluate_weights, run_train, run_train_parallel, run_train_peer, TrainConfig, TrainEpoch,
    TrainSummary, WeightsEvaluation, WEIGHTS,
};

pub(super) fn load_train(data: &Path, limit: Option<usize>) -> Result<Arc<Cifar10>, RunError> {
    let mut d = Cifar10::load_train(data)?;
    if let Some(n) = limit {
        if n < d.len() {
            d = d.subset(&(0..n).collect::<Vec<_>>());
        }
    }
    Ok(Arc::new(d))
}

type Net<B> = SearchNetwork<B, DartsOp<B>, darts_mixed_op::AnyRelaxation>;

pub(super) fn to_batch<B: Backend>(h: &HostBatch, device: &B::Device) -> ImageBatch<B> {
    ImageBatch::from_host(h.images.clone(), h.dims(), &h.labels, device)
}

pub(super) fn f64s(rows: Vec<Vec<f32>>) -> Vec<Vec<f64>> {
    rows.into_iter()
        .map(|r| r.into_iter().map(f64::from).collect())
        .collect()
}

/// Loss and accuracy in evaluation mode (inner backend: running BN statistics, no graph).
/// Data-parallel (`sync`): peer `r` evaluates batches `r, r + world, …` and the sums are
/// added over the group.
pub(super) fn evaluate<B: Backend, F>(
    loader: &Loader,
    device: &B::Device,
    sync: Option<&dyn darts_bilevel::GradSync<B>>,
    forward: F,
) -> (f64, f64)
where
    F: Fn(burn::tensor::Tensor<B, 4>) -> burn::tensor::Tensor<B, 2>,
{
    let (rank, world) = sync.map_or((0, 1), |s| (s.rank(), s.world()));
    let (mut loss, mut ok, mut n) = (0.0, 0.0, 0.0);
    for (i, h) in loader.epoch(0, 0).enumerate() {
        if i % world != rank {
            continue;
        }
        let b = to_batch::<B>(&h, device);
        let logits = forward(b.images.clone());
        let m = h.len() as f64;
        let l: f64 = cross_entropy(logits.clone(), b.targets.clone())
            .into_scalar()
            .elem();
        let c: f64 = correct(logits, b.targets).into_scalar().elem();
        loss += l * m;
        ok += c;
        n += m;
    }
    if let Some(s) = sync {
        let g = darts_bilevel::sync::sum_host(s, &[loss, ok, n], device);
        (loss, ok, n) = (g[0], g[1], g[2]);
    }
    (loss / n.max(1.0), ok / n.max(1.0))
}
