//! The data-parallel flags the run examples share: `--devices` (threads of one process) and
//! `--mpi` (one process per device, launched by `mpirun`).

use darts::device::DeviceSpec;
use darts::parallel::GroupConfig;
use std::time::Duration;

/// Data parallelism.
#[derive(clap::Args, Debug, Clone)]
pub struct ParallelArgs {
    /// Data-parallel devices of this process, comma-separated, one peer (thread) each:
    /// cpu,cpu | cuda:0,cuda:1 | wgpu:0,wgpu:1. Replaces --device.
    #[arg(long, value_delimiter = ',', conflicts_with = "mpi")]
    pub devices: Option<Vec<String>>,
    /// One peer per process of an MPI job (`mpirun -np N ... --mpi`), on --device; needs
    /// `--features mpi`. Rank 0 writes the outputs.
    #[arg(long)]
    pub mpi: bool,
    /// Seconds a peer waits for the others to join.
    #[arg(long, default_value_t = 120.0)]
    pub join_timeout: f64,
    /// Seconds one gradient reduction waits for the other peers (their step included).
    #[arg(long, default_value_t = 1800.0)]
    pub op_timeout: f64,
}

impl ParallelArgs {
    /// The devices of this process (`--devices`, else `--device`).
    pub fn specs(&self, device: &str) -> Result<Vec<DeviceSpec>, String> {
        let list = match &self.devices {
            Some(d) => d.clone(),
            None => vec![device.to_string()],
        };
        list.iter()
            .map(|s| {
                s.parse()
                    .map_err(|e: darts::device::DeviceError| e.to_string())
            })
            .collect()
    }

    /// (join, reduction) timeouts.
    pub fn timeouts(&self) -> Result<(Duration, Duration), String> {
        let secs = |flag: &str, s: f64| {
            if s.is_finite() && s > 0.0 {
                Ok(Duration::from_secs_f64(s))
            } else {
                Err(format!(
                    "--{flag} {s}: must be a positive number of seconds"
                ))
            }
        };
        Ok((
            secs("join-timeout", self.join_timeout)?,
            secs("op-timeout", self.op_timeout)?,
        ))
    }

    /// The thread group of `--devices`, or `None` for a single device.
    pub fn group(&self, local: usize) -> Result<Option<GroupConfig>, String> {
        if local == 1 {
            return Ok(None);
        }
        let (join_timeout, op_timeout) = self.timeouts()?;
        Ok(Some(GroupConfig {
            local_peers: local,
            join_timeout,
            op_timeout,
        }))
    }
}
