//! The convolutional search space: exact parameter counts (from the reference), shapes, the
//! separation of α from the weights, and the α gradient against central finite differences.

use crate::common::*;
use burn::backend::Flex;
use burn::module::AutodiffModule;
use burn::tensor::{Distribution, Tensor};
use darts::bilevel::ArchModel;
use darts::prelude::*;

/// Built under the seed lock ([`crate::common::seeded`]): an unlocked build's draws could land
/// inside a search that another test thread runs seeded, and change its results.
fn supernet(c: usize, layers: usize) -> SearchNetwork<Flex, DartsOp<Flex>> {
    crate::common::seeded(0, || {
        SearchNetworkConfig {
            channels: c,
            layers,
            ..Default::default()
        }
        .init::<Flex, _, _>(&DartsSpace::default(), Softmax, &Default::default())
        .unwrap()
    })
}

/// A derived network built under the seed lock (see [`supernet`]).
fn derived(cfg: EvalNetworkConfig, g: &Genotype) -> EvalNetwork<Flex> {
    crate::common::seeded(0, || cfg.init::<Flex>(g, &Default::default()).unwrap())
}

#[test]
fn supernet_parameter_counts_match_the_reference() {
    assert_eq!(supernet(16, 8).num_weights(), 1_930_618);
    assert_eq!(supernet(8, 5).num_weights(), 394_210);
}

#[test]
fn alphas_are_apart_from_the_weights() {
    let net = supernet(8, 5);
    let all = darts::ops::trainable_params(&net, &[]);
    assert_eq!(all - net.num_weights(), 2 * 14 * 8);
    assert_eq!(net.alphas_normal.dims(), [14, 8]);
    assert_eq!(net.alphas_reduce.dims(), [14, 8]);
    let ids = darts::bilevel::params::all_ids(&net);
    for a in net.alpha_ids() {
        assert_eq!(ids.iter().filter(|i| **i == a).count(), 1);
    }
}

#[test]
fn derived_network_parameter_counts_match_the_reference() {
    let cfg = EvalNetworkConfig::default();
    let v2 = derived(cfg, &catalog::conv("DARTS_V2").unwrap());
    assert_eq!(v2.num_weights(), 3_349_342);
    let v1 = derived(cfg, &catalog::conv("DARTS_V1").unwrap());
    assert_eq!(v1.num_weights(), 3_169_414);
    let aux = derived(
        EvalNetworkConfig {
            auxiliary: true,
            ..cfg
        },
        &catalog::conv("DARTS_V2").unwrap(),
    );
    assert_eq!(aux.auxiliary_weights(), 476_426);
    assert_eq!(aux.num_weights(), 3_349_342);
}

#[test]
fn every_catalog_genotype_builds_with_its_published_size() {
    for name in catalog::conv_names() {
        let g = catalog::conv(name).unwrap();
        let n = derived(EvalNetworkConfig::default(), &g).num_weights();
        println!("{name}: {n} weights (C=36, 20 cells, no auxiliary head)");
        // Sizes the papers report for CIFAR-10 at C=36/20 cells (M params).
        let reported = match name {
            "PC_DARTS" => Some(3.6),
            "PDARTS" => Some(3.4),
            "DARTS_V2" => Some(3.3),
            _ => None,
        };
        if let Some(r) = reported {
            assert!((n as f64 / 1e6 - r).abs() < 0.1, "{name}: {n}");
        }
    }
}

#[test]
fn shapes_through_supernet_and_derived_network() {
    let dev = Default::default();
    let net = supernet(4, 5);
    let x = crate::common::seeded(3, || {
        Tensor::<Flex, 4>::random([2, 3, 32, 32], Distribution::Default, &dev)
    });
    assert_eq!(net.forward(x.clone()).dims(), [2, 10]);
    let eval = EvalNetworkConfig {
        channels: 4,
        layers: 5,
        auxiliary: true,
        ..Default::default()
    }
    .init::<B>(&catalog::conv("DARTS_V2").unwrap(), &dev)
    .unwrap();
    let out = eval.forward(Tensor::from_inner(x.clone()), 0.2);
    assert_eq!(out.logits.dims(), [2, 10]);
    assert_eq!(out.aux_logits.unwrap().dims(), [2, 10]);
    // Evaluation mode (the inner backend): no auxiliary head.
    let out = eval.valid().forward(x, 0.2);
    assert!(out.aux_logits.is_none());
    // AmoebaNet uses conv_7x1_1x7 and sep_conv_7x7.
    let amoeba = derived(
        EvalNetworkConfig {
            channels: 4,
            layers: 3,
            ..Default::default()
        },
        &catalog::conv("AmoebaNet").unwrap(),
    );
    let x = crate::common::seeded(4, || {
        Tensor::<Flex, 4>::random([1, 3, 16, 16], Distribution::Default, &dev)
    });
    assert_eq!(amoeba.forward(x, 0.0).logits.dims(), [1, 10]);
}

