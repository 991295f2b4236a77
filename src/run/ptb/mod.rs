//! The Penn Treebank protocol of the paper (§3.3), as library functions that the examples
//! `ptb_search` and `ptb_train` wrap: recurrent cell search (weights on the training split, α on
//! the validation split) and training a derived recurrent cell from scratch (SGD switching to
//! averaged SGD).
//!
//! Output conventions are those of [`crate::run`]: `metrics.jsonl`, SVG plots, per-epoch
//! genotypes, an atomic `checkpoint.safetensors` after every epoch and `--resume`. Within an epoch every
//! random choice (window lengths, dropout masks) is derived from `(seed, epoch, step)`, and the
//! hidden state starts from zeros each epoch (as in the reference), so a resumed run takes
//! exactly the steps an uninterrupted one takes.

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use darts_bilevel::sync::GradSync;
use darts_cell::rnn::nll;
use darts_cell::rnn::{RnnConfig, RnnDropout};
use darts_data::ptb::{Batchified, Corpus, PtbError, SeqLen, SeqLenMode};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

mod search;
mod train;

pub use super::{RunError, RunOptions};
pub use search::{
    run_ptb_search, run_ptb_search_parallel, run_ptb_search_peer, CorpusInfo, PtbSearchConfig,
    PtbSearchEpoch, PtbSearchSummary,
};
pub use train::{
    run_ptb_train, run_ptb_train_parallel, run_ptb_train_peer, PtbTrainConfig, PtbTrainEpoch,
    PtbTrainSummary,
};

/// The settings a recurrent search and training share: data, model size, SGD, regularisation,
/// epochs and seed. Flattened into [`PtbSearchConfig`] and [`PtbTrainConfig`] (`cfg.common`), so
/// stored configurations and flags keep their names.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PtbCommon {
    /// Directory with `ptb.train.txt`, `ptb.valid.txt`, `ptb.test.txt`.
    pub data: PathBuf,
    /// Use only the first N training tokens (None = all).
    pub limit_train_tokens: Option<usize>,
    /// Use only the first N validation tokens (None = all).
    pub limit_valid_tokens: Option<usize>,
    /// Stop each epoch after this many steps (None = a full pass).
    pub max_steps_per_epoch: Option<usize>,
    /// Embedding size (= hidden size, tied weights).
    pub emsize: usize,
    /// Hidden units.
    pub nhid: usize,
    /// Batch size (columns of the training stream, and of the search's validation stream).
    pub batch_size: usize,
    /// Batch size of the evaluation pass.
    pub eval_batch_size: usize,
    /// Nominal window length.
    pub bptt: usize,
    /// SGD learning rate (constant; scaled per window by `len / bptt`).
    pub lr: f64,
    /// SGD weight decay.
    pub weight_decay: f64,
    /// Global gradient-norm clip (the search applies it in the virtual step too); the
    /// reference's `--clip` (stored as `clip` before).
    #[serde(alias = "clip")]
    pub grad_clip: f64,
    /// Epochs.
    pub epochs: usize,
    /// Dropouts.
    pub dropout: RnnDropout,
    /// Temporal activation regularisation β.
    pub tar: f64,
    /// Activation regularisation α.
    pub ar: f64,
    /// Seed.
    pub seed: u64,
}

impl PtbCommon {
    /// The defaults of the reference's search (`rnn/train_search.py`).
    pub fn search() -> Self {
        Self {
            data: PathBuf::from("data/ptb-sample"),
            limit_train_tokens: None,
            limit_valid_tokens: None,
            max_steps_per_epoch: None,
            emsize: 300,
            nhid: 300,
            batch_size: 256,
            eval_batch_size: 10,
            bptt: 35,
            lr: 20.0,
            weight_decay: 5e-7,
            grad_clip: 0.25,
            epochs: 50,
            dropout: RnnDropout::search(),
            tar: 1e-3,
            ar: 0.0,
            seed: 3,
        }
    }

    /// The defaults of the reference's training of a derived cell (`rnn/train.py`).
    pub fn train() -> Self {
        Self {
            emsize: 850,
            nhid: 850,
            batch_size: 64,
            weight_decay: 8e-7,
            epochs: 8000,
            dropout: RnnDropout::eval(),
            seed: 1267,
            ..Self::search()
        }
    }

    /// The windows `(start, length)` of epoch `epoch` over `train` (drawn from the seed and
    /// `stream`, at most `max_steps_per_epoch`), and the epoch's progress bar.
    pub(crate) fn epoch_windows(
        &self,
        train: &Batchified,
        mode: SeqLenMode,
        stream: u64,
        epoch: usize,
        show: bool,
    ) -> (Vec<(usize, usize)>, indicatif::ProgressBar) {
        let seed = darts_data::cifar::derive_seed(self.seed, epoch, stream);
        let mut windows = SeqLen::new(self.bptt, mode, seed).epoch_windows(train);
        if let Some(m) = self.max_steps_per_epoch {
            windows.truncate(m);
        }
        let label = format!("epoch {}/{}", epoch + 1, self.epochs);
        let pb = super::progress(windows.len(), label, show);
        (windows, pb)
    }

    /// The recurrent model's configuration for a vocabulary of `vocab` words and `steps`
    /// intermediate nodes.
    pub fn rnn_config(&self, vocab: usize, steps: usize) -> RnnConfig {
        RnnConfig {
            vocab,
            emsize: self.emsize,
            nhid: self.nhid,
            steps,
            dropout: self.dropout,
            tar: self.tar,
            ar: self.ar,
        }
    }
}

