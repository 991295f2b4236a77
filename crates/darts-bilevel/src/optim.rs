//! Optimisers with PyTorch semantics, on flat parameter tensors keyed by id.
//!
//! Burn's own optimisers differ from PyTorch in ways that change DARTS results (momentum
//! dampening default 0.1, Adam epsilon 1e-5, per-tensor gradient clipping), and the unrolled
//! architecture step needs to read the SGD momentum buffers. These are small, explicit
//! re-implementations of `torch.optim.SGD`, `torch.optim.Adam`, `torch.optim.ASGD` (as the
//! recurrent reference uses it),
//! `torch.nn.utils.clip_grad_norm_` and `CosineAnnealingLR`.

use crate::params::global_norm;
use burn::module::ParamId;
use burn::tensor::{backend::Backend, Tensor};
use std::collections::BTreeMap;

/// [`Sgd`]'s state as a record: the momentum buffer of each parameter that has one, by the
/// parameter's position in the module's visit order (ascending).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SgdState {
    /// (position, buffer values).
    pub buffers: Vec<(usize, Vec<f32>)>,
}

/// [`Adam`]'s state for one parameter.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamMoments {
    /// The parameter's position in the module's visit order.
    pub position: usize,
    /// Steps taken.
    pub step: u64,
    /// First moment.
    pub m: Vec<f32>,
    /// Second moment.
    pub v: Vec<f32>,
}

/// [`Adam`]'s state as a record, by parameter position (ascending).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamState {
    /// One entry per parameter that has taken a step.
    pub moments: Vec<AdamMoments>,
}

/// An optimiser state that does not fit the module it is loaded for.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OptimStateError {
    /// A position beyond the module's parameters.
    #[error("optimiser state for parameter {position}, but the module has {count} parameters")]
    Position {
        /// The position in the record.
        position: usize,
        /// The module's parameter count.
        count: usize,
    },
}

/// Each id's position in `ids`.
fn positions(ids: &[ParamId]) -> std::collections::HashMap<ParamId, usize> {
    ids.iter().enumerate().map(|(k, id)| (*id, k)).collect()
}

fn at(ids: &[ParamId], position: usize) -> Result<ParamId, OptimStateError> {
    ids.get(position).copied().ok_or(OptimStateError::Position {
        position,
        count: ids.len(),
    })
}

fn flat_tensor<B: Backend>(v: &[f32], device: &B::Device) -> Tensor<B, 1> {
    Tensor::from_data(burn::tensor::TensorData::new(v.to_vec(), [v.len()]), device)
}

/// `torch.optim.SGD` (dampening 0, no Nesterov).
#[derive(Clone, Debug)]
pub struct Sgd<B: Backend> {
    /// Momentum factor (0.9 in DARTS).
    pub momentum: f64,
    /// L2 weight decay added to the gradient (3e-4 in DARTS).
    pub weight_decay: f64,
    /// Nesterov momentum (PyTorch's `nesterov=True`: the step is `d + momentum·buf` instead of
    /// `buf`; GDAS's search uses it, DARTS does not).
    pub nesterov: bool,
    /// Momentum buffers (absent until a parameter's first step, as in PyTorch).
    buffers: BTreeMap<ParamId, Tensor<B, 1>>,
}

impl<B: Backend> Sgd<B> {
    /// A new optimiser.
    pub fn new(momentum: f64, weight_decay: f64) -> Self {
        Self {
            momentum,
            weight_decay,
            nesterov: false,
            buffers: BTreeMap::new(),
        }
    }

    /// One step: for each parameter with a gradient, `d = g + wd·p`;
    /// `buf = d` (first step) or `momentum·buf + d`; `p ← p − lr·buf` (with
    /// [`Sgd::nesterov`]: `p ← p − lr·(d + momentum·buf)`), as `torch.optim.SGD`.
    /// Returns the new values (only for parameters in `grads`).
    pub fn step(
        &mut self,
        lr: f64,
        params: &BTreeMap<ParamId, Tensor<B, 1>>,
        grads: &BTreeMap<ParamId, Tensor<B, 1>>,
    ) -> BTreeMap<ParamId, Tensor<B, 1>> {
        let mut out = BTreeMap::new();
        for (id, g) in grads {
            let Some(p) = params.get(id) else { continue };
            let mut d = g.clone();
            if self.weight_decay != 0.0 {
                d = d + p.clone() * self.weight_decay;
            }
            if self.momentum != 0.0 {
                let buf = match self.buffers.remove(id) {
                    Some(b) => b * self.momentum + d.clone(),
                    None => d.clone(),
                };
                self.buffers.insert(*id, buf.clone());
                d = if self.nesterov {
                    d + buf * self.momentum
                } else {
                    buf
                };
            }
            out.insert(*id, p.clone() - d * lr);
        }
        out
    }

