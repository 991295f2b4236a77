//! Failure behaviour (issue #19): non-finite metrics and steps, run directories (refusal, lock,
//! overwrite, resume settings), checkpoint integrity, validation of settings, and parsers and
//! readers that never panic on hostile input.

use crate::common::{alpha_vec, batch, seeded, B};
use burn::module::Module;
use darts::bilevel::{ArchitectConfig, Bilevel, NonFinitePolicy, WeightConfig};
use darts::checkpoint::Checkpoint;
use darts::cifar::{
    run_search, run_train, RunError, RunOptions, SearchConfig, SearchEpoch, TrainConfig,
};
use darts::genotype::{catalog, parse_conv_any, parse_recurrent_any, python, Gene, Genotype};
use darts::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("darts-robust-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn tiny_search(data: &Path, epochs: usize) -> SearchConfig {
    SearchConfig {
        data: data.to_path_buf(),
        limit_images: Some(32),
        batch_size: 8,
        epochs,
        init_channels: 2,
        layers: 3,
        steps: 2,
        seed: 5,
        ..Default::default()
    }
}

/// A tiny derived-network training on `data` (no image limits).
fn tiny_train(data: &Path) -> TrainConfig {
    TrainConfig {
        data: data.to_path_buf(),
        genotype: catalog::conv("DARTS_V2").unwrap(),
        genotype_source: "DARTS_V2".into(),
        limit_images: None,
        limit_test: None,
        batch_size: 8,
        lr: 0.025,
        momentum: 0.9,
        weight_decay: 3e-4,
        epochs: 1,
        init_channels: 4,
        layers: 3,
        auxiliary: false,
        auxiliary_weight: 0.4,
        cutout: None,
        drop_path_prob: 0.0,
        grad_clip: 5.0,
        seed: 1,
    }
}

fn opts(out: &Path) -> RunOptions {
    RunOptions {
        out: out.to_path_buf(),
        ..Default::default()
    }
}

