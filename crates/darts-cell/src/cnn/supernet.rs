//! The search cell and the search supernet.
//!
//! The supernet is generic over the op set: the DARTS space is [`darts_mixed_op::DartsSpace`],
//! and a user-defined space plugs in the same way. Here, a space of three candidates — `none`,
//! the identity and a user's own 3×3 convolution + BN — drives a full supernet, and the genotype
//! comes out with the user's op names:
//!
//! ```
//! use burn::backend::{Autodiff, Flex};
//! use burn::module::Module;
//! use burn::tensor::{activation::relu, backend::Backend, Tensor};
//! use darts_cell::SearchNetworkConfig;
//! use darts_mixed_op::{CandidateOp, EdgeSpec, OpSet, Softmax};
//! use darts_ops::cnn::{Identity, ReLUConvBN, Zero};
//!
//! #[derive(Module, Debug)]
//! pub enum MyOp<B: Backend> {
//!     Zero(Zero),
//!     Skip(Identity),
//!     Conv(ReLUConvBN<B>),
//! }
//!
//! impl<B: Backend> CandidateOp<B, 4> for MyOp<B> {
//!     fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
//!         match self {
//!             MyOp::Zero(z) => z.forward(x),
//!             MyOp::Skip(_) => x,
//!             MyOp::Conv(c) => c.forward(x),
//!         }
//!     }
//!     fn is_zero(&self) -> bool { matches!(self, MyOp::Zero(_)) }
//! }
//!
//! #[derive(Clone, Debug)]
//! pub struct MySpace;
//!
//! impl<B: Backend> OpSet<B, 4> for MySpace {
//!     type Op = MyOp<B>;
//!     fn names(&self) -> Vec<String> { vec!["none".into(), "skip".into(), "my_conv_3x3".into()] }
//!     fn none_index(&self) -> Option<usize> { Some(0) }
//!     fn build(&self, k: usize, e: &EdgeSpec, device: &B::Device) -> MyOp<B> {
//!         match (k, e.stride) {
//!             (0, s) => MyOp::Zero(Zero { stride: s }),
//!             (1, 1) => MyOp::Skip(Identity),
//!             // A strided "skip" and the conv: 3×3 conv carrying the stride.
//!             (_, s) => MyOp::Conv(ReLUConvBN::new(e.channels, e.channels, 3, s, 1, false, device)),
//!         }
//!     }
//! }
//!
//! type B = Autodiff<Flex>;
//! let dev = Default::default();
//! let net = SearchNetworkConfig { channels: 4, layers: 3, ..Default::default() }
//!     .init::<B, _, _>(&MySpace, Softmax, &dev).unwrap();
//! assert_eq!(net.alphas_normal.dims(), [14, 3]);
//! let logits = net.forward(Tensor::zeros([2, 3, 16, 16], &dev));
//! assert_eq!(logits.dims(), [2, 10]);
//! let g = net.genotype();
//! assert!(g.normal.iter().all(|gene| gene.op == "skip" || gene.op == "my_conv_3x3"));
//! ```

use crate::cnn::batch::{correct, cross_entropy, ImageBatch};
use crate::{CellError, CellShape};
use burn::module::{Module, Param, ParamId};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Distribution, Tensor};
use darts_bilevel::{ArchModel, BatchOutput};
use darts_genotype::{derive::derive_conv, Genotype};
use darts_mixed_op::{CandidateOp, EdgeSpec, MixedOp, OpSet, Relaxation, Softmax};
use darts_ops::cnn::{FactorizedReduce, ReLUConvBN};
use darts_ops::conv::Conv2dConfig;
use darts_ops::{BatchNorm2d, Conv2d, Linear};

/// Preprocessing of a cell input: [`FactorizedReduce`] when the previous cell reduced (for
/// `s0`), else a 1×1 [`ReLUConvBN`].
#[derive(Module, Debug)]
pub enum Preprocess<B: Backend> {
    /// Halves the spatial size.
    Reduce(FactorizedReduce<B>),
    /// 1×1 ReLU-conv-BN.
    Conv(ReLUConvBN<B>),
}

