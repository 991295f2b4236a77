//! DARTS cells and networks (paper §2.1–2.2, §3.3), the convolutional and the recurrent side
//! laid out alike:
//!
//! | | convolutional ([`cnn`]) | recurrent ([`rnn`]) |
//! |---|---|---|
//! | supernet (implements [`darts_bilevel::ArchModel`]) | [`cnn::supernet`]: [`SearchNetwork`] | [`rnn::supernet`]: [`RnnSearchNetwork`] |
//! | derived network (from a genotype) | [`cnn::derived`]: [`EvalNetwork`] | [`rnn::derived`]: [`RnnEvalNetwork`] |
//! | batches and losses | [`cnn::batch`]: [`ImageBatch`] | [`rnn::batch`]: [`TokenBatch`] |
//!
//! The earlier paths `darts_cell::{search, eval, batch}` stay as aliases of the `cnn` modules.
#![warn(missing_docs)]

pub mod cnn;
pub mod rnn;

/// Alias of [`cnn::batch`].
pub use cnn::batch;
/// Alias of [`cnn::derived`].
pub use cnn::derived as eval;
/// Alias of [`cnn::supernet`].
pub use cnn::supernet as search;

pub use cnn::batch::ImageBatch;
pub use cnn::derived::{DropKey, DropPath, EvalNetwork, EvalNetworkConfig};
pub use cnn::supernet::{SearchNetwork, SearchNetworkConfig};
pub use rnn::{RnnConfig, RnnEvalNetwork, RnnSearchNetwork, TokenBatch};

/// Where a cell sits in its network: the channels of its two inputs and its own, and whether it
/// and the cell before it reduce the resolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CellShape {
    /// Channels of the output of the cell two back (`s0`).
    pub c_prev_prev: usize,
    /// Channels of the output of the previous cell (`s1`).
    pub c_prev: usize,
    /// Channels of each node of this cell.
    pub c: usize,
    /// Whether this cell halves the resolution (its input edges have stride 2).
    pub reduction: bool,
    /// Whether the previous cell did (then `s0` is factorized-reduced to match).
    pub reduction_prev: bool,
}

/// Errors building networks.
#[derive(Debug, thiserror::Error)]
pub enum CellError {
    /// The genotype is malformed or uses an unknown op.
    #[error(transparent)]
    Genotype(#[from] darts_genotype::GenotypeError),
    /// An op name is unknown.
    #[error(transparent)]
    Op(#[from] darts_ops::OpError),
    /// A configuration value is invalid.
    #[error("invalid network configuration: {0}")]
    Config(String),
}

/// The index in `space` of the op named `name` (derived networks build each op by name), or an
/// error listing the space's ops.
pub(crate) fn op_index<B, S, const D: usize>(space: &S, name: &str) -> Result<usize, CellError>
where
    B: burn::tensor::backend::Backend,
    S: darts_mixed_op::OpSet<B, D>,
{
    let names = space.names();
    names.iter().position(|n| n == name).ok_or_else(|| {
        CellError::Op(darts_ops::OpError::UnknownOp {
            name: name.to_string(),
            known: names.join(", "),
        })
    })
}
