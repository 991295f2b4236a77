//! The run directory: opening (new, overwrite, resume), the lock, atomic text outputs, the
//! timing log, and the fault-injection points of the kill tests.

use super::{RunError, RunOptions};
use crate::checkpoint::Checkpoint;
use serde::Serialize;
use std::path::Path;

/// The checkpoint's file name in a run directory.
pub const CHECKPOINT: &str = "checkpoint.safetensors";

pub(crate) fn write(path: &Path, text: &str) -> Result<(), RunError> {
    write_bytes(path, text.as_bytes())
}

/// Write `bytes` to `path` atomically (a temporary file, then a rename).
pub(crate) fn write_bytes(path: &Path, bytes: &[u8]) -> Result<(), RunError> {
    let io = |source| RunError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("part");
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// The run directory's lock, held (an OS file lock on `.lock`) while the run lives.
#[derive(Debug)]
pub(crate) struct RunLock {
    file: std::fs::File,
}

impl Drop for RunLock {
    /// Unlock explicitly rather than by closing: a child process forked meanwhile (by the
    /// program, for any reason) holds a copy of the descriptor until it execs, and closing ours
    /// alone would leave the lock taken until then.
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

/// Files a run writes, which `--overwrite` removes (anything else in the directory is left).
fn is_run_output(name: &str) -> bool {
    matches!(
        name,
        CHECKPOINT | crate::run::cifar::WEIGHTS | "metrics.jsonl" | "config.json" | "genotypes"
    ) || [".tmp", ".part", ".svg", ".png", ".dot", ".py", ".json"]
        .iter()
        .any(|ext| name.ends_with(ext))
}

fn remove_stale(dir: &Path) -> Result<(), RunError> {
    for d in [dir.to_path_buf(), dir.join("genotypes")] {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") || name.ends_with(".part") {
                std::fs::remove_file(e.path()).map_err(|source| RunError::Io {
                    path: e.path(),
                    source,
                })?;
            }
        }
    }
    Ok(())
}

/// A run's configuration as the run directory sees it: what kind of run it is, which settings
/// may change on resume, and its own validation.
pub trait RunConfig: Clone + Serialize + serde::de::DeserializeOwned {
    /// The checkpoint's `kind`.
    const KIND: &'static str;
    /// Settings that may change on resume.
    const MUTABLE: &'static [&'static str];
    /// Check every value; an error names the flag and the value.
    fn validate(&self) -> Result<(), RunError>;
}

/// Write the run's checkpoint atomically: its kind, the last epoch, the configuration and the
/// history in the metadata, and the tensors `save` adds (model, optimiser state).
pub(crate) fn write_checkpoint<C: RunConfig, H: Serialize>(
    out: &Path,
    cfg: &C,
    history: &[H],
    epoch: usize,
    save: impl FnOnce(&mut Checkpoint) -> Result<(), RunError>,
) -> Result<(), RunError> {
    let mut c = Checkpoint::new(serde_json::json!({
        "kind": C::KIND,
        "epoch": epoch,
        "config": cfg,
        "history": history,
    }));
    save(&mut c)?;
    c.write_atomic(out.join(CHECKPOINT))?;
    Ok(())
}

/// What [`start_run`] hands a driver: the configuration in force, the history so far, the
/// checkpoint to resume from and the directory's lock.
pub(crate) type Started<C, H> = (C, Vec<H>, Option<Checkpoint>, RunLock);

/// The start of every driver: validate the configuration (before anything is created), open
/// the run directory ([`open_run`]), validate the configuration in force, and write it to
/// `config.json`.
pub(crate) fn start_run<C: RunConfig, H: serde::de::DeserializeOwned>(
    config: &C,
    opts: &RunOptions,
) -> Result<Started<C, H>, RunError> {
    if !opts.resume {
        config.validate()?;
    }
    let started = open_run::<C, H>(config, opts)?;
    started.0.validate()?;
    let json = serde_json::to_string_pretty(&started.0).expect("configurations serialise");
    write(&opts.out.join("config.json"), &json)?;
    Ok(started)
}

