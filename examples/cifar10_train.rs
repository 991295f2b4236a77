//! Train a genotype from scratch on CIFAR-10 and report its test accuracy (reference
//! `cnn/train.py`).
//!
//! ```text
//! cargo run --release --example cifar10_train -- --arch DARTS_V2 --data /path/to/cifar-10-batches-bin --auxiliary --cutout
//! cargo run --release --example cifar10_train -- --genotype runs/cifar10_search/genotype.json
//! ```
//! With no `--data`, a quick run on the shipped sample (4 cells of 8 channels, 1 epoch).
//!
//! A finished run also writes `weights.safetensors` in the reference's names (PyTorch:
//! `model.load_state_dict(safetensors.torch.load_file(...))`). Evaluate weights, ours or a
//! PyTorch state dict of the reference's `NetworkCIFAR`, on the test split:
//!
//! ```text
//! cargo run --release --example cifar10_train -- --arch DARTS_V2 --data /path/to/cifar-10-batches-bin --auxiliary --weights model.pt --eval-only
//! ```
//!
//! Data-parallel (docs/guide.md §8): `--devices cuda:0,cuda:1` (threads of one process), or
//! one MPI process per device:
//!
//! ```text
//! cargo build --release --features cuda,mpi --example cifar10_train
//! mpirun -np 2 target/release/examples/cifar10_train --mpi --device cuda --data /path/to/cifar-10-batches-bin --auxiliary --cutout
//! ```

use burn::tensor::backend::AutodiffBackend;
use clap::{CommandFactory, FromArgMatches, Parser};
use darts::cifar::{evaluate_weights, run_train, run_train_parallel, RunOptions, TrainConfig};
use darts::device::{dispatch, dispatch_devices, BackendTask, BackendTaskMulti, DeviceSpec};
use darts::genotype::{catalog, parse_conv_any};
use std::path::PathBuf;

#[path = "support/cli.rs"]
mod cli;
#[path = "support/parallel.rs"]
mod parallel;
use parallel::Mode;

#[derive(Parser, Debug)]
#[command(about = "Train a DARTS genotype from scratch on CIFAR-10")]
struct Args {
    /// A published genotype: NASNet, AmoebaNet, DARTS_V1, DARTS_V2, PC_DARTS, PDARTS.
    #[arg(long, default_value = "DARTS_V2")]
    arch: String,
    /// A genotype file (JSON or Python notation); overrides --arch.
    #[arg(long)]
    genotype: Option<PathBuf>,
    /// Directory with data_batch_N.bin and test_batch.bin (default: the shipped sample).
    #[arg(long)]
    data: Option<PathBuf>,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long)]
    layers: Option<usize>,
    #[arg(long)]
    init_channels: Option<usize>,
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long)]
    epochs: Option<usize>,
    #[arg(long, default_value_t = 0.025)]
    lr: f64,
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    #[arg(long, default_value_t = 3e-4)]
    weight_decay: f64,
    #[arg(long)]
    auxiliary: bool,
    #[arg(long, default_value_t = 0.4)]
    auxiliary_weight: f64,
    #[arg(long)]
    cutout: bool,
    #[arg(long, default_value_t = 16)]
    cutout_length: usize,
    #[arg(long, default_value_t = 0.2)]
    drop_path_prob: f64,
    #[arg(long, default_value_t = 5.0)]
    grad_clip: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Use only the first N training images.
    #[arg(long)]
    limit_images: Option<usize>,
    /// Use only the first N test images.
    #[arg(long)]
    limit_test: Option<usize>,
    #[arg(long, default_value = "runs/cifar10_train")]
    out: PathBuf,
    /// Continue the run in this directory.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Start a new run in the output directory even if it holds an earlier run (that run's
    /// checkpoint, metrics, plots and genotypes are removed first).
    #[arg(long, conflicts_with = "resume")]
    overwrite: bool,
    #[arg(long)]
    quiet: bool,
    /// Weights to evaluate (with --eval-only): a PyTorch state dict of the reference's
    /// NetworkCIFAR (.pt or .safetensors) or a finished run's weights.safetensors. The genotype,
    /// --init-channels, --layers and --auxiliary must be those of the file.
    #[arg(long, requires = "eval_only")]
    weights: Option<PathBuf>,
    /// Evaluate --weights on the test split instead of training.
    #[arg(long, requires = "weights")]
    eval_only: bool,
    #[command(flatten)]
    parallel: parallel::ParallelArgs,
}

struct Task(TrainConfig, RunOptions, Mode);

struct Eval(TrainConfig, PathBuf);

impl BackendTask for Eval {
    type Output = Result<darts::cifar::WeightsEvaluation, darts::cifar::RunError>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        evaluate_weights::<B::InnerBackend>(&self.0, &self.1, &device)
    }
}

