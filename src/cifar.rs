//! The CIFAR-10 protocol of the paper (§3.1–3.2), as library functions that the examples
//! `cifar10_search` and `cifar10_train` wrap: architecture search on a train/val split of the
//! training set, and training a derived network from scratch.
//!
//! Both write into an output directory: `metrics.jsonl` (one JSON object per epoch), plots
//! (SVG), an atomic `checkpoint.bin` after every epoch (resumable), and for the search the
//! genotype of every epoch (`genotypes/epoch_NNN.{json,py}`), the final genotype and its cell
//! diagrams.

use crate::checkpoint::{self, Checkpoint, CheckpointError};
use crate::report;
use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ElementConversion;
use darts_bilevel::params::values;
use darts_bilevel::{
    weight_step, ArchitectConfig, Bilevel, CosineLr, NonFinitePolicy, Order, SearchEvent, Sgd,
    WeightConfig,
};
use darts_cell::batch::{correct, cross_entropy};
use darts_cell::{EvalNetworkConfig, ImageBatch, SearchNetwork, SearchNetworkConfig};
use darts_data::cifar::{search_split, Augment, Cifar10, CifarError, HostBatch, Loader};
use darts_genotype::diagram::CellGraph;
use darts_genotype::{python, Genotype};
use darts_mixed_op::{DartsSpace, Softmax};
use darts_ops::DartsOp;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Errors of a run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Data loading failed.
    #[error(transparent)]
    Data(#[from] CifarError),
    /// Penn Treebank loading failed.
    #[error(transparent)]
    Ptb(#[from] darts_data::ptb::PtbError),
    /// Checkpoint I/O failed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The genotype could not be read.
    #[error("genotype {source_name}: {error}")]
    Genotype {
        /// Where it came from.
        source_name: String,
        /// What is wrong.
        error: String,
    },
    /// Building the network failed.
    #[error(transparent)]
    Cell(#[from] darts_cell::CellError),
    /// Writing an output failed.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Invalid configuration.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A step produced NaN or infinite values; nothing of that epoch was written.
    #[error("the {run} diverged at epoch {epoch}, step {step}: the {what} is not finite. Nothing of epoch {epoch} was written; the checkpoint of the last finished epoch is kept{hint}")]
    Diverged {
        /// Which run (search, training).
        run: &'static str,
        /// Epoch (1-based, as on the console).
        epoch: usize,
        /// Step within the epoch (1-based).
        step: usize,
        /// What was not finite.
        what: String,
        /// What the user can do.
        hint: &'static str,
    },
    /// The output directory already holds another run.
    #[error("{path} already holds a run ({found}): pass --resume {path} to continue it, --overwrite to replace it, or choose another --out")]
    OutputExists {
        /// The directory.
        path: PathBuf,
        /// Some of what is in it.
        found: String,
    },
    /// Another process is running in the output directory.
    #[error("{path} is in use by another run (it holds the lock {path}/.lock); wait for it to finish or choose another --out")]
    Locked {
        /// The directory.
        path: PathBuf,
    },
    /// `--resume` was given flags that would change what the run is.
    #[error("cannot resume {path} with different settings: {conflicts}. Only {mutable} may change on resume; start a new run (another --out, or --overwrite) to change the rest")]
    ResumeConflict {
        /// The directory.
        path: PathBuf,
        /// Each conflicting flag with both values.
        conflicts: String,
        /// The flags that may change.
        mutable: String,
    },
    /// `--resume` found nothing to resume.
    #[error("nothing to resume in {path}: {why}")]
    NoCheckpoint {
        /// The directory.
        path: PathBuf,
        /// What is missing.
        why: String,
    },
}

/// Check one configuration value; the message names the flag.
pub(crate) fn check(
    ok: bool,
    flag: &str,
    rule: &str,
    value: impl std::fmt::Display,
) -> Result<(), RunError> {
    if ok {
        Ok(())
    } else {
        Err(RunError::Config(format!("--{flag} {value}: {rule}")))
    }
}

/// Seeding a backend sets a process-wide generator (on CPU), so seeding and initialising happen
/// under this lock: runs in parallel threads of one process cannot interleave their draws.
pub(crate) static SEED_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub(crate) fn write(path: &Path, text: &str) -> Result<(), RunError> {
    let io = |source| RunError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("part");
    std::fs::write(&tmp, text).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// The run directory's lock, held (an OS file lock on `.lock`) while the run lives.
#[derive(Debug)]
pub(crate) struct RunLock {
    _file: std::fs::File,
}

/// Files a run writes, which `--overwrite` removes (anything else in the directory is left).
fn is_run_output(name: &str) -> bool {
    matches!(
        name,
        "checkpoint.bin" | "metrics.jsonl" | "config.json" | "genotypes"
    ) || [".tmp", ".part", ".svg", ".dot", ".py", ".json"]
        .iter()
        .any(|ext| name.ends_with(ext))
}

fn remove_stale(dir: &Path) -> Result<(), RunError> {
    for d in [dir.to_path_buf(), dir.join("genotypes")] {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") || name.ends_with(".part") {
                std::fs::remove_file(e.path()).map_err(|source| RunError::Io {
                    path: e.path(),
                    source,
                })?;
            }
        }
    }
    Ok(())
}

/// Open the output directory: lock it, and either read the checkpoint to resume (its
/// configuration and history then replace `config`) or start a new run, refusing a directory
/// that holds another run unless `opts.overwrite` (which removes the earlier run's files first).
/// Leftover temporary files of an interrupted write are removed either way.
///
/// On resume, the settings in [`RunOptions::given`] are compared with the checkpoint's: those
/// in `mutable` (e.g. `epochs`, to extend a run) take the new value, any other that differs is a
/// [`RunError::ResumeConflict`] naming it.
pub(crate) fn open_run<C, H>(
    config: &C,
    opts: &RunOptions,
    kind: &str,
    mutable: &[&str],
) -> Result<(C, Vec<H>, Option<Checkpoint>, RunLock), RunError>
where
    C: Clone + Serialize + serde::de::DeserializeOwned,
    H: serde::de::DeserializeOwned,
{
    let dir = &opts.out;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RunError::Io { path, source }
    };
    if opts.resume {
        if !dir.join("checkpoint.bin").is_file() {
            let why = if dir.is_dir() {
                "no checkpoint.bin (a run killed before its first epoch ended has none: start it again without --resume, with --overwrite)"
            } else {
                "no such directory"
            };
            return Err(RunError::NoCheckpoint {
                path: dir.clone(),
                why: why.into(),
            });
        }
    } else {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let lock_path = dir.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io(&lock_path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(RunError::Locked { path: dir.clone() })
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io(&lock_path)(e)),
    }
    let lock = RunLock { _file: file };
    if !opts.resume {
        let mut found: Vec<String> = std::fs::read_dir(dir)
            .map_err(io(dir))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != ".lock")
            .collect();
        found.sort();
        if !found.is_empty() && !opts.overwrite {
            let shown = found.iter().take(4).cloned().collect::<Vec<_>>().join(", ");
            let more = found.len().saturating_sub(4);
            return Err(RunError::OutputExists {
                path: dir.clone(),
                found: if more > 0 {
                    format!("{shown} and {more} more")
                } else {
                    shown
                },
            });
        }
        for name in found.iter().filter(|n| is_run_output(n)) {
            let p = dir.join(name);
            let r = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            r.map_err(io(&p))?;
        }
        return Ok((config.clone(), Vec::new(), None, lock));
    }
    remove_stale(dir)?;
    let c = Checkpoint::read(dir.join("checkpoint.bin"))?;
    let found = c.meta["kind"].as_str().unwrap_or("unknown");
    if found != kind {
        return Err(RunError::Config(format!(
            "{} holds a {found} run, which a {kind} run cannot resume",
            dir.display()
        )));
    }
    let mut stored = c.meta["config"].clone();
    let wanted = serde_json::to_value(config).expect("configurations serialise");
    let mut conflicts = Vec::new();
    for key in &opts.given {
        let (Some(new), Some(old)) = (wanted.get(key), stored.get(key)) else {
            continue;
        };
        if new == old {
            continue;
        }
        if mutable.contains(&key.as_str()) {
            if opts.progress {
                eprintln!("resuming with {key} = {new} (was {old})");
            }
            stored[key] = new.clone();
        } else {
            conflicts.push(format!(
                "--{} {new} (the run has {old})",
                key.replace('_', "-")
            ));
        }
    }
    if !conflicts.is_empty() {
        return Err(RunError::ResumeConflict {
            path: dir.clone(),
            conflicts: conflicts.join(", "),
            mutable: mutable
                .iter()
                .map(|k| format!("--{}", k.replace('_', "-")))
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let cfg = serde_json::from_value(stored).map_err(|e| {
        RunError::Config(format!(
            "the checkpoint in {} is of a {kind} run, and its configuration does not fit this one: {e}",
            dir.display()
        ))
    })?;
    let history = serde_json::from_value(c.meta["history"].clone()).map_err(|e| {
        RunError::Config(format!(
            "the metrics history in the {kind} checkpoint {} cannot be read: {e}",
            dir.join("checkpoint.bin").display()
        ))
    })?;
    Ok((cfg, history, Some(c), lock))
}

/// Append the wall time of an epoch to `timing.jsonl` (a log: an epoch repeated after a kill
/// appears twice). Kept apart from `metrics.jsonl` so that the metrics and the checkpoint of a
/// run depend on its configuration only.
pub(crate) fn append_timing(dir: &Path, epoch: usize, seconds: f64) -> Result<(), RunError> {
    use std::io::Write as _;
    let path = dir.join("timing.jsonl");
    let io = |source| RunError::Io {
        path: path.clone(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io)?;
    writeln!(f, "{{\"epoch\": {epoch}, \"seconds\": {seconds:.3}}}").map_err(io)
}

/// Fault injection for the kill tests: when the environment variable `DARTS_FAILPOINT` is
/// `NAME:K`, the process aborts (as a `kill -9` would stop it: no destructors, no flushing) the
/// K-th time it reaches the point `NAME`. Without the variable this is one relaxed atomic load.
pub(crate) fn failpoint(name: &str) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::OnceLock;
    static TARGET: OnceLock<Option<(String, usize)>> = OnceLock::new();
    static HITS: AtomicUsize = AtomicUsize::new(0);
    let target = TARGET.get_or_init(|| {
        let v = std::env::var("DARTS_FAILPOINT").ok()?;
        let (n, k) = v.rsplit_once(':')?;
        Some((n.to_string(), k.parse().ok()?))
    });
    if let Some((n, k)) = target {
        if n == name && HITS.fetch_add(1, Ordering::Relaxed) + 1 == *k {
            eprintln!("DARTS_FAILPOINT: aborting at {name} (hit {k})");
            std::process::abort();
        }
    }
}

/// Write one JSON object per line, atomically.
pub(crate) fn write_jsonl<T: Serialize>(path: &Path, rows: &[T]) -> Result<(), RunError> {
    let mut jsonl = String::new();
    for r in rows {
        jsonl.push_str(&serde_json::to_string(r).expect("serialisable"));
        jsonl.push('\n');
    }
    write(path, &jsonl)
}

pub(crate) fn progress(len: usize, prefix: String, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len as u64);
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix} [{bar:30.cyan/blue}] {pos}/{len} {msg} ({per_sec}, eta {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_prefix(prefix);
    pb
}

fn load_train(data: &Path, limit: Option<usize>) -> Result<Arc<Cifar10>, RunError> {
    let mut d = Cifar10::load_train(data)?;
    if let Some(n) = limit {
        if n < d.len() {
            d = d.subset(&(0..n).collect::<Vec<_>>());
        }
    }
    Ok(Arc::new(d))
}

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
    /// Intermediate nodes per cell.
    pub nodes: usize,
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
}

impl SearchConfig {
    /// Check every value; the error names the flag.
    pub fn validate(&self) -> Result<(), RunError> {
        check(
            self.batch_size > 0,
            "batch-size",
            "must be at least 1",
            self.batch_size,
        )?;
        check(
            self.epochs > 0,
            "epochs",
            "must be at least 1 (a search of no epochs derives nothing)",
            self.epochs,
        )?;
        check(
            self.init_channels > 0,
            "init-channels",
            "must be at least 1",
            self.init_channels,
        )?;
        check(
            self.layers >= 3,
            "layers",
            "must be at least 3 (two reduction cells at layers/3 and 2·layers/3)",
            self.layers,
        )?;
        check(self.nodes > 0, "nodes", "must be at least 1", self.nodes)?;
        check(
            self.limit_images != Some(0),
            "limit-images",
            "must be at least 1",
            0,
        )?;
        check(
            self.lr.is_finite() && self.lr > 0.0,
            "lr",
            "must be a positive number",
            self.lr,
        )?;
        check(
            self.lr_min.is_finite() && self.lr_min >= 0.0 && self.lr_min <= self.lr,
            "lr-min",
            "must be between 0 and --lr",
            self.lr_min,
        )?;
        check(
            (0.0..1.0).contains(&self.momentum),
            "momentum",
            "must be in [0, 1)",
            self.momentum,
        )?;
        check(
            self.weight_decay.is_finite() && self.weight_decay >= 0.0,
            "weight-decay",
            "must be 0 or positive",
            self.weight_decay,
        )?;
        check(
            self.train_portion > 0.0 && self.train_portion < 1.0,
            "train-portion",
            "must be strictly between 0 and 1",
            self.train_portion,
        )?;
        check(
            self.arch_lr.is_finite() && self.arch_lr >= 0.0,
            "arch-lr",
            "must be 0 or positive",
            self.arch_lr,
        )?;
        check(
            self.arch_weight_decay.is_finite() && self.arch_weight_decay >= 0.0,
            "arch-weight-decay",
            "must be 0 or positive",
            self.arch_weight_decay,
        )?;
        check(
            self.grad_clip.is_finite() && self.grad_clip >= 0.0,
            "grad-clip",
            "must be 0 (off) or positive",
            self.grad_clip,
        )
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
            nodes: 4,
            train_portion: 0.5,
            unrolled: false,
            arch_lr: 3e-4,
            arch_weight_decay: 1e-3,
            grad_clip: 5.0,
            seed: 2,
            skip_non_finite_steps: false,
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
}

/// The result of [`run_search`].
#[derive(Clone, Debug)]
pub struct SearchSummary {
    /// All epochs so far (including those before a resume).
    pub history: Vec<SearchEpoch>,
    /// Final genotype.
    pub genotype: Genotype,
    /// Raw α values (normal then reduce), for exact comparisons.
    pub alphas: Vec<f32>,
    /// Number of supernet weights.
    pub params: usize,
    /// Whether the run stopped early (`stop_after`).
    pub stopped_early: bool,
}

/// Options of a run that are not part of its configuration.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Output directory.
    pub out: PathBuf,
    /// Continue from `out/checkpoint.bin` (the configuration stored there is used).
    pub resume: bool,
    /// Start a new run in `out` even if it holds an earlier run (whose files are removed).
    pub overwrite: bool,
    /// Configuration fields the user set explicitly (e.g. from the command line). On resume
    /// they are checked against the checkpoint's configuration: the few that may change (the
    /// number of epochs) are taken, any other that differs is an error.
    pub given: Vec<String>,
    /// Stop after this many epochs in total (simulates an interruption; the checkpoint stays).
    pub stop_after: Option<usize>,
    /// Show progress bars.
    pub progress: bool,
}

type Net<B> = SearchNetwork<B, DartsOp<B>>;

fn to_batch<B: Backend>(h: &HostBatch, device: &B::Device) -> ImageBatch<B> {
    ImageBatch::from_host(h.images.clone(), h.dims(), &h.labels, device)
}

fn f64s(rows: Vec<Vec<f32>>) -> Vec<Vec<f64>> {
    rows.into_iter()
        .map(|r| r.into_iter().map(f64::from).collect())
        .collect()
}

/// Loss and accuracy in evaluation mode (inner backend: running BN statistics, no graph).
fn evaluate<B: Backend, F>(loader: &Loader, device: &B::Device, forward: F) -> (f64, f64)
where
    F: Fn(burn::tensor::Tensor<B, 4>) -> burn::tensor::Tensor<B, 2>,
{
    let (mut loss, mut ok, mut n) = (0.0, 0.0, 0.0);
    for h in loader.epoch(0, 0) {
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
    (loss / n.max(1.0), ok / n.max(1.0))
}

fn write_search_outputs(
    out: &Path,
    history: &[SearchEpoch],
    op_names: &[String],
) -> Result<(), RunError> {
    write_jsonl(&out.join("metrics.jsonl"), history)?;
    let series = |f: &dyn Fn(&SearchEpoch) -> f64| -> Vec<(f64, f64)> {
        history.iter().map(|e| (e.epoch as f64, f(e))).collect()
    };
    write(
        &out.join("loss.svg"),
        &report::line_chart(
            "loss",
            "epoch",
            &[
                ("train".into(), series(&|e| e.train_loss)),
                ("val (arch steps)".into(), series(&|e| e.arch_val_loss)),
                ("val (eval mode)".into(), series(&|e| e.val_loss)),
            ],
        ),
    )?;
    write(
        &out.join("accuracy.svg"),
        &report::line_chart(
            "accuracy",
            "epoch",
            &[
                ("train".into(), series(&|e| e.train_acc)),
                ("val (eval mode)".into(), series(&|e| e.val_acc)),
            ],
        ),
    )?;
    let hn: Vec<_> = history.iter().map(|e| e.alphas_normal.clone()).collect();
    let hr: Vec<_> = history.iter().map(|e| e.alphas_reduce.clone()).collect();
    write(
        &out.join("alphas_normal.svg"),
        &report::alpha_evolution("softmax(α), normal cell", &hn, op_names),
    )?;
    write(
        &out.join("alphas_reduce.svg"),
        &report::alpha_evolution("softmax(α), reduction cell", &hr, op_names),
    )?;
    if let Some(last) = history.last() {
        let g = &last.genotype;
        let e = last.epoch;
        write(
            &out.join(format!("genotypes/epoch_{e:03}.json")),
            &g.to_json(),
        )?;
        write(
            &out.join(format!("genotypes/epoch_{e:03}.py")),
            &format!("{}\n", last.genotype_python),
        )?;
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
    write(&out.join("normal.dot"), &n.to_dot())?;
    write(&out.join("reduce.dot"), &r.to_dot())
}

/// Run (or resume) an architecture search on `device`.
pub fn run_search<B: AutodiffBackend>(
    config: &SearchConfig,
    opts: &RunOptions,
    device: &B::Device,
) -> Result<SearchSummary, RunError> {
    let out = &opts.out;
    let ckpt_path = out.join("checkpoint.bin");
    if !opts.resume {
        config.validate()?;
    }
    let (cfg, mut history, ckpt, _lock) = open_run::<SearchConfig, SearchEpoch>(
        config,
        opts,
        "cifar10_search",
        &["epochs", "skip_non_finite_steps"],
    )?;
    cfg.validate()?;
    write(
        &out.join("config.json"),
        &serde_json::to_string_pretty(&cfg).expect("serialisable"),
    )?;
    let data = load_train(&cfg.data, cfg.limit_images)?;
    let (train_idx, val_idx) = search_split(data.len(), cfg.train_portion)?;
    let mut train = Loader::new(data.clone(), train_idx, cfg.batch_size);
    train.shuffle = true;
    train.augment = Augment::SEARCH;
    train.seed = cfg.seed;
    train.stream = 1;
    let mut val = Loader::new(data.clone(), val_idx.clone(), cfg.batch_size);
    val.shuffle = true;
    val.augment = Augment::SEARCH;
    val.seed = cfg.seed;
    val.stream = 2;
    let infer = Loader::new(data, val_idx, cfg.batch_size);

    let net: Net<B> = {
        let _guard = SEED_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        B::seed(device, cfg.seed);
        SearchNetworkConfig {
            channels: cfg.init_channels,
            layers: cfg.layers,
            steps: cfg.nodes,
            multiplier: cfg.nodes,
            ..Default::default()
        }
        .init::<B, _, _>(&DartsSpace::default(), Softmax, device)
    };
    let params = net.num_weights();
    let op_names = net.op_names.clone();
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
            arch_weight_decay: cfg.arch_weight_decay,
            ..Default::default()
        },
    );
    if cfg.skip_non_finite_steps {
        search.on_non_finite = NonFinitePolicy::SkipStep;
    }
    if let Some(c) = &ckpt {
        checkpoint::load_bilevel(c, &mut search)?;
    }
    let start = history.len();
    let mut stopped_early = false;
    for epoch in start..cfg.epochs {
        if opts.stop_after.is_some_and(|n| epoch >= n) {
            stopped_early = true;
            break;
        }
        let t0 = Instant::now();
        let pb = progress(
            train.batches_per_epoch(),
            format!("epoch {}/{}", epoch + 1, cfg.epochs),
            opts.progress,
        );
        let train_batches = train.epoch(epoch, 0).map(|h| to_batch::<B>(&h, device));
        // The validation stream cycles through reshuffled passes of the val split.
        let mut val_stream = (0..)
            .flat_map(|k| val.epoch(epoch * 1000 + k, 0))
            .map(|h| to_batch::<B>(&h, device));
        let stats = search.run_epoch(epoch, train_batches, &mut val_stream, |ev| {
            let SearchEvent::Step { stats, .. } = ev;
            pb.inc(1);
            pb.set_message(format!(
                "loss {:.3} acc {:.1}% val {:.3}",
                stats.train_loss,
                100.0 * stats.train_correct.unwrap_or(0.0) / stats.train_size.max(1) as f64,
                stats.val_loss
            ));
        });
        pb.finish_and_clear();
        if let Some(bad) = &stats.non_finite {
            return Err(RunError::Diverged {
                run: "search",
                epoch: epoch + 1,
                step: bad.step + 1,
                what: bad.what.clone(),
                hint:
                    "; lower --lr or --arch-lr, or pass --skip-non-finite-steps to undo such steps",
            });
        }
        let model = search.model.valid();
        let (val_loss, val_acc) =
            evaluate::<B::InnerBackend, _>(&infer, device, |x| model.forward(x));
        let (an, ar) = search.model.arch_weights();
        let genotype = search.model.genotype();
        let rec = SearchEpoch {
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
        };
        if opts.progress {
            eprintln!(
                "epoch {:>3}  lr {:.5}  train loss {:.4} acc {:5.1}%  val loss {:.4} acc {:5.1}%  {:.0}s\n  {}",
                epoch + 1,
                rec.lr,
                rec.train_loss,
                100.0 * rec.train_acc,
                rec.val_loss,
                100.0 * rec.val_acc,
                rec.seconds,
                rec.genotype_python
            );
        }
        history.push(rec);
        // The epoch's outputs first, then the checkpoint that commits the epoch: a kill in
        // between repeats the epoch on resume, which writes the same outputs again.
        write_search_outputs(out, &history, &op_names)?;
        append_timing(out, epoch, history.last().map_or(0.0, |e| e.seconds))?;
        failpoint("epoch_outputs_written");
        let mut c = Checkpoint::new(serde_json::json!({
            "kind": "cifar10_search",
            "epoch": epoch,
            "config": cfg,
            "history": history,
        }));
        checkpoint::save_bilevel(&mut c, &search);
        c.write_atomic(&ckpt_path)?;
        failpoint("checkpoint_committed");
    }
    let genotype = search.model.genotype();
    if !stopped_early {
        write_genotype_files(out, &genotype)?;
    }
    let ids = search.model.alpha_ids();
    let alphas = values(&search.model, &ids);
    let alphas = ids
        .iter()
        .flat_map(|id| {
            alphas[id]
                .clone()
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .expect("f32")
        })
        .collect();
    Ok(SearchSummary {
        history,
        genotype,
        alphas,
        params,
        stopped_early,
    })
}

/// Configuration of training a genotype from scratch (reference `train.py` defaults).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Directory with `data_batch_N.bin` and `test_batch.bin`.
    pub data: PathBuf,
    /// The genotype.
    pub genotype: Genotype,
    /// Its name or source, for the record.
    pub genotype_source: String,
    /// Use only the first N training images.
    pub limit_images: Option<usize>,
    /// Use only the first N test images.
    pub limit_test: Option<usize>,
    /// Batch size.
    pub batch_size: usize,
    /// Initial learning rate (cosine to 0).
    pub lr: f64,
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
    /// Auxiliary head.
    pub auxiliary: bool,
    /// Weight of the auxiliary loss.
    pub auxiliary_weight: f64,
    /// Cutout side (None = off).
    pub cutout: Option<usize>,
    /// Maximum drop-path probability (ramped linearly over the epochs).
    pub drop_path_prob: f64,
    /// Global gradient-norm clip.
    pub grad_clip: f64,
    /// Seed.
    pub seed: u64,
}

