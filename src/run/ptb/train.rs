//! Training a derived recurrent cell from scratch on Penn Treebank (reference `rnn/train.py`).

use super::PtbCommon;
use super::{batchify, columns, evaluate_lm_sharded, load_corpus, zeros_inner};
use crate::checkpoint::{self, Checkpoint};
use crate::parallel::{shard_range, GroupConfig};
use crate::run::peer::{group_ok, run_threads, share_state, start_peer, PeerStart};
use crate::run::{
    append_timing, check_shared, failpoint, genotype_ok, seed_lock, write, write_checkpoint,
    write_metrics, RunConfig, RunError, RunOptions,
};
use burn::module::{AutodiffModule, ParamId};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use darts_bilevel::params::{set_values, values, FlatParams};
use darts_bilevel::sync::{sum_host, GradSync, SharedSync};
use darts_bilevel::{weight_step_sharded, Asgd};
use darts_cell::rnn::{RnnConfig, RnnMasks, TokenBatch};
use darts_cell::RnnEvalNetwork;
use darts_data::cifar::derive_seed;
use darts_data::ptb::{Batchified, Corpus, SeqLenMode};
use darts_genotype::RecurrentGenotype;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

/// Configuration of training a recurrent genotype from scratch (reference `rnn/train.py`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PtbTrainConfig {
    /// What training shares with the search: data, model size, SGD, regularisation, epochs,
    /// seed (flattened: the stored names are unchanged).
    #[serde(flatten)]
    pub common: PtbCommon,
    /// The genotype.
    pub genotype: RecurrentGenotype,
    /// Its name or source.
    pub genotype_source: String,
    /// Use only the first N test tokens.
    pub limit_test_tokens: Option<usize>,
    /// Test batch size.
    pub test_batch_size: usize,
    /// Maximum excess of a window over `bptt`.
    pub max_seq_len_delta: usize,
    /// Switch to averaged SGD when validation has not improved on the best of all but the
    /// last `nonmono` epochs.
    pub nonmono: usize,
}

impl PtbTrainConfig {
    /// Reference defaults for `genotype`.
    pub fn new(genotype: RecurrentGenotype, source: impl Into<String>) -> Self {
        Self {
            common: PtbCommon::train(),
            genotype,
            genotype_source: source.into(),
            limit_test_tokens: None,
            test_batch_size: 1,
            max_seq_len_delta: 20,
            nonmono: 5,
        }
    }
}

/// One epoch of training a recurrent cell.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PtbTrainEpoch {
    /// Epoch.
    pub epoch: usize,
    /// Training cross-entropy (dropout on).
    #[serde(with = "crate::nonfinite")]
    pub train_loss: f64,
    /// Its perplexity.
    #[serde(with = "crate::nonfinite")]
    pub train_ppl: f64,
    /// Validation cross-entropy (averaged weights once averaging is on).
    #[serde(with = "crate::nonfinite")]
    pub val_loss: f64,
    /// Validation perplexity.
    #[serde(with = "crate::nonfinite")]
    pub val_ppl: f64,
    /// Whether averaged SGD was on during this epoch.
    pub averaged: bool,
    /// Steps.
    pub steps: usize,
    /// Wall time of the epoch (s). Not written to `metrics.jsonl` or the checkpoint (it would
    /// make two identical runs' directories differ); `timing.jsonl` logs it. 0 for epochs
    /// read back from a checkpoint.
    #[serde(skip)]
    pub seconds: f64,
}

/// The result of [`run_ptb_train`].
#[derive(Clone, Debug)]
pub struct PtbTrainSummary {
    /// Epochs so far.
    pub history: Vec<PtbTrainEpoch>,
    /// Weights of the model.
    pub params: usize,
    /// Best validation perplexity.
    pub best_val_ppl: f64,
    /// Test perplexity of the best weights.
    pub test_ppl: f64,
}

/// The token streams of training: the training split in `batch_size` columns, validation and
/// test in their own widths.
struct TrainStreams {
    train: Batchified,
    val: Batchified,
    test: Batchified,
}

