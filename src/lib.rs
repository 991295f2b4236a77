//! # darts — Differentiable Architecture Search on Burn
//!
//! One dependency for the whole library: the member crates are re-exported here.
//!
//! | module | crate | job |
//! |---|---|---|
//! | [`ops`] | `darts-ops` | candidate operations, BN, convs |
//! | [`mixed_op`] | `darts-mixed-op` | mixed op and the search-space traits |
//! | [`cell`] | `darts-cell` | search cells/supernet, derived network |
//! | [`bilevel`] | `darts-bilevel` | architect (1st/2nd order), optimisers, search loop |
//! | [`genotype`] | `darts-genotype` | genotypes, derivation, notation, catalog, diagrams |
//! | [`data`] | `darts-data` | CIFAR-10 and PTB loading, augmentation, batching |
//! | [`device`] | this crate | `--device cpu\|wgpu\|cuda[:N]` parsing and backend dispatch |
//! | [`parallel`] | this crate | data parallelism over `burn-collective` (threads, processes, machines) |
//! | [`alloc`] | this crate | glibc allocator settings for CPU training ([`alloc::tune_malloc`]) |
//! | [`threads`] | this crate | a CPU job on a thread pool's workers ([`threads::run_pooled`]) |
//!
//! ```
//! use darts::prelude::*;
//! type B = burn::backend::Autodiff<burn::backend::Flex>;
//! let dev = Default::default();
//! let net = SearchNetworkConfig { channels: 4, layers: 3, ..Default::default() }
//!     .init::<B, _, _>(&DartsSpace::default(), Softmax, &dev).unwrap();
//! let g = net.genotype();
//! assert_eq!(g.normal.len(), 8);
//! ```
#![warn(missing_docs)]

pub use burn;
pub use darts_bilevel as bilevel;
pub use darts_cell as cell;
pub use darts_data as data;
pub use darts_genotype as genotype;
pub use darts_mixed_op as mixed_op;
pub use darts_ops as ops;

pub mod alloc;
pub mod checkpoint;
pub mod device;
pub mod infer;
pub mod interop;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub mod launches;
pub mod methods;

#[doc = include_str!("../docs/guide.md")]
pub mod guide {}
pub mod nonfinite;
pub mod parallel;
pub mod report;
pub mod run;
pub mod select;
pub mod threads;

/// The CIFAR-10 drivers ([`run::cifar`]), at their earlier path.
pub use run::cifar;
/// The Penn Treebank drivers ([`run::ptb`]), at their earlier path.
pub use run::ptb;

/// The names most programs need.
pub mod prelude {
    pub use darts_bilevel::{
        ArchModel, Architect, ArchitectConfig, Bilevel, CosineLr, Order, WeightConfig,
    };
    pub use darts_cell::{
        EvalNetwork, EvalNetworkConfig, ImageBatch, SearchNetwork, SearchNetworkConfig,
    };
    pub use darts_genotype::{catalog, Gene, Genotype, RecurrentGenotype};
    pub use darts_mixed_op::{
        CandidateOp, DartsSpace, EdgeSpec, MixedOp, OpSet, Relaxation, Softmax,
    };
    pub use darts_ops::{DartsOp, Primitive};
}
