//! Recurrent DARTS cell search on Penn Treebank (reference `rnn/train_search.py`).
//!
//! With no flags it runs a quick search on the PTB sample shipped in `data/ptb-sample` (a slice of
//! the validation split; a couple of minutes on a 2-core CPU). With `--data` the defaults are the
//! reference's: 300 units, batch 256, bptt 35, SGD lr 20, 50 epochs, Adam lr 3e-3 on α.
//!
//! ```text
//! cargo run --example ptb_search
//! cargo run --release --example ptb_search -- --data /path/to/ptb --out runs/ptb_s1
//! cargo run --release --features cuda --example ptb_search -- --data /path/to/ptb --device cuda --unrolled
//! cargo run --example ptb_search -- --resume runs/ptb_s1
//! ```
//!
//! Data-parallel (docs/guide.md §8): `--devices cuda:0,cuda:1` (threads of one process, each
//! peer taking its sequences of both streams), or `mpirun -np 2 ... --mpi --device cuda` with
//! `--features mpi`.

use burn::tensor::backend::AutodiffBackend;
use clap::{CommandFactory, FromArgMatches, Parser};
use darts::cifar::{RunError, RunOptions};
use darts::device::{dispatch_devices, BackendTaskMulti};
use darts::ptb::{run_ptb_search, run_ptb_search_parallel, PtbSearchConfig, PtbSearchSummary};
use std::path::PathBuf;

#[path = "support/arch_bn.rs"]
mod arch_bn;
#[path = "support/cli.rs"]
mod cli;
#[path = "support/parallel.rs"]
mod parallel;
use parallel::Mode;

#[derive(Parser, Debug)]
#[command(about = "Recurrent DARTS cell search on Penn Treebank")]
struct Args {
    /// Directory with ptb.train.txt, ptb.valid.txt, ptb.test.txt (default: the shipped sample,
    /// with a quick configuration).
    #[arg(long)]
    data: Option<PathBuf>,
    /// cpu | wgpu[:N] | cuda[:N]
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long)]
    emsize: Option<usize>,
    #[arg(long)]
    nhid: Option<usize>,
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long)]
    eval_batch_size: Option<usize>,
    #[arg(long)]
    bptt: Option<usize>,
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long)]
    wdecay: Option<f64>,
    /// Global gradient-norm clip (the reference's `--clip`, also accepted).
    #[arg(long, alias = "clip")]
    grad_clip: Option<f64>,
    #[arg(long)]
    epochs: Option<usize>,
    /// Output (locked) dropout.
    #[arg(long)]
    dropout: Option<f64>,
    /// Hidden-state dropout inside the cell.
    #[arg(long)]
    dropouth: Option<f64>,
    /// Input dropout inside the cell.
    #[arg(long)]
    dropoutx: Option<f64>,
    /// Locked dropout on the embeddings.
    #[arg(long)]
    dropouti: Option<f64>,
    /// Embedding (word) dropout.
    #[arg(long)]
    dropoute: Option<f64>,
    /// Temporal activation regularisation (slowness) β.
    #[arg(long)]
    beta: Option<f64>,
    /// Second-order (unrolled) architecture gradient.
    #[arg(long)]
    unrolled: bool,
    #[arg(long)]
    arch_lr: Option<f64>,
    #[arg(long)]
    arch_wdecay: Option<f64>,
    #[arg(long)]
    seed: Option<u64>,
    /// Stop every epoch after N steps.
    #[arg(long)]
    max_steps: Option<usize>,
    /// Reproduce the reference's unrolled step exactly: the tied embedding/decoder matrix is not
    /// moved by the virtual step, and the Hessian term's clip factor is not capped at 1
    /// (docs/reference.md).
    #[arg(long)]
    reference_quirks: bool,
    /// Which training-mode passes update the BatchNorm running statistics: architect-too (the
    /// reference: the architecture step's passes, then the weight step's) or weight-step-only.
    /// Only the evaluation-mode validation metrics depend on it.
    #[arg(long, value_enum)]
    arch_bn_stats: Option<arch_bn::ArchBnStatsArg>,
    /// Use only the first N training tokens.
    #[arg(long)]
    limit_train_tokens: Option<usize>,
    /// Use only the first N validation tokens.
    #[arg(long)]
    limit_valid_tokens: Option<usize>,
    #[arg(long, default_value = "runs/ptb_search")]
    out: PathBuf,
    /// Continue the run in this directory from its last checkpoint.
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