impl TrainStreams {
    fn new(cfg: &PtbTrainConfig, corpus: &Corpus) -> Result<Self, RunError> {
        Ok(Self {
            train: batchify(
                &corpus.train.ids,
                cfg.common.batch_size,
                "training",
                "--batch-size",
            )?,
            val: batchify(
                &corpus.valid.ids,
                cfg.common.eval_batch_size,
                "validation",
                "--eval-batch-size",
            )?,
            test: batchify(
                &corpus.test.ids,
                cfg.test_batch_size,
                "test",
                "--test-batch-size",
            )?,
        })
    }
}

/// Everything a training run carries from epoch to epoch: the model, the optimiser (SGD, then
/// averaged SGD), the validation losses that decide the switch, and the best weights so far.
struct Trainer<B: AutodiffBackend> {
    model: RnnEvalNetwork<B>,
    opt: Asgd<B::InnerBackend>,
    all_ids: Vec<ParamId>,
    val_losses: Vec<f64>,
    best: Option<(f64, FlatParams<B>)>,
}

impl<B: AutodiffBackend> Trainer<B> {
    fn new(model: RnnEvalNetwork<B>, weight_decay: f64) -> Self {
        Self {
            all_ids: darts_bilevel::params::all_ids(&model),
            model,
            opt: Asgd::new(weight_decay),
            val_losses: Vec::new(),
            best: None,
        }
    }

    /// Per-position tensors `prefix.k` of a checkpoint, keyed by this model's parameter ids.
    fn read_by_position(&self, c: &Checkpoint, prefix: &str, device: &B::Device) -> FlatParams<B> {
        let mut out = BTreeMap::new();
        for (k, id) in self.all_ids.iter().enumerate() {
            if let Some((_, _, v)) = c.get(&format!("{prefix}.{k}")) {
                let t = Tensor::from_data(TensorData::new(v.clone(), [v.len()]), device);
                out.insert(*id, t);
            }
        }
        out
    }

    fn load(&mut self, c: &Checkpoint, device: &B::Device) -> Result<(), RunError> {
        self.model = checkpoint::load_model_sgd(c, self.model.clone(), self.opt.sgd())?.0;
        let meta = &c.meta;
        self.val_losses = serde_json::from_value(meta["best_vals"].clone()).unwrap_or_default();
        if let Some(steps) = meta["asgd_steps"].as_u64() {
            let ax = self.read_by_position(c, "asgd.ax", device);
            self.opt.restore_averaging(steps, ax);
        }
        let b = self.read_by_position(c, "best", device);
        if let Some(v) = meta["best_val"].as_f64() {
            if !b.is_empty() {
                self.best = Some((v, b));
            }
        }
        Ok(())
    }

    fn save(&mut self, c: &mut Checkpoint) -> Result<(), RunError> {
        c.meta["best_vals"] = serde_json::json!(self.val_losses);
        c.meta["asgd_steps"] = serde_json::json!(self.opt.averaged_steps());
        c.meta["best_val"] = serde_json::json!(self.best.as_ref().map(|b| b.0));
        let ids = checkpoint::save_model_sgd(c, &self.model, self.opt.sgd())?;
        let empty = BTreeMap::new();
        let ax = self.opt.averaged().unwrap_or(&empty);
        let best_w = self.best.as_ref().map_or(&empty, |b| &b.1);
        for (prefix, map) in [("asgd.ax", ax), ("best", best_w)] {
            for (k, t) in checkpoint::by_position(&ids, map) {
                let v = darts_ops::to_f32s(t);
                c.push(format!("{prefix}.{k}"), vec![v.len()], v);
            }
        }
        Ok(())
    }

    /// The weights to evaluate: the running average once averaging has started, else the
    /// current ones.
    fn eval_model(&self) -> RnnEvalNetwork<B> {
        match self.opt.averaged() {
            Some(ax) => set_values(self.model.clone(), ax),
            None => self.model.clone(),
        }
    }

