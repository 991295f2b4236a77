//! The architecture step (paper §2.3, Algorithm 1; reference `cnn/architect.py`).
//!
//! Symbols follow the paper: `w` weights, `α` architecture, `ξ` (xi) the virtual-step learning
//! rate (the current weight learning rate), `ε` (eps) the finite-difference step.
//!
//! * First order: `∇α L_val(w, α)`.
//! * Second order: `w' = w − ξ (momentum·v + ∇w L_train(w, α) + wd·w)` (no clipping), then
//!   `∇α L_val(w', α) − ξ · H`, where the Hessian-vector product
//!   `H = (∇α L_train(w⁺, α) − ∇α L_train(w⁻, α)) / 2ε`, `w± = w ± ε ∇w' L_val(w', α)` and
//!   `ε = 0.01 / ‖∇w' L_val(w', α)‖₂` (see `docs/second-order.md`). With
//!   [`ArchitectConfig::virtual_grad_clip`] (the recurrent reference) both `∇w L_train` and the
//!   vector `∇w' L_val` are clipped to that norm first.
//!
//! Burn has no double backward, so the Hessian term uses the finite difference, exactly like
//! the reference. Every pass here runs on clones with replaced weights and records no BatchNorm
//! statistics, so the real weights, the optimiser state and the running statistics are left
//! bit-identical.

use crate::optim::{clip_grad_norm, Adam, Sgd};
use crate::params::{
    all_ids, global_norm, gradients, only_trainable, set_values, values, FlatParams,
};
use crate::sync::{reduce_mean, GradSync};
use burn::module::{AutodiffModule, Module, ModuleVisitor, Param, ParamId};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;
use darts_ops::{record_bn_updates, BnUpdates};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What one forward pass on a batch produced.
#[derive(Debug, Clone)]
pub struct BatchOutput<B: AutodiffBackend> {
    /// Scalar loss that is differentiated, shape `[1]`.
    pub loss: Tensor<B, 1>,
    /// The loss to report when it differs from `loss` (e.g. without regularisers; the recurrent
    /// supernet reports its cross-entropy here and optimises it plus activation regularisation).
    pub raw_loss: Option<Tensor<B, 1>>,
    /// Number of correct predictions (shape `[1]`), if the task has a notion of accuracy.
    pub correct: Option<Tensor<B, 1>>,
    /// Number of examples (or tokens) in the batch.
    pub size: usize,
    /// Recurrent state(s) the pass ended in (detached), for truncated back-propagation through
    /// time across consecutive batches; empty for feed-forward models.
    pub state: Vec<Tensor<B::InnerBackend, 2>>,
}

impl<B: AutodiffBackend> BatchOutput<B> {
    /// An output with a loss, an optional correct count and the batch size (no recurrent state).
    pub fn new(loss: Tensor<B, 1>, correct: Option<Tensor<B, 1>>, size: usize) -> Self {
        Self {
            loss,
            raw_loss: None,
            correct,
            size,
            state: Vec::new(),
        }
    }
}

/// A model with weights `w` and architecture parameters `α`: what the architect optimises.
///
/// Implemented by the CNN and RNN supernets and by any user-defined supernet. All parameters
/// that are not architecture parameters and receive a gradient are weights.
pub trait ArchModel<B: AutodiffBackend>: AutodiffModule<B> + Clone {
    /// A batch of data (inputs and targets).
    type Batch;

    /// Forward pass in training mode, returning the loss (and optionally the correct count):
    /// the objective of the architecture step (`L_val`, and `L_train` inside the unrolled step).
    fn forward_batch(&self, batch: &Self::Batch) -> BatchOutput<B>;

    /// Forward pass of the real weight step. Defaults to [`ArchModel::forward_batch`]; override
    /// it to add regularisers the architect should not see (the recurrent supernet adds temporal
    /// activation regularisation here, as the reference does).
    fn forward_train(&self, batch: &Self::Batch) -> BatchOutput<B> {
        self.forward_batch(batch)
    }

    /// Ids of the architecture parameters.
    fn arch_param_ids(&self) -> Vec<ParamId>;

