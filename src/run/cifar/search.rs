//! Architecture search on CIFAR-10 (reference `cnn/train_search.py`).

use super::select::{select_pt, Selection};
use super::{evaluate, f64s, load_train, to_batch, Net, LAYERS_RULE};
use crate::checkpoint;
use crate::methods::{EpochSchedule, Method, MethodConfig};
use crate::parallel::{shard_range, GroupConfig};
use crate::report;
use crate::run::peer::{group_error, group_ok, run_threads, share_state, start_peer, PeerStart};
use crate::run::{
    append_timing, check, check_shared, failpoint, progress, seed_lock, write, write_bytes,
    write_checkpoint, write_epoch_genotype, write_figure, write_metrics, RunConfig, RunError,
    RunOptions,
};
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use darts_bilevel::params::values;
use darts_bilevel::sync::{average_buffers, SharedSync};
use darts_bilevel::{
    ArchBnStats, ArchitectConfig, Bilevel, CosineLr, NonFinitePolicy, Order, SearchEvent,
    WeightConfig,
};
use darts_cell::{ImageBatch, SearchNetworkConfig};
use darts_data::cifar::{search_split, Augment, HostBatch, Loader};
use darts_genotype::diagram::CellGraph;
use darts_genotype::{python, Genotype};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Configuration of an architecture search (reference `train_search.py` defaults).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchConfig {
    /// Directory with `data_batch_N.bin`.
    pub data: PathBuf,
    /// Use only the first N training images (None = all).
    pub limit_images: Option<usize>,
    /// Batch size.
    pub batch_size: usize,
    /// Initial weight learning rate.
    pub lr: f64,
    /// Final weight learning rate.
    pub lr_min: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// SGD weight decay.
    pub weight_decay: f64,
    /// Epochs.
    pub epochs: usize,
    /// Initial channels.
    pub init_channels: usize,
    /// Cells.
    pub layers: usize,
    /// Intermediate nodes per cell (the reference's `steps`; stored as `nodes` before).
    #[serde(alias = "nodes")]
    pub steps: usize,
    /// Fraction of the training set that trains the weights (the rest drives α).
    pub train_portion: f64,
    /// Second-order (unrolled) architecture gradient.
    pub unrolled: bool,
    /// Adam learning rate for α.
    pub arch_lr: f64,
    /// Adam weight decay for α.
    pub arch_weight_decay: f64,
    /// Global gradient-norm clip.
    pub grad_clip: f64,
    /// Seed (initialisation, data order, augmentation).
    pub seed: u64,
    /// Undo a step whose loss or gradient norm is not finite and go on (instead of stopping the
    /// run with an error).
    #[serde(default)]
    pub skip_non_finite_steps: bool,
    /// How the architecture steps draw their validation batches. [`ValSampling::Redraw`] (the
    /// reference's behaviour) is the default; configurations stored before this setting existed
    /// read as [`ValSampling::Cycle`], the behaviour they ran with.
    #[serde(default = "ValSampling::before_setting")]
    pub val_sampling: ValSampling,
    /// Whether the architecture step's training-mode passes update the BatchNorm running
    /// statistics too ([`ArchBnStats::ArchitectToo`], the reference, the default) or only the
    /// weight step's forward; configurations stored before this setting read as
    /// [`ArchBnStats::WeightStepOnly`]. Only the evaluation-mode validation metrics depend on
    /// it.
    #[serde(default = "crate::run::before_bn_setting")]
    pub arch_bn_stats: ArchBnStats,
    /// Adam betas of the architecture parameters ((0.5, 0.999); FairDARTS uses (0.9, 0.999)).
    #[serde(default = "darts_arch_betas")]
    pub arch_betas: (f64, f64),
    /// The search method's pieces (DARTS by default; see [`crate::methods`]).
    #[serde(default)]
    pub method: MethodConfig,
    /// How the final genotype is chosen: the method's derivation (default) or DARTS-PT's
    /// perturbation-based selection ([`Selection::Pt`]).
    #[serde(default)]
    pub select: Selection,
}

