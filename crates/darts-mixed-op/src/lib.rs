//! The mixed operation of DARTS and the traits through which a search space is defined.
//!
//! * [`CandidateOp`]: one candidate operation (a Burn module with a forward).
//! * [`OpSet`]: a list of named candidates (which one, if any, is `none`) and how to build
//!   candidate `k` for an edge. The built-in DARTS space ([`DartsSpace`]) is one implementation;
//!   your own op set plugs into the same [`MixedOp`], cells and architect.
//! * [`Relaxation`]: how architecture parameters become op weights (softmax in DARTS; sigmoid
//!   as in FairDARTS; add your own).
//! * [`MixedOp`]: `Σ_k w_k · op_k(x)`.
//!
//! # A user-defined op set
//!
//! ```
//! use burn::backend::{Autodiff, Flex};
//! use burn::module::Module;
//! use burn::tensor::{activation, backend::Backend, Tensor};
//! use darts_mixed_op::{CandidateOp, EdgeSpec, MixedOp, OpSet};
//!
//! /// Two parameter-free candidates: identity and ReLU.
//! #[derive(Module, Clone, Debug)]
//! pub enum MyOp { Identity(u8), Relu(u8) }
//!
//! impl<B: Backend> CandidateOp<B, 4> for MyOp {
//!     fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
//!         match self { MyOp::Identity(_) => x, MyOp::Relu(_) => activation::relu(x) }
//!     }
//! }
//!
//! #[derive(Clone, Debug)]
//! pub struct MySpace;
//!
//! impl<B: Backend> OpSet<B, 4> for MySpace {
//!     type Op = MyOp;
//!     fn names(&self) -> Vec<String> { vec!["identity".into(), "relu".into()] }
//!     fn none_index(&self) -> Option<usize> { None }
//!     fn build(&self, index: usize, _edge: &EdgeSpec, _device: &B::Device) -> MyOp {
//!         if index == 0 { MyOp::Identity(0) } else { MyOp::Relu(0) }
//!     }
//! }
//!
//! type B = Autodiff<Flex>;
//! let dev = Default::default();
//! let mixed = MixedOp::<B, MyOp>::new(&MySpace, &EdgeSpec { channels: 1, stride: 1 }, &dev);
//! let x = Tensor::<B, 4>::from_floats([[[[-1.0, 2.0]]]], &dev);
//! let w = Tensor::<B, 1>::from_floats([0.25, 0.75], &dev);
//! let y: Vec<f32> = mixed.forward(x, w).into_data().to_vec().unwrap();
//! assert_eq!(y, vec![-0.25, 2.0]); // 0.25·x + 0.75·relu(x)
//! ```
#![warn(missing_docs)]

pub mod stochastic;

use burn::module::{Module, ModuleDisplay};
use burn::tensor::activation::{sigmoid, softmax};
use burn::tensor::{backend::Backend, Tensor};
use darts_ops::{DartsOp, OpOptions, Primitive, RnnOp, RnnPrimitive};
use serde::{Deserialize, Serialize};
use std::fmt::Debug;

/// One candidate operation of a search space.
pub trait CandidateOp<B: Backend, const D: usize>: Module<B> + ModuleDisplay + Debug {
    /// Apply the operation.
    fn forward(&self, x: Tensor<B, D>) -> Tensor<B, D>;

    /// True when the output is identically zero whatever the input (the `none` op): the mixed
    /// op then skips it, which changes nothing numerically (its weighted contribution is 0 and
    /// so is the gradient through it).
    fn is_zero(&self) -> bool {
        false
    }

    /// True for the identity (drop-path in derived networks leaves identities alone).
    fn is_identity(&self) -> bool {
        false
    }
}

/// What an edge needs to know to build its candidates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EdgeSpec {
    /// Channels (CNN) or hidden units (RNN), in = out.
    pub channels: usize,
    /// Spatial stride (1, or 2 on the input edges of a reduction cell).
    pub stride: usize,
}

/// A named set of candidate operations: the search space of one edge.
pub trait OpSet<B: Backend, const D: usize>: Clone + Debug + Send + Sync {
    /// The op module type.
    type Op: CandidateOp<B, D>;

    /// Names of the candidates, in alpha-column order.
    fn names(&self) -> Vec<String>;

