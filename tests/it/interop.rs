//! Weights to and from PyTorch, against a fixture written by the reference's network in
//! PyTorch (`tests/fixtures/pytorch/make_fixture.py`: DARTS_V2, C=8, 5 cells, every tensor and
//! BatchNorm statistic random, logits of a fixed input in eval mode).

use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData};
use darts::genotype::catalog;
use darts::interop::{export_reference, import_reference, read_state_dict, reference_key};
use darts::prelude::*;
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/pytorch")
        .join(name)
}

fn network(channels: usize, auxiliary: bool, seed: u64) -> EvalNetwork<Flex> {
    crate::common::seeded(seed, || {
        EvalNetworkConfig {
            channels,
            layers: 5,
            auxiliary,
            ..Default::default()
        }
        .init::<Flex>(&catalog::conv("DARTS_V2").unwrap(), &Default::default())
        .unwrap()
    })
}

fn values(net: &EvalNetwork<Flex>) -> Vec<Vec<f32>> {
    darts::checkpoint::module_tensors::<Flex, _>(net)
        .into_iter()
        .map(|t| t.2)
        .collect()
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("darts-interop-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn reference_weights_reproduce_the_reference_logits() {
    let io = read_state_dict(&fixture("darts_v2_c8_l5_io.safetensors")).unwrap();
    let (shape, input) = io["input"].clone();
    let (_, want) = io["logits"].clone();
    for file in ["darts_v2_c8_l5.pt", "darts_v2_c8_l5.safetensors"] {
        let net = import_reference(network(8, false, 1), &fixture(file)).unwrap();
        let x = Tensor::<Flex, 4>::from_data(
            TensorData::new(input.clone(), shape.clone()),
            &Default::default(),
        );
        // The inner backend: evaluation mode, BatchNorm on the imported running statistics.
        let got: Vec<f32> = net.forward(x, 0.0).logits.into_data().to_vec().unwrap();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                "{file}: {got:?} vs {want:?}"
            );
        }
    }
}

#[test]
fn export_then_import_is_exact_and_has_the_reference_keys() {
    let dir = tmp("roundtrip");
    let path = dir.join("net.safetensors");
    let net = network(8, true, 2);
    export_reference(&net, &path).unwrap();
    // The keys and shapes of the reference's network with the auxiliary head (the fixture
    // script lists them), num_batches_tracked included.
    let want: std::collections::BTreeMap<String, Vec<usize>> = serde_json::from_str(
        &std::fs::read_to_string(fixture("darts_v2_c8_l5_aux_keys.json")).unwrap(),
    )
    .unwrap();
    let got: std::collections::BTreeMap<String, Vec<usize>> = read_state_dict(&path)
        .unwrap()
        .into_iter()
        .map(|(k, (shape, _))| (k, shape))
        .collect();
    assert_eq!(got, want);
    let back = import_reference(network(8, true, 3), &path).unwrap();
    assert_ne!(values(&network(8, true, 3)), values(&net));
    assert_eq!(values(&back), values(&net));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_state_dict_that_does_not_fit_is_an_error_naming_the_key() {
    let file = fixture("darts_v2_c8_l5.safetensors");
    // Other channels: shapes named.
    let e = import_reference(network(16, false, 1), &file)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`stem.0.weight` is [24, 3, 3, 3] in the file, the network needs [48, 3, 3, 3]"),
        "{e}"
    );
    // The file lacks the auxiliary head the network has.
    let e = import_reference(network(8, true, 1), &file)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("missing keys: auxiliary_head.features.2.weight"),
        "{e}"
    );
    // A file with a key the network does not have.
    let dir = tmp("extra");
    let path = dir.join("extra.safetensors");
    export_reference(&network(8, true, 1), &path).unwrap();
    let e = import_reference(network(8, false, 1), &path)
        .unwrap_err()
        .to_string();
    assert!(e.contains("unexpected keys: auxiliary_head."), "{e}");
    // Not a state dict at all.
    std::fs::write(dir.join("junk.pt"), b"not a pickle").unwrap();
    assert!(import_reference(network(8, false, 1), &dir.join("junk.pt")).is_err());
    assert!(import_reference(network(8, false, 1), &dir.join("absent.pt")).is_err());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn every_tensor_of_every_catalog_network_has_a_reference_key() {
    for name in catalog::conv_names() {
        let g = catalog::conv(name).unwrap();
        let net = EvalNetworkConfig {
            channels: 4,
            layers: 3,
            auxiliary: true,
            ..Default::default()
        }
        .init::<Flex>(&g, &Default::default())
        .unwrap();
        let mut keys = std::collections::BTreeSet::new();
        for path in burn_store_paths(&net) {
            let (key, _) = reference_key(&path).unwrap_or_else(|| panic!("{name}: {path}"));
            assert!(keys.insert(key.clone()), "{name}: {key} twice");
        }
    }
}

fn burn_store_paths(net: &EvalNetwork<Flex>) -> Vec<String> {
    use burn_store::ModuleSnapshot;
    net.collect(None, None, false)
        .into_iter()
        .map(|s| s.full_path())
        .collect()
}

/// The inference API on the reference weights: u8 HWC images in, the probabilities of the
/// network's logits out (the same images through the normalisation and `forward`).
#[test]
fn classifier_turns_images_into_the_networks_probabilities() {
    use darts::infer::Classifier;
    let cfg = EvalNetworkConfig {
        channels: 8,
        layers: 5,
        ..Default::default()
    };
    let g = catalog::conv("DARTS_V2").unwrap();
    let dev = Default::default();
    let model =
        Classifier::<Flex>::from_weights(&cfg, &g, &fixture("darts_v2_c8_l5.pt"), &dev).unwrap();
    let (h, w) = (16, 12);
    let images: Vec<u8> = (0..2 * h * w * 3).map(|i| (i * 37 % 256) as u8).collect();
    let p = model.probabilities(&images, 2, h, w).unwrap();
    assert_eq!(p.len(), 2);
    // By hand: CHW, normalised, then softmax of the imported network's logits.
    let net = import_reference(
        cfg.init::<Flex>(&g, &dev).unwrap(),
        &fixture("darts_v2_c8_l5.pt"),
    )
    .unwrap();
    let mean = darts::data::cifar::MEAN;
    let std = darts::data::cifar::STD;
    let mut x = vec![0f32; images.len()];
    for i in 0..2 {
        for y in 0..h {
            for xx in 0..w {
                for c in 0..3 {
                    let v = images[((i * h + y) * w + xx) * 3 + c] as f32 / 255.0;
                    x[((i * 3 + c) * h + y) * w + xx] = (v - mean[c]) / std[c];
                }
            }
        }
    }
    let logits: Vec<f32> = net
        .forward(
            Tensor::from_data(TensorData::new(x, [2, 3, h, w]), &dev),
            0.0,
        )
        .logits
        .into_data()
        .to_vec()
        .unwrap();
    for (row, l) in p.iter().zip(logits.chunks(10)) {
        let z: f32 = l.iter().map(|v| (v - l[0]).exp()).sum();
        for (pk, lk) in row.iter().zip(l) {
            assert!(
                (pk - (lk - l[0]).exp() / z).abs() < 1e-6,
                "{row:?} vs {l:?}"
            );
        }
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        let top = Classifier::<Flex>::top1(row);
        assert!(row.iter().all(|v| *v <= row[top]));
    }
    assert!(model.probabilities(&images, 3, h, w).is_err());
}