impl TrainConfig {
    /// Check every value (and the genotype); the error names the flag.
    pub fn validate(&self) -> Result<(), RunError> {
        self.genotype.validate().map_err(|e| RunError::Genotype {
            source_name: self.genotype_source.clone(),
            error: e.to_string(),
        })?;
        check(
            self.batch_size > 0,
            "batch-size",
            "must be at least 1",
            self.batch_size,
        )?;
        check(
            self.epochs > 0,
            "epochs",
            "must be at least 1 (nothing would be trained)",
            self.epochs,
        )?;
        check(
            self.init_channels > 0,
            "init-channels",
            "must be at least 1",
            self.init_channels,
        )?;
        check(
            self.layers >= 3,
            "layers",
            "must be at least 3 (two reduction cells at layers/3 and 2·layers/3)",
            self.layers,
        )?;
        check(
            self.limit_images != Some(0),
            "limit-images",
            "must be at least 1",
            0,
        )?;
        check(
            self.limit_test != Some(0),
            "limit-test",
            "must be at least 1",
            0,
        )?;
        check(
            self.lr.is_finite() && self.lr > 0.0,
            "lr",
            "must be a positive number",
            self.lr,
        )?;
        check(
            (0.0..1.0).contains(&self.momentum),
            "momentum",
            "must be in [0, 1)",
            self.momentum,
        )?;
        check(
            self.weight_decay.is_finite() && self.weight_decay >= 0.0,
            "weight-decay",
            "must be 0 or positive",
            self.weight_decay,
        )?;
        check(
            self.auxiliary_weight.is_finite() && self.auxiliary_weight >= 0.0,
            "auxiliary-weight",
            "must be 0 or positive",
            self.auxiliary_weight,
        )?;
        check(
            self.cutout != Some(0),
            "cutout",
            "must be at least 1 (or off)",
            0,
        )?;
        check(
            (0.0..1.0).contains(&self.drop_path_prob),
            "drop-path-prob",
            "must be in [0, 1) (it is the probability of dropping a path)",
            self.drop_path_prob,
        )?;
        check(
            self.grad_clip.is_finite() && self.grad_clip >= 0.0,
            "grad-clip",
            "must be 0 (off) or positive",
            self.grad_clip,
        )
    }
}