    /// Ids of weights that the reference model holds under two names (the recurrent model's
    /// embedding, which is also its decoder weight). Only
    /// [`ReferenceQuirks::tied_weights_not_unrolled`] reads them; none by default.
    fn tied_param_ids(&self) -> Vec<ParamId> {
        Vec::new()
    }

    /// The loss alone.
    fn loss(&self, batch: &Self::Batch) -> Tensor<B, 1> {
        self.forward_batch(batch).loss
    }

    /// The relaxed op weights that a weight-step perturbation ([`crate::Perturbation`], SDARTS)
    /// perturbs: one `[edges, ops]` matrix per cell type, detached. Empty (the default): the
    /// model has none, and a perturbation leaves its weight step alone.
    fn op_weights(&self) -> Vec<Tensor<B::InnerBackend, 2>> {
        Vec::new()
    }

    /// The weight step's forward with the op weights replaced by `weights` (shaped as
    /// [`ArchModel::op_weights`] returns them, possibly perturbed, possibly requiring
    /// gradients). Default: [`ArchModel::forward_train`], ignoring them.
    fn forward_with_op_weights(
        &self,
        batch: &Self::Batch,
        weights: &[Tensor<B, 2>],
    ) -> BatchOutput<B> {
        let _ = weights;
        self.forward_train(batch)
    }
}

/// First- or second-order architecture gradient.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Order {
    /// `∇α L_val(w, α)` (DARTS first order).
    First,
    /// The unrolled gradient with the finite-difference Hessian-vector product.
    Second,
}

/// Hyper-parameters of the architecture step.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArchitectConfig {
    /// Order of the gradient.
    pub order: Order,
    /// Adam learning rate for α (3e-4).
    pub arch_lr: f64,
    /// Adam betas ((0.5, 0.999)).
    pub arch_betas: (f64, f64),
    /// Adam epsilon (PyTorch default 1e-8).
    pub arch_eps: f64,
    /// Adam (L2) weight decay on α (1e-3).
    pub arch_weight_decay: f64,
    /// Finite-difference scale `r` in `ε = r / ‖∇w' L_val‖` (0.01).
    pub fd_r: f64,
    /// Clip the global norm of `∇w L_train` in the virtual step (the recurrent reference does,
    /// with the weight clip 0.25; the convolutional one does not). The Hessian term is then scaled
    /// by the clip factor `min(1, max / ‖∇w L_train‖)`, the derivative of the clipped step with
    /// the factor held constant. The vector `u = ∇w' L_val(w')` of the finite-difference
    /// Hessian-vector product is clipped to the same norm before `ε` is taken from it, as the
    /// recurrent reference does (`rnn/architect.py:68`): the Hessian term then scales by
    /// `min(1, max / ‖u‖)` too.
    #[serde(default)]
    pub virtual_grad_clip: Option<f64>,
    /// The reference's quirks, off by default (see [`ReferenceQuirks`]).
    #[serde(default)]
    pub quirks: ReferenceQuirks,
    /// Which training-mode passes update the BatchNorm running statistics. Default: the
    /// reference's ([`ArchBnStats::ArchitectToo`]); configurations stored before this setting
    /// existed read as [`ArchBnStats::WeightStepOnly`], the behaviour they ran with.
    #[serde(default = "ArchBnStats::before_setting")]
    pub bn_stats: ArchBnStats,
}

/// Which training-mode passes of a search step update the BatchNorm running statistics (they
/// are read only in evaluation mode: the epoch's validation metrics, never α or the weights).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArchBnStats {
    /// As the reference: the architecture step's passes on the real model update them too, in
    /// order, before the weight step's forward — first order the validation pass at `w`;
    /// second order the virtual step's training pass at `w` and the two finite-difference
    /// passes at `w ± ε·u` (the unrolled model's validation pass updates a copy that is thrown
    /// away, as the reference's `model.new()`). `cnn/architect.py:39-41, 21, 80, 85`.
    #[default]
    ArchitectToo,
    /// Only the weight step's forward updates them (this library's behaviour before the
    /// setting existed).
    WeightStepOnly,
}

impl ArchBnStats {
    fn before_setting() -> Self {
        ArchBnStats::WeightStepOnly
    }
}

