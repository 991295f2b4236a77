//! Bilevel optimisation for DARTS (paper §2.3): the architect (first- and second-order
//! architecture gradients), PyTorch-semantics optimisers and the search loop.
//!
//! The architect works against the [`ArchModel`] trait, so it drives the CNN supernet, the RNN
//! supernet and any user-defined supernet on any Burn autodiff backend.
#![warn(missing_docs)]

pub mod architect;
pub mod optim;
pub mod params;
pub mod perturb;
pub mod search;
pub mod sync;

pub use architect::{
    arch_gradients, join_parameter_graphs, loss_gradients, train_gradients, ArchBnStats,
    ArchGradient, ArchModel, Architect, ArchitectConfig, BatchOutput, LossGradients, Order,
    ReferenceQuirks,
};
pub use optim::{
    clip_grad_norm, Adam, AdamMoments, AdamState, Asgd, CosineLr, OptimStateError, Sgd, SgdState,
};
pub use perturb::Perturbation;
pub use search::{
    weight_step, weight_step_except, weight_step_sharded, Bilevel, EpochStats, NonFinitePolicy,
    NonFiniteStep, SearchEvent, StepOutcome, StepStats, WeightConfig, WeightStep,
};
pub use sync::{average_buffers, reduce_mean, GradSync, SharedSync};
