//! What the data-parallel drivers share: starting a run as one peer of a group (rank 0 opens
//! the run and sends its configuration, history and state to the other peers before the first
//! epoch, or the error that stopped it), running the peers as threads, and the group's
//! failures as run errors.

use crate::checkpoint::Checkpoint;
use crate::parallel::{broadcast_bytes, run_local, GroupConfig, ParallelError};
use crate::run::dir::RunLock;
use crate::run::{start_run, RunConfig, RunError, RunOptions};
use burn::tensor::backend::Backend;
use darts_bilevel::sync::{GradSync, SharedSync};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A peer's start: the configuration and history of the run, rank 0's checkpoint to resume
/// from, and rank 0's lock on the run directory (the other peers have neither).
pub(crate) type PeerStart<C, H> = (C, Vec<H>, Option<Checkpoint>, Option<RunLock>);

/// Start a run on one device (`sync` = `None`) or as a peer: rank 0 opens it ([`start_run`])
/// and, if that fails, tells the others (so that they stop now instead of timing out); the
/// others receive rank 0's configuration and history.
pub(crate) fn start_peer<B: Backend, C, H>(
    config: &C,
    opts: &RunOptions,
    sync: Option<&dyn GradSync<B>>,
    device: &B::Device,
) -> Result<PeerStart<C, H>, RunError>
where
    C: RunConfig + DeserializeOwned,
    H: DeserializeOwned,
{
    match sync {
        Some(s) if s.rank() != 0 => {
            let (cfg, history) = receive_header::<B, (C, Vec<H>)>(s, device)?;
            Ok((cfg, history, None, None))
        }
        _ => match start_run::<C, H>(config, opts) {
            Ok((cfg, history, ckpt, lock)) => Ok((cfg, history, ckpt, Some(lock))),
            Err(e) => {
                if let Some(s) = sync {
                    let _ = send_state::<B>(s, Err(e.to_string()), device);
                }
                Err(e)
            }
        },
    }
}

/// Every replica starts from rank 0's state (fresh or resumed), as PyTorch's DDP broadcasts
/// rank 0's parameters: rank 0 sends `header` (the configuration and history [`start_peer`]
/// gives the others) and the checkpoint `save` writes, and gets `None`; the other peers get
/// that checkpoint to load. Nothing happens on one device (`sync` = `None`).
pub(crate) fn share_state<B: Backend>(
    sync: Option<&dyn GradSync<B>>,
    header: &impl Serialize,
    save: impl FnOnce(&mut Checkpoint) -> Result<(), RunError>,
    device: &B::Device,
) -> Result<Option<Checkpoint>, RunError> {
    let Some(s) = sync else {
        return Ok(None);
    };
    if s.rank() != 0 {
        let bytes = broadcast_bytes::<B>(s, &[], device)?;
        return Ok(Some(Checkpoint::decode(&bytes, "rank 0's state")?));
    }
    let mut c = Checkpoint::new(serde_json::Value::Null);
    save(&mut c)?;
    let header = serde_json::to_vec(header).map_err(|e| RunError::Config(e.to_string()))?;
    send_state::<B>(s, Ok((header, c.to_bytes()?)), device)?;
    Ok(None)
}

/// Rank 0 sends `Ok((header, checkpoint))` or the error that stopped it, as two broadcasts
/// (the header, then the checkpoint; an error is a header and no checkpoint).
fn send_state<B: Backend>(
    sync: &dyn GradSync<B>,
    state: Result<(Vec<u8>, Vec<u8>), String>,
    device: &B::Device,
) -> Result<(), RunError> {
    match state {
        Ok((header, ckpt)) => {
            let mut h = vec![1u8];
            h.extend(header);
            broadcast_bytes::<B>(sync, &h, device)?;
            broadcast_bytes::<B>(sync, &ckpt, device)?;
        }
        Err(e) => {
            let mut h = vec![0u8];
            h.extend(e.into_bytes());
            broadcast_bytes::<B>(sync, &h, device)?;
        }
    }
    Ok(())
}

/// What a peer other than rank 0 receives first: the configuration and history of the run (or
/// rank 0's error).
fn receive_header<B: Backend, H: DeserializeOwned>(
    sync: &dyn GradSync<B>,
    device: &B::Device,
) -> Result<H, RunError> {
    let h = broadcast_bytes::<B>(sync, &[], device)?;
    match h.split_first() {
        Some((1, json)) => {
            serde_json::from_slice(json).map_err(|e| RunError::Config(format!("rank 0's run: {e}")))
        }
        Some((_, why)) => Err(group_error(
            sync.rank(),
            format!("rank 0 stopped: {}", String::from_utf8_lossy(why)),
        )),
        None => Err(RunError::Config("rank 0 sent nothing".into())),
    }
}

/// Run `peer(device, sync)` on one thread per device of `devices` ([`run_local`]) and return
/// the first peer's result, unless a peer failed: then the error of the lowest rank that failed
/// (it says what went wrong; a higher rank often only lost its peer).
pub(crate) fn run_threads<B: Backend, T: Send>(
    devices: &[B::Device],
    group: &GroupConfig,
    peer: impl Fn(&B::Device, SharedSync<B>) -> Result<T, RunError> + Sync,
) -> Result<T, RunError> {
    let results = run_local::<B, _, _>(devices, group, |_, device, sync| peer(&device, sync))?;
    let mut ok = None;
    for r in results {
        match r {
            Err(e) => return Err(e),
            Ok(v) => {
                ok.get_or_insert(v);
            }
        }
    }
    ok.ok_or_else(|| RunError::Config("no peer".into()))
}

/// The run error of peer `rank` when its group failed (`error`: why).
pub(crate) fn group_error(rank: usize, error: String) -> RunError {
    RunError::Parallel(ParallelError::Collective { rank, error })
}

/// `Err` when the group of `sync` has failed (a peer stopped, a reduction timed out); `Ok` on
/// one device.
pub(crate) fn group_ok<B: Backend>(sync: Option<&dyn GradSync<B>>) -> Result<(), RunError> {
    match sync.and_then(|s| s.failure().map(|why| (s.rank(), why))) {
        Some((rank, why)) => Err(group_error(rank, why)),
        None => Ok(()),
    }
}