fn darts_arch_betas() -> (f64, f64) {
    (0.5, 0.999)
}

impl SearchConfig {
    /// The defaults with `method`'s preset: its pieces and its reference hyper-parameters
    /// (batch size, learning rates, Adam betas, epochs).
    pub fn for_method(method: Method) -> Self {
        let h = method.hyper();
        Self {
            batch_size: h.batch_size,
            lr: h.lr,
            lr_min: h.lr_min,
            weight_decay: h.weight_decay,
            init_channels: h.init_channels,
            layers: h.layers,
            arch_lr: h.arch_lr,
            arch_betas: h.arch_betas,
            epochs: h.epochs,
            method: method.config(),
            ..Default::default()
        }
    }
}

/// How the architecture steps of a search draw their validation batches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValSampling {
    /// Every step draws a fresh random batch of the validation split, independently of the
    /// others (the reference's `next(iter(valid_queue))` on a `SubsetRandomSampler`: the first
    /// batch of a new random permutation each step). Seeded by (seed, epoch, step).
    #[default]
    Redraw,
    /// The steps walk through shuffled passes of the validation split, each image once per pass
    /// (this library's behaviour before the setting existed).
    Cycle,
}

impl ValSampling {
    fn before_setting() -> Self {
        ValSampling::Cycle
    }
}

impl Default for SearchConfig {
    fn default() -> Self {
        Self {
            data: PathBuf::from("data/cifar10-sample"),
            limit_images: None,
            batch_size: 64,
            lr: 0.025,
            lr_min: 0.001,
            momentum: 0.9,
            weight_decay: 3e-4,
            epochs: 50,
            init_channels: 16,
            layers: 8,
            steps: 4,
            train_portion: 0.5,
            unrolled: false,
            arch_lr: 3e-4,
            arch_weight_decay: 1e-3,
            grad_clip: 5.0,
            seed: 2,
            skip_non_finite_steps: false,
            val_sampling: ValSampling::Redraw,
            arch_bn_stats: ArchBnStats::ArchitectToo,
            arch_betas: darts_arch_betas(),
            method: MethodConfig::default(),
            select: Selection::Darts,
        }
    }
}

/// One epoch of a search, as written to `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchEpoch {
    /// Epoch (0-based).
    pub epoch: usize,
    /// Weight learning rate.
    #[serde(with = "crate::nonfinite")]
    pub lr: f64,
    /// Mean training loss.
    #[serde(with = "crate::nonfinite")]
    pub train_loss: f64,
    /// Training accuracy.
    #[serde(with = "crate::nonfinite")]
    pub train_acc: f64,
    /// Mean validation loss seen by the architecture steps (training-mode BN).
    #[serde(with = "crate::nonfinite")]
    pub arch_val_loss: f64,
    /// Validation loss in evaluation mode (running BN statistics).
    #[serde(with = "crate::nonfinite")]
    pub val_loss: f64,
    /// Validation accuracy in evaluation mode.
    #[serde(with = "crate::nonfinite")]
    pub val_acc: f64,
    /// Steps taken.
    pub steps: usize,
    /// Steps undone because they were not finite (`skip_non_finite_steps`).
    #[serde(default)]
    pub skipped_steps: usize,
    /// Wall time of the epoch (s). Not written to `metrics.jsonl` or the checkpoint (it would
    /// make two identical runs' directories differ); `timing.jsonl` logs it. 0 for epochs
    /// read back from a checkpoint.
    #[serde(skip)]
    pub seconds: f64,
    /// Derived genotype.
    pub genotype: Genotype,
    /// The same, in Python notation.
    pub genotype_python: String,
    /// softmax(α) of the normal cell, `[edge][op]`.
    #[serde(with = "crate::nonfinite::table")]
    pub alphas_normal: Vec<Vec<f64>>,
    /// softmax(α) of the reduction cell.
    #[serde(with = "crate::nonfinite::table")]
    pub alphas_reduce: Vec<Vec<f64>>,
    /// PC-DARTS's normalised edge weights `β̂` of the normal cell, per edge (with edge
    /// normalisation only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge_weights_normal: Option<Vec<f64>>,
    /// `β̂` of the reduction cell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge_weights_reduce: Option<Vec<f64>>,
    /// The method's schedule values of the epoch (absent for plain DARTS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<EpochSchedule>,
}

