//! Forward+backward time of the building blocks on `[16, 8, 32, 32]` (CPU, `flex`), the numbers
//! behind `docs/performance.md`.
//!
//! ```text
//! cargo run --release --example op_profile
//! ```

use burn::backend::{Autodiff, Flex};
use burn::tensor::module::{avg_pool2d, max_pool2d};
use burn::tensor::{Distribution, Tensor};
use darts::ops::conv::Conv2dConfig;
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
    let dev = Default::default();
    let (n, c, hw) = (16usize, 8usize, 32usize);
    let x = Tensor::<B, 4>::random([n, c, hw, hw], Distribution::Default, &dev).require_grad();
    let bn = BatchNorm2d::<B>::new(c, false, &dev);
    let dw = Conv2dConfig::new(c, c, 3, 1, 1).groups(c).init::<B>(&dev);
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
    time("max pool 3x3", || {
        max_pool2d(x.clone(), [3, 3], [1, 1], [1, 1], [1, 1], false)
    });
    time("avg pool 3x3", || {
        avg_pool2d(x.clone(), [3, 3], [1, 1], [1, 1], false, false)
    });
    time("depthwise conv 3x3", || dw.forward(x.clone()));
    time("pointwise conv 1x1", || pw.forward(x.clone()));
    for p in Primitive::DARTS {
        let op = p.build::<B>(c, 1, false, true, &dev);
        time(p.name(), || op.forward(x.clone()));
    }
}
