//! What the bench binaries share: launch accounting on the CubeCL backends, peak memory and
//! medians. Included by `bench_step` and `bench_train_step` with `#[path]` (a folder without
//! `main.rs` is not an example of its own).

use darts::device::DeviceSpec;
use std::path::Path;

/// The launch log when a CubeCL backend is compiled in.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub type Log = darts::launches::LaunchLog;
/// Without a CubeCL backend there is nothing to count.
#[cfg(not(any(feature = "wgpu", feature = "cuda")))]
#[derive(Clone, Debug)]
pub struct Log;

/// (launches, reservations, pages) so far.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub fn counts(log: &Option<Log>) -> Option<[u64; 3]> {
    let c = log.as_ref()?.counts().ok()?;
    Some([c.launches, c.reservations, c.pages])
}
/// (launches, reservations, pages) so far: nothing without a CubeCL backend.
#[cfg(not(any(feature = "wgpu", feature = "cuda")))]
pub fn counts(_: &Option<Log>) -> Option<[u64; 3]> {
    None
}

/// Turn the launch log on (before the device's first use) when `path` is given and the device
/// is a CubeCL one; says why not on stderr otherwise.
pub fn enable_log(path: Option<&Path>, spec: &DeviceSpec) -> Option<Log> {
    let path = path?;
    if matches!(spec, DeviceSpec::Cpu) {
        eprintln!("--count-launches: the cpu backend launches no kernels; ignored");
        return None;
    }
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    {
        match darts::launches::LaunchLog::enable(path) {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("--count-launches: {e}");
                None
            }
        }
    }
    #[cfg(not(any(feature = "wgpu", feature = "cuda")))]
    {
        let _ = path;
        None
    }
}

/// `b - a` as a JSON object, or `null` when nothing was counted.
pub fn diff(a: Option<[u64; 3]>, b: Option<[u64; 3]>) -> String {
    match (a, b) {
        (Some(a), Some(b)) => format!(
            "{{\"launches\": {}, \"reservations\": {}, \"pages\": {}}}",
            b[0] - a[0],
            b[1] - a[1],
            b[2] - a[2]
        ),
        _ => "null".into(),
    }
}

/// The process's peak resident set (MiB), from `/proc/self/status`.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The median (upper one for an even count); NaN for none.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

/// Print the JSON line as is, or as aligned `key: value` rows.
pub fn print_result(line: &str, json: bool) {
    if json {
        println!("{line}");
        return;
    }
    match serde_json::from_str::<serde_json::Value>(line) {
        Ok(serde_json::Value::Object(map)) => {
            for (k, x) in map {
                println!("{k:>22}: {x}");
            }
        }
        _ => println!("{line}"),
    }
}