/// Behaviours of the reference code that are not the mathematically intended ones, as opt-in
/// switches for reproducing its numbers exactly. All off by default; docs/reference.md lists
/// them with the reference's file and line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReferenceQuirks {
    /// The recurrent reference never applies the virtual step to the tied embedding/decoder
    /// matrix: it builds the unrolled model from a state dict in which the stale
    /// `decoder.weight` overwrites the just-stepped `encoder.weight` (one tied parameter), so
    /// `w'` keeps `w` for it (`rnn/architect.py:82-95`). The finite-difference passes still shift
    /// it. Applies to [`ArchModel::tied_param_ids`].
    #[serde(default)]
    pub tied_weights_not_unrolled: bool,
    /// The recurrent reference scales the Hessian term by `max / (‖∇w L_train‖ + 1e-6)` even
    /// when that exceeds 1, i.e. when no clipping happened (`rnn/architect.py:17,73`); by default
    /// the factor is `min(1, ·)`, the derivative of the step actually taken.
    #[serde(default)]
    pub unclamped_clip_factor: bool,
}

impl Default for ArchitectConfig {
    fn default() -> Self {
        Self {
            order: Order::First,
            arch_lr: 3e-4,
            arch_betas: (0.5, 0.999),
            arch_eps: 1e-8,
            arch_weight_decay: 1e-3,
            fd_r: 0.01,
            virtual_grad_clip: None,
            quirks: ReferenceQuirks::default(),
            bn_stats: ArchBnStats::ArchitectToo,
        }
    }
}

/// The architecture gradient and what was seen computing it.
#[derive(Debug, Clone)]
pub struct ArchGradient<B: AutodiffBackend> {
    /// `dα`, per architecture parameter (flattened).
    pub dalpha: FlatParams<B>,
    /// Validation loss at `w` (first order) or `w'` (second order).
    pub val_loss: f64,
    /// Correct predictions on the validation batch (same weights as `val_loss`).
    pub val_correct: Option<f64>,
    /// Validation batch size.
    pub val_size: usize,
    /// `ε` of the finite difference (second order only).
    pub eps: Option<f64>,
    /// Recurrent state reached by the validation pass (empty for feed-forward models).
    pub val_state: Vec<Tensor<B::InnerBackend, 2>>,
}

/// Splits flat gradients into (weights, architecture).
fn split<B: AutodiffBackend>(
    mut all: FlatParams<B>,
    arch: &[ParamId],
) -> (FlatParams<B>, FlatParams<B>) {
    let mut a = BTreeMap::new();
    for id in arch {
        if let Some(g) = all.remove(id) {
            a.insert(*id, g);
        }
    }
    (all, a)
}

/// Gradients of a loss, split into weights and architecture, with what the pass reported.
#[derive(Debug, Clone)]
pub struct LossGradients<B: AutodiffBackend> {
    /// Gradients of the weights.
    pub weights: FlatParams<B>,
    /// Gradients of the architecture parameters.
    pub arch: FlatParams<B>,
    /// The reported loss (`raw_loss` if the model gave one, else `loss`).
    pub loss: f64,
    /// Correct predictions, if reported.
    pub correct: Option<f64>,
    /// Batch size.
    pub size: usize,
    /// Recurrent state reached (empty for feed-forward models).
    pub state: Vec<Tensor<B::InnerBackend, 2>>,
}

fn gradients_of<B: AutodiffBackend, M: ArchModel<B>>(
    model: &M,
    out: BatchOutput<B>,
) -> LossGradients<B> {
    let reported = out
        .raw_loss
        .map(|l| l.detach())
        .unwrap_or_else(|| out.loss.clone().detach());
    let correct = out.correct.map(|c| c.detach());
    let grads = out.loss.backward();
    let (weights, arch) = split::<B>(gradients(model, &grads), &model.arch_param_ids());
    LossGradients {
        weights,
        arch,
        loss: darts_ops::to_f64(&reported),
        correct: correct.map(|c| darts_ops::to_f64(&c)),
        size: out.size,
        state: out.state,
    }
}

/// Gradients of [`ArchModel::forward_batch`]'s loss (the architect's objective).
pub fn loss_gradients<B: AutodiffBackend, M: ArchModel<B>>(
    model: &M,
    batch: &M::Batch,
) -> LossGradients<B> {
    join_parameter_graphs(model);
    gradients_of(model, model.forward_batch(batch))
}