/// One epoch of training from scratch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainEpoch {
    /// Epoch.
    pub epoch: usize,
    /// Learning rate.
    #[serde(with = "crate::nonfinite")]
    pub lr: f64,
    /// Drop-path probability used.
    #[serde(with = "crate::nonfinite")]
    pub drop_path_prob: f64,
    /// Training loss (including the auxiliary term).
    #[serde(with = "crate::nonfinite")]
    pub train_loss: f64,
    /// Training accuracy.
    #[serde(with = "crate::nonfinite")]
    pub train_acc: f64,
    /// Test loss.
    #[serde(with = "crate::nonfinite")]
    pub test_loss: f64,
    /// Test accuracy.
    #[serde(with = "crate::nonfinite")]
    pub test_acc: f64,
    /// Wall time of the epoch (s). Not written to `metrics.jsonl` or the checkpoint (it would
    /// make two identical runs' directories differ); `timing.jsonl` logs it. 0 for epochs
    /// read back from a checkpoint.
    #[serde(skip)]
    pub seconds: f64,
}

/// The result of [`run_train`].
#[derive(Clone, Debug)]
pub struct TrainSummary {
    /// Epochs so far.
    pub history: Vec<TrainEpoch>,
    /// Trainable weights without the auxiliary head.
    pub params: usize,
    /// Final test accuracy.
    pub test_acc: f64,
}

