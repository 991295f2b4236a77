//! Successors of DARTS as options of the same search: one [`MethodConfig`] says which pieces a
//! search uses, [`Method`] names the published combinations and their defaults (presets), and
//! [`MethodConfig::schedule`] gives the per-epoch values (DARTS−'s skip scale, β-DARTS's `λ`).
//!
//! The pieces are orthogonal and plug into the library's own types: partial channels and the
//! auxiliary skip are options of the supernet's mixed ops and cells
//! ([`darts_cell::SearchNetworkConfig`]), edge normalisation adds architecture parameters that the
//! architect optimises with α, the relaxation is a [`darts_mixed_op::Relaxation`], the
//! regularisers are an [`darts_mixed_op::ArchRegularizer`] inside the supernet's objective, and
//! the warm-up turns off [`darts_bilevel::Bilevel::arch_updates`]. So a user can combine them:
//! partial channels with the Beta-Decay regulariser is
//!
//! ```
//! use darts::methods::{BetaDecaySchedule, Method};
//! let mut m = Method::PcDarts.config();
//! m.beta_decay = Some(BetaDecaySchedule::default());
//! assert_eq!(m.partial_channels, 4);
//! let s = m.schedule(10, 50);
//! assert_eq!(s.beta_decay_lambda, Some(5.0)); // 50 · 10 / 100
//! assert!(!s.arch_updates); // PC-DARTS updates α from epoch 15
//! ```
//!
//! `docs/methods.md` has one section per method: what it changes, the equations, where in the
//! code, the defaults and every difference from its reference code.

use darts_cell::cnn::supernet::AlphaInit;
use darts_genotype::derive::Derivation;
use darts_mixed_op::{AnyRelaxation, ArchRegularizer};
use serde::{Deserialize, Serialize};

/// A published search method: a preset of [`MethodConfig`] and of the run's hyper-parameters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// DARTS (Liu et al., ICLR 2019; quark0/darts).
    #[default]
    Darts,
    /// PC-DARTS (Xu et al., ICLR 2020; yuhuixu1993/PC-DARTS): partial channels, edge
    /// normalisation, α from epoch 15.
    PcDarts,
    /// DARTS− (Chu et al., ICLR 2021; Meituan-AutoML/DARTS-): an auxiliary skip on every edge,
    /// scaled from 1 down to 0.
    DartsMinus,
    /// FairDARTS (Chu et al., ECCV 2020; xiaomi-automl/FairDARTS): independent sigmoid weights,
    /// no `none`, the zero-one loss, a threshold derivation.
    FairDarts,
    /// β-DARTS (Ye et al., CVPR 2022; Sunshine-Ye/Beta-DARTS): the Beta-Decay regulariser on α.
    BetaDarts,
}

impl Method {
    /// Every method, in the order of `docs/methods.md`.
    pub const ALL: [Method; 5] = [
        Method::Darts,
        Method::PcDarts,
        Method::DartsMinus,
        Method::FairDarts,
        Method::BetaDarts,
    ];

