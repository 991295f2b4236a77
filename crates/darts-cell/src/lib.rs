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
pub use cnn::derived::{EvalNetwork, EvalNetworkConfig};
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
