//! End to end on real CIFAR-10: a tiny search and a tiny train from scratch produce artefacts
//! that exist and parse, and a search interrupted after an epoch and resumed from its checkpoint
//! ends with exactly the α of an uninterrupted run.

use crate::common::B;
use darts::cifar::{run_search, run_train, RunOptions, SearchConfig, TrainConfig};
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
        nodes: 2,
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