/// Like [`loss_gradients`], but only the architecture gradients (`weights` is empty): the
/// weights are constants in this pass, so the backward skips every weight-gradient kernel.
/// The first-order architect step and the two finite-difference passes of the second-order
/// step need nothing else.
pub fn arch_gradients<B: AutodiffBackend, M: ArchModel<B>>(
    model: &M,
    batch: &M::Batch,
) -> LossGradients<B> {
    let arch = model.arch_param_ids();
    loss_gradients(&only_trainable(model.clone(), &arch), batch)
}

/// Gradients of [`ArchModel::forward_train`]'s loss (the weight step's objective).
pub fn train_gradients<B: AutodiffBackend, M: ArchModel<B>>(
    model: &M,
    batch: &M::Batch,
) -> LossGradients<B> {
    join_parameter_graphs(model);
    gradients_of(model, model.forward_train(batch))
}

struct TrackedParams<B: AutodiffBackend>(Vec<Tensor<B, 1>>);

impl<B: AutodiffBackend> ModuleVisitor<B> for TrackedParams<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let t = param.val();
        if t.is_require_grad() && t.shape().num_elements() > 0 {
            let n = t.shape().num_elements();
            self.0.push(t.reshape([n]));
        }
    }
}

/// Put every trainable parameter of `model` into one autodiff graph before a forward pass.
///
/// Burn 0.21 gives each parameter leaf a graph of its own and merges two graphs whenever an
/// operation first combines them, moving one graph's bookkeeping into the other in arbitrary
/// order, so about half of the ~850 parameter merges of a supernet forward copy the whole
/// activation graph built so far (quadratic; measured at a quarter of a CPU search step). One
/// n-ary operation on a one-element view of each parameter merges the small parameter graphs
/// up front; the forward then adds every node to that graph. The joining node is dropped at
/// once and is not an ancestor of the loss, so gradients are unchanged. On the CPU one `cat` of
/// one value per parameter; on the GPU autodiff backends, where that is two kernel launches per
/// parameter, a tree of binary no-op autodiff nodes
/// ([`darts_ops::kernels::gpu::join_graphs`]). [`loss_gradients`] and [`train_gradients`] call
/// it.
pub fn join_parameter_graphs<B: AutodiffBackend, M: Module<B>>(model: &M) {
    let mut params = TrackedParams(Vec::new());
    model.visit(&mut params);
    if params.0.len() > 1 {
        // On the GPU autodiff backends a tree of launch-free binary nodes does the join.
        if let Err(params) = darts_ops::kernels::gpu::join_graphs(params.0) {
            let views = params.into_iter().map(|p| p.narrow(0, 0, 1)).collect();
            drop(Tensor::cat(views, 0));
        }
    }
}

/// The architect: computes `dα` and applies the Adam step to `α`.
#[derive(Clone, Debug)]
pub struct Architect<B: AutodiffBackend> {
    /// Configuration.
    pub config: ArchitectConfig,
    /// Adam on the architecture parameters.
    pub adam: Adam<B::InnerBackend>,
}

impl<B: AutodiffBackend> Architect<B> {
    /// A new architect.
    pub fn new(config: ArchitectConfig) -> Self {
        Self {
            adam: Adam::new(
                config.arch_lr,
                config.arch_betas,
                config.arch_eps,
                config.arch_weight_decay,
            ),
            config,
        }
    }

    /// `dα` of the configured order. `w_opt` is the real weight optimiser (its momentum buffers
    /// and weight decay enter the virtual step); `xi` is the current weight learning rate.
    /// Neither `model` nor `w_opt` is modified.
    pub fn gradient<M: ArchModel<B>>(
        &self,
        model: &M,
        w_opt: &Sgd<B::InnerBackend>,
        train: &M::Batch,
        val: &M::Batch,
        xi: f64,
    ) -> ArchGradient<B> {
        self.gradient_with(model, w_opt, train, val, xi, None)
    }