/// The result of [`run_search`].
pub type SearchSummary = crate::run::SearchOutcome<SearchEpoch, Genotype>;

fn write_search_outputs(
    out: &Path,
    history: &[SearchEpoch],
    op_names: &[String],
) -> Result<(), RunError> {
    write_metrics(
        out,
        history,
        &[
            (
                "loss",
                "cross-entropy",
                &[
                    ("train", |e| e.train_loss),
                    ("val (arch steps)", |e| e.arch_val_loss),
                    ("val (eval mode)", |e| e.val_loss),
                ],
            ),
            (
                "accuracy",
                "top-1 accuracy",
                &[
                    ("train", |e| e.train_acc),
                    ("val (eval mode)", |e| e.val_acc),
                ],
            ),
        ],
    )?;
    let hn: Vec<_> = history.iter().map(|e| e.alphas_normal.clone()).collect();
    let hr: Vec<_> = history.iter().map(|e| e.alphas_reduce.clone()).collect();
    for (cell, h) in [("normal", &hn), ("reduce", &hr)] {
        let labels = report::cnn_edge_labels(h.first().map_or(0, Vec::len));
        let title = format!("softmax(α), {cell} cell");
        let evolution = report::alpha_evolution(&title, h, &labels, op_names)?;
        write_figure(out, &format!("alphas_{cell}"), &evolution)?;
        if let Some(last) = h.last() {
            let title = format!("final softmax(α), {cell} cell");
            let heat = report::alpha_heatmap(&title, last, &labels, op_names)?;
            write_figure(out, &format!("alphas_{cell}_final"), &heat)?;
        }
    }
    if let Some(last) = history.last() {
        let json = last.genotype.to_json();
        write_epoch_genotype(out, last.epoch, &json, &last.genotype_python)?;
    }
    Ok(())
}

fn write_genotype_files(out: &Path, g: &Genotype) -> Result<(), RunError> {
    write(&out.join("genotype.json"), &g.to_json())?;
    write(
        &out.join("genotype.py"),
        &format!("{}\n", python::to_python(g)),
    )?;
    let n = CellGraph::conv(&g.normal, &g.normal_concat);
    let r = CellGraph::conv(&g.reduce, &g.reduce_concat);
    write(&out.join("normal.svg"), &n.to_svg())?;
    write(&out.join("reduce.svg"), &r.to_svg())?;
    write_bytes(&out.join("normal.png"), &report::cell_diagram_png(&n)?)?;
    write_bytes(&out.join("reduce.png"), &report::cell_diagram_png(&r)?)?;
    write(&out.join("normal.dot"), &n.to_dot())?;
    write(&out.join("reduce.dot"), &r.to_dot())
}

/// The three loaders of a search: weights (train part, augmented), architecture (val part,
/// augmented) and evaluation (val part, plain).
pub(super) struct SearchLoaders {
    pub(super) train: Loader,
    pub(super) val: Loader,
    pub(super) infer: Loader,
}

impl SearchLoaders {
    fn new(cfg: &SearchConfig) -> Result<Self, RunError> {
        let data = load_train(&cfg.data, cfg.limit_images)?;
        let (train_idx, val_idx) = search_split(data.len(), cfg.train_portion)?;
        let augmented = |indices: Vec<usize>, stream: u64| {
            let mut l = Loader::new(data.clone(), indices, cfg.batch_size);
            l.shuffle = true;
            l.augment = Augment::SEARCH;
            l.seed = cfg.seed;
            l.stream = stream;
            l
        };
        Ok(Self {
            train: augmented(train_idx, 1),
            val: augmented(val_idx.clone(), 2),
            infer: Loader::new(data.clone(), val_idx, cfg.batch_size),
        })
    }

