//! Forward+backward time of the building blocks on `[N, C, HW, HW]` (CPU, `flex`; default
//! `[16, 8, 32, 32]`), the numbers behind `docs/performance.md`. `benches/torch_op_profile.py`
//! times PyTorch's operations on the same shape.
//!
//! ```text
//! cargo run --release --example op_profile                # [16, 8, 32, 32]
//! cargo run --release --example op_profile -- 96 36 32    # the derived network's first stage
//! ```

use burn::backend::{Autodiff, Flex};
use burn::tensor::module::{avg_pool2d, conv2d, max_pool2d};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Distribution, Tensor};
use darts::ops::conv::Conv2dConfig;
use darts::ops::kernels::{cpu, pool2d, Pooling, Window};
use darts::ops::{BatchNorm2d, Primitive};
use std::time::Instant;

type B = Autodiff<Flex>;

fn time(name: &str, f: impl Fn() -> Tensor<B, 4>) {
    let reps = 5;
    let t0 = Instant::now();
    for _ in 0..reps {
        let y = f();
        let _grads = y.sum().backward();
    }
    println!(
        "{name:>28}: fwd+bwd {:8.2} ms",
        t0.elapsed().as_secs_f64() * 1e3 / reps as f64
    );
}

fn main() {
    // Reuse freed tensor memory instead of fresh pages (see `darts::alloc`).
    darts::alloc::tune_malloc();
    // Every op on a pool's workers, as the drivers run (see `darts::threads`).
    darts::threads::run_pooled(profile);
}

fn profile() {
    let dev = Default::default();
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("usage: op_profile [N C HW]"))
        .collect();
    let (n, c, hw) = match args[..] {
        [n, c, hw] => (n, c, hw),
        [] => (16, 8, 32),
        _ => panic!("usage: op_profile [N C HW]"),
    };
    let x = Tensor::<B, 4>::random([n, c, hw, hw], Distribution::Default, &dev).require_grad();
    let bn = BatchNorm2d::<B>::new(c, false, &dev);
    let dw = Conv2dConfig::new(c, c, 3, 1, 1).groups(c).init::<B>(&dev);
    let dw5 = Conv2dConfig::new(c, c, 5, 1, 2).groups(c).init::<B>(&dev);
    let pw = Conv2dConfig::new(c, c, 1, 1, 0).init::<B>(&dev);
    let per_channel = Tensor::<B, 4>::random([1, c, 1, 1], Distribution::Default, &dev);
    let per_row = Tensor::<B, 2>::random([n * c, 1], Distribution::Default, &dev);
    time("x * 2", || x.clone() * 2.0);
    time("relu", || burn::tensor::activation::relu(x.clone()));
    time("x * c[1,C,1,1]", || x.clone() * per_channel.clone());
    time("x[NC,HW] * c[NC,1]", || {
        (x.clone().reshape([n * c, hw * hw]) * per_row.clone()).reshape([n, c, hw, hw])
    });
    time("mean over (0, 2, 3)", || {
        x.clone().mean_dims(&[0, 2, 3]) + x.clone()
    });
    time("batchnorm", || bn.forward(x.clone()));
    let bn_affine = BatchNorm2d::<B>::new(c, true, &dev);
    time("batchnorm (affine)", || bn_affine.forward(x.clone()));
    time("max pool 3x3 (burn)", || {
        max_pool2d(x.clone(), [3, 3], [1, 1], [1, 1], [1, 1], false)
    });
    time("max pool 3x3 (kernel)", || {
        pool2d(x.clone(), Pooling::Max, 3, 1, 1)
    });
    time("avg pool 3x3 (burn)", || {
        avg_pool2d(x.clone(), [3, 3], [1, 1], [1, 1], false, false)
    });
    time("avg pool 3x3 (kernel)", || {
        pool2d(x.clone(), Pooling::AvgExcludePad, 3, 1, 1)
    });
    time("depthwise conv 3x3 (burn)", || {
        conv2d(
            x.clone(),
            dw.weight.val(),
            None,
            ConvOptions::new([1, 1], [1, 1], [1, 1], c),
        )
    });
    time("depthwise conv 3x3 (kernel)", || dw.forward(x.clone()));
    time("depthwise conv 5x5 (kernel)", || dw5.forward(x.clone()));
    time("pointwise conv 1x1 (burn)", || {
        conv2d(
            x.clone(),
            pw.weight.val(),
            None,
            ConvOptions::new([1, 1], [0, 0], [1, 1], 1),
        )
    });
    time("pointwise conv 1x1 (layer)", || pw.forward(x.clone()));
    // The plain-slice kernels alone (no tensors, no autodiff).
    let xs: Vec<f32> = x.clone().into_data().to_vec().unwrap();
    let g3 = Window {
        n,
        c,
        h: hw,
        w: hw,
        kh: 3,
        kw: 3,
        stride: [1, 1],
        pad: [1, 1],
        dil: [1, 1],
    };
    let ws = vec![0.1f32; c * 9];
    let raw = |name: &str, f: &dyn Fn() -> usize| {
        let reps = 20;
        let t0 = Instant::now();
        let mut keep = 0;
        for _ in 0..reps {
            keep += f();
        }
        println!(
            "{name:>28}: {:8.3} ms ({keep} values)",
            t0.elapsed().as_secs_f64() * 1e3 / reps as f64
        );
    };
    raw("raw dw 3x3 forward", &|| {
        cpu::depthwise_forward(&xs, &ws, &g3).len()
    });
    raw("raw dw 3x3 backward", &|| {
        cpu::depthwise_backward(&xs, &ws, &xs, &g3, true, true)
            .0
            .len()
    });
    raw("raw max pool forward", &|| {
        cpu::pool_forward(&xs, &g3, Pooling::Max).len()
    });
    raw("raw max pool backward", &|| {
        cpu::pool_backward(&xs, &xs, &g3, Pooling::Max).len()
    });
    raw("raw avg pool forward", &|| {
        cpu::pool_forward(&xs, &g3, Pooling::AvgExcludePad).len()
    });
    raw("raw avg pool backward", &|| {
        cpu::pool_backward(&xs, &xs, &g3, Pooling::AvgExcludePad).len()
    });
    for p in Primitive::DARTS {
        let op = p.build::<B>(c, 1, darts::ops::OpOptions::SEARCH, &dev);
        time(p.name(), || op.forward(x.clone()));
    }
    for p in Primitive::DARTS {
        let op = p.build::<B>(c, 1, darts::ops::OpOptions::DERIVED, &dev);
        time(&format!("{} (derived)", p.name()), || op.forward(x.clone()));
    }
}