impl BackendTaskMulti for Task {
    type Output = Result<darts::cifar::TrainSummary, darts::cifar::RunError>;
    fn run<B: AutodiffBackend>(self, devices: Vec<B::Device>) -> Self::Output {
        let Task(c, opts, mode) = self;
        match mode {
            Mode::Single => run_train::<B>(&c, &opts, &devices[0]),
            Mode::Threads(group) => run_train_parallel::<B>(&c, &opts, &devices, &group),
            Mode::Mpi(join, op) => {
                parallel::with_mpi::<B::InnerBackend, _>(join, op, |peer, lead| {
                    let opts = RunOptions {
                        progress: opts.progress && lead,
                        ..opts.clone()
                    };
                    darts::cifar::run_train_peer::<B>(&c, &opts, &devices[0], peer)
                })
            }
        }
    }
}

fn fail(code: i32, msg: impl std::fmt::Display) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(code)
}

fn main() {
    // Reuse freed tensor memory instead of fresh pages (see `darts::alloc`).
    darts::alloc::tune_malloc();
    let matches = Args::command().get_matches();
    let a = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let (genotype, source) = match &a.genotype {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .unwrap_or_else(|e| fail(2, format!("{}: {e}", p.display())));
            let g =
                parse_conv_any(&text).unwrap_or_else(|e| fail(2, format!("{}: {e}", p.display())));
            (g, p.display().to_string())
        }
        None => match catalog::conv(&a.arch) {
            Some(g) => (g, a.arch.clone()),
            None => fail(
                2,
                format!(
                    "unknown genotype `{}`; known: {}",
                    a.arch,
                    catalog::conv_names().join(", ")
                ),
            ),
        },
    };
    let quick = a.data.is_none();
    let sample = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/cifar10-sample");
    let c = TrainConfig {
        data: a.data.clone().unwrap_or(sample),
        genotype,
        genotype_source: source,
        limit_images: a.limit_images.or(quick.then_some(256)),
        limit_test: a.limit_test.or(quick.then_some(200)),
        batch_size: a.batch_size.unwrap_or(if quick { 32 } else { 96 }),
        lr: a.lr,
        momentum: a.momentum,
        weight_decay: a.weight_decay,
        epochs: a.epochs.unwrap_or(if quick { 1 } else { 600 }),
        init_channels: a.init_channels.unwrap_or(if quick { 8 } else { 36 }),
        layers: a.layers.unwrap_or(if quick { 4 } else { 20 }),
        auxiliary: a.auxiliary,
        auxiliary_weight: a.auxiliary_weight,
        cutout: a.cutout.then_some(a.cutout_length),
        drop_path_prob: a.drop_path_prob,
        grad_clip: a.grad_clip,
        seed: a.seed,
    };
    let opts = RunOptions {
        out: a.resume.clone().unwrap_or(a.out.clone()),
        resume: a.resume.is_some(),
        overwrite: a.overwrite,
        given: cli::given(
            &matches,
            &[("arch", "genotype"), ("cutout_length", "cutout")],
        ),
        stop_after: None,
        progress: !a.quiet,
    };
    if let Some(w) = a.weights {
        if a.parallel.devices.is_some() || a.parallel.mpi {
            fail(
                2,
                "--eval-only runs on one device: give it --device, not --devices or --mpi",
            );
        }
        let spec: DeviceSpec = a.device.parse().unwrap_or_else(|e| fail(2, e));
        match dispatch(&spec, Eval(c, w.clone())) {
            Ok(Ok(r)) => println!(
                "{}: test loss {:.4}, test accuracy {:.2}%",
                w.display(),
                r.test_loss,
                100.0 * r.test_acc
            ),
            Ok(Err(e)) => fail(1, e),
            Err(e) => fail(2, e),
        }
        return;
    }
    let specs = a.parallel.specs(&a.device).unwrap_or_else(|e| fail(2, e));
    let mode = a.parallel.mode(specs.len()).unwrap_or_else(|e| fail(2, e));
    let lead = parallel::is_lead();
    let opts = RunOptions {
        progress: opts.progress && lead,
        ..opts
    };
    match dispatch_devices(&specs, Task(c, opts.clone(), mode)) {
        Ok(Ok(_)) if !lead => {}
        Ok(Ok(s)) => println!(
            "params {:.3}M  final test accuracy {:.2}%  (outputs in {})",
            s.params as f64 / 1e6,
            100.0 * s.test_acc,
            opts.out.display()
        ),
        Ok(Err(e)) => fail(1, e),
        Err(e) => fail(2, e),
    }
}
