//! The bilevel search loop: per step, an architecture step on a validation batch, then a weight
//! step on a training batch (Algorithm 1 of the paper).

use crate::architect::{join_parameter_graphs, ArchModel, Architect, ArchitectConfig};
use crate::optim::{clip_grad_norm, CosineLr, Sgd};
use crate::params::{all_ids, gradients, set_values, values, FlatParams};
use crate::perturb::{perturbed_op_weights, Perturbation};
use crate::sync::{reduce_mean, sum_host, GradSync, SharedSync};
use burn::module::{AutodiffModule, ParamId};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;
use darts_mixed_op::stochastic::NoiseSource;
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

impl StepStats {
    /// The first quantity of the step that is NaN or infinite (training loss, validation loss,
    /// weight-gradient norm, finite-difference ε), or `None` when all are finite. A non-finite
    /// gradient anywhere makes the global norm non-finite, so this covers every gradient.
    pub fn non_finite(&self) -> Option<&'static str> {
        if !self.train_loss.is_finite() {
            Some("training loss")
        } else if self.val_size > 0 && !self.val_loss.is_finite() {
            Some("validation loss")
        } else if !self.grad_norm.is_finite() {
            Some("weight-gradient norm")
        } else if self.eps.is_some_and(|e| !e.is_finite()) {
            Some("finite-difference step ε (norm of ∇w′ L_val)")
        } else {
            None
        }
    }
}

/// What [`Bilevel::run_epoch`] does when a step's loss, gradient norm or α is NaN or infinite.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum NonFinitePolicy {
    /// End the epoch at that step and report it in [`EpochStats::non_finite`]; the model and
    /// optimiser state are those after the bad step (the caller keeps its last checkpoint).
    #[default]
    Stop,
    /// Undo the step (weights, α and both optimisers' state as before it) and go on with the
    /// next batch, counting it in [`EpochStats::skipped`], as mixed-precision trainers skip
    /// overflowing steps. An epoch in which every step was skipped ends as with `Stop`.
    SkipStep,
}

/// A step whose results were not finite.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NonFiniteStep {
    /// Step within the epoch (0-based).
    pub step: usize,
    /// What was not finite.
    pub what: String,
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

/// What [`weight_step`] reports besides the updated model.
#[derive(Clone, Debug)]
pub struct WeightStep<B: AutodiffBackend, A> {
    /// The loss before the update (detached; reading it synchronises the device).
    pub loss: Tensor<B::InnerBackend, 1>,
    /// Whatever the forward closure returned next to the loss (a correct count, a state).
    pub aux: A,
    /// Global norm of the weight gradients before clipping.
    pub grad_norm: f64,
    /// The new values of the parameters that were updated, flattened (for weight averaging).
    pub updated: FlatParams<B>,
}

/// One SGD step on the weights of `model`: the parameter graphs are joined
/// ([`join_parameter_graphs`]), `forward` computes the loss, its gradients are clipped to the
/// global norm `grad_clip` (when given), `sgd` updates every parameter that received a gradient
/// and the BatchNorm running statistics of the forward are committed. Returns the updated model.
/// This is the weight step of every loop in the library: the search ([`Bilevel::step`]), and
/// training a derived CNN or RNN from scratch.
///
/// ```
/// use burn::backend::{Autodiff, Flex};
/// use burn::module::Module;
/// use burn::nn::{Linear, LinearConfig};
/// use burn::tensor::Tensor;
/// use darts_bilevel::{weight_step, Sgd};
/// type B = Autodiff<Flex>;
/// let dev = Default::default();
/// let lin: Linear<B> = LinearConfig::new(3, 1).init(&dev);
/// let x = Tensor::<B, 2>::ones([4, 3], &dev);
/// let mut sgd = Sgd::new(0.9, 3e-4);
/// let (lin, out) = weight_step(lin, &mut sgd, 0.1, Some(5.0), |m| {
///     (m.forward(x.clone()).powi_scalar(2).mean(), ())
/// });
/// assert!(out.grad_norm > 0.0);
/// assert_eq!(out.updated.len(), 2); // weight and bias
/// assert_eq!(lin.num_params(), 4);
/// ```
pub fn weight_step<B, M, A>(
    model: M,
    sgd: &mut Sgd<B::InnerBackend>,
    lr: f64,
    grad_clip: Option<f64>,
    forward: impl FnOnce(&M) -> (Tensor<B, 1>, A),
) -> (M, WeightStep<B, A>)
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
{
    weight_step_except(model, sgd, lr, grad_clip, &[], forward)
}

