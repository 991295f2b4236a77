//! The bilevel search loop: per step, an architecture step on a validation batch, then a weight
//! step on a training batch (Algorithm 1 of the paper).

use crate::architect::{train_gradients, ArchModel, Architect, ArchitectConfig};
use crate::optim::{clip_grad_norm, CosineLr, Sgd};
use crate::params::{set_values, values};
use burn::module::ParamId;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;
use darts_ops::record_bn_updates;
use serde::{Deserialize, Serialize};

/// Hyper-parameters of the weight optimiser (reference defaults).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct WeightConfig {
    /// Cosine learning-rate schedule (0.025 → 0.001 over the epochs).
    pub lr: CosineLr,
    /// SGD momentum (0.9).
    pub momentum: f64,
    /// SGD weight decay (3e-4).
    pub weight_decay: f64,
    /// Global gradient-norm clip (5.0); `None` disables clipping.
    pub grad_clip: Option<f64>,
}

impl WeightConfig {
    /// The reference CIFAR-10 search settings for `epochs` epochs.
    pub fn darts_cifar(epochs: usize) -> Self {
        Self {
            lr: CosineLr {
                max: 0.025,
                min: 0.001,
                epochs,
            },
            momentum: 0.9,
            weight_decay: 3e-4,
            grad_clip: Some(5.0),
        }
    }
}

/// What one search step measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StepStats {
    /// Training loss (weight step, before the update).
    pub train_loss: f64,
    /// Correct training predictions, if available.
    pub train_correct: Option<f64>,
    /// Training batch size.
    pub train_size: usize,
    /// Validation loss seen by the architecture step.
    pub val_loss: f64,
    /// Correct validation predictions, if available.
    pub val_correct: Option<f64>,
    /// Validation batch size.
    pub val_size: usize,
    /// Global weight-gradient norm before clipping.
    pub grad_norm: f64,
    /// Finite-difference ε (second order).
    pub eps: Option<f64>,
    /// Weight learning rate used.
    pub lr: f64,
}

/// What [`Bilevel::step_with_state`] returns.
#[derive(Clone, Debug)]
pub struct StepOutcome<B: AutodiffBackend> {
    /// Statistics of the step.
    pub stats: StepStats,
    /// Recurrent state after the weight-step pass on the training batch.
    pub train_state: Vec<Tensor<B::InnerBackend, 2>>,
    /// Recurrent state after the architecture-step pass on the validation batch.
    pub val_state: Vec<Tensor<B::InnerBackend, 2>>,
}

/// Events emitted by [`Bilevel::run_epoch`].
#[derive(Clone, Debug)]
pub enum SearchEvent<'a> {
    /// A step finished.
    Step {
        /// Epoch (0-based).
        epoch: usize,
        /// Step within the epoch (0-based).
        step: usize,
        /// Its statistics.
        stats: &'a StepStats,
    },
}

/// Running means over an epoch.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochStats {
    /// Steps taken.
    pub steps: usize,
    /// Mean training loss (weighted by batch size).
    pub train_loss: f64,
    /// Training accuracy (fraction), if available.
    pub train_acc: Option<f64>,
    /// Mean validation loss seen by the architecture steps.
    pub val_loss: f64,
    /// Validation accuracy seen by the architecture steps, if available.
    pub val_acc: Option<f64>,
    /// Learning rate of the epoch.
    pub lr: f64,
}

#[derive(Default)]
struct Meter {
    n: f64,
    loss: f64,
    correct: Option<f64>,
}

impl Meter {
    fn add(&mut self, loss: f64, correct: Option<f64>, size: usize) {
        let s = size as f64;
        self.n += s;
        self.loss += loss * s;
        if let Some(c) = correct {
            *self.correct.get_or_insert(0.0) += c;
        }
    }
    fn mean(&self) -> (f64, Option<f64>) {
        let n = self.n.max(1.0);
        (self.loss / n, self.correct.map(|c| c / n))
    }
}