impl<B: Backend> Preprocess<B> {
    /// Build for an input of `c_in` channels to `c` channels.
    pub fn new(c_in: usize, c: usize, reduce: bool, affine: bool, device: &B::Device) -> Self {
        if reduce {
            Preprocess::Reduce(FactorizedReduce::new(c_in, c, affine, device))
        } else {
            Preprocess::Conv(ReLUConvBN::new(c_in, c, 1, 1, 0, affine, device))
        }
    }

    /// The preprocessed input: factorized reduction or ReLU-conv-BN, as built.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match self {
            Preprocess::Reduce(f) => f.forward(x),
            Preprocess::Conv(c) => c.forward(x),
        }
    }
}

/// A search cell: `steps` nodes, node `i` sums mixed ops over all `2 + i` earlier states; the
/// output concatenates the last `multiplier` states.
#[derive(Module, Debug)]
pub struct SearchCell<B: Backend, O: Module<B>> {
    /// Preprocessing of `s0` (output of the cell two back).
    pub preprocess0: Preprocess<B>,
    /// Preprocessing of `s1` (output of the previous cell).
    pub preprocess1: ReLUConvBN<B>,
    /// Mixed ops, node by node, input by input (`Σ_i (2 + i)` edges).
    pub edges: Vec<MixedOp<B, O>>,
    /// Number of intermediate nodes.
    pub steps: usize,
    /// Number of states concatenated into the output.
    pub multiplier: usize,
    /// Whether this is a reduction cell (input edges have stride 2).
    pub reduction: bool,
}

impl<B: Backend, O: CandidateOp<B, 4>> SearchCell<B, O> {
    /// Build a cell.
    pub fn new<S: OpSet<B, 4, Op = O>>(
        space: &S,
        steps: usize,
        multiplier: usize,
        shape: CellShape,
        device: &B::Device,
    ) -> Self {
        let CellShape {
            c_prev_prev,
            c_prev,
            c,
            reduction,
            reduction_prev,
        } = shape;
        let mut edges = Vec::new();
        for i in 0..steps {
            for j in 0..2 + i {
                let stride = if reduction && j < 2 { 2 } else { 1 };
                edges.push(MixedOp::new(
                    space,
                    &EdgeSpec {
                        channels: c,
                        stride,
                    },
                    device,
                ));
            }
        }
        Self {
            preprocess0: Preprocess::new(c_prev_prev, c, reduction_prev, false, device),
            preprocess1: ReLUConvBN::new(c_prev, c, 1, 1, 0, false, device),
            edges,
            steps,
            multiplier,
            reduction,
        }
    }

    /// Apply with per-edge op weights `weights` (`[edges, ops]`).
    pub fn forward(
        &self,
        s0: Tensor<B, 4>,
        s1: Tensor<B, 4>,
        weights: &[Tensor<B, 1>],
    ) -> Tensor<B, 4> {
        let mut states = vec![self.preprocess0.forward(s0), self.preprocess1.forward(s1)];
        let mut offset = 0;
        for _ in 0..self.steps {
            let mut s: Option<Tensor<B, 4>> = None;
            for (j, h) in states.iter().enumerate() {
                let y = self.edges[offset + j].forward(h.clone(), weights[offset + j].clone());
                s = Some(match s {
                    Some(acc) => acc + y,
                    None => y,
                });
            }
            offset += states.len();
            states.push(s.expect("a node has at least two inputs"));
        }
        let n = states.len();
        Tensor::cat(states[n - self.multiplier..].to_vec(), 1)
    }
}

/// Configuration of the search supernet (reference defaults: C = 16, 8 layers, 4 steps).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SearchNetworkConfig {
    /// Initial channels `C`.
    pub channels: usize,
    /// Number of classes.
    pub num_classes: usize,
    /// Number of cells; reductions at `layers/3` and `2·layers/3`.
    pub layers: usize,
    /// Intermediate nodes per cell.
    pub steps: usize,
    /// States concatenated into a cell's output.
    pub multiplier: usize,
    /// Stem width multiplier (stem outputs `stem_multiplier · C` channels).
    pub stem_multiplier: usize,
}