    /// Index of the `none` candidate, excluded when deriving a genotype.
    fn none_index(&self) -> Option<usize>;

    /// Number of candidates.
    fn len(&self) -> usize {
        self.names().len()
    }

    /// Whether the set is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Build candidate `index` for an edge.
    fn build(&self, index: usize, edge: &EdgeSpec, device: &B::Device) -> Self::Op;
}

/// How architecture parameters `alpha` (`[edges, ops]`) become op weights.
pub trait Relaxation: Clone + Debug + Send + Sync + 'static {
    /// Weights for each edge (same shape as `alpha`).
    fn weights<B: Backend>(&self, alpha: Tensor<B, 2>) -> Tensor<B, 2>;
}

/// DARTS: `softmax(alpha)` over the ops of each edge.
#[derive(Clone, Copy, Debug, Default)]
pub struct Softmax;

impl Relaxation for Softmax {
    fn weights<B: Backend>(&self, alpha: Tensor<B, 2>) -> Tensor<B, 2> {
        softmax(alpha, 1)
    }
}

/// FairDARTS-style independent `sigmoid(alpha)` per op.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sigmoid;

impl Relaxation for Sigmoid {
    fn weights<B: Backend>(&self, alpha: Tensor<B, 2>) -> Tensor<B, 2> {
        sigmoid(alpha)
    }
}

/// A relaxation chosen at run time: the drivers' supernets use it, so that one network type
/// serves every method (`--method fair-darts` switches to the sigmoid).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnyRelaxation {
    /// [`Softmax`] over the ops of each edge (DARTS and most successors).
    #[default]
    Softmax,
    /// [`Sigmoid`] of each α independently (FairDARTS).
    Sigmoid,
}

impl Relaxation for AnyRelaxation {
    fn weights<B: Backend>(&self, alpha: Tensor<B, 2>) -> Tensor<B, 2> {
        match self {
            AnyRelaxation::Softmax => Softmax.weights(alpha),
            AnyRelaxation::Sigmoid => Sigmoid.weights(alpha),
        }
    }
}

/// Regularisers on the architecture parameters, added to the loss the architecture step
/// minimises (and, as in the reference codes, to the weight step's loss, where their gradient
/// is zero). A weight of 0 turns a term off; both terms may be on. `alphas` are the op-weight
/// parameters of every cell type (`[edges, ops]` each).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ArchRegularizer {
    /// FairDARTS's zero-one loss `−w · mean((σ(α) − 1/2)²)` over every α of every cell type
    /// (reference `separate_loss.py: ConvSeparateLoss`, `w = 10`): pushes each sigmoid weight
    /// towards 0 or 1. This is `w`.
    pub zero_one: f64,
    /// β-DARTS's Beta-Decay `λ · mean_e logsumexp(α_e)` over the edges `e` of every cell type
    /// (reference `optimizers/darts/architect.py: mlc_loss`). This is `λ`, set each epoch by
    /// the method's schedule.
    pub beta_decay: f64,
    /// DrNAS's optional `scale · Σ_e KL(Dir(ELU(α_e) + 1) ‖ Dir(1))` (reference `reg_type='kl'`,
    /// `_get_kl_reg`). This is the scale.
    pub dirichlet_kl: f64,
}

impl ArchRegularizer {
    /// The regularisers' value on `alphas`, `None` when every term is off.
    pub fn loss<B: Backend>(&self, alphas: &[Tensor<B, 2>]) -> Option<Tensor<B, 1>> {
        if alphas.is_empty() {
            return None;
        }
        let all = Tensor::cat(alphas.to_vec(), 0);
        let mut total: Option<Tensor<B, 1>> = None;
        let mut add = |t: Tensor<B, 1>| {
            total = Some(match total.take() {
                Some(acc) => acc + t,
                None => t,
            })
        };
        if self.zero_one != 0.0 {
            let d = sigmoid(all.clone()) - 0.5;
            add((d.clone() * d).mean() * (-self.zero_one));
        }
        if self.beta_decay != 0.0 {
            // logsumexp per row, stabilised by the row maximum (held constant).
            let m = all.clone().max_dim(1).detach();
            let lse = (all.clone() - m.clone()).exp().sum_dim(1).log() + m;
            add(lse.mean() * self.beta_decay);
        }
        if self.dirichlet_kl != 0.0 {
            let c = all.clone().clamp_min(0.0) + all.clamp_max(0.0).exp();
            add(stochastic::dirichlet_kl_uniform(c) * self.dirichlet_kl);
        }
        total
    }
}

