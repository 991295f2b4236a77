//! Recurrent cell search on Penn Treebank (reference `rnn/train_search.py`).

use super::PtbCommon;
use super::{batchify, columns, evaluate_lm_sharded, load_corpus, zeros_inner};
use crate::checkpoint;
use crate::parallel::{shard_range, GroupConfig};
use crate::report;
use crate::run::peer::{group_error, group_ok, run_threads, share_state, start_peer, PeerStart};
use crate::run::{
    append_timing, check_shared, failpoint, seed_lock, write, write_bytes, write_checkpoint,
    write_epoch_genotype, write_figure, write_metrics, RunConfig, RunError, RunOptions,
};
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;
use darts_bilevel::params::values;
use darts_bilevel::sync::{average_buffers, GradSync, SharedSync};
use darts_bilevel::{
    ArchBnStats, ArchitectConfig, Bilevel, CosineLr, Order, ReferenceQuirks, SearchEvent,
    StepOutcome, WeightConfig,
};
use darts_cell::rnn::{RnnConfig, RnnMasks, TokenBatch};
use darts_cell::RnnSearchNetwork;
use darts_data::cifar::derive_seed;
use darts_data::ptb::{Batchified, Corpus, SeqLenMode};
use darts_genotype::diagram::CellGraph;
use darts_genotype::{python, RecurrentGenotype};
use darts_mixed_op::{RnnSpace, Softmax};
use darts_ops::RnnOp;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;

/// Configuration of a recurrent search (reference `rnn/train_search.py` defaults).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PtbSearchConfig {
    /// What the search shares with training a recurrent cell: data, model size, SGD,
    /// regularisation, epochs, seed (flattened: the stored names are unchanged).
    #[serde(flatten)]
    pub common: PtbCommon,
    /// Intermediate nodes (the reference's `steps`; stored as `nodes` before).
    #[serde(alias = "nodes")]
    pub steps: usize,
    /// Second-order architecture gradient.
    pub unrolled: bool,
    /// Adam learning rate for α.
    pub arch_lr: f64,
    /// Adam weight decay for α.
    pub arch_weight_decay: f64,
    /// The reference's quirks (off by default; see [`ReferenceQuirks`]).
    #[serde(default)]
    pub quirks: ReferenceQuirks,
    /// Whether the architecture step's training-mode passes update the cell's BatchNorm
    /// running statistics too ([`ArchBnStats::ArchitectToo`], the reference's
    /// `rnn/architect.py`, the default) or only the weight step's forward; configurations
    /// stored before this setting read as [`ArchBnStats::WeightStepOnly`].
    #[serde(default = "crate::run::before_bn_setting")]
    pub arch_bn_stats: ArchBnStats,
}

impl Default for PtbSearchConfig {
    fn default() -> Self {
        Self {
            common: PtbCommon::search(),
            steps: 8,
            unrolled: false,
            arch_lr: 3e-3,
            arch_weight_decay: 1e-3,
            quirks: ReferenceQuirks::default(),
            arch_bn_stats: ArchBnStats::ArchitectToo,
        }
    }
}

impl PtbSearchConfig {
    /// The recurrent supernet's configuration for a vocabulary of `vocab` words.
    pub fn rnn_config(&self, vocab: usize) -> RnnConfig {
        self.common.rnn_config(vocab, self.steps)
    }

    /// The architect's configuration for this search, as the recurrent reference sets it up
    /// (`rnn/architect.py:30`: `torch.optim.Adam(..., lr=arch_lr, weight_decay=arch_wdecay)`,
    /// so Adam's default betas (0.9, 0.999) and ε 1e-8, not the convolutional architect's
    /// (0.5, 0.999); the finite-difference radius r = 1e-2; the weight clip also in the virtual
    /// step and on the Hessian-vector product's vector).
    pub fn architect_config(&self) -> ArchitectConfig {
        ArchitectConfig {
            order: if self.unrolled {
                Order::Second
            } else {
                Order::First
            },
            arch_lr: self.arch_lr,
            arch_betas: (0.9, 0.999),
            arch_eps: 1e-8,
            arch_weight_decay: self.arch_weight_decay,
            fd_r: 0.01,
            virtual_grad_clip: (self.common.grad_clip > 0.0).then_some(self.common.grad_clip),
            quirks: self.quirks,
            bn_stats: self.arch_bn_stats,
        }
    }
}