    /// The validation batches of the architecture steps of one epoch. [`ValSampling::Redraw`]:
    /// step `s` takes the first batch of the permutation keyed `redraw_key + s`;
    /// [`ValSampling::Cycle`]: the shuffled passes keyed `cycle_key`, `cycle_key + 1`, … one
    /// after the other. The callers' keys keep different epochs (and the search's from
    /// DARTS-PT's fine-tuning) apart.
    pub(super) fn val_stream<'a, B: AutodiffBackend>(
        &'a self,
        sampling: ValSampling,
        redraw_key: usize,
        cycle_key: usize,
        (rank, world): (usize, usize),
        device: &'a B::Device,
    ) -> Box<dyn Iterator<Item = ImageBatch<B>> + 'a> {
        let val = &self.val;
        let host: Box<dyn Iterator<Item = HostBatch> + 'a> = match sampling {
            ValSampling::Redraw => Box::new((0..).map(move |step: usize| {
                let key = redraw_key + step;
                val.batch(key, 0, &val.order(key))
            })),
            ValSampling::Cycle => Box::new((0..).flat_map(move |k| val.epoch(cycle_key + k, 0))),
        };
        Box::new(
            host.filter(move |h| h.len() >= world)
                .map(move |h| to_batch::<B>(&shard_host(&h, rank, world), device)),
        )
    }
}

/// The supernet (seeded) and the bilevel optimisation state of `cfg`.
fn build_search<B: AutodiffBackend>(
    cfg: &SearchConfig,
    device: &B::Device,
) -> Result<Bilevel<B, Net<B>>, RunError> {
    let net: Net<B> = {
        let _guard = seed_lock();
        B::seed(device, cfg.seed);
        cfg.method.supernet::<B>(
            SearchNetworkConfig {
                channels: cfg.init_channels,
                layers: cfg.layers,
                steps: cfg.steps,
                multiplier: cfg.steps,
                ..Default::default()
            },
            device,
        )?
    };
    let mut search = Bilevel::new(
        net,
        WeightConfig {
            lr: CosineLr {
                max: cfg.lr,
                min: cfg.lr_min,
                epochs: cfg.epochs,
            },
            momentum: cfg.momentum,
            weight_decay: cfg.weight_decay,
            grad_clip: (cfg.grad_clip > 0.0).then_some(cfg.grad_clip),
        },
        ArchitectConfig {
            order: if cfg.unrolled {
                Order::Second
            } else {
                Order::First
            },
            arch_lr: cfg.arch_lr,
            arch_betas: cfg.arch_betas,
            arch_weight_decay: cfg.arch_weight_decay,
            bn_stats: cfg.arch_bn_stats,
            ..Default::default()
        },
    );
    if cfg.skip_non_finite_steps {
        search.on_non_finite = NonFinitePolicy::SkipStep;
    }
    Ok(search)
}