/// The whole bilevel optimisation state: model, weight optimiser and architect.
#[derive(Clone, Debug)]
pub struct Bilevel<B: AutodiffBackend, M: ArchModel<B>> {
    /// The supernet (weights and α).
    pub model: M,
    /// SGD on the weights (its momentum buffers are read by the unrolled step).
    pub w_opt: Sgd<B::InnerBackend>,
    /// The architect (Adam on α).
    pub architect: Architect<B>,
    /// Weight-optimiser settings.
    pub weights: WeightConfig,
}

impl<B: AutodiffBackend, M: ArchModel<B>> Bilevel<B, M> {
    /// Fresh optimiser state around `model`.
    pub fn new(model: M, weights: WeightConfig, arch: ArchitectConfig) -> Self {
        Self {
            model,
            w_opt: Sgd::new(weights.momentum, weights.weight_decay),
            architect: Architect::new(arch),
            weights,
        }
    }

    /// One search step at weight learning rate `lr`: architecture step on `val` (using `train`
    /// for the virtual step when second order), then the weight step on `train` (global-norm
    /// clipping, SGD), committing BatchNorm running statistics of the weight-step forward.
    pub fn step(&mut self, train: &M::Batch, val: &M::Batch, lr: f64) -> StepStats {
        self.step_with_state(train, val, lr).stats
    }

    /// [`Bilevel::step`], also returning the recurrent states the two passes ended in (for
    /// models that carry state across batches; empty otherwise).
    pub fn step_with_state(&mut self, train: &M::Batch, val: &M::Batch, lr: f64) -> StepOutcome<B> {
        let (model, ag) = self
            .architect
            .step(self.model.clone(), &self.w_opt, train, val, lr);
        let (g, bn) = record_bn_updates(|| train_gradients(&model, train));
        let mut gw = g.weights;
        let grad_norm = match self.weights.grad_clip {
            Some(max) => clip_grad_norm(&mut gw, max),
            None => crate::params::global_norm(&gw.values().collect::<Vec<_>>()),
        };
        let ids: Vec<ParamId> = gw.keys().copied().collect();
        let w = values(&model, &ids);
        let new = self.w_opt.step(lr, &w, &gw);
        self.model = bn.apply(set_values(model, &new));
        StepOutcome {
            stats: StepStats {
                train_loss: g.loss,
                train_correct: g.correct,
                train_size: g.size,
                val_loss: ag.val_loss,
                val_correct: ag.val_correct,
                val_size: ag.val_size,
                grad_norm,
                eps: ag.eps,
                lr,
            },
            train_state: g.state,
            val_state: ag.val_state,
        }
    }

    /// One epoch: a step for each training batch, pairing it with the next validation batch
    /// (the validation stream should cycle; the epoch ends early if it runs dry).
    pub fn run_epoch(
        &mut self,
        epoch: usize,
        train: impl IntoIterator<Item = M::Batch>,
        val: &mut impl Iterator<Item = M::Batch>,
        mut on_event: impl FnMut(SearchEvent<'_>),
    ) -> EpochStats {
        let lr = self.weights.lr.at(epoch);
        let (mut tm, mut vm) = (Meter::default(), Meter::default());
        let mut steps = 0;
        for (step, t) in train.into_iter().enumerate() {
            let Some(v) = val.next() else { break };
            let stats = self.step(&t, &v, lr);
            tm.add(stats.train_loss, stats.train_correct, stats.train_size);
            vm.add(stats.val_loss, stats.val_correct, stats.val_size);
            on_event(SearchEvent::Step {
                epoch,
                step,
                stats: &stats,
            });
            steps += 1;
        }
        let (train_loss, train_acc) = tm.mean();
        let (val_loss, val_acc) = vm.mean();
        EpochStats {
            steps,
            train_loss,
            train_acc,
            val_loss,
            val_acc,
            lr,
        }
    }
}
