//! SDARTS (Chen and Hsieh, ICML 2020; reference `xiangning-chen/SmoothDARTS`): the weight step
//! runs on *perturbed* op weights, which smooths the validation loss landscape in α.
//!
//! Before each weight step the relaxed op weights `A = softmax(α)` (per edge) are perturbed
//! within an L∞ ball of radius `ε` and projected back onto the simplex by the reference's
//! `clip` (per row: note the argmax, clamp to `[0, 1]`, put 1 at the argmax if the row is all
//! zero, divide by the row sum); the weight step's forward uses the perturbed `A` in place of
//! `softmax(α)`, and α itself is untouched.
//!
//! * **SDARTS-RS** ([`Perturbation::Random`]): `A + U(−ε, ε)`, clipped.
//! * **SDARTS-ADV** ([`Perturbation::Pgd`]): projected gradient *ascent* on the training loss in
//!   `A` (reference `attacker/perturb.py: Linf_PGD_alpha`): random start as RS, then `steps`
//!   (7) steps `A ← clip(A₀ + clamp(A + (2ε/steps)·sign(∇_A L) − A₀, −ε, ε))`; if the loss
//!   did not rise (`L(A₀) > L(A)`), `A₀` is kept. As in the reference these passes run in
//!   evaluation mode (BatchNorm with its running statistics; [`darts_ops::mode::eval_mode`]).
//!
//! `ε` rises linearly with the epoch, `ε(e) = 0.03 + (ε_max − 0.03)·e/E` (`ε_max = 0.3`).

use crate::architect::ArchModel;
use crate::params::only_trainable;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};
use darts_mixed_op::stochastic::NoiseSource;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// How the weight step perturbs the op weights.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Perturbation {
    /// SDARTS-RS: uniform noise in `[−ε, ε]`.
    Random {
        /// `ε`.
        epsilon: f64,
    },
    /// SDARTS-ADV: `steps` steps of L∞ projected gradient ascent with random start.
    Pgd {
        /// `ε`.
        epsilon: f64,
        /// Ascent steps (7).
        steps: usize,
    },
}

impl Perturbation {
    /// The radius `ε`.
    pub fn epsilon(&self) -> f64 {
        match *self {
            Perturbation::Random { epsilon } | Perturbation::Pgd { epsilon, .. } => epsilon,
        }
    }
}

/// SDARTS's schedule of `ε`: `0.03 + (max − 0.03) · epoch / epochs` (reference
/// `train_search.py`).
pub fn epsilon_at(max: f64, epoch: usize, epochs: usize) -> f64 {
    0.03 + (max - 0.03) * epoch as f64 / epochs.max(1) as f64
}

/// The reference's projection onto the simplex, row by row, in place (`model_search.py:
/// clip`): remember the argmax (first maximum), clamp to `[0, 1]`; a row that is then all zero
/// gets 1 at the argmax; divide by the row sum.
pub fn clip_rows(a: &mut [f64], cols: usize) {
    for row in a.chunks_mut(cols) {
        let mut best = 0;
        for (k, &v) in row.iter().enumerate() {
            if v > row[best] {
                best = k;
            }
        }
        for v in row.iter_mut() {
            *v = v.clamp(0.0, 1.0);
        }
        let mut sum: f64 = row.iter().sum();
        if sum == 0.0 {
            row[best] = 1.0;
            sum = 1.0;
        }
        for v in row.iter_mut() {
            *v /= sum;
        }
    }
}

type Inner<B> = <B as AutodiffBackend>::InnerBackend;

fn device_like<B: AutodiffBackend>(v: &[f64], like: &Tensor<Inner<B>, 2>) -> Tensor<Inner<B>, 2> {
    Tensor::from_data(
        TensorData::new(v.to_vec(), like.dims()),
        (&like.device(), like.dtype()),
    )
}

/// `L(A)` on `batch` (and `∇_A L` when `grad`), weights held constant.
fn loss_at<B: AutodiffBackend, M: ArchModel<B>>(
    frozen: &M,
    batch: &M::Batch,
    a: &[Tensor<Inner<B>, 2>],
    grad: bool,
) -> (f64, Vec<Vec<f64>>) {
    let leaves: Vec<Tensor<B, 2>> = a
        .iter()
        .map(|t| {
            let t = Tensor::<B, 2>::from_inner(t.clone());
            if grad {
                t.require_grad()
            } else {
                t
            }
        })
        .collect();
    let out = frozen.forward_with_op_weights(batch, &leaves);
    let loss = darts_ops::to_f64(&out.loss);
    if !grad {
        return (loss, Vec::new());
    }
    let grads = out.loss.backward();
    let g = leaves
        .iter()
        .map(|l| {
            l.grad(&grads)
                .map(|g| darts_ops::to_f64s(&g))
                .unwrap_or_else(|| vec![0.0; l.dims().iter().product()])
        })
        .collect();
    (loss, g)
}

/// The perturbed op weights for the weight step on `batch` (the model's
/// [`ArchModel::op_weights`] perturbed by `p`, random numbers from `noise`), or `None` when the
/// model has no op weights to perturb.
pub fn perturbed_op_weights<B: AutodiffBackend, M: ArchModel<B>>(
    model: &M,
    batch: &M::Batch,
    p: &Perturbation,
    noise: &NoiseSource,
) -> Option<Vec<Tensor<Inner<B>, 2>>> {
    let a0t = model.op_weights();
    if a0t.is_empty() {
        return None;
    }
    let eps = p.epsilon();
    let a0: Vec<Vec<f64>> = a0t.iter().map(darts_ops::to_f64s).collect();
    let cols: Vec<usize> = a0t.iter().map(|t| t.dims()[1]).collect();
    let mut rng = noise.rng();
    let mut a: Vec<Vec<f64>> = a0
        .iter()
        .zip(&cols)
        .map(|(row, &c)| {
            let mut v: Vec<f64> = row
                .iter()
                .map(|x| x + rng.random_range(-eps..=eps))
                .collect();
            clip_rows(&mut v, c);
            v
        })
        .collect();
    let to_device = |a: &[Vec<f64>]| -> Vec<Tensor<Inner<B>, 2>> {
        a.iter()
            .zip(&a0t)
            .map(|(v, like)| device_like::<B>(v, like))
            .collect()
    };
    if let Perturbation::Pgd { steps, .. } = *p {
        let frozen = only_trainable(model.clone(), &[]);
        darts_ops::mode::eval_mode(|| {
            let (before, _) = loss_at(&frozen, batch, &a0t, false);
            let lr = 2.0 * eps / steps.max(1) as f64;
            for _ in 0..steps {
                let (_, g) = loss_at(&frozen, batch, &to_device(&a), true);
                for ((ai, gi), (a0i, &c)) in a.iter_mut().zip(&g).zip(a0.iter().zip(&cols)) {
                    for ((x, g), x0) in ai.iter_mut().zip(gi).zip(a0i) {
                        // Linf_SGD on −L: x ← x − lr·sign(−∇L) = x + lr·sign(∇L) (sign(0) = 0).
                        let s = if *g > 0.0 {
                            1.0
                        } else if *g < 0.0 {
                            -1.0
                        } else {
                            0.0
                        };
                        *x = x0 + (*x + lr * s - x0).clamp(-eps, eps);
                    }
                    clip_rows(ai, c);
                }
            }
            let (after, _) = loss_at(&frozen, batch, &to_device(&a), false);
            if before > after {
                a = a0.clone();
            }
        });
    }
    Some(to_device(&a))
}
