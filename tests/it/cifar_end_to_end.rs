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
            // Print every sampling's bits before comparing any.
            println!("PIN {sampling:?} {bits:#010x?}");
            continue;
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
    0xbacf267e, 0x3b0c7844, 0x3aa5c2cb, 0x3a94dd49, 0x39853042, 0xbacc4ede, 0xba456ccb, 0x3ad251f8,
    0x3970a6ad, 0xb9dabe28, 0x3a405e5f, 0x39ca4158, 0xb8cc6528, 0x3b1f0e5a, 0x39f4001a, 0x3a667788,
    0x39e7644c, 0xbb0e163b, 0xbb74ebd7, 0xbad31c5e, 0x3a4f2aa9, 0x3ad72f24, 0x3b12e01a, 0x3b1c8f01,
    0xba68b21c, 0x3ac47917, 0x3b209535, 0x3b212da3, 0x3943c6b8, 0x3b081a78, 0xbb6b7c9a, 0xba7f929d,
    0x38d83294, 0xba87961e, 0xba84b5fd, 0x3ac2e94e, 0x390115d7, 0x3acff37c, 0xb9f8b4a1, 0x3a863464,
    0xba642dba, 0xba74b615, 0x3abc96ae, 0xba02c017, 0xba6c49f7, 0x3afd12ad, 0x397f88a8, 0x36d8ba68,
    0x3b0edcfe, 0xbad36516, 0x38e85ea6, 0x3b163ec3, 0xb9b1b7cb, 0xbaa83f75, 0x3a276ba5, 0x3aa32ca9,
    0x3a8229e0, 0x38fbea7f, 0x3aca07e6, 0xba9272d5, 0x3a5c37c0, 0xb9fc8a97, 0x39d92cc1, 0x394cd09e,
    0x3649fac0, 0xb9884663, 0xba793adc, 0xb9877500, 0x3a0f41ff, 0xb97da99c, 0xba4dd636, 0x3aae0b8b,
    0x3a16d222, 0xb9182a30, 0xba5b9f1f, 0x39c7ba47, 0x3b0207f9, 0xba3bc2a1, 0xba8adb85, 0x3b3fb05a,
];

const PINNED: &[u32] = &[
    0xba404be3, 0x3aaa6e4f, 0x38e0df65, 0x38f7f594, 0x3a2cc236, 0xba7057d9, 0x3a46e90b, 0x3af7f5da,
    0xba1ff40d, 0x3a3fbadc, 0x3ab7ef43, 0xb739d700, 0x3a5f5426, 0x3b196458, 0xba1c45f0, 0x3a56ca24,
    0xb9127268, 0xba7fb567, 0xbb3434f7, 0xb981316e, 0x3a59d157, 0x3a8d06c6, 0x3ad44e75, 0x3a1c85b8,
    0x3a1eea9d, 0x3a23c129, 0x3abbd91b, 0x3aabf492, 0x3a7e6b9e, 0x3b53d729, 0xbb3f4d39, 0xba1656d0,
    0x3a1ccab1, 0x3a4ecf06, 0xba839c1d, 0xb999675e, 0xba1f2908, 0x3a8d9608, 0xb9490ce4, 0x3a815e63,
    0xbaa87928, 0x3a399f0e, 0x3a637660, 0x3a57bcec, 0xba6214e6, 0x38c77960, 0x3a9dc147, 0xbaf286a7,
    0x3b10a6cc, 0xba969cd4, 0xba6dba04, 0x3ab750fc, 0x3a472204, 0xbae015a2, 0x3ab23092, 0x3a378f1d,
    0x3a1dc93d, 0xb903778e, 0x3a371796, 0xbaa4d46c, 0x392056de, 0x3a000dd4, 0xb9b20841, 0x3b088310,
    0xb9d24e20, 0x39aab16a, 0xba3db8bc, 0xba577e4a, 0x39c83b34, 0x3b3cae72, 0xba47c45a, 0xba72d5b0,
    0xbafebd38, 0x3ae9c2cc, 0xb9cfb196, 0xba8331dd, 0x3b152f9d, 0xba20e4fc, 0xb90355ba, 0x3ababf2b,
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
