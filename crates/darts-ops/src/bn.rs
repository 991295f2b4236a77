//! Batch normalisation with explicit running-statistics updates.
//!
//! In training mode ([`crate::mode`]: an autodiff backend, or inside [`crate::mode::train_mode`]) the layer normalises
//! with the batch statistics; otherwise with the running statistics. The running statistics are
//! plain (non-trainable) parameters, so module clones are independent values. Their update is
//! *recorded* only inside [`record_bn_updates`] and applied with [`BnUpdates::apply`]:
//!
//! ```
//! use burn::backend::{Autodiff, Flex};
//! use burn::tensor::Tensor;
//! use darts_ops::bn::{record_bn_updates, BatchNorm2d};
//! type B = Autodiff<Flex>;
//! let dev = Default::default();
//! let bn = BatchNorm2d::<B>::new(3, true, &dev);
//! let x = Tensor::<B, 4>::ones([2, 3, 4, 4], &dev) * 5.0;
//! let (_y, updates) = record_bn_updates(|| bn.forward(x));
//! let bn = updates.apply(bn);
//! // momentum 0.1: running mean moves 10% of the way towards the batch mean (5.0).
//! let m: Vec<f32> = bn.running_mean.val().into_data().to_vec().unwrap();
//! assert!((m[0] - 0.5).abs() < 1e-6);
//! ```

use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::tensor::{backend::Backend, Tensor};
use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;

/// 2-D batch normalisation over `[N, C, H, W]`, PyTorch semantics (momentum 0.1, eps 1e-5,
/// running variance unbiased). Without affine parameters (`gamma`/`beta` = `None`) it matches
/// PyTorch's `affine=False`: no trainable parameters at all.
#[derive(Module, Debug)]
pub struct BatchNorm2d<B: Backend> {
    /// Scale (present when affine).
    pub gamma: Option<Param<Tensor<B, 1>>>,
    /// Shift (present when affine).
    pub beta: Option<Param<Tensor<B, 1>>>,
    /// Running mean (not trainable).
    pub running_mean: Param<Tensor<B, 1>>,
    /// Running variance (not trainable).
    pub running_var: Param<Tensor<B, 1>>,
    /// Momentum of the running statistics (PyTorch convention: new = (1-m)·old + m·batch).
    pub momentum: f64,
    /// Added to the variance.
    pub epsilon: f64,
}

fn stat<B: Backend>(t: Tensor<B, 1>) -> Param<Tensor<B, 1>> {
    // Not marked require_grad: never receives a gradient, never touched by an optimizer.
    Param::initialized(ParamId::new(), t)
}

impl<B: Backend> BatchNorm2d<B> {
    /// A new layer over `channels` channels.
    pub fn new(channels: usize, affine: bool, device: &B::Device) -> Self {
        Self {
            gamma: affine.then(|| Param::from_tensor(Tensor::ones([channels], device))),
            beta: affine.then(|| Param::from_tensor(Tensor::zeros([channels], device))),
            running_mean: stat(Tensor::zeros([channels], device)),
            running_var: stat(Tensor::ones([channels], device)),
            momentum: 0.1,
            epsilon: 1e-5,
        }
    }

    /// Whether the layer has affine parameters.
    pub fn is_affine(&self) -> bool {
        self.gamma.is_some()
    }

