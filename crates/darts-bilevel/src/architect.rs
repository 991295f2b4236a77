//! The architecture step (paper §2.3, Algorithm 1; reference `cnn/architect.py`).
//!
//! Symbols follow the paper: `w` weights, `α` architecture, `ξ` (xi) the virtual-step learning
//! rate (the current weight learning rate), `ε` (eps) the finite-difference step.
//!
//! * First order: `∇α L_val(w, α)`.
//! * Second order: `w' = w − ξ (momentum·v + ∇w L_train(w, α) + wd·w)` (no clipping), then
//!   `∇α L_val(w', α) − ξ · H`, where the Hessian-vector product
//!   `H = (∇α L_train(w⁺, α) − ∇α L_train(w⁻, α)) / 2ε`, `w± = w ± ε ∇w' L_val(w', α)` and
//!   `ε = 0.01 / ‖∇w' L_val(w', α)‖₂` (see `docs/second-order.md`).
//!
//! Burn has no double backward, so the Hessian term uses the finite difference, exactly like
//! the reference. Every pass here runs on clones with replaced weights and records no BatchNorm
//! statistics, so the real weights, the optimiser state and the running statistics are left
//! bit-identical.

use crate::optim::{Adam, Sgd};
use crate::params::{global_norm, gradients, set_values, values, FlatParams};
use burn::module::{AutodiffModule, ParamId};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What one forward pass on a batch produced.
#[derive(Debug, Clone)]
pub struct BatchOutput<B: AutodiffBackend> {
    /// Scalar loss, shape `[1]`.
    pub loss: Tensor<B, 1>,
    /// Number of correct predictions (shape `[1]`), if the task has a notion of accuracy.
    pub correct: Option<Tensor<B, 1>>,
    /// Number of examples (or tokens) in the batch.
    pub size: usize,
}

/// A model with weights `w` and architecture parameters `α`: what the architect optimises.
///
/// Implemented by the CNN and RNN supernets and by any user-defined supernet. All parameters
/// that are not architecture parameters and receive a gradient are weights.
pub trait ArchModel<B: AutodiffBackend>: AutodiffModule<B> + Clone {
    /// A batch of data (inputs and targets).
    type Batch;

    /// Forward pass in training mode, returning the loss (and optionally the correct count).
    fn forward_batch(&self, batch: &Self::Batch) -> BatchOutput<B>;

    /// Ids of the architecture parameters.
    fn arch_param_ids(&self) -> Vec<ParamId>;

    /// The loss alone.
    fn loss(&self, batch: &Self::Batch) -> Tensor<B, 1> {
        self.forward_batch(batch).loss
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

fn scalar<B: AutodiffBackend>(t: Tensor<B, 1>) -> f64 {
    let d = t.inner().into_data().convert::<f64>();
    d.to_vec::<f64>().expect("f64 data")[0]
}

/// Gradients of `model.loss(batch)`, split into (weights, architecture), plus the output.
pub fn loss_gradients<B: AutodiffBackend, M: ArchModel<B>>(
    model: &M,
    batch: &M::Batch,
) -> (FlatParams<B>, FlatParams<B>, f64, Option<f64>, usize) {
    let out = model.forward_batch(batch);
    let loss_val = out.loss.clone().detach();
    let correct = out.correct.map(|c| c.detach());
    let grads = out.loss.backward();
    let (w, a) = split::<B>(gradients(model, &grads), &model.arch_param_ids());
    (w, a, scalar(loss_val), correct.map(scalar), out.size)
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
        match self.config.order {
            Order::First => {
                let (_, dalpha, val_loss, val_correct, val_size) = loss_gradients(model, val);
                ArchGradient {
                    dalpha,
                    val_loss,
                    val_correct,
                    val_size,
                    eps: None,
                }
            }
            Order::Second => self.unrolled_gradient(model, w_opt, train, val, xi),
        }
    }

    /// The virtual step `w' = w − ξ (momentum·v + ∇w L_train(w, α) + wd·w)` on a copy of the
    /// weights (returned flat, by id).
    pub fn virtual_step<M: ArchModel<B>>(
        &self,
        model: &M,
        w_opt: &Sgd<B::InnerBackend>,
        train: &M::Batch,
        xi: f64,
    ) -> FlatParams<B> {
        let (gw, _, _, _, _) = loss_gradients(model, train);
        let ids: Vec<ParamId> = gw.keys().copied().collect();
        let w = values(model, &ids);
        let mut w_prime = BTreeMap::new();
        for (id, g) in gw {
            let wi = w[&id].clone();
            let mut d = g + wi.clone() * w_opt.weight_decay;
            if let Some(m) = w_opt.moment(&id) {
                d = d + m;
            }
            w_prime.insert(id, wi - d * xi);
        }
        w_prime
    }

    fn unrolled_gradient<M: ArchModel<B>>(
        &self,
        model: &M,
        w_opt: &Sgd<B::InnerBackend>,
        train: &M::Batch,
        val: &M::Batch,
        xi: f64,
    ) -> ArchGradient<B> {
        // w' and the unrolled model (a clone: the real model is untouched).
        let w_prime = self.virtual_step(model, w_opt, train, xi);
        let unrolled = set_values(model.clone(), &w_prime);
        // ∇α L_val(w', α) and the vector ∇w' L_val(w', α).
        let (vector, mut dalpha, val_loss, val_correct, val_size) = loss_gradients(&unrolled, val);
        drop(unrolled);
        // ε = r / ‖vector‖
        let norm = global_norm(&vector.values().collect::<Vec<_>>());
        if norm == 0.0 || !norm.is_finite() {
            return ArchGradient {
                dalpha,
                val_loss,
                val_correct,
                val_size,
                eps: None,
            };
        }
        let eps = self.config.fd_r / norm;
        let ids: Vec<ParamId> = vector.keys().copied().collect();
        let w = values(model, &ids);
        let shifted = |sign: f64| -> FlatParams<B> {
            ids.iter()
                .map(|id| (*id, w[id].clone() + vector[id].clone() * (sign * eps)))
                .collect()
        };
        let (_, g_plus, _, _, _) = loss_gradients(&set_values(model.clone(), &shifted(1.0)), train);
        let (_, g_minus, _, _, _) =
            loss_gradients(&set_values(model.clone(), &shifted(-1.0)), train);
        // dα = ∇α L_val(w', α) − ξ (g⁺ − g⁻) / 2ε
        for (id, d) in dalpha.iter_mut() {
            if let (Some(p), Some(m)) = (g_plus.get(id), g_minus.get(id)) {
                let hvp = (p.clone() - m.clone()) / (2.0 * eps);
                *d = d.clone() - hvp * xi;
            }
        }
        ArchGradient {
            dalpha,
            val_loss,
            val_correct,
            val_size,
            eps: Some(eps),
        }
    }

    /// Compute `dα` and apply one Adam step to `α`. Returns the updated model and the gradient.
    pub fn step<M: ArchModel<B>>(
        &mut self,
        model: M,
        w_opt: &Sgd<B::InnerBackend>,
        train: &M::Batch,
        val: &M::Batch,
        xi: f64,
    ) -> (M, ArchGradient<B>) {
        let grad = self.gradient(&model, w_opt, train, val, xi);
        let ids: Vec<ParamId> = grad.dalpha.keys().copied().collect();
        let alpha = values(&model, &ids);
        let new = self.adam.step(&alpha, &grad.dalpha);
        (set_values(model, &new), grad)
    }
}
