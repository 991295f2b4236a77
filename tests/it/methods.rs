//! The successor methods (`darts::methods`): exact parameter counts, their equations against
//! hand-computed values, the gradients they change against central differences, their
//! schedules, their derivation rules, and a tiny end-to-end search for each on the CIFAR-10
//! sample shipped in `data/cifar10-sample` (valid genotype, resume equal to an uninterrupted
//! run).

use crate::common::*;
use burn::backend::Flex;
use burn::module::Param;
use burn::tensor::{Distribution, Tensor, TensorData};
use darts::bilevel::ArchModel;
use darts::cell::cnn::supernet::{edge_softmax, AlphaInit};
use darts::cifar::{run_search, RunOptions, SearchConfig};
use darts::methods::{Method, MethodConfig};
use darts::mixed_op::{channel_shuffle, AnyRelaxation, ArchRegularizer, MixedOp};
use darts::prelude::*;
use std::path::{Path, PathBuf};

type Net<Bk> = SearchNetwork<Bk, DartsOp<Bk>, AnyRelaxation>;

/// Built under the test-wide seed lock ([`seeded`]), so that its draws never land inside a
/// search that another test thread runs seeded at the same time.
fn supernet_with(cfg: SearchNetworkConfig) -> Net<Flex> {
    seeded(1, || {
        cfg.init::<Flex, _, _>(
            &DartsSpace::default(),
            AnyRelaxation::Softmax,
            &Default::default(),
        )
        .unwrap()
    })
}

fn values_of(t: Tensor<Flex, 4>) -> Vec<f64> {
    t.into_data().convert::<f64>().to_vec::<f64>().unwrap()
}

