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
/// `../shared/data` relative to the workspace root — the one this crate was compiled in, or,
/// when that has moved (a build cache shared between checkouts), a `shared/data` beside the
/// current directory or one of its ancestors. When none exists, the first of these (so an
/// error message names where it was looked for).
pub fn data_dir() -> PathBuf {
    if let Ok(d) = std::env::var("DARTS_DATA_DIR") {
        return PathBuf::from(d);
    }
    let compiled = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
    if compiled.exists() {
        return compiled;
    }
    let beside_cwd = std::env::current_dir().ok().and_then(|cwd| {
        cwd.ancestors()
            .skip(1)
            .map(|dir| dir.join("shared/data"))
            .find(|candidate| candidate.exists())
    });
    beside_cwd.unwrap_or(compiled)
}
