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

use darts_bilevel::Perturbation;
use darts_cell::cnn::supernet::{AlphaInit, Sampling};
use darts_cell::{SearchNetwork, SearchNetworkConfig};

/// A supernet that a method's per-epoch values are set on ([`MethodConfig::apply`]): the DARTS
/// supernet, and a user's own (the NAS-Bench-201 example implements it).
pub trait MethodSupernet {
    /// DARTS−'s skip scale `β` (0: no skip).
    fn set_aux_scale(&mut self, scale: f64);
    /// The regularisers of the architecture objective.
    fn set_regularizer(&mut self, regularizer: ArchRegularizer);
    /// How the forward turns α into op weights.
    fn set_sampling(&mut self, sampling: Sampling);
    /// The random numbers of the samples.
    fn noise_mut(&mut self) -> &mut darts_mixed_op::stochastic::NoiseSource;
}

impl<B, O, R> MethodSupernet for SearchNetwork<B, O, R>
where
    B: burn::tensor::backend::Backend,
    O: burn::module::Module<B>,
    R: darts_mixed_op::Relaxation,
{
    fn set_aux_scale(&mut self, scale: f64) {
        self.aux_scale = scale;
    }
    fn set_regularizer(&mut self, regularizer: ArchRegularizer) {
        self.regularizer = regularizer;
    }
    fn set_sampling(&mut self, sampling: Sampling) {
        self.sampling = sampling;
    }
    fn noise_mut(&mut self) -> &mut darts_mixed_op::stochastic::NoiseSource {
        &mut self.noise
    }
}

/// The supernet type every method runs on: the DARTS candidates (or a subset), with the
/// relaxation chosen at run time.
pub type MethodNet<B> = SearchNetwork<B, darts_ops::DartsOp<B>, AnyRelaxation>;
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
    /// GDAS (Dong and Yang, CVPR 2019; D-X-Y/AutoDL-Projects): one hard Gumbel-softmax sample
    /// per edge and forward, only the sampled candidate computed, τ from 10 to 0.1; weight step
    /// first.
    Gdas,
    /// FairDARTS (Chu et al., ECCV 2020; xiaomi-automl/FairDARTS): independent sigmoid weights,
    /// no `none`, the zero-one loss, a threshold derivation.
    FairDarts,
    /// SDARTS-RS (Chen and Hsieh, ICML 2020; xiangning-chen/SmoothDARTS): the weight step on
    /// `softmax(α)` plus uniform noise.
    SdartsRs,
    /// SDARTS-ADV: the weight step on adversarially perturbed `softmax(α)` (7-step PGD).
    SdartsAdv,
    /// β-DARTS (Ye et al., CVPR 2022; Sunshine-Ye/Beta-DARTS): the Beta-Decay regulariser on α.
    BetaDarts,
    /// DrNAS (Chen et al., ICLR 2021; xiangning-chen/DrNAS): Dirichlet op weights with
    /// concentration `ELU(α) + 1`, pathwise gradients, partial channels.
    Drnas,
}

impl Method {
    /// Every method, in the order of `docs/methods.md`.
    pub const ALL: [Method; 9] = [
        Method::Darts,
        Method::PcDarts,
        Method::Gdas,
        Method::DartsMinus,
        Method::FairDarts,
        Method::SdartsRs,
        Method::SdartsAdv,
        Method::BetaDarts,
        Method::Drnas,
    ];