/// Train (or resume training) a genotype from scratch and evaluate it on the test set.
pub fn run_train<B: AutodiffBackend>(
    config: &TrainConfig,
    opts: &RunOptions,
    device: &B::Device,
) -> Result<TrainSummary, RunError> {
    let out = &opts.out;
    let ckpt_path = out.join("checkpoint.bin");
    if !opts.resume {
        config.validate()?;
    }
    let (cfg, mut history, ckpt, _lock) =
        open_run::<TrainConfig, TrainEpoch>(config, opts, "cifar10_train", &["epochs"])?;
    cfg.validate()?;
    write(
        &out.join("config.json"),
        &serde_json::to_string_pretty(&cfg).expect("serialisable"),
    )?;
    let data = load_train(&cfg.data, cfg.limit_images)?;
    let mut test = Cifar10::load_test(&cfg.data)?;
    if let Some(n) = cfg.limit_test {
        if n < test.len() {
            test = test.subset(&(0..n).collect::<Vec<_>>());
        }
    }
    let n = data.len();
    let mut train = Loader::new(data, (0..n).collect(), cfg.batch_size);
    train.shuffle = true;
    train.augment = Augment {
        crop_padding: 4,
        flip: true,
        cutout: cfg.cutout,
    };
    train.seed = cfg.seed;
    train.stream = 3;
    let nt = test.len();
    let test_loader = Loader::new(Arc::new(test), (0..nt).collect(), cfg.batch_size);

    let mut model = {
        let _guard = SEED_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        B::seed(device, cfg.seed);
        EvalNetworkConfig {
            channels: cfg.init_channels,
            layers: cfg.layers,
            auxiliary: cfg.auxiliary,
            ..Default::default()
        }
        .init::<B>(&cfg.genotype, device)?
    };
    let params = model.num_weights();
    let mut sgd = Sgd::<B::InnerBackend>::new(cfg.momentum, cfg.weight_decay);
    if let Some(c) = &ckpt {
        model = checkpoint::load_model_sgd(c, model, &mut sgd)?.0;
    }
    if opts.progress {
        eprintln!(
            "{}: {:.3}M parameters (auxiliary head {:.3}M)",
            cfg.genotype_source,
            params as f64 / 1e6,
            model.auxiliary_weights() as f64 / 1e6
        );
    }
    let schedule = CosineLr {
        max: cfg.lr,
        min: 0.0,
        epochs: cfg.epochs,
    };
    let start = history.len();
    for epoch in start..cfg.epochs {
        if opts.stop_after.is_some_and(|n| epoch >= n) {
            break;
        }
        let t0 = Instant::now();
        let lr = schedule.at(epoch);
        let dp = cfg.drop_path_prob * epoch as f64 / cfg.epochs as f64;
        let pb = progress(
            train.batches_per_epoch(),
            format!("epoch {}/{}", epoch + 1, cfg.epochs),
            opts.progress,
        );
        let (mut loss_sum, mut ok, mut seen) = (0.0, 0.0, 0.0);
        for h in train.epoch(epoch, 0) {
            let b = to_batch::<B>(&h, device);
            let clip = (cfg.grad_clip > 0.0).then_some(cfg.grad_clip);
            let (next, st) = weight_step(model, &mut sgd, lr, clip, |m| {
                m.loss(&b, dp, cfg.auxiliary_weight)
            });
            model = next;
            let m = h.len() as f64;
            let l: f64 = st.loss.into_scalar().elem();
            if !l.is_finite() || !st.grad_norm.is_finite() {
                return Err(RunError::Diverged {
                    run: "training",
                    epoch: epoch + 1,
                    step: (seen / cfg.batch_size as f64) as usize + 1,
                    what: if l.is_finite() {
                        "gradient norm"
                    } else {
                        "training loss"
                    }
                    .into(),
                    hint: "; lower --lr",
                });
            }
            let c: f64 = st.aux.into_scalar().elem();
            loss_sum += l * m;
            ok += c;
            seen += m;
            pb.inc(1);
            pb.set_message(format!(
                "loss {:.3} acc {:.1}%",
                loss_sum / seen,
                100.0 * ok / seen
            ));
        }
        pb.finish_and_clear();
        let inner = model.valid();
        let (test_loss, test_acc) = evaluate::<B::InnerBackend, _>(&test_loader, device, |x| {
            inner.forward(x, false, 0.0).logits
        });
        let rec = TrainEpoch {
            epoch,
            lr,
            drop_path_prob: dp,
            train_loss: loss_sum / seen.max(1.0),
            train_acc: ok / seen.max(1.0),
            test_loss,
            test_acc,
            seconds: t0.elapsed().as_secs_f64(),
        };
        if opts.progress {
            eprintln!(
                "epoch {:>3}  lr {:.5}  train loss {:.4} acc {:5.1}%  test loss {:.4} acc {:5.1}%  {:.0}s",
                epoch + 1,
                lr,
                rec.train_loss,
                100.0 * rec.train_acc,
                rec.test_loss,
                100.0 * rec.test_acc,
                rec.seconds
            );
        }
        history.push(rec);
        write_jsonl(&out.join("metrics.jsonl"), &history)?;
        let series = |f: &dyn Fn(&TrainEpoch) -> f64| -> Vec<(f64, f64)> {
            history.iter().map(|e| (e.epoch as f64, f(e))).collect()
        };
        write(
            &out.join("loss.svg"),
            &report::line_chart(
                "loss",
                "epoch",
                &[
                    ("train".into(), series(&|e| e.train_loss)),
                    ("test".into(), series(&|e| e.test_loss)),
                ],
            ),
        )?;
        write(
            &out.join("accuracy.svg"),
            &report::line_chart(
                "accuracy",
                "epoch",
                &[
                    ("train".into(), series(&|e| e.train_acc)),
                    ("test".into(), series(&|e| e.test_acc)),
                ],
            ),
        )?;
        append_timing(out, epoch, history.last().map_or(0.0, |e| e.seconds))?;
        // Outputs first, then the checkpoint that commits the epoch (see run_search).
        let mut c = Checkpoint::new(serde_json::json!({
            "kind": "cifar10_train",
            "epoch": epoch,
            "config": cfg,
            "history": history,
        }));
        checkpoint::save_model_sgd(&mut c, &model, &sgd);
        c.write_atomic(&ckpt_path)?;
    }
    let test_acc = history.last().map_or(0.0, |e| e.test_acc);
    Ok(TrainSummary {
        history,
        params,
        test_acc,
    })
}