/// One epoch of a recurrent search, as written to `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PtbSearchEpoch {
    /// Epoch (0-based).
    pub epoch: usize,
    /// Mean training cross-entropy (dropout on).
    #[serde(with = "crate::nonfinite")]
    pub train_loss: f64,
    /// Its perplexity.
    #[serde(with = "crate::nonfinite")]
    pub train_ppl: f64,
    /// Mean validation cross-entropy seen by the architecture steps (dropout on).
    #[serde(with = "crate::nonfinite")]
    pub arch_val_loss: f64,
    /// Validation cross-entropy in evaluation mode.
    #[serde(with = "crate::nonfinite")]
    pub val_loss: f64,
    /// Validation perplexity in evaluation mode.
    #[serde(with = "crate::nonfinite")]
    pub val_ppl: f64,
    /// Steps taken.
    pub steps: usize,
    /// Training tokens seen.
    pub tokens: usize,
    /// Wall time of the epoch (s). Not written to `metrics.jsonl` or the checkpoint (it would
    /// make two identical runs' directories differ); `timing.jsonl` logs it. 0 for epochs
    /// read back from a checkpoint.
    #[serde(skip)]
    pub seconds: f64,
    /// Derived genotype.
    pub genotype: RecurrentGenotype,
    /// The same, in Python notation.
    pub genotype_python: String,
    /// softmax(α), `[edge][op]`.
    #[serde(with = "crate::nonfinite::table")]
    pub alphas: Vec<Vec<f64>>,
}

/// The result of [`run_ptb_search`].
pub type PtbSearchSummary =
    crate::run::SearchOutcome<PtbSearchEpoch, RecurrentGenotype, CorpusInfo>;

/// What a PTB search reports of its corpus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorpusInfo {
    /// Vocabulary size.
    pub vocab: usize,
    /// Words of the validation/test splits that were mapped to `<unk>`.
    pub unknown: (usize, usize),
}

type SearchNet<B> = RnnSearchNetwork<B, RnnOp>;

fn write_rnn_genotype(out: &Path, g: &RecurrentGenotype) -> Result<(), RunError> {
    write(&out.join("genotype.json"), &g.to_json())?;
    write(
        &out.join("genotype.py"),
        &format!("{}\n", python::recurrent_to_python(g)),
    )?;
    let graph = CellGraph::recurrent(g);
    write(&out.join("recurrent.svg"), &graph.to_svg())?;
    write_bytes(
        &out.join("recurrent.png"),
        &report::cell_diagram_png(&graph)?,
    )?;
    write(&out.join("recurrent.dot"), &graph.to_dot())
}

/// The token streams of a search: the training split in `batch_size` columns (weights), the
/// validation split in `batch_size` columns (α) and in `eval_batch_size` columns (evaluation).
struct SearchStreams {
    train: Batchified,
    search: Batchified,
    val: Batchified,
}

impl SearchStreams {
    fn new(cfg: &PtbSearchConfig, corpus: &Corpus) -> Result<Self, RunError> {
        let (n, valid) = (cfg.common.batch_size, &corpus.valid.ids);
        Ok(Self {
            train: batchify(&corpus.train.ids, n, "training", "--batch-size")?,
            search: batchify(valid, n, "validation (architecture steps)", "--batch-size")?,
            val: batchify(
                valid,
                cfg.common.eval_batch_size,
                "validation",
                "--eval-batch-size",
            )?,
        })
    }
}

/// The recurrent supernet (seeded) and its bilevel state: plain SGD at a constant rate (scaled
/// per window by the caller), the architect as the recurrent reference sets it up.
fn build_search<B: AutodiffBackend>(
    cfg: &PtbSearchConfig,
    rnn: &RnnConfig,
    device: &B::Device,
) -> Result<Bilevel<B, SearchNet<B>>, RunError> {
    let net: SearchNet<B> = {
        let _guard = seed_lock();
        B::seed(device, cfg.common.seed);
        rnn.init_search::<B, _, _>(&RnnSpace::default(), Softmax, device)?
    };
    let weights = WeightConfig {
        lr: CosineLr {
            max: cfg.common.lr,
            min: cfg.common.lr,
            epochs: cfg.common.epochs,
        },
        momentum: 0.0,
        weight_decay: cfg.common.weight_decay,
        grad_clip: (cfg.common.grad_clip > 0.0).then_some(cfg.common.grad_clip),
    };
    Ok(Bilevel::new(net, weights, cfg.architect_config()))
}