struct Task(PtbSearchConfig, RunOptions, Mode);

impl BackendTaskMulti for Task {
    type Output = Result<PtbSearchSummary, RunError>;
    fn run<B: AutodiffBackend>(self, devices: Vec<B::Device>) -> Self::Output {
        let Task(c, opts, mode) = self;
        match mode {
            Mode::Single => run_ptb_search::<B>(&c, &opts, &devices[0]),
            Mode::Threads(group) => run_ptb_search_parallel::<B>(&c, &opts, &devices, &group),
            Mode::Mpi(join, op) => {
                parallel::with_mpi::<B::InnerBackend, _>(join, op, |peer, lead| {
                    let opts = RunOptions {
                        progress: opts.progress && lead,
                        ..opts.clone()
                    };
                    darts::ptb::run_ptb_search_peer::<B>(&c, &opts, &devices[0], peer)
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
    let quick = a.data.is_none();
    let sample = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/ptb-sample");
    let mut c = PtbSearchConfig::default();
    c.common.data = a.data.clone().unwrap_or(sample);
    if quick {
        c.common.emsize = 32;
        c.common.nhid = 32;
        c.common.batch_size = 16;
        c.common.bptt = 20;
        c.common.epochs = 3;
        c.common.max_steps_per_epoch = Some(20);
    }
    macro_rules! set {
        ($($f:ident => $($g:ident).+),*) => { $( if let Some(v) = a.$f { c.$($g).+ = v; } )* };
    }
    set!(emsize => common.emsize, nhid => common.nhid, batch_size => common.batch_size,
        eval_batch_size => common.eval_batch_size, bptt => common.bptt, lr => common.lr, wdecay => common.weight_decay,
        grad_clip => common.grad_clip, epochs => common.epochs, beta => common.tar, arch_lr => arch_lr,
        arch_wdecay => arch_weight_decay, seed => common.seed);
    macro_rules! drop {
        ($($f:ident => $g:ident),*) => { $( if let Some(v) = a.$f { c.common.dropout.$g = v; } )* };
    }
    drop!(dropout => output, dropouth => hidden, dropoutx => x, dropouti => input,
        dropoute => embedding);
    if a.max_steps.is_some() {
        c.common.max_steps_per_epoch = a.max_steps;
    }
    c.common.limit_train_tokens = a.limit_train_tokens;
    c.common.limit_valid_tokens = a.limit_valid_tokens;
    c.unrolled = a.unrolled;
    if let Some(v) = a.arch_bn_stats {
        c.arch_bn_stats = v.into();
    }
    if a.reference_quirks {
        c.quirks = darts::bilevel::ReferenceQuirks {
            tied_weights_not_unrolled: true,
            unclamped_clip_factor: true,
        };
    }
    let opts = RunOptions {
        out: a.resume.clone().unwrap_or(a.out.clone()),
        resume: a.resume.is_some(),
        overwrite: a.overwrite,
        given: cli::given(
            &matches,
            &[
                ("wdecay", "weight_decay"),
                ("beta", "tar"),
                ("arch_wdecay", "arch_weight_decay"),
                ("dropout", "dropout.output"),
                ("dropouth", "dropout.hidden"),
                ("dropoutx", "dropout.x"),
                ("dropouti", "dropout.input"),
                ("dropoute", "dropout.embedding"),
                ("max_steps", "max_steps_per_epoch"),
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
    let spec = specs
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(",");
    if !opts.resume && lead {
        eprintln!(
            "searching on {} ({}{}), device {spec}, output {}",
            c.common.data.display(),
            if quick {
                "quick sample run"
            } else {
                "reference settings"
            },
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
            println!(
                "supernet weights: {} (vocabulary {})",
                s.params, s.data.vocab
            );
            if let Some(e) = s.history.last() {
                println!("final validation perplexity: {:.2}", e.val_ppl);
            }
            println!(
                "final genotype: {}",
                darts::genotype::python::recurrent_to_python(&s.genotype)
            );
            println!(
                "wrote {}/{{genotype.json,genotype.py,recurrent.svg,metrics.jsonl,checkpoint.safetensors}} and charts (perplexity, alphas, alphas_final; .svg and .png) in {:.0}s",
                opts.out.display(),
                t0.elapsed().as_secs_f64()
            );
        }
        Ok(Err(e)) => fail(1, e),
        Err(e) => fail(2, e),
    }
}