    /// The command-line name (`darts`, `pc-darts`, `gdas`, `darts-minus`, `fair-darts`,
    /// `sdarts-rs`, `sdarts-adv`, `beta-darts`, `drnas`).
    pub fn name(self) -> &'static str {
        match self {
            Method::Darts => "darts",
            Method::PcDarts => "pc-darts",
            Method::Gdas => "gdas",
            Method::DartsMinus => "darts-minus",
            Method::FairDarts => "fair-darts",
            Method::SdartsRs => "sdarts-rs",
            Method::SdartsAdv => "sdarts-adv",
            Method::BetaDarts => "beta-darts",
            Method::Drnas => "drnas",
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
            Method::Gdas => MethodConfig {
                gumbel: Some(TauSchedule::default()),
                weights_first: true,
                nesterov: true,
                ..base
            },
            Method::SdartsRs => MethodConfig {
                perturbation: Some(PerturbSchedule {
                    attack: Attack::Random,
                    epsilon_max: 0.3,
                }),
                ..base
            },
            Method::SdartsAdv => MethodConfig {
                perturbation: Some(PerturbSchedule {
                    attack: Attack::Pgd { steps: 7 },
                    epsilon_max: 0.3,
                }),
                ..base
            },
            Method::Drnas => MethodConfig {
                dirichlet: true,
                exclude_none: true,
                bn_after_pool: false,
                partial_channels: 6,
                progressive: Some(vec![
                    ProgressiveStage {
                        partial_channels: 6,
                        keep_ops: 7,
                    },
                    ProgressiveStage {
                        partial_channels: 4,
                        keep_ops: 4,
                    },
                ]),
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
            weight_decay: 3e-4,
            arch_lr: 3e-4,
            arch_betas: (0.5, 0.999),
            epochs: 50,
            init_channels: 16,
            layers: 8,
        };
        match self {
            Method::Darts
            | Method::DartsMinus
            | Method::BetaDarts
            | Method::SdartsRs
            | Method::SdartsAdv => darts,
            // AutoDL-Projects configs/search-opts/GDAS-NASNet-CIFAR.config and
            // scripts-search/NASNet-space-search-by-GDAS.sh: cosine 0.025 → 0.001 over 250
            // epochs, weight decay 5e-4, Nesterov momentum 0.9, batch 256.
            Method::Gdas => MethodHyper {
                batch_size: 256,
                weight_decay: 5e-4,
                epochs: 250,
                ..darts
            },
            // DrNAS/DARTS-space/train_search.py: lr 0.1 → 0, arch lr 6e-4, the network at
            // C = 36, 20 cells (its argument defaults), two 25-epoch stages.
            Method::Drnas => MethodHyper {
                lr: 0.1,
                lr_min: 0.0,
                arch_lr: 6e-4,
                init_channels: 36,
                layers: 20,
                ..darts
            },
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
#[error("unknown method `{0}` (known: darts, pc-darts, gdas, darts-minus, fair-darts, sdarts-rs, sdarts-adv, beta-darts, drnas)")]
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
    /// SGD weight decay.
    pub weight_decay: f64,
    /// Adam learning rate of the architecture parameters.
    pub arch_lr: f64,
    /// Adam betas of the architecture parameters.
    pub arch_betas: (f64, f64),
    /// Epochs.
    pub epochs: usize,
    /// Initial channels of the supernet.
    pub init_channels: usize,
    /// Cells of the supernet.
    pub layers: usize,
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
    /// GDAS's hard Gumbel-softmax sampling and its temperature schedule.
    pub gumbel: Option<TauSchedule>,
    /// DrNAS's Dirichlet sampling of the op weights.
    pub dirichlet: bool,
    /// DrNAS's optional KL regulariser towards `Dir(1)`: its scale.
    pub dirichlet_kl: Option<f64>,
    /// SDARTS's perturbation of the weight step and its `ε` schedule.
    pub perturbation: Option<PerturbSchedule>,
    /// Weight step before the architecture step (GDAS).
    pub weights_first: bool,
    /// A non-affine BatchNorm after each pooling candidate (the DARTS supernet; DrNAS has none).
    pub bn_after_pool: bool,
    /// Nesterov momentum in the weight optimiser (GDAS's search configuration). The
    /// second-order virtual step keeps DARTS's formula whatever this says (GDAS is first order).
    pub nesterov: bool,
    /// DrNAS's progressive search: the epochs split into equal stages, each with its partial
    /// channels and number of candidates kept per edge (`None`: one stage with
    /// [`MethodConfig::partial_channels`] and every candidate).
    pub progressive: Option<Vec<ProgressiveStage>>,
}

/// One stage of DrNAS's progressive search (reference `train_search.py`: `ks = [6, 4]`,
/// `num_keeps = [7, 4]`, `train_epochs = [25, 25]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgressiveStage {
    /// Partial-channel factor `K` of the stage.
    pub partial_channels: usize,
    /// Candidates kept per edge from the stage's start.
    pub keep_ops: usize,
}

/// GDAS's temperature: `τ(e) = τ_max − (τ_max − τ_min) · e / (E − 1)` (reference
/// `GDAS.py: set_tau`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TauSchedule {
    /// `τ_max` (10).
    pub max: f64,
    /// `τ_min` (0.1).
    pub min: f64,
}

impl Default for TauSchedule {
    fn default() -> Self {
        Self {
            max: 10.0,
            min: 0.1,
        }
    }
}

