//! End to end on real CIFAR-10: a tiny search and a tiny train from scratch produce artefacts
//! that exist and parse, and a search interrupted after an epoch and resumed from its checkpoint
//! ends with exactly the α of an uninterrupted run.

use crate::common::B;
use darts::cifar::{run_search, run_train, RunOptions, SearchConfig, TrainConfig, ValSampling};
use darts::genotype::{catalog, parse_conv_any, python};
use std::path::{Path, PathBuf};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("darts-e2e-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn tiny_search(data: &Path) -> SearchConfig {
    SearchConfig {
        data: data.to_path_buf(),
        limit_images: Some(48),
        batch_size: 8,
        epochs: 2,
        init_channels: 2,
        layers: 3,
        steps: 2,
        seed: 5,
        ..Default::default()
    }
}

#[test]
fn tiny_search_writes_parseable_artefacts() {
    let Some(data) = crate::common::real_data("cifar-10-batches-bin") else {
        return;
    };
    let out = tmp("search");
    let opts = RunOptions {
        out: out.clone(),
        ..Default::default()
    };
    let s = run_search::<B>(&tiny_search(&data), &opts, &Default::default()).unwrap();
    assert_eq!(s.history.len(), 2);
    assert!(s
        .history
        .iter()
        .all(|e| e.train_loss.is_finite() && e.steps == 3));
    let from_json =
        parse_conv_any(&std::fs::read_to_string(out.join("genotype.json")).unwrap()).unwrap();
    let from_py =
        python::parse_conv(&std::fs::read_to_string(out.join("genotype.py")).unwrap()).unwrap();
    assert_eq!(from_json, s.genotype);
    assert_eq!(from_py, s.genotype);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["alphas_normal"].as_array().unwrap().len(), 5);
    for f in [
        "normal.svg",
        "reduce.svg",
        "loss.svg",
        "accuracy.svg",
        "alphas_normal.svg",
        "alphas_reduce.svg",
    ] {
        let svg = std::fs::read_to_string(out.join(f)).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
            "{f}"
        );
    }
    for e in 0..2 {
        let p = out.join(format!("genotypes/epoch_{e:03}.py"));
        python::parse_conv(&std::fs::read_to_string(p).unwrap()).unwrap();
    }
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn resumed_search_matches_uninterrupted_search() {
    let Some(data) = crate::common::real_data("cifar-10-batches-bin") else {
        return;
    };
    let cfg = tiny_search(&data);
    let full = tmp("full");
    let a = run_search::<B>(
        &cfg,
        &RunOptions {
            out: full.clone(),
            ..Default::default()
        },
        &Default::default(),
    )
    .unwrap();
    let cut = tmp("cut");
    let first = run_search::<B>(
        &cfg,
        &RunOptions {
            out: cut.clone(),
            stop_after: Some(1),
            ..Default::default()
        },
        &Default::default(),
    )
    .unwrap();
    assert!(first.stopped_early);
    assert_eq!(first.history.len(), 1);
    assert_ne!(first.alphas, a.alphas);
    // A fresh process would know nothing but the directory: resume from it.
    let b = run_search::<B>(
        &SearchConfig::default(), // ignored: the checkpoint's configuration is used
        &RunOptions {
            out: cut.clone(),
            resume: true,
            ..Default::default()
        },
        &Default::default(),
    )
    .unwrap();
    assert_eq!(b.history.len(), 2);
    assert_eq!(
        b.alphas, a.alphas,
        "resumed alphas differ from the uninterrupted run"
    );
    assert_eq!(b.genotype, a.genotype);
    assert_eq!(b.history[1].train_loss, a.history[1].train_loss);
    std::fs::remove_dir_all(&full).ok();
    std::fs::remove_dir_all(&cut).ok();
}

