//! The derived (evaluation) network built from a genotype (reference `cnn/model.py`,
//! `NetworkCIFAR`).

use crate::cnn::batch::{correct, cross_entropy, ImageBatch};
use crate::cnn::supernet::Preprocess;
use crate::CellError;
use crate::CellShape;
use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::module::avg_pool2d;
use burn::tensor::{Distribution, Tensor, TensorCreationOptions, TensorData};
use darts_genotype::{Gene, Genotype};
use darts_mixed_op::stochastic::keyed_rng;
use darts_mixed_op::{CandidateOp, DartsSpace, EdgeSpec, OpSet};
use darts_ops::cnn::ReLUConvBN;
use darts_ops::conv::Conv2dConfig;
use darts_ops::kernels::relu;
use darts_ops::{BatchNorm2d, Conv2d, DartsOp, Linear};
use rand::Rng;

/// Per-sample drop path: zero whole samples with probability `p`, rescale the rest by
/// `1 / (1 − p)`. The mask comes from the backend's generator ([`DropPath::Random`]).
pub fn drop_path<B: Backend>(x: Tensor<B, 4>, p: f64) -> Tensor<B, 4> {
    if p <= 0.0 {
        return x;
    }
    let keep = 1.0 - p;
    let dims = x.dims();
    let n = dims[0];
    let rest = dims[1] * dims[2] * dims[3];
    // The mask takes the input's dtype and device (an f64 model must not get an f32 mask).
    let options = TensorCreationOptions::new(x.device()).with_dtype(x.dtype());
    let mask = Tensor::<B, 2>::random([n, 1], Distribution::Bernoulli(keep), options) / keep;
    (x.reshape([n, rest]) * mask).reshape(dims)
}

/// Where drop path's per-sample decisions come from ([`EvalNetwork::forward`]). An `f64`
/// converts to [`DropPath::Random`] (or [`DropPath::Off`] when it is 0).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum DropPath {
    /// No path is dropped.
    #[default]
    Off,
    /// Probability `p`, from the backend's generator (`Tensor::random`, seeded by `B::seed`),
    /// as the reference's `bernoulli_` does: a new draw per site and sample.
    Random(f64),
    /// Probability `p`, drawn on the host: sample `i` of the batch takes its decisions for all
    /// sites, in forward order, from [`keyed_rng`]`(seed, epoch, step, first_row + i)`. A sample
    /// is dropped on the same paths whichever peer of a data-parallel group holds it (each passes
    /// its shard's first row of the global batch) and whether or not the run was resumed.
    Keyed {
        /// Drop probability.
        p: f64,
        /// What the decisions are keyed by.
        key: DropKey,
    },
}

/// The key of [`DropPath::Keyed`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DropKey {
    /// Run seed.
    pub seed: u64,
    /// Epoch.
    pub epoch: u64,
    /// Step in the epoch.
    pub step: u64,
    /// Index of this batch's first sample in the global batch (its shard's offset).
    pub first_row: u64,
}

impl From<f64> for DropPath {
    fn from(p: f64) -> Self {
        if p > 0.0 {
            DropPath::Random(p)
        } else {
            DropPath::Off
        }
    }
}

impl DropPath {
    /// [`DropPath::Keyed`], or [`DropPath::Off`] when `p` is 0.
    pub fn keyed(p: f64, key: DropKey) -> Self {
        if p > 0.0 {
            DropPath::Keyed { p, key }
        } else {
            DropPath::Off
        }
    }

    /// The drop probability (0 when off).
    pub fn prob(&self) -> f64 {
        match *self {
            DropPath::Off => 0.0,
            DropPath::Random(p) | DropPath::Keyed { p, .. } => p,
        }
    }

    /// The host masks of [`DropPath::Keyed`] for `n` samples and `sites` sites, row-major
    /// `[n, sites]`: `1 / (1 − p)` where the path is kept, 0 where it is dropped.
    pub fn keyed_masks(p: f64, key: &DropKey, n: usize, sites: usize) -> Vec<f64> {
        let keep = 1.0 - p;
        let mut out = Vec::with_capacity(n * sites);
        for i in 0..n as u64 {
            let mut rng = keyed_rng(&[key.seed, key.epoch, key.step, key.first_row + i]);
            for _ in 0..sites {
                let u: f64 = rng.random();
                out.push(if u < keep { 1.0 / keep } else { 0.0 });
            }
        }
        out
    }
}