    /// A parameter's momentum buffer (`None` before its first step).
    pub fn buffer(&self, id: &ParamId) -> Option<&Tensor<B, 1>> {
        self.buffers.get(id)
    }

    /// Grow the momentum buffers of widened parameters as the parameters grew (DrNAS's
    /// `net2wider.configure_optimizer`: the copied channels take the momentum of their
    /// sources).
    pub fn grow(&mut self, growths: &[darts_ops::wider::Growth]) {
        for g in growths {
            if let Some(buf) = self.buffers.remove(&g.id) {
                self.buffers.insert(g.id, g.apply_flat(buf));
            }
        }
    }

    /// The state as a record keyed by parameter position: `ids` are the module's parameter ids
    /// in visit order ([`crate::params::all_ids`]), so the record means the same in another
    /// process, where the ids differ.
    pub fn state(&self, ids: &[ParamId]) -> SgdState {
        let index = positions(ids);
        let mut buffers: Vec<(usize, Vec<f32>)> = self
            .buffers
            .iter()
            .filter_map(|(id, t)| index.get(id).map(|&k| (k, darts_ops::to_f32s(t))))
            .collect();
        buffers.sort_by_key(|b| b.0);
        SgdState { buffers }
    }

    /// Replace the state with `record` (positions resolved against `ids`, as in [`Sgd::state`]).
    pub fn load_state(
        &mut self,
        ids: &[ParamId],
        record: &SgdState,
        device: &B::Device,
    ) -> Result<(), OptimStateError> {
        let mut buffers = BTreeMap::new();
        for (k, v) in &record.buffers {
            buffers.insert(at(ids, *k)?, flat_tensor(v, device));
        }
        self.buffers = buffers;
        Ok(())
    }

    /// `momentum · buf` for a parameter (zeros-equivalent `None` before its first step): the
    /// `moment` term of the reference's unrolled step.
    pub fn moment(&self, id: &ParamId) -> Option<Tensor<B, 1>> {
        if self.momentum == 0.0 {
            return None;
        }
        self.buffers.get(id).map(|b| b.clone() * self.momentum)
    }
}

/// Averaged SGD as the recurrent reference trains its derived cells: `torch.optim.ASGD` with
/// `t0 = 0` and `lambd = 0`, created when validation stops improving. Its steps are plain SGD
/// steps (the inner [`Sgd`], no momentum); once averaging has started, [`Asgd::accumulate`]
/// keeps the running mean `ax` of the weights after each step, which is what gets evaluated.
#[derive(Clone, Debug)]
pub struct Asgd<B: Backend> {
    sgd: Sgd<B>,
    averaging: Option<(u64, BTreeMap<ParamId, Tensor<B, 1>>)>,
}

impl<B: Backend> Asgd<B> {
    /// Plain SGD with `weight_decay`, not averaging yet.
    pub fn new(weight_decay: f64) -> Self {
        Self {
            sgd: Sgd::new(0.0, weight_decay),
            averaging: None,
        }
    }

    /// The SGD that takes the steps (for [`crate::weight_step`]).
    pub fn sgd(&mut self) -> &mut Sgd<B> {
        &mut self.sgd
    }

    /// Start averaging (the reference's switch to `torch.optim.ASGD`).
    pub fn start_averaging(&mut self) {
        self.averaging.get_or_insert((0, BTreeMap::new()));
    }

    /// Whether averaging has started.
    pub fn is_averaging(&self) -> bool {
        self.averaging.is_some()
    }

    /// Steps averaged so far (`None` before the switch).
    pub fn averaged_steps(&self) -> Option<u64> {
        self.averaging.as_ref().map(|a| a.0)
    }

    /// After a step: fold the new weights into the running mean, `ax ← ax + (w − ax)/k`.
    pub fn accumulate(&mut self, updated: BTreeMap<ParamId, Tensor<B, 1>>) {
        let Some((steps, ax)) = self.averaging.as_mut() else {
            return;
        };
        *steps += 1;
        let mu = 1.0 / *steps as f64;
        for (id, v) in updated {
            let next = match ax.remove(&id) {
                Some(m) => m.clone() + (v - m) * mu,
                None => v,
            };
            ax.insert(id, next);
        }
    }