/// [`weight_step`] leaving the parameters in `frozen` alone: their gradients are neither
/// clipped with the others nor applied (the search's weight step freezes α this way).
pub fn weight_step_except<B, M, A>(
    model: M,
    sgd: &mut Sgd<B::InnerBackend>,
    lr: f64,
    grad_clip: Option<f64>,
    frozen: &[ParamId],
    forward: impl FnOnce(&M) -> (Tensor<B, 1>, A),
) -> (M, WeightStep<B, A>)
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
{
    weight_step_sharded(model, sgd, lr, grad_clip, frozen, None, |_| 0, forward)
}

/// [`weight_step_except`] of one peer of a data-parallel group (`sync`; `None`: a single
/// device): the gradients of this peer's shard (of `shard_size(aux)` samples) are replaced by
/// those of the global batch before clipping, so every peer takes the same step (see
/// [`crate::sync`]). The reported loss stays this peer's own.
#[allow(clippy::too_many_arguments)]
pub fn weight_step_sharded<B, M, A>(
    model: M,
    sgd: &mut Sgd<B::InnerBackend>,
    lr: f64,
    grad_clip: Option<f64>,
    frozen: &[ParamId],
    sync: Option<&dyn GradSync<B::InnerBackend>>,
    shard_size: impl FnOnce(&A) -> usize,
    forward: impl FnOnce(&M) -> (Tensor<B, 1>, A),
) -> (M, WeightStep<B, A>)
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
{
    let ((loss, aux, grads), bn) = record_bn_updates(|| {
        join_parameter_graphs(&model);
        let (loss, aux) = forward(&model);
        let reported = loss.clone().detach().inner();
        (reported, aux, loss.backward())
    });
    let mut g = gradients(&model, &grads);
    for id in frozen {
        g.remove(id);
    }
    if let Some(s) = sync {
        let n = shard_size(&aux);
        reduce_mean(s, &all_ids(&model), &mut [&mut g], n);
    }
    let grad_norm = match grad_clip {
        Some(max) => clip_grad_norm(&mut g, max),
        None => crate::params::global_norm(&g.values().collect::<Vec<_>>()),
    };
    let ids: Vec<ParamId> = g.keys().copied().collect();
    let w = values(&model, &ids);
    let updated = sgd.step(lr, &w, &g);
    let model = bn.apply(set_values(model, &updated));
    (
        model,
        WeightStep {
            loss,
            aux,
            grad_norm,
            updated,
        },
    )
}

/// What the weight step's forward hands back besides the loss: the loss to report, the
/// correct count, the batch size and the recurrent state.
type WeightAux<B> = (
    Option<Tensor<B, 1>>,
    Option<Tensor<B, 1>>,
    usize,
    Vec<Tensor<<B as AutodiffBackend>::InnerBackend, 2>>,
);

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
    /// Learning rate of the epoch ([`Bilevel::run_epoch`]: the schedule's;
    /// [`Bilevel::run_epoch_with`]: the mean over the steps taken, NaN without any).
    pub lr: f64,
    /// Training samples seen by the steps taken (tokens for a language model).
    pub train_samples: usize,
    /// Steps undone under [`NonFinitePolicy::SkipStep`].
    pub skipped: usize,
    /// The step that ended the epoch early because it was not finite.
    pub non_finite: Option<NonFiniteStep>,
    /// Why the epoch ended early because the data-parallel group failed (a peer died or timed
    /// out). The failed step's reductions were NaN, so the model is not to be kept: the
    /// drivers stop with an error and keep the last checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aborted: Option<String>,
}

