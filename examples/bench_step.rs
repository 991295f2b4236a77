//! One DARTS search step, timed, on any backend; prints JSON with the same fields as the
//! PyTorch baseline in `../shared/bench/torch_darts_step.py`.
//!
//! ```text
//! cargo run --release --example bench_step -- --order 1 --batch 16 --layers 5 --channels 8 --json
//! ```

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Distribution, Int, Tensor, TensorData};
use clap::Parser;
use darts::bilevel::{loss_gradients, ArchitectConfig, Bilevel, CosineLr, Order, WeightConfig};
use darts::cell::ImageBatch;
use darts::device::{dispatch, BackendTask, DeviceSpec};
use darts::prelude::*;
use std::time::Instant;

#[derive(Parser, Debug, Clone)]
#[command(about = "Time one DARTS search step (architecture step + weight step)")]
struct Args {
    /// 1 = first order, 2 = second order (unrolled).
    #[arg(long, default_value_t = 1)]
    order: u8,
    #[arg(long, default_value_t = 16)]
    batch: usize,
    #[arg(long, default_value_t = 5)]
    layers: usize,
    #[arg(long, default_value_t = 8)]
    channels: usize,
    /// Intermediate nodes per cell.
    #[arg(long, default_value_t = 4)]
    nodes: usize,
    /// Timed search steps.
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Timed plain forward+backward passes.
    #[arg(long, default_value_t = 5)]
    fwd_steps: usize,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, default_value_t = 2)]
    seed: u64,
    /// Print one JSON line.
    #[arg(long)]
    json: bool,
    /// Search method (darts, pc-darts, gdas, darts-minus, fair-darts, sdarts-rs, sdarts-adv,
    /// beta-darts, drnas), its schedule taken at epoch 25 of 50 (PC-DARTS past its warm-up).
    #[arg(long, default_value = "darts")]
    method: darts::methods::Method,
    /// Override the method's partial-channel factor K (DrNAS's first-stage 6 needs C to be a
    /// multiple of 6; config B has C = 8).
    #[arg(long)]
    partial_channels: Option<usize>,
    /// Count kernel launches and buffer reservations of one fwd+bwd and one search step
    /// (wgpu/CUDA only; CubeCL's launch log is written to this file).
    #[arg(long)]
    count_launches: Option<std::path::PathBuf>,
}

#[path = "support/bench.rs"]
mod support;
use support::{counts, diff, enable_log, median, peak_rss_mb, print_result, Log};

/// Multiply-accumulate count of one supernet forward, for an analytic FLOP estimate
/// (forward + backward ≈ 3 × forward; 1 MAC = 2 FLOPs).
fn forward_macs(c: usize, layers: usize, nodes: usize, batch: usize) -> f64 {
    let mut macs = 0.0;
    let hw = |s: usize| (s * s) as f64;
    let mut size = 32usize;
    let cs = 3 * c;
    macs += hw(size) * (27 * cs) as f64; // stem
    let (mut cpp, mut cp, mut cc) = (cs, cs, c);
    let mut red_prev = false;
    for i in 0..layers {
        let red = i == layers / 3 || i == 2 * layers / 3;
        if red {
            cc *= 2;
        }
        let in_size = size;
        let out_size = if red { size / 2 } else { size };
        // preprocessing
        macs += if red_prev {
            hw(in_size / 2) * (cpp * cc) as f64
        } else {
            hw(in_size) * (cpp * cc) as f64
        };
        macs += hw(in_size) * (cp * cc) as f64;
        for n in 0..nodes {
            for j in 0..2 + n {
                let sp = hw(out_size);
                let cc2 = (cc * cc) as f64;
                let ccf = cc as f64;
                // sep 3x3, sep 5x5: 2 × (dw k² + pw); dil 3x3, 5x5: dw k² + pw; skip (FR at stride 2)
                macs += sp * (2.0 * (9.0 * ccf + cc2) + 2.0 * (25.0 * ccf + cc2));
                macs += sp * ((9.0 * ccf + cc2) + (25.0 * ccf + cc2));
                macs += sp * 18.0 * ccf; // two pools
                if red && j < 2 {
                    macs += sp * cc2; // FactorizedReduce
                }
            }
        }
        red_prev = red;
        size = out_size;
        cpp = cp;
        cp = nodes * cc;
    }
    batch as f64 * macs
}

struct Bench(Args, Option<Log>);

impl BackendTask for Bench {
    type Output = String;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> String {
        // On CPU backends, the whole job on a pool's workers (see `darts::threads`).
        darts::threads::run_pooled_on::<B, _>(move || self.measure::<B>(device))
    }
}