#[test]
fn tiny_train_from_scratch_reports_accuracy_and_resumes() {
    let Some(data) = crate::common::real_data("cifar-10-batches-bin") else {
        return;
    };
    let cfg = TrainConfig {
        data: data.clone(),
        genotype: catalog::conv("DARTS_V2").unwrap(),
        genotype_source: "DARTS_V2".into(),
        limit_images: Some(32),
        limit_test: Some(32),
        batch_size: 16,
        lr: 0.025,
        momentum: 0.9,
        weight_decay: 3e-4,
        epochs: 2,
        init_channels: 4,
        layers: 3,
        auxiliary: true,
        auxiliary_weight: 0.4,
        cutout: Some(16),
        drop_path_prob: 0.2,
        grad_clip: 5.0,
        seed: 1,
    };
    let out = tmp("train");
    let s = run_train::<B>(
        &cfg,
        &RunOptions {
            out: out.clone(),
            stop_after: Some(1),
            ..Default::default()
        },
        &Default::default(),
    )
    .unwrap();
    assert_eq!(s.history.len(), 1);
    let s = run_train::<B>(
        &cfg,
        &RunOptions {
            out: out.clone(),
            resume: true,
            ..Default::default()
        },
        &Default::default(),
    )
    .unwrap();
    assert_eq!(s.history.len(), 2);
    assert!((0.0..=1.0).contains(&s.test_acc));
    assert!(s.history[1].drop_path_prob > 0.0);
    assert!(s.params > 0);
    let lines = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 2);
    std::fs::remove_dir_all(&out).ok();
}

/// The final α of a short search, pinned bit for bit: the safety net of refactorings that must
/// not change behaviour (the structure tidy-up moves the search loop, the weight step and the
/// checkpoints). The bits are those of this project's CI machine (x86-64 with AVX-512, where the
/// kernels take their AVX2/AVX-512 paths); on a CPU without those the floating-point sums differ
/// in the last bits, so there the values are compared to 1e-5 instead. When a change is meant
/// to alter the numbers, print the new bits with `DARTS_PRINT_PIN=1` and update them here.
///
/// Both validation samplings are pinned: `Cycle` (the behaviour before the setting existed, so
/// its bits are those pinned before the tidy-up) and `Redraw` (the reference's, the default).
#[test]
fn short_search_alpha_bits_are_pinned() {
    let Some(data) = crate::common::real_data("cifar-10-batches-bin") else {
        return;
    };
    for (sampling, pinned) in [
        (ValSampling::Cycle, PINNED),
        (ValSampling::Redraw, PINNED_REDRAW),
    ] {
        let out = tmp(&format!("pin-{sampling:?}"));
        let cfg = SearchConfig {
            val_sampling: sampling,
            ..tiny_search(&data)
        };
        let opts = RunOptions {
            out: out.clone(),
            ..Default::default()
        };
        let s = run_search::<B>(&cfg, &opts, &Default::default()).unwrap();
        std::fs::remove_dir_all(&out).ok();
        let bits: Vec<u32> = s.alphas.iter().map(|a| a.to_bits()).collect();
        if std::env::var("DARTS_PRINT_PIN").is_ok() {
            println!("PIN {sampling:?} {bits:#010x?}");
        }
        assert_eq!(bits.len(), pinned.len());
        if crate::common::same_cpu_as_ci() {
            assert_eq!(bits, pinned, "the short search's α changed ({sampling:?})");
        } else {
            for (a, p) in s.alphas.iter().zip(pinned) {
                let p = f32::from_bits(*p);
                assert!((a - p).abs() < 1e-5, "{sampling:?}: {a} vs {p}");
            }
        }
    }
}

