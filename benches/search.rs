//! Criterion benchmarks of the hot pieces of a search, on the default (flex CPU) backend:
//! one mixed op (forward + backward), one search cell (forward + backward), one first-order
//! search step on a small supernet, and one recurrent search step.
//!
//! ```text
//! cargo bench --bench search
//! ```
//! Whole-step numbers against PyTorch come from `benches/compare_pytorch.sh` (the `bench_step`
//! example prints the same JSON fields as the PyTorch script).

use burn::tensor::{Distribution, Int, Tensor, TensorData};
use criterion::{criterion_group, criterion_main, Criterion};
use darts::bilevel::{ArchitectConfig, Bilevel, WeightConfig};
use darts::cell::rnn::{RnnConfig, TokenBatch};
use darts::cell::{ImageBatch, RnnSearchNetwork};
use darts::mixed_op::{EdgeSpec, MixedOp, RnnSpace};
use darts::ops::RnnOp;
use darts::prelude::*;
use std::time::Duration;

type B = burn::backend::Autodiff<burn::backend::Flex>;

fn images(n: usize, hw: usize) -> ImageBatch<B> {
    let dev = Default::default();
    let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    let x = Tensor::<B, 4>::random([n, 3, hw, hw], Distribution::Normal(0.0, 1.0), &dev);
    ImageBatch {
        images: x,
        targets: Tensor::<B, 1, Int>::from_data(
            TensorData::new(labels.iter().map(|&l| l as i64).collect(), [n]),
            &dev,
        ),
    }
}

fn mixed_op(c: &mut Criterion) {
    let dev = Default::default();
    let m = MixedOp::<B, DartsOp<B>>::new(
        &DartsSpace::default(),
        &EdgeSpec {
            channels: 8,
            stride: 1,
        },
        &dev,
    );
    let x = Tensor::<B, 4>::random([16, 8, 32, 32], Distribution::Normal(0.0, 1.0), &dev);
    let w = Tensor::<B, 1>::from_floats([0.125; 8], &dev).require_grad();
    c.bench_function("mixed_op_fwd_bwd_16x8x32x32", |b| {
        b.iter(|| {
            let y = m.forward(x.clone(), w.clone());
            y.sum().backward()
        })
    });
}

fn cell(c: &mut Criterion) {
    let dev = Default::default();
    let net = SearchNetworkConfig {
        channels: 8,
        layers: 3,
        ..Default::default()
    }
    .init::<B, _, _>(&DartsSpace::default(), Softmax, &dev)
    .expect("valid configuration");
    let cell = &net.cells[0];
    let s = Tensor::<B, 4>::random([16, 24, 32, 32], Distribution::Normal(0.0, 1.0), &dev);
    let w: Vec<Tensor<B, 1>> = (0..14)
        .map(|_| Tensor::<B, 1>::from_floats([0.125; 8], &dev).require_grad())
        .collect();
    c.bench_function("normal_cell_fwd_bwd_C8_16x32x32", |b| {
        b.iter(|| cell.forward(s.clone(), s.clone(), &w).sum().backward())
    });
}

fn search_step(c: &mut Criterion) {
    let dev = Default::default();
    let net = SearchNetworkConfig {
        channels: 4,
        layers: 3,
        ..Default::default()
    }
    .init::<B, _, _>(&DartsSpace::default(), Softmax, &dev)
    .expect("valid configuration");
    let mut search = Bilevel::new(
        net,
        WeightConfig::darts_cifar(1),
        ArchitectConfig::default(),
    );
    let (train, val) = (images(8, 32), images(8, 32));
    c.bench_function("search_step_first_order_C4_L3_batch8", |b| {
        b.iter(|| search.step(&train, &val, 0.025))
    });
}

fn rnn_step(c: &mut Criterion) {
    let dev = Default::default();
    let cfg = RnnConfig {
        emsize: 64,
        nhid: 64,
        ..RnnConfig::search(1000)
    };
    let net: RnnSearchNetwork<B, RnnOp> = cfg
        .init_search(&RnnSpace::default(), Softmax, &dev)
        .unwrap();
    let mut search = Bilevel::new(
        net,
        WeightConfig::darts_cifar(1),
        ArchitectConfig::default(),
    );
    let (t, n) = (20, 16);
    let ids: Vec<u32> = (0..(t + 1) * n).map(|i| (i * 37 % 1000) as u32).collect();
    let batch = |seed| {
        TokenBatch::from_host(
            &ids[..t * n],
            &ids[n..],
            n,
            Tensor::zeros([n, 64], &dev),
            cfg.masks(n, seed, &dev),
            &dev,
        )
    };
    let (train, val) = (batch(1), batch(2));
    c.bench_function("rnn_search_step_first_order_h64_t20_batch16", |b| {
        b.iter(|| search.step(&train, &val, 20.0))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    targets = mixed_op, cell, search_step, rnn_step
}
criterion_main!(benches);
