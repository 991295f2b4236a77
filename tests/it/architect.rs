//! The bilevel architect: the unrolled (second-order) architecture gradient against a numerical
//! derivative of the exact unrolled objective, side-effect freedom of the virtual step, and
//! determinism.

use crate::common::*;
use darts::bilevel::params::{all_ids, set_values, values};
use darts::bilevel::{ArchModel, ArchitectConfig, Bilevel, CosineLr, Order, WeightConfig};
use darts::prelude::*;

type Net = SearchNetwork<B, DartsOp<B>>;

fn tiny() -> Net {
    seeded(11, tiny_unseeded)
}

fn tiny_unseeded() -> Net {
    SearchNetworkConfig {
        channels: 4,
        layers: 3,
        steps: 2,
        multiplier: 2,
        ..Default::default()
    }
    .init::<B, _, _>(&DartsSpace::default(), Softmax, &Default::default())
    .unwrap()
}

fn weights(epochs: usize) -> WeightConfig {
    WeightConfig {
        lr: CosineLr {
            max: 0.1,
            min: 0.001,
            epochs,
        },
        momentum: 0.9,
        weight_decay: 3e-4,
        grad_clip: Some(5.0),
    }
}

fn second() -> ArchitectConfig {
    ArchitectConfig {
        order: Order::Second,
        ..Default::default()
    }
}

