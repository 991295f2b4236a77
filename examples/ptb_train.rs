//! Train a recurrent genotype from scratch on Penn Treebank and report validation and test
//! perplexity (reference `rnn/train.py`: 850 units, batch 64, SGD lr 20 switching to averaged SGD
//! when validation stops improving for 5 epochs).
//!
//! ```text
//! cargo run --release --example ptb_train -- --arch DARTS_V2 --data /path/to/ptb
//! cargo run --release --example ptb_train -- --genotype runs/ptb_search/genotype.json --data /path/to/ptb
//! ```
//! With no `--data`, a quick run on the shipped sample (64 units, 2 epochs).
//!
//! Data-parallel (docs/guide.md §8): `--devices cuda:0,cuda:1` (threads of one process, each
//! peer taking its columns of the batch), or `mpirun -np 2 ... --mpi --device cuda` with
//! `--features mpi`.

use burn::tensor::backend::AutodiffBackend;
use clap::{CommandFactory, FromArgMatches, Parser};
use darts::cifar::{RunError, RunOptions};
use darts::device::{dispatch_devices, BackendTaskMulti};
use darts::genotype::{catalog, parse_recurrent_any};
use darts::ptb::{run_ptb_train, run_ptb_train_parallel, PtbTrainConfig, PtbTrainSummary};
use std::path::PathBuf;

#[path = "support/cli.rs"]
mod cli;
#[path = "support/parallel.rs"]
mod parallel;
use parallel::Mode;

#[derive(Parser, Debug)]
#[command(about = "Train a recurrent DARTS genotype from scratch on Penn Treebank")]
struct Args {
    /// A published recurrent genotype: DARTS_V1, DARTS_V2.
    #[arg(long, default_value = "DARTS_V2")]
    arch: String,
    /// A genotype file (JSON or Python notation); overrides --arch.
    #[arg(long)]
    genotype: Option<PathBuf>,
    /// Directory with the three PTB files (default: the shipped sample).
    #[arg(long)]
    data: Option<PathBuf>,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long)]
    emsize: Option<usize>,
    #[arg(long)]
    nhid: Option<usize>,
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long)]
    epochs: Option<usize>,
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long)]
    wdecay: Option<f64>,
    /// Global gradient-norm clip (the reference's `--clip`, also accepted).
    #[arg(long, alias = "clip")]
    grad_clip: Option<f64>,
    #[arg(long)]
    bptt: Option<usize>,
    /// Epochs without improvement before switching to averaged SGD.
    #[arg(long)]
    nonmono: Option<usize>,
    #[arg(long)]
    seed: Option<u64>,
    /// Stop every epoch after N steps.
    #[arg(long)]
    max_steps: Option<usize>,
    /// Use only the first N tokens of each split.
    #[arg(long)]
    limit_tokens: Option<usize>,
    #[arg(long, default_value = "runs/ptb_train")]
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
    #[command(flatten)]
    parallel: parallel::ParallelArgs,
}

struct Task(PtbTrainConfig, RunOptions, Mode);

impl BackendTaskMulti for Task {
    type Output = Result<PtbTrainSummary, RunError>;
    fn run<B: AutodiffBackend>(self, devices: Vec<B::Device>) -> Self::Output {
        let Task(c, opts, mode) = self;
        match mode {
            Mode::Single => run_ptb_train::<B>(&c, &opts, &devices[0]),
            Mode::Threads(group) => run_ptb_train_parallel::<B>(&c, &opts, &devices, &group),
            Mode::Mpi(join, op) => {
                parallel::with_mpi::<B::InnerBackend, _>(join, op, |peer, lead| {
                    let opts = RunOptions {
                        progress: opts.progress && lead,
                        ..opts.clone()
                    };
                    darts::ptb::run_ptb_train_peer::<B>(&c, &opts, &devices[0], peer)
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
            let g = parse_recurrent_any(&text)
                .unwrap_or_else(|e| fail(2, format!("{}: {e}", p.display())));
            (g, p.display().to_string())
        }
        None => match catalog::recurrent(&a.arch) {
            Some(g) => (g, a.arch.clone()),
            None => fail(
                2,
                format!(
                    "unknown recurrent genotype `{}`; known: {}",
                    a.arch,
                    catalog::recurrent_names().join(", ")
                ),
            ),
        },
    };
    let quick = a.data.is_none();
    let sample = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/ptb-sample");
    let mut c = PtbTrainConfig::new(genotype, source);
    c.common.data = a.data.clone().unwrap_or(sample);
    if quick {
        c.common.emsize = 64;
        c.common.nhid = 64;
        c.common.batch_size = 16;
        c.common.epochs = 2;
    }
    macro_rules! set {
        ($($f:ident => $($g:ident).+),*) => { $( if let Some(v) = a.$f { c.$($g).+ = v; } )* };
    }
    set!(emsize => common.emsize, nhid => common.nhid, batch_size => common.batch_size, epochs => common.epochs, lr => common.lr,
        wdecay => common.weight_decay, grad_clip => common.grad_clip, bptt => common.bptt, nonmono => nonmono, seed => common.seed);
    c.common.max_steps_per_epoch = a.max_steps;
    c.common.limit_train_tokens = a.limit_tokens;
    c.common.limit_valid_tokens = a.limit_tokens;
    c.limit_test_tokens = a.limit_tokens;
    let opts = RunOptions {
        out: a.resume.clone().unwrap_or(a.out.clone()),
        resume: a.resume.is_some(),
        overwrite: a.overwrite,
        given: cli::given(
            &matches,
            &[
                ("arch", "genotype"),
                ("wdecay", "weight_decay"),
                ("max_steps", "max_steps_per_epoch"),
                ("limit_tokens", "limit_train_tokens"),
            ],
        ),
        stop_after: None,
        progress: !a.quiet,
    };
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
            "params {:.3}M  best valid perplexity {:.2}  test perplexity {:.2}  (outputs in {})",
            s.params as f64 / 1e6,
            s.best_val_ppl,
            s.test_ppl,
            opts.out.display()
        ),
        Ok(Err(e)) => fail(1, e),
        Err(e) => fail(2, e),
    }
}