    /// The running mean of the weights, once averaging has started and taken a step.
    pub fn averaged(&self) -> Option<&BTreeMap<ParamId, Tensor<B, 1>>> {
        self.averaging
            .as_ref()
            .map(|a| &a.1)
            .filter(|ax| !ax.is_empty())
    }

    /// Restore the averaging state (from a checkpoint).
    pub fn restore_averaging(&mut self, steps: u64, ax: BTreeMap<ParamId, Tensor<B, 1>>) {
        self.averaging = Some((steps, ax));
    }
}

/// `torch.optim.Adam` with coupled (L2) weight decay, as DARTS uses for alpha.
#[derive(Clone, Debug)]
pub struct Adam<B: Backend> {
    /// Learning rate (3e-4 in DARTS).
    pub lr: f64,
    /// Betas ((0.5, 0.999) in DARTS).
    pub betas: (f64, f64),
    /// Epsilon (PyTorch default 1e-8).
    pub eps: f64,
    /// L2 weight decay added to the gradient (1e-3 in DARTS).
    pub weight_decay: f64,
    /// Per-parameter state: (step count, first moment, second moment).
    state: BTreeMap<ParamId, (u64, Tensor<B, 1>, Tensor<B, 1>)>,
}

impl<B: Backend> Adam<B> {
    /// A new optimiser.
    pub fn new(lr: f64, betas: (f64, f64), eps: f64, weight_decay: f64) -> Self {
        Self {
            lr,
            betas,
            eps,
            weight_decay,
            state: BTreeMap::new(),
        }
    }

    /// The state as a record keyed by parameter position (see [`Sgd::state`]).
    pub fn state(&self, ids: &[ParamId]) -> AdamState {
        let index = positions(ids);
        let mut moments: Vec<AdamMoments> = self
            .state
            .iter()
            .filter_map(|(id, (t, m, v))| {
                index.get(id).map(|&k| AdamMoments {
                    position: k,
                    step: *t,
                    m: darts_ops::to_f32s(m),
                    v: darts_ops::to_f32s(v),
                })
            })
            .collect();
        moments.sort_by_key(|e| e.position);
        AdamState { moments }
    }

    /// Replace the state with `record` (positions resolved against `ids`).
    pub fn load_state(
        &mut self,
        ids: &[ParamId],
        record: &AdamState,
        device: &B::Device,
    ) -> Result<(), OptimStateError> {
        let mut state = BTreeMap::new();
        for e in &record.moments {
            let (m, v) = (flat_tensor(&e.m, device), flat_tensor(&e.v, device));
            state.insert(at(ids, e.position)?, (e.step, m, v));
        }
        self.state = state;
        Ok(())
    }

    /// One step; returns the new values of the parameters in `grads`.
    pub fn step(
        &mut self,
        params: &BTreeMap<ParamId, Tensor<B, 1>>,
        grads: &BTreeMap<ParamId, Tensor<B, 1>>,
    ) -> BTreeMap<ParamId, Tensor<B, 1>> {
        let (b1, b2) = self.betas;
        let mut out = BTreeMap::new();
        for (id, g) in grads {
            let Some(p) = params.get(id) else { continue };
            let mut g = g.clone();
            if self.weight_decay != 0.0 {
                g = g + p.clone() * self.weight_decay;
            }
            let (t, m, v) = match self.state.remove(id) {
                Some((t, m, v)) => (
                    t + 1,
                    m * b1 + g.clone() * (1.0 - b1),
                    v * b2 + g.square() * (1.0 - b2),
                ),
                None => (1, g.clone() * (1.0 - b1), g.square() * (1.0 - b2)),
            };
            let bc1 = 1.0 - b1.powi(t as i32);
            let bc2 = 1.0 - b2.powi(t as i32);
            let denom = v.clone().sqrt() / bc2.sqrt() + self.eps;
            let new = p.clone() - m.clone() / denom * (self.lr / bc1);
            self.state.insert(*id, (t, m, v));
            out.insert(*id, new);
        }
        out
    }
}

/// `torch.nn.utils.clip_grad_norm_`: scale every gradient by `max_norm / (total + 1e-6)` when
/// the global L2 norm `total` exceeds `max_norm`. Returns the norm before clipping.
pub fn clip_grad_norm<B: Backend>(
    grads: &mut BTreeMap<ParamId, Tensor<B, 1>>,
    max_norm: f64,
) -> f64 {
    let total = global_norm(&grads.values().collect::<Vec<_>>());
    let coef = max_norm / (total + 1e-6);
    if coef < 1.0 {
        for g in grads.values_mut() {
            *g = g.clone() * coef;
        }
    }
    total
}