/// What one epoch's steps measured: token-weighted mean losses and counts.
struct PassStats {
    train_loss: f64,
    arch_val_loss: f64,
    tokens: usize,
    steps: usize,
}

/// The steps of one epoch: windows of the training stream (weights) paired with windows of the
/// validation stream (α), hidden states carried from window to window and reset each epoch.
fn search_pass<B: AutodiffBackend>(
    search: &mut Bilevel<B, SearchNet<B>>,
    data: &SearchStreams,
    (cfg, rnn): (&PtbSearchConfig, &RnnConfig),
    epoch: usize,
    show: bool,
    device: &B::Device,
) -> Result<PassStats, RunError> {
    let (windows, pb) = cfg
        .common
        .epoch_windows(&data.train, SeqLenMode::Search, 11, epoch, show);
    // Data-parallel: every peer takes its columns (sequences) of both streams, its rows of the
    // dropout masks drawn for the whole batch, and carries its rows of the hidden states.
    let sync = search.sync.clone();
    let (rank, world) = sync.as_ref().map_or((0, 1), |s| (s.rank(), s.world()));
    let width = cfg.common.batch_size;
    let cols = shard_range(width, rank, world);
    let n = cols.len();
    let batch = |x: &[u32], y: &[u32], h: Tensor<B::InnerBackend, 2>, seed: u64| {
        let h = Tensor::from_inner(h);
        let masks = rnn.masks(width, seed, device);
        let masks = if world > 1 {
            masks.rows(cols.clone(), width)
        } else {
            masks
        };
        let (x, y) = (columns(x, width, &cols), columns(y, width, &cols));
        TokenBatch::from_host(&x, &y, n, h, masks, device)
    };
    // Each window starts from the hidden states the previous step ended in (zeros at the start
    // of the epoch), its validation window in lockstep, its learning rate scaled by its length.
    let next = |step: usize, prev: Option<&StepOutcome<B>>| {
        let &(i, t) = windows.get(step)?;
        let (h_train, h_val) = match prev {
            Some(o) => (o.train_state[0].clone(), o.val_state[0].clone()),
            None => (
                zeros_inner::<B>(n, cfg.common.nhid, device),
                zeros_inner::<B>(n, cfg.common.nhid, device),
            ),
        };
        let (x, y) = data.train.window(i, t);
        let (vx, vy) = data
            .search
            .window(i % (data.search.rows - 1), cfg.common.bptt);
        let seed = derive_seed(cfg.common.seed, epoch, 1000 + 2 * step as u64);
        let tb = batch(&x, &y, h_train, seed);
        let vb = batch(&vx, &vy, h_val, seed ^ 0x5555);
        Some((tb, vb, cfg.common.lr * t as f64 / cfg.common.bptt as f64))
    };
    let (mut tl, mut vl, mut tok, mut vtok) = (0.0, 0.0, 0usize, 0usize);
    let step_point = format!("ptb_search_step_rank{rank}");
    let stats = search.run_epoch_with(epoch, next, |ev| {
        let SearchEvent::Step { stats, .. } = ev;
        failpoint(&step_point);
        tl += stats.train_loss * stats.train_size as f64;
        tok += stats.train_size;
        vl += stats.val_loss * stats.val_size as f64;
        vtok += stats.val_size;
        pb.inc(1);
        let (p, vp) = ((tl / tok as f64).exp(), (vl / vtok as f64).exp());
        pb.set_message(format!("ppl {p:.1} val {vp:.1}"));
    });
    pb.finish_and_clear();
    if let Some(why) = stats.aborted {
        return Err(group_error(rank, why));
    }
    if let Some(bad) = &stats.non_finite {
        let hint = "; lower --lr or --arch-lr";
        return Err(RunError::diverged(
            "search", epoch, bad.step, &bad.what, hint,
        ));
    }
    Ok(PassStats {
        train_loss: stats.train_loss,
        arch_val_loss: stats.val_loss,
        tokens: stats.train_samples,
        steps: windows.len(),
    })
}

/// Commit an epoch: outputs first, then the checkpoint (a kill in between repeats the epoch on
/// resume, which writes the same outputs again).
fn commit_epoch<B: AutodiffBackend>(
    out: &Path,
    cfg: &PtbSearchConfig,
    history: &[PtbSearchEpoch],
    search: &Bilevel<B, SearchNet<B>>,
    op_names: &[String],
) -> Result<(), RunError> {
    let last = history.last().expect("an epoch to commit");
    write_search_outputs(out, history, op_names)?;
    append_timing(out, last.epoch, last.seconds)?;
    write_checkpoint(out, cfg, history, last.epoch, |c| {
        Ok(checkpoint::save_bilevel(c, search)?)
    })?;
    Ok(())
}