    /// The steps of one epoch; returns (mean training loss, steps). Data-parallel (`sync`):
    /// every peer takes its columns (sequences) of the training stream, with its rows of the
    /// dropout masks drawn for the whole batch and its rows of the hidden state; the gradients
    /// are those of the whole batch (the model has no batch statistics, so this is the
    /// single-device step up to summation order).
    fn pass(
        &mut self,
        data: &TrainStreams,
        (cfg, rnn): (&PtbTrainConfig, &RnnConfig),
        epoch: usize,
        sync: Option<&dyn GradSync<B::InnerBackend>>,
        show: bool,
        device: &B::Device,
    ) -> Result<(f64, usize), RunError> {
        let mode = SeqLenMode::Train {
            max_delta: cfg.max_seq_len_delta,
        };
        let (windows, pb) = cfg.common.epoch_windows(&data.train, mode, 21, epoch, show);
        let (rank, world) = sync.map_or((0, 1), |s| (s.rank(), s.world()));
        let width = cfg.common.batch_size;
        let cols = shard_range(width, rank, world);
        let n = cols.len();
        let clip = (cfg.common.grad_clip > 0.0).then_some(cfg.common.grad_clip);
        let mut hidden = zeros_inner::<B>(n, cfg.common.nhid, device);
        let (mut tl, mut tok) = (0.0, 0.0);
        let step_point = format!("ptb_train_step_rank{rank}");
        for (step, &(i, t)) in windows.iter().enumerate() {
            let lr = cfg.common.lr * t as f64 / cfg.common.bptt as f64;
            let (x, y) = data.train.window(i, t);
            let (x, y) = (columns(&x, width, &cols), columns(&y, width, &cols));
            let masks = rnn.masks(
                width,
                derive_seed(cfg.common.seed, epoch, 5000 + step as u64),
                device,
            );
            let masks = if world > 1 {
                masks.rows(cols.clone(), width)
            } else {
                masks
            };
            let b = TokenBatch::from_host(&x, &y, n, Tensor::from_inner(hidden), masks, device);
            let (next, st) = weight_step_sharded(
                self.model.clone(),
                self.opt.sgd(),
                lr,
                clip,
                &[],
                sync,
                |_| n,
                |m| {
                    let (loss, raw, h) = m.losses(&b);
                    (loss, (raw, h))
                },
            );
            self.model = next;
            failpoint(&step_point);
            group_ok(sync)?;
            let (raw, h) = st.aux;
            hidden = h.detach().inner();
            let raw = darts_ops::to_f64s(&raw)[0];
            if !raw.is_finite() || !st.grad_norm.is_finite() {
                // The norm is the group's: every peer stops at the same step.
                let what = if raw.is_finite() {
                    "gradient norm"
                } else {
                    "training loss"
                };
                return Err(RunError::diverged(
                    "training",
                    epoch,
                    step,
                    what,
                    "; lower --lr",
                ));
            }
            self.opt.accumulate(st.updated);
            tl += raw * (t * n) as f64;
            tok += (t * n) as f64;
            pb.inc(1);
            pb.set_message(format!("ppl {:.1}", (tl / tok.max(1.0)).exp()));
        }
        pb.finish_and_clear();
        if let Some(s) = sync {
            let g = sum_host(s, &[tl, tok], device);
            (tl, tok) = (g[0], g[1]);
        }
        Ok((tl / tok.max(1.0), windows.len()))
    }

    /// After an epoch's validation: keep the best weights, and switch to averaging when the
    /// validation loss is worse than the best of all but the last `nonmono` epochs.
    fn end_epoch(
        &mut self,
        evaluated: &RnnEvalNetwork<B>,
        val_loss: f64,
        nonmono: usize,
        show: bool,
    ) {
        if self.best.as_ref().is_none_or(|(b, _)| val_loss < *b) {
            self.best = Some((val_loss, values(evaluated, &self.all_ids)));
        }
        if self.opt.is_averaging() {
            return;
        }
        let seen = &self.val_losses;
        if seen.len() > nonmono {
            let older = seen[..seen.len() - nonmono]
                .iter()
                .cloned()
                .fold(f64::INFINITY, f64::min);
            if val_loss > older {
                if show {
                    eprintln!("switching to averaged SGD");
                }
                self.opt.start_averaging();
            }
        }
        self.val_losses.push(val_loss);
    }
}