pub(super) fn load_corpus(
    dir: &Path,
    train_limit: Option<usize>,
    valid_limit: Option<usize>,
) -> Result<Corpus, RunError> {
    let mut c = Corpus::load(dir)?;
    if let Some(n) = train_limit {
        c.train.ids.truncate(n);
    }
    if let Some(n) = valid_limit {
        c.valid.ids.truncate(n);
    }
    Ok(c)
}

pub(super) fn zeros_inner<B: AutodiffBackend>(
    n: usize,
    h: usize,
    device: &B::Device,
) -> Tensor<B::InnerBackend, 2> {
    Tensor::zeros([n, h], device)
}

pub(super) fn ids<B: Backend>(
    v: &[u32],
    shape: [usize; 2],
    device: &B::Device,
) -> Tensor<B, 2, Int> {
    let v: Vec<i64> = v.iter().map(|&x| x as i64).collect();
    Tensor::from_data(TensorData::new(v, shape), device)
}

/// Mean cross-entropy per token over `data` in windows of `bptt`, carrying the hidden state
/// (evaluation mode: no dropout, no graph).
pub fn evaluate_lm<B: Backend, F>(
    data: &Batchified,
    bptt: usize,
    nhid: usize,
    device: &B::Device,
    forward: F,
) -> f64
where
    F: Fn(Tensor<B, 2, Int>, Tensor<B, 2>) -> (Tensor<B, 2>, Tensor<B, 2>),
{
    evaluate_lm_sharded(data, bptt, nhid, None, device, forward)
}

/// [`evaluate_lm`] of a data-parallel peer (`sync`): each peer evaluates its columns of the
/// streams (`shard_range`), and the token-weighted sums are added over the group.
pub(super) fn evaluate_lm_sharded<B: Backend, F>(
    data: &Batchified,
    bptt: usize,
    nhid: usize,
    sync: Option<&dyn GradSync<B>>,
    device: &B::Device,
    forward: F,
) -> f64
where
    F: Fn(Tensor<B, 2, Int>, Tensor<B, 2>) -> (Tensor<B, 2>, Tensor<B, 2>),
{
    let (rank, world) = sync.map_or((0, 1), |s| (s.rank(), s.world()));
    let cols = crate::parallel::shard_range(data.cols, rank, world);
    let n = cols.len();
    let (mut total, mut count) = (0.0, 0.0);
    if n > 0 {
        let mut hidden = Tensor::<B, 2>::zeros([n, nhid], device);
        for (i, t) in data.eval_windows(bptt) {
            let (x, y) = data.window(i, t);
            let (x, y) = (columns(&x, data.cols, &cols), columns(&y, data.cols, &cols));
            let (logits, h) = forward(ids::<B>(&x, [t, n], device), hidden);
            hidden = h;
            let target: Tensor<B, 1, Int> = ids::<B>(&y, [1, t * n], device).reshape([t * n]);
            let l = darts_ops::to_f64s(&nll(logits, target))[0];
            total += l * (t * n) as f64;
            count += (t * n) as f64;
        }
    }
    if let Some(s) = sync {
        let g = darts_bilevel::sync::sum_host(s, &[total, count], device);
        (total, count) = (g[0], g[1]);
    }
    total / count.max(1.0)
}

/// Columns `cols` of a row-major window of `width` columns (all of it when `cols` is).
pub(super) fn columns(v: &[u32], width: usize, cols: &std::ops::Range<usize>) -> Vec<u32> {
    if cols.start == 0 && cols.end == width {
        return v.to_vec();
    }
    v.chunks(width)
        .flat_map(|row| row[cols.clone()].iter().copied())
        .collect()
}

/// Lay a split out in `n` columns; a split too short for that names the split and the flag.
pub(super) fn batchify(
    ids: &[u32],
    n: usize,
    split: &str,
    flag: &str,
) -> Result<Batchified, RunError> {
    Batchified::new(ids, n).map_err(|e| match e {
        PtbError::TooShort { tokens, .. } => RunError::Config(format!(
            "the {split} split has {tokens} tokens, too few for {flag} {n} (each of the {n} columns needs at least 2 tokens): lower {flag} or use more of the split"
        )),
        e => e.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shared settings are flattened: stored configurations keep their top-level names,
    /// and the names of earlier versions (`clip`, `nodes`, no `arch_bn_stats`) still read.
    #[test]
    fn stored_configurations_keep_their_names() {
        let search = PtbSearchConfig::default();
        let mut v = serde_json::to_value(&search).unwrap();
        for key in ["bptt", "grad_clip", "emsize", "dropout", "steps", "arch_lr"] {
            assert!(v.get(key).is_some(), "{key} not at the top level: {v}");
        }
        assert!(v.get("common").is_none());
        let o = v.as_object_mut().unwrap();
        let clip = o.remove("grad_clip").unwrap();
        o.insert("clip".into(), clip);
        let steps = o.remove("steps").unwrap();
        o.insert("nodes".into(), steps);
        o.remove("arch_bn_stats");
        let old: PtbSearchConfig = serde_json::from_value(v).unwrap();
        assert_eq!(old.common, search.common);
        assert_eq!(old.steps, search.steps);
        assert_eq!(
            old.arch_bn_stats,
            darts_bilevel::ArchBnStats::WeightStepOnly
        );

        let g = darts_genotype::catalog::recurrent("DARTS_V2").unwrap();
        let train = PtbTrainConfig::new(g, "DARTS_V2");
        let v = serde_json::to_value(&train).unwrap();
        assert_eq!(v["epochs"], 8000);
        assert_eq!(v["nonmono"], 5);
        let back: PtbTrainConfig = serde_json::from_value(v).unwrap();
        assert_eq!(back, train);
    }
}
