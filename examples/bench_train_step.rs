//! One training step of a derived (evaluation) network, timed, on any backend: what
//! `cifar10_train` does per batch and where most of a user's GPU time goes (600 epochs in the
//! paper). Prints JSON with the same keys as `benches/torch_train_step.py`.
//!
//! Defaults are the reference's `train.py`: DARTS_V2, C = 36, 20 cells, batch 96, auxiliary head
//! (weight 0.4), drop path 0.2, cutout 16, SGD lr 0.025 / momentum 0.9 / weight decay 3e-4,
//! gradient-norm clip 5.
//!
//! ```text
//! cargo run --release --example bench_train_step -- --steps 3 --json
//! cargo run --release --features wgpu --example bench_train_step -- --device wgpu --count-launches /tmp/l.log
//! ```
//!
//! A step is: upload of a prepared batch, forward (main and auxiliary logits), loss, backward,
//! clip, SGD, BatchNorm statistics, reading the loss back (which synchronises the device).
//! Batches are synthetic images in the CIFAR-10 record layout, augmented by the library's own
//! pipeline (crop with padding 4, flip, cutout) before the timing, as the reference's DataLoader
//! workers prepare them in parallel with the step.

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ElementConversion;
use clap::Parser;
use darts::bilevel::{weight_step, Sgd};
use darts::cell::ImageBatch;
use darts::data::cifar::{Augment, Cifar10, HostBatch, Loader};
use darts::device::{dispatch, BackendTask, DeviceSpec};
use darts::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

#[path = "support/bench.rs"]
mod support;
use support::{counts, diff, enable_log, median, peak_rss_mb, print_result, Log};

#[derive(Parser, Debug, Clone)]
#[command(about = "Time one training step of a derived DARTS network")]
struct Args {
    /// Genotype from the catalog (DARTS_V1, DARTS_V2, ...).
    #[arg(long, default_value = "DARTS_V2")]
    arch: String,
    #[arg(long, default_value_t = 96)]
    batch: usize,
    /// Initial channels.
    #[arg(long, default_value_t = 36)]
    channels: usize,
    /// Cells.
    #[arg(long, default_value_t = 20)]
    layers: usize,
    /// Leave the auxiliary head out.
    #[arg(long)]
    no_auxiliary: bool,
    #[arg(long, default_value_t = 0.4)]
    auxiliary_weight: f64,
    /// Drop-path probability (the reference ramps it to 0.2 over the epochs).
    #[arg(long, default_value_t = 0.2)]
    drop_path_prob: f64,
    /// Cutout side (0 = off).
    #[arg(long, default_value_t = 16)]
    cutout: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, default_value_t = 2)]
    seed: u64,
    /// Print one JSON line.
    #[arg(long)]
    json: bool,
    /// Count kernel launches and buffer reservations of one training step (wgpu/CUDA only;
    /// CubeCL's launch log is written to this file).
    #[arg(long)]
    count_launches: Option<PathBuf>,
}

/// `n` random images in the CIFAR-10 record layout (label byte, 3072 pixel bytes), labels
/// `i % 10`, from a fixed xorshift stream.
fn synthetic_cifar(n: usize, seed: u64) -> Result<Cifar10, String> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut bytes = Vec::with_capacity(n * 3073);
    for i in 0..n {
        bytes.push((i % 10) as u8);
        for _ in 0..3072 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            bytes.push((state >> 56) as u8);
        }
    }
    Cifar10::parse(&bytes, Path::new("<synthetic>")).map_err(|e| e.to_string())
}

struct Bench {
    args: Args,
    genotype: Genotype,
    batches: Vec<HostBatch>,
    log: Option<Log>,
}

impl BackendTask for Bench {
    type Output = Result<String, String>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<String, String> {
        // On CPU backends, the whole job on a pool's workers (see `darts::threads`).
        darts::threads::run_pooled_on::<B, _>(move || self.measure::<B>(device))
    }
}