/// Drop path during one forward: the sites take the mask columns in order.
enum SiteDrop<B: Backend> {
    Off,
    Random(f64),
    Masks { masks: Tensor<B, 2>, next: usize },
}

impl<B: Backend> SiteDrop<B> {
    fn apply(&mut self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match self {
            SiteDrop::Off => x,
            SiteDrop::Random(p) => drop_path(x, *p),
            SiteDrop::Masks { masks, next } => {
                let dims = x.dims();
                let n = dims[0];
                let m = masks.clone().narrow(1, *next, 1);
                *next += 1;
                (x.reshape([n, dims[1] * dims[2] * dims[3]]) * m).reshape(dims)
            }
        }
    }

    fn active(&self) -> bool {
        !matches!(self, SiteDrop::Off)
    }
}

/// A cell of the derived network: two ops per node, inputs chosen by the genotype. Generic over
/// the op type (the DARTS primitives by default), see [`EvalNetworkConfig::init_with`].
#[derive(Module, Debug)]
pub struct EvalCell<B: Backend, O: Module<B> = DartsOp<B>> {
    /// Preprocessing of `s0`.
    pub preprocess0: Preprocess<B>,
    /// Preprocessing of `s1`.
    pub preprocess1: ReLUConvBN<B>,
    /// Ops, in gene order (two per node in the DARTS layout).
    pub ops: Vec<O>,
    /// Input state of each op.
    pub indices: Vec<usize>,
    /// The state each op feeds (non-decreasing).
    pub targets: Vec<usize>,
    /// FairDARTS's cells (genes that name their nodes, reference `DCOCell`): drop path applies
    /// to each node's sum rather than to each non-identity op.
    pub drop_per_node: bool,
    /// States concatenated into the output.
    pub concat: Vec<usize>,
    /// Whether this is a reduction cell.
    pub reduction: bool,
}

impl<B: Backend, O: CandidateOp<B, 4>> EvalCell<B, O> {
    /// Build from a cell's genes, each op built by `space` from its name.
    pub fn new<S: OpSet<B, 4, Op = O>>(
        space: &S,
        genes: &[Gene],
        concat: &[usize],
        shape: CellShape,
        device: &B::Device,
    ) -> Result<Self, CellError> {
        let CellShape {
            c_prev_prev,
            c_prev,
            c,
            reduction,
            reduction_prev,
        } = shape;
        if genes.is_empty() {
            return Err(CellError::Config(
                "a cell of the genotype has no node (a threshold derivation kept none of its edges); it cannot be built".into(),
            ));
        }
        let named = darts_genotype::names_nodes(genes);
        let all_targets = darts_genotype::gene_targets(genes);
        // Named cells (FairDARTS): a node is present when a gene feeds it from a present state;
        // genes reading an absent node are dropped (the reference's `DCOCell` skips them at
        // run time), and so are absent nodes from the concat.
        let mut present: Vec<usize> = vec![0, 1];
        let mut kept = Vec::with_capacity(genes.len());
        for (g, &to) in genes.iter().zip(&all_targets) {
            if !named || present.contains(&g.input) {
                kept.push((g, to));
                if !present.contains(&to) {
                    present.push(to);
                }
            }
        }
        let concat: Vec<usize> = concat
            .iter()
            .copied()
            .filter(|c| !named || present.contains(c))
            .collect();
        if concat.is_empty() {
            return Err(CellError::Config(
                "a cell of the genotype has no node reachable from its inputs".into(),
            ));
        }
        let mut ops = Vec::with_capacity(kept.len());
        for (g, _) in &kept {
            let stride = if reduction && g.input < 2 { 2 } else { 1 };
            let k = crate::op_index(space, &g.op)?;
            ops.push(space.build(
                k,
                &EdgeSpec {
                    channels: c,
                    stride,
                },
                device,
            ));
        }
        Ok(Self {
            preprocess0: Preprocess::new(c_prev_prev, c, reduction_prev, true, device),
            preprocess1: ReLUConvBN::new(c_prev, c, 1, 1, 0, true, device),
            ops,
            indices: kept.iter().map(|(g, _)| g.input).collect(),
            targets: kept.iter().map(|(_, to)| *to).collect(),
            drop_per_node: named,
            concat,
            reduction,
        })
    }