#[derive(Default)]
struct Meter {
    n: f64,
    loss: f64,
    correct: Option<f64>,
}

impl Meter {
    fn add(&mut self, loss: f64, correct: Option<f64>, size: usize) {
        if size == 0 {
            return;
        }
        let s = size as f64;
        self.n += s;
        self.loss += loss * s;
        if let Some(c) = correct {
            *self.correct.get_or_insert(0.0) += c;
        }
    }
    /// Means over what was added; NaN for the loss when nothing was (an epoch without
    /// architecture steps has no validation loss).
    fn mean(&self) -> (f64, Option<f64>) {
        if self.n == 0.0 {
            return (f64::NAN, self.correct.map(|_| f64::NAN));
        }
        (self.loss / self.n, self.correct.map(|c| c / self.n))
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
    /// What [`Bilevel::run_epoch`] does with a non-finite step.
    pub on_non_finite: NonFinitePolicy,
    /// Whether the steps update α (true by default). Methods with a warm-up (PC-DARTS trains
    /// only the weights for its first 15 epochs) turn it off for those epochs: a step is then
    /// the weight step alone, and its validation statistics are empty (`val_size` 0).
    pub arch_updates: bool,
    /// Take the weight step before the architecture step (GDAS's order; DARTS, false, updates
    /// α first).
    pub weights_first: bool,
    /// SDARTS: perturb the op weights of each weight step (`None`: no perturbation).
    pub perturbation: Option<Perturbation>,
    /// Random numbers of the perturbations (restarted each epoch by the driver).
    pub noise: NoiseSource,
    /// The data-parallel group this replica belongs to (`None`: a single device). The batches
    /// passed to the steps are then this peer's shards; the gradients are those of the global
    /// batch ([`crate::sync`]), and [`StepStats`] reports the global batch (sizes, summed
    /// correct counts, size-weighted mean losses).
    pub sync: Option<SharedSync<B::InnerBackend>>,
}

impl<B: AutodiffBackend, M: ArchModel<B>> Bilevel<B, M> {
    /// Fresh optimiser state around `model`.
    pub fn new(model: M, weights: WeightConfig, arch: ArchitectConfig) -> Self {
        Self {
            model,
            w_opt: Sgd::new(weights.momentum, weights.weight_decay),
            architect: Architect::new(arch),
            weights,
            on_non_finite: NonFinitePolicy::Stop,
            arch_updates: true,
            weights_first: false,
            perturbation: None,
            noise: NoiseSource::default(),
            sync: None,
        }
    }

    /// One search step at weight learning rate `lr`: architecture step on `val` (using `train`
    /// for the virtual step when second order), then the weight step on `train` (global-norm
    /// clipping, SGD), committing BatchNorm running statistics of the weight-step forward (and
    /// first, with [`crate::ArchBnStats::ArchitectToo`], those of the architecture step's
    /// training-mode passes, as the reference).
    pub fn step(&mut self, train: &M::Batch, val: &M::Batch, lr: f64) -> StepStats {
        self.step_with_state(train, val, lr).stats
    }

    /// [`Bilevel::step`], also returning the recurrent states the two passes ended in (for
    /// models that carry state across batches; empty otherwise).
    pub fn step_with_state(&mut self, train: &M::Batch, val: &M::Batch, lr: f64) -> StepOutcome<B> {
        let model = self.model.clone();
        let (model, ag, w) = if self.weights_first {
            let (model, w) = self.weight_step(model, train, lr);
            let (model, ag) = self.arch_step(model, train, val, lr);
            (model, ag, w)
        } else {
            let (model, ag) = self.arch_step(model, train, val, lr);
            let (model, w) = self.weight_step(model, train, lr);
            (model, ag, w)
        };
        self.model = model;
        let (reported, correct, size, state) = w.aux;
        let train_loss = darts_ops::to_f64(&reported.map_or(w.loss, |l| l.inner()));
        let mut stats = StepStats {
            train_loss,
            train_correct: correct.map(|c| darts_ops::to_f64(&c.inner())),
            train_size: size,
            val_loss: ag.val_loss,
            val_correct: ag.val_correct,
            val_size: ag.val_size,
            grad_norm: w.grad_norm,
            eps: ag.eps,
            lr,
        };
        if let Some(s) = &self.sync {
            stats = global_stats(s.as_ref(), stats);
        }
        StepOutcome {
            stats,
            train_state: state,
            val_state: ag.val_state,
        }
    }

