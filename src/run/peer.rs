//! What the data-parallel drivers share: rank 0 sends its run (configuration, history) and
//! state (a checkpoint) to the other peers before the first epoch, or the error that stopped it.

use crate::checkpoint::Checkpoint;
use crate::parallel::{broadcast_bytes, ParallelError};
use crate::run::RunError;
use burn::tensor::backend::Backend;
use darts_bilevel::sync::GradSync;
use serde::de::DeserializeOwned;

/// Rank 0 sends `Ok((header, checkpoint))` or the error that stopped it, as two broadcasts
/// (the header, then the checkpoint; an error is a header and no checkpoint).
pub(crate) fn send_state<B: Backend>(
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

/// Rank 0's header and checkpoint: `header` is serialised as JSON, `save` fills the checkpoint.
pub(crate) fn send_run<B: Backend>(
    sync: &dyn GradSync<B>,
    header: &impl serde::Serialize,
    save: impl FnOnce(&mut Checkpoint) -> Result<(), RunError>,
    device: &B::Device,
) -> Result<(), RunError> {
    let mut c = Checkpoint::new(serde_json::Value::Null);
    save(&mut c)?;
    let header = serde_json::to_vec(header).map_err(|e| RunError::Config(e.to_string()))?;
    send_state::<B>(sync, Ok((header, c.to_bytes()?)), device)
}

/// What a peer other than rank 0 receives first: the configuration and history of the run (or
/// rank 0's error).
pub(crate) fn receive_header<B: Backend, H: DeserializeOwned>(
    sync: &dyn GradSync<B>,
    device: &B::Device,
) -> Result<H, RunError> {
    let h = broadcast_bytes::<B>(sync, &[], device)?;
    match h.split_first() {
        Some((1, json)) => {
            serde_json::from_slice(json).map_err(|e| RunError::Config(format!("rank 0's run: {e}")))
        }
        Some((_, why)) => Err(RunError::Parallel(ParallelError::Collective {
            rank: sync.rank(),
            error: format!("rank 0 stopped: {}", String::from_utf8_lossy(why)),
        })),
        None => Err(RunError::Config("rank 0 sent nothing".into())),
    }
}

/// What a peer other than rank 0 receives second: rank 0's state.
pub(crate) fn receive_checkpoint<B: Backend>(
    sync: &dyn GradSync<B>,
    device: &B::Device,
) -> Result<Checkpoint, RunError> {
    let bytes = broadcast_bytes::<B>(sync, &[], device)?;
    Ok(Checkpoint::decode(&bytes, "rank 0's state")?)
}

/// The first peer's result, unless a peer failed: then the error of the lowest rank that failed
/// (it says what went wrong; a higher rank often only lost its peer).
pub(crate) fn first_error<T>(results: Vec<Result<T, RunError>>) -> Result<T, RunError> {
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