    /// The command-line name (`darts`, `pc-darts`, `darts-minus`, `fair-darts`, `beta-darts`).
    pub fn name(self) -> &'static str {
        match self {
            Method::Darts => "darts",
            Method::PcDarts => "pc-darts",
            Method::DartsMinus => "darts-minus",
            Method::FairDarts => "fair-darts",
            Method::BetaDarts => "beta-darts",
        }
    }

    /// The method's own pieces.
    pub fn config(self) -> MethodConfig {
        let base = MethodConfig::default();
        match self {
            Method::Darts => base,
            Method::PcDarts => MethodConfig {
                partial_channels: 4,
                edge_normalization: true,
                arch_warmup_epochs: 15,
                ..base
            },
            Method::DartsMinus => MethodConfig {
                auxiliary_skip: Some(SkipDecay::default()),
                ..base
            },
            Method::FairDarts => MethodConfig {
                relaxation: AnyRelaxation::Sigmoid,
                alpha_init: AlphaInit::Zeros,
                exclude_none: true,
                zero_one: Some(10.0),
                derivation: Derivation::Threshold { threshold: 0.85 },
                ..base
            },
            Method::BetaDarts => MethodConfig {
                beta_decay: Some(BetaDecaySchedule::default()),
                ..base
            },
        }
    }

    /// The reference search script's hyper-parameters for CIFAR-10.
    pub fn hyper(self) -> MethodHyper {
        let darts = MethodHyper {
            batch_size: 64,
            lr: 0.025,
            lr_min: 0.001,
            arch_lr: 3e-4,
            arch_betas: (0.5, 0.999),
            epochs: 50,
        };
        match self {
            Method::Darts | Method::DartsMinus | Method::BetaDarts => darts,
            // PC-DARTS/train_search.py: batch 256, lr 0.1 → 0, arch lr 6e-4.
            Method::PcDarts => MethodHyper {
                batch_size: 256,
                lr: 0.1,
                lr_min: 0.0,
                arch_lr: 6e-4,
                ..darts
            },
            // FairDARTS/fairdarts/train_search.py: batch 128, lr 0.005 → 0.001, arch lr 3e-3
            // with betas (0.9, 0.999) (its `--arch_lr_gamma`).
            Method::FairDarts => MethodHyper {
                batch_size: 128,
                lr: 0.005,
                lr_min: 0.001,
                arch_lr: 3e-3,
                arch_betas: (0.9, 0.999),
                ..darts
            },
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown method name.
#[derive(Debug, thiserror::Error)]
#[error("unknown method `{0}` (known: darts, pc-darts, darts-minus, fair-darts, beta-darts)")]
pub struct UnknownMethod(pub String);

impl std::str::FromStr for Method {
    type Err = UnknownMethod;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Method::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| UnknownMethod(s.to_string()))
    }
}

/// The hyper-parameters a method's reference script uses (CIFAR-10 search).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MethodHyper {
    /// Batch size.
    pub batch_size: usize,
    /// Initial weight learning rate (cosine schedule).
    pub lr: f64,
    /// Final weight learning rate.
    pub lr_min: f64,
    /// Adam learning rate of the architecture parameters.
    pub arch_lr: f64,
    /// Adam betas of the architecture parameters.
    pub arch_betas: (f64, f64),
    /// Epochs.
    pub epochs: usize,
}

/// Which pieces of the successor methods a search uses. The default is DARTS.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MethodConfig {
    /// The preset this configuration started from (for the record; the fields below decide).
    pub method: Method,
    /// PC-DARTS partial channels `K` (1 = off).
    pub partial_channels: usize,
    /// PC-DARTS edge normalisation.
    pub edge_normalization: bool,
    /// Epochs at the start during which only the weights train (PC-DARTS: 15).
    pub arch_warmup_epochs: usize,
    /// DARTS−'s auxiliary skip and its decay.
    pub auxiliary_skip: Option<SkipDecay>,
    /// β-DARTS's Beta-Decay regulariser and its schedule.
    pub beta_decay: Option<BetaDecaySchedule>,
    /// Relaxation of α into op weights.
    pub relaxation: AnyRelaxation,
    /// Initial α.
    pub alpha_init: AlphaInit,
    /// Leave `none` out of the candidates (FairDARTS: its sigmoid weights are independent, so
    /// there is nothing for `none` to absorb).
    pub exclude_none: bool,
    /// FairDARTS's zero-one loss weight `w` (10), if on.
    pub zero_one: Option<f64>,
    /// How the genotype is derived.
    pub derivation: Derivation,
}

impl Default for MethodConfig {
    fn default() -> Self {
        Self {
            method: Method::Darts,
            partial_channels: 1,
            edge_normalization: false,
            arch_warmup_epochs: 0,
            auxiliary_skip: None,
            beta_decay: None,
            relaxation: AnyRelaxation::Softmax,
            alpha_init: AlphaInit::Random,
            exclude_none: false,
            zero_one: None,
            derivation: Derivation::TopK,
        }
    }
}

