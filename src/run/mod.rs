//! Run drivers: the paper's protocols as library functions that the examples wrap, and what
//! they share.
//!
//! | module | what |
//! |---|---|
//! | [`cifar`] | CIFAR-10: architecture search ([`cifar::run_search`]) and training a derived network from scratch ([`cifar::run_train`]) |
//! | [`ptb`] | Penn Treebank: recurrent cell search ([`ptb::run_ptb_search`]) and training a derived cell ([`ptb::run_ptb_train`]) |
//! | this module | [`RunError`], [`RunOptions`], and the run directory: opening and locking it, resuming, atomic outputs, the timing log |
//!
//! Every driver writes into an output directory: `metrics.jsonl` (one JSON object per epoch),
//! plots (SVG), `timing.jsonl`, an atomic `checkpoint.safetensors` after every epoch (resumable), and
//! its own results (genotypes and cell diagrams for the searches).

use crate::checkpoint::CheckpointError;
use darts_data::cifar::CifarError;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;

pub mod cifar;
mod dir;
mod peer;
pub mod ptb;

pub(crate) use dir::{
    append_timing, failpoint, start_run, write, write_bytes, write_checkpoint,
    write_epoch_genotype, write_figure, write_metrics, EpochRecord,
};
pub use dir::{RunConfig, CHECKPOINT};

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
    /// A chart could not be drawn.
    #[error(transparent)]
    Report(#[from] crate::report::ReportError),
    /// Reading or writing PyTorch weights failed.
    #[error(transparent)]
    Interop(#[from] crate::interop::InteropError),
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
    /// The data-parallel group failed (a peer did not join, died or timed out).
    #[error(transparent)]
    Parallel(#[from] crate::parallel::ParallelError),
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

impl RunError {
    /// [`RunError::Diverged`] from 0-based `epoch` and `step` (the message counts from 1, as
    /// the console does).
    pub(crate) fn diverged(
        run: &'static str,
        epoch: usize,
        step: usize,
        what: impl Into<String>,
        hint: &'static str,
    ) -> Self {
        RunError::Diverged {
            run,
            epoch: epoch + 1,
            step: step + 1,
            what: what.into(),
            hint,
        }
    }
}

/// A count that must be at least 1.
pub(crate) fn count(flag: &str, v: usize) -> Result<(), RunError> {
    check(v > 0, flag, "must be at least 1", v)
}

/// An optional limit that, when given, must be at least 1.
pub(crate) fn limit(flag: &str, v: Option<usize>) -> Result<(), RunError> {
    check(v != Some(0), flag, "must be at least 1", 0)
}

/// A finite number greater than 0.
pub(crate) fn positive(flag: &str, x: f64) -> Result<(), RunError> {
    check(
        x.is_finite() && x > 0.0,
        flag,
        "must be a positive number",
        x,
    )
}

/// A finite number, 0 or greater (0 turns the feature off where that applies).
pub(crate) fn non_negative(flag: &str, x: f64) -> Result<(), RunError> {
    check(x.is_finite() && x >= 0.0, flag, "must be 0 or positive", x)
}

/// The epoch records of the four runs (their `epoch` field).
macro_rules! epoch_records {
    ($($t:ty),*) => {$(
        impl EpochRecord for $t {
            fn epoch(&self) -> usize {
                self.epoch
            }
        }
    )*};
}
epoch_records!(
    cifar::SearchEpoch,
    cifar::TrainEpoch,
    ptb::PtbSearchEpoch,
    ptb::PtbTrainEpoch
);

/// A genotype's validation as a run error naming where the genotype came from.
pub(crate) fn genotype_ok(
    valid: Result<(), darts_genotype::GenotypeError>,
    source: &str,
) -> Result<(), RunError> {
    valid.map_err(|e| RunError::Genotype {
        source_name: source.to_string(),
        error: e.to_string(),
    })
}

/// Check the settings that several runs share, found by their serde names in `cfg` (the names
/// the resume check compares too). The flag is the name with dashes, except
/// `max_steps_per_epoch` (`--max-steps`); a run without a setting skips its check. `no_epochs`
/// says why `--epochs 0` makes no sense for this run.
pub(crate) fn check_shared<C: serde::Serialize>(cfg: &C, no_epochs: &str) -> Result<(), RunError> {
    let v = serde_json::to_value(cfg).map_err(|e| RunError::Config(format!("settings: {e}")))?;
    let Some(settings) = v.as_object() else {
        return Ok(());
    };
    for (name, value) in settings {
        let flag = match name.as_str() {
            "max_steps_per_epoch" => "max-steps".to_string(),
            other => other.replace('_', "-"),
        };
        let int = value.as_u64().map(|n| n as usize);
        // Non-finite numbers are stored as strings or null: NaN here, and rejected.
        let num = value.as_f64().unwrap_or(f64::NAN);
        match name.as_str() {
            "epochs" => check(int > Some(0), "epochs", no_epochs, value)?,
            "batch_size" | "eval_batch_size" | "test_batch_size" | "bptt" | "emsize" | "nhid"
            | "steps" | "init_channels" => count(&flag, int.unwrap_or(0))?,
            "max_steps_per_epoch" | "cutout" => limit(&flag, int)?,
            n if n.starts_with("limit_") => limit(&flag, int)?,
            "lr" => positive(&flag, num)?,
            "momentum" => below_one(&flag, num)?,
            "weight_decay" | "grad_clip" | "arch_lr" | "arch_weight_decay" | "auxiliary_weight" => {
                non_negative(&flag, num)?
            }
            _ => {}
        }
    }
    Ok(())
}

/// A probability-like factor in [0, 1).
pub(crate) fn below_one(flag: &str, x: f64) -> Result<(), RunError> {
    check((0.0..1.0).contains(&x), flag, "must be in [0, 1)", x)
}

/// Seeding a backend sets a process-wide generator (on CPU), so seeding and initialising happen
/// under this lock: runs in parallel threads of one process cannot interleave their draws.
static SEED_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The lock the drivers hold while they seed the backend and initialise a network. Burn's
/// random tensors draw from one generator per process, so code that seeds it (or draws from it)
/// in threads next to a run should hold this lock too, or the draws interleave and neither side
/// is reproducible.
pub fn seed_lock() -> std::sync::MutexGuard<'static, ()> {
    SEED_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a search returns, CNN or RNN: the history, the genotype derived from the final α, the
/// α values and the supernet's size, and `D`, what the run's data adds (nothing for CIFAR-10,
/// [`ptb::CorpusInfo`] for PTB).
#[derive(Clone, Debug)]
pub struct SearchOutcome<E, G, D = ()> {
    /// All epochs so far (including those before a resume).
    pub history: Vec<E>,
    /// The genotype derived from the final α.
    pub genotype: G,
    /// Raw α values (for the CNN: normal then reduce), for exact comparisons.
    pub alphas: Vec<f32>,
    /// Number of supernet weights.
    pub params: usize,
    /// Whether the run stopped before its last epoch (`stop_after`).
    pub stopped_early: bool,
    /// What the data adds.
    pub data: D,
}

/// What a stored search configuration without `arch_bn_stats` ran with: the BatchNorm running
/// statistics were updated by the weight step only.
pub(crate) fn before_bn_setting() -> darts_bilevel::ArchBnStats {
    darts_bilevel::ArchBnStats::WeightStepOnly
}

/// Options of a run that are not part of its configuration.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Output directory.
    pub out: PathBuf,
    /// Continue from `out/checkpoint.safetensors` (the configuration stored there is used).
    pub resume: bool,
    /// Start a new run in `out` even if it holds an earlier run (whose files are removed).
    pub overwrite: bool,
    /// Configuration fields the user set explicitly (e.g. from the command line), by their
    /// serialised names (`a.b` for field `b` of field `a`, e.g. `dropout.output`). On resume
    /// they are checked against the checkpoint's configuration: the few that may change (the
    /// number of epochs) are taken, any other that differs is an error.
    pub given: Vec<String>,
    /// Stop after this many epochs in total (simulates an interruption; the checkpoint stays).
    pub stop_after: Option<usize>,
    /// Show progress bars.
    pub progress: bool,
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