impl Bench {
    fn measure<B: AutodiffBackend>(self, device: B::Device) -> Result<String, String> {
        let Bench {
            args: a,
            genotype,
            batches,
            log,
        } = self;
        B::seed(&device, a.seed);
        let mut model = EvalNetworkConfig {
            channels: a.channels,
            layers: a.layers,
            auxiliary: !a.no_auxiliary,
            ..Default::default()
        }
        .init::<B>(&genotype, &device)
        .map_err(|e| e.to_string())?;
        let (params, aux_params) = (model.num_weights(), model.auxiliary_weights());
        let mut sgd = Sgd::<B::InnerBackend>::new(0.9, 3e-4);
        let mut step = |k: usize| -> f64 {
            let h = &batches[k % batches.len()];
            let b = ImageBatch::<B>::from_host(h.images.clone(), h.dims(), &h.labels, &device);
            // Drop path as the training driver draws it: on the host, keyed by the sample.
            let drop = darts::cell::DropPath::keyed(
                a.drop_path_prob,
                darts::cell::DropKey {
                    seed: 0,
                    epoch: 0,
                    step: k as u64,
                    first_row: 0,
                },
            );
            let (next, st) = weight_step(model.clone(), &mut sgd, 0.025, Some(5.0), |m| {
                m.loss(&b, drop, a.auxiliary_weight)
            });
            model = next;
            st.loss.into_scalar().elem()
        };
        for k in 0..a.warmup {
            let t0 = Instant::now();
            let loss = step(k);
            eprintln!(
                "warm-up step {}/{}: {:.1} ms (loss {loss:.3})",
                k + 1,
                a.warmup,
                t0.elapsed().as_secs_f64() * 1e3
            );
        }
        let mut times = Vec::new();
        for k in 0..a.steps {
            let t0 = Instant::now();
            let loss = step(a.warmup + k);
            let ms = t0.elapsed().as_secs_f64() * 1e3;
            eprintln!("step {}/{}: {ms:.1} ms (loss {loss:.3})", k + 1, a.steps);
            times.push(ms);
        }
        let mut step_counts = "null".to_string();
        if log.is_some() {
            let c0 = counts(&log);
            step(a.warmup + a.steps);
            step_counts = diff(c0, counts(&log));
            eprintln!("training step: {step_counts}");
        }
        Ok(format!(
            "{{\"impl\": \"darts-burn\", \"device\": \"{}\", \"arch\": \"{}\", \"batch\": {}, \"channels\": {}, \"layers\": {}, \"params\": {params}, \"aux_params\": {aux_params}, \"step_ms_median\": {:.1}, \"step_ms_min\": {:.1}, \"peak_rss_mb\": {:.0}, \"step_counts\": {step_counts}}}",
            a.device,
            a.arch,
            a.batch,
            a.channels,
            a.layers,
            median(times.clone()),
            times.iter().copied().fold(f64::INFINITY, f64::min),
            peak_rss_mb(),
        ))
    }
}

fn run(args: Args) -> Result<String, String> {
    let spec: DeviceSpec = args.device.parse().map_err(|e| format!("{e}"))?;
    let genotype = catalog::conv(&args.arch).ok_or_else(|| {
        format!(
            "unknown genotype {:?}; the catalog has {}",
            args.arch,
            catalog::conv_names().join(", ")
        )
    })?;
    if args.batch == 0 || args.steps == 0 {
        return Err("--batch and --steps must be at least 1".into());
    }
    // Enough distinct batches that no two consecutive steps see the same one.
    let n_batches = (args.warmup + args.steps).clamp(1, 4);
    let data = Arc::new(synthetic_cifar(args.batch * n_batches, args.seed)?);
    let mut loader = Loader::new(data, (0..args.batch * n_batches).collect(), args.batch);
    loader.shuffle = true;
    loader.seed = args.seed;
    loader.augment = Augment {
        crop_padding: 4,
        flip: true,
        cutout: (args.cutout > 0).then_some(args.cutout),
    };
    let order = loader.order(0);
    let batches = (0..n_batches).map(|b| loader.batch(0, b, &order)).collect();
    let log = enable_log(args.count_launches.as_deref(), &spec);
    dispatch(
        &spec,
        Bench {
            args,
            genotype,
            batches,
            log,
        },
    )
    .map_err(|e| e.to_string())?
}

fn main() {
    // Reuse freed tensor memory instead of fresh pages (see `darts::alloc`).
    darts::alloc::tune_malloc();
    let args = Args::parse();
    let json = args.json;
    match run(args) {
        Ok(line) => print_result(&line, json),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    }
}