/// DARTS−'s decay of the auxiliary skip: `β(e) = β₀ · (E − e) / E` (the reference's
/// `DecayScheduler` with `decay='linear'`, `T_start = 0`, `T_max = T_stop = E`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SkipDecay {
    /// `β₀` (the reference's `--skip_beta`, 1).
    pub beta0: f64,
    /// `E`, the epoch at which `β` reaches 0; `None`: the search's epochs (the reference's
    /// `decay_max_epoch` is 50, its epoch count).
    pub epochs: Option<usize>,
}

impl Default for SkipDecay {
    fn default() -> Self {
        Self {
            beta0: 1.0,
            epochs: None,
        }
    }
}

/// β-DARTS's schedule of the Beta-Decay weight: `λ(e) = λ_max · e / E_ramp` (reference
/// `architect.py: weights = 0 + 50*epoch/100`, i.e. `λ_max = 50`, `E_ramp = 100`, fixed in the
/// code whatever the number of epochs).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BetaDecaySchedule {
    /// `λ_max` (50).
    pub lambda_max: f64,
    /// `E_ramp` (100).
    pub ramp_epochs: f64,
}

impl Default for BetaDecaySchedule {
    fn default() -> Self {
        Self {
            lambda_max: 50.0,
            ramp_epochs: 100.0,
        }
    }
}

/// The per-epoch values of a method's schedules.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochSchedule {
    /// Whether the architecture parameters are updated this epoch.
    pub arch_updates: bool,
    /// DARTS−'s skip scale `β`, if the method has the skip.
    pub aux_skip_scale: Option<f64>,
    /// β-DARTS's `λ`, if the method has the regulariser.
    pub beta_decay_lambda: Option<f64>,
}

impl MethodConfig {
    /// The schedule's values at `epoch` (0-based) of a search of `epochs` epochs.
    pub fn schedule(&self, epoch: usize, epochs: usize) -> EpochSchedule {
        let e = epoch as f64;
        EpochSchedule {
            arch_updates: epoch >= self.arch_warmup_epochs,
            aux_skip_scale: self.auxiliary_skip.map(|s| {
                let end = s.epochs.unwrap_or(epochs).max(1) as f64;
                // The reference keeps the last value after T_stop; with T_stop = E it is 0.
                s.beta0 * ((end - e) / end).max(0.0)
            }),
            beta_decay_lambda: self.beta_decay.map(|b| b.lambda_max * e / b.ramp_epochs),
        }
    }

    /// The regularisers of the architecture objective at `epoch`.
    pub fn regularizer(&self, epoch: usize, epochs: usize) -> ArchRegularizer {
        ArchRegularizer {
            zero_one: self.zero_one.unwrap_or(0.0),
            beta_decay: self
                .schedule(epoch, epochs)
                .beta_decay_lambda
                .unwrap_or(0.0),
        }
    }

    /// The candidate ops of the supernet: the DARTS primitives, without `none` when
    /// [`MethodConfig::exclude_none`].
    pub fn space(&self) -> darts_mixed_op::DartsSpace {
        let mut space = darts_mixed_op::DartsSpace::default();
        if self.exclude_none {
            space
                .primitives
                .retain(|p| *p != darts_ops::Primitive::None);
        }
        space
    }

    /// Check the settings (a partial-channel factor of 0, a non-finite schedule value).
    pub fn validate(&self) -> Result<(), String> {
        if self.partial_channels == 0 {
            return Err("partial_channels must be at least 1 (1 turns them off)".into());
        }
        if let Some(s) = self.auxiliary_skip {
            if !s.beta0.is_finite() || s.epochs == Some(0) {
                return Err(format!(
                    "auxiliary skip: beta0 must be finite and epochs at least 1 (got {s:?})"
                ));
            }
        }
        if self.zero_one.is_some_and(|w| !w.is_finite()) {
            return Err("zero_one must be finite".into());
        }
        if let Derivation::Threshold { threshold } = self.derivation {
            if !threshold.is_finite() {
                return Err("the derivation threshold must be finite".into());
            }
        }
        if let Some(b) = self.beta_decay {
            if !b.lambda_max.is_finite() || !(b.ramp_epochs > 0.0) {
                return Err(format!(
                    "beta decay: lambda_max must be finite and ramp_epochs positive (got {b:?})"
                ));
            }
        }
        Ok(())
    }
}