impl Default for SearchNetworkConfig {
    fn default() -> Self {
        Self {
            channels: 16,
            num_classes: 10,
            layers: 8,
            steps: 4,
            multiplier: 4,
            stem_multiplier: 3,
        }
    }
}

impl SearchNetworkConfig {
    /// Number of edges per cell.
    pub fn edges(&self) -> usize {
        (0..self.steps).map(|i| 2 + i).sum()
    }

    /// Check the configuration: every count at least 1 and a cell output of 1 to `steps + 2`
    /// states.
    pub fn validate(&self) -> Result<(), CellError> {
        let bad = |what: String| Err(CellError::Config(what));
        for (name, v) in [
            ("channels", self.channels),
            ("num_classes", self.num_classes),
            ("layers", self.layers),
            ("steps", self.steps),
            ("stem_multiplier", self.stem_multiplier),
        ] {
            if v == 0 {
                return bad(format!("{name} = 0 (must be at least 1)"));
            }
        }
        if !(1..=self.steps + 2).contains(&self.multiplier) {
            return bad(format!(
                "multiplier = {} (a cell has {} states: the two inputs and {} nodes)",
                self.multiplier,
                self.steps + 2,
                self.steps
            ));
        }
        Ok(())
    }

    /// Build the supernet over `space` with the given relaxation (an error if the
    /// configuration is invalid, see [`SearchNetworkConfig::validate`]).
    pub fn init<B: Backend, S: OpSet<B, 4>, R: Relaxation>(
        &self,
        space: &S,
        relaxation: R,
        device: &B::Device,
    ) -> Result<SearchNetwork<B, S::Op, R>, CellError> {
        self.validate()?;
        let c_stem = self.stem_multiplier * self.channels;
        let (mut c_pp, mut c_p, mut c_cur) = (c_stem, c_stem, self.channels);
        let mut cells = Vec::with_capacity(self.layers);
        let mut reduction_prev = false;
        for i in 0..self.layers {
            let reduction = i == self.layers / 3 || i == 2 * self.layers / 3;
            if reduction {
                c_cur *= 2;
            }
            cells.push(SearchCell::new(
                space,
                self.steps,
                self.multiplier,
                CellShape {
                    c_prev_prev: c_pp,
                    c_prev: c_p,
                    c: c_cur,
                    reduction,
                    reduction_prev,
                },
                device,
            ));
            reduction_prev = reduction;
            c_pp = c_p;
            c_p = self.multiplier * c_cur;
        }
        let k = self.edges();
        let ops = space.len();
        let alpha = || {
            Param::from_tensor(
                Tensor::random([k, ops], Distribution::Normal(0.0, 1.0), device) * 1e-3,
            )
        };
        Ok(SearchNetwork {
            stem_conv: Conv2dConfig::new(3, c_stem, 3, 1, 1).init(device),
            stem_bn: BatchNorm2d::new(c_stem, true, device),
            cells,
            classifier: Linear::new(c_p, self.num_classes, device),
            alphas_normal: alpha(),
            alphas_reduce: alpha(),
            relaxation,
            op_names: space.names(),
            none_index: space.none_index(),
            multiplier: self.multiplier,
        })
    }
}

/// The DARTS search supernet: stem, cells sharing one α per cell type, global average pool,
/// linear classifier. `alphas_normal` / `alphas_reduce` (`[edges, ops]`) are the architecture
/// parameters; everything else trainable is a weight.
#[derive(Module, Debug)]
pub struct SearchNetwork<B: Backend, O: Module<B>, R: Relaxation = Softmax> {
    /// Stem 3×3 convolution.
    pub stem_conv: Conv2d<B>,
    /// Stem BN (affine, as in the reference).
    pub stem_bn: BatchNorm2d<B>,
    /// The cells.
    pub cells: Vec<SearchCell<B, O>>,
    /// Classifier.
    pub classifier: Linear<B>,
    /// α of the normal cells.
    pub alphas_normal: Param<Tensor<B, 2>>,
    /// α of the reduction cells.
    pub alphas_reduce: Param<Tensor<B, 2>>,
    /// Relaxation (softmax by default).
    #[module(skip)]
    pub relaxation: R,
    /// Op names, in α-column order.
    #[module(skip)]
    pub op_names: Vec<String>,
    /// Index of `none`, if any.
    #[module(skip)]
    pub none_index: Option<usize>,
    /// States concatenated per cell.
    pub multiplier: usize,
}