/// PC-DARTS's channel shuffle: `[N, C, H, W]` viewed as `[N, groups, C/groups, H, W]`, the two
/// channel axes transposed, flattened back (reference `model_search.py: channel_shuffle`).
/// Channel `g·(C/groups) + i` moves to `i·groups + g`.
pub fn channel_shuffle<B: Backend>(x: Tensor<B, 4>, groups: usize) -> Tensor<B, 4> {
    let [n, c, h, w] = x.dims();
    x.reshape([n, groups, c / groups, h, w])
        .swap_dims(1, 2)
        .reshape([n, c, h, w])
}

/// The mixed operation of one edge: `Σ_k w_k · op_k(x)`.
///
/// With partial channels (PC-DARTS, [`MixedOp::new_partial`], `K = partial > 1`) the candidates
/// are built for `C/K` channels and see only the first `C/K` channels of the input; the other
/// channels bypass them (through a 2×2 max pool with stride 2 on a reducing edge), the two parts
/// are concatenated and [`channel_shuffle`]d with `K` groups.
#[derive(Module, Debug)]
pub struct MixedOp<B: Backend, O: Module<B>> {
    /// The candidates, in alpha-column order.
    pub ops: Vec<O>,
    /// Partial-channel factor `K` (1: every channel goes through the candidates).
    pub partial: usize,
    _b: core::marker::PhantomData<B>,
}

impl<B: Backend, O: Module<B>> MixedOp<B, O> {
    /// Build every candidate of `space` for the edge.
    pub fn new<const D: usize, S: OpSet<B, D, Op = O>>(
        space: &S,
        edge: &EdgeSpec,
        device: &B::Device,
    ) -> Self
    where
        O: CandidateOp<B, D>,
    {
        Self::new_partial(space, edge, 1, device)
    }

    /// Build every candidate of `space` for `C/K` channels of the edge (PC-DARTS partial
    /// channel connections with `K = partial`; 1 is the plain mixed op). `edge.channels` must be
    /// a multiple of `partial` (the supernet configuration checks it).
    pub fn new_partial<const D: usize, S: OpSet<B, D, Op = O>>(
        space: &S,
        edge: &EdgeSpec,
        partial: usize,
        device: &B::Device,
    ) -> Self
    where
        O: CandidateOp<B, D>,
    {
        let partial = partial.max(1);
        let inner = EdgeSpec {
            channels: edge.channels / partial,
            stride: edge.stride,
        };
        let ops = (0..space.len())
            .map(|k| space.build(k, &inner, device))
            .collect();
        Self {
            ops,
            partial,
            _b: core::marker::PhantomData,
        }
    }

