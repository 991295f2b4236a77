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

use crate::cnn::batch::ImageBatch;
use crate::{CellError, CellShape};
use burn::module::{Module, Param, ParamId};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Distribution, Tensor};
use darts_bilevel::{ArchModel, BatchOutput};
use darts_genotype::{derive::Derivation, Genotype};
use darts_mixed_op::stochastic::{self, NoiseSource};
use darts_mixed_op::{ArchRegularizer, CandidateOp, EdgeSpec, MixedOp, OpSet, Relaxation, Softmax};
use darts_ops::cnn::{FactorizedReduce, Identity, ReLUConvBN};
use darts_ops::conv::Conv2dConfig;
use darts_ops::{BatchNorm2d, Conv2d, Linear};
use std::ops::Range;

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

/// DARTS−'s auxiliary skip connection of an edge: the identity at stride 1, a learnable
/// non-affine [`FactorizedReduce`] at stride 2 (reference `DARTS-/src/search/model_search.py:
/// MixedOp`). Its output is added to the mixed op's, scaled by the schedule's `β`.
// One per edge, built once: boxing the larger variant would gain nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum AuxSkip<B: Backend> {
    /// Stride 1.
    Identity(Identity),
    /// Stride 2.
    Reduce(FactorizedReduce<B>),
}

impl<B: Backend> AuxSkip<B> {
    /// The skip of an edge with `channels` in and out and the given stride.
    pub fn new(channels: usize, stride: usize, device: &B::Device) -> Self {
        if stride == 1 {
            AuxSkip::Identity(Identity)
        } else {
            AuxSkip::Reduce(FactorizedReduce::new(channels, channels, false, device))
        }
    }

    /// Identity or factorized reduction.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match self {
            AuxSkip::Identity(_) => x,
            AuxSkip::Reduce(f) => f.forward(x),
        }
    }
}

/// `x · s` for a one-element `s`, through the row-broadcast path (`[1, numel] · [1, 1]`).
fn scale_by<B: Backend>(x: Tensor<B, 4>, s: Tensor<B, 1>) -> Tensor<B, 4> {
    let shape = x.dims();
    let numel: usize = shape.iter().product();
    (x.reshape([1, numel]) * s.reshape([1, 1])).reshape(shape)
}

