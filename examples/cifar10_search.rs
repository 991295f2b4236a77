//! DARTS architecture search on CIFAR-10 (reference `cnn/train_search.py`).
//!
//! With no flags it runs a quick search on the CIFAR-10 sample shipped in `data/cifar10-sample`
//! (a few minutes on a 2-core CPU). `--preset paper` (the default when `--data` is given) uses
//! the paper's settings: batch 64, 50 epochs, 16 channels, 8 cells.
//!
//! ```text
//! cargo run --example cifar10_search
//! cargo run --release --example cifar10_search -- --data /path/to/cifar-10-batches-bin --out runs/s1
//! cargo run --release --features cuda --example cifar10_search -- --data ... --device cuda --unrolled
//! cargo run --example cifar10_search -- --resume runs/s1
//! # data-parallel: two peers in one process, or one MPI process per device (docs/guide.md)
//! cargo run --release --example cifar10_search -- --devices cpu,cpu
//! mpirun -np 2 target/release/examples/cifar10_search --mpi --device cpu
//! ```

use burn::tensor::backend::AutodiffBackend;
use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};
use darts::cifar::{
    run_search, run_search_parallel, RunOptions, SearchConfig, Selection, ValSampling,
};
use darts::device::{dispatch_devices, BackendTaskMulti};

use std::path::PathBuf;

#[path = "support/arch_bn.rs"]
mod arch_bn;
#[path = "support/cli.rs"]
mod cli;
#[path = "support/parallel.rs"]
mod parallel;
use parallel::Mode;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum ValSamplingArg {
    /// A fresh random validation batch each step (the reference).
    Redraw,
    /// Shuffled passes over the validation split.
    Cycle,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum SelectArg {
    /// The method's derivation from the architecture weights.
    Darts,
    /// DARTS-PT.
    Pt,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum Preset {
    /// Tiny and fast: 320 images, 3 cells of 4 channels, 2 epochs, batch 16.
    Quick,
    /// The paper: batch 64, 50 epochs, 16 channels, 8 cells.
    Paper,
}

#[derive(Parser, Debug)]
#[command(about = "DARTS architecture search on CIFAR-10")]
struct Args {
    /// Directory with data_batch_N.bin (default: the shipped sample).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Download the official CIFAR-10 archive into this directory (md5-verified) and search on
    /// it; needs `--features download`.
    #[arg(long)]
    download: Option<PathBuf>,
    /// Settings for flags not given (default: quick with the sample, paper with --data).
    #[arg(long, value_enum)]
    preset: Option<Preset>,
    /// Search method: darts, pc-darts, gdas, darts-minus, fair-darts, sdarts-rs, sdarts-adv,
    /// beta-darts, drnas. Sets the method's pieces and, with the paper preset, its reference
    /// hyper-parameters (flags given explicitly win). See docs/methods.md.
    #[arg(long, default_value = "darts")]
    method: darts::methods::Method,
    /// How the final genotype is chosen: darts (from α) or pt (DARTS-PT's perturbation-based
    /// selection with fine-tuning, after the search).
    #[arg(long, value_enum, default_value = "darts")]
    select: SelectArg,
    /// DARTS-PT: fine-tuning epochs between decisions (default: the reference's 5; 1 with the
    /// quick preset).
    #[arg(long)]
    pt_interval: Option<usize>,
    /// Add PC-DARTS's partial channels with this K to any method (1 = off).
    #[arg(long)]
    partial_channels: Option<usize>,
    /// Add PC-DARTS's edge normalisation to any method.
    #[arg(long)]
    edge_normalization: bool,
    /// Epochs at the start that train only the weights (PC-DARTS: 15).
    #[arg(long)]
    arch_warmup_epochs: Option<usize>,
    /// Add DARTS−'s auxiliary skip (decaying from 1 to 0) to any method.
    #[arg(long)]
    auxiliary_skip: bool,
    /// Add β-DARTS's Beta-Decay regulariser with this λ_max (λ = λ_max · epoch / 100).
    #[arg(long)]
    beta_decay: Option<f64>,
    /// cpu | wgpu[:N] | cuda[:N]
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long)]
    lr_min: Option<f64>,
    #[arg(long)]
    momentum: Option<f64>,
    #[arg(long)]
    weight_decay: Option<f64>,
    #[arg(long)]
    epochs: Option<usize>,
    #[arg(long)]
    init_channels: Option<usize>,
    #[arg(long)]
    layers: Option<usize>,
    /// Intermediate nodes per cell (the reference's `steps`; `--nodes` is accepted too).
    #[arg(long, alias = "nodes")]
    steps: Option<usize>,
    #[arg(long)]
    train_portion: Option<f64>,
    /// Second-order (unrolled) architecture gradient.
    #[arg(long)]
    unrolled: bool,
    #[arg(long)]
    arch_lr: Option<f64>,
    #[arg(long)]
    arch_weight_decay: Option<f64>,
    #[arg(long)]
    grad_clip: Option<f64>,
    #[arg(long)]
    seed: Option<u64>,
    /// Undo a step whose loss or gradient norm is NaN or infinite and go on, instead of
    /// stopping the search with an error.
    #[arg(long)]
    skip_non_finite_steps: bool,
    /// How the architecture steps draw validation batches: redraw (a fresh random batch each
    /// step, as the reference) or cycle (shuffled passes over the validation split).
    #[arg(long, value_enum)]
    val_sampling: Option<ValSamplingArg>,
    /// Which training-mode passes update the BatchNorm running statistics: architect-too (the
    /// reference: the architecture step's passes, then the weight step's) or weight-step-only.
    /// Only the evaluation-mode validation metrics depend on it.
    #[arg(long, value_enum)]
    arch_bn_stats: Option<arch_bn::ArchBnStatsArg>,
    /// Use only the first N training images.
    #[arg(long)]
    limit_images: Option<usize>,
    /// Output directory.
    #[arg(long, default_value = "runs/cifar10_search")]
    out: PathBuf,
    /// Continue the run in this directory from its last checkpoint.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Start a new run in the output directory even if it holds an earlier run (that run's
    /// checkpoint, metrics, plots and genotypes are removed first).
    #[arg(long, conflicts_with = "resume")]
    overwrite: bool,
    /// Hide progress bars.
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    parallel: parallel::ParallelArgs,
}