    /// Apply with op weights `w` (`[ops]`).
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>, w: Tensor<B, 1>) -> Tensor<B, D>
    where
        O: CandidateOp<B, D>,
    {
        self.partial_channels(x, |x| self.mix(x, w, None))
    }

    /// `acc + forward(x, w)`, the way a cell sums a node's edges: on the GPU types the add is
    /// part of the weighted sum's single operation (no launch of its own); without partial
    /// channels only, else an add after [`MixedOp::forward`].
    pub fn forward_add<const D: usize>(
        &self,
        x: Tensor<B, D>,
        w: Tensor<B, 1>,
        acc: Option<Tensor<B, D>>,
    ) -> Tensor<B, D>
    where
        O: CandidateOp<B, D>,
    {
        if self.partial <= 1 {
            return self.mix(x, w, acc);
        }
        let y = self.forward(x, w);
        match acc {
            Some(acc) => acc + y,
            None => y,
        }
    }

    /// GDAS's forward: only candidate `index` is computed, `op_index(x) · w[index]` (reference
    /// `search_cells.py: MixedOp.forward_gdas`; `w` carries the straight-through gradient), with
    /// partial channels as in [`MixedOp::forward`].
    pub fn forward_single<const D: usize>(
        &self,
        x: Tensor<B, D>,
        w: Tensor<B, 1>,
        index: usize,
    ) -> Tensor<B, D>
    where
        O: CandidateOp<B, D>,
    {
        self.partial_channels(x, |x| {
            let y = self.ops[index].forward(x);
            let shape = y.dims();
            let numel: usize = shape.iter().product();
            let wk = w.slice(index..index + 1).reshape([1, 1]);
            (y.reshape([1, numel]) * wk).reshape(shape)
        })
    }

    /// `candidates(x)` on all channels, or, with partial channels, on the first `C/K` with the
    /// rest bypassed and the channels shuffled.
    fn partial_channels<const D: usize>(
        &self,
        x: Tensor<B, D>,
        candidates: impl FnOnce(Tensor<B, D>) -> Tensor<B, D>,
    ) -> Tensor<B, D> {
        if self.partial <= 1 {
            return candidates(x);
        }
        let dims = x.dims();
        let c = dims[1];
        let cp = c / self.partial;
        let part = candidates(x.clone().narrow(1, 0, cp));

        let rest = x.narrow(1, cp, c - cp);
        let rest = if part.dims()[2..] == dims[2..] {
            rest
        } else {
            // A reducing edge: the bypassed channels go through MaxPool2d(2, 2).
            assert!(D == 4, "only image edges change the spatial size");
            let d = rest.dims();
            let pooled = darts_ops::kernels::pool2d(
                rest.reshape([d[0], d[1], d[2], d[3]]),
                darts_ops::kernels::Pooling::Max,
                2,
                2,
                0,
            );
            let mut out = part.dims();
            out[1] = c - cp;
            pooled.reshape(out)
        };
        let y = Tensor::cat(vec![part, rest], 1);
        let out = y.dims();
        let k = self.partial;
        let spatial = out[2..].iter().product::<usize>();
        // channel_shuffle for any rank: [N, K, C/K, rest] with the channel axes swapped.
        y.reshape([out[0], k, c / k, spatial])
            .swap_dims(1, 2)
            .reshape(out)
    }

    /// `acc + Σ_k w_k · op_k(x)` over the candidates that are not `none`, through
    /// [`darts_ops::kernels::weighted_sum`] (on the GPU types one operation with the
    /// accumulator; elsewhere each candidate computed and weighted in turn).
    fn mix<const D: usize>(
        &self,
        x: Tensor<B, D>,
        w: Tensor<B, 1>,
        acc: Option<Tensor<B, D>>,
    ) -> Tensor<B, D>
    where
        O: CandidateOp<B, D>,
    {
        let live: Vec<usize> = (0..self.ops.len())
            .filter(|&k| !self.ops[k].is_zero())
            .collect();
        if live.is_empty() {
            // Every candidate is `none`: the output is the (zero) output of the first one.
            let y = self.ops[0].forward(x);
            return match acc {
                Some(acc) => acc + y,
                None => y,
            };
        }
        let ys = live.iter().map(|&k| self.ops[k].forward(x.clone()));
        darts_ops::kernels::weighted_sum(ys, w, &live, acc)
    }
}

impl<B: Backend> CandidateOp<B, 4> for DartsOp<B> {
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        DartsOp::forward(self, x)
    }
    fn is_zero(&self) -> bool {
        DartsOp::is_zero(self)
    }
    fn is_identity(&self) -> bool {
        DartsOp::is_identity(self)
    }
}

/// The convolutional DARTS space (or any list of [`Primitive`]s), as used in search:
/// non-affine BNs and a BN after every pool, like the reference `MixedOp`.
#[derive(Clone, Debug)]
pub struct DartsSpace {
    /// The candidates.
    pub primitives: Vec<Primitive>,
    /// BN affine parameters.
    pub affine: bool,
    /// BN after pools.
    pub bn_after_pool: bool,
}

impl Default for DartsSpace {
    fn default() -> Self {
        Self {
            primitives: Primitive::DARTS.to_vec(),
            affine: false,
            bn_after_pool: true,
        }
    }
}

impl DartsSpace {
    /// The candidates of derived (evaluation) networks: every known primitive
    /// ([`Primitive::ALL`]), affine BN, no BN after pools (reference `cnn/operations.py` as used
    /// by `cnn/model.py`).
    pub fn derived() -> Self {
        Self {
            primitives: Primitive::ALL.to_vec(),
            affine: true,
            bn_after_pool: false,
        }
    }
}