    /// [`Architect::gradient`] of one peer of a data-parallel group (`sync`; `None`: a single
    /// device): `train` and `val` are this peer's shards, and the result is the gradient of the
    /// global batch (see [`crate::sync`] for what is reduced). The reported validation loss and
    /// correct count stay this peer's own.
    pub fn gradient_with<M: ArchModel<B>>(
        &self,
        model: &M,
        w_opt: &Sgd<B::InnerBackend>,
        train: &M::Batch,
        val: &M::Batch,
        xi: f64,
        sync: Option<&dyn GradSync<B::InnerBackend>>,
    ) -> ArchGradient<B> {
        match self.config.order {
            Order::First => {
                let mut g = arch_gradients(model, val);
                if let Some(s) = sync {
                    reduce_mean(s, &all_ids(model), &mut [&mut g.arch], g.size);
                }
                ArchGradient {
                    dalpha: g.arch,
                    val_loss: g.loss,
                    val_correct: g.correct,
                    val_size: g.size,
                    eps: None,
                    val_state: g.state,
                }
            }
            Order::Second => self.unrolled_gradient(model, w_opt, train, val, xi, sync),
        }
    }

    /// The virtual step `w' = w − ξ (momentum·v + ∇w L_train(w, α) + wd·w)` on a copy of the
    /// weights (returned flat, by id). With [`ArchitectConfig::virtual_grad_clip`] the gradient
    /// is clipped first.
    pub fn virtual_step<M: ArchModel<B>>(
        &self,
        model: &M,
        w_opt: &Sgd<B::InnerBackend>,
        train: &M::Batch,
        xi: f64,
    ) -> FlatParams<B> {
        self.virtual_step_with_clip(model, w_opt, train, xi, None).0
    }

    /// [`Architect::virtual_step`] and the clip factor applied to the gradient (1 unclipped).
    fn virtual_step_with_clip<M: ArchModel<B>>(
        &self,
        model: &M,
        w_opt: &Sgd<B::InnerBackend>,
        train: &M::Batch,
        xi: f64,
        sync: Option<&dyn GradSync<B::InnerBackend>>,
    ) -> (FlatParams<B>, f64) {
        let g = loss_gradients(model, train);
        let mut gw = g.weights;
        if let Some(s) = sync {
            reduce_mean(s, &all_ids(model), &mut [&mut gw], g.size);
        }
        let coef = match self.config.virtual_grad_clip {
            Some(max) => {
                let norm = clip_grad_norm(&mut gw, max);
                let coef = max / (norm + 1e-6);
                if self.config.quirks.unclamped_clip_factor {
                    coef
                } else {
                    coef.min(1.0)
                }
            }
            None => 1.0,
        };
        let ids: Vec<ParamId> = gw.keys().copied().collect();
        let w = values(model, &ids);
        let frozen = if self.config.quirks.tied_weights_not_unrolled {
            model.tied_param_ids()
        } else {
            Vec::new()
        };
        let mut w_prime = BTreeMap::new();
        for (id, g) in gw {
            let wi = w[&id].clone();
            if frozen.contains(&id) {
                w_prime.insert(id, wi);
                continue;
            }
            let mut d = g + wi.clone() * w_opt.weight_decay;
            if let Some(m) = w_opt.moment(&id) {
                d = d + m;
            }
            w_prime.insert(id, wi - d * xi);
        }
        (w_prime, coef)
    }