    /// Normalise `x` (`[N, C, H, W]`).
    ///
    /// Computed on the `[N·C, H·W]` view with per-row broadcasts, which Burn's CPU backend runs
    /// ~20× faster than a `[1, C, 1, 1]` broadcast over the 4-D tensor.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [n, c, h, w] = x.dims();
        let device = x.device();
        let train = crate::mode::is_training::<B>(&device);
        // On the GPU autodiff backends: one custom op with a closed-form backward (far fewer
        // kernel launches), then the affine part.
        let x = if train && !crate::kernels::burn_ops_forced() {
            match crate::kernels::gpu::normalize(x, self.epsilon) {
                Ok((y, mean, var)) => {
                    self.record(mean, var, (n * h * w) as f64);
                    return match (&self.gamma, &self.beta) {
                        (Some(g), Some(b)) => {
                            y * g.val().reshape([1, c, 1, 1]) + b.val().reshape([1, c, 1, 1])
                        }
                        _ => y,
                    };
                }
                Err(x) => x,
            }
        } else {
            x
        };
        // On the CPU (`Flex`, `Autodiff<Flex>`): one operation with the affine part folded in
        // and a closed-form backward (Burn's composed operations make ~15 passes over the data).
        let x = if train {
            let affine = self.gamma.as_ref().zip(self.beta.as_ref());
            match crate::kernels::cpu_batch_norm(
                x,
                affine.map(|(g, b)| (g.val(), b.val())),
                self.epsilon,
            ) {
                Ok((y, mean, var)) => {
                    self.record(mean, var, (n * h * w) as f64);
                    return y;
                }
                Err(x) => x,
            }
        } else {
            x
        };
        let rows = x.reshape([n * c, h * w]);
        // Per-channel [C] vector to a per-row [N·C, 1] column.
        let per_row = |v: Tensor<B, 1>| -> Tensor<B, 2> {
            v.reshape([1, c]).expand([n, c]).reshape([n * c, 1])
        };
        let (centered, var) = if train {
            let count = (n * h * w) as f64;
            let mean = rows
                .clone()
                .sum_dim(1)
                .reshape([n, c])
                .sum_dim(0)
                .reshape([c])
                / count;
            let centered = rows - per_row(mean.clone());
            let var = centered
                .clone()
                .square()
                .sum_dim(1)
                .reshape([n, c])
                .sum_dim(0)
                .reshape([c])
                / count;
            self.record(mean.clone(), var.clone(), count);
            (centered, var)
        } else {
            (
                rows - per_row(self.running_mean.val()),
                self.running_var.val(),
            )
        };
        let inv_std = (var + self.epsilon).sqrt().recip();
        let y = match (&self.gamma, &self.beta) {
            (Some(g), Some(b)) => centered * per_row(inv_std * g.val()) + per_row(b.val()),
            _ => centered * per_row(inv_std),
        };
        y.reshape([n, c, h, w])
    }
}

impl<B: Backend> BatchNorm2d<B> {
    /// Record the running-statistics update for batch statistics `mean`, `var` (biased) over
    /// `count` values per channel. A layer applied several times inside one recording scope (the
    /// recurrent search cell applies one layer to every node at every time step) chains its
    /// updates as PyTorch does: each starts from the previous one.
    fn record(&self, mean: Tensor<B, 1>, var: Tensor<B, 1>, count: f64) {
        RECORDER.with(|r| {
            let mut slot = r.borrow_mut();
            let Some(map) = slot.as_mut() else { return };
            let previous = |id: &ParamId, current: Tensor<B, 1>| -> Tensor<B, 1> {
                map.get(id)
                    .and_then(|b| b.downcast_ref::<Tensor<B, 1>>())
                    .cloned()
                    .unwrap_or(current)
            };
            let old_mean = previous(&self.running_mean.id, self.running_mean.val());
            let old_var = previous(&self.running_var.id, self.running_var.val());
            let unbiased = if count > 1.0 {
                count / (count - 1.0)
            } else {
                1.0
            };
            let m = self.momentum;
            let new_mean = old_mean * (1.0 - m) + mean.detach() * m;
            let new_var = old_var * (1.0 - m) + var.detach() * (m * unbiased);
            map.insert(self.running_mean.id, Box::new(new_mean) as Box<dyn Any>);
            map.insert(self.running_var.id, Box::new(new_var) as Box<dyn Any>);
        });
    }