/// Commit an epoch: metrics and plot first, then the checkpoint.
fn commit_epoch<B: AutodiffBackend>(
    out: &Path,
    cfg: &PtbTrainConfig,
    history: &[PtbTrainEpoch],
    trainer: &mut Trainer<B>,
) -> Result<(), RunError> {
    let last = history.last().expect("an epoch to commit");
    write_metrics(
        out,
        history,
        &[(
            "perplexity",
            "perplexity",
            &[
                ("train (dropout)", |e| e.train_ppl),
                ("valid", |e| e.val_ppl),
            ],
        )],
    )?;
    append_timing(out, last.epoch, last.seconds)?;
    write_checkpoint(out, cfg, history, last.epoch, |c| trainer.save(c))?;
    Ok(())
}

fn lm_loss<B: Backend>(
    model: &RnnEvalNetwork<B>,
    data: &Batchified,
    cfg: &PtbTrainConfig,
    sync: Option<&dyn GradSync<B>>,
    device: &B::Device,
) -> f64 {
    let (bptt, nhid) = (cfg.common.bptt, cfg.common.nhid);
    evaluate_lm_sharded::<B, _>(data, bptt, nhid, sync, device, |x, h| {
        let o = model.forward(x, h, &RnnMasks::none());
        (o.logits, o.hidden)
    })
}

impl RunConfig for PtbTrainConfig {
    const KIND: &'static str = "ptb_train";
    const MUTABLE: &'static [&'static str] = &["epochs"];
    fn validate(&self) -> Result<(), RunError> {
        genotype_ok(self.genotype.validate(), &self.genotype_source)?;
        check_shared(self, "must be at least 1 (nothing would be trained)")
    }
}

/// Train (or resume training) a recurrent genotype and report validation and test perplexity.
pub fn run_ptb_train<B: AutodiffBackend>(
    config: &PtbTrainConfig,
    opts: &RunOptions,
    device: &B::Device,
) -> Result<PtbTrainSummary, RunError> {
    crate::threads::run_pooled_on::<B, _>(|| train_as::<B>(config, opts, device, None))
}

/// Train data-parallel on `devices` (one peer per device, threads of this process): every
/// peer takes its columns of the training stream; rank 0 writes the outputs. Returns rank 0's
/// summary.
pub fn run_ptb_train_parallel<B: AutodiffBackend>(
    config: &PtbTrainConfig,
    opts: &RunOptions,
    devices: &[B::Device],
    group: &GroupConfig,
) -> Result<PtbTrainSummary, RunError> {
    run_threads::<B::InnerBackend, _>(devices, group, |device, sync| {
        train_as::<B>(config, opts, device, Some(sync))
    })
}

/// Train as one peer of a data-parallel group (`sync`, e.g. a process of an MPI job); see
/// [`run_ptb_train_parallel`] for the threads of one process.
pub fn run_ptb_train_peer<B: AutodiffBackend>(
    config: &PtbTrainConfig,
    opts: &RunOptions,
    device: &B::Device,
    sync: SharedSync<B::InnerBackend>,
) -> Result<PtbTrainSummary, RunError> {
    crate::threads::run_pooled_on::<B, _>(|| train_as::<B>(config, opts, device, Some(sync)))
}