/// What a search cell's forward takes besides its inputs: the op weights of every edge and,
/// depending on the method, PC-DARTS's normalised edge weights and DARTS−'s skip scale.
#[derive(Clone, Debug)]
pub struct CellWeights<B: Backend> {
    /// Op weights per edge (`[ops]` each).
    pub ops: Vec<Tensor<B, 1>>,
    /// Edge weights `β̂` per edge (`[1]` each; softmax over a node's incoming edges).
    pub edges: Option<Vec<Tensor<B, 1>>>,
    /// Scale of the auxiliary skips (DARTS− `β`); ignored when the cell has none.
    pub aux_scale: f64,
    /// GDAS: the one candidate each edge computes (`None`: every candidate, weighted).
    pub index: Option<Vec<usize>>,
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
    /// DARTS−'s auxiliary skip per edge (empty when off).
    pub aux: Vec<AuxSkip<B>>,
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
        Self::with_options(space, steps, multiplier, shape, 1, false, device)
    }

    /// Build a cell whose mixed ops use partial channels `partial` (PC-DARTS `K`; 1 = off) and,
    /// with `aux_skip`, an auxiliary skip per edge (DARTS−).
    pub fn with_options<S: OpSet<B, 4, Op = O>>(
        space: &S,
        steps: usize,
        multiplier: usize,
        shape: CellShape,
        partial: usize,
        aux_skip: bool,
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
        let mut aux = Vec::new();
        for i in 0..steps {
            for j in 0..2 + i {
                let stride = if reduction && j < 2 { 2 } else { 1 };
                let spec = EdgeSpec {
                    channels: c,
                    stride,
                };
                edges.push(MixedOp::new_partial(space, &spec, partial, device));
                if aux_skip {
                    aux.push(AuxSkip::new(c, stride, device));
                }
            }
        }
        Self {
            preprocess0: Preprocess::new(c_prev_prev, c, reduction_prev, false, device),
            preprocess1: ReLUConvBN::new(c_prev, c, 1, 1, 0, false, device),
            edges,
            aux,
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
        let w = CellWeights {
            ops: weights.to_vec(),
            edges: None,
            aux_scale: 0.0,
            index: None,
        };
        self.forward_with(s0, s1, &w)
    }

    /// Apply with op weights, optional edge weights and the auxiliary skips' scale: edge `e`
    /// computes `β̂_e · (MixedOp_e(h) + aux_scale · skip_e(h))` (each factor only when present).
    pub fn forward_with(
        &self,
        s0: Tensor<B, 4>,
        s1: Tensor<B, 4>,
        w: &CellWeights<B>,
    ) -> Tensor<B, 4> {
        let mut states = vec![self.preprocess0.forward(s0), self.preprocess1.forward(s1)];
        let mut offset = 0;
        for _ in 0..self.steps {
            let mut s: Option<Tensor<B, 4>> = None;
            for (j, h) in states.iter().enumerate() {
                let e = offset + j;
                let aux = self.aux.get(e).filter(|_| w.aux_scale != 0.0);
                if w.index.is_none() && aux.is_none() && w.edges.is_none() {
                    // The node's sum so far goes into the edge's weighted sum (one operation
                    // on the GPU types).
                    let y = self.edges[e].forward_add(h.clone(), w.ops[e].clone(), s.take());
                    s = Some(y);
                    continue;
                }
                let mut y = match &w.index {
                    Some(index) => {
                        self.edges[e].forward_single(h.clone(), w.ops[e].clone(), index[e])
                    }
                    None => self.edges[e].forward(h.clone(), w.ops[e].clone()),
                };
                if let Some(skip) = aux {
                    y = y + skip.forward(h.clone()) * w.aux_scale;
                }
                if let Some(b) = &w.edges {
                    y = scale_by(y, b[e].clone());
                }
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
    /// PC-DARTS partial channel connections: the candidates of an edge see `C/K` of its channels
    /// (`K = partial_channels`; 1 = off, the DARTS supernet).
    #[serde(default = "one")]
    pub partial_channels: usize,
    /// PC-DARTS edge normalisation: a parameter `β` per edge, softmax over each node's incoming
    /// edges, node = `Σ_j β̂_j · MixedOp_j` (architecture parameters next to α).
    #[serde(default)]
    pub edge_normalization: bool,
    /// DARTS−'s auxiliary skip connection on every edge.
    #[serde(default)]
    pub auxiliary_skip: bool,
    /// How α (and β) start.
    #[serde(default)]
    pub alpha_init: AlphaInit,
}

fn one() -> usize {
    1
}

/// How the architecture parameters are initialised.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlphaInit {
    /// `10⁻³ · N(0, 1)`, the reference DARTS (and PC-DARTS's β).
    #[default]
    Random,
    /// All zero (FairDARTS: every sigmoid weight starts at 1/2).
    Zeros,
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
            partial_channels: 1,
            edge_normalization: false,
            auxiliary_skip: false,
            alpha_init: AlphaInit::Random,
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
        let k = self.partial_channels;
        if k == 0 || !self.channels.is_multiple_of(k) {
            return bad(format!(
                "partial_channels = {k} with channels = {} (the candidates see C/K channels: C must be a multiple of K)",
                self.channels
            ));
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
            cells.push(SearchCell::with_options(
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
                self.partial_channels,
                self.auxiliary_skip,
                device,
            ));
            reduction_prev = reduction;
            c_pp = c_p;
            c_p = self.multiplier * c_cur;
        }
        let k = self.edges();
        let ops = space.len();
        let init = self.alpha_init;
        let alpha = || {
            Param::from_tensor(match init {
                AlphaInit::Random => {
                    Tensor::random([k, ops], Distribution::Normal(0.0, 1.0), device) * 1e-3
                }
                AlphaInit::Zeros => Tensor::zeros([k, ops], device),
            })
        };
        let beta = || {
            self.edge_normalization.then(|| {
                Param::from_tensor(match init {
                    AlphaInit::Random => {
                        Tensor::random([k], Distribution::Normal(0.0, 1.0), device) * 1e-3
                    }
                    AlphaInit::Zeros => Tensor::zeros([k], device),
                })
            })
        };
        // Draw order as the DARTS supernet always had it (pinned results depend on it): the
        // cells (above), the stem, the classifier, α, then β.
        let stem_conv = Conv2dConfig::new(3, c_stem, 3, 1, 1).init(device);
        let stem_bn = BatchNorm2d::new(c_stem, true, device);
        let classifier = Linear::new(c_p, self.num_classes, device);
        let (alphas_normal, alphas_reduce) = (alpha(), alpha());
        let (betas_normal, betas_reduce) = (beta(), beta());
        Ok(SearchNetwork {
            stem_conv,
            stem_bn,
            cells,
            classifier,
            alphas_normal,
            alphas_reduce,
            op_mask_normal: None,
            op_mask_reduce: None,
            betas_normal,
            betas_reduce,
            relaxation,
            regularizer: ArchRegularizer::default(),
            derivation: Derivation::TopK,
            aux_scale: 1.0,
            sampling: Sampling::None,
            noise: NoiseSource::default(),
            projection: Projection::default(),
            steps: self.steps,
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
    /// DrNAS's op mask of the normal cells (`[edges, ops]`, 1 = kept), after its progressive
    /// pruning: the op weights of pruned candidates are zero and each edge's weights are
    /// renormalised over the kept ones. Not trainable.
    pub op_mask_normal: Option<Param<Tensor<B, 2>>>,
    /// The op mask of the reduction cells.
    pub op_mask_reduce: Option<Param<Tensor<B, 2>>>,
    /// PC-DARTS edge-normalisation parameters β of the normal cells (`[edges]`), if on.
    pub betas_normal: Option<Param<Tensor<B, 1>>>,
    /// β of the reduction cells.
    pub betas_reduce: Option<Param<Tensor<B, 1>>>,
    /// Regulariser of the architecture objective (FairDARTS, β-DARTS); set by the method's
    /// schedule each epoch.
    #[module(skip)]
    pub regularizer: ArchRegularizer,
    /// How [`SearchNetwork::genotype`] discretises (the DARTS top-2 rule by default; FairDARTS's
    /// threshold).
    #[module(skip)]
    pub derivation: Derivation,
    /// How each forward turns α into op weights: the relaxation (DARTS), or a sample (GDAS's
    /// hard Gumbel-softmax, DrNAS's Dirichlet).
    #[module(skip)]
    pub sampling: Sampling,
    /// Random numbers of the samples (restarted each epoch by the driver).
    #[module(skip)]
    pub noise: NoiseSource,
    /// DARTS-PT's decisions, applied to the op weights of every forward and of
    /// [`SearchNetwork::arch_weights`] (empty: none).
    #[module(skip)]
    pub projection: Projection,
    /// Scale of DARTS−'s auxiliary skips (its `β`, from 1 down to 0 over the epochs; set by the
    /// schedule); unused without them.
    #[module(skip)]
    pub aux_scale: f64,
    /// Intermediate nodes per cell.
    pub steps: usize,
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

/// How a supernet's forward turns α into the op weights of its edges.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sampling {
    /// The relaxation's weights (`softmax(α)` in DARTS), every candidate computed.
    #[default]
    None,
    /// GDAS: per edge a hard Gumbel-softmax sample at temperature `tau`
    /// ([`darts_mixed_op::stochastic::gumbel_hard`]); only the sampled candidate is computed.
    Gumbel {
        /// Temperature `τ` (10 → 0.1 over the search).
        tau: f64,
    },
    /// DrNAS: per edge a Dirichlet sample with concentration `ELU(α) + 1`
    /// ([`darts_mixed_op::stochastic::dirichlet_rsample`]), every candidate computed.
    Dirichlet,
}

/// DARTS-PT's decisions on one cell type (reference `darts-pt/sota/cnn/
/// model_search_darts_proj.py: get_projected_weights`): edges whose op was chosen carry that
/// op's one-hot weights, nodes whose inputs were chosen give their other edges zero weights,
/// and `masked` entries are zeroed while a candidate decision is evaluated.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CellProjection {
    /// Per edge, the op chosen for it (empty: no edge decided yet).
    pub ops: Vec<Option<usize>>,
    /// Per intermediate node (index `i` is state `2 + i`), the edges kept.
    pub edges: Vec<Option<Vec<usize>>>,
    /// Weights zeroed for an evaluation: `(edge, Some(op))` one op of an edge, `(edge, None)`
    /// the whole edge.
    pub masked: Vec<(usize, Option<usize>)>,
}

impl CellProjection {
    /// Whether the projection changes nothing.
    pub fn is_empty(&self) -> bool {
        self.ops.iter().all(Option::is_none)
            && self.edges.iter().all(Option::is_none)
            && self.masked.is_empty()
    }

    /// `(mask, one_hot)` such that the projected weights are `w ⊙ mask + one_hot`, for a cell
    /// whose node `i` reads the edges `node_edges[i]` (consecutive, in order; the last range
    /// ends at the edge count) and `ops` candidates (row-major `[edges, ops]`).
    pub fn mask(&self, node_edges: &[Range<usize>], ops: usize) -> (Vec<f64>, Vec<f64>) {
        let edges = node_edges.last().map_or(0, |r| r.end);
        let mut mask = vec![1.0; edges * ops];
        let mut hot = vec![0.0; edges * ops];
        let clear = |e: usize, mask: &mut [f64], hot: &mut [f64]| {
            for k in 0..ops {
                mask[e * ops + k] = 0.0;
                hot[e * ops + k] = 0.0;
            }
        };
        for (e, op) in self.ops.iter().enumerate().take(edges) {
            if let Some(k) = op {
                clear(e, &mut mask, &mut hot);
                hot[e * ops + k] = 1.0;
            }
        }
        for (kept, range) in self.edges.iter().zip(node_edges) {
            if let Some(kept) = kept {
                for e in range.clone() {
                    if !kept.contains(&e) {
                        clear(e, &mut mask, &mut hot);
                    }
                }
            }
        }
        for &(e, op) in &self.masked {
            match op {
                Some(k) => {
                    mask[e * ops + k] = 0.0;
                    hot[e * ops + k] = 0.0;
                }
                None => clear(e, &mut mask, &mut hot),
            }
        }
        (mask, hot)
    }

    /// The op weights `w` (`[edges, ops]`) with the decisions applied (`w` itself when there
    /// are none); see [`CellProjection::mask`].
    pub fn apply<B: Backend>(&self, w: Tensor<B, 2>, node_edges: &[Range<usize>]) -> Tensor<B, 2> {
        if self.is_empty() {
            return w;
        }
        let [edges, ops] = w.dims();
        let (mask, hot) = self.mask(node_edges, ops);
        let like = |v: Vec<f64>| {
            Tensor::<B, 2>::from_data(
                burn::tensor::TensorData::new(v, [edges, ops]),
                (&w.device(), w.dtype()),
            )
        };
        w.clone() * like(mask) + like(hot)
    }
}

/// The edges of each intermediate node of a DARTS cell of `steps` nodes: node `i` reads the
/// `2 + i` edges from `i(i + 3)/2`.
pub fn darts_node_edges(steps: usize) -> Vec<Range<usize>> {
    (0..steps)
        .map(|i| {
            let start = i * (i + 3) / 2;
            start..start + 2 + i
        })
        .collect()
}

/// DARTS-PT's decisions on both cell types.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Projection {
    /// Normal cells.
    pub normal: CellProjection,
    /// Reduction cells.
    pub reduce: CellProjection,
}

/// `ELU(x) + 1` (DrNAS's concentration), positive everywhere.
pub fn elu_plus_one<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    x.clone().clamp_min(0.0) + x.clamp_max(0.0).exp()
}

/// PC-DARTS's edge normalisation: softmax of `β` over the incoming edges of each node (node `i`
/// has `2 + i`), concatenated back in edge order.
pub fn edge_softmax<B: Backend>(beta: Tensor<B, 1>, steps: usize) -> Tensor<B, 1> {
    let mut parts = Vec::with_capacity(steps);
    let mut start = 0;
    for i in 0..steps {
        let n = 2 + i;
        parts.push(burn::tensor::activation::softmax(
            beta.clone().slice(start..start + n),
            0,
        ));
        start += n;
    }
    Tensor::cat(parts, 0)
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
        let sample = |alpha: Tensor<B, 2>| -> (Tensor<B, 2>, Option<Vec<usize>>) {
            match self.sampling {
                Sampling::None => (self.relaxation.weights(alpha), None),
                Sampling::Gumbel { tau } => {
                    let (w, index) = stochastic::gumbel_hard(alpha, tau, &self.noise);
                    (w, Some(index))
                }
                Sampling::Dirichlet => (
                    stochastic::dirichlet_rsample(elu_plus_one(alpha), &self.noise),
                    None,
                ),
            }
        };
        let (wn, index_n) = sample(self.alphas_normal.val());
        let (wr, index_r) = sample(self.alphas_reduce.val());
        self.forward_weighted(x, [(wn, index_n), (wr, index_r)])
    }

    /// Logits with the op weights of the normal and the reduction cells given (each `[edges,
    /// ops]`, with GDAS's sampled index per edge when only that candidate is computed) instead of
    /// drawn from α: SDARTS's perturbed weights. Edge normalisation and the auxiliary skips
    /// apply as in [`SearchNetwork::forward`].
    pub fn forward_weighted(
        &self,
        x: Tensor<B, 4>,
        [(wn, index_n), (wr, index_r)]: [(Tensor<B, 2>, Option<Vec<usize>>); 2],
    ) -> Tensor<B, 2> {
        let weights = |w: Tensor<B, 2>,
                       index: Option<Vec<usize>>,
                       beta: &Option<Param<Tensor<B, 1>>>| CellWeights {
            ops: rows(w),
            edges: beta.as_ref().map(|b| {
                let w = edge_softmax(b.val(), self.steps);
                (0..w.dims()[0])
                    .map(|e| w.clone().slice(e..e + 1))
                    .collect()
            }),
            aux_scale: self.aux_scale,
            index,
        };
        let wn = weights(self.restrict(wn, false), index_n, &self.betas_normal);
        let wr = weights(self.restrict(wr, true), index_r, &self.betas_reduce);
        let s = self.stem_bn.forward(self.stem_conv.forward(x));
        let (mut s0, mut s1) = (s.clone(), s);
        for cell in &self.cells {
            let w = if cell.reduction { &wr } else { &wn };
            let s2 = cell.forward_with(s0, s1.clone(), w);
            s0 = s1;
            s1 = s2;
        }
        let [n, c, _, _] = s1.dims();
        let pooled = s1.mean_dims(&[2, 3]).reshape([n, c]);
        self.classifier.forward(pooled)
    }

    /// Relaxed weights `(normal, reduce)` as nested vectors (`[edges][ops]`), with DARTS-PT's
    /// decisions applied.
    pub fn arch_weights(&self) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
        let to_rows = |a: Tensor<B, 2>, reduce: bool| -> Vec<Vec<f32>> {
            let [_, n] = a.dims();
            let v = darts_ops::to_f32s(&self.restrict(self.relaxation.weights(a), reduce));
            v.chunks(n).map(|c| c.to_vec()).collect()
        };
        (
            to_rows(self.alphas_normal.val(), false),
            to_rows(self.alphas_reduce.val(), true),
        )
    }

    /// The op weights `w` as every forward and the derivation use them: DrNAS's op mask
    /// ([`SearchNetwork::masked`]), then DARTS-PT's decisions ([`SearchNetwork::project`]).
    pub fn restrict(&self, w: Tensor<B, 2>, reduce: bool) -> Tensor<B, 2> {
        self.project(self.masked(w, reduce), reduce)
    }

    /// `w` with DrNAS's op mask applied (pruned candidates zero, each edge renormalised over
    /// the kept ones; `w` itself without a mask), reference `utils.py: process_step_vector`.
    pub fn masked(&self, w: Tensor<B, 2>, reduce: bool) -> Tensor<B, 2> {
        let mask = if reduce {
            &self.op_mask_reduce
        } else {
            &self.op_mask_normal
        };
        match mask {
            None => w,
            Some(m) => {
                let kept = w * m.val();
                let sum = kept.clone().sum_dim(1);
                kept / sum
            }
        }
    }

    /// The op weights `w` (`[edges, ops]`) of the normal (or reduction) cells with DARTS-PT's
    /// decisions applied (`w` itself when there are none).
    pub fn project(&self, w: Tensor<B, 2>, reduce: bool) -> Tensor<B, 2> {
        let p = if reduce {
            &self.projection.reduce
        } else {
            &self.projection.normal
        };
        p.apply(w, &darts_node_edges(self.steps))
    }

    /// The normalised edge weights `β̂` `(normal, reduce)` (softmax over each node's incoming
    /// edges), when the supernet has edge normalisation.
    pub fn edge_weights(&self) -> Option<(Vec<f32>, Vec<f32>)> {
        let read = |b: &Option<Param<Tensor<B, 1>>>| {
            b.as_ref()
                .map(|b| darts_ops::to_f32s(&edge_softmax(b.val(), self.steps)))
        };
        Some((read(&self.betas_normal)?, read(&self.betas_reduce)?))
    }

    /// The derived genotype by [`SearchNetwork::derivation`]: by default the top-2 non-`none`
    /// edges per node by their strongest op weight (see [`darts_genotype::derive`]); with edge
    /// normalisation the op weights of edge `e` are
    /// first scaled by `β̂_e` (PC-DARTS: β decides which edges, not which op).
    pub fn genotype(&self) -> Genotype {
        let (mut n, mut r) = self.arch_weights();
        if let Some((bn, br)) = self.edge_weights() {
            for (rows, b) in [(&mut n, bn), (&mut r, br)] {
                for (row, s) in rows.iter_mut().zip(b) {
                    row.iter_mut().for_each(|w| *w *= s);
                }
            }
        }
        let names: Vec<&str> = self.op_names.iter().map(String::as_str).collect();
        self.derivation
            .derive(&n, &r, self.multiplier, &names, self.none_index)
            .expect("supernet alphas have the shape of its cells")
    }

    /// Ids of the architecture parameters: `alphas_normal`, `alphas_reduce` and, with edge
    /// normalisation, `betas_normal`, `betas_reduce`.
    pub fn alpha_ids(&self) -> Vec<ParamId> {
        let mut ids = vec![self.alphas_normal.id, self.alphas_reduce.id];
        for b in [&self.betas_normal, &self.betas_reduce]
            .into_iter()
            .flatten()
        {
            ids.push(b.id);
        }
        ids
    }

    /// The regulariser's value at the current α (see [`ArchRegularizer`]).
    pub fn regularization(&self) -> Option<Tensor<B, 1>> {
        self.regularizer
            .loss(&[self.alphas_normal.val(), self.alphas_reduce.val()])
    }

    /// Number of trainable weights (α, β, DrNAS's op masks and BN running statistics
    /// excluded).
    pub fn num_weights(&self) -> usize {
        let mut exclude = self.alpha_ids();
        for m in [&self.op_mask_normal, &self.op_mask_reduce]
            .into_iter()
            .flatten()
        {
            exclude.push(m.id);
        }
        darts_ops::trainable_params(self, &exclude)
    }
}