    /// Normalise features `x` (`[N, C]`), as PyTorch's `BatchNorm1d` does on 2-D input: the
    /// statistics are over the batch dimension. Same parameters, modes and recording as
    /// [`BatchNorm2d::forward`].
    pub fn forward_1d(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let [n, c] = x.dims();
        let device = x.device();
        let train = crate::mode::is_training::<B>(&device);
        let (centered, var) = if train {
            let mean = x.clone().mean_dim(0);
            let centered = x - mean.clone();
            let var = centered.clone().square().mean_dim(0);
            self.record(mean.reshape([c]), var.clone().reshape([c]), n as f64);
            (centered, var)
        } else {
            (
                x - self.running_mean.val().reshape([1, c]),
                self.running_var.val().reshape([1, c]),
            )
        };
        let inv_std = (var + self.epsilon).sqrt().recip();
        match (&self.gamma, &self.beta) {
            (Some(g), Some(b)) => {
                centered * (inv_std * g.val().reshape([1, c])) + b.val().reshape([1, c])
            }
            _ => centered * inv_std,
        }
    }
}

thread_local! {
    static RECORDER: RefCell<Option<HashMap<ParamId, Box<dyn Any>>>> = const { RefCell::new(None) };
}

/// Running-statistics updates recorded by [`record_bn_updates`], keyed by parameter id.
#[derive(Default)]
pub struct BnUpdates {
    map: HashMap<ParamId, Box<dyn Any>>,
}

impl std::fmt::Debug for BnUpdates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BnUpdates({} tensors)", self.map.len())
    }
}

impl BnUpdates {
    /// Number of recorded tensors (two per BatchNorm layer that ran).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Write the recorded running statistics into `module` (matched by parameter id).
    pub fn apply<B: Backend, M: Module<B>>(mut self, module: M) -> M {
        struct Apply<'a> {
            map: &'a mut HashMap<ParamId, Box<dyn Any>>,
        }
        impl<B: Backend> ModuleMapper<B> for Apply<'_> {
            fn map_float<const D: usize>(
                &mut self,
                param: Param<Tensor<B, D>>,
            ) -> Param<Tensor<B, D>> {
                let Some(boxed) = self.map.remove(&param.id) else {
                    return param;
                };
                match boxed.downcast::<Tensor<B, 1>>() {
                    Ok(t) => {
                        let (id, old, mapper) = param.consume();
                        let new: Tensor<B, D> = t.reshape(old.dims());
                        Param::from_mapped_value(id, new, mapper)
                    }
                    Err(b) => {
                        self.map.insert(param.id, b);
                        param
                    }
                }
            }
        }
        module.map(&mut Apply { map: &mut self.map })
    }
}