/// Every float parameter (weights, α, BN running statistics) as raw f64 bits.
fn snapshot(m: &Net) -> Vec<Vec<u64>> {
    let ids = all_ids(m);
    let v = values(m, &ids);
    ids.iter()
        .map(|id| {
            v[id]
                .clone()
                .into_data()
                .convert::<f64>()
                .to_vec::<f64>()
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// A smooth supernet, written only through the public traits (op set, mixed op, ArchModel).
//
// Why not the CNN supernet for the exactness check: its ops are piecewise linear (ReLU,
// max-pool), so ∇w L_train(w, α) jumps wherever an activation pattern flips. The exact unrolled
// objective then has jumps in α, and the finite-difference Hessian-vector product (the
// reference's too) measured on the tiny CNN supernet changes by 10× when ε moves from 1e-2 to
// 1e-4 (‖HVP‖ 3.3 → 34): it is not the derivative of anything continuous there. On a smooth
// model both are well defined, so the architect's math can be checked to tight tolerances; the
// architect is generic, so it is the same code that drives the CNN supernet.
// ---------------------------------------------------------------------------------------------

use burn::module::{Module, Param, ParamId};
use burn::tensor::activation::{log_softmax, sigmoid, tanh};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Int, Tensor};
use darts::bilevel::BatchOutput;
use darts::mixed_op::{CandidateOp, EdgeSpec, MixedOp, OpSet};

#[derive(Module, Clone, Debug)]
pub enum SmoothOp {
    Zero(u8),
    Tanh(u8),
    Sigmoid(u8),
    Identity(u8),
}

impl<B: Backend> CandidateOp<B, 2> for SmoothOp {
    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        match self {
            SmoothOp::Zero(_) => x.zeros_like(),
            SmoothOp::Tanh(_) => tanh(x),
            SmoothOp::Sigmoid(_) => sigmoid(x),
            SmoothOp::Identity(_) => x,
        }
    }
    fn is_zero(&self) -> bool {
        matches!(self, SmoothOp::Zero(_))
    }
}

#[derive(Clone, Debug)]
pub struct SmoothSpace;

impl<B: Backend> OpSet<B, 2> for SmoothSpace {
    type Op = SmoothOp;
    fn names(&self) -> Vec<String> {
        ["none", "tanh", "sigmoid", "identity"]
            .map(String::from)
            .to_vec()
    }
    fn none_index(&self) -> Option<usize> {
        Some(0)
    }
    fn build(&self, index: usize, _edge: &EdgeSpec, _device: &B::Device) -> SmoothOp {
        [
            SmoothOp::Zero(0),
            SmoothOp::Tanh(0),
            SmoothOp::Sigmoid(0),
            SmoothOp::Identity(0),
        ][index]
            .clone()
    }
}

/// s0 = tanh(x W0); node i = Σ_j mixed_ij(s_j W_i); logits = mean(nodes) H.
#[derive(Module, Debug)]
pub struct SmoothNet<B: Backend> {
    w0: Param<Tensor<B, 2>>,
    w: Vec<Param<Tensor<B, 2>>>,
    edges: Vec<MixedOp<B, SmoothOp>>,
    head: Param<Tensor<B, 2>>,
    alpha: Param<Tensor<B, 2>>,
}

const STEPS: usize = 3;

impl SmoothNet<B> {
    fn new(d: usize, classes: usize) -> Self {
        let dev = Default::default();
        let p = |r, c, s: f64| {
            Param::from_tensor(Tensor::<B, 2>::random(
                [r, c],
                Distribution::Normal(0.0, s),
                &dev,
            ))
        };
        let edge = EdgeSpec {
            channels: d,
            stride: 1,
        };
        let n_edges = STEPS * (STEPS + 1) / 2;
        Self {
            w0: p(d, d, 0.5),
            w: (0..STEPS).map(|_| p(d, d, 0.5)).collect(),
            edges: (0..n_edges)
                .map(|_| MixedOp::new(&SmoothSpace, &edge, &dev))
                .collect(),
            head: p(d, classes, 0.5),
            alpha: p(n_edges, 4, 0.5),
        }
    }
}

impl ArchModel<B> for SmoothNet<B> {
    type Batch = (Tensor<B, 2>, Tensor<B, 1, Int>);

    fn forward_batch(&self, (x, y): &Self::Batch) -> BatchOutput<B> {
        let n = x.dims()[0];
        let wts = burn::tensor::activation::softmax(self.alpha.val(), 1);
        let mut states = vec![tanh(x.clone().matmul(self.w0.val()))];
        let mut e = 0;
        for i in 0..STEPS {
            let mut acc: Option<Tensor<B, 2>> = None;
            for sj in &states {
                let wr = wts.clone().slice([e..e + 1, 0..4]).reshape([4]);
                let h = self.edges[e].forward(sj.clone().matmul(self.w[i].val()), wr);
                acc = Some(match acc {
                    Some(a) => a + h,
                    None => h,
                });
                e += 1;
            }
            states.push(acc.unwrap());
        }
        let mean = Tensor::stack::<3>(states[1..].to_vec(), 0)
            .mean_dim(0)
            .reshape([n, self.w0.dims()[0]]);
        let logits = mean.matmul(self.head.val());
        let loss = log_softmax(logits, 1)
            .gather(1, y.clone().reshape([n, 1]))
            .mean()
            .neg();
        BatchOutput::new(loss, None, n)
    }

    fn arch_param_ids(&self) -> Vec<ParamId> {
        vec![self.alpha.id]
    }
}

fn smooth_batch(n: usize, d: usize, shift: f64) -> (Tensor<B, 2>, Tensor<B, 1, Int>) {
    let dev = Default::default();
    let x = seeded(13 + (shift * 10.0) as u64, || {
        Tensor::<B, 2>::random([n, d], Distribution::Normal(shift, 1.0), &dev)
    });
    let x = Tensor::from_inner(x.inner().cast(burn::tensor::DType::F64));
    let y: Vec<i64> = (0..n as i64).map(|i| i % 3).collect();
    (
        x,
        Tensor::from_data(burn::tensor::TensorData::new(y, [n]), &dev),
    )
}

/// The unrolled gradient (virtual step + finite-difference Hessian-vector product) against
/// central differences of the exact objective α ↦ L_val(w − ξ(m·v + ∇w L_train(w, α) + wd·w), α),
/// in f64, after one real step so the momentum term is present.
///
/// Tolerance: the finite-difference HVP (ε = 0.01/‖∇w'L_val‖) has error O(ε²·‖∇³L‖), relative
/// ~1e-4 here; the numerical derivative (h = 1e-5, f64) is exact to ~1e-9. We require
/// agreement to 1e-3·‖dα‖, and require the first-order gradient to be off from the unrolled one
/// by more than 20× that (ξ = 0.5 makes the second-order term large enough to see).
#[test]
fn unrolled_gradient_matches_numerical_derivative_of_unrolled_objective() {
    let xi = 0.5;
    let net = seeded(12, || SmoothNet::new(6, 3));
    let mut search = Bilevel::new(to_f64(net), weights(10), second());
    let train = smooth_batch(16, 6, 0.0);
    let val = smooth_batch(16, 6, 0.5);
    search.step(&train, &val, xi);
    let a0 = alpha_vec(&search.model);
    let (g2, g1) = arch_gradients(&search, &train, &val, xi);
    let objective = unrolled_objective(&search, &train, &val, xi);
    let directional = |d: &[f64]| central_difference(&objective, &a0, d, 1e-5);
    let diff: Vec<f64> = g2.iter().zip(&g1).map(|(a, b)| a - b).collect();
    let tol = 1e-3 * norm(&g2);
    println!(
        "|g2| {:.3e}  |g2 - g1| {:.3e}  tol {:.3e}",
        norm(&g2),
        norm(&diff),
        tol
    );
    assert!(
        norm(&diff) > 20.0 * tol,
        "first and second order are not distinguishable here"
    );
    let mut dirs = vec![unit(g2.clone()), unit(diff.clone()), unit(g1.clone())];
    for k in 0..3 {
        dirs.push(unit(
            (0..a0.len())
                .map(|i| (((i + 1) * (7919 + k * 131) % 1000) as f64 / 500.0) - 1.0)
                .collect(),
        ));
    }
    // Every coordinate, too (18 of them).
    dirs.extend(coordinates(a0.len()));
    for d in &dirs {
        let num = directional(d);
        let ours = dot(&g2, d);
        assert!(
            (num - ours).abs() < tol,
            "unrolled {ours} vs numerical {num} (tol {tol})"
        );
    }
    // Along g2 − g1 the first-order gradient is off by ‖g2 − g1‖ ≫ tol.
    let d = &dirs[1];
    println!(
        "along g2-g1: numerical {:.6} unrolled {:.6} first-order {:.6}",
        directional(d),
        dot(&g2, d),
        dot(&g1, d)
    );
    assert!((directional(d) - dot(&g1, d)).abs() > 10.0 * tol);
}

/// On the real CNN supernet the second-order step runs, yields finite gradients of the right
/// shape, and its validation term ∇α L_val(w', α) is the exact gradient at w' (checked by a
/// directional finite difference with w' held fixed).
#[test]
fn cnn_supernet_unrolled_step_is_finite_and_its_validation_term_exact() {
    let xi = 0.05;
    let mut search = Bilevel::new(to_f64(tiny()), weights(10), second());
    let train = batch_f64(batch(8, 8, 0.0));
    let val = batch_f64(batch(8, 8, 0.3));
    let stats = search.step(&train, &val, xi);
    assert!(stats.eps.unwrap() > 0.0 && stats.val_loss.is_finite());
    let model = search.model.clone();
    let ids = model.arch_param_ids();
    let g2 = flat(
        &search
            .architect
            .gradient(&model, &search.w_opt, &train, &val, xi)
            .dalpha,
        &ids,
    );
    assert_eq!(g2.len(), 2 * 5 * 8);
    assert!(g2.iter().all(|x| x.is_finite()));
    let wp = search
        .architect
        .virtual_step(&model, &search.w_opt, &train, xi);
    let unrolled = set_values(model.clone(), &wp);
    let gv = darts::bilevel::architect::loss_gradients(&unrolled, &val).arch;
    let gv = flat(&gv, &ids);
    let a0 = alpha_vec(&unrolled);
    let d: Vec<f64> = gv.iter().map(|x| x / norm(&gv)).collect();
    let h = 1e-5;
    let f = |s: f64| {
        let a: Vec<f64> = a0.iter().zip(&d).map(|(a, d)| a + s * h * d).collect();
        scalar(with_alpha(unrolled.clone(), &a).loss(&val))
    };
    let num = (f(1.0) - f(-1.0)) / (2.0 * h);
    assert!(
        (num - norm(&gv)).abs() < 1e-6 * norm(&gv),
        "{num} vs {}",
        norm(&gv)
    );
}

#[test]
fn virtual_step_moves_weights_and_leaves_real_state_bit_identical() {
    let mut search = Bilevel::new(to_f64(tiny()), weights(10), second());
    let train = batch_f64(batch(8, 8, 0.0));
    let val = batch_f64(batch(8, 8, 0.3));
    // One real step: momentum buffers and BN running statistics become non-trivial.
    search.step(&train, &val, 0.05);
    let before = snapshot(&search.model);
    // The momentum buffers, exactly (f64), by parameter position.
    let ids = darts::bilevel::params::all_ids(&search.model);
    let momentum = |opt: &darts::bilevel::Sgd<_>| -> Vec<(usize, Vec<f64>)> {
        ids.iter()
            .enumerate()
            .filter_map(|(k, id)| opt.buffer(id).map(|t| (k, darts::ops::to_f64s(t))))
            .collect()
    };
    let buffers = momentum(&search.w_opt);
    assert!(!buffers.is_empty());

    let wp = search
        .architect
        .virtual_step(&search.model, &search.w_opt, &train, 0.05);
    let w = values(&search.model, &wp.keys().copied().collect::<Vec<_>>());
    let moved: f64 = wp
        .iter()
        .map(|(id, t)| {
            let d: Vec<f64> = (t.clone() - w[id].clone())
                .abs()
                .into_data()
                .convert::<f64>()
                .to_vec()
                .unwrap();
            d.iter().sum::<f64>()
        })
        .sum();
    assert!(
        moved > 1e-6,
        "w' = w: the virtual step did not move the weights"
    );
    let _ = search
        .architect
        .gradient(&search.model, &search.w_opt, &train, &val, 0.05);

    assert_eq!(
        snapshot(&search.model),
        before,
        "real weights/alpha/BN statistics changed"
    );
    let after = momentum(&search.w_opt);
    assert_eq!(after, buffers, "optimizer state changed");
    // BN running statistics did move in the real step (so the check above is not vacuous).
    let fresh = snapshot(&to_f64(tiny()));
    assert_eq!(fresh.len(), before.len());
}

#[test]
fn same_start_same_data_gives_identical_alphas() {
    let start = tiny();
    let train: Vec<_> = (0..3).map(|i| batch(8, 8, i as f32 * 0.1)).collect();
    let val: Vec<_> = (0..3).map(|i| batch(8, 8, 1.0 + i as f32 * 0.1)).collect();
    let run = |order: Order| {
        let mut s = Bilevel::new(
            start.clone(),
            weights(2),
            ArchitectConfig {
                order,
                ..Default::default()
            },
        );
        for e in 0..2 {
            s.run_epoch(e, train.clone(), &mut val.clone().into_iter(), |_| {});
        }
        alpha_vec(&s.model)
    };
    for order in [Order::First, Order::Second] {
        let (a, b) = (run(order), run(order));
        assert_eq!(a, b, "{order:?}");
        assert_ne!(a, alpha_vec(&start), "alphas did not move");
    }
}

/// Bits of every BatchNorm running statistic (the parameters that take no gradient).
fn running_stats(m: &Net) -> Vec<Vec<u64>> {
    struct Stats(Vec<Vec<u64>>);
    impl burn::module::ModuleVisitor<B> for Stats {
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<B, D>>) {
            let t = p.val();
            if !t.is_require_grad() {
                let v = t.into_data().convert::<f64>().to_vec::<f64>().unwrap();
                self.0.push(v.iter().map(|x| x.to_bits()).collect());
            }
        }
    }
    let mut s = Stats(Vec::new());
    m.visit(&mut s);
    assert!(
        !s.0.is_empty(),
        "the supernet has BatchNorm running statistics"
    );
    s.0
}