/// `CosineAnnealingLR` evaluated in closed form: `lr(e) = min + (max − min)(1 + cos(π e / T)) / 2`.
///
/// Epoch `e` (0-based) runs at `lr(e)`; epoch 0 uses the base rate. This is what the reference
/// scripts got: they call `scheduler.step()` at the start of each epoch, and in the PyTorch the
/// paper used (0.3/0.4) `_LRScheduler.__init__` runs `self.step(last_epoch + 1)` and then resets
/// `self.last_epoch = last_epoch` (−1), so the first in-loop `step()` sets epoch 0 and epoch `e`
/// runs at `lr(e)`. Only from PyTorch 1.1 on does the same call order shift the schedule by one
/// epoch (epoch `e` at `lr(e + 1)`), which is not what the paper's runs used.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CosineLr {
    /// Base (maximum) learning rate.
    pub max: f64,
    /// Final (minimum) learning rate.
    pub min: f64,
    /// Number of epochs `T`.
    pub epochs: usize,
}

impl CosineLr {
    /// Learning rate at `epoch`.
    pub fn at(&self, epoch: usize) -> f64 {
        if self.epochs == 0 {
            return self.max;
        }
        let t = epoch.min(self.epochs) as f64 / self.epochs as f64;
        self.min + (self.max - self.min) * (1.0 + (std::f64::consts::PI * t).cos()) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    fn t(v: &[f32]) -> Tensor<Flex, 1> {
        Tensor::from_floats(v, &Default::default())
    }

    fn v(t: &Tensor<Flex, 1>) -> Vec<f32> {
        t.clone().into_data().to_vec().unwrap()
    }

    fn close(a: &[f32], b: &[f64]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((*x as f64 - y).abs() < 1e-6, "{a:?} vs {b:?}");
        }
    }

    /// `torch.optim.SGD(nesterov=True)`: the step is `d + momentum·buf`.
    #[test]
    fn nesterov_sgd_matches_pytorch_hand_computation() {
        let id = ParamId::new();
        let mut opt = Sgd::<Flex>::new(0.9, 0.0);
        opt.nesterov = true;
        let mut p = BTreeMap::from([(id, t(&[1.0]))]);
        let g = BTreeMap::from([(id, t(&[0.5]))]);
        // step 1: buf = 0.5; step = 0.5 + 0.9·0.5 = 0.95; p = 1 − 0.095
        p = opt.step(0.1, &p, &g);
        close(&v(&p[&id]), &[0.905]);
        // step 2: buf = 0.9·0.5 + 0.5 = 0.95; step = 0.5 + 0.9·0.95 = 1.355; p = 0.905 − 0.1355
        p = opt.step(0.1, &p, &g);
        close(&v(&p[&id]), &[0.7695]);
    }

    #[test]
    fn sgd_matches_pytorch_hand_computation() {
        let id = ParamId::new();
        let mut opt = Sgd::<Flex>::new(0.9, 0.1);
        let mut p = BTreeMap::from([(id, t(&[1.0, -2.0]))]);
        let g = BTreeMap::from([(id, t(&[0.5, 0.5]))]);
        // step 1: d = g + 0.1 p = [0.6, 0.3]; buf = d; p = p - 0.1 d = [0.94, -2.03]
        p = opt.step(0.1, &p, &g);
        close(&v(&p[&id]), &[0.94, -2.03]);
        close(&v(&opt.moment(&id).unwrap()), &[0.54, 0.27]);
        // step 2: d = [0.5 + 0.094, 0.5 - 0.203] = [0.594, 0.297]; buf = 0.9 [0.6, 0.3] + d
        //         = [1.134, 0.567]; p = [0.94 - 0.1134, -2.03 - 0.0567]
        p = opt.step(0.1, &p, &g);
        close(&v(&p[&id]), &[0.8266, -2.0867]);
    }

