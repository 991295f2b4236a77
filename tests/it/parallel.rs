//! Data parallelism (`darts::parallel`, `darts_bilevel::sync`): two peers on flex against a
//! single-device reference that computes the same per-shard gradients and averages them, in
//! f64; failures (a peer that never joins, a port in use); the two-peer CIFAR-10 search driver
//! against itself resumed, and across two processes over loopback.

use crate::common::{batch, batch_f64, seeded, to_f64, Inner, B};
use burn::module::ParamId;
use burn::tensor::Tensor;
use darts::bilevel::params::{all_ids, set_values, values, FlatParams};
use darts::bilevel::{
    arch_gradients, clip_grad_norm, loss_gradients, train_gradients, ArchModel, ArchitectConfig,
    Bilevel, CosineLr, Order, WeightConfig,
};
use darts::parallel::{run_local, shard_range, GroupConfig, ParallelError};
use darts::prelude::*;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

type Net = SearchNetwork<B, DartsOp<B>, Softmax>;

fn tiny() -> Net {
    seeded(23, || {
        SearchNetworkConfig {
            channels: 4,
            layers: 3,
            steps: 2,
            multiplier: 2,
            ..Default::default()
        }
        .init::<B, _, _>(&DartsSpace::default(), Softmax, &Default::default())
        .unwrap()
    })
}

fn weights() -> WeightConfig {
    WeightConfig {
        lr: CosineLr {
            max: 0.1,
            min: 0.001,
            epochs: 4,
        },
        momentum: 0.9,
        weight_decay: 3e-4,
        grad_clip: Some(5.0),
    }
}

fn arch(order: Order) -> ArchitectConfig {
    ArchitectConfig {
        order,
        arch_lr: 0.05,
        ..Default::default()
    }
}

fn shard(b: &ImageBatch<B>, rank: usize, world: usize) -> ImageBatch<B> {
    let r = shard_range(b.images.dims()[0], rank, world);
    ImageBatch {
        images: b.images.clone().narrow(0, r.start, r.len()),
        targets: b.targets.clone().narrow(0, r.start, r.len()),
    }
}

/// `(Σ_p n_p g_p) / Σ n_p` per id, in rank order (what the group computes).
fn mean(parts: &[(FlatParams<B>, usize)]) -> FlatParams<B> {
    let total: usize = parts.iter().map(|p| p.1).sum();
    let mut out: FlatParams<B> = BTreeMap::new();
    for id in parts[0].0.keys() {
        let mut acc: Option<Tensor<Inner, 1>> = None;
        for (g, n) in parts {
            let t = g[id].clone() * (*n as f64);
            acc = Some(match acc {
                Some(a) => a + t,
                None => t,
            });
        }
        out.insert(*id, acc.unwrap() / total as f64);
    }
    out
}