/// `ArchBnStats::ArchitectToo` (the reference, default): the architecture step's training-mode
/// passes on the real model update the running statistics in the reference's order — first
/// order the validation pass; second order the virtual step's training pass at `w` and the two
/// finite-difference passes at `w ± ε·u`, not the unrolled model's validation pass.
/// `WeightStepOnly` leaves them to the weight step.
#[test]
fn architecture_passes_update_bn_running_stats_as_the_reference() {
    use darts::bilevel::architect::loss_gradients;
    use darts::bilevel::params::global_norm;
    use darts::bilevel::{ArchBnStats, Architect, Sgd};
    use darts::ops::record_bn_updates;
    let model = to_f64(tiny());
    let train = batch_f64(batch(8, 8, 0.0));
    let val = batch_f64(batch(8, 8, 0.3));
    let sgd = Sgd::new(0.9, 3e-4);
    let xi = 0.05;
    let before = running_stats(&model);

    // First order: one update, from the validation batch at w.
    let (_, upd) = record_bn_updates(|| loss_gradients(&model, &val));
    let expected = running_stats(&upd.apply(model.clone()));
    assert_ne!(expected, before);
    let (got, _) =
        Architect::<B>::new(ArchitectConfig::default()).step(model.clone(), &sgd, &train, &val, xi);
    assert_eq!(running_stats(&got), expected, "first order, architect too");
    let only = ArchitectConfig {
        bn_stats: ArchBnStats::WeightStepOnly,
        ..Default::default()
    };
    let (got, _) = Architect::<B>::new(only).step(model.clone(), &sgd, &train, &val, xi);
    assert_eq!(running_stats(&got), before, "first order, weight step only");

    // Second order: three chained updates from the training batch, at w, w + εu and w − εu.
    let arch = Architect::<B>::new(second());
    let w_prime = arch.virtual_step(&model, &sgd, &train, xi);
    let vector = loss_gradients(&set_values(model.clone(), &w_prime), &val).weights;
    let eps = 0.01 / global_norm(&vector.values().collect::<Vec<_>>());
    let ids: Vec<_> = vector.keys().copied().collect();
    let w = values(&model, &ids);
    let shifted = |sign: f64| {
        let moved = ids
            .iter()
            .map(|id| (*id, w[id].clone() + vector[id].clone() * (sign * eps)))
            .collect();
        set_values(model.clone(), &moved)
    };
    let (_, upd) = record_bn_updates(|| {
        loss_gradients(&model, &train);
        loss_gradients(&shifted(1.0), &train);
        loss_gradients(&shifted(-1.0), &train);
    });
    let expected2 = running_stats(&upd.apply(model.clone()));
    let mut arch = Architect::<B>::new(second());
    let (got, _) = arch.step(model.clone(), &sgd, &train, &val, xi);
    assert_eq!(
        running_stats(&got),
        expected2,
        "second order, architect too"
    );
    let only2 = ArchitectConfig {
        bn_stats: ArchBnStats::WeightStepOnly,
        ..second()
    };
    let (got, _) = Architect::<B>::new(only2).step(model, &sgd, &train, &val, xi);
    assert_eq!(
        running_stats(&got),
        before,
        "second order, weight step only"
    );
}
