//! DARTS cells and networks (paper §2.1–2.2; reference `cnn/model_search.py`, `cnn/model.py`).
//!
//! * [`search`]: the search cell (every edge a [`darts_mixed_op::MixedOp`]) and the supernet,
//!   generic over the op set and the relaxation, with its architecture parameters kept apart
//!   from the weights; it implements [`darts_bilevel::ArchModel`].
//! * [`eval`]: the derived network built from a [`darts_genotype::Genotype`], with drop path and
//!   the optional auxiliary head.
//! * [`rnn`]: the recurrent search cell and language model, and the derived recurrent model.
//! * [`batch`]: image batches and the cross-entropy loss.
#![warn(missing_docs)]

pub mod batch;
pub mod eval;
pub mod rnn;
pub mod search;

pub use batch::ImageBatch;
pub use eval::{EvalNetwork, EvalNetworkConfig};
pub use rnn::{RnnConfig, RnnEvalModel, RnnSearchModel, TokenBatch};
pub use search::{SearchNetwork, SearchNetworkConfig};

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