/// One search step of the single-device reference, written out from the library's gradient
/// pieces: every gradient is the size-weighted mean of the shards' gradients.
fn reference_step(
    s: &mut Bilevel<B, Net>,
    train: &[ImageBatch<B>],
    val: &[ImageBatch<B>],
    lr: f64,
) {
    let m = s.model.clone();
    let arch_ids = m.arch_param_ids();
    let size = |b: &ImageBatch<B>| b.images.dims()[0];
    let dalpha = match s.architect.config.order {
        Order::First => mean(
            &val.iter()
                .map(|v| (arch_gradients(&m, v).arch, size(v)))
                .collect::<Vec<_>>(),
        ),
        Order::Second => {
            let gw = mean(
                &train
                    .iter()
                    .map(|t| (loss_gradients(&m, t).weights, size(t)))
                    .collect::<Vec<_>>(),
            );
            let ids: Vec<ParamId> = gw.keys().copied().collect();
            let w = values(&m, &ids);
            let w_prime: FlatParams<B> = gw
                .iter()
                .map(|(id, g)| {
                    let mut d = g.clone() + w[id].clone() * s.w_opt.weight_decay;
                    if let Some(b) = s.w_opt.moment(id) {
                        d = d + b;
                    }
                    (*id, w[id].clone() - d * lr)
                })
                .collect();
            let unrolled = set_values(m.clone(), &w_prime);
            let parts: Vec<_> = val.iter().map(|v| loss_gradients(&unrolled, v)).collect();
            let vector = mean(
                &parts
                    .iter()
                    .map(|g| (g.weights.clone(), g.size))
                    .collect::<Vec<_>>(),
            );
            let dval = mean(
                &parts
                    .iter()
                    .map(|g| (g.arch.clone(), g.size))
                    .collect::<Vec<_>>(),
            );
            let norm = darts::bilevel::params::global_norm(&vector.values().collect::<Vec<_>>());
            let eps = s.architect.config.fd_r / norm;
            let shifted = |sign: f64| -> FlatParams<B> {
                vector
                    .iter()
                    .map(|(id, v)| (*id, w[id].clone() + v.clone() * (sign * eps)))
                    .collect()
            };
            let (mp, mm) = (
                set_values(m.clone(), &shifted(1.0)),
                set_values(m.clone(), &shifted(-1.0)),
            );
            let diff = mean(
                &train
                    .iter()
                    .map(|t| {
                        let p = arch_gradients(&mp, t).arch;
                        let q = arch_gradients(&mm, t).arch;
                        let d = p
                            .iter()
                            .map(|(id, a)| (*id, a.clone() - q[id].clone()))
                            .collect();
                        (d, size(t))
                    })
                    .collect::<Vec<_>>(),
            );
            dval.iter()
                .map(|(id, d)| (*id, d.clone() - (diff[id].clone() / (2.0 * eps)) * lr))
                .collect()
        }
    };
    let alpha = values(&m, &arch_ids);
    let new_alpha = s.architect.adam.step(&alpha, &dalpha);
    let m = set_values(m, &new_alpha);
    let mut g = mean(
        &train
            .iter()
            .map(|t| (train_gradients(&m, t).weights, size(t)))
            .collect::<Vec<_>>(),
    );
    clip_grad_norm(&mut g, 5.0);
    let ids: Vec<ParamId> = g.keys().copied().collect();
    let w = values(&m, &ids);
    let updated = s.w_opt.step(lr, &w, &g);
    s.model = set_values(m, &updated);
}

/// Trainable weights and α (by visit position), SGD buffers and Adam moments, as f64.
#[derive(Debug, PartialEq)]
struct State {
    params: Vec<Vec<f64>>,
    sgd: Vec<Vec<f64>>,
    adam: Vec<(u64, Vec<f32>, Vec<f32>)>,
    genotype: String,
}

fn state(s: &Bilevel<B, Net>) -> State {
    let ids = all_ids(&s.model);
    let v = values(&s.model, &ids);
    let trainable: Vec<ParamId> = {
        let mut t = s.model.arch_param_ids();
        t.extend(loss_ids(&s.model));
        t
    };
    let f = |t: &Tensor<Inner, 1>| {
        t.clone()
            .into_data()
            .convert::<f64>()
            .to_vec::<f64>()
            .unwrap()
    };
    let params = ids
        .iter()
        .filter(|id| trainable.contains(id))
        .map(|id| f(&v[id]))
        .collect();
    let sgd = ids
        .iter()
        .filter_map(|id| s.w_opt.buffer(id).map(f))
        .collect();
    let adam = s
        .architect
        .adam
        .state(&ids)
        .moments
        .into_iter()
        .map(|m| (m.step, m.m, m.v))
        .collect();
    State {
        params,
        sgd,
        adam,
        genotype: format!("{:?}", s.model.genotype()),
    }
}

/// Ids of the weights (parameters that receive a gradient in training mode).
fn loss_ids(m: &Net) -> Vec<ParamId> {
    let b = batch_f64(batch(2, 8, 0.0));
    train_gradients(m, &b).weights.keys().copied().collect()
}

fn assert_close(a: &State, b: &State, what: &str) {
    assert_eq!(a.genotype, b.genotype, "{what}: genotype");
    assert_eq!(a.params.len(), b.params.len());
    assert_eq!(a.sgd.len(), b.sgd.len(), "{what}: SGD buffers");
    let mut worst = 0.0f64;
    for (x, y) in a
        .params
        .iter()
        .zip(&b.params)
        .chain(a.sgd.iter().zip(&b.sgd))
    {
        let scale = y.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
        for (p, q) in x.iter().zip(y) {
            worst = worst.max((p - q).abs() / scale);
        }
    }
    assert!(worst <= 1e-12, "{what}: relative difference {worst:e}");
    assert_eq!(a.adam.len(), b.adam.len(), "{what}: Adam moments");
    for (x, y) in a.adam.iter().zip(&b.adam) {
        assert_eq!(x.0, y.0, "{what}: Adam step");
        // The moments are kept as f32 in the record: equal after rounding.
        assert_eq!(x.1, y.1, "{what}: Adam m");
        assert_eq!(x.2, y.2, "{what}: Adam v");
    }
}

