//! Data parallelism: what the bilevel steps need from a group of replicas.
//!
//! Each peer of a data-parallel run holds a replica of the model and computes the gradients of
//! its shard of every batch; a [`GradSync`] sums tensors over the peers. The steps combine the
//! shards' gradients into the gradient of the *global* batch before every optimiser update,
//! weighting each shard by its size (`Σ_p n_p·g_p / Σ_p n_p`, the gradient of the mean loss over
//! the global batch, also when the shards differ in size), so the replicas stay identical:
//!
//! - the weight step: `∇w L_train` before clipping (the clip sees the global norm);
//! - the first-order architect: `∇α L_val(w)`;
//! - the second-order architect: `∇w L_train(w)` of the virtual step (so `w'` is the global
//!   one), `∇α L_val(w')` together with the vector `∇w' L_val(w')` (reduced before its norm sets
//!   `ε`), and the finite difference `∇α L_train(w⁺) − ∇α L_train(w⁻)` — the result is the
//!   second-order gradient of the global batch, not an average of per-peer unrolled gradients.
//!
//! Tensors are reduced in the model's visit order (the same on every peer, whatever the
//! parameter ids), concatenated into one buffer per reduction. The implementation over
//! `burn-collective` (threads of one process, processes, machines) is `darts::parallel`.

#[cfg(doc)]
use crate::params::all_ids;
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Sums tensors over the peers of a data-parallel group.
pub trait GradSync<B: Backend>: Send + Sync + std::fmt::Debug {
    /// This peer's rank (0 to [`GradSync::world`] − 1).
    fn rank(&self) -> usize;
    /// Number of peers.
    fn world(&self) -> usize;
    /// The element-wise sum over all peers of `t` (every peer passes a tensor of the same
    /// length), in an order that does not change from run to run. When the group has failed
    /// (a peer died, a timeout), the result is NaN everywhere and [`GradSync::failure`] says
    /// why: the step is then not finite and is not applied.
    fn sum(&self, t: Tensor<B, 1>) -> Tensor<B, 1>;
    /// Why the group failed, if it did.
    fn failure(&self) -> Option<String>;
}

/// A group handle shared by the parts of one peer.
pub type SharedSync<B> = Arc<dyn GradSync<B>>;

/// Replace every gradient of the groups by the global-batch mean over the peers: each peer's
/// `g·n` is summed and divided by `Σ n` (`n`: this peer's shard size). The groups are reduced in
/// one buffer, in `order` (the model's visit order, see [`all_ids`]); ids of a group that are not
/// in `order` are not touched. Returns `Σ n`.
pub fn reduce_mean<B: Backend>(
    sync: &dyn GradSync<B>,
    order: &[ParamId],
    groups: &mut [&mut BTreeMap<ParamId, Tensor<B, 1>>],
    n: usize,
) -> usize {
    let mut parts = Vec::new();
    let mut layout = Vec::new();
    for (gi, group) in groups.iter().enumerate() {
        for id in order {
            if let Some(t) = group.get(id) {
                layout.push((gi, *id, t.dims()[0]));
                parts.push(t.clone());
            }
        }
    }
    let Some(first) = parts.first() else {
        // Nothing to reduce; the sizes still have to meet (every peer makes the same calls).
        let dev = Default::default();
        let total = sync.sum(Tensor::from_floats([n as f32], &dev));
        return darts_ops::to_f64(&total) as usize;
    };
    let device = first.device();
    let dtype = first.dtype();
    let mut flat = Tensor::cat(parts, 0) * (n as f64);
    let count = Tensor::<B, 1>::from_floats([n as f32], &device).cast(dtype);
    flat = Tensor::cat(vec![flat, count], 0);
    let len = flat.dims()[0];
    let summed = sync.sum(flat);
    let total = darts_ops::to_f64(&summed.clone().narrow(0, len - 1, 1));
    let mean = summed.narrow(0, 0, len - 1) / total;
    let mut at = 0;
    for (gi, id, k) in layout {
        groups[gi].insert(id, mean.clone().narrow(0, at, k));
        at += k;
    }
    total as usize
}

/// Sum host numbers over the peers (metrics: loss sums, correct counts, sizes), in f64 where
/// the backend has it.
pub fn sum_host<B: Backend>(
    sync: &dyn GradSync<B>,
    values: &[f64],
    device: &B::Device,
) -> Vec<f64> {
    let t = Tensor::<B, 1>::from_floats(
        burn::tensor::TensorData::new(values.to_vec(), [values.len()]),
        device,
    );
    darts_ops::to_f64s(&sync.sum(t))
}

struct Buffers<B: Backend> {
    out: Vec<Tensor<B, 1>>,
}

impl<B: Backend> ModuleVisitor<B> for Buffers<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let t = param.val();
        if !t.is_require_grad() {
            let n = t.shape().num_elements();
            self.out.push(t.reshape([n]));
        }
    }
}

struct SetBuffers<B: Backend> {
    mean: Tensor<B, 1>,
    at: usize,
}

impl<B: Backend> ModuleMapper<B> for SetBuffers<B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, t, mapper) = param.consume();
        if t.is_require_grad() {
            return Param::from_mapped_value(id, t, mapper);
        }
        let dims = t.dims();
        let n = t.shape().num_elements();
        let v = self.mean.clone().narrow(0, self.at, n).reshape(dims);
        self.at += n;
        Param::from_mapped_value(id, v, mapper)
    }
}

/// Average the model's non-trainable float tensors (BatchNorm running statistics; masks, which
/// are equal on every peer, stay as they are) over the peers, so the replicas are identical
/// again. Each replica's running statistics follow its own shards between two calls; running
/// statistics are exponential moving averages, linear in the batch statistics, so the mean of
/// the replicas' is the moving average of the per-step mean of the shards' statistics. The
/// data-parallel drivers call it at the end of every epoch, before the evaluation and the
/// checkpoint.
pub fn average_buffers<B: AutodiffBackend, M: Module<B>>(
    model: M,
    sync: &dyn GradSync<B::InnerBackend>,
) -> M {
    let mut c = Buffers::<B> { out: Vec::new() };
    model.visit(&mut c);
    if c.out.is_empty() {
        return model;
    }
    let inner: Vec<_> = c.out.into_iter().map(|t| t.inner()).collect();
    let world = sync.world() as f64;
    let mean = sync.sum(Tensor::cat(inner, 0)) / world;
    model.map(&mut SetBuffers::<B> {
        mean: Tensor::from_inner(mean),
        at: 0,
    })
}