    /// The architecture step (or nothing, with [`Bilevel::arch_updates`] off).
    fn arch_step(
        &mut self,
        model: M,
        train: &M::Batch,
        val: &M::Batch,
        lr: f64,
    ) -> (M, crate::architect::ArchGradient<B>) {
        if self.arch_updates {
            let sync = self.sync.as_deref();
            self.architect
                .step_with(model, &self.w_opt, train, val, lr, sync)
        } else {
            let none = crate::architect::ArchGradient {
                dalpha: Default::default(),
                val_loss: f64::NAN,
                val_correct: None,
                val_size: 0,
                eps: None,
                val_state: Vec::new(),
            };
            (model, none)
        }
    }

    /// The weight step on `train` (with SDARTS's perturbed op weights when
    /// [`Bilevel::perturbation`] is set), α frozen.
    #[allow(clippy::type_complexity)]
    fn weight_step(
        &mut self,
        model: M,
        train: &M::Batch,
        lr: f64,
    ) -> (M, WeightStep<B, WeightAux<B>>) {
        let arch = model.arch_param_ids();
        let perturbed = self
            .perturbation
            .and_then(|p| perturbed_op_weights(&model, train, &p, &self.noise));
        weight_step_sharded(
            model,
            &mut self.w_opt,
            lr,
            self.weights.grad_clip,
            &arch,
            self.sync.as_deref(),
            |aux: &WeightAux<B>| aux.2,
            |m| {
                let out = match &perturbed {
                    Some(a) => {
                        let a: Vec<Tensor<B, 2>> =
                            a.iter().map(|t| Tensor::from_inner(t.clone())).collect();
                        m.forward_with_op_weights(train, &a)
                    }
                    None => m.forward_train(train),
                };
                let reported = out.raw_loss.map(|l| l.detach());
                let correct = out.correct.map(|c| c.detach());
                (out.loss, (reported, correct, out.size, out.state))
            },
        )
    }

    /// Whether every architecture parameter is finite (reads α back from the device).
    pub fn alphas_finite(&self) -> bool {
        let ids = self.model.arch_param_ids();
        values(&self.model, &ids)
            .values()
            .all(|t| darts_ops::to_f64s(t).into_iter().all(f64::is_finite))
    }