/// The largest absolute difference between two tensors' values.
fn max_abs_diff(a: Tensor<Flex, 4>, b: Tensor<Flex, 4>) -> f64 {
    values_of(a)
        .iter()
        .zip(values_of(b))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

// ------------------------------------------------------------------ parameter counts

#[test]
fn pc_darts_supernet_has_the_reference_weight_count() {
    let net = supernet_with(SearchNetworkConfig {
        partial_channels: 4,
        edge_normalization: true,
        ..Default::default()
    });
    assert_eq!(net.num_weights(), 299_578);
    // β: one per edge and cell type, architecture parameters like α.
    assert_eq!(net.betas_normal.as_ref().unwrap().dims(), [14]);
    assert_eq!(net.betas_reduce.as_ref().unwrap().dims(), [14]);
    let all = darts::ops::trainable_params(&net, &[]);
    assert_eq!(all - net.num_weights(), 2 * 14 * 8 + 2 * 14);
    assert_eq!(net.alpha_ids().len(), 4);
}

#[test]
fn darts_minus_supernet_has_the_reference_weight_count() {
    let net = supernet_with(SearchNetworkConfig {
        auxiliary_skip: true,
        ..Default::default()
    });
    // 1,930,618 + a non-affine FactorizedReduce(C, C) on each of the 8 reducing edges of the
    // two reduction cells (C = 32 and 64: 8·(32² + 64²) = 40,960).
    assert_eq!(net.num_weights(), 1_971_578);
}

#[test]
fn partial_channels_must_divide_the_channels() {
    let e = SearchNetworkConfig {
        channels: 6,
        layers: 3,
        partial_channels: 4,
        ..Default::default()
    }
    .init::<Flex, _, _>(
        &DartsSpace::default(),
        AnyRelaxation::Softmax,
        &Default::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("partial_channels = 4"), "{e}");
}

// ------------------------------------------------------------------ PC-DARTS equations

#[test]
fn channel_shuffle_moves_channel_g_i_to_i_g() {
    let dev = Default::default();
    let x = Tensor::<Flex, 4>::from_data(
        TensorData::new((0..8).map(|v| v as f32).collect::<Vec<_>>(), [1, 8, 1, 1]),
        &dev,
    );
    // C = 8, K = 4 groups of 2: output channel i·4 + g is input channel g·2 + i.
    assert_eq!(
        values_of(channel_shuffle(x, 4)),
        vec![0.0, 2.0, 4.0, 6.0, 1.0, 3.0, 5.0, 7.0]
    );
}

/// The partial-channel mixed op equals its definition written out: the candidates on the first
/// C/K channels, the rest passed through (max-pooled 2×2 on a reducing edge), concatenated,
/// shuffled.
#[test]
fn partial_channel_mixed_op_matches_its_definition() {
    let dev = Default::default();
    for stride in [1, 2] {
        let edge = EdgeSpec {
            channels: 8,
            stride,
        };
        let m = seeded(11, || {
            MixedOp::<Flex, DartsOp<Flex>>::new_partial(&DartsSpace::default(), &edge, 4, &dev)
        });
        let x = seeded(12, || {
            Tensor::<Flex, 4>::random([2, 8, 6, 6], Distribution::Normal(0.0, 1.0), &dev)
        });
        let w = Tensor::<Flex, 1>::from_floats([0.1, 0.2, 0.05, 0.15, 0.1, 0.2, 0.1, 0.1], &dev);
        let got = m.forward(x.clone(), w.clone());
        let part = x.clone().slice([0..2, 0..2]);
        let mut mixed: Option<Tensor<Flex, 4>> = None;
        let wv: Vec<f32> = w.into_data().to_vec().unwrap();
        for (k, op) in m.ops.iter().enumerate() {
            let y = op.forward(part.clone()) * wv[k];
            mixed = Some(match mixed {
                Some(a) => a + y,
                None => y,
            });
        }
        let mixed = mixed.unwrap();
        let rest = x.slice([0..2, 2..8]);
        let rest = if stride == 2 {
            burn::tensor::module::max_pool2d(rest, [2, 2], [2, 2], [0, 0], [1, 1], false)
        } else {
            rest
        };
        let cat = Tensor::cat(vec![mixed, rest], 1);
        let [n, c, h, ww] = cat.dims();
        let want = cat
            .reshape([n, 4, c / 4, h, ww])
            .swap_dims(1, 2)
            .reshape([n, c, h, ww]);
        assert_eq!(got.dims(), want.dims());
        let err = max_abs_diff(got, want);
        assert!(err < 1e-5, "stride {stride}: max error {err}");
    }
}

#[test]
fn edge_normalisation_is_a_softmax_per_node() {
    let dev = Default::default();
    // Two nodes: edges (0, 1) of node 0, edges (2, 3, 4) of node 1.
    let beta = Tensor::<Flex, 1>::from_floats([0.0, 1.0, 0.0, 0.0, 2.0], &dev);
    let w: Vec<f64> = edge_softmax(beta, 2)
        .into_data()
        .convert::<f64>()
        .to_vec()
        .unwrap();
    let e = std::f64::consts::E;
    let want = [
        1.0 / (1.0 + e),
        e / (1.0 + e),
        1.0 / (2.0 + e * e),
        1.0 / (2.0 + e * e),
        e * e / (2.0 + e * e),
    ];
    for (a, b) in w.iter().zip(want) {
        assert!((a - b).abs() < 1e-6, "{w:?} vs {want:?}");
    }
}

/// Sets α and β of a (2-node) supernet by hand.
fn with_arch<Bk: burn::tensor::backend::Backend>(
    mut net: Net<Bk>,
    alpha: [[f32; 8]; 5],
    beta: [f32; 5],
) -> Net<Bk> {
    let dev = net.alphas_normal.val().device();
    let a = Tensor::<Bk, 2>::from_data(
        TensorData::new(alpha.iter().flatten().copied().collect::<Vec<_>>(), [5, 8]),
        &dev,
    );
    let b = Tensor::<Bk, 1>::from_data(TensorData::new(beta.to_vec(), [5]), &dev);
    net.alphas_normal = Param::from_tensor(a.clone());
    net.alphas_reduce = Param::from_tensor(a);
    net.betas_normal = Some(Param::from_tensor(b.clone()));
    net.betas_reduce = Some(Param::from_tensor(b));
    net
}

/// β decides the edges, α the op: an edge with a strong op but a small β̂ loses to an edge with
/// a weaker op and a large β̂ (reference `model_search.py: genotype`, W = softmax(α)·β̂).
#[test]
fn pc_darts_derivation_weights_ops_by_edge() {
    let net = supernet_with(SearchNetworkConfig {
        channels: 8,
        layers: 3,
        steps: 2,
        multiplier: 2,
        partial_channels: 4,
        edge_normalization: true,
        ..Default::default()
    });
    // Op columns: none, max, avg, skip, sep3, sep5, dil3, dil5.
    let mut alpha = [[0.0f32; 8]; 5];
    alpha[0][4] = 3.0; // node 0, input 0: sep_conv_3x3, strong
    alpha[1][5] = 1.0; // node 0, input 1: sep_conv_5x5, weaker
    alpha[2][6] = 3.0; // node 1, input 0: dil_conv_3x3, strong
    alpha[3][3] = 1.0; // node 1, input 1: skip_connect
    alpha[4][7] = 0.5; // node 1, input 2: dil_conv_5x5, weakest
                       // Without edge weights (β = 0: uniform β̂) node 1 keeps inputs 0 and 1.
    let plain = with_arch(net.clone(), alpha, [0.0; 5]).genotype();
    let inputs: Vec<usize> = plain.normal.iter().map(|g| g.input).collect();
    assert_eq!(inputs, vec![0, 1, 0, 1]);
    // β favours input 2 of node 1 strongly: it now beats input 0's stronger op.
    let g = with_arch(net, alpha, [0.0, 0.0, -4.0, 0.0, 4.0]).genotype();
    let node1: Vec<(&str, usize)> = g.normal[2..]
        .iter()
        .map(|g| (g.op.as_str(), g.input))
        .collect();
    assert_eq!(node1, vec![("dil_conv_5x5", 2), ("skip_connect", 1)]);
    // Node 0 is unchanged (equal β): its ops come from α alone.
    assert_eq!(g.normal[0].op, "sep_conv_3x3");
    assert_eq!(g.normal[1].op, "sep_conv_5x5");
}

/// ∂L/∂(α, β) of a PC-DARTS supernet by autodiff against central differences (f64): edge
/// normalisation and the partial-channel mixed op are differentiated correctly.
#[test]
fn pc_darts_arch_gradient_matches_finite_differences() {
    let dev = Default::default();
    let net = seeded(23, || {
        SearchNetworkConfig {
            channels: 8,
            layers: 3,
            steps: 2,
            multiplier: 2,
            partial_channels: 4,
            edge_normalization: true,
            ..Default::default()
        }
        .init::<B, _, _>(&DartsSpace::default(), AnyRelaxation::Softmax, &dev)
        .unwrap()
    });
    let n = alpha_vec(&net).len();
    assert_eq!(n, 2 * 5 * 8 + 2 * 5);
    let a0: Vec<f64> = (0..n).map(|i| ((i * 37 % 17) as f64 - 8.0) * 0.1).collect();
    let net = to_f64(with_alpha(net, &a0));
    let b = batch_f64(batch(4, 8, 0.0));
    check_gradient(&net, &b, &a0);
}

fn check_gradient<M: ArchModel<B>>(net: &M, b: &M::Batch, a0: &[f64]) {
    let ga = darts::bilevel::architect::loss_gradients(net, b).arch;
    let g = flat(&ga, &net.arch_param_ids());
    let f = |a: &[f64]| scalar(with_alpha(net.clone(), a).loss(b));
    let mut dirs: Vec<Vec<f64>> = vec![unit(g.clone())];
    for k in 0..2 {
        let r: Vec<f64> = (0..g.len())
            .map(|i| (((i * 7919 + k * 104729) % 1000) as f64 / 500.0) - 1.0)
            .collect();
        dirs.push(unit(r));
    }
    for d in dirs {
        let fd = central_difference(&f, a0, &d, 1e-5);
        let ad = dot(&g, &d);
        let tol = 1e-6 * norm(&g);
        assert!(
            (fd - ad).abs() < tol,
            "fd {fd} vs autodiff {ad} (tol {tol})"
        );
    }
}

// ------------------------------------------------------------------ regularisers

#[test]
fn beta_decay_and_zero_one_losses_match_hand_values() {
    let dev = Default::default();
    let a = Tensor::<Flex, 2>::from_floats([[0.0, 1.0], [2.0, -1.0]], &dev);
    let b = Tensor::<Flex, 2>::from_floats([[0.5, 0.5]], &dev);
    let v = |r: ArchRegularizer| -> f64 {
        r.loss(&[a.clone(), b.clone()])
            .unwrap()
            .into_data()
            .convert::<f64>()
            .to_vec::<f64>()
            .unwrap()[0]
    };
    let lse = |x: f64, y: f64| (x.exp() + y.exp()).ln();
    let beta = (lse(0.0, 1.0) + lse(2.0, -1.0) + lse(0.5, 0.5)) / 3.0;
    let bd = |l: f64| ArchRegularizer {
        beta_decay: l,
        ..Default::default()
    };
    let zo = |w: f64| ArchRegularizer {
        zero_one: w,
        ..Default::default()
    };
    assert!((v(bd(2.0)) - 2.0 * beta).abs() < 1e-6);
    let s = |x: f64| 1.0 / (1.0 + (-x).exp()) - 0.5;
    let zero_one = -10.0
        * [0.0, 1.0, 2.0, -1.0, 0.5, 0.5]
            .map(|x| s(x) * s(x))
            .iter()
            .sum::<f64>()
        / 6.0;
    assert!((v(zo(10.0)) - zero_one).abs() < 1e-6);
    // Both terms on: their sum.
    let both = ArchRegularizer {
        zero_one: 10.0,
        beta_decay: 2.0,
        ..Default::default()
    };
    assert!((v(both) - zero_one - 2.0 * beta).abs() < 1e-6);
    assert!(ArchRegularizer::default()
        .loss(std::slice::from_ref(&a))
        .is_none());
    assert!(bd(0.0).loss(&[a]).is_none());
}

/// The regularised architecture objective (Beta-Decay, and FairDARTS's zero-one loss on a
/// sigmoid supernet) differentiated by autodiff against central differences (f64).
#[test]
fn regularised_arch_gradients_match_finite_differences() {
    let dev = Default::default();
    for (reg, relax) in [
        (
            ArchRegularizer {
                beta_decay: 7.5,
                ..Default::default()
            },
            AnyRelaxation::Softmax,
        ),
        (
            ArchRegularizer {
                zero_one: 10.0,
                ..Default::default()
            },
            AnyRelaxation::Sigmoid,
        ),
    ] {
        let mut net = seeded(29, || {
            SearchNetworkConfig {
                channels: 4,
                layers: 3,
                steps: 2,
                multiplier: 2,
                ..Default::default()
            }
            .init::<B, _, _>(&DartsSpace::default(), relax, &dev)
            .unwrap()
        });
        net.regularizer = reg;
        let n = alpha_vec(&net).len();
        let a0: Vec<f64> = (0..n)
            .map(|i| ((i * 41 % 13) as f64 - 6.0) * 0.15)
            .collect();
        let net = to_f64(with_alpha(net, &a0));
        let b = batch_f64(batch(4, 8, 0.0));
        // The regulariser is in the objective: the loss differs from the cross-entropy.
        let out = net.forward_batch(&b);
        let (l, ce) = (scalar(out.loss), scalar(out.raw_loss.unwrap()));
        assert!((l - ce).abs() > 1e-3, "{reg:?}: {l} vs {ce}");
        check_gradient(&net, &b, &a0);
    }
}

// ------------------------------------------------------------------ DARTS−

/// The auxiliary skip adds `β · skip(x)` to every edge: with the candidates' weights all zero
/// (α = −∞ except `none`) a stride-1 cell is a sum of scaled identities.
#[test]
fn darts_minus_skip_is_scaled_identity_on_normal_edges() {
    let dev = Default::default();
    let cell = seeded(31, || {
        darts::cell::cnn::supernet::SearchCell::<Flex, DartsOp<Flex>>::with_options(
            &DartsSpace::default(),
            2,
            2,
            darts::cell::CellShape {
                c_prev_prev: 4,
                c_prev: 4,
                c: 4,
                reduction: false,
                reduction_prev: false,
            },
            1,
            true,
            &dev,
        )
    });
    let s0 = seeded(32, || {
        Tensor::<Flex, 4>::random([2, 4, 5, 5], Distribution::Default, &dev)
    });
    let s1 = seeded(33, || {
        Tensor::<Flex, 4>::random([2, 4, 5, 5], Distribution::Default, &dev)
    });
    // Only `none` weighted: every mixed op outputs 0.
    let none = Tensor::<Flex, 1>::from_floats([1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], &dev);
    let w = darts::cell::cnn::supernet::CellWeights {
        ops: vec![none; 5],
        edges: None,
        aux_scale: 0.5,
        index: None,
    };
    let out = cell.forward_with(s0.clone(), s1.clone(), &w);
    // Node 0 = 0.5·(h0 + h1); node 1 = 0.5·(h0 + h1 + node0) = 0.75·(h0 + h1).
    let h0 = cell.preprocess0.forward(s0);
    let h1 = cell.preprocess1.forward(s1);
    let sum = h0 + h1;
    let want = Tensor::cat(vec![sum.clone() * 0.5, sum * 0.75], 1);
    let err = max_abs_diff(out, want);
    assert!(err < 1e-5, "max error {err}");
}

// ------------------------------------------------------------------ schedules

#[test]
fn schedules_take_the_reference_values() {
    let pc = Method::PcDarts.config();
    assert!(!pc.schedule(0, 50).arch_updates);
    assert!(!pc.schedule(14, 50).arch_updates);
    assert!(pc.schedule(15, 50).arch_updates);
    let minus = Method::DartsMinus.config();
    for (e, beta) in [(0, 1.0), (25, 0.5), (49, 0.02)] {
        let got = minus.schedule(e, 50).aux_skip_scale.unwrap();
        assert!((got - beta).abs() < 1e-12, "epoch {e}: {got}");
    }
    let bd = Method::BetaDarts.config();
    for (e, lambda) in [(0, 0.0), (10, 5.0), (49, 24.5)] {
        assert_eq!(bd.schedule(e, 50).beta_decay_lambda, Some(lambda));
    }
    let g = Method::Gdas.config();
    assert_eq!(g.schedule(0, 250).gumbel_tau, Some(10.0));
    assert!((g.schedule(249, 250).gumbel_tau.unwrap() - 0.1).abs() < 1e-12);
    assert!(g.weights_first);
    let rs = Method::SdartsRs.config();
    assert_eq!(rs.schedule(0, 50).perturbation_epsilon, Some(0.03));
    assert!((rs.schedule(25, 50).perturbation_epsilon.unwrap() - 0.165).abs() < 1e-12);
    let d = MethodConfig::default();
    let s = d.schedule(3, 50);
    assert!(s.arch_updates && s.aux_skip_scale.is_none() && s.beta_decay_lambda.is_none());
    assert_eq!("pc-darts".parse::<Method>().unwrap(), Method::PcDarts);
    assert!("gdas2".parse::<Method>().is_err());
    let h = Method::PcDarts.hyper();
    assert_eq!(
        (h.batch_size, h.lr, h.lr_min, h.arch_lr),
        (256, 0.1, 0.0, 6e-4)
    );
}

#[test]
fn zero_alpha_init_starts_every_weight_at_one_half_under_sigmoid() {
    let net = seeded(2, || {
        SearchNetworkConfig {
            channels: 4,
            layers: 3,
            alpha_init: AlphaInit::Zeros,
            ..Default::default()
        }
        .init::<Flex, _, _>(
            &DartsSpace::default(),
            AnyRelaxation::Sigmoid,
            &Default::default(),
        )
        .unwrap()
    });
    let (n, r) = net.arch_weights();
    assert!(n.iter().chain(&r).flatten().all(|w| *w == 0.5));
}

// ------------------------------------------------------------------ FairDARTS

/// A FairDARTS supernet with hand-set α derives a genotype whose nodes have 0, 1 or 2 inputs
/// (sigmoid ≥ 0.85), and the derived network builds from it: absent nodes are left out of the
/// concat (the reference's `DCOCell`), so the cell's output has one block of C channels per
/// present node.
#[test]
fn fair_darts_derives_sparse_cells_that_build() {
    let m = Method::FairDarts.config();
    let mut net = seeded(3, || {
        SearchNetworkConfig {
            channels: 4,
            layers: 3,
            steps: 3,
            multiplier: 3,
            alpha_init: m.alpha_init,
            ..Default::default()
        }
        .init::<Flex, _, _>(&m.space(), m.relaxation, &Default::default())
        .unwrap()
    });
    net.derivation = m.derivation;
    assert_eq!(net.op_names.len(), 7);
    assert_eq!(net.none_index, None);
    // 9 edges (2 + 3 + 4). Columns: max, avg, skip, sep3, sep5, dil3, dil5.
    let mut a = vec![[-3.0f32; 7]; 9];
    a[0][3] = 3.0; // node 2 ← 0: sep_conv_3x3 (σ = 0.95)
    a[1][2] = 1.0; // node 2 ← 1: skip (σ = 0.73, dropped)
                   // node 3: nothing above the threshold
    a[5][4] = 2.0; // node 4 ← 0: sep_conv_5x5 (σ = 0.88)
    a[8][5] = 4.0; // node 4 ← 3 (absent node): dil_conv_3x3 (σ = 0.98)
    let t = Tensor::<Flex, 2>::from_data(
        TensorData::new(a.iter().flatten().copied().collect::<Vec<_>>(), [9, 7]),
        &Default::default(),
    );
    net.alphas_normal = Param::from_tensor(t.clone());
    net.alphas_reduce = Param::from_tensor(t);
    let g = net.genotype();
    assert_eq!(
        g.normal,
        vec![
            Gene::to("sep_conv_3x3", 2, 0),
            Gene::to("dil_conv_3x3", 4, 3),
            Gene::to("sep_conv_5x5", 4, 0),
        ]
    );
    assert_eq!(g.normal_concat, vec![2, 4]);
    let text = darts::genotype::python::to_python(&g);
    assert!(text.contains("('sep_conv_3x3', 2, 0)"), "{text}");
    // The gene from absent node 3 is dropped when building: node 4 has one op.
    let eval = seeded(4, || {
        EvalNetworkConfig {
            channels: 4,
            layers: 3,
            ..Default::default()
        }
        .init::<Flex>(&g, &Default::default())
        .unwrap()
    });
    assert_eq!(eval.cells[0].ops.len(), 2);
    assert_eq!(eval.cells[0].multiplier(), 2);
    assert!(eval.cells[0].drop_per_node);
    let x = seeded(41, || {
        Tensor::<Flex, 4>::random([2, 3, 16, 16], Distribution::Default, &Default::default())
    });
    assert_eq!(eval.forward(x, 0.0).logits.dims(), [2, 10]);
}

// ------------------------------------------------------------------ GDAS

/// The hard Gumbel-softmax sample against its definition with the same noise: the value is the
/// one-hot of `argmax((log_softmax(α) + g)/τ)`, and its (straight-through) gradient is the
/// gradient of the soft sample `softmax((log_softmax(α) + g)/τ)`, checked by central differences.
#[test]
fn gdas_sample_is_one_hot_with_the_soft_gradient() {
    use darts::mixed_op::stochastic::{gumbel_hard, gumbel_noise, NoiseSource};
    let dev = Default::default();
    let (rows, cols, tau) = (3, 4, 2.5);
    let a0: Vec<f64> = vec![
        0.3, -0.2, 0.9, 0.1, 1.5, 0.0, -1.0, 0.4, -0.3, -0.3, 0.2, 0.8,
    ];
    let c: Vec<f64> = (0..rows * cols)
        .map(|i| ((i * 5 % 7) as f64) - 3.0)
        .collect();
    let g = gumbel_noise(&NoiseSource::new(17), rows * cols);
    // The soft sample and the weighted sum Σ c·probs on the host.
    let soft = |a: &[f64]| -> Vec<f64> {
        let mut out = Vec::new();
        for r in 0..rows {
            let row = &a[r * cols..(r + 1) * cols];
            let m = row.iter().cloned().fold(f64::MIN, f64::max);
            let lse = m + row.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
            let z: Vec<f64> = (0..cols)
                .map(|k| (row[k] - lse + g[r * cols + k]) / tau)
                .collect();
            let zm = z.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = z.iter().map(|x| (x - zm).exp()).collect();
            let sum: f64 = e.iter().sum();
            out.extend(e.iter().map(|x| x / sum));
        }
        out
    };
    let alpha =
        Tensor::<B, 2>::from_data(TensorData::new(a0.clone(), [rows, cols]), &dev).require_grad();
    let (hard, index) = gumbel_hard(alpha.clone(), tau, &NoiseSource::new(17));
    let p = soft(&a0);
    for r in 0..rows {
        let row = &p[r * cols..(r + 1) * cols];
        let best = (0..cols).fold(0, |b, k| if row[k] > row[b] { k } else { b });
        assert_eq!(index[r], best);
    }
    let h: Vec<f64> = hard.clone().into_data().convert::<f64>().to_vec().unwrap();
    for (i, v) in h.iter().enumerate() {
        let want = if index[i / cols] == i % cols {
            1.0
        } else {
            0.0
        };
        assert!((v - want).abs() < 1e-6, "{h:?}");
    }
    let ct = Tensor::<B, 2>::from_data(TensorData::new(c.clone(), [rows, cols]), &dev);
    let grads = (hard * ct).sum().backward();
    let ga: Vec<f64> = alpha
        .grad(&grads)
        .unwrap()
        .into_data()
        .convert::<f64>()
        .to_vec()
        .unwrap();
    let f = |a: &[f64]| soft(a).iter().zip(&c).map(|(p, c)| p * c).sum::<f64>();
    for d in coordinates(rows * cols) {
        let fd = central_difference(&f, &a0, &d, 1e-6);
        let ad = dot(&ga, &d);
        assert!(
            (fd - ad).abs() < 1e-4 * (1.0 + fd.abs()),
            "fd {fd} vs straight-through {ad}"
        );
    }
    // Fresh draws per forward, the same sequence for the same seed.
    let n = NoiseSource::new(17);
    let first = gumbel_hard(alpha.clone(), tau, &n).1;
    assert_eq!(first, index);
    let again: Vec<Vec<usize>> = (0..20)
        .map(|_| gumbel_hard(alpha.clone(), tau, &n).1)
        .collect();
    assert!(again.iter().any(|i| *i != index), "20 draws all equal");
}

/// GDAS's edge computes only the sampled candidate: `op_k(x) · w_k`.
#[test]
fn gdas_edge_computes_only_the_sampled_op() {
    let dev = Default::default();
    let edge = EdgeSpec {
        channels: 4,
        stride: 1,
    };
    let m = seeded(51, || {
        MixedOp::<Flex, DartsOp<Flex>>::new(&DartsSpace::default(), &edge, &dev)
    });
    let x = seeded(52, || {
        Tensor::<Flex, 4>::random([2, 4, 5, 5], Distribution::Normal(0.0, 1.0), &dev)
    });
    let w = Tensor::<Flex, 1>::from_floats([0.0, 0.0, 0.0, 0.0, 0.0, 0.75, 0.0, 0.0], &dev);
    let got = m.forward_single(x.clone(), w, 5);
    let want = m.ops[5].forward(x) * 0.75;
    let err = max_abs_diff(got, want);
    assert!(err < 1e-6, "{err}");
}

// ------------------------------------------------------------------ DrNAS

/// The pathwise derivative of a Gamma sample by implicit differentiation equals the derivative
/// of the sample at a fixed quantile `u` (the inverse CDF, solved by bisection, differentiated
/// by central differences).
#[test]
fn gamma_sample_gradient_matches_the_inverse_cdf_derivative() {
    use darts::mixed_op::stochastic::{gamma_p, gamma_sample_grad};
    let quantile = |a: f64, u: f64| -> f64 {
        let (mut lo, mut hi) = (0.0f64, 200.0f64);
        for _ in 0..200 {
            let mid = 0.5 * (lo + hi);
            if gamma_p(a, mid) < u {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        0.5 * (lo + hi)
    };
    for a in [0.3, 0.9, 1.0, 2.5, 7.0] {
        for u in [0.05, 0.3, 0.5, 0.8, 0.97] {
            let z = quantile(a, u);
            let h = 1e-4 * a;
            let fd = (quantile(a + h, u) - quantile(a - h, u)) / (2.0 * h);
            let ours = gamma_sample_grad(a, z);
            assert!(
                (fd - ours).abs() < 1e-5 * (1.0 + fd.abs()),
                "a {a} u {u}: inverse-CDF {fd} vs implicit {ours}"
            );
        }
    }
}

/// The Dirichlet sample: rows on the simplex; over many draws its mean is `c / Σc`, and the mean
/// of its pathwise gradients is the gradient of that mean (the estimator is unbiased).
#[test]
fn dirichlet_samples_and_pathwise_gradients_are_unbiased() {
    use darts::mixed_op::stochastic::{dirichlet_rsample, NoiseSource};
    let dev = Default::default();
    let c0 = [0.7f64, 1.5, 3.0];
    let n = NoiseSource::new(3);
    let draws = 3000;
    let mut mean = [0.0f64; 3];
    let mut grad = [0.0f64; 3]; // ∂w₀/∂c_j, averaged
    for _ in 0..draws {
        let c = Tensor::<B, 2>::from_data(
            TensorData::new(c0.to_vec(), [1, 3]),
            (&dev, burn::tensor::DType::F64),
        )
        .require_grad();
        let w = dirichlet_rsample(c.clone(), &n);
        let v: Vec<f64> = w.clone().into_data().convert::<f64>().to_vec().unwrap();
        assert!((v.iter().sum::<f64>() - 1.0).abs() < 1e-9 && v.iter().all(|x| *x > 0.0));
        for k in 0..3 {
            mean[k] += v[k] / draws as f64;
        }
        let grads = w.slice([0..1, 0..1]).sum().backward();
        let g: Vec<f64> = c
            .grad(&grads)
            .unwrap()
            .into_data()
            .convert::<f64>()
            .to_vec()
            .unwrap();
        for k in 0..3 {
            grad[k] += g[k] / draws as f64;
        }
    }
    let s: f64 = c0.iter().sum();
    for k in 0..3 {
        assert!((mean[k] - c0[k] / s).abs() < 0.02, "mean {mean:?}");
    }
    // ∂(c₀/s)/∂c_j = (δ₀ⱼ·s − c₀)/s².
    let want = [(s - c0[0]) / (s * s), -c0[0] / (s * s), -c0[0] / (s * s)];
    for k in 0..3 {
        assert!(
            (grad[k] - want[k]).abs() < 0.025,
            "pathwise {grad:?} vs {want:?}"
        );
    }
}

/// DrNAS's KL regulariser: the closed form at hand-checked points, and its gradient (through
/// the surrogate) against central differences.
#[test]
fn dirichlet_kl_matches_closed_form_and_differences() {
    use darts::mixed_op::stochastic::{dirichlet_kl_uniform, ln_gamma};
    let dev = Default::default();
    // KL(Dir(1) ‖ Dir(1)) = 0; KL(Dir(2, 1) ‖ Dir(1, 1)) = ln 2 − 1/2 (Beta(2,1) vs uniform).
    let f64s = (&dev, burn::tensor::DType::F64);
    let kl = |v: Vec<f64>, cols: usize| -> f64 {
        let n = v.len() / cols;
        let t = Tensor::<B, 2>::from_data(TensorData::new(v, [n, cols]), f64s);
        scalar(dirichlet_kl_uniform(t))
    };
    assert!(kl(vec![1.0, 1.0, 1.0], 3).abs() < 1e-12);
    assert!((kl(vec![2.0, 1.0], 2) - (2f64.ln() - 0.5)).abs() < 1e-9);
    assert!((ln_gamma(5.0) - 24f64.ln()).abs() < 1e-12);
    let c0 = vec![0.6, 1.3, 2.2, 0.9, 1.0, 4.0];
    let t = Tensor::<B, 2>::from_data(TensorData::new(c0.clone(), [2, 3]), f64s).require_grad();
    let grads = dirichlet_kl_uniform(t.clone()).backward();
    let g: Vec<f64> = t
        .grad(&grads)
        .unwrap()
        .into_data()
        .convert::<f64>()
        .to_vec()
        .unwrap();
    let f = |c: &[f64]| kl(c.to_vec(), 3);
    for d in coordinates(6) {
        let fd = central_difference(&f, &c0, &d, 1e-5);
        assert!(
            (fd - dot(&g, &d)).abs() < 1e-6,
            "fd {fd} vs {}",
            dot(&g, &d)
        );
    }
}

/// Widening replicates channels: every grown tensor is the old one followed by copies of the
/// drawn channels, a depthwise convolution keeps one group per channel, and an optimiser's
/// flattened state grows the same way.
#[test]
fn drnas_widening_replicates_channels() {
    use darts::ops::wider::Widening;
    use darts::ops::{DartsOp, OpOptions, Primitive};
    let dev = Default::default();
    let opts = OpOptions {
        affine: false,
        bn_after_pool: false,
    };
    for (prim, stride) in [
        (Primitive::SepConv3x3, 1),
        (Primitive::DilConv5x5, 1),
        (Primitive::SkipConnect, 2),
    ] {
        let op: DartsOp<Flex> = seeded(71, || prim.build(4, stride, opts, &dev));
        let before = all_tensors(&op);
        let mut calls = 0;
        let mut draw = |high: usize, count: usize| -> Vec<usize> {
            calls += 1;
            (0..count).map(|i| (i * 3 + calls) % high).collect()
        };
        let mut w = Widening::default();
        let wide = w.op(op, 6, &mut draw);
        let x = seeded(72, || {
            Tensor::<Flex, 4>::random([2, 6, 8, 8], Distribution::Default, &dev)
        });
        let y = wide.forward(x);
        assert_eq!(y.dims()[1], 6, "{prim:?}");
        let after = all_tensors(&wide);
        let mut current: std::collections::HashMap<_, _> = before.into_iter().collect();
        for g in &w.growths {
            let old = current[&g.id].clone();
            // `g.shape` padded to 4-D; the grown tensor by its definition: along `g.dim`, the
            // old entries, then entry `index[j]` for the j-th new one.
            let mut sh = g.shape.clone();
            sh.resize(4, 1);
            let mut out_sh = sh.clone();
            out_sh[g.dim] += g.index.len();
            let at =
                |s: &[usize], i: [usize; 4]| ((i[0] * s[1] + i[1]) * s[2] + i[2]) * s[3] + i[3];
            let mut want = vec![0.0f32; out_sh.iter().product()];
            for a in 0..out_sh[0] {
                for b in 0..out_sh[1] {
                    for c in 0..out_sh[2] {
                        for d in 0..out_sh[3] {
                            let mut src = [a, b, c, d];
                            if src[g.dim] >= sh[g.dim] {
                                src[g.dim] = g.index[src[g.dim] - sh[g.dim]];
                            }
                            want[at(&out_sh, [a, b, c, d])] = old[at(&sh, src)];
                        }
                    }
                }
            }
            // The same growth applied to a flattened stand-in for an optimiser buffer.
            let n = old.len();
            let t = Tensor::<Flex, 1>::from_data(TensorData::new(old, [n]), &dev);
            let grown: Vec<f32> = g.apply_flat(t).into_data().to_vec().unwrap();
            assert_eq!(grown, want, "{prim:?}");
            current.insert(g.id, want);
        }
        // After every growth (a pointwise weight grows its inputs, then its outputs), the
        // widened module holds exactly the grown values.
        for (id, v) in &after {
            assert_eq!(&current[id], v, "{prim:?}");
        }
        if let DartsOp::SepConv(s) = &wide {
            assert_eq!(s.first.depthwise.groups, 6);
            assert_eq!(s.first.depthwise.weight.dims(), [6, 1, 3, 3]);
            assert_eq!(s.second.pointwise.weight.dims(), [6, 6, 1, 1]);
        }
    }
}

fn all_tensors<M: burn::module::Module<Flex>>(m: &M) -> Vec<(burn::module::ParamId, Vec<f32>)> {
    struct C(Vec<(burn::module::ParamId, Vec<f32>)>);
    impl burn::module::ModuleVisitor<Flex> for C {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<Flex, D>>) {
            self.0.push((p.id, p.val().into_data().to_vec().unwrap()));
        }
    }
    let mut c = C(Vec::new());
    m.visit(&mut c);
    c.0
}

/// DrNAS's pruning keeps each edge's `keep` strongest candidates (their α unchanged, the
/// others 0), and the op weights of a pruned candidate are exactly 0 in every forward (a
/// Dirichlet sample renormalised over the kept ones) and in the derivation's softmax.
#[test]
fn drnas_pruning_masks_the_weakest_candidates() {
    let m = Method::Drnas.config();
    let mut net = seeded(5, || {
        m.supernet::<Flex>(
            SearchNetworkConfig {
                channels: 24,
                layers: 3,
                steps: 2,
                multiplier: 2,
                ..Default::default()
            },
            &Default::default(),
        )
        .unwrap()
    });
    let a: Vec<f32> = (0..5 * 7).map(|i| ((i * 13 % 11) as f32) * 0.1).collect();
    let t = Tensor::<Flex, 2>::from_data(TensorData::new(a.clone(), [5, 7]), &Default::default());
    net.alphas_normal = Param::from_tensor(t.clone());
    net.alphas_reduce = Param::from_tensor(t);
    let weights_before = net.num_weights();
    let mut draw = |high: usize, count: usize| (0..count).map(|i| i % high).collect::<Vec<_>>();
    let (net, growths) = net.prune_and_widen(4, 4, &mut draw);
    assert!(!growths.is_empty());
    assert!(net.num_weights() > weights_before, "widening adds weights");
    let kept: Vec<f32> = darts::ops::to_f32s(&net.alphas_normal.val());
    let mask: Vec<f32> = darts::ops::to_f32s(&net.op_mask_normal.as_ref().unwrap().val());
    for e in 0..5 {
        let row = &a[e * 7..(e + 1) * 7];
        let mut order: Vec<usize> = (0..7).collect();
        order.sort_by(|&x, &y| row[y].partial_cmp(&row[x]).unwrap());
        for (rank, &k) in order.iter().enumerate() {
            let on = rank < 4;
            assert_eq!(mask[e * 7 + k], if on { 1.0 } else { 0.0 }, "edge {e}");
            assert_eq!(kept[e * 7 + k], if on { row[k] } else { 0.0 });
        }
    }
    let (w, _) = net.arch_weights();
    for (e, r) in w.iter().enumerate() {
        assert!((r.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        for (k, x) in r.iter().enumerate() {
            assert_eq!(*x == 0.0, mask[e * 7 + k] == 0.0);
        }
    }
    // A forward with Dirichlet samples runs on the widened supernet (K = 4 now).
    let mut net = net;
    net.sampling = m.sampling(30, 50);
    net.noise = darts::mixed_op::stochastic::NoiseSource::new(5);
    let x = seeded(73, || {
        Tensor::<Flex, 4>::random([2, 3, 16, 16], Distribution::Default, &Default::default())
    });
    assert_eq!(net.forward(x).dims(), [2, 10]);
    assert_eq!(m.stage_at(24, 50), 0);
    assert_eq!(m.stage_at(25, 50), 1);
    assert_eq!(m.stage_at(1, 2), 1);
}

// ------------------------------------------------------------------ SDARTS

#[test]
fn sdarts_clip_is_the_reference_projection() {
    use darts::bilevel::perturb::clip_rows;
    let mut a = vec![
        0.5, -0.2, 0.9, /* */ -0.1, -0.3, -0.2, /* */ 1.4, 0.2, 0.2,
    ];
    clip_rows(&mut a, 3);
    let want = [
        0.5 / 1.4,
        0.0,
        0.9 / 1.4,
        1.0,
        0.0,
        0.0,
        1.0 / 1.4,
        0.2 / 1.4,
        0.2 / 1.4,
    ];
    for (x, w) in a.iter().zip(want) {
        assert!((x - w).abs() < 1e-12, "{a:?}");
    }
}

/// SDARTS-RS perturbs within the ε ball and returns to the simplex; SDARTS-ADV's result is at
/// least as bad for the weight step's loss as the unperturbed weights (or is them: reverted),
/// and stays within ε of them before the projection's renormalisation.
#[test]
fn sdarts_perturbations_stay_in_the_ball_and_ascend() {
    use darts::bilevel::perturb::perturbed_op_weights;
    use darts::bilevel::Perturbation;
    use darts::mixed_op::stochastic::NoiseSource;
    let dev = Default::default();
    let net = seeded(61, || {
        SearchNetworkConfig {
            channels: 4,
            layers: 3,
            steps: 2,
            multiplier: 2,
            ..Default::default()
        }
        .init::<B, _, _>(&DartsSpace::default(), AnyRelaxation::Softmax, &dev)
        .unwrap()
    });
    let b = batch(4, 8, 0.0);
    let a0: Vec<Vec<f64>> = net
        .op_weights()
        .iter()
        .map(|t| t.clone().into_data().convert::<f64>().to_vec().unwrap())
        .collect();
    let host = |a: &[Tensor<Flex, 2>]| -> Vec<Vec<f64>> {
        a.iter()
            .map(|t| t.clone().into_data().convert::<f64>().to_vec().unwrap())
            .collect()
    };
    let eps = 0.1;
    let rs = perturbed_op_weights(
        &net,
        &b,
        &Perturbation::Random { epsilon: eps },
        &NoiseSource::new(1),
    )
    .unwrap();
    let rs = host(&rs);
    let loss = |a: &[Vec<f64>]| -> f64 {
        let t: Vec<Tensor<B, 2>> = a
            .iter()
            .map(|v| Tensor::from_data(TensorData::new(v.clone(), [5, 8]), &dev))
            .collect();
        darts::ops::mode::eval_mode(|| scalar(net.forward_with_op_weights(&b, &t).loss))
    };
    for (a, p) in a0.iter().zip(&rs) {
        for (r0, r) in a.chunks(8).zip(p.chunks(8)) {
            assert!((r.iter().sum::<f64>() - 1.0).abs() < 1e-5);
            assert!(r.iter().all(|x| *x >= 0.0));
            // Before renormalisation each entry moved by at most ε: after it, a row of 8
            // entries moves by at most (1 + 8ε)-ish; check the looser bound 2ε + 8ε.
            assert!(r0.iter().zip(r).all(|(x, y)| (x - y).abs() <= 10.0 * eps));
        }
    }
    assert_ne!(rs, a0);
    let adv = perturbed_op_weights(
        &net,
        &b,
        &Perturbation::Pgd {
            epsilon: eps,
            steps: 7,
        },
        &NoiseSource::new(2),
    )
    .unwrap();
    let adv = host(&adv);
    assert!(
        loss(&adv) >= loss(&a0) - 1e-9,
        "{} < {}",
        loss(&adv),
        loss(&a0)
    );
    // The model without op weights (the default trait method) is left alone.
    assert!(net.op_weights().len() == 2);
}

// ------------------------------------------------------------------ DARTS-PT

#[test]
fn pt_projection_mask_matches_its_definition() {
    use darts::cell::cnn::supernet::CellProjection;
    // 2 nodes (edges 0–1 and 2–4), 3 candidates.
    let p = CellProjection {
        ops: vec![None, Some(2), None, None, None],
        edges: vec![None, Some(vec![2, 4])],
        masked: vec![(0, Some(1)), (4, None)],
    };
    let (mask, hot) = p.mask(&darts::cell::cnn::supernet::darts_node_edges(2), 3);
    #[rustfmt::skip]
    let want_mask = [
        1.0, 0.0, 1.0, // edge 0: op 1 masked for an evaluation
        0.0, 0.0, 0.0, // edge 1: decided (op 2)
        1.0, 1.0, 1.0, // edge 2: kept, undecided
        0.0, 0.0, 0.0, // edge 3: removed by the node's decision
        0.0, 0.0, 0.0, // edge 4: masked whole
    ];
    #[rustfmt::skip]
    let want_hot = [
        0.0, 0.0, 0.0,
        0.0, 0.0, 1.0,
        0.0, 0.0, 0.0,
        0.0, 0.0, 0.0,
        0.0, 0.0, 0.0,
    ];
    assert_eq!(mask, want_mask);
    assert_eq!(hot, want_hot);
    assert!(CellProjection::default().is_empty());
}

/// A supernet whose every edge and node is decided derives exactly the decisions, whatever α.
#[test]
fn pt_decisions_become_the_genotype() {
    let mut net = supernet_with(SearchNetworkConfig {
        channels: 4,
        layers: 3,
        steps: 2,
        multiplier: 2,
        ..Default::default()
    });
    for p in [&mut net.projection.normal, &mut net.projection.reduce] {
        p.ops = vec![Some(4), Some(3), Some(7), Some(1), Some(5)];
        p.edges = vec![None, Some(vec![4, 2])];
    }
    let g = net.genotype();
    let genes: Vec<(&str, usize)> = g.normal.iter().map(|g| (g.op.as_str(), g.input)).collect();
    assert_eq!(
        genes,
        vec![
            ("sep_conv_3x3", 0),
            ("skip_connect", 1),
            ("dil_conv_5x5", 0),
            ("sep_conv_5x5", 2),
        ]
    );
    let (w, _) = net.arch_weights();
    assert_eq!(w[3], vec![0.0; 8]);
    assert_eq!(w[4][5], 1.0);
}

/// DARTS-PT end to end after a tiny DARTS search: every edge and every node with more than two
/// inputs gets one decision per cell type, each op decision picks the removal with the lowest
/// accuracy, and the genotype is the decisions.
#[test]
fn darts_pt_selects_after_a_search() {
    let data = sample();
    let out = tmp("pt");
    let cfg = SearchConfig {
        select: darts::cifar::Selection::Pt { interval: 1 },
        ..tiny(&data, Method::Darts)
    };
    let s = search_into(&cfg, &out, None, false).unwrap();
    let pt: darts::cifar::PtSelection =
        serde_json::from_str(&std::fs::read_to_string(out.join("selection.json")).unwrap())
            .unwrap();
    // 5 edges + 1 node with three inputs, per cell type; 1·(6 − 1) + 1 tuning epochs.
    assert_eq!(pt.decisions.len(), 12);
    assert_eq!(pt.tune_epochs, 6);
    assert_eq!(pt.genotype, s.genotype);
    for d in &pt.decisions {
        if d.kind == "op" {
            let min = d.accuracies.iter().map(|a| a.1).fold(f64::MAX, f64::min);
            let chosen = d.accuracies.iter().find(|a| a.0 == d.chosen[0]).unwrap().1;
            assert_eq!(chosen, min, "{d:?}");
            assert_eq!(d.accuracies.len(), 8);
        } else {
            assert_eq!((d.target, d.chosen.len()), (1, 2));
        }
    }
    for (cell, genes) in [
        ("normal", &s.genotype.normal),
        ("reduce", &s.genotype.reduce),
    ] {
        let op_of = |e: usize| {
            pt.decisions
                .iter()
                .find(|d| d.cell == cell && d.kind == "op" && d.target == e)
                .unwrap()
                .chosen[0]
        };
        let kept = &pt
            .decisions
            .iter()
            .find(|d| d.cell == cell && d.kind == "edge")
            .unwrap()
            .chosen;
        let names = darts::ops::Primitive::DARTS.map(|p| p.name());
        // Node 0 keeps its two edges (0, 1); node 1 the two it kept (edges 2..5 read 0, 1, 2).
        let mut want: Vec<(String, usize)> = vec![
            (names[op_of(0)].to_string(), 0),
            (names[op_of(1)].to_string(), 1),
        ];
        want.sort();
        let mut got: Vec<(String, usize)> =
            genes[..2].iter().map(|g| (g.op.clone(), g.input)).collect();
        got.sort();
        if !names[op_of(0)].eq("none") && !names[op_of(1)].eq("none") {
            assert_eq!(got, want, "{cell}");
        }
        // Node 1 reads the two kept edges (edge 2 + j reads state j), unless `none` was
        // chosen for one (the derivation never picks `none`; the reference's neither).
        if kept.iter().all(|&e| op_of(e) != 0) {
            let mut node1: Vec<usize> = genes[2..].iter().map(|g| g.input + 2).collect();
            node1.sort();
            let mut k = kept.clone();
            k.sort();
            assert_eq!(node1, k, "{cell}");
        }
    }
    std::fs::remove_dir_all(&out).ok();
}

// ------------------------------------------------------------------ end to end

/// A search of `cfg` into `out` (quiet), stopped after `stop_after` epochs or resumed from
/// `out` when asked.
fn search_into(
    cfg: &SearchConfig,
    out: &Path,
    stop_after: Option<usize>,
    resume: bool,
) -> Result<darts::cifar::SearchSummary, darts::cifar::RunError> {
    let opts = RunOptions {
        out: out.to_path_buf(),
        stop_after,
        resume,
        progress: false,
        ..Default::default()
    };
    run_search::<B>(cfg, &opts, &Default::default())
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("darts-methods-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// The CIFAR-10 sample shipped in the repository (1,000 images in the official binary layout).
fn sample() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/cifar10-sample")
}

fn tiny(data: &Path, method: Method) -> SearchConfig {
    let mut m = method.config();
    // One epoch of warm-up instead of 15, so that the two epochs see both phases.
    if m.arch_warmup_epochs > 0 {
        m.arch_warmup_epochs = 1;
    }
    SearchConfig {
        data: data.to_path_buf(),
        limit_images: Some(32),
        batch_size: 8,
        epochs: 2,
        // A multiple of every K for partial channels (PC-DARTS 4: 16; DrNAS 6 then 4: 24).
        init_channels: 4 * m.partial_channels.max(2),
        layers: 3,
        steps: 2,
        seed: 7,
        method: m,
        ..Default::default()
    }
}

/// Every method searches end to end on the shipped CIFAR-10 sample and derives a valid
/// genotype; its epochs
/// record the schedule; PC-DARTS's warm-up epoch leaves α untouched and the next one moves it.
#[test]
fn every_method_searches_end_to_end() {
    let data = sample();
    for method in Method::ALL.into_iter().skip(1) {
        let out = tmp(method.name());
        let cfg = tiny(&data, method);
        let s = search_into(&cfg, &out, None, false).unwrap_or_else(|e| panic!("{method}: {e}"));
        s.genotype.validate().unwrap();
        if method != Method::FairDarts {
            assert_eq!(s.genotype.normal.len(), 4);
        }
        let sched: Vec<_> = s.history.iter().map(|e| e.schedule.unwrap()).collect();
        match method {
            Method::PcDarts => {
                assert!(!sched[0].arch_updates && sched[1].arch_updates);
                assert!(s.history[0].arch_val_loss.is_nan());
                assert!(s.history[1].arch_val_loss.is_finite());
                let b = s.history[1].edge_weights_normal.as_ref().unwrap();
                assert_eq!(b.len(), 5);
                // Warm-up: α (and β) still at their initial values after epoch 0.
                assert_eq!(s.history[0].alphas_normal.len(), 5);
                let e0 = s.history[0].edge_weights_normal.as_ref().unwrap();
                assert!(e0
                    .iter()
                    .all(|w| (w - 0.5).abs() < 1e-2 || (w - 1.0 / 3.0).abs() < 1e-2));
            }
            Method::DartsMinus => {
                assert_eq!(sched[0].aux_skip_scale, Some(1.0));
                assert_eq!(sched[1].aux_skip_scale, Some(0.5));
            }
            Method::BetaDarts => {
                assert_eq!(sched[1].beta_decay_lambda, Some(0.5));
            }
            Method::FairDarts => {
                // Seven candidates (no `none`), sigmoid weights near 1/2 after two tiny
                // epochs: nothing reaches 0.85, every node is dropped.
                let w = &s.history[1].alphas_normal;
                assert!(w.iter().all(|r| r.len() == 7));
                assert!(w.iter().flatten().all(|x| (x - 0.5).abs() < 0.05), "{w:?}");
                assert!(s.genotype.normal.is_empty() && s.genotype.normal_concat.is_empty());
                let e = EvalNetworkConfig::default()
                    .init::<Flex>(&s.genotype, &Default::default())
                    .unwrap_err();
                assert!(e.to_string().contains("no node"), "{e}");
            }
            Method::Gdas => {
                let tau = sched[1].gumbel_tau.unwrap();
                assert!((tau - 0.1).abs() < 1e-12, "{tau}");
                assert!(s.history.iter().all(|e| e.arch_val_loss.is_finite()));
            }
            Method::SdartsRs | Method::SdartsAdv => {
                assert_eq!(sched[0].perturbation_epsilon, Some(0.03));
                let e1 = sched[1].perturbation_epsilon.unwrap();
                assert!((e1 - (0.03 + 0.27 / 2.0)).abs() < 1e-12);
            }
            Method::Drnas => {
                // Stage 1 (K = 6, all seven candidates), then stage 2 from epoch 1 (K = 4,
                // four candidates kept per edge: the three others weigh exactly 0).
                assert!(s
                    .history
                    .iter()
                    .all(|e| e.alphas_normal.iter().all(|r| r.len() == 7)));
                let zeros = |r: &Vec<f64>| r.iter().filter(|w| **w == 0.0).count();
                assert!(s.history[0].alphas_normal.iter().all(|r| zeros(r) == 0));
                for cell in [&s.history[1].alphas_normal, &s.history[1].alphas_reduce] {
                    for r in cell {
                        assert_eq!(zeros(r), 3, "{r:?}");
                        assert!((r.iter().sum::<f64>() - 1.0).abs() < 1e-5);
                    }
                }
            }
            Method::Darts => unreachable!(),
        }
        let text = std::fs::read_to_string(out.join("genotype.json")).unwrap();
        assert_eq!(darts::genotype::parse_conv_any(&text).unwrap(), s.genotype);
        std::fs::remove_dir_all(&out).ok();
    }
}

/// A search stopped after its first epoch and resumed ends with the α (and β), genotype and
/// losses of the uninterrupted run: PC-DARTS across its warm-up boundary, DrNAS across its
/// progressive stage change (pruning and widening), and the methods that draw random numbers
/// (GDAS's Gumbel samples in every forward, SDARTS-RS's noise in every weight step, DrNAS's
/// Dirichlet samples), whose noise is keyed by (seed, epoch, draw).
#[test]
fn resumed_method_searches_match_uninterrupted() {
    let data = sample();
    for method in [
        Method::PcDarts,
        Method::Gdas,
        Method::SdartsRs,
        Method::Drnas,
    ] {
        let cfg = tiny(&data, method);
        let full = tmp(&format!("{method}-full"));
        let a = search_into(&cfg, &full, None, false).unwrap();
        let cut = tmp(&format!("{method}-cut"));
        search_into(&cfg, &cut, Some(1), false).unwrap();
        // The configuration given on resume is ignored: the checkpoint's is used.
        let b = search_into(&SearchConfig::default(), &cut, None, true).unwrap();
        assert_eq!(b.alphas, a.alphas, "{method}");
        assert_eq!(b.genotype, a.genotype, "{method}");
        assert_eq!(b.history[1].train_loss, a.history[1].train_loss, "{method}");
        // And a second uninterrupted run is the same run.
        let again = tmp(&format!("{method}-again"));
        let c = search_into(&cfg, &again, None, false).unwrap();
        assert_eq!(c.alphas, a.alphas, "{method}: not deterministic");
        std::fs::remove_dir_all(&again).ok();
        std::fs::remove_dir_all(&full).ok();
        std::fs::remove_dir_all(&cut).ok();
    }
}