/// One epoch of the search: the bilevel steps, then the evaluation-mode validation pass and the
/// epoch's record (an error if a step diverged).
fn search_epoch<B: AutodiffBackend>(
    search: &mut Bilevel<B, Net<B>>,
    loaders: &SearchLoaders,
    cfg: &SearchConfig,
    epoch: usize,
    show: bool,
    device: &B::Device,
) -> Result<SearchEpoch, RunError> {
    let t0 = Instant::now();
    let schedule = apply_schedule(search, &cfg.method, cfg.seed, epoch, cfg.epochs);
    let pb = progress(
        loaders.train.batches_per_epoch(),
        format!("epoch {}/{}", epoch + 1, cfg.epochs),
        show,
    );
    let sync = search.sync.clone();
    let (rank, world) = sync.as_ref().map_or((0, 1), |s| (s.rank(), s.world()));
    // Data-parallel: every peer reads the global batch and takes its rows; a batch smaller
    // than the group (an epoch's last) is left out by every peer.
    let train_batches = loaders
        .train
        .epoch(epoch, 0)
        .filter(move |h| h.len() >= world)
        .map(move |h| to_batch::<B>(&shard_host(&h, rank, world), device));
    // Redraw keys above 2^40 stay apart from the cycling passes' (epoch · 1000 + k).
    let mut val_stream = loaders.val_stream::<B>(
        cfg.val_sampling,
        (1 << 40) + epoch * (1 << 20),
        epoch * 1000,
        (rank, world),
        device,
    );
    let step_point = format!("search_step_rank{rank}");
    let stats = search.run_epoch(epoch, train_batches, &mut val_stream, |ev| {
        let SearchEvent::Step { stats, .. } = ev;
        failpoint(&step_point);
        pb.inc(1);
        pb.set_message(format!(
            "loss {:.3} acc {:.1}% val {:.3}",
            stats.train_loss,
            100.0 * stats.train_correct.unwrap_or(0.0) / stats.train_size.max(1) as f64,
            stats.val_loss
        ));
    });
    pb.finish_and_clear();
    if let Some(why) = stats.aborted {
        return Err(group_error(rank, why));
    }
    if let Some(bad) = &stats.non_finite {
        let hint = "; lower --lr or --arch-lr, or pass --skip-non-finite-steps to undo such steps";
        return Err(RunError::diverged(
            "search", epoch, bad.step, &bad.what, hint,
        ));
    }
    if let Some(s) = &sync {
        // The replicas' running statistics followed their own shards: average them.
        search.model = average_buffers(search.model.clone(), s.as_ref());
    }
    let model = search.model.valid();
    let (val_loss, val_acc) =
        evaluate::<B::InnerBackend, _>(&loaders.infer, device, sync.as_deref(), |x| {
            model.forward(x)
        });
    group_ok(sync.as_deref())?;
    let (an, ar) = search.model.arch_weights();
    let edges = search.model.edge_weights();
    let genotype = search.model.genotype();
    let to_f64 = |v: Vec<f32>| v.into_iter().map(f64::from).collect::<Vec<_>>();
    let (edge_weights_normal, edge_weights_reduce) = match edges {
        Some((n, r)) => (Some(to_f64(n)), Some(to_f64(r))),
        None => (None, None),
    };
    Ok(SearchEpoch {
        epoch,
        lr: stats.lr,
        train_loss: stats.train_loss,
        train_acc: stats.train_acc.unwrap_or(0.0),
        arch_val_loss: stats.val_loss,
        val_loss,
        val_acc,
        steps: stats.steps,
        skipped_steps: stats.skipped,
        seconds: t0.elapsed().as_secs_f64(),
        genotype_python: python::to_python(&genotype),
        genotype,
        alphas_normal: f64s(an),
        alphas_reduce: f64s(ar),
        edge_weights_normal,
        edge_weights_reduce,
        schedule,
    })
}

/// [`MethodConfig::apply`]; `None` for plain DARTS (no schedule to record).
fn apply_schedule<B: AutodiffBackend>(
    search: &mut Bilevel<B, Net<B>>,
    method: &MethodConfig,
    seed: u64,
    epoch: usize,
    epochs: usize,
) -> Option<EpochSchedule> {
    let s = method.apply(search, seed, epoch, epochs);
    (*method != MethodConfig::default()).then_some(s)
}

fn print_epoch(rec: &SearchEpoch) {
    eprintln!(
        "epoch {:>3}  lr {:.5}  train loss {:.4} acc {:5.1}%  val loss {:.4} acc {:5.1}%  {:.0}s\n  {}",
        rec.epoch + 1,
        rec.lr,
        rec.train_loss,
        100.0 * rec.train_acc,
        rec.val_loss,
        100.0 * rec.val_acc,
        rec.seconds,
        rec.genotype_python
    );
}

