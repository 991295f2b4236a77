//! `--arch-bn-stats` of the search examples.

use clap::ValueEnum;

/// `--arch-bn-stats`: which training-mode passes of a search step update the BatchNorm running
/// statistics ([`darts::bilevel::ArchBnStats`]).
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
pub enum ArchBnStatsArg {
    /// The architecture step's passes too, then the weight step's (the reference).
    ArchitectToo,
    /// Only the weight step's forward.
    WeightStepOnly,
}

impl From<ArchBnStatsArg> for darts::bilevel::ArchBnStats {
    fn from(a: ArchBnStatsArg) -> Self {
        match a {
            ArchBnStatsArg::ArchitectToo => Self::ArchitectToo,
            ArchBnStatsArg::WeightStepOnly => Self::WeightStepOnly,
        }
    }
}