    /// Output channels (`len(concat) · C`) for `c` channels per node.
    pub fn multiplier(&self) -> usize {
        self.concat.len()
    }

    /// Apply; `drop_prob > 0` applies drop path to every non-identity op output (the backend's
    /// generator, [`DropPath::Random`]).
    pub fn forward(&self, s0: Tensor<B, 4>, s1: Tensor<B, 4>, drop_prob: f64) -> Tensor<B, 4> {
        let mut drop = if drop_prob > 0.0 {
            SiteDrop::Random(drop_prob)
        } else {
            SiteDrop::Off
        };
        self.forward_sites(s0, s1, &mut drop)
    }

    /// The drop-path sites of this cell: its non-identity ops, or its nodes for FairDARTS's
    /// named cells.
    pub fn drop_sites(&self) -> usize {
        if self.drop_per_node {
            let mut t = self.targets.clone();
            t.dedup();
            t.len()
        } else {
            self.ops.iter().filter(|o| !o.is_identity()).count()
        }
    }

    fn forward_sites(
        &self,
        s0: Tensor<B, 4>,
        s1: Tensor<B, 4>,
        drop: &mut SiteDrop<B>,
    ) -> Tensor<B, 4> {
        let last = self.targets.iter().copied().max().unwrap_or(1);
        let mut states: Vec<Option<Tensor<B, 4>>> = vec![None; last + 1];
        states[0] = Some(self.preprocess0.forward(s0));
        states[1] = Some(self.preprocess1.forward(s1));
        let mut k = 0;
        while k < self.ops.len() {
            let to = self.targets[k];
            let mut s: Option<Tensor<B, 4>> = None;
            while k < self.ops.len() && self.targets[k] == to {
                let op = &self.ops[k];
                let x = states[self.indices[k]]
                    .clone()
                    .expect("inputs precede their node");
                let mut h = op.forward(x);
                if drop.active() && !self.drop_per_node && !op.is_identity() {
                    h = drop.apply(h);
                }
                s = Some(match s {
                    Some(acc) => acc + h,
                    None => h,
                });
                k += 1;
            }
            let mut s = s.expect("a node has an op");
            if drop.active() && self.drop_per_node {
                s = drop.apply(s);
            }
            states[to] = Some(s);
        }
        Tensor::cat(
            self.concat
                .iter()
                .map(|&i| states[i].clone().expect("concat lists present states"))
                .collect(),
            1,
        )
    }
}

/// The CIFAR auxiliary head (input 8×8): ReLU, 5×5 avg pool stride 3, 1×1 conv → 128, BN,
/// ReLU, 2×2 conv → 768, BN, ReLU, linear.
#[derive(Module, Debug)]
pub struct AuxiliaryHead<B: Backend> {
    /// 1×1 conv.
    pub conv1: Conv2d<B>,
    /// BN after conv1.
    pub bn1: BatchNorm2d<B>,
    /// 2×2 conv.
    pub conv2: Conv2d<B>,
    /// BN after conv2.
    pub bn2: BatchNorm2d<B>,
    /// Classifier.
    pub classifier: Linear<B>,
}

impl<B: Backend> AuxiliaryHead<B> {
    /// A new head on `c` channels.
    pub fn new(c: usize, num_classes: usize, device: &B::Device) -> Self {
        Self {
            conv1: Conv2dConfig::new(c, 128, 1, 1, 0).init(device),
            bn1: BatchNorm2d::new(128, true, device),
            conv2: Conv2dConfig::new(128, 768, 2, 1, 0).init(device),
            bn2: BatchNorm2d::new(768, true, device),
            classifier: Linear::new(768, num_classes, device),
        }
    }