impl<B: Backend> OpSet<B, 4> for DartsSpace {
    type Op = DartsOp<B>;

    fn names(&self) -> Vec<String> {
        self.primitives
            .iter()
            .map(|p| p.name().to_string())
            .collect()
    }

    fn none_index(&self) -> Option<usize> {
        self.primitives.iter().position(|p| *p == Primitive::None)
    }

    fn len(&self) -> usize {
        self.primitives.len()
    }

    fn build(&self, index: usize, edge: &EdgeSpec, device: &B::Device) -> DartsOp<B> {
        let opts = OpOptions {
            affine: self.affine,
            bn_after_pool: self.bn_after_pool,
        };
        self.primitives[index].build(edge.channels, edge.stride, opts, device)
    }
}

impl<B: Backend, const D: usize> CandidateOp<B, D> for RnnOp {
    fn forward(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        RnnOp::forward(self, x)
    }
    fn is_zero(&self) -> bool {
        self.primitive == RnnPrimitive::None
    }
    fn is_identity(&self) -> bool {
        self.primitive == RnnPrimitive::Identity
    }
}

/// The recurrent DARTS space: the activation `f` of each highway edge. The recurrent cell
/// applies a candidate to the stacked pre-activations of all predecessors of a node at once (the
/// candidates are element-wise), so the op takes `[rows, hidden]` tensors.
#[derive(Clone, Debug)]
pub struct RnnSpace {
    /// The candidates.
    pub primitives: Vec<RnnPrimitive>,
}

impl Default for RnnSpace {
    fn default() -> Self {
        Self {
            primitives: RnnPrimitive::DARTS.to_vec(),
        }
    }
}

impl<B: Backend> OpSet<B, 2> for RnnSpace {
    type Op = RnnOp;

    fn names(&self) -> Vec<String> {
        self.primitives
            .iter()
            .map(|p| p.name().to_string())
            .collect()
    }

    fn none_index(&self) -> Option<usize> {
        self.primitives
            .iter()
            .position(|p| *p == RnnPrimitive::None)
    }

    fn len(&self) -> usize {
        self.primitives.len()
    }

    fn build(&self, index: usize, _edge: &EdgeSpec, _device: &B::Device) -> RnnOp {
        RnnOp::new(self.primitives[index])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::Distribution;
    type B = Autodiff<Flex>;

    #[test]
    fn mixed_op_is_the_weighted_sum_of_its_ops() {
        let dev = Default::default();
        let space = DartsSpace::default();
        let edge = EdgeSpec {
            channels: 4,
            stride: 1,
        };
        let m = MixedOp::<B, DartsOp<B>>::new(&space, &edge, &dev);
        assert_eq!(m.ops.len(), 8);
        let x = Tensor::<B, 4>::random([2, 4, 6, 6], Distribution::Default, &dev);
        let alpha = Tensor::<B, 2>::random([1, 8], Distribution::Normal(0.0, 1.0), &dev);
        let w = Softmax.weights(alpha).reshape([8]);
        let y = m.forward(x.clone(), w.clone());
        let wv: Vec<f32> = w.into_data().to_vec().unwrap();
        let mut expect = Tensor::<B, 4>::zeros([2, 4, 6, 6], &dev);
        for (k, op) in m.ops.iter().enumerate() {
            expect = expect + op.forward(x.clone()) * wv[k];
        }
        let diff: f32 = (y - expect).abs().max().into_scalar();
        assert!(diff < 1e-5, "{diff}");
    }

    #[test]
    fn relaxations() {
        let dev = Default::default();
        let a = Tensor::<Flex, 2>::from_floats([[0.0, 0.0], [1.0, -1.0]], &dev);
        let s: Vec<f32> = Softmax.weights(a.clone()).into_data().to_vec().unwrap();
        assert!((s[0] - 0.5).abs() < 1e-6 && (s[2] + s[3] - 1.0).abs() < 1e-6);
        let g: Vec<f32> = Sigmoid.weights(a).into_data().to_vec().unwrap();
        assert!((g[2] - 0.7310586).abs() < 1e-6);
        let space = DartsSpace::default();
        assert_eq!(OpSet::<Flex, 4>::none_index(&space), Some(0));
        assert_eq!(OpSet::<Flex, 4>::names(&space)[4], "sep_conv_3x3");
    }
}