/// Open the output directory: lock it, and either read the checkpoint to resume (its
/// configuration and history then replace `config`) or start a new run, refusing a directory
/// that holds another run unless `opts.overwrite` (which removes the earlier run's files first).
/// Leftover temporary files of an interrupted write are removed either way.
///
/// On resume, the settings in [`RunOptions::given`] are compared with the checkpoint's: those
/// in [`RunConfig::MUTABLE`] (e.g. `epochs`, to extend a run) take the new value, any other that differs is a
/// [`RunError::ResumeConflict`] naming it.
fn open_run<C: RunConfig, H: serde::de::DeserializeOwned>(
    config: &C,
    opts: &RunOptions,
) -> Result<Started<C, H>, RunError> {
    let (dir, kind, mutable) = (&opts.out, C::KIND, C::MUTABLE);
    if !opts.resume {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let lock = lock(dir)?;
        clear_for_new_run(dir, opts.overwrite)?;
        return Ok((config.clone(), Vec::new(), None, lock));
    }
    if !dir.join(CHECKPOINT).is_file() {
        let why = if dir.is_dir() {
            "no checkpoint.safetensors (a run killed before its first epoch ended has none: start it again without --resume, with --overwrite)"
        } else {
            "no such directory"
        };
        return Err(RunError::NoCheckpoint {
            path: dir.clone(),
            why: why.into(),
        });
    }
    let lock = lock(dir)?;
    remove_stale(dir)?;
    let c = Checkpoint::read(dir.join(CHECKPOINT))?;
    let found = c.meta["kind"].as_str().unwrap_or("unknown");
    if found != kind {
        return Err(RunError::Config(format!(
            "{} holds a {found} run, which a {kind} run cannot resume",
            dir.display()
        )));
    }
    let stored = resume_config(&c.meta["config"], config, opts, mutable)?;
    let cfg = serde_json::from_value(stored).map_err(|e| {
        RunError::Config(format!(
            "the checkpoint in {} is of a {kind} run, and its configuration does not fit this one: {e}",
            dir.display()
        ))
    })?;
    let history = serde_json::from_value(c.meta["history"].clone()).map_err(|e| {
        RunError::Config(format!(
            "the metrics history in the {kind} checkpoint {} cannot be read: {e}",
            dir.join(CHECKPOINT).display()
        ))
    })?;
    Ok((cfg, history, Some(c), lock))
}

/// An I/O error about `path`.
fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RunError {
    let path = path.to_path_buf();
    move |source| RunError::Io { path, source }
}

/// Take the directory's lock (`.lock`), or say that another run holds it.
fn lock(dir: &Path) -> Result<RunLock, RunError> {
    let lock_path = dir.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io(&lock_path))?;
    match file.try_lock() {
        Ok(()) => Ok(RunLock { file }),
        Err(std::fs::TryLockError::WouldBlock) => Err(RunError::Locked {
            path: dir.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(io(&lock_path)(e)),
    }
}

/// A new run needs an empty directory; with `overwrite`, an earlier run's files are removed.
fn clear_for_new_run(dir: &Path, overwrite: bool) -> Result<(), RunError> {
    let mut found: Vec<String> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".lock")
        .collect();
    found.sort();
    if !found.is_empty() && !overwrite {
        let shown = found.iter().take(4).cloned().collect::<Vec<_>>().join(", ");
        let more = found.len().saturating_sub(4);
        return Err(RunError::OutputExists {
            path: dir.to_path_buf(),
            found: if more > 0 {
                format!("{shown} and {more} more")
            } else {
                shown
            },
        });
    }
    for name in found.iter().filter(|n| is_run_output(n)) {
        let p = dir.join(name);
        let r = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        r.map_err(io(&p))?;
    }
    Ok(())
}

/// The value of a setting in a serialised configuration; `a.b` names field `b` of field `a`.
fn setting<'a>(config: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    key.split('.').try_fold(config, |v, part| v.get(part))
}

fn setting_mut<'a>(
    config: &'a mut serde_json::Value,
    key: &str,
) -> Option<&'a mut serde_json::Value> {
    key.split('.').try_fold(config, |v, part| v.get_mut(part))
}

/// The checkpoint's configuration with the settings the user gave on resume applied: those in
/// `mutable` replace the stored values, any other that differs is a conflict.
fn resume_config<C: Serialize>(
    stored: &serde_json::Value,
    config: &C,
    opts: &RunOptions,
    mutable: &[&str],
) -> Result<serde_json::Value, RunError> {
    let mut stored = stored.clone();
    let wanted = serde_json::to_value(config).expect("configurations serialise");
    let mut conflicts = Vec::new();
    for key in &opts.given {
        let (Some(new), Some(old)) = (setting(&wanted, key), setting(&stored, key)) else {
            continue;
        };
        if new == old {
            continue;
        }
        if mutable.contains(&key.as_str()) {
            if opts.progress {
                eprintln!("resuming with {key} = {new} (was {old})");
            }
            let new = new.clone();
            if let Some(slot) = setting_mut(&mut stored, key) {
                *slot = new;
            }
        } else if key.contains('.') {
            // A nested setting (e.g. `dropout.output`): named as stored.
            conflicts.push(format!("{key} {new} (the run has {old})"));
        } else {
            let flag = key.replace('_', "-");
            conflicts.push(format!("--{flag} {new} (the run has {old})"));
        }
    }
    if conflicts.is_empty() {
        return Ok(stored);
    }
    let flags: Vec<String> = mutable
        .iter()
        .map(|k| format!("--{}", k.replace('_', "-")))
        .collect();
    Err(RunError::ResumeConflict {
        path: opts.out.clone(),
        conflicts: conflicts.join(", "),
        mutable: flags.join(", "),
    })
}