#[cfg(feature = "download")]
fn download(dir: &std::path::Path) -> PathBuf {
    darts::data::cifar::download(dir).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(1)
    })
}

#[cfg(not(feature = "download"))]
fn download(dir: &std::path::Path) -> PathBuf {
    eprintln!(
        "error: --download {} needs the `download` feature: cargo run --features download --example cifar10_search -- --download ...",
        dir.display()
    );
    std::process::exit(2)
}

struct Task(SearchConfig, RunOptions, Mode);

impl BackendTaskMulti for Task {
    type Output = Result<darts::cifar::SearchSummary, darts::cifar::RunError>;
    fn run<B: AutodiffBackend>(self, devices: Vec<B::Device>) -> Self::Output {
        let Task(c, opts, mode) = self;
        match mode {
            Mode::Single => run_search::<B>(&c, &opts, &devices[0]),
            Mode::Threads(group) => run_search_parallel::<B>(&c, &opts, &devices, &group),
            Mode::Mpi(join, op) => {
                parallel::with_mpi::<B::InnerBackend, _>(join, op, |peer, lead| {
                    let opts = RunOptions {
                        progress: opts.progress && lead,
                        ..opts.clone()
                    };
                    darts::cifar::run_search_peer::<B>(&c, &opts, &devices[0], peer)
                })
            }
        }
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn main() {
    // Reuse freed tensor memory instead of fresh pages (see `darts::alloc`).
    darts::alloc::tune_malloc();
    let matches = Args::command().get_matches();
    let a = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let sample = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/cifar10-sample");
    let downloaded = a.download.as_ref().map(|dir| download(dir));
    let a = Args {
        data: downloaded.or(a.data.clone()),
        ..a
    };
    let preset = a.preset.unwrap_or(if a.data.is_some() {
        Preset::Paper
    } else {
        Preset::Quick
    });
    let mut c = SearchConfig {
        data: a.data.clone().unwrap_or(sample),
        ..SearchConfig::for_method(a.method)
    };
    if let Some(k) = a.partial_channels {
        c.method.partial_channels = k;
    }
    c.method.edge_normalization |= a.edge_normalization;
    if let Some(n) = a.arch_warmup_epochs {
        c.method.arch_warmup_epochs = n;
    }
    if a.auxiliary_skip && c.method.auxiliary_skip.is_none() {
        c.method.auxiliary_skip = Some(Default::default());
    }
    if let Some(lambda_max) = a.beta_decay {
        c.method.beta_decay = Some(darts::methods::BetaDecaySchedule {
            lambda_max,
            ..Default::default()
        });
    }
    if a.select == SelectArg::Pt {
        let quick = if preset == Preset::Quick { 1 } else { 5 };
        c.select = Selection::Pt {
            interval: a.pt_interval.unwrap_or(quick),
        };
    }
    if preset == Preset::Quick {
        c.limit_images = Some(320);
        c.batch_size = 16;
        c.epochs = 2;
        // Partial channels need C to be a multiple of every K (12 for DrNAS's 6 and 4).
        c.init_channels = c
            .method
            .all_partial_channels()
            .into_iter()
            .fold(4, |c, k| (c * k) / gcd(c, k));
        c.layers = 3;
        c.method.arch_warmup_epochs = c.method.arch_warmup_epochs.min(1);
    }
    macro_rules! set {
        ($($f:ident),*) => { $( if let Some(v) = a.$f { c.$f = v; } )* };
    }
    set!(
        batch_size,
        lr,
        lr_min,
        momentum,
        weight_decay,
        epochs,
        init_channels,
        layers,
        steps,
        train_portion,
        arch_lr,
        arch_weight_decay,
        grad_clip,
        seed
    );
    if a.limit_images.is_some() {
        c.limit_images = a.limit_images;
    }
    c.unrolled = a.unrolled;
    c.skip_non_finite_steps = a.skip_non_finite_steps;
    if let Some(v) = a.arch_bn_stats {
        c.arch_bn_stats = v.into();
    }
    if let Some(v) = a.val_sampling {
        c.val_sampling = match v {
            ValSamplingArg::Redraw => ValSampling::Redraw,
            ValSamplingArg::Cycle => ValSampling::Cycle,
        };
    }
    let opts = RunOptions {
        out: a.resume.clone().unwrap_or(a.out.clone()),
        resume: a.resume.is_some(),
        overwrite: a.overwrite,
        given: cli::given(&matches, &[]),
        stop_after: None,
        progress: !a.quiet,
    };
    let specs = a.parallel.specs(&a.device).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(2);
    });
    let mode = a.parallel.mode(specs.len()).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(2);
    });
    let lead = parallel::is_lead();
    let spec = specs
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let opts = RunOptions {
        progress: opts.progress && lead,
        ..opts
    };
    if !opts.resume && lead {
        eprintln!(
            "searching on {} ({} preset, {}{}), device {spec}, output {}",
            c.data.display(),
            format!("{preset:?}").to_lowercase(),
            a.method,
            if c.unrolled {
                ", second order"
            } else {
                ", first order"
            },
            opts.out.display()
        );
    }
    let t0 = std::time::Instant::now();
    match dispatch_devices(&specs, Task(c, opts.clone(), mode)) {
        Ok(Ok(_)) if !lead => {}
        Ok(Ok(s)) => {
            println!("supernet weights: {}", s.params);
            println!(
                "final genotype: {}",
                darts::genotype::python::to_python(&s.genotype)
            );
            if s.genotype.normal.is_empty() || s.genotype.reduce.is_empty() {
                eprintln!(
                    "note: a cell kept no edge: the threshold derivation (FairDARTS, sigmoid weights ≥ 0.85) found none yet; a longer search moves the weights towards 0 or 1"
                );
            }
            println!(
                "wrote {}/{{genotype.json,genotype.py,normal.svg,reduce.svg,metrics.jsonl,checkpoint.safetensors}} and charts (loss, accuracy, alphas_normal, alphas_reduce, alphas_*_final; .svg and .png) in {:.0}s",
                opts.out.display(),
                t0.elapsed().as_secs_f64()
            );
        }
        Ok(Err(e)) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    }
}
