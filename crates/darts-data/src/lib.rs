//! Datasets for DARTS, independent of any tensor library (batches are plain host vectors; the
//! model crates turn them into tensors on the chosen device).
//!
//! * [`cifar`]: CIFAR-10 in the official binary layout, strict validation, verified archive
//!   extraction, normalisation, random crop + flip + cutout, the search train/val split, and a
//!   shuffled [`cifar::Loader`] that prepares the next batch on another thread.
//! * [`ptb`]: Penn Treebank (word level): vocabulary, `<unk>` accounting, batchify, BPTT windows.
//! * [`data_dir`]: where the shared real data lives (`DARTS_DATA_DIR`, default `../shared/data`).
#![warn(missing_docs)]

pub mod cifar;
pub mod ptb;

use std::path::PathBuf;

/// The directory holding real data for tests and benches: `$DARTS_DATA_DIR`, else
/// `../shared/data` relative to the workspace root.
pub fn data_dir() -> PathBuf {
    if let Ok(d) = std::env::var("DARTS_DATA_DIR") {
        return PathBuf::from(d);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data")
}