    fn unrolled_gradient<M: ArchModel<B>>(
        &self,
        model: &M,
        w_opt: &Sgd<B::InnerBackend>,
        train: &M::Batch,
        val: &M::Batch,
        xi: f64,
        sync: Option<&dyn GradSync<B::InnerBackend>>,
    ) -> ArchGradient<B> {
        let order = sync.map(|_| all_ids(model)).unwrap_or_default();
        // w' and the unrolled model (a clone: the real model is untouched).
        let (w_prime, coef) = self.virtual_step_with_clip(model, w_opt, train, xi, sync);
        let unrolled = set_values(model.clone(), &w_prime);
        // ∇α L_val(w', α) and the vector ∇w' L_val(w', α). Running statistics of this pass
        // belong to the throw-away unrolled model (the reference's `model.new()`): an inner
        // recording scope keeps them out of any recording around this call.
        let (g, _unrolled_bn) = record_bn_updates(|| loss_gradients(&unrolled, val));
        drop(unrolled);
        let (mut vector, mut dalpha) = (g.weights, g.arch);
        if let Some(s) = sync {
            // Both before the norm of the vector sets ε: every peer takes the same ε and w±.
            reduce_mean(s, &order, &mut [&mut vector, &mut dalpha], g.size);
        }
        // The recurrent reference clips u = ∇w' L_val(w') like the weight gradient before ε is
        // taken from it (rnn/architect.py:68): the Hessian term scales by min(1, max / ‖u‖).
        if let Some(max) = self.config.virtual_grad_clip {
            clip_grad_norm(&mut vector, max);
        }
        let mut out = ArchGradient {
            dalpha: BTreeMap::new(),
            val_loss: g.loss,
            val_correct: g.correct,
            val_size: g.size,
            eps: None,
            val_state: g.state,
        };
        // ε = r / ‖vector‖
        let norm = global_norm(&vector.values().collect::<Vec<_>>());
        if norm == 0.0 || !norm.is_finite() {
            out.dalpha = dalpha;
            return out;
        }
        let eps = self.config.fd_r / norm;
        let ids: Vec<ParamId> = vector.keys().copied().collect();
        let w = values(model, &ids);
        let shifted = |sign: f64| -> FlatParams<B> {
            ids.iter()
                .map(|id| (*id, w[id].clone() + vector[id].clone() * (sign * eps)))
                .collect()
        };
        let plus = arch_gradients(&set_values(model.clone(), &shifted(1.0)), train);
        let g_minus = arch_gradients(&set_values(model.clone(), &shifted(-1.0)), train).arch;
        // g⁺ − g⁻, the finite difference of the train-loss α gradients (of the global batch
        // when data-parallel).
        let mut diff: FlatParams<B> = plus
            .arch
            .iter()
            .filter_map(|(id, p)| Some((*id, p.clone() - g_minus.get(id)?.clone())))
            .collect();
        if let Some(s) = sync {
            reduce_mean(s, &order, &mut [&mut diff], plus.size);
        }
        // dα = ∇α L_val(w', α) − ξ · c · (g⁺ − g⁻) / 2ε   (c = clip factor of the virtual step)
        for (id, d) in dalpha.iter_mut() {
            if let Some(df) = diff.get(id) {
                let hvp = df.clone() / (2.0 * eps);
                *d = d.clone() - hvp * (xi * coef);
            }
        }
        out.dalpha = dalpha;
        out.eps = Some(eps);
        out
    }

    /// Compute `dα` and apply one Adam step to `α`. Returns the updated model and the gradient.
    /// With [`ArchBnStats::ArchitectToo`] the returned model also carries the BatchNorm running
    /// statistics of the architecture step's training-mode passes (chained in their order).
    pub fn step<M: ArchModel<B>>(
        &mut self,
        model: M,
        w_opt: &Sgd<B::InnerBackend>,
        train: &M::Batch,
        val: &M::Batch,
        xi: f64,
    ) -> (M, ArchGradient<B>) {
        self.step_with(model, w_opt, train, val, xi, None)
    }

    /// [`Architect::step`] of one peer of a data-parallel group (see
    /// [`Architect::gradient_with`]): every peer applies the same Adam step.
    pub fn step_with<M: ArchModel<B>>(
        &mut self,
        model: M,
        w_opt: &Sgd<B::InnerBackend>,
        train: &M::Batch,
        val: &M::Batch,
        xi: f64,
        sync: Option<&dyn GradSync<B::InnerBackend>>,
    ) -> (M, ArchGradient<B>) {
        let (grad, bn) = match self.config.bn_stats {
            ArchBnStats::ArchitectToo => {
                record_bn_updates(|| self.gradient_with(&model, w_opt, train, val, xi, sync))
            }
            ArchBnStats::WeightStepOnly => (
                self.gradient_with(&model, w_opt, train, val, xi, sync),
                BnUpdates::default(),
            ),
        };
        let ids: Vec<ParamId> = grad.dalpha.keys().copied().collect();
        let alpha = values(&model, &ids);
        let new = self.adam.step(&alpha, &grad.dalpha);
        (bn.apply(set_values(model, &new)), grad)
    }
}
