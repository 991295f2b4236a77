//! The convolutional side (reference `cnn/model_search.py`, `cnn/model.py`).
//!
//! * [`supernet`]: the search cell (every edge a [`darts_mixed_op::MixedOp`]) and the supernet,
//!   generic over the op set and the relaxation, with its architecture parameters kept apart
//!   from the weights; it implements [`darts_bilevel::ArchModel`].
//! * [`derived`]: the derived network built from a [`darts_genotype::Genotype`], with drop path
//!   and the optional auxiliary head.
//! * [`batch`]: image batches and the cross-entropy loss.

pub mod batch;
pub mod derived;
pub mod supernet;
