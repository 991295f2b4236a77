//! Time of each GPU primitive of `kernels::gpu::GpuOps` on the shapes of config B (batch 16,
//! C = 8 at 32×32, 16 at 16×16, 32 at 8×8), on wgpu without fusion (the kernels alone), one
//! JSON line per primitive and shape: the median of `--reps` samples of 10 calls each (one device wait per
//! sample) after a warm-up sample (which compiles the kernel). On this machine wgpu runs on lavapipe, so this is
//! how a kernel change is measured without a GPU and without a whole search step.
//!
//! ```text
//! cargo run --release -p darts-ops --features wgpu --example kernel_profile
//! cargo run --release -p darts-ops --features wgpu --example kernel_profile -- --reps 9 --only pw
//! ```

use burn::backend::wgpu::{CubeBackend, WgpuDevice, WgpuRuntime};
use burn::tensor::backend::Backend;
use burn::tensor::ops::{FloatTensor, FloatTensorOps};
use burn::tensor::{Distribution, Tensor};
use darts_ops::kernels::gpu::GpuOps;
use darts_ops::kernels::{Pooling, Window};
use std::time::Instant;

type B = CubeBackend<WgpuRuntime, f32, i32, u32>;

/// Calls per timed sample.
const CALLS: usize = 10;

fn rand(dims: [usize; 4], dev: &WgpuDevice) -> FloatTensor<B> {
    Tensor::<B, 4>::random(dims, Distribution::Default, dev)
        .into_primitive()
        .tensor()
}

struct Bench {
    reps: usize,
    only: Option<String>,
    dev: WgpuDevice,
}

impl Bench {
    fn time(&self, op: &str, shape: [usize; 4], f: impl Fn() -> FloatTensor<B>) {
        if self.only.as_deref().is_some_and(|o| !op.starts_with(o)) {
            return;
        }
        // `CALLS` calls, then one wait for the device: the per-call time without the wait.
        let run = || {
            let t0 = Instant::now();
            let ys: Vec<_> = (0..CALLS).map(|_| f()).collect();
            B::sync(&self.dev).expect("device sync");
            drop(ys);
            t0.elapsed().as_secs_f64() * 1e3 / CALLS as f64
        };
        run();
        let mut ms: Vec<f64> = (0..self.reps).map(|_| run()).collect();
        ms.sort_by(f64::total_cmp);
        println!(
            "{{\"op\": \"{op}\", \"shape\": {shape:?}, \"ms_median\": {:.3}, \"ms_min\": {:.3}}}",
            ms[ms.len() / 2],
            ms[0]
        );
    }
}

fn window(n: usize, c: usize, hw: usize, k: usize, s: usize, d: usize) -> Window {
    Window {
        n,
        c,
        h: hw,
        w: hw,
        kh: k,
        kw: k,
        stride: [s, s],
        pad: [d * (k - 1) / 2; 2],
        dil: [d, d],
    }
}

fn main() {
    let mut reps = 5;
    let mut only = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--reps" => reps = args.next().and_then(|v| v.parse().ok()).expect("--reps N"),
            "--only" => only = Some(args.next().expect("--only PREFIX")),
            _ => panic!("usage: kernel_profile [--reps N] [--only PREFIX]"),
        }
    }
    let b = Bench {
        reps: reps.max(1),
        only,
        dev: WgpuDevice::default(),
    };
    let dev = &b.dev;
    // The floor: a launch on a tensor of 16 elements.
    let tiny = rand([1, 4, 2, 2], dev);
    let tiny_w = rand([4, 4, 1, 1], dev);
    b.time("floor_pw_forward", [1, 4, 2, 2], || {
        B::pw_forward(tiny.clone(), tiny_w.clone())
    });
    let n = 16;
    for (c, hw) in [(8, 32), (16, 16), (32, 8)] {
        let shape = [n, c, hw, hw];
        let x = rand(shape, dev);
        let g = rand(shape, dev);
        let w1 = rand([c, c, 1, 1], dev);
        b.time("add", shape, || B::float_add(x.clone(), g.clone()));
        b.time("pw_forward", shape, || B::pw_forward(x.clone(), w1.clone()));
        b.time("pw_backward_x", shape, || {
            B::pw_backward_x(g.clone(), w1.clone())
        });
        b.time("pw_backward_w", shape, || {
            B::pw_backward_w(x.clone(), g.clone())
        });
        for (k, s, d) in [
            (3, 1, 1),
            (5, 1, 1),
            (3, 1, 2),
            (5, 1, 2),
            (3, 2, 1),
            (5, 2, 2),
        ] {
            let win = window(n, c, hw, k, s, d);
            let gy = rand([n, c, win.ho(), win.wo()], dev);
            let wd = rand([c, 1, k, k], dev);
            let tag = format!("k{k}s{s}d{d}");
            b.time(&format!("dw_relu_forward_{tag}"), shape, || {
                B::dw_relu_forward(x.clone(), wd.clone(), &win)
            });
            b.time(&format!("dw_relu_backward_x_{tag}"), shape, || {
                B::dw_relu_backward_x(gy.clone(), wd.clone(), x.clone(), &win)
            });
            b.time(&format!("dw_relu_backward_w_{tag}"), shape, || {
                B::dw_relu_backward_w(x.clone(), gy.clone(), &win)
            });
        }
        b.time("bn_forward", shape, || {
            let [y, _, _] = B::bn_forward(x.clone(), 1e-5);
            y
        });
        let [xhat, _, var] = B::bn_forward(x.clone(), 1e-5);
        b.time("bn_backward", shape, || {
            B::bn_backward(xhat.clone(), var.clone(), g.clone(), 1e-5)
        });
        for s in [1, 2] {
            let win = window(n, c, hw, 3, s, 1);
            let gy = rand([n, c, win.ho(), win.wo()], dev);
            for (kind, name) in [(Pooling::Max, "max"), (Pooling::AvgExcludePad, "avg")] {
                b.time(&format!("pool_{name}_forward_s{s}"), shape, || {
                    B::pool_forward(x.clone(), &win, kind).0
                });
                // What the autodiff op keeps: the arg-max where the backend saves it, else x.
                let (_, arg) = B::pool_forward(x.clone(), &win, kind);
                let saved = arg.unwrap_or_else(|| x.clone());
                b.time(&format!("pool_{name}_backward_s{s}"), shape, || {
                    B::pool_backward(saved.clone(), gy.clone(), &win, kind)
                });
            }
        }
    }
}