impl Bench {
    fn measure<B: AutodiffBackend>(self, device: B::Device) -> String {
        let (a, log) = (self.0, self.1);
        B::seed(&device, a.seed);
        let mut method = a.method.config();
        if let Some(k) = a.partial_channels {
            method.partial_channels = k;
        }
        let base = SearchNetworkConfig {
            channels: a.channels,
            layers: a.layers,
            steps: a.nodes,
            multiplier: a.nodes,
            ..Default::default()
        };
        let net = method.supernet::<B>(base, &device).unwrap_or_else(|e| {
            eprintln!("error: {e}");
            std::process::exit(2)
        });
        let params = net.num_weights();
        let mk = |shift: f32| {
            let images = Tensor::<B, 4>::random(
                [a.batch, 3, 32, 32],
                Distribution::Normal(0.0, 1.0),
                &device,
            ) + shift;
            let t: Vec<i64> = (0..a.batch as i64).map(|i| i % 10).collect();
            ImageBatch {
                images,
                targets: Tensor::<B, 1, Int>::from_data(TensorData::new(t, [a.batch]), &device),
            }
        };
        let (train, val) = (mk(0.0), mk(0.1));
        let order = if a.order == 2 {
            Order::Second
        } else {
            Order::First
        };
        let mut s = Bilevel::new(
            net,
            WeightConfig {
                lr: CosineLr {
                    max: 0.025,
                    min: 0.001,
                    epochs: 50,
                },
                momentum: 0.9,
                weight_decay: 3e-4,
                grad_clip: Some(5.0),
            },
            ArchitectConfig {
                order,
                ..Default::default()
            },
        );
        method.apply(&mut s, a.seed, 25, 50);
        let sync = |x: f64| x; // losses are read back each step, which synchronises the device
        let mut fwd = Vec::new();
        // One untimed pass first (the PyTorch script warms up with two), then timed passes of
        // what a weight step computes: the loss and the gradients of every parameter.
        for i in 0..a.fwd_steps + 1 {
            let t0 = Instant::now();
            let g = loss_gradients(&s.model, &train);
            sync(g.loss);
            let ms = t0.elapsed().as_secs_f64() * 1e3;
            eprintln!(
                "fwd+bwd {i}/{}: {ms:.1} ms{}",
                a.fwd_steps,
                if i == 0 { " (untimed)" } else { "" }
            );
            if i > 0 {
                fwd.push(ms);
            }
        }
        for i in 0..a.warmup {
            let t0 = Instant::now();
            s.step(&train, &val, 0.025);
            eprintln!(
                "warm-up step {}/{}: {:.1} ms",
                i + 1,
                a.warmup,
                t0.elapsed().as_secs_f64() * 1e3
            );
        }
        let mut steps = Vec::new();
        for _ in 0..a.steps {
            let t0 = Instant::now();
            let st = s.step(&train, &val, 0.025);
            sync(st.train_loss);
            let ms = t0.elapsed().as_secs_f64() * 1e3;
            eprintln!("step {}/{}: {ms:.1} ms", steps.len() + 1, a.steps);
            steps.push(ms);
        }
        // Launch accounting, in passes of their own (reading the log waits for it to settle).
        let (mut fb_launches, mut step_launches) = ("null".to_string(), "null".to_string());
        if log.is_some() {
            let c0 = counts(&log);
            sync(loss_gradients(&s.model, &train).loss);
            let c1 = counts(&log);
            sync(s.step(&train, &val, 0.025).train_loss);
            let c2 = counts(&log);
            fb_launches = diff(c0, c1);
            step_launches = diff(c1, c2);
            eprintln!("fwd+bwd: {fb_launches}; search step: {step_launches}");
        }
        let macs = forward_macs(a.channels, a.layers, a.nodes, a.batch);
        let fwd_med = median(fwd.clone());
        let gflops = 3.0 * 2.0 * macs / (fwd_med / 1e3) / 1e9;
        format!(
            "{{\"impl\": \"darts-burn\", \"method\": \"{}\", \"device\": \"{}\", \"order\": {}, \"batch\": {}, \"layers\": {}, \"channels\": {}, \"nodes\": {}, \"params\": {}, \"step_ms_median\": {:.1}, \"step_ms_min\": {:.1}, \"fwd_bwd_ms_median\": {:.1}, \"peak_rss_mb\": {:.0}, \"fwd_gmacs\": {:.3}, \"fwd_bwd_gflops_per_s\": {:.2}, \"fwd_bwd_counts\": {}, \"step_counts\": {}}}",
            a.method,
            a.device,
            a.order,
            a.batch,
            a.layers,
            a.channels,
            a.nodes,
            params,
            median(steps.clone()),
            steps.iter().cloned().fold(f64::INFINITY, f64::min),
            fwd_med,
            peak_rss_mb(),
            macs / 1e9,
            gflops,
            fb_launches,
            step_launches
        )
    }
}

fn main() {
    // Reuse freed tensor memory instead of fresh pages (see `darts::alloc`).
    darts::alloc::tune_malloc();
    let args = Args::parse();
    let spec: DeviceSpec = match args.device.parse() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let json = args.json;
    let log = enable_log(args.count_launches.as_deref(), &spec);
    match dispatch(&spec, Bench(args, log)) {
        Ok(line) => print_result(&line, json),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    }
}