impl<B: Backend, R: Relaxation> SearchNetwork<B, darts_ops::DartsOp<B>, R> {
    /// DrNAS's step between two stages of its progressive search (reference
    /// `DARTS-space/train_search.py`, `model_search.py: pruning, wider`, `utils.py: prune`):
    ///
    /// 1. **Prune** each edge to its `keep` strongest candidates by α (candidates already
    ///    pruned rank last): the op mask keeps them, their α keep their values, every other α
    ///    becomes 0 (`prune(..., reset=False)`).
    /// 2. **Widen** every candidate from `C/K` to `C/partial` channels by replicating channels
    ///    ([`darts_ops::wider`]), `draw` choosing which.
    ///
    /// Returns the network and the growth of every parameter (to grow the optimiser's state the
    /// same way, [`darts_bilevel::Sgd::grow`]).
    pub fn prune_and_widen(
        mut self,
        keep: usize,
        partial: usize,
        draw: &mut darts_ops::wider::Draw<'_>,
    ) -> (Self, Vec<darts_ops::wider::Growth>) {
        let device = self.alphas_normal.val().device();
        for reduce in [false, true] {
            let (alpha, mask) = if reduce {
                (&mut self.alphas_reduce, &mut self.op_mask_reduce)
            } else {
                (&mut self.alphas_normal, &mut self.op_mask_normal)
            };
            let a = alpha.val();
            let [edges, ops] = a.dims();
            let keep = keep.min(ops);
            if keep == ops && mask.is_none() {
                continue;
            }
            let values = darts_ops::to_f64s(&a);
            let old = mask.as_ref().map(|m| darts_ops::to_f64s(&m.val()));
            let mut new_alpha = vec![0.0; edges * ops];
            let mut new_mask = vec![0.0; edges * ops];
            for e in 0..edges {
                let mut order: Vec<usize> = (0..ops).collect();
                let score = |k: usize| {
                    let pruned = old.as_ref().is_some_and(|m| m[e * ops + k] == 0.0);
                    values[e * ops + k] - if pruned { 1e6 } else { 0.0 }
                };
                // Strongest first; ties keep the lower index (a stable sort).
                order.sort_by(|&x, &y| {
                    score(y)
                        .partial_cmp(&score(x))
                        .unwrap_or(std::cmp::Ordering::Equal)
                });
                for &k in order.iter().take(keep) {
                    new_alpha[e * ops + k] = values[e * ops + k];
                    new_mask[e * ops + k] = 1.0;
                }
            }
            let like = |v: Vec<f64>| {
                Tensor::<B, 2>::from_data(
                    burn::tensor::TensorData::new(v, [edges, ops]),
                    (&device, a.dtype()),
                )
            };
            let (id, old_alpha, mapper) = alpha.clone().consume();
            let mut t = like(new_alpha);
            if old_alpha.is_require_grad() {
                t = t.require_grad();
            }
            *alpha = Param::from_mapped_value(id, t, mapper);
            let mask_id = mask.as_ref().map_or_else(ParamId::new, |m| m.id);
            *mask = Some(Param::initialized(mask_id, like(new_mask)));
        }
        let mut widening = darts_ops::wider::Widening::default();
        let cells = std::mem::take(&mut self.cells);
        self.cells = cells
            .into_iter()
            .map(|mut cell| {
                let c = cell.preprocess1.conv.weight.dims()[0];
                let inner = c / partial.max(1);
                cell.edges = std::mem::take(&mut cell.edges)
                    .into_iter()
                    .map(|mut edge| {
                        edge.ops = std::mem::take(&mut edge.ops)
                            .into_iter()
                            .map(|op| widening.op(op, inner, draw))
                            .collect();
                        edge.partial = partial.max(1);
                        edge
                    })
                    .collect();
                cell
            })
            .collect();
        (self, widening.growths)
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
        batch.output(self.forward(batch.images.clone()), self.regularization())
    }

    fn arch_param_ids(&self) -> Vec<ParamId> {
        self.alpha_ids()
    }

    /// `relaxation(α)` of the normal and the reduction cells (SDARTS perturbs these).
    fn op_weights(&self) -> Vec<Tensor<B::InnerBackend, 2>> {
        vec![
            self.relaxation.weights(self.alphas_normal.val()).inner(),
            self.relaxation.weights(self.alphas_reduce.val()).inner(),
        ]
    }

    /// The cross-entropy with the given op weights (the reference SDARTS weight step's
    /// `model(input, updateType='weight')`).
    fn forward_with_op_weights(&self, batch: &ImageBatch<B>, w: &[Tensor<B, 2>]) -> BatchOutput<B> {
        let logits = self.forward_weighted(
            batch.images.clone(),
            [(w[0].clone(), None), (w[1].clone(), None)],
        );
        batch.output(logits, None)
    }
}