fn train_as<B: AutodiffBackend>(
    config: &PtbTrainConfig,
    opts: &RunOptions,
    device: &B::Device,
    sync: Option<SharedSync<B::InnerBackend>>,
) -> Result<PtbTrainSummary, RunError> {
    let out = &opts.out;
    let lead = sync.as_ref().is_none_or(|s| s.rank() == 0);
    // Rank 0 opens (and locks) the directory; the others get its configuration and history.
    let (cfg, mut history, ckpt, _lock): PeerStart<PtbTrainConfig, PtbTrainEpoch> =
        start_peer(config, opts, sync.as_deref(), device)?;
    let world = sync.as_ref().map_or(1, |s| s.world());
    if cfg.common.batch_size < world {
        return Err(RunError::Config(format!(
            "--batch-size {} is smaller than the {world} peers (each needs a sequence)",
            cfg.common.batch_size
        )));
    }
    let mut corpus = load_corpus(
        &cfg.common.data,
        cfg.common.limit_train_tokens,
        cfg.common.limit_valid_tokens,
    )?;
    if let Some(n) = cfg.limit_test_tokens {
        corpus.test.ids.truncate(n);
    }
    let vocab = corpus.dictionary.len();
    let data = TrainStreams::new(&cfg, &corpus)?;
    let rnn = cfg.common.rnn_config(vocab, cfg.genotype.recurrent.len());
    let model: RnnEvalNetwork<B> = {
        let _guard = seed_lock();
        B::seed(device, cfg.common.seed);
        rnn.init_eval::<B>(&cfg.genotype, device)?
    };
    let params = model.num_weights();
    let mut trainer = Trainer::new(model, cfg.common.weight_decay);
    if let Some(c) = &ckpt {
        trainer.load(c, device)?;
    }
    let save = |c: &mut Checkpoint| trainer.save(c);
    let header = (&cfg, &history);
    if let Some(c) = share_state::<B::InnerBackend>(sync.as_deref(), &header, save, device)? {
        trainer.load(&c, device)?;
    }
    let show = opts.progress && lead;
    if show {
        eprintln!(
            "{}: {:.3}M parameters, vocabulary {vocab}, {} training tokens",
            cfg.genotype_source,
            params as f64 / 1e6,
            corpus.train.len()
        );
    }
    let end = opts
        .stop_after
        .map_or(cfg.common.epochs, |n| n.min(cfg.common.epochs));
    let sync_ref = sync.as_deref();
    for epoch in history.len()..end {
        let t0 = Instant::now();
        let averaged = trainer.opt.is_averaging();
        let (train_loss, steps) =
            trainer.pass(&data, (&cfg, &rnn), epoch, sync_ref, show, device)?;
        let evaluated = trainer.eval_model();
        let val_loss = lm_loss(&evaluated.valid(), &data.val, &cfg, sync_ref, device);
        group_ok(sync_ref)?;
        trainer.end_epoch(&evaluated, val_loss, cfg.nonmono, show);
        let rec = PtbTrainEpoch {
            epoch,
            train_loss,
            train_ppl: train_loss.exp(),
            val_loss,
            val_ppl: val_loss.exp(),
            averaged,
            steps,
            seconds: t0.elapsed().as_secs_f64(),
        };
        if show {
            let avg = if averaged { " (averaged)" } else { "" };
            let (t, v, sec) = (rec.train_ppl, rec.val_ppl, rec.seconds);
            eprintln!(
                "epoch {:>4}  train ppl {t:8.2}  val ppl {v:8.2}{avg}  {sec:.0}s",
                epoch + 1
            );
        }
        history.push(rec);
        if lead {
            commit_epoch(out, &cfg, &history, &mut trainer)?;
        }
    }
    finish(
        trainer,
        history,
        &data,
        &cfg,
        params,
        (opts, sync_ref, device),
    )
}

/// After the last epoch: the test perplexity of the best weights, `result.json`, the summary.
fn finish<B: AutodiffBackend>(
    mut trainer: Trainer<B>,
    history: Vec<PtbTrainEpoch>,
    data: &TrainStreams,
    cfg: &PtbTrainConfig,
    params: usize,
    (opts, sync, device): (
        &RunOptions,
        Option<&dyn GradSync<B::InnerBackend>>,
        &B::Device,
    ),
) -> Result<PtbTrainSummary, RunError> {
    let (best_val, final_model) = match trainer.best.take() {
        Some((v, w)) => (v, set_values(trainer.model, &w)),
        None => (f64::NAN, trainer.model),
    };
    let test_loss = lm_loss(&final_model.valid(), &data.test, cfg, sync, device);
    group_ok(sync)?;
    let lead = sync.is_none_or(|s| s.rank() == 0);
    let summary = serde_json::json!({
        "genotype": cfg.genotype_source,
        "params": params,
        "best_val_ppl": best_val.exp(),
        "test_ppl": test_loss.exp(),
        "epochs": history.len(),
    });
    if lead {
        write(
            &opts.out.join("result.json"),
            &serde_json::to_string_pretty(&summary).expect("serialisable"),
        )?;
    }
    if opts.progress && lead {
        eprintln!(
            "best valid perplexity {:.2}, test perplexity {:.2}",
            best_val.exp(),
            test_loss.exp()
        );
    }
    Ok(PtbTrainSummary {
        history,
        params,
        best_val_ppl: best_val.exp(),
        test_ppl: test_loss.exp(),
    })
}