fn print_epoch(rec: &PtbSearchEpoch) {
    eprintln!(
        "epoch {:>3}  train ppl {:8.2}  val ppl {:8.2}  {:.0}s\n  {}",
        rec.epoch + 1,
        rec.train_ppl,
        rec.val_ppl,
        rec.seconds,
        rec.genotype_python
    );
}

impl RunConfig for PtbSearchConfig {
    const KIND: &'static str = "ptb_search";
    const MUTABLE: &'static [&'static str] = &["epochs"];
    fn validate(&self) -> Result<(), RunError> {
        check_shared(
            self,
            "must be at least 1 (a search of no epochs derives nothing)",
        )
    }
}

/// Epoch `epoch`'s record: the pass's losses, the evaluation-mode validation loss, the genotype
/// and softmax(α) of `model`, and the wall time since `t0`.
fn epoch_record<B: AutodiffBackend>(
    model: &SearchNet<B>,
    data: &SearchStreams,
    cfg: &PtbSearchConfig,
    (epoch, pass, t0): (usize, &PassStats, Instant),
    sync: Option<&dyn GradSync<B::InnerBackend>>,
    device: &B::Device,
) -> PtbSearchEpoch {
    let inner = model.valid();
    let (bptt, nhid) = (cfg.common.bptt, cfg.common.nhid);
    let val_loss =
        evaluate_lm_sharded::<B::InnerBackend, _>(&data.val, bptt, nhid, sync, device, |x, h| {
            let o = inner.forward(x, h, &RnnMasks::none());
            (o.logits, o.hidden)
        });
    let genotype = model.genotype();
    PtbSearchEpoch {
        epoch,
        train_loss: pass.train_loss,
        train_ppl: pass.train_loss.exp(),
        arch_val_loss: pass.arch_val_loss,
        val_loss,
        val_ppl: val_loss.exp(),
        steps: pass.steps,
        tokens: pass.tokens,
        seconds: t0.elapsed().as_secs_f64(),
        genotype_python: python::recurrent_to_python(&genotype),
        genotype,
        alphas: model
            .arch_weights()
            .into_iter()
            .map(|r| r.into_iter().map(f64::from).collect())
            .collect(),
    }
}

/// Run (or resume) a recurrent cell search on `device`.
pub fn run_ptb_search<B: AutodiffBackend>(
    config: &PtbSearchConfig,
    opts: &RunOptions,
    device: &B::Device,
) -> Result<PtbSearchSummary, RunError> {
    crate::threads::run_pooled_on::<B, _>(|| search_as::<B>(config, opts, device, None))
}

/// Run (or resume) a recurrent cell search data-parallel on `devices` (one peer per device,
/// threads of this process): every peer takes its sequences (columns) of both streams; the
/// weight and architecture gradients are those of the whole batch; rank 0 writes the outputs.
/// Returns rank 0's summary.
pub fn run_ptb_search_parallel<B: AutodiffBackend>(
    config: &PtbSearchConfig,
    opts: &RunOptions,
    devices: &[B::Device],
    group: &GroupConfig,
) -> Result<PtbSearchSummary, RunError> {
    run_threads::<B::InnerBackend, _>(devices, group, |device, sync| {
        search_as::<B>(config, opts, device, Some(sync))
    })
}

/// Run (or resume) a recurrent cell search as one peer of a data-parallel group (`sync`, e.g.
/// a process of an MPI job); see [`run_ptb_search_parallel`] for the threads of one process.
pub fn run_ptb_search_peer<B: AutodiffBackend>(
    config: &PtbSearchConfig,
    opts: &RunOptions,
    device: &B::Device,
    sync: SharedSync<B::InnerBackend>,
) -> Result<PtbSearchSummary, RunError> {
    crate::threads::run_pooled_on::<B, _>(|| search_as::<B>(config, opts, device, Some(sync)))
}

