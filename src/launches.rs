//! Kernel-launch and allocation accounting on the CubeCL backends (`--device wgpu|cuda`), so a
//! change to the GPU path is measurable on a machine without a GPU (wgpu on a software Vulkan
//! driver launches the same kernels).
//!
//! [`LaunchLog::enable`] turns on CubeCL's execution log (one line per kernel launch, no timing,
//! no synchronisation) and its full memory log (one line per buffer reservation, and each new
//! memory page) into a file; [`LaunchLog::counts`] reads the totals so far. Counting a phase is
//! `after - before` around it, with the device synchronised at both ends (read back a value).
//!
//! ```no_run
//! # fn main() -> Result<(), darts::launches::LaunchLogError> {
//! let log = darts::launches::LaunchLog::enable("/tmp/launches.log")?;
//! // ... first use of the wgpu/CUDA device, a synchronising read ...
//! let before = log.counts()?;
//! // ... the phase, then a synchronising read ...
//! let phase = log.counts()? - before;
//! println!("{} launches, {} reservations", phase.launches, phase.reservations);
//! # Ok(()) }
//! ```

use cubecl_runtime::config::{CubeClRuntimeConfig, RuntimeConfig};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Why the launch log could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LaunchLogError {
    /// CubeCL's configuration was already read (a device was used before `enable`).
    #[error("CubeCL's configuration is already in use: enable the launch log before the first use of a wgpu/CUDA device")]
    AlreadyConfigured,
    /// The log file could not be created or read.
    #[error("launch log {path}: {source}")]
    Io {
        /// The log file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Totals read from the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LaunchCounts {
    /// Kernel launches.
    pub launches: u64,
    /// Buffer reservations (allocations served by CubeCL's memory pools).
    pub reservations: u64,
    /// New memory pages requested from the device.
    pub pages: u64,
}

impl std::ops::Sub for LaunchCounts {
    type Output = LaunchCounts;
    fn sub(self, o: LaunchCounts) -> LaunchCounts {
        LaunchCounts {
            launches: self.launches.saturating_sub(o.launches),
            reservations: self.reservations.saturating_sub(o.reservations),
            pages: self.pages.saturating_sub(o.pages),
        }
    }
}

/// CubeCL's launch and memory log, in one file.
#[derive(Debug, Clone)]
pub struct LaunchLog {
    path: PathBuf,
}

impl LaunchLog {
    /// Turn the logs on, writing to `path` (truncated first). Must run before the first use of
    /// a CubeCL device in this process.
    pub fn enable(path: impl AsRef<Path>) -> Result<Self, LaunchLogError> {
        let path = path.as_ref().to_path_buf();
        std::fs::write(&path, "").map_err(|source| LaunchLogError::Io {
            path: path.clone(),
            source,
        })?;
        let config: CubeClRuntimeConfig = serde_json::from_value(serde_json::json!({
            "profiling": { "logger": { "file": path, "append": true, "level": "minimal" } },
            "memory": { "logger": { "file": path, "append": true, "level": "full" } },
        }))
        .expect("a valid CubeCL configuration");
        let slot = CubeClRuntimeConfig::storage();
        {
            let mut state = slot.lock();
            if state.is_some() {
                return Err(LaunchLogError::AlreadyConfigured);
            }
            *state = Some(std::sync::Arc::new(config));
        }
        Ok(Self { path })
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Totals so far. CubeCL writes the log from a background task, so this waits until the
    /// file stops growing (50 ms without change, at most 10 s); synchronise the device first.
    pub fn counts(&self) -> Result<LaunchCounts, LaunchLogError> {
        let io = |source| LaunchLogError::Io {
            path: self.path.clone(),
            source,
        };
        let start = Instant::now();
        let mut last = std::fs::metadata(&self.path).map_err(io)?.len();
        loop {
            std::thread::sleep(Duration::from_millis(50));
            let now = std::fs::metadata(&self.path).map_err(io)?.len();
            if now == last || start.elapsed() > Duration::from_secs(10) {
                break;
            }
            last = now;
        }
        let text = std::fs::read_to_string(&self.path).map_err(io)?;
        Ok(count_lines(&text))
    }
}

fn count_lines(text: &str) -> LaunchCounts {
    let mut c = LaunchCounts::default();
    for line in text.lines() {
        if line.starts_with("Executing ") {
            c.launches += 1;
        } else if line.contains("Reserved memory") {
            c.reservations += 1;
        } else if line.contains("Allocated a new memory page") {
            c.pages += 1;
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_lines_cubecl_writes() {
        let text = "Executing matmul<f32>\n[wgpu] Reserved memory 1.00 KiB using dynamic pool\n\
                    Executing add<f32>\n[wgpu], Allocated a new memory page, current usage: \n  pool 0\n\
                    [wgpu] Reserved memory 256 B using persistent memory\n";
        let c = count_lines(text);
        assert_eq!(
            c,
            LaunchCounts {
                launches: 2,
                reservations: 2,
                pages: 1
            }
        );
        assert_eq!((c - c).launches, 0);
    }
}