#[test]
fn unknown_op_in_a_genotype_is_an_error_not_a_panic() {
    let mut g = catalog::conv("DARTS_V2").unwrap();
    g.normal[0].op = "conv_9x9".into();
    let e = EvalNetworkConfig::default()
        .init::<Flex>(&g, &Default::default())
        .unwrap_err();
    assert!(e.to_string().contains("conv_9x9"), "{e}");
}

/// ∂L/∂α by autodiff against central finite differences, on a tiny supernet and a fixed batch
/// (training-mode BN: a deterministic function of the batch), in f64.
///
/// We compare directional derivatives, which test the whole vector: along the gradient itself
/// (magnitude) and along random directions (direction). With h = 1e-5 in f64 the rounding error
/// (~1e-16 · |L| / h ≈ 1e-11) and the O(h²) truncation are far below the 1e-6 relative
/// tolerance, while ReLU/max-pool kinks crossed by the step contribute O(h) at worst.
#[test]
fn alpha_gradient_matches_finite_differences() {
    let dev = Default::default();
    let net = seeded(21, || {
        SearchNetworkConfig {
            channels: 4,
            layers: 3,
            ..Default::default()
        }
        .init::<B, _, _>(&DartsSpace::default(), Softmax, &dev)
        .unwrap()
    });
    // Larger alphas make the weights non-uniform so the check is not trivial.
    let a0: Vec<f64> = (0..2 * 14 * 8)
        .map(|i| ((i * 37 % 17) as f64 - 8.0) * 0.1)
        .collect();
    let net = to_f64(with_alpha(net, &a0));
    let b = batch_f64(batch(8, 8, 0.0));
    let ga = darts::bilevel::architect::loss_gradients(&net, &b).arch;
    let g = flat(&ga, &net.arch_param_ids());
    let f = |a: &[f64]| scalar(with_alpha(net.clone(), a).loss(&b));
    let h = 1e-5f64;
    let mut dirs: Vec<Vec<f64>> = vec![g.iter().map(|x| x / norm(&g)).collect()];
    for k in 0..3 {
        let r: Vec<f64> = (0..g.len())
            .map(|i| (((i * 7919 + k * 104729) % 1000) as f64 / 500.0) - 1.0)
            .collect();
        let n = norm(&r);
        dirs.push(r.iter().map(|x| x / n).collect());
    }
    for d in dirs {
        let plus: Vec<f64> = a0.iter().zip(&d).map(|(a, d)| a + h * d).collect();
        let minus: Vec<f64> = a0.iter().zip(&d).map(|(a, d)| a - h * d).collect();
        let fd = (f(&plus) - f(&minus)) / (2.0 * h);
        let ad = dot(&g, &d);
        let tol = 1e-6 * norm(&g);
        println!("fd {fd:.12} ad {ad:.12}");
        assert!(
            (fd - ad).abs() < tol,
            "fd {fd} vs autodiff {ad} (tol {tol})"
        );
    }
}