/// Commit an epoch: its outputs first, then the checkpoint. A kill in between repeats the epoch
/// on resume, which writes the same outputs again.
fn commit_epoch<B: AutodiffBackend>(
    out: &Path,
    cfg: &SearchConfig,
    history: &[SearchEpoch],
    search: &Bilevel<B, Net<B>>,
    op_names: &[String],
) -> Result<(), RunError> {
    let last = history.last().expect("an epoch to commit");
    write_search_outputs(out, history, op_names)?;
    append_timing(out, last.epoch, last.seconds)?;
    failpoint("epoch_outputs_written");
    write_checkpoint(out, cfg, history, last.epoch, |c| {
        Ok(checkpoint::save_bilevel(c, search)?)
    })?;
    failpoint("checkpoint_committed");
    Ok(())
}

impl RunConfig for SearchConfig {
    const KIND: &'static str = "cifar10_search";
    const MUTABLE: &'static [&'static str] = &["epochs", "skip_non_finite_steps"];
    fn validate(&self) -> Result<(), RunError> {
        let no_epochs = "must be at least 1 (a search of no epochs derives nothing)";
        check_shared(self, no_epochs)?;
        check(self.layers >= 3, "layers", LAYERS_RULE, self.layers)?;
        let lr_min_ok = self.lr_min.is_finite() && (0.0..=self.lr).contains(&self.lr_min);
        check(
            lr_min_ok,
            "lr-min",
            "must be between 0 and --lr",
            self.lr_min,
        )?;
        self.method
            .validate()
            .map_err(|why| RunError::Config(format!("method: {why}")))?;
        let k = self.method.partial_channels;
        if let Selection::Pt { interval } = self.select {
            check(interval >= 1, "pt-interval", "must be at least 1", interval)?;
        }
        check(
            self.init_channels.is_multiple_of(k),
            "init-channels",
            &format!("must be a multiple of K = {k} with partial channels (the candidates see C/K channels)"),
            self.init_channels,
        )?;
        let portion_ok = self.train_portion > 0.0 && self.train_portion < 1.0;
        let portion_rule = "must be strictly between 0 and 1";
        check(
            portion_ok,
            "train-portion",
            portion_rule,
            self.train_portion,
        )
    }
}

/// Run (or resume) an architecture search on `device`.
pub fn run_search<B: AutodiffBackend>(
    config: &SearchConfig,
    opts: &RunOptions,
    device: &B::Device,
) -> Result<SearchSummary, RunError> {
    crate::threads::run_pooled_on::<B, _>(|| search_as::<B>(config, opts, device, None))
}

/// Run (or resume) a search data-parallel on `devices` (one peer per device, threads of this
/// process). Every peer runs the same search on its shard of each batch; rank 0 opens the
/// output directory, writes the outputs and checkpoints, and sends its state (weights, α,
/// optimisers, history) to the others before the first epoch. Returns rank 0's summary.
pub fn run_search_parallel<B: AutodiffBackend>(
    config: &SearchConfig,
    opts: &RunOptions,
    devices: &[B::Device],
    group: &GroupConfig,
) -> Result<SearchSummary, RunError> {
    run_threads::<B::InnerBackend, _>(devices, group, |device, sync| {
        search_as::<B>(config, opts, device, Some(sync))
    })
}

/// Run (or resume) a search as one peer of a data-parallel group (`sync`): every peer calls it
/// with the same configuration and options, each on its own device. This is how the processes
/// of an MPI job ([`crate::parallel`]) or any other [`GradSync`](darts_bilevel::sync::GradSync) run a search; see
/// [`run_search_parallel`] for the threads of one process.
pub fn run_search_peer<B: AutodiffBackend>(
    config: &SearchConfig,
    opts: &RunOptions,
    device: &B::Device,
    sync: SharedSync<B::InnerBackend>,
) -> Result<SearchSummary, RunError> {
    crate::threads::run_pooled_on::<B, _>(|| search_as::<B>(config, opts, device, Some(sync)))
}