    /// Apply to the 8×8 feature map.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let x = avg_pool2d(relu(x), [5, 5], [3, 3], [0, 0], false, false);
        let x = relu(self.bn1.forward(self.conv1.forward(x)));
        let x = relu(self.bn2.forward(self.conv2.forward(x)));
        let [n, c, h, w] = x.dims();
        self.classifier.forward(x.reshape([n, c * h * w]))
    }
}

/// Configuration of the derived network (reference: C = 36, 20 layers).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EvalNetworkConfig {
    /// Initial channels.
    pub channels: usize,
    /// Classes.
    pub num_classes: usize,
    /// Cells.
    pub layers: usize,
    /// Add the auxiliary head after cell `2·layers/3`.
    pub auxiliary: bool,
    /// Stem multiplier.
    pub stem_multiplier: usize,
}

impl Default for EvalNetworkConfig {
    fn default() -> Self {
        Self {
            channels: 36,
            num_classes: 10,
            layers: 20,
            auxiliary: false,
            stem_multiplier: 3,
        }
    }
}

impl EvalNetworkConfig {
    /// Build the network for `genotype` from the DARTS primitives (all of
    /// [`darts_ops::Primitive::ALL`], affine BN, no BN after pools: [`DartsSpace::derived`]).
    pub fn init<B: Backend>(
        &self,
        genotype: &Genotype,
        device: &B::Device,
    ) -> Result<EvalNetwork<B>, CellError> {
        self.init_with(genotype, &DartsSpace::derived(), device)
    }

    /// Build the network for `genotype`, each op built by `space` from its name (the op set of a
    /// custom space, configured for evaluation, e.g. with affine BN).
    pub fn init_with<B: Backend, S: OpSet<B, 4>>(
        &self,
        genotype: &Genotype,
        space: &S,
        device: &B::Device,
    ) -> Result<EvalNetwork<B, S::Op>, CellError> {
        genotype.validate()?;
        if self.layers < 3 {
            return Err(CellError::Config(format!(
                "layers = {} (need at least 3: two reductions at layers/3 and 2·layers/3)",
                self.layers
            )));
        }
        let c_stem = self.stem_multiplier * self.channels;
        let (mut c_pp, mut c_p, mut c_cur) = (c_stem, c_stem, self.channels);
        let mut cells = Vec::with_capacity(self.layers);
        let mut reduction_prev = false;
        let mut aux = None;
        let aux_at = 2 * self.layers / 3;
        for i in 0..self.layers {
            let reduction = i == self.layers / 3 || i == aux_at;
            if reduction {
                c_cur *= 2;
            }
            let (genes, concat) = if reduction {
                (&genotype.reduce, &genotype.reduce_concat)
            } else {
                (&genotype.normal, &genotype.normal_concat)
            };
            let cell = EvalCell::new(
                space,
                genes,
                concat,
                CellShape {
                    c_prev_prev: c_pp,
                    c_prev: c_p,
                    c: c_cur,
                    reduction,
                    reduction_prev,
                },
                device,
            )?;
            reduction_prev = reduction;
            c_pp = c_p;
            c_p = cell.multiplier() * c_cur;
            cells.push(cell);
            if i == aux_at && self.auxiliary {
                aux = Some(AuxiliaryHead::new(c_p, self.num_classes, device));
            }
        }
        Ok(EvalNetwork {
            stem_conv: Conv2dConfig::new(3, c_stem, 3, 1, 1).init(device),
            stem_bn: BatchNorm2d::new(c_stem, true, device),
            cells,
            auxiliary_head: aux,
            aux_at,
            classifier: Linear::new(c_p, self.num_classes, device),
        })
    }
}