    #[test]
    fn adam_matches_pytorch_hand_computation() {
        let id = ParamId::new();
        let mut opt = Adam::<Flex>::new(0.1, (0.5, 0.999), 1e-8, 0.0);
        let mut p = BTreeMap::from([(id, t(&[1.0]))]);
        let g = BTreeMap::from([(id, t(&[2.0]))]);
        // step 1: m = 1, v = 0.004; m̂ = 2, v̂ = 4 -> p = 1 - 0.1 * 2 / (2 + 1e-8) = 0.9
        p = opt.step(&p, &g);
        close(&v(&p[&id]), &[0.9]);
        // step 2: m = 0.5 + 1 = 1.5, v = 0.003996 + 0.004 = 0.007996;
        // bc1 = 0.75, bc2 = 1 - 0.998001 = 0.001999; denom = sqrt(0.007996)/sqrt(0.001999)
        p = opt.step(&p, &g);
        let denom = (0.007996f64).sqrt() / (0.001999f64).sqrt() + 1e-8;
        close(&v(&p[&id]), &[0.9 - 0.1 / 0.75 * 1.5 / denom]);
        // weight decay is coupled: g' = g + wd p
        let mut opt = Adam::<Flex>::new(0.1, (0.5, 0.999), 1e-8, 0.5);
        let p0 = BTreeMap::from([(id, t(&[2.0]))]);
        let g0 = BTreeMap::from([(id, t(&[-1.0]))]);
        // g' = -1 + 1 = 0 -> no movement
        close(&v(&opt.step(&p0, &g0)[&id]), &[2.0]);
    }

    #[test]
    fn global_clipping_scales_all_tensors_together() {
        let (a, b) = (ParamId::new(), ParamId::new());
        let mut g = BTreeMap::from([(a, t(&[3.0])), (b, t(&[4.0, 0.0]))]);
        let n = clip_grad_norm(&mut g, 1.0);
        assert!((n - 5.0).abs() < 1e-6);
        close(&v(&g[&a]), &[3.0 / (5.0 + 1e-6)]);
        close(&v(&g[&b]), &[4.0 / (5.0 + 1e-6), 0.0]);
        let mut g = BTreeMap::from([(a, t(&[0.3]))]);
        clip_grad_norm(&mut g, 1.0);
        close(&v(&g[&a]), &[0.3]);
    }

    #[test]
    fn cosine_schedule() {
        let s = CosineLr {
            max: 0.025,
            min: 0.001,
            epochs: 50,
        };
        assert!((s.at(0) - 0.025).abs() < 1e-12);
        assert!((s.at(25) - 0.013).abs() < 1e-12);
        assert!((s.at(50) - 0.001).abs() < 1e-12);
        let expect = 0.001 + 0.024 * (1.0 + (std::f64::consts::PI * 0.2).cos()) / 2.0;
        assert!((s.at(10) - expect).abs() < 1e-12);
    }

    #[test]
    fn optimiser_state_records_round_trip_by_position_and_reject_foreign_positions() {
        let dev = Default::default();
        let ids = [ParamId::new(), ParamId::new(), ParamId::new()];
        let params: BTreeMap<_, _> = ids.iter().map(|id| (*id, t(&[1.0, 2.0]))).collect();
        // Gradients for the last two parameters only.
        let grads: BTreeMap<_, _> = ids[1..].iter().map(|id| (*id, t(&[0.5, -1.0]))).collect();
        let mut sgd = Sgd::<Flex>::new(0.9, 1e-3);
        sgd.step(0.1, &params, &grads);
        let mut adam = Adam::<Flex>::new(1e-2, (0.5, 0.999), 1e-8, 1e-3);
        adam.step(&params, &grads);
        adam.step(&params, &grads);
        let (s, a) = (sgd.state(&ids), adam.state(&ids));
        assert_eq!(
            s.buffers.iter().map(|b| b.0).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(
            a.moments
                .iter()
                .map(|m| (m.position, m.step))
                .collect::<Vec<_>>(),
            vec![(1, 2), (2, 2)]
        );
        // Into fresh optimisers of "another process" (other ids, same positions).
        let other = [ParamId::new(), ParamId::new(), ParamId::new()];
        let mut sgd2 = Sgd::<Flex>::new(0.9, 1e-3);
        sgd2.load_state(&other, &s, &dev).unwrap();
        assert_eq!(sgd2.state(&other), s);
        assert_eq!(v(sgd2.buffer(&other[2]).unwrap()), s.buffers[1].1);
        let mut adam2 = Adam::<Flex>::new(1e-2, (0.5, 0.999), 1e-8, 1e-3);
        adam2.load_state(&other, &a, &dev).unwrap();
        assert_eq!(adam2.state(&other), a);
        // A record from a bigger module does not fit.
        let e = sgd2.load_state(&other[..2], &s, &dev).unwrap_err();
        assert_eq!(
            e,
            OptimStateError::Position {
                position: 2,
                count: 2
            }
        );
    }
}