/// Run `f` and collect the running-statistics updates of every [`BatchNorm2d`] that normalised
/// with batch statistics inside it. Nothing is applied; see [`BnUpdates::apply`]. Scopes nest:
/// an inner scope's updates are returned by the inner call only.
pub fn record_bn_updates<R>(f: impl FnOnce() -> R) -> (R, BnUpdates) {
    let previous = RECORDER.with(|r| r.borrow_mut().replace(HashMap::new()));
    let out = f();
    let map = RECORDER.with(|r| {
        let mut slot = r.borrow_mut();
        let map = slot.take().unwrap_or_default();
        *slot = previous;
        map
    });
    (out, BnUpdates { map })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::{Distribution, TensorData, Tolerance};
    type B = Autodiff<Flex>;

    #[test]
    fn train_mode_normalises_and_updates_only_when_recorded() {
        let dev = Default::default();
        let bn = BatchNorm2d::<B>::new(2, false, &dev);
        let x = Tensor::<B, 4>::random([4, 2, 3, 3], Distribution::Normal(3.0, 2.0), &dev);
        let y = bn.forward(x.clone());
        let m: Vec<f32> = y
            .clone()
            .mean_dims(&[0, 2, 3])
            .into_data()
            .to_vec()
            .unwrap();
        assert!(m.iter().all(|v| v.abs() < 1e-5));
        let v: Vec<f32> = y
            .square()
            .mean_dims(&[0, 2, 3])
            .into_data()
            .to_vec()
            .unwrap();
        assert!(v.iter().all(|v| (v - 1.0).abs() < 1e-3));
        // No scope: nothing changes.
        let rm: Vec<f32> = bn.running_mean.val().into_data().to_vec().unwrap();
        assert_eq!(rm, vec![0.0, 0.0]);
        // Scope: update = 0.9 * old + 0.1 * batch, var unbiased.
        let (_, upd) = record_bn_updates(|| bn.forward(x.clone()));
        assert_eq!(upd.len(), 2);
        let clone = bn.clone();
        let bn = upd.apply(bn);
        let xm = x.clone().mean_dims(&[0, 2, 3]).reshape([2]);
        let xv = x
            .clone()
            .swap_dims(0, 1)
            .reshape([2, 36])
            .var(1)
            .reshape([2]);
        bn.running_mean
            .val()
            .into_data()
            .assert_approx_eq::<f32>(&(xm * 0.1).into_data(), Tolerance::default());
        bn.running_var
            .val()
            .into_data()
            .assert_approx_eq::<f32>(&(xv * 0.1 + 0.9).into_data(), Tolerance::default());
        // The clone taken before applying is untouched (no shared state).
        assert_eq!(
            clone.running_mean.val().into_data(),
            TensorData::from([0.0f32, 0.0])
        );
    }

    #[test]
    fn inference_uses_running_stats_and_affine_counts() {
        let dev = Default::default();
        let bn = BatchNorm2d::<Flex>::new(3, true, &dev);
        let x = Tensor::<Flex, 4>::ones([1, 3, 2, 2], &dev) * 2.0;
        let y = bn.forward(x.clone());
        // running mean 0, var 1 -> y = x / sqrt(1 + eps)
        let expect = 2.0 / (1.0f32 + 1e-5).sqrt();
        let yv: Vec<f32> = y.into_data().to_vec().unwrap();
        assert!(yv.iter().all(|v| (v - expect).abs() < 1e-6));
        let yb = crate::mode::train_mode(|| bn.forward(x));
        let yb: Vec<f32> = yb.into_data().to_vec().unwrap();
        assert!(yb.iter().all(|v| v.abs() < 1e-6));
        assert_eq!(crate::trainable_params(&bn, &[]), 6);
        let bn = BatchNorm2d::<Flex>::new(3, false, &dev);
        assert_eq!(crate::trainable_params(&bn, &[]), 0);
    }

    #[test]
    fn features_1d_and_repeated_use_chain_like_pytorch() {
        let dev = Default::default();
        let bn = BatchNorm2d::<B>::new(3, false, &dev);
        let a = Tensor::<B, 2>::from_floats([[1.0, 2.0, 0.0], [3.0, 6.0, 0.0]], &dev);
        let b = Tensor::<B, 2>::from_floats([[5.0, 0.0, 1.0], [7.0, 0.0, 1.0]], &dev);
        let ((ya, _), upd) = record_bn_updates(|| (bn.forward_1d(a), bn.forward_1d(b)));
        // Normalised over the batch: ±1/sqrt(1 + eps/var) per column with var = 1, 4, 0.
        let y: Vec<f32> = ya.into_data().to_vec().unwrap();
        assert!((y[0] + 1.0 / (1.0f32 + 1e-5).sqrt()).abs() < 1e-5, "{y:?}");
        assert!(
            (y[1] + 1.0 / (1.0f32 + 1e-5 / 4.0).sqrt()).abs() < 1e-5,
            "{y:?}"
        );
        assert_eq!(y[2], 0.0);
        // Two chained updates: m1 = 0.1·mean_a; m2 = 0.9·m1 + 0.1·mean_b.
        let bn = upd.apply(bn);
        let m: Vec<f32> = bn.running_mean.val().into_data().to_vec().unwrap();
        let expect = [0.9 * 0.2 + 0.6, 0.9 * 0.4, 0.1];
        for (got, want) in m.iter().zip(expect) {
            assert!((got - want).abs() < 1e-6, "{m:?}");
        }
        // Unbiased running variance: batch var (n = 2) of a is [2, 8, 0], of b [2, 0, 0].
        let v: Vec<f32> = bn.running_var.val().into_data().to_vec().unwrap();
        let v1 = [0.9 + 0.2, 0.9 + 0.8, 0.9];
        let expect = [0.9 * v1[0] + 0.2, 0.9 * v1[1], 0.9 * v1[2]];
        for (got, want) in v.iter().zip(expect) {
            assert!((got - want).abs() < 1e-5, "{v:?}");
        }
    }
}
