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
