//! The data-parallel flags the run examples share: `--devices` (threads of one process) and
//! `--mpi` (one process per device, launched by `mpirun`).

use darts::cifar::RunError;
use darts::device::DeviceSpec;
use darts::parallel::GroupConfig;
use std::time::Duration;

/// How a run goes: one device, threads of one process, or one process of an MPI job.
pub enum Mode {
    Single,
    Threads(GroupConfig),
    Mpi(Duration, Duration),
}

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

    /// The mode for `local` devices of this process.
    pub fn mode(&self, local: usize) -> Result<Mode, String> {
        if self.mpi {
            let (j, o) = self.timeouts()?;
            Ok(Mode::Mpi(j, o))
        } else {
            Ok(self.group(local)?.map_or(Mode::Single, Mode::Threads))
        }
    }
}

/// Whether this process reports (not a rank > 0 of an MPI job; Open MPI and MPICH export the
/// rank before MPI is up).
pub fn is_lead() -> bool {
    ["OMPI_COMM_WORLD_RANK", "PMI_RANK"]
        .iter()
        .find_map(|v| std::env::var(v).ok())
        .is_none_or(|r| r == "0")
}

/// Join the MPI job (timeouts `join`, `op`), run `f` with this process's peer and whether it
/// is rank 0, leave.
#[cfg(feature = "mpi")]
pub fn with_mpi<B: burn::tensor::backend::Backend, T>(
    join: Duration,
    op: Duration,
    f: impl FnOnce(darts::bilevel::sync::SharedSync<B>, bool) -> Result<T, RunError>,
) -> Result<T, RunError> {
    let peer = std::sync::Arc::new(darts::parallel::mpi::Mpi::<B>::join(join, op)?);
    let lead = darts::bilevel::GradSync::rank(peer.as_ref()) == 0;
    let out = f(peer.clone(), lead);
    peer.leave();
    out
}

/// Without the `mpi` feature: an error that says how to build with it.
#[cfg(not(feature = "mpi"))]
pub fn with_mpi<B: burn::tensor::backend::Backend, T>(
    _: Duration,
    _: Duration,
    _: impl FnOnce(darts::bilevel::sync::SharedSync<B>, bool) -> Result<T, RunError>,
) -> Result<T, RunError> {
    let example = std::env::args()
        .next()
        .and_then(|p| {
            std::path::Path::new(&p)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "cifar10_search".into());
    Err(RunError::Config(format!(
        "--mpi needs the `mpi` feature: cargo build --release --features mpi --example {example}"
    )))
}