fn search_as<B: AutodiffBackend>(
    config: &PtbSearchConfig,
    opts: &RunOptions,
    device: &B::Device,
    sync: Option<SharedSync<B::InnerBackend>>,
) -> Result<PtbSearchSummary, RunError> {
    let out = &opts.out;
    let lead = sync.as_ref().is_none_or(|s| s.rank() == 0);
    // Rank 0 opens (and locks) the directory; the others get its configuration and history.
    let (cfg, mut history, ckpt, _lock): PeerStart<PtbSearchConfig, PtbSearchEpoch> =
        start_peer(config, opts, sync.as_deref(), device)?;
    let world = sync.as_ref().map_or(1, |s| s.world());
    if cfg.common.batch_size < world || cfg.common.eval_batch_size < world {
        return Err(RunError::Config(format!(
            "--batch-size {} and --eval-batch-size {} must be at least the {world} peers (each needs a sequence)",
            cfg.common.batch_size, cfg.common.eval_batch_size
        )));
    }
    let corpus = load_corpus(
        &cfg.common.data,
        cfg.common.limit_train_tokens,
        cfg.common.limit_valid_tokens,
    )?;
    let vocab = corpus.dictionary.len();
    let data = SearchStreams::new(&cfg, &corpus)?;
    let rnn = cfg.rnn_config(vocab);
    let mut search = build_search::<B>(&cfg, &rnn, device)?;
    let params = search.model.num_weights();
    let op_names = search.model.op_names.clone();
    if let Some(c) = &ckpt {
        checkpoint::load_bilevel(c, &mut search)?;
    }
    let save = |c: &mut checkpoint::Checkpoint| Ok(checkpoint::save_bilevel(c, &search)?);
    let header = (&cfg, &history);
    if let Some(c) = share_state::<B::InnerBackend>(sync.as_deref(), &header, save, device)? {
        checkpoint::load_bilevel(&c, &mut search)?;
    }
    search.sync = sync.clone();
    let show = opts.progress && lead;
    if show {
        let (t, v, u) = (corpus.train.len(), corpus.valid.len(), corpus.valid.unknown);
        let m = params as f64 / 1e6;
        eprintln!("PTB search: vocabulary {vocab}, {t} training tokens, {v} validation tokens ({u} unknown), {m:.2}M weights");
    }
    let end = opts
        .stop_after
        .map_or(cfg.common.epochs, |n| n.min(cfg.common.epochs));
    for epoch in history.len()..end {
        let t0 = Instant::now();
        let pass = search_pass(&mut search, &data, (&cfg, &rnn), epoch, show, device)?;
        if let Some(s) = &sync {
            // The replicas' running statistics followed their own shards: average them.
            search.model = average_buffers(search.model.clone(), s.as_ref());
        }
        let rec = epoch_record::<B>(
            &search.model,
            &data,
            &cfg,
            (epoch, &pass, t0),
            sync.as_deref(),
            device,
        );
        group_ok(sync.as_deref())?;
        if show {
            print_epoch(&rec);
        }
        history.push(rec);
        if lead {
            commit_epoch(out, &cfg, &history, &search, &op_names)?;
        }
    }
    let genotype = search.model.genotype();
    if lead {
        write_rnn_genotype(out, &genotype)?;
    }
    let id = search.model.alphas.id;
    let alphas = darts_ops::to_f32s(&values(&search.model, &[id])[&id]);
    Ok(PtbSearchSummary {
        stopped_early: history.len() < cfg.common.epochs,
        history,
        genotype,
        alphas,
        params,
        data: CorpusInfo {
            vocab,
            unknown: (corpus.valid.unknown, corpus.test.unknown),
        },
    })
}

fn write_search_outputs(
    out: &Path,
    history: &[PtbSearchEpoch],
    op_names: &[String],
) -> Result<(), RunError> {
    write_metrics(
        out,
        history,
        &[(
            "perplexity",
            "perplexity",
            &[
                ("train (dropout)", |e| e.train_ppl),
                ("val (arch steps, dropout)", |e| e.arch_val_loss.exp()),
                ("val (eval mode)", |e| e.val_ppl),
            ],
        )],
    )?;
    let h: Vec<_> = history.iter().map(|e| e.alphas.clone()).collect();
    let labels = report::rnn_edge_labels(h.first().map_or(0, Vec::len));
    let evolution = report::alpha_evolution("softmax(α), recurrent cell", &h, &labels, op_names)?;
    write_figure(out, "alphas", &evolution)?;
    if let Some(last) = h.last() {
        let title = "final softmax(α), recurrent cell";
        let heat = report::alpha_heatmap(title, last, &labels, op_names)?;
        write_figure(out, "alphas_final", &heat)?;
    }
    if let Some(last) = history.last() {
        let json = last.genotype.to_json();
        write_epoch_genotype(out, last.epoch, &json, &last.genotype_python)?;
    }
    Ok(())
}