/// Which SDARTS perturbation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Attack {
    /// SDARTS-RS: uniform noise.
    Random,
    /// SDARTS-ADV: projected gradient ascent.
    Pgd {
        /// Steps (7).
        steps: usize,
    },
}

/// SDARTS's perturbation with `ε(e) = 0.03 + (ε_max − 0.03) · e / E`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PerturbSchedule {
    /// RS or ADV.
    pub attack: Attack,
    /// `ε_max` (0.3).
    pub epsilon_max: f64,
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
            gumbel: None,
            dirichlet: false,
            dirichlet_kl: None,
            perturbation: None,
            weights_first: false,
            bn_after_pool: true,
            nesterov: false,
            progressive: None,
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
    /// GDAS's temperature `τ`, if the method samples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gumbel_tau: Option<f64>,
    /// SDARTS's `ε`, if the method perturbs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perturbation_epsilon: Option<f64>,
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
            gumbel_tau: self.gumbel.map(|t| {
                let span = epochs.saturating_sub(1).max(1) as f64;
                t.max - (t.max - t.min) * e / span
            }),
            perturbation_epsilon: self
                .perturbation
                .map(|p| darts_bilevel::perturb::epsilon_at(p.epsilon_max, epoch, epochs)),
        }
    }

    /// The supernet's sampling at `epoch`.
    pub fn sampling(&self, epoch: usize, epochs: usize) -> Sampling {
        match (self.schedule(epoch, epochs).gumbel_tau, self.dirichlet) {
            (Some(tau), _) => Sampling::Gumbel { tau },
            (None, true) => Sampling::Dirichlet,
            (None, false) => Sampling::None,
        }
    }

    /// The progressive stage of `epoch` (0 without stages): the epochs split into equal
    /// parts, stage `s` starting at epoch `⌈s·E/n⌉`.
    pub fn stage_at(&self, epoch: usize, epochs: usize) -> usize {
        match &self.progressive {
            Some(stages) if !stages.is_empty() => {
                let n = stages.len();
                (0..n).rev().find(|&s| epoch * n >= s * epochs).unwrap_or(0)
            }
            _ => 0,
        }
    }

    /// Every partial-channel factor the search uses (the constraint `C % K == 0` holds for
    /// each).
    pub fn all_partial_channels(&self) -> Vec<usize> {
        let mut ks = vec![self.partial_channels];
        if let Some(stages) = &self.progressive {
            ks.extend(stages.iter().map(|s| s.partial_channels));
        }
        ks
    }

    /// Move a search into progressive stage `stage` (≥ 1): prune and widen the supernet
    /// ([`SearchNetwork::prune_and_widen`]) and grow the weight optimiser's momentum buffers
    /// with it, the copied channels drawn from a generator seeded by `(seed, stage)`. Does
    /// nothing without that stage.
    pub fn enter_stage<B: burn::tensor::backend::AutodiffBackend>(
        &self,
        search: &mut darts_bilevel::Bilevel<B, MethodNet<B>>,
        stage: usize,
        seed: u64,
    ) {
        let Some(st) = self.progressive.as_ref().and_then(|s| s.get(stage)) else {
            return;
        };
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (0x000D_A275 + stage as u64));
        let mut draw = |high: usize, count: usize| -> Vec<usize> {
            (0..count)
                .map(|_| rng.random_range(0..high.max(1)))
                .collect()
        };
        let net = search.model.clone();
        let (net, growths) = net.prune_and_widen(st.keep_ops, st.partial_channels, &mut draw);
        search.model = net;
        search.w_opt.grow(&growths);
    }

    /// SDARTS's perturbation at `epoch`.
    pub fn perturbation(&self, epoch: usize, epochs: usize) -> Option<Perturbation> {
        let p = self.perturbation?;
        let epsilon = darts_bilevel::perturb::epsilon_at(p.epsilon_max, epoch, epochs);
        Some(match p.attack {
            Attack::Random => Perturbation::Random { epsilon },
            Attack::Pgd { steps } => Perturbation::Pgd { epsilon, steps },
        })
    }

    /// The supernet of `base` (channels, cells, nodes) with this method's pieces: its op set,
    /// relaxation, partial channels, edge normalisation, auxiliary skips, α initialisation and
    /// derivation. Seed the backend first for a reproducible initialisation.
    pub fn supernet<B: burn::tensor::backend::Backend>(
        &self,
        base: SearchNetworkConfig,
        device: &B::Device,
    ) -> Result<MethodNet<B>, darts_cell::CellError> {
        let mut net = SearchNetworkConfig {
            partial_channels: self.partial_channels,
            edge_normalization: self.edge_normalization,
            auxiliary_skip: self.auxiliary_skip.is_some(),
            alpha_init: self.alpha_init,
            ..base
        }
        .init::<B, _, _>(&self.space(), self.relaxation, device)?;
        net.derivation = self.derivation;
        Ok(net)
    }

    /// Set this method's values for `epoch` (of `epochs`) on a search: whether α is updated,
    /// the step order, SDARTS's perturbation, DARTS−'s skip scale, the regularisers, the
    /// sampling and its temperature, and the noise sources (restarted for the epoch from
    /// `seed`). Returns the schedule's values.
    pub fn apply<B, M>(
        &self,
        search: &mut darts_bilevel::Bilevel<B, M>,
        seed: u64,
        epoch: usize,
        epochs: usize,
    ) -> EpochSchedule
    where
        B: burn::tensor::backend::AutodiffBackend,
        M: darts_bilevel::ArchModel<B> + MethodSupernet,
    {
        let s = self.schedule(epoch, epochs);
        search.arch_updates = s.arch_updates;
        search.weights_first = self.weights_first;
        search.w_opt.nesterov = self.nesterov;
        search.perturbation = self.perturbation(epoch, epochs);
        search.noise.start_epoch(seed ^ 0x005D_A275, epoch);
        let model = &mut search.model;
        model.set_aux_scale(s.aux_skip_scale.unwrap_or(0.0));
        model.set_regularizer(self.regularizer(epoch, epochs));
        model.set_sampling(self.sampling(epoch, epochs));
        model.noise_mut().start_epoch(seed, epoch);
        s
    }

    /// The regularisers of the architecture objective at `epoch`.
    pub fn regularizer(&self, epoch: usize, epochs: usize) -> ArchRegularizer {
        ArchRegularizer {
            zero_one: self.zero_one.unwrap_or(0.0),
            dirichlet_kl: self.dirichlet_kl.unwrap_or(0.0),
            beta_decay: self
                .schedule(epoch, epochs)
                .beta_decay_lambda
                .unwrap_or(0.0),
        }
    }

    /// The candidate ops of the supernet: the DARTS primitives, without `none` when
    /// [`MethodConfig::exclude_none`].
    pub fn space(&self) -> darts_mixed_op::DartsSpace {
        let mut space = darts_mixed_op::DartsSpace {
            bn_after_pool: self.bn_after_pool,
            ..Default::default()
        };
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
        if let Some(stages) = &self.progressive {
            if stages
                .iter()
                .any(|s| s.partial_channels == 0 || s.keep_ops == 0)
            {
                return Err(format!(
                    "progressive: every stage needs partial_channels and keep_ops of at least 1 (got {stages:?})"
                ));
            }
        }
        if self.zero_one.is_some_and(|w| !w.is_finite())
            || self.dirichlet_kl.is_some_and(|w| !w.is_finite())
        {
            return Err("zero_one and dirichlet_kl must be finite".into());
        }
        if self.gumbel.is_some() && self.dirichlet {
            return Err("gumbel and dirichlet sampling exclude each other".into());
        }
        if let Some(t) = self.gumbel {
            let positive = t.max > 0.0 && t.min > 0.0 && t.max.is_finite();
            if !positive {
                return Err(format!("gumbel: temperatures must be positive (got {t:?})"));
            }
        }
        if let Some(p) = self.perturbation {
            let finite = p.epsilon_max >= 0.0 && p.epsilon_max.is_finite();
            if !finite {
                return Err(format!(
                    "perturbation: epsilon_max must be finite, ≥ 0 (got {p:?})"
                ));
            }
            if p.attack == (Attack::Pgd { steps: 0 }) {
                return Err("perturbation: PGD needs at least one step".into());
            }
        }
        if let Derivation::Threshold { threshold } = self.derivation {
            if !threshold.is_finite() {
                return Err("the derivation threshold must be finite".into());
            }
        }
        if let Some(b) = self.beta_decay {
            let ramp_ok = b.ramp_epochs.is_finite() && b.ramp_epochs > 0.0;
            if !b.lambda_max.is_finite() || !ramp_ok {
                return Err(format!(
                    "beta decay: lambda_max must be finite and ramp_epochs positive (got {b:?})"
                ));
            }
        }
        Ok(())
    }
}
