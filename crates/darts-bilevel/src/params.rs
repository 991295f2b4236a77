//! Parameter plumbing: reading parameters and gradients out of a Burn module as flat tensors
//! keyed by [`ParamId`], and writing new values back.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use std::collections::BTreeMap;

/// Flat (1-D) tensors on the inner (non-autodiff) backend, keyed by parameter id. Ordered, so
/// every reduction over parameters (norms) sums in the same order on every run.
pub type FlatParams<B> = BTreeMap<ParamId, Tensor<<B as AutodiffBackend>::InnerBackend, 1>>;

struct GradCollector<'a, B: AutodiffBackend> {
    grads: &'a B::Gradients,
    out: FlatParams<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for GradCollector<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = param.val().grad(self.grads) {
            let n = g.shape().num_elements();
            self.out.insert(param.id, g.reshape([n]));
        }
    }
}

/// Every parameter gradient present in `grads`, flattened.
pub fn gradients<B: AutodiffBackend, M: Module<B>>(
    module: &M,
    grads: &B::Gradients,
) -> FlatParams<B> {
    let mut c = GradCollector::<B> {
        grads,
        out: BTreeMap::new(),
    };
    module.visit(&mut c);
    c.out
}

struct ValueCollector<'a, B: AutodiffBackend> {
    ids: &'a [ParamId],
    out: FlatParams<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for ValueCollector<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if self.ids.contains(&param.id) {
            let t = param.val().inner();
            let n = t.shape().num_elements();
            self.out.insert(param.id, t.reshape([n]));
        }
    }
}

/// Current values of the parameters in `ids`, flattened, detached.
pub fn values<B: AutodiffBackend, M: Module<B>>(module: &M, ids: &[ParamId]) -> FlatParams<B> {
    let mut c = ValueCollector::<B> {
        ids,
        out: BTreeMap::new(),
    };
    module.visit(&mut c);
    c.out
}

struct Setter<'a, B: AutodiffBackend> {
    values: &'a FlatParams<B>,
}

impl<B: AutodiffBackend> ModuleMapper<B> for Setter<'_, B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let Some(v) = self.values.get(&param.id) else {
            return param;
        };
        let (id, old, mapper) = param.consume();
        let require_grad = old.is_require_grad();
        let mut t = Tensor::<B, D>::from_inner(v.clone().reshape(old.dims()));
        if require_grad {
            t = t.require_grad();
        }
        Param::from_mapped_value(id, t, mapper)
    }
}

struct Freezer<'a> {
    keep: &'a [ParamId],
}

impl<B: AutodiffBackend> ModuleMapper<B> for Freezer<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        if self.keep.contains(&param.id) {
            return param;
        }
        let (id, old, mapper) = param.consume();
        if !old.is_require_grad() {
            return Param::from_mapped_value(id, old, mapper);
        }
        Param::from_mapped_value(id, Tensor::from_inner(old.inner()), mapper)
    }
}

/// `module` with every float parameter except those in `keep` turned into a constant (no
/// gradient is tracked for it): a backward pass then computes only the gradients of `keep`,
/// and skips the weight-gradient kernels of every layer.
pub fn only_trainable<B: AutodiffBackend, M: Module<B>>(module: M, keep: &[ParamId]) -> M {
    module.map(&mut Freezer { keep })
}

/// Replace the parameters whose ids are in `values` (fresh autodiff leaves, same ids).
pub fn set_values<B: AutodiffBackend, M: Module<B>>(module: M, values: &FlatParams<B>) -> M {
    module.map(&mut Setter::<B> { values })
}

struct IdCollector {
    ids: Vec<ParamId>,
}

impl<B: Backend> ModuleVisitor<B> for IdCollector {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.ids.push(param.id);
    }
}

/// Ids of every float parameter (weights, architecture, running statistics) in visit order.
pub fn all_ids<B: Backend, M: Module<B>>(module: &M) -> Vec<ParamId> {
    let mut c = IdCollector { ids: Vec::new() };
    module.visit(&mut c);
    c.ids
}

/// Global L2 norm of a set of flat tensors (as f64).
pub fn global_norm<B: Backend>(tensors: &[&Tensor<B, 1>]) -> f64 {
    if tensors.is_empty() {
        return 0.0;
    }
    let sq: Vec<Tensor<B, 1>> = tensors
        .iter()
        .map(|t| (*t).clone().square().sum())
        .collect();
    // Summed on the host in ascending order: the result does not depend on the order of
    // `tensors` (parameter ids, and so map order, differ between a run and its resumption).
    let mut parts = darts_ops::to_f64s(&Tensor::cat(sq, 0));
    parts.sort_by(f64::total_cmp);
    parts.iter().sum::<f64>().sqrt()
}