    /// One epoch: a step for each training batch, pairing it with the next validation batch
    /// (the validation stream should cycle; the epoch ends early if it runs dry), at the
    /// schedule's learning rate. A step whose loss or gradient norm is not finite is handled by
    /// [`Bilevel::on_non_finite`]; α is checked once at the end of the epoch (a non-finite α
    /// makes the next step's losses non-finite, so within the epoch the step checks catch it).
    pub fn run_epoch(
        &mut self,
        epoch: usize,
        train: impl IntoIterator<Item = M::Batch>,
        val: &mut impl Iterator<Item = M::Batch>,
        on_event: impl FnMut(SearchEvent<'_>),
    ) -> EpochStats {
        let lr = self.weights.lr.at(epoch);
        let mut train = train.into_iter();
        let mut stats = self.run_epoch_with(
            epoch,
            |_, _| {
                let t = train.next()?;
                let v = val.next()?;
                Some((t, v, lr))
            },
            on_event,
        );
        stats.lr = lr;
        stats
    }

    /// One epoch whose steps the caller builds one at a time: `next(step, previous)` returns
    /// the step's training batch, validation batch and learning rate (or `None` to end the
    /// epoch), given the outcome of the last step taken (`None` at the start of the epoch) —
    /// a recurrent model starts each window from the hidden states that outcome carries, and
    /// the recurrent search scales the learning rate by each window's length. Non-finite
    /// steps are handled as in [`Bilevel::run_epoch`]; a skipped step's outcome is not passed
    /// on.
    pub fn run_epoch_with(
        &mut self,
        epoch: usize,
        mut next: impl FnMut(usize, Option<&StepOutcome<B>>) -> Option<(M::Batch, M::Batch, f64)>,
        mut on_event: impl FnMut(SearchEvent<'_>),
    ) -> EpochStats {
        let (mut tm, mut vm) = (Meter::default(), Meter::default());
        let (mut steps, mut skipped, mut non_finite) = (0, 0, None);
        let (mut lr_sum, mut samples) = (0.0, 0);
        let mut last: Option<StepOutcome<B>> = None;
        let mut step = 0;
        let mut aborted = None;
        while let Some((t, v, lr)) = next(step, last.as_ref()) {
            let backup = (self.on_non_finite == NonFinitePolicy::SkipStep).then(|| self.clone());
            let outcome = self.step_with_state(&t, &v, lr);
            if let Some(why) = self.sync.as_ref().and_then(|s| s.failure()) {
                aborted = Some(why);
                break;
            }
            let stats = &outcome.stats;
            if let Some(what) = stats.non_finite() {
                if let Some(before) = backup {
                    *self = before;
                    skipped += 1;
                    step += 1;
                    continue;
                }
                non_finite = Some(NonFiniteStep {
                    step,
                    what: what.to_string(),
                });
                break;
            }
            tm.add(stats.train_loss, stats.train_correct, stats.train_size);
            vm.add(stats.val_loss, stats.val_correct, stats.val_size);
            lr_sum += lr;
            samples += stats.train_size;
            on_event(SearchEvent::Step { epoch, step, stats });
            steps += 1;
            step += 1;
            last = Some(outcome);
        }
        if non_finite.is_none() && steps == 0 && skipped > 0 {
            non_finite = Some(NonFiniteStep {
                step: skipped - 1,
                what: format!("every step of the epoch ({skipped}, all skipped)"),
            });
        }
        if non_finite.is_none() && steps > 0 && !self.alphas_finite() {
            non_finite = Some(NonFiniteStep {
                step: steps + skipped - 1,
                what: "architecture parameters α".into(),
            });
        }
        let (train_loss, train_acc) = tm.mean();
        let (val_loss, val_acc) = vm.mean();
        EpochStats {
            steps,
            train_loss,
            train_acc,
            val_loss,
            val_acc,
            lr: lr_sum / steps as f64,
            train_samples: samples,
            skipped,
            non_finite,
            aborted,
        }
    }
}

/// The statistics of the global batch from one peer's: sizes and correct counts summed, losses
/// weighted by shard size; the gradient norm and ε are already global.
fn global_stats<B: burn::tensor::backend::Backend>(
    sync: &dyn GradSync<B>,
    s: StepStats,
) -> StepStats {
    let (tn, vn) = (s.train_size as f64, s.val_size as f64);
    // A peer without an architecture step reports NaN for its (empty) validation loss.
    let vl = if s.val_size > 0 { s.val_loss * vn } else { 0.0 };
    let local = [
        s.train_loss * tn,
        s.train_correct.unwrap_or(0.0),
        tn,
        vl,
        s.val_correct.unwrap_or(0.0),
        vn,
    ];
    let dev = Default::default();
    let g = sum_host(sync, &local, &dev);
    let per = |sum: f64, n: f64| if n > 0.0 { sum / n } else { f64::NAN };
    StepStats {
        train_loss: per(g[0], g[2]),
        train_correct: s.train_correct.map(|_| g[1]),
        train_size: g[2] as usize,
        val_loss: per(g[3], g[5]),
        val_correct: s.val_correct.map(|_| g[4]),
        val_size: g[5] as usize,
        ..s
    }
}