fn batches(steps: usize, n: usize) -> Vec<(ImageBatch<B>, ImageBatch<B>)> {
    (0..steps)
        .map(|k| {
            let t = batch_f64(batch(n, 8, 0.1 * k as f32));
            let v = batch_f64(batch(n, 8, 0.05 + 0.1 * k as f32));
            (t, v)
        })
        .collect()
}

/// Two peers, `steps` steps each on its shard, every replica's state afterwards.
fn two_peers(order: Order, data: &[(ImageBatch<B>, ImageBatch<B>)], epoch: bool) -> Vec<State> {
    let net = to_f64(tiny());
    let dev = Default::default();
    run_local::<Inner, _, _>(&[dev, dev], &GroupConfig::local(2), |rank, _dev, sync| {
        let mut s = Bilevel::new(net.clone(), weights(), arch(order));
        s.sync = Some(sync);
        let mine: Vec<_> = data
            .iter()
            .map(|(t, v)| (shard(t, rank, 2), shard(v, rank, 2)))
            .collect();
        if epoch {
            let (t, v): (Vec<_>, Vec<_>) = mine.into_iter().unzip();
            let st = s.run_epoch(0, t, &mut v.into_iter(), |_| {});
            assert_eq!(st.steps, data.len());
            assert!(st.aborted.is_none());
        } else {
            for (t, v) in &mine {
                s.step(t, v, weights().lr.at(0));
            }
        }
        state(&s)
    })
    .unwrap()
}

fn reference(order: Order, data: &[(ImageBatch<B>, ImageBatch<B>)]) -> State {
    let mut s = Bilevel::new(to_f64(tiny()), weights(), arch(order));
    for (t, v) in data {
        let ts = [shard(t, 0, 2), shard(t, 1, 2)];
        let vs = [shard(v, 0, 2), shard(v, 1, 2)];
        reference_step(&mut s, &ts, &vs, weights().lr.at(0));
    }
    state(&s)
}

#[test]
fn two_peers_first_order_step_equals_the_averaged_reference() {
    let data = batches(1, 8);
    let peers = two_peers(Order::First, &data, false);
    assert_eq!(peers[0], peers[1], "replicas differ");
    assert_close(&peers[0], &reference(Order::First, &data), "first order");
}

#[test]
fn two_peers_second_order_step_equals_the_averaged_reference() {
    // Unequal shards (7 = 4 + 3): the size weighting is exercised.
    let data = batches(1, 7);
    let peers = two_peers(Order::Second, &data, false);
    assert_eq!(peers[0], peers[1], "replicas differ");
    assert_close(&peers[0], &reference(Order::Second, &data), "second order");
}

#[test]
fn two_peers_epoch_equals_the_averaged_reference() {
    let data = batches(3, 8);
    let peers = two_peers(Order::First, &data, true);
    assert_eq!(peers[0], peers[1], "replicas differ");
    assert_close(&peers[0], &reference(Order::First, &data), "epoch");
}

#[test]
fn a_peer_that_never_joins_is_a_clear_error_in_bounded_time() {
    let mut cfg = GroupConfig::local(2);
    cfg.join_timeout = Duration::from_secs(2);
    let _group = darts::parallel::session();
    let t0 = Instant::now();
    // Only one of the two peers starts.
    let err = darts::parallel::Collective::<Inner>::join(0, Default::default(), &cfg).unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert!(
        matches!(err, ParallelError::JoinTimeout { world: 2, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("did not start"), "{err}");
}

#[test]
fn orchestrator_port_in_use_is_a_clear_error() {
    let held = std::net::TcpListener::bind(("0.0.0.0", 0)).unwrap();
    let port = held.local_addr().unwrap().port();
    let err = darts::parallel::start_orchestrator(port).unwrap_err();
    assert_eq!(
        err,
        ParallelError::PortInUse {
            port,
            what: "orchestrator"
        }
    );
    assert!(err.to_string().contains("already in use"), "{err}");
}

#[test]
fn shards_cover_the_batch_in_order() {
    for (n, w) in [(8, 2), (7, 2), (10, 3), (3, 3)] {
        let rs: Vec<_> = (0..w).map(|r| shard_range(n, r, w)).collect();
        assert_eq!(rs[0].start, 0);
        assert_eq!(rs[w - 1].end, n);
        for p in rs.windows(2) {
            assert_eq!(p[0].end, p[1].start);
            assert!(p[0].len() >= p[1].len() && p[0].len() - p[1].len() <= 1);
        }
    }
}