fn rows<B: Backend>(w: Tensor<B, 2>) -> Vec<Tensor<B, 1>> {
    let [k, n] = w.dims();
    (0..k)
        .map(|e| w.clone().slice([e..e + 1, 0..n]).reshape([n]))
        .collect()
}

impl<B: Backend, O: CandidateOp<B, 4>, R: Relaxation> SearchNetwork<B, O, R> {
    /// Logits for `x` (`[N, 3, H, W]`). The relaxation is recomputed in every forward (Burn's
    /// backward consumes the graph, so nothing derived from α is cached).
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let wn = rows(self.relaxation.weights(self.alphas_normal.val()));
        let wr = rows(self.relaxation.weights(self.alphas_reduce.val()));
        let s = self.stem_bn.forward(self.stem_conv.forward(x));
        let (mut s0, mut s1) = (s.clone(), s);
        for cell in &self.cells {
            let w = if cell.reduction { &wr } else { &wn };
            let s2 = cell.forward(s0, s1.clone(), w);
            s0 = s1;
            s1 = s2;
        }
        let [n, c, _, _] = s1.dims();
        let pooled = s1.mean_dims(&[2, 3]).reshape([n, c]);
        self.classifier.forward(pooled)
    }

    /// Relaxed weights `(normal, reduce)` as nested vectors (`[edges][ops]`).
    pub fn arch_weights(&self) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
        let to_rows = |a: Tensor<B, 2>| -> Vec<Vec<f32>> {
            let [_, n] = a.dims();
            let v = darts_ops::to_f32s(&self.relaxation.weights(a));
            v.chunks(n).map(|c| c.to_vec()).collect()
        };
        (
            to_rows(self.alphas_normal.val()),
            to_rows(self.alphas_reduce.val()),
        )
    }

    /// The derived genotype (top-2 non-`none` edges per node, see [`darts_genotype::derive`]).
    pub fn genotype(&self) -> Genotype {
        let (n, r) = self.arch_weights();
        let names: Vec<&str> = self.op_names.iter().map(String::as_str).collect();
        derive_conv(&n, &r, self.multiplier, &names, self.none_index)
            .expect("supernet alphas have the shape of its cells")
    }

    /// Ids of `alphas_normal` and `alphas_reduce`.
    pub fn alpha_ids(&self) -> Vec<ParamId> {
        vec![self.alphas_normal.id, self.alphas_reduce.id]
    }

    /// Number of trainable weights (α and BN running statistics excluded).
    pub fn num_weights(&self) -> usize {
        darts_ops::trainable_params(self, &self.alpha_ids())
    }
}

impl<B, O, R> ArchModel<B> for SearchNetwork<B, O, R>
where
    B: AutodiffBackend,
    O: CandidateOp<B, 4> + burn::module::AutodiffModule<B>,
    O::InnerModule: Module<B::InnerBackend> + burn::module::ModuleDisplay,
    R: Relaxation,
{
    type Batch = ImageBatch<B>;

    fn forward_batch(&self, batch: &ImageBatch<B>) -> BatchOutput<B> {
        let logits = self.forward(batch.images.clone());
        BatchOutput::new(
            cross_entropy(logits.clone(), batch.targets.clone()),
            Some(correct(logits.detach(), batch.targets.clone())),
            batch.len(),
        )
    }

    fn arch_param_ids(&self) -> Vec<ParamId> {
        self.alpha_ids()
    }
}