/// Append the wall time of an epoch to `timing.jsonl` (a log: an epoch repeated after a kill
/// appears twice). Kept apart from `metrics.jsonl` so that the metrics and the checkpoint of a
/// run depend on its configuration only.
pub(crate) fn append_timing(dir: &Path, epoch: usize, seconds: f64) -> Result<(), RunError> {
    use std::io::Write as _;
    let path = dir.join("timing.jsonl");
    let io = |source| RunError::Io {
        path: path.clone(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io)?;
    writeln!(f, "{{\"epoch\": {epoch}, \"seconds\": {seconds:.3}}}").map_err(io)
}

/// Fault injection for the kill tests: when the environment variable `DARTS_FAILPOINT` is
/// `NAME:K`, the process aborts (as a `kill -9` would stop it: no destructors, no flushing) the
/// K-th time it reaches the point `NAME`. Without the variable this is one relaxed atomic load.
pub(crate) fn failpoint(name: &str) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::OnceLock;
    static TARGET: OnceLock<Option<(String, usize)>> = OnceLock::new();
    static HITS: AtomicUsize = AtomicUsize::new(0);
    let target = TARGET.get_or_init(|| {
        let v = std::env::var("DARTS_FAILPOINT").ok()?;
        let (n, k) = v.rsplit_once(':')?;
        Some((n.to_string(), k.parse().ok()?))
    });
    if let Some((n, k)) = target {
        if n == name && HITS.fetch_add(1, Ordering::Relaxed) + 1 == *k {
            eprintln!("DARTS_FAILPOINT: aborting at {name} (hit {k})");
            std::process::abort();
        }
    }
}

/// Write one JSON object per line, atomically.
pub(crate) fn write_jsonl<T: Serialize>(path: &Path, rows: &[T]) -> Result<(), RunError> {
    let mut jsonl = String::new();
    for r in rows {
        jsonl.push_str(&serde_json::to_string(r).expect("serialisable"));
        jsonl.push('\n');
    }
    write(path, &jsonl)
}

/// One line of a run's `metrics.jsonl`: an epoch's record.
pub(crate) trait EpochRecord: Serialize {
    /// The epoch (0-based).
    fn epoch(&self) -> usize;
}

/// A chart of a run: its file stem and title, the y axis label, and its curves (label, metric
/// of an epoch).
pub(crate) type Chart<'a, E> = (&'a str, &'a str, &'a [(&'a str, fn(&E) -> f64)]);

/// Write `metrics.jsonl` and each chart (`STEM.svg` and `STEM.png`, metrics over the epochs,
/// numbered from 1 as the console does).
pub(crate) fn write_metrics<E: EpochRecord>(
    out: &Path,
    history: &[E],
    charts: &[Chart<'_, E>],
) -> Result<(), RunError> {
    write_jsonl(&out.join("metrics.jsonl"), history)?;
    for (stem, y_label, curves) in charts {
        let lines: Vec<(String, Vec<(i32, f64)>)> = curves
            .iter()
            .map(|(label, f)| {
                let points = history
                    .iter()
                    .map(|e| (e.epoch() as i32 + 1, f(e)))
                    .collect();
                (label.to_string(), points)
            })
            .collect();
        write_figure(
            out,
            stem,
            &crate::report::line_chart(stem, y_label, &lines)?,
        )?;
    }
    Ok(())
}

/// Write a figure as `STEM.svg` and `STEM.png`, each atomically.
pub(crate) fn write_figure(
    out: &Path,
    stem: &str,
    figure: &crate::report::Figure,
) -> Result<(), RunError> {
    write(&out.join(format!("{stem}.svg")), &figure.svg)?;
    write_bytes(&out.join(format!("{stem}.png")), &figure.png)
}

/// Write the genotype of epoch `e` (`genotypes/epoch_EEE.json` and `.py`).
pub(crate) fn write_epoch_genotype(
    out: &Path,
    e: usize,
    json: &str,
    python: &str,
) -> Result<(), RunError> {
    write(&out.join(format!("genotypes/epoch_{e:03}.json")), json)?;
    write(
        &out.join(format!("genotypes/epoch_{e:03}.py")),
        &format!("{python}\n"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::PathBuf;

    fn opts(given: &[&str]) -> RunOptions {
        RunOptions {
            out: PathBuf::from("runs/x"),
            given: given.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn resume_compares_nested_settings_and_takes_mutable_ones() {
        let stored = json!({"epochs": 2, "lr": 20.0, "dropout": {"output": 0.75, "x": 0.75}});
        let wanted = json!({"epochs": 5, "lr": 20.0, "dropout": {"output": 0.5, "x": 0.75}});
        // A changed nested setting is a conflict named by its path.
        let err = resume_config(&stored, &wanted, &opts(&["dropout.output"]), &["epochs"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("dropout.output 0.5 (the run has 0.75)"),
            "{err}"
        );
        // Unchanged nested and top-level settings pass; the mutable one is taken.
        let given = opts(&["dropout.x", "lr", "epochs"]);
        let merged = resume_config(&stored, &wanted, &given, &["epochs"]).unwrap();
        assert_eq!(merged["epochs"], json!(5));
        assert_eq!(merged["dropout"]["output"], json!(0.75));
        // A top-level conflict names the flag.
        let changed = json!({"epochs": 2, "lr": 10.0, "dropout": {"output": 0.75, "x": 0.75}});
        let err = resume_config(&stored, &changed, &opts(&["lr"]), &["epochs"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--lr 10.0 (the run has 20.0)"), "{err}");
    }
}