/// An f64 derived network with a `none` op and drop path runs forward and backward in f64
/// (the drop-path mask and `none`'s zeros take the input's dtype), and agrees with the same
/// network in f32 when no path is dropped.
#[test]
fn f64_derived_network_with_none_and_drop_path() {
    use burn::tensor::DType;
    let dev = Default::default();
    let mut g = catalog::conv("DARTS_V2").unwrap();
    g.normal[0].op = "none".into();
    g.reduce[1].op = "none".into();
    let net32 = seeded(5, || {
        EvalNetworkConfig {
            channels: 4,
            layers: 3,
            auxiliary: true,
            ..Default::default()
        }
        .init::<B>(&g, &dev)
        .unwrap()
    });
    let net64 = to_f64(net32.clone());
    let b32 = batch(4, 32, 0.0);
    let b64 = batch_f64(b32.clone());
    // Drop path on: forward and backward in f64.
    let out = net64.forward(b64.images.clone(), 0.3);
    assert_eq!(out.logits.dtype(), DType::F64);
    let (loss, _) = net64.loss(&b64, 0.3, 0.4);
    assert_eq!(loss.dtype(), DType::F64);
    let l = scalar(loss.clone());
    assert!(l.is_finite(), "loss {l}");
    let grads = loss.backward();
    let gw = net64.stem_conv.weight.grad(&grads).expect("stem gradient");
    assert_eq!(gw.dtype(), DType::F64);
    // Drop path off: f64 and f32 logits agree to f32 precision.
    let l64 = net64.forward(b64.images, 0.0).logits;
    let l32 = net32.forward(b32.images, 0.0).logits;
    let a = l64.into_data().convert::<f64>().to_vec::<f64>().unwrap();
    let b = l32.into_data().convert::<f64>().to_vec::<f64>().unwrap();
    let diff: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x - y).collect();
    assert!(norm(&diff) <= 1e-4 * norm(&a).max(1.0), "{a:?} vs {b:?}");
}

#[test]
fn supernet_configuration_is_checked() {
    let dev = Default::default();
    for (cfg, what) in [
        (
            SearchNetworkConfig {
                channels: 0,
                ..Default::default()
            },
            "channels = 0",
        ),
        (
            SearchNetworkConfig {
                steps: 2,
                multiplier: 5,
                ..Default::default()
            },
            "multiplier = 5",
        ),
    ] {
        let e = cfg
            .init::<Flex, _, _>(&DartsSpace::default(), Softmax, &dev)
            .unwrap_err();
        assert!(e.to_string().contains(what), "{e}");
    }
}

/// Keyed drop path (`DropPath::Keyed`): a sample's decisions depend only on its key and row of
/// the global batch (a shard starting at row 4 gets rows 4.. of the whole batch's masks), drop
/// with probability p and rescale by 1/(1 − p); the network has one site per non-identity op,
/// and its keyed forward is deterministic and differs between steps.
#[test]
fn keyed_drop_path_depends_on_the_sample_not_the_shard() {
    use darts::cell::{DropKey, DropPath};
    let key = DropKey {
        seed: 11,
        epoch: 3,
        step: 5,
        first_row: 0,
    };
    let (p, sites) = (0.3, 20);
    let whole = DropPath::keyed_masks(p, &key, 8, sites);
    let shard = DropPath::keyed_masks(
        p,
        &DropKey {
            first_row: 4,
            ..key
        },
        4,
        sites,
    );
    assert_eq!(&whole[4 * sites..], &shard[..]);
    let many = DropPath::keyed_masks(p, &key, 1000, sites);
    assert!(many.iter().all(|&m| m == 0.0 || m == 1.0 / (1.0 - p)));
    let dropped = many.iter().filter(|&&m| m == 0.0).count() as f64 / many.len() as f64;
    assert!((dropped - p).abs() < 0.02, "dropped {dropped}");
    let next = DropPath::keyed_masks(p, &DropKey { step: 6, ..key }, 8, sites);
    assert_ne!(whole, next);
    assert_eq!(DropPath::keyed(0.0, key), DropPath::Off);
    assert_eq!(DropPath::from(0.2), DropPath::Random(0.2));

    let dev = Default::default();
    let g = catalog::conv("DARTS_V2").unwrap();
    let net = seeded(3, || {
        EvalNetworkConfig {
            channels: 4,
            layers: 3,
            ..Default::default()
        }
        .init::<B>(&g, &dev)
        .unwrap()
    });
    // Normal cell: 6 of 8 ops are not identities (two skip_connects); reduction cells: the 5
    // max pools (the skips read node 2, stride 1).
    assert_eq!(net.drop_sites(), 6 + 5 + 5);
    let x = batch(4, 32, 0.0).images;
    let logits = |k: DropKey| -> Vec<f32> {
        net.forward(x.clone(), DropPath::keyed(0.5, k))
            .logits
            .into_data()
            .to_vec()
            .unwrap()
    };
    assert_eq!(logits(key), logits(key));
    assert_ne!(logits(key), logits(DropKey { step: 6, ..key }));
}