/// α (normal then reduce) after `tiny_search` with `ValSampling::Redraw`, as f32 bits.
const PINNED_REDRAW: &[u32] = &[
    0xbacbe8cd, 0x3b0a9be1, 0x3a9fbc8a, 0x3a8f1f54, 0x399e533a, 0xbac7686b, 0xba27da4d, 0x3acc6afc,
    0x394e67e9, 0xb9ddede4, 0x3a487f0c, 0x39d6b155, 0xb6a7ee20, 0x3b1a245e, 0x39d74546, 0x3a83cf20,
    0x39ed02ca, 0xbb0d3e92, 0xbb742165, 0xbad14968, 0x3a4e7fcb, 0x3aca00ae, 0x3b141fa5, 0x3b1b16de,
    0xba6a1c84, 0x3ac2d508, 0x3b1faa00, 0x3b20627b, 0x3931fc49, 0x3b06a827, 0xbb685a59, 0xba80b650,
    0x38f630f7, 0xba89079c, 0xba86c819, 0x3abe6df4, 0x391b45ee, 0x3ad54b40, 0xba068204, 0x3a80ffdb,
    0xba4e8d07, 0xba78b6aa, 0x3abad2a8, 0xba188352, 0xba625617, 0x3af79934, 0x39a61a6e, 0x38119ff2,
    0x3b0b79d4, 0xbad1625e, 0x3903093c, 0x3b1618c5, 0xb9cc3525, 0xbaa2d8af, 0x3a247731, 0x3aa36ac7,
    0x3a8248d2, 0x38e46072, 0x3ac99618, 0xba8eeb94, 0x3a58deca, 0xb9f52b1c, 0x39da404b, 0x394ea47e,
    0xb72b1fa0, 0xb973d996, 0xba71ad52, 0xb988ecce, 0x3a0c07d9, 0xb9952482, 0xba540ed8, 0x3aaca7d3,
    0x3a0f88ff, 0xb943cce4, 0xba5626a5, 0x39cdfdf8, 0x3b01e6cf, 0xba4380bb, 0xba852668, 0x3b40875c,
];

const PINNED: &[u32] = &[
    0xba404bf2, 0x3aaa6e4f, 0x38e0df72, 0x38f7f5b3, 0x3a2cc237, 0xba7057df, 0x3a46e90a, 0x3af7f5da,
    0xba1ff412, 0x3a3fbada, 0x3ab7ef42, 0xb739d8d8, 0x3a5f541e, 0x3b196459, 0xba1c45f1, 0x3a56ca2c,
    0xb912726d, 0xba7fb567, 0xbb3434f7, 0xb981316f, 0x3a59d154, 0x3a8d06c5, 0x3ad44e75, 0x3a1c85b6,
    0x3a1eea9b, 0x3a23c128, 0x3abbd91c, 0x3aabf493, 0x3a7e6ba3, 0x3b53d729, 0xbb3f4d39, 0xba1656d1,
    0x3a1ccab2, 0x3a4ecf08, 0xba839c1c, 0xb999674e, 0xba1f2903, 0x3a8d9604, 0xb9490ced, 0x3a815e62,
    0xbaa8792c, 0x3a399f0d, 0x3a63766c, 0x3a57bcec, 0xba6214e2, 0x38c7794a, 0x3a9dc148, 0xbaf286a5,
    0x3b10a6cd, 0xba969cd7, 0xba6dba08, 0x3ab750fc, 0x3a4721f6, 0xbae0159f, 0x3ab23092, 0x3a378f36,
    0x3a1dc939, 0xb9037793, 0x3a371796, 0xbaa4d469, 0x392056d6, 0x3a000dd6, 0xb9b20840, 0x3b08830e,
    0xb9d24e0e, 0x39aab15e, 0xba3db8c6, 0xba577e40, 0x39c83b42, 0x3b3cae72, 0xba47c457, 0xba72d5b0,
    0xbafebd3a, 0x3ae9c2d0, 0xb9cfb1a0, 0xba8331de, 0x3b152f9e, 0xba20e511, 0xb9035585, 0x3ababf2a,
];

/// A configuration stored before the validation-sampling setting existed (a checkpoint of an
/// earlier version) resumes with the sampling it ran with; a new one gets the reference's.
#[test]
fn val_sampling_defaults_to_the_reference_and_old_configurations_keep_theirs() {
    // (and a configuration stored with `nodes` reads as `steps`)
    assert_eq!(SearchConfig::default().val_sampling, ValSampling::Redraw);
    let mut v = serde_json::to_value(SearchConfig::default()).unwrap();
    assert_eq!(v["val_sampling"], "redraw");
    v.as_object_mut().unwrap().remove("val_sampling");
    // Earlier versions also stored the intermediate nodes as `nodes` (now `steps`).
    let steps = v.as_object_mut().unwrap().remove("steps").unwrap();
    v["nodes"] = steps;
    let old: SearchConfig = serde_json::from_value(v).unwrap();
    assert_eq!(old.val_sampling, ValSampling::Cycle);
    assert_eq!(old.steps, SearchConfig::default().steps);
}