/// One peer's (or the single device's) search.
fn search_as<B: AutodiffBackend>(
    config: &SearchConfig,
    opts: &RunOptions,
    device: &B::Device,
    sync: Option<SharedSync<B::InnerBackend>>,
) -> Result<SearchSummary, RunError> {
    let out = &opts.out;
    let lead = sync.as_ref().is_none_or(|s| s.rank() == 0);
    // Rank 0 opens (and locks) the directory; the others get its configuration and history.
    let (cfg, mut history, ckpt, _lock): PeerStart<SearchConfig, SearchEpoch> =
        start_peer(config, opts, sync.as_deref(), device)?;
    let loaders = SearchLoaders::new(&cfg)?;
    let mut search = build_search::<B>(&cfg, device)?;
    let params = search.model.num_weights();
    let op_names = search.model.op_names.clone();
    let start = history.len();
    // DrNAS's progressive stages: a resumed run rebuilds the shapes of the stage its
    // checkpoint was written in (after epoch `start − 1`) before loading it; the loop below
    // enters a new stage at the start of its first epoch.
    let mut stage = start
        .checked_sub(1)
        .map_or(0, |last| cfg.method.stage_at(last, cfg.epochs));
    for s in 1..=stage {
        cfg.method.enter_stage(&mut search, s, cfg.seed);
    }
    if let Some(c) = &ckpt {
        checkpoint::load_bilevel(c, &mut search)?;
    }
    let save = |c: &mut checkpoint::Checkpoint| Ok(checkpoint::save_bilevel(c, &search)?);
    let header = (&cfg, &history);
    if let Some(c) = share_state::<B::InnerBackend>(sync.as_deref(), &header, save, device)? {
        checkpoint::load_bilevel(&c, &mut search)?;
    }
    search.sync = sync.clone();
    let stopped_early = opts.stop_after.is_some_and(|n| n.max(start) < cfg.epochs);
    let end = opts.stop_after.map_or(cfg.epochs, |n| n.min(cfg.epochs));
    for epoch in start..end {
        let now = cfg.method.stage_at(epoch, cfg.epochs);
        if now != stage {
            cfg.method.enter_stage(&mut search, now, cfg.seed);
            stage = now;
        }
        let show = opts.progress && lead;
        let rec = search_epoch(&mut search, &loaders, &cfg, epoch, show, device)?;
        if show {
            print_epoch(&rec);
        }
        history.push(rec);
        if lead {
            commit_epoch(out, &cfg, &history, &search, &op_names)?;
        }
    }
    let mut genotype = search.model.genotype();
    if !stopped_early {
        if let Selection::Pt { interval } = cfg.select {
            // The method's schedule as at its last epoch (e.g. SDARTS's ε), fresh noise. Every
            // peer takes part: the fine-tuning is data-parallel and the evaluations are split
            // by batch, so every peer makes the same decisions.
            apply_schedule(
                &mut search,
                &cfg.method,
                cfg.seed ^ 0x97,
                end - 1,
                cfg.epochs,
            );
            let show = opts.progress && lead;
            let pt = select_pt(&mut search, &loaders, &cfg, interval, show, device)?;
            group_ok(sync.as_deref())?;
            if lead {
                let json = serde_json::to_string_pretty(&pt)
                    .map_err(|e| RunError::Config(e.to_string()))?;
                write(&out.join("selection.json"), &json)?;
            }
            genotype = pt.genotype;
        }
        if lead {
            write_genotype_files(out, &genotype)?;
        }
    }
    let ids = search.model.alpha_ids();
    let alphas = values(&search.model, &ids);
    let alphas = ids
        .iter()
        .flat_map(|id| darts_ops::to_f32s(&alphas[id]))
        .collect();
    Ok(SearchSummary {
        history,
        genotype,
        alphas,
        params,
        stopped_early,
        data: (),
    })
}

/// Rows `shard_range(len, rank, world)` of a host batch.
pub(super) fn shard_host(h: &HostBatch, rank: usize, world: usize) -> HostBatch {
    if world == 1 {
        return h.clone();
    }
    let r = shard_range(h.len(), rank, world);
    let per = h.images.len() / h.len().max(1);
    HostBatch {
        images: h.images[r.start * per..r.end * per].to_vec(),
        labels: h.labels[r.clone()].to_vec(),
    }
}