/// The derived network (DARTS primitives by default; any op set through
/// [`EvalNetworkConfig::init_with`]).
#[derive(Module, Debug)]
pub struct EvalNetwork<B: Backend, O: Module<B> = DartsOp<B>> {
    /// Stem conv.
    pub stem_conv: Conv2d<B>,
    /// Stem BN.
    pub stem_bn: BatchNorm2d<B>,
    /// Cells.
    pub cells: Vec<EvalCell<B, O>>,
    /// Auxiliary head (training only).
    pub auxiliary_head: Option<AuxiliaryHead<B>>,
    /// Index of the cell the auxiliary head reads.
    pub aux_at: usize,
    /// Classifier.
    pub classifier: Linear<B>,
}

/// Output of [`EvalNetwork::forward`].
#[derive(Debug, Clone)]
pub struct EvalOutput<B: Backend> {
    /// Logits.
    pub logits: Tensor<B, 2>,
    /// Auxiliary logits (when the head exists, in training mode).
    pub aux_logits: Option<Tensor<B, 2>>,
}

impl<B: Backend, O: CandidateOp<B, 4>> EvalNetwork<B, O> {
    /// Forward. Training mode ([`darts_ops::mode`]: an autodiff backend) enables drop path
    /// (`drop`: a probability for the backend's generator, or a [`DropPath`]) and the auxiliary
    /// head; evaluation mode (`model.valid()`) has neither.
    pub fn forward(&self, x: Tensor<B, 4>, drop: impl Into<DropPath>) -> EvalOutput<B> {
        let training = darts_ops::mode::is_training::<B>(&x.device());
        let n = x.dims()[0];
        let (device, dtype) = (x.device(), x.dtype());
        let mut drop = match (training, drop.into()) {
            (false, _) | (_, DropPath::Off) => SiteDrop::Off,
            (true, DropPath::Random(p)) => SiteDrop::Random(p),
            (true, DropPath::Keyed { p, key }) => {
                let sites = self.drop_sites();
                let m = DropPath::keyed_masks(p, &key, n, sites);
                SiteDrop::Masks {
                    masks: Tensor::from_data(TensorData::new(m, [n, sites]), (&device, dtype)),
                    next: 0,
                }
            }
        };
        let s = self.stem_bn.forward(self.stem_conv.forward(x));
        let (mut s0, mut s1) = (s.clone(), s);
        let mut aux_logits = None;
        for (i, cell) in self.cells.iter().enumerate() {
            let s2 = cell.forward_sites(s0, s1.clone(), &mut drop);
            s0 = s1;
            s1 = s2;
            if i == self.aux_at && training {
                if let Some(head) = &self.auxiliary_head {
                    aux_logits = Some(head.forward(s1.clone()));
                }
            }
        }
        let [n, c, _, _] = s1.dims();
        let logits = self
            .classifier
            .forward(s1.mean_dims(&[2, 3]).reshape([n, c]));
        EvalOutput { logits, aux_logits }
    }

    /// Drop-path sites of the network, in forward order ([`EvalCell::drop_sites`]).
    pub fn drop_sites(&self) -> usize {
        self.cells.iter().map(EvalCell::drop_sites).sum()
    }

    /// Training loss `CE + aux_weight · CE_aux` and the correct count of the main head.
    pub fn loss(
        &self,
        batch: &ImageBatch<B>,
        drop: impl Into<DropPath>,
        aux_weight: f64,
    ) -> (Tensor<B, 1>, Tensor<B, 1>) {
        let out = self.forward(batch.images.clone(), drop);
        let c = correct(out.logits.clone().detach(), batch.targets.clone());
        let mut loss = cross_entropy(out.logits, batch.targets.clone());
        if let Some(aux) = out.aux_logits {
            loss = loss + cross_entropy(aux, batch.targets.clone()) * aux_weight;
        }
        (loss, c)
    }

    /// Trainable weights without the auxiliary head (the number papers report).
    pub fn num_weights(&self) -> usize {
        let total = darts_ops::trainable_params(self, &[]);
        total - self.auxiliary_weights()
    }

    /// Trainable weights of the auxiliary head (0 without one).
    pub fn auxiliary_weights(&self) -> usize {
        self.auxiliary_head
            .as_ref()
            .map_or(0, |h| darts_ops::trainable_params(h, &[]))
    }
}