fn resume(out: &Path, given: &[&str]) -> RunOptions {
    RunOptions {
        out: out.to_path_buf(),
        resume: true,
        given: given.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

// ---------------------------------------------------------------- 1: non-finite metrics

#[test]
fn non_finite_metrics_round_trip_through_json() {
    let rec = SearchEpoch {
        epoch: 0,
        lr: 0.025,
        train_loss: f64::NAN,
        train_acc: 0.5,
        arch_val_loss: f64::INFINITY,
        val_loss: f64::NEG_INFINITY,
        val_acc: 0.25,
        steps: 3,
        skipped_steps: 1,
        seconds: 1.5,
        genotype: catalog::conv("DARTS_V2").unwrap(),
        genotype_python: String::new(),
        alphas_normal: vec![vec![0.5, f64::NAN]],
        alphas_reduce: vec![vec![1.0]],
        edge_weights_normal: None,
        edge_weights_reduce: None,
        schedule: None,
    };
    // The drivers store the history through `serde_json::json!` (a `Value`), as here.
    let v = serde_json::json!({ "history": [rec] });
    let back: Vec<SearchEpoch> = serde_json::from_value(v["history"].clone()).unwrap();
    assert!(back[0].train_loss.is_nan());
    assert_eq!(back[0].arch_val_loss, f64::INFINITY);
    assert_eq!(back[0].val_loss, f64::NEG_INFINITY);
    assert!(back[0].alphas_normal[0][1].is_nan());
    assert_eq!(back[0].lr, 0.025);
    // Files written before this fix hold `null` there: they read as NaN.
    let mut old = serde_json::to_value(&back[0]).unwrap();
    old["train_loss"] = serde_json::Value::Null;
    let old: SearchEpoch = serde_json::from_value(old).unwrap();
    assert!(old.train_loss.is_nan());
}

#[test]
fn a_nan_in_the_checkpoint_history_does_not_block_resume() {
    let Some(data) = crate::common::real_data("cifar-10-batches-bin") else {
        return;
    };
    let out = tmp("nan-history");
    let cfg = tiny_search(&data, 2);
    let mut o = opts(&out);
    o.stop_after = Some(1);
    run_search::<B>(&cfg, &o, &Default::default()).unwrap();
    // What the earlier version wrote for a NaN metric: `null`.
    let path = out.join("checkpoint.safetensors");
    let mut c = Checkpoint::read(&path).unwrap();
    c.meta["history"][0]["val_loss"] = serde_json::Value::Null;
    c.write_atomic(&path).unwrap();
    let s = run_search::<B>(&cfg, &resume(&out, &[]), &Default::default()).unwrap();
    assert_eq!(s.history.len(), 2);
    assert!(s.history[0].val_loss.is_nan());
    // And the NaN is written so that it reads back (not as `null`).
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert!(metrics
        .lines()
        .next()
        .unwrap()
        .contains("\"val_loss\":\"NaN\""));
    std::fs::remove_dir_all(&out).ok();
}

// ---------------------------------------------------------------- 2: divergence

#[test]
fn a_diverging_search_stops_with_a_clear_error_and_writes_no_genotype() {
    let Some(data) = crate::common::real_data("cifar-10-batches-bin") else {
        return;
    };
    let out = tmp("diverge");
    let cfg = SearchConfig {
        arch_lr: 1e300, // inf in f32: α is not finite after the first architecture step
        ..tiny_search(&data, 1)
    };
    let e = run_search::<B>(&cfg, &opts(&out), &Default::default()).unwrap_err();
    match &e {
        RunError::Diverged { epoch, step, .. } => assert_eq!((*epoch, *step), (1, 1), "{e}"),
        other => panic!("expected a divergence error, got {other}"),
    }
    assert!(e.to_string().contains("epoch 1, step 1"), "{e}");
    assert!(!out.join("genotype.json").exists());
    assert!(!out.join("checkpoint.safetensors").exists());
    // Skipping every step is a divergence too.
    let out2 = tmp("diverge-skip");
    let skip = SearchConfig {
        skip_non_finite_steps: true,
        ..cfg
    };
    let e = run_search::<B>(&skip, &opts(&out2), &Default::default()).unwrap_err();
    assert!(e.to_string().contains("every step"), "{e}");
    assert!(!out2.join("genotype.json").exists());
    std::fs::remove_dir_all(&out).ok();
    std::fs::remove_dir_all(&out2).ok();
}

#[test]
fn skip_policy_undoes_exactly_the_bad_step() {
    let dev = Default::default();
    let net = || {
        seeded(11, || {
            SearchNetworkConfig {
                channels: 2,
                layers: 3,
                steps: 2,
                multiplier: 2,
                ..Default::default()
            }
            .init::<B, _, _>(&DartsSpace::default(), Softmax, &dev)
            .unwrap()
        })
    };
    let mk = |model| {
        let mut s = Bilevel::new(
            model,
            WeightConfig::darts_cifar(2),
            ArchitectConfig::default(),
        );
        s.on_non_finite = NonFinitePolicy::SkipStep;
        s
    };
    let (t1, t3) = (batch(2, 8, 0.0), batch(2, 8, 0.3));
    let (v1, v2, v3) = (batch(2, 8, 0.1), batch(2, 8, 0.2), batch(2, 8, 0.4));
    let mut poisoned = batch(2, 8, 0.5);
    poisoned.images = poisoned.images.clone() * f32::NAN;
    // With the poisoned batch in the middle: skipped, and the state is as if it never came.
    let mut a = mk(net());
    let sa = a.run_epoch(
        0,
        vec![t1.clone(), poisoned, t3.clone()],
        &mut vec![v1.clone(), v2, v3.clone()].into_iter(),
        |_| {},
    );
    assert_eq!((sa.steps, sa.skipped), (2, 1));
    assert!(sa.non_finite.is_none());
    let mut b = mk(net());
    let sb = b.run_epoch(0, vec![t1, t3], &mut vec![v1, v3].into_iter(), |_| {});
    assert_eq!((sb.steps, sb.skipped), (2, 0));
    assert_eq!(alpha_vec(&a.model), alpha_vec(&b.model));
    let w = |m: &SearchNetwork<B, DartsOp<B>>| {
        darts::checkpoint::module_tensors::<B, _>(&m.clone().no_grad())
            .into_iter()
            .flat_map(|t| t.2)
            .collect::<Vec<f32>>()
    };
    assert_eq!(w(&a.model), w(&b.model));
    assert_eq!(sa.train_loss, sb.train_loss);
}

// ---------------------------------------------------------------- 3, 4, 6, 7: run directories

#[test]
fn run_directories_refuse_reuse_lock_overwrite_and_resume_with_settings() {
    let Some(data) = crate::common::real_data("cifar-10-batches-bin") else {
        return;
    };
    let out = tmp("rundir");
    let cfg = tiny_search(&data, 1);
    run_search::<B>(&cfg, &opts(&out), &Default::default()).unwrap();
    assert!(out.join("genotype.json").exists());
    // 3: a second plain run refuses the directory and leaves it untouched.
    let before = std::fs::read(out.join("checkpoint.safetensors")).unwrap();
    let e = run_search::<B>(&cfg, &opts(&out), &Default::default()).unwrap_err();
    assert!(matches!(e, RunError::OutputExists { .. }), "{e}");
    assert!(e.to_string().contains("--overwrite"), "{e}");
    assert_eq!(
        std::fs::read(out.join("checkpoint.safetensors")).unwrap(),
        before
    );
    // 7: resume with a longer schedule extends the run; a structural flag is refused.
    let longer = SearchConfig {
        epochs: 2,
        ..cfg.clone()
    };
    let s = run_search::<B>(&longer, &resume(&out, &["epochs"]), &Default::default()).unwrap();
    assert_eq!(s.history.len(), 2);
    assert!(out.join("genotypes/epoch_001.json").exists());
    let wider = SearchConfig {
        init_channels: 4,
        ..longer.clone()
    };
    let e = run_search::<B>(
        &wider,
        &resume(&out, &["init_channels", "epochs"]),
        &Default::default(),
    )
    .unwrap_err();
    assert!(matches!(e, RunError::ResumeConflict { .. }), "{e}");
    assert!(
        e.to_string().contains("--init-channels 4 (the run has 2)"),
        "{e}"
    );
    // A flag given with the value the run already has is fine.
    run_search::<B>(
        &longer,
        &resume(&out, &["init_channels"]),
        &Default::default(),
    )
    .unwrap();
    // 4: a second run while the first holds the lock fails.
    let lock = std::fs::File::open(out.join(".lock")).unwrap();
    lock.lock().unwrap();
    let e = run_search::<B>(&longer, &resume(&out, &[]), &Default::default()).unwrap_err();
    assert!(matches!(e, RunError::Locked { .. }), "{e}");
    lock.unlock().unwrap();
    drop(lock);
    // 6: stale temporary files of an interrupted write go on start.
    std::fs::write(out.join("checkpoint.tmp"), b"half").unwrap();
    std::fs::write(out.join("genotypes/epoch_000.json.part"), b"half").unwrap();
    run_search::<B>(&longer, &resume(&out, &[]), &Default::default()).unwrap();
    assert!(!out.join("checkpoint.tmp").exists());
    assert!(!out.join("genotypes/epoch_000.json.part").exists());
    // 3: --overwrite starts afresh and removes the old run's per-epoch genotypes.
    let mut o = opts(&out);
    o.overwrite = true;
    let s = run_search::<B>(&cfg, &o, &Default::default()).unwrap();
    assert_eq!(s.history.len(), 1);
    assert!(!out.join("genotypes/epoch_001.json").exists());
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn resume_needs_a_checkpoint_of_the_same_kind_and_creates_nothing() {
    let Some(data) = crate::common::real_data("cifar-10-batches-bin") else {
        return;
    };
    let missing = tmp("missing");
    let e = run_search::<B>(
        &tiny_search(&data, 1),
        &resume(&missing, &[]),
        &Default::default(),
    )
    .unwrap_err();
    assert!(matches!(e, RunError::NoCheckpoint { .. }), "{e}");
    assert!(!missing.exists(), "--resume created {}", missing.display());
    let out = tmp("kind");
    run_search::<B>(&tiny_search(&data, 1), &opts(&out), &Default::default()).unwrap();
    let train = TrainConfig {
        limit_images: Some(16),
        limit_test: Some(16),
        ..tiny_train(&data)
    };
    let e = run_train::<B>(&train, &resume(&out, &[]), &Default::default()).unwrap_err();
    assert!(e.to_string().contains("holds a cifar10_search run"), "{e}");
    std::fs::remove_dir_all(&out).ok();
}

// ---------------------------------------------------------------- 8, 9, 12, 13: validation

#[test]
fn bad_settings_are_errors_naming_the_flag_before_anything_is_written() {
    let data = PathBuf::from("/nonexistent");
    let cases: Vec<(SearchConfig, &str)> = vec![
        (
            SearchConfig {
                epochs: 0,
                ..tiny_search(&data, 1)
            },
            "--epochs 0",
        ),
        (
            SearchConfig {
                batch_size: 0,
                ..tiny_search(&data, 1)
            },
            "--batch-size 0",
        ),
        (
            SearchConfig {
                lr: -1.0,
                ..tiny_search(&data, 1)
            },
            "--lr -1",
        ),
        (
            SearchConfig {
                init_channels: 0,
                ..tiny_search(&data, 1)
            },
            "--init-channels 0",
        ),
        (
            SearchConfig {
                train_portion: 1.0,
                ..tiny_search(&data, 1)
            },
            "--train-portion 1",
        ),
        (
            SearchConfig {
                momentum: f64::NAN,
                ..tiny_search(&data, 1)
            },
            "--momentum NaN",
        ),
    ];
    for (cfg, flag) in cases {
        let out = tmp("bad-settings");
        let e = run_search::<B>(&cfg, &opts(&out), &Default::default()).unwrap_err();
        assert!(e.to_string().contains(flag), "{flag}: {e}");
        assert!(!out.exists(), "{flag}: the output directory was created");
    }
    let train = |f: &dyn Fn(&mut TrainConfig)| {
        let mut c = tiny_train(&data);
        f(&mut c);
        c
    };
    for (cfg, flag) in [
        (train(&|c| c.init_channels = 0), "--init-channels 0"),
        (train(&|c| c.drop_path_prob = 4.0), "--drop-path-prob 4"),
        (train(&|c| c.epochs = 0), "--epochs 0"),
        (train(&|c| c.batch_size = 0), "--batch-size 0"),
        (
            train(&|c| c.genotype.normal_concat.clear()),
            "concat list is empty",
        ),
    ] {
        let out = tmp("bad-train");
        let e = run_train::<B>(&cfg, &opts(&out), &Default::default()).unwrap_err();
        assert!(e.to_string().contains(flag), "{flag}: {e}");
        assert!(!out.exists(), "{flag}: the output directory was created");
    }
}

#[test]
fn an_empty_concat_is_invalid() {
    let mut g = catalog::conv("DARTS_V2").unwrap();
    g.reduce_concat.clear();
    assert!(g
        .validate()
        .unwrap_err()
        .to_string()
        .contains("reduce cell"));
    let mut r = catalog::recurrent("DARTS_V2").unwrap();
    r.concat.clear();
    assert!(r.validate().is_err());
    assert!(parse_recurrent_any(&python::recurrent_to_python(&r)).is_err());
}

// ---------------------------------------------------------------- 5, 14: checkpoints

fn sample_checkpoint() -> Checkpoint {
    let mut c = Checkpoint::new(serde_json::json!({"kind": "test", "epoch": 1, "history": []}));
    c.push("w", vec![2, 3], (0..6).map(|i| i as f32).collect());
    c.push("alpha", vec![14, 8], vec![0.125; 112]);
    c
}

#[test]
fn a_changed_byte_anywhere_in_a_checkpoint_is_an_error() {
    let dir = tmp("ckpt-crc");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.safetensors");
    sample_checkpoint().write_atomic(&path).unwrap();
    let good = std::fs::read(&path).unwrap();
    let back = Checkpoint::read(&path).unwrap();
    assert_eq!(back.get("alpha").unwrap().2[5], 0.125);
    assert_eq!(back.meta["epoch"], 1);
    let n = good.len();
    let header = 8 + u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    // Every byte of the data section, and a spread of header bytes (lengths, names, shapes,
    // offsets, the metadata, the padding).
    let at: Vec<usize> = (0..header).step_by(7).chain(header..n).collect();
    for at in at {
        let mut bad = good.clone();
        bad[at] ^= 0x40;
        std::fs::write(&path, &bad).unwrap();
        let e = Checkpoint::read(&path).unwrap_err().to_string();
        assert!(e.contains("damaged"), "byte {at}: {e}");
    }
    // A value changed in place is caught by the checksum, not by the container.
    let mut bad = good.clone();
    bad[n - 1] ^= 1;
    std::fs::write(&path, &bad).unwrap();
    let e = Checkpoint::read(&path).unwrap_err().to_string();
    assert!(e.contains("checksum mismatch"), "{e}");
    // The first darts layout is named, not misread.
    std::fs::write(&path, b"DARTSCK2\0\0\0\0\0\0\0\0").unwrap();
    let e = Checkpoint::read(&path).unwrap_err().to_string();
    assert!(e.contains("first darts layout"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_checkpoint_of_a_later_format_version_says_so() {
    let dir = tmp("ckpt-version");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.safetensors");
    sample_checkpoint().write_atomic(&path).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    // The header is a JSON string inside the safetensors metadata: its quotes are escaped.
    let from = format!("\\\"version\\\":{}", darts::checkpoint::VERSION);
    let to = format!("\\\"version\\\":{}", darts::checkpoint::VERSION + 1);
    assert_eq!(from.len(), to.len());
    let at = bytes
        .windows(from.len())
        .position(|w| w == from.as_bytes())
        .expect("the version field");
    bytes[at..at + to.len()].copy_from_slice(to.as_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let e = Checkpoint::read(&path).unwrap_err();
    assert!(
        matches!(e, darts::checkpoint::CheckpointError::Version { found, .. } if found == darts::checkpoint::VERSION + 1),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// Seeded mutations of a valid file (bit flips, byte runs, truncation, extension, a forged
/// header length, a huge shape): reading must return, never panic or abort.
#[test]
fn checkpoint_reader_survives_thousands_of_mutated_files() {
    let dir = tmp("ckpt-fuzz");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.safetensors");
    sample_checkpoint().write_atomic(&path).unwrap();
    let good = std::fs::read(&path).unwrap();
    let mut rng = StdRng::seed_from_u64(19);
    let (mut ok, mut err) = (0, 0);
    for _ in 0..3000 {
        let mut b = good.clone();
        match rng.random_range(0..6) {
            0 => {
                for _ in 0..rng.random_range(1..8) {
                    let i = rng.random_range(0..b.len());
                    b[i] ^= 1 << rng.random_range(0..8);
                }
            }
            1 => {
                let i = rng.random_range(0..8);
                b[i] = rng.random();
            }
            2 => b.truncate(rng.random_range(0..b.len())),
            3 => b.extend((0..rng.random_range(1..64)).map(|_| rng.random::<u8>())),
            4 => {
                // A shape in the header made huge.
                let s = String::from_utf8_lossy(&b).into_owned();
                let s = s.replacen("[14,8]", "[18446744073709551615,2]", 1);
                b = s.into_bytes();
            }
            _ => {
                let i = rng.random_range(8..b.len());
                let v: u8 = rng.random();
                let end = (i + 16).min(b.len());
                for x in &mut b[i..end] {
                    *x = v;
                }
            }
        }
        std::fs::write(&path, &b).unwrap();
        match Checkpoint::read(&path) {
            Ok(_) => ok += 1,
            Err(_) => err += 1,
        }
    }
    assert!(err > 2000, "{ok} accepted, {err} rejected");
    std::fs::remove_dir_all(&dir).ok();
}

// ---------------------------------------------------------------- 11: genotype parsers

#[test]
fn genotype_parser_bounds_ranges_and_nesting() {
    for src in [
        "Genotype(normal=[], normal_concat=range(0, 18446744073709551615), reduce=[], reduce_concat=[])",
        "Genotype(normal=[], normal_concat=range(0, 1000000000000), reduce=[], reduce_concat=[])",
        "Genotype(normal=[], normal_concat=range(2, 400000000), reduce=[], reduce_concat=[])",
    ] {
        let t0 = std::time::Instant::now();
        let e = python::parse_conv(src).unwrap_err();
        assert!(e.to_string().contains("more than"), "{e}");
        assert!(t0.elapsed().as_secs() < 2);
    }
    let deep = format!("Genotype(normal={}", "[".repeat(200_000));
    let e = python::parse_conv(&deep).unwrap_err();
    assert!(e.to_string().contains("nested"), "{e}");
    let deep_list = format!(
        "Genotype(normal={}[]{}",
        "list(".repeat(100_000),
        ")".repeat(100_000)
    );
    assert!(python::parse_conv(&deep_list).is_err());
}

#[test]
fn genotype_parsers_survive_thousands_of_mutated_inputs() {
    let conv: Vec<String> = catalog::conv_names()
        .iter()
        .map(|n| python::to_python(&catalog::conv(n).unwrap()))
        .collect();
    let rec: Vec<String> = catalog::recurrent_names()
        .iter()
        .map(|n| python::recurrent_to_python(&catalog::recurrent(n).unwrap()))
        .collect();
    let json = catalog::conv("DARTS_V2").unwrap().to_json();
    let alphabet: Vec<char> = "()[],'\"=0123456789 \n#_abcrangelistGenotype{}:-\u{e9}"
        .chars()
        .collect();
    let mut rng = StdRng::seed_from_u64(11);
    let mut parsed = 0;
    for k in 0..4000 {
        let base = match k % 3 {
            0 => &conv[k % conv.len()],
            1 => &rec[k % rec.len()],
            _ => &json,
        };
        let mut s: Vec<char> = base.chars().collect();
        for _ in 0..rng.random_range(1..6) {
            let i = rng.random_range(0..=s.len());
            match rng.random_range(0..3) {
                0 if i < s.len() => {
                    s.remove(i);
                }
                1 => s.insert(i, alphabet[rng.random_range(0..alphabet.len())]),
                _ if i < s.len() => s[i] = alphabet[rng.random_range(0..alphabet.len())],
                _ => {}
            }
        }
        let s: String = s.into_iter().collect();
        if parse_conv_any(&s).is_ok() {
            parsed += 1;
        }
        let _ = parse_recurrent_any(&s);
    }
    assert!(parsed < 4000);
    // The parsers still read the unmutated texts.
    assert!(conv.iter().all(|s| python::parse_conv(s).is_ok()));
    let g: Genotype = parse_conv_any(&json).unwrap();
    assert_eq!(g.normal[0], Gene::new("sep_conv_3x3", 0));
}

// ---------------------------------------------------------------- 6, 10: kills and resume

/// The child of `killed_runs_resume_to_the_same_directory`: a search into `DARTS_CHILD_OUT`
/// (`DARTS_CHILD_MODE`: `new`, `resume` or `overwrite`), which `DARTS_FAILPOINT` may abort at a
/// chosen point. Not a test of its own. Every run of the kill test happens in a child process
/// of its own, so no other test's threads share its random generator.
#[test]
#[ignore = "run as a child process by killed_runs_resume_to_the_same_directory"]
fn child_search_run() {
    let (Ok(out), Some(data)) = (
        std::env::var("DARTS_CHILD_OUT"),
        crate::common::real_data("cifar-10-batches-bin"),
    ) else {
        return;
    };
    let out = Path::new(&out);
    let o = match std::env::var("DARTS_CHILD_MODE").as_deref() {
        Ok("resume") => resume(out, &[]),
        Ok("overwrite") => RunOptions {
            overwrite: true,
            ..opts(out)
        },
        _ => opts(out),
    };
    run_search::<B>(&tiny_search(&data, 2), &o, &Default::default()).unwrap();
}

/// Run `child_search_run` in a child process; whether it exited successfully.
fn child(out: &Path, mode: &str, failpoint: Option<&str>) -> bool {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--ignored",
        "--exact",
        "robustness::child_search_run",
        "--test-threads",
        "1",
    ])
    .env("DARTS_CHILD_OUT", out)
    .env("DARTS_CHILD_MODE", mode)
    .env_remove("DARTS_FAILPOINT")
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    if let Some(p) = failpoint {
        cmd.env("DARTS_FAILPOINT", p);
    }
    cmd.status().unwrap().success()
}

/// Every file of a run directory except the timing log and the lock, by relative path.
fn run_files(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            if rel != "timing.jsonl" && rel != ".lock" {
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// A search killed (abort, as `kill -9`) at each point of an epoch's commit — after the
/// epoch's outputs, between the checkpoint's fsync and its rename, right after the rename — and
/// resumed ends with a run directory equal to an uninterrupted run's byte for byte: checkpoint,
/// metrics (floats included), per-epoch genotypes, plots, final genotype.
#[test]
fn killed_runs_resume_to_the_same_directory() {
    if crate::common::real_data("cifar-10-batches-bin").is_none() {
        return;
    }
    let reference = tmp("kill-ref");
    assert!(
        child(&reference, "new", None),
        "the uninterrupted run failed"
    );
    let want = run_files(&reference);
    assert!(want.contains_key("genotypes/epoch_001.json") && want.contains_key("genotype.json"));
    for point in [
        "epoch_outputs_written:1",
        "checkpoint_before_rename:1",
        "checkpoint_committed:1",
        "epoch_outputs_written:2",
        "checkpoint_before_rename:2",
        "checkpoint_committed:2",
    ] {
        let out = tmp(&format!("kill-{}", point.replace(':', "-")));
        assert!(
            !child(&out, "new", Some(point)),
            "{point}: the child was not killed"
        );
        // Killed before the first checkpoint: nothing to resume, start again.
        let mode = if out.join("checkpoint.safetensors").exists() {
            "resume"
        } else {
            "overwrite"
        };
        assert!(child(&out, mode, None), "{point}: the {mode} run failed");
        let got = run_files(&out);
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "{point}: different files"
        );
        for (k, v) in &want {
            assert!(
                got[k] == *v,
                "{point}: {k} differs from the uninterrupted run's"
            );
        }
        std::fs::remove_dir_all(&out).ok();
    }
    std::fs::remove_dir_all(&reference).ok();
}

#[test]
fn ptb_settings_that_would_do_no_work_are_errors() {
    use darts::ptb::{run_ptb_search, run_ptb_train, PtbSearchConfig, PtbTrainConfig};
    let search = |f: &dyn Fn(&mut PtbSearchConfig)| {
        let mut c = PtbSearchConfig::default();
        f(&mut c);
        c
    };
    for (cfg, flag) in [
        (
            search(&|c| c.common.max_steps_per_epoch = Some(0)),
            "--max-steps 0",
        ),
        (search(&|c| c.common.epochs = 0), "--epochs 0"),
        (search(&|c| c.common.lr = -1.0), "--lr -1"),
    ] {
        let out = tmp("ptb-bad");
        let e = run_ptb_search::<B>(&cfg, &opts(&out), &Default::default()).unwrap_err();
        assert!(e.to_string().contains(flag), "{flag}: {e}");
        assert!(!out.exists());
    }
    let mut t = PtbTrainConfig::new(catalog::recurrent("DARTS_V2").unwrap(), "DARTS_V2");
    t.common.epochs = 0;
    let out = tmp("ptb-train-bad");
    let e = run_ptb_train::<B>(&t, &opts(&out), &Default::default()).unwrap_err();
    assert!(e.to_string().contains("--epochs 0"), "{e}");
    t.common.epochs = 1;
    t.genotype.concat.clear();
    let e = run_ptb_train::<B>(&t, &opts(&out), &Default::default()).unwrap_err();
    assert!(e.to_string().contains("concat list is empty"), "{e}");
    assert!(!out.exists());
}

/// A checkpoint loads into a model of its own configuration, bit for bit, and into one of
/// another (layers, channels, op set) as an error naming the tensors that do not fit.
#[test]
fn a_checkpoint_of_another_configuration_is_an_error_naming_the_mismatch() {
    let dev = Default::default();
    let net = |channels: usize, layers: usize, space: DartsSpace| {
        seeded(5, || {
            SearchNetworkConfig {
                channels,
                layers,
                steps: 2,
                multiplier: 2,
                ..Default::default()
            }
            .init::<B, _, _>(&space, Softmax, &dev)
            .unwrap()
        })
    };
    let mut c = Checkpoint::new(serde_json::json!({}));
    let saved = net(4, 4, DartsSpace::default());
    darts::checkpoint::save_module(&mut c, &saved).unwrap();
    assert!(
        c.get("model.alphas_normal").is_some(),
        "α by its module path"
    );
    let bytes = c.to_bytes().unwrap();
    let dir = tmp("ckpt-mismatch");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.safetensors");
    std::fs::write(&path, bytes).unwrap();
    let c = Checkpoint::read(&path).unwrap();
    let values = |m: &SearchNetwork<B, DartsOp<B>>| {
        darts::checkpoint::module_tensors::<B, _>(m)
            .into_iter()
            .map(|t| t.2)
            .collect::<Vec<_>>()
    };
    // Another seed: every value differs before loading.
    let fresh = seeded(6, || {
        SearchNetworkConfig {
            channels: 4,
            layers: 4,
            steps: 2,
            multiplier: 2,
            ..Default::default()
        }
        .init::<B, _, _>(&DartsSpace::default(), Softmax, &dev)
        .unwrap()
    });
    assert_ne!(values(&fresh), values(&saved));
    let loaded = darts::checkpoint::load_module(&c, fresh).unwrap();
    assert_eq!(values(&loaded), values(&saved));

    let err = |m| {
        darts::checkpoint::load_module(&c, m)
            .unwrap_err()
            .to_string()
    };
    // Layers 3 and 4 put their reduction cells at the same places (1 and 2).
    let e = err(net(4, 5, DartsSpace::default()));
    assert!(e.contains("the checkpoint lacks model.cells."), "{e}");
    let e = err(net(4, 3, DartsSpace::default()));
    assert!(e.contains("the model has no model.cells.3."), "{e}");
    let e = err(net(8, 4, DartsSpace::default()));
    assert!(
        e.contains("model.stem_conv.weight has shape [12, 3, 3, 3] in the checkpoint, [24, 3, 3, 3] in the model"),
        "{e}"
    );
    let mut fewer = DartsSpace::default();
    fewer.primitives.truncate(5);
    let e = err(net(4, 4, fewer));
    assert!(
        e.contains("model.alphas_normal has shape [5, 8] in the checkpoint, [5, 5] in the model"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
