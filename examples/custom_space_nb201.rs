//! A search space that is not DARTS's, built only from the public API: the NAS-Bench-201 cell
//! (Dong & Yang, ICLR 2020) searched with the DARTS architect on CIFAR-10.
//!
//! * Cell: node 0 is the cell input; nodes 1, 2, 3 each **sum** mixed ops over all earlier nodes
//!   (6 edges); the output is node 3. Candidates: `none`, `skip_connect`, `nor_conv_1x1`,
//!   `nor_conv_3x3` (ReLU-conv-BN), `avg_pool_3x3`.
//! * Macro skeleton: 3×3 conv stem + BN, three stages of `N` cells at `C`, `2C`, `4C` channels
//!   separated by residual reduction blocks, BN + ReLU, global pooling, linear classifier.
//! * One α (`[6, 5]`) shared by every cell; the result is printed in the benchmark's
//!   architecture-string notation (`|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|…|`).
//!
//! What a user writes: an op enum implementing [`CandidateOp`], an [`OpSet`] naming and building
//! the candidates, the cell and network as Burn modules holding [`MixedOp`]s, and the
//! [`ArchModel`] impl (loss and which parameters are α). The architect, optimisers, data loader
//! and device dispatch are the library's.
//!
//! The successor methods that apply to this space reuse the library's pieces from here too
//! (`--method`): GDAS (`stochastic::gumbel_hard` and `MixedOp::forward_single`), DrNAS
//! (`stochastic::dirichlet_rsample`), β-DARTS (`ArchRegularizer`), DARTS− (an identity skip on
//! every edge, scaled by the schedule) and SDARTS (`ArchModel::op_weights` /
//! `forward_with_op_weights`, perturbed by the library's `Bilevel`); `MethodConfig::apply` sets
//! each epoch's values through the example's `MethodSupernet` impl.
//!
//! ```text
//! cargo run --example custom_space_nb201                  # quick run on the shipped sample
//! cargo run --example custom_space_nb201 -- --method gdas
//! cargo run --example custom_space_nb201 -- --select-pt 1   # DARTS-PT's op selection after
//! cargo run --release --example custom_space_nb201 -- --data /path/to/cifar-10-batches-bin \
//!     --channels 16 --cells 5 --epochs 50 --batch-size 64 --limit-images 50000
//! ```

use burn::module::AutodiffModule;
use burn::module::{Module, Param, ParamId};
use burn::tensor::activation::relu;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::module::avg_pool2d;
use burn::tensor::{Distribution, Tensor};
use clap::Parser;
use darts::bilevel::{
    ArchModel, ArchitectConfig, BatchOutput, Bilevel, CosineLr, EpochStats, Order, WeightConfig,
};
use darts::cell::batch::correct;
use darts::cell::cnn::supernet::{elu_plus_one, CellProjection, Sampling};
use darts::cell::ImageBatch;
use darts::data::cifar::{search_split, Augment, Cifar10, Loader};
use darts::device::{dispatch, BackendTask, DeviceSpec};
use darts::genotype::nb201::{Nb201Arch, NB201_OPS};
use darts::methods::{Method, MethodSupernet};
use darts::mixed_op::stochastic::{self, NoiseSource};
use darts::mixed_op::{
    ArchRegularizer, CandidateOp, EdgeSpec, MixedOp, OpSet, Relaxation, Softmax,
};
use darts::ops::cnn::{Identity, Pool, ReLUConvBN, Zero};
use darts::ops::conv::Conv2dConfig;
use darts::ops::{BatchNorm2d, Conv2d, Linear};
use darts::select::{perturbation_select, tune_epochs, PtCell, PtDecision, PtTarget};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The five NAS-Bench-201 candidates as one Burn module.
#[derive(Module, Debug)]
pub enum Nb201Op<B: Backend> {
    /// `none`.
    None(Zero),
    /// `skip_connect`.
    Skip(Identity),
    /// `nor_conv_1x1` / `nor_conv_3x3`.
    Conv(ReLUConvBN<B>),
    /// `avg_pool_3x3`.
    AvgPool(Pool<B>),
}

impl<B: Backend> CandidateOp<B, 4> for Nb201Op<B> {
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match self {
            Nb201Op::None(z) => z.forward(x),
            Nb201Op::Skip(_) => x,
            Nb201Op::Conv(c) => c.forward(x),
            Nb201Op::AvgPool(p) => p.forward(x),
        }
    }
    fn is_zero(&self) -> bool {
        matches!(self, Nb201Op::None(_))
    }
    fn is_identity(&self) -> bool {
        matches!(self, Nb201Op::Skip(_))
    }
}

/// The NAS-Bench-201 op set (every edge keeps its resolution: reductions are residual blocks).
#[derive(Clone, Debug)]
pub struct Nb201Space {
    /// Affine BN in the convolutions (the benchmark's DARTS baseline searches without).
    pub affine: bool,
}

impl<B: Backend> OpSet<B, 4> for Nb201Space {
    type Op = Nb201Op<B>;

    fn names(&self) -> Vec<String> {
        NB201_OPS.iter().map(|s| s.to_string()).collect()
    }

    fn none_index(&self) -> Option<usize> {
        Some(0)
    }

    fn build(&self, index: usize, edge: &EdgeSpec, device: &B::Device) -> Nb201Op<B> {
        let c = edge.channels;
        match index {
            0 => Nb201Op::None(Zero { stride: 1 }),
            1 => Nb201Op::Skip(Identity),
            2 => Nb201Op::Conv(ReLUConvBN::new(c, c, 1, 1, 0, self.affine, device)),
            3 => Nb201Op::Conv(ReLUConvBN::new(c, c, 3, 1, 1, self.affine, device)),
            _ => Nb201Op::AvgPool(Pool {
                max: false,
                stride: 1,
                bn: None,
            }),
        }
    }
}

/// A searchable NAS-Bench-201 cell: node `i` = Σ_{j<i} mixed_op_{i,j}(node j).
#[derive(Module, Debug)]
pub struct Nb201Cell<B: Backend> {
    /// Mixed ops, node by node, input by input.
    pub edges: Vec<MixedOp<B, Nb201Op<B>>>,
    /// Nodes after the input (3).
    pub nodes: usize,
}

impl<B: Backend> Nb201Cell<B> {
    /// A cell of `channels` channels with `nodes` nodes after the input.
    pub fn new(space: &Nb201Space, channels: usize, nodes: usize, device: &B::Device) -> Self {
        let edge = EdgeSpec {
            channels,
            stride: 1,
        };
        let n_edges = nodes * (nodes + 1) / 2;
        Self {
            edges: (0..n_edges)
                .map(|_| MixedOp::new(space, &edge, device))
                .collect(),
            nodes,
        }
    }

    /// Apply with one weight row per edge; with `index` (GDAS) each edge computes only its
    /// sampled candidate; `skip` (DARTS−) adds `skip · input` to every edge.
    pub fn forward(
        &self,
        x: Tensor<B, 4>,
        w: &[Tensor<B, 1>],
        index: Option<&[usize]>,
        skip: f64,
    ) -> Tensor<B, 4> {
        let mut states = vec![x];
        let mut e = 0;
        for i in 1..=self.nodes {
            let mut sum: Option<Tensor<B, 4>> = None;
            for state in &states[..i] {
                let mut y = match index {
                    Some(ix) => self.edges[e].forward_single(state.clone(), w[e].clone(), ix[e]),
                    None => self.edges[e].forward(state.clone(), w[e].clone()),
                };
                if skip != 0.0 {
                    y = y + state.clone() * skip;
                }
                sum = Some(match sum {
                    Some(s) => s + y,
                    None => y,
                });
                e += 1;
            }
            states.push(sum.expect("node has inputs"));
        }
        states.pop().expect("output node")
    }
}

/// The benchmark's residual reduction block: two 3×3 ReLU-conv-BN (the first with stride 2) plus
/// a 2×2 average pool + 1×1 conv shortcut.
#[derive(Module, Debug)]
pub struct ResReduce<B: Backend> {
    conv_a: ReLUConvBN<B>,
    conv_b: ReLUConvBN<B>,
    shortcut: Conv2d<B>,
}

impl<B: Backend> ResReduce<B> {
    fn new(c_in: usize, c_out: usize, device: &B::Device) -> Self {
        Self {
            conv_a: ReLUConvBN::new(c_in, c_out, 3, 2, 1, true, device),
            conv_b: ReLUConvBN::new(c_out, c_out, 3, 1, 1, true, device),
            shortcut: Conv2dConfig::new(c_in, c_out, 1, 1, 0).init(device),
        }
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let short =
            self.shortcut
                .forward(avg_pool2d(x.clone(), [2, 2], [2, 2], [0, 0], true, false));
        short + self.conv_b.forward(self.conv_a.forward(x))
    }
}

/// A stage element.
// A handful of these exist per network; boxing the larger variant would gain nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Stage<B: Backend> {
    /// A searchable cell.
    Cell(Nb201Cell<B>),
    /// A residual reduction block.
    Reduce(ResReduce<B>),
}

/// The NAS-Bench-201 supernet.
#[derive(Module, Debug)]
pub struct Nb201Net<B: Backend> {
    stem: Conv2d<B>,
    stem_bn: BatchNorm2d<B>,
    stages: Vec<Stage<B>>,
    last_bn: BatchNorm2d<B>,
    classifier: Linear<B>,
    /// α, `[6, 5]`, shared by every cell.
    pub alphas: Param<Tensor<B, 2>>,
    /// Sampled op weights (GDAS, DrNAS) or the softmax.
    #[module(skip)]
    pub sampling: Sampling,
    /// Random numbers of the samples.
    #[module(skip)]
    pub noise: NoiseSource,
    /// Regularisers of the architecture objective (β-DARTS).
    #[module(skip)]
    pub regularizer: ArchRegularizer,
    /// DARTS−'s skip scale (0: no skip).
    #[module(skip)]
    pub skip: f64,
    /// DARTS-PT's decisions (op decisions only: the benchmark's cell keeps every edge).
    #[module(skip)]
    pub projection: CellProjection,
}

/// The edges of nodes 1, 2, 3 of the NAS-Bench-201 cell (node `i` reads nodes `0..i`).
pub fn nb201_node_edges() -> Vec<std::ops::Range<usize>> {
    vec![0..1, 1..3, 3..6]
}

impl<B: Backend> Nb201Net<B> {
    /// `channels` = C of the first stage, `cells` = N per stage.
    pub fn new(channels: usize, cells: usize, classes: usize, device: &B::Device) -> Self {
        let space = Nb201Space { affine: false };
        let mut stages = Vec::new();
        let mut c = channels;
        for stage in 0..3 {
            if stage > 0 {
                stages.push(Stage::Reduce(ResReduce::new(c, 2 * c, device)));
                c *= 2;
            }
            for _ in 0..cells {
                stages.push(Stage::Cell(Nb201Cell::new(&space, c, 3, device)));
            }
        }
        Self {
            stem: Conv2dConfig::new(3, channels, 3, 1, 1).init(device),
            stem_bn: BatchNorm2d::new(channels, true, device),
            stages,
            last_bn: BatchNorm2d::new(c, true, device),
            classifier: Linear::new(c, classes, device),
            alphas: Param::from_tensor(
                Tensor::random([6, NB201_OPS.len()], Distribution::Normal(0.0, 1.0), device) * 1e-3,
            ),
            sampling: Sampling::None,
            noise: NoiseSource::default(),
            regularizer: ArchRegularizer::default(),
            skip: 0.0,
            projection: CellProjection::default(),
        }
    }

    /// Logits, with op weights from α (softmax, or a sample).
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let alpha = self.alphas.val();
        let (w, index) = match self.sampling {
            Sampling::None => (Softmax.weights(alpha), None),
            Sampling::Gumbel { tau } => {
                let (w, index) = stochastic::gumbel_hard(alpha, tau, &self.noise);
                (w, Some(index))
            }
            Sampling::Dirichlet => (
                stochastic::dirichlet_rsample(elu_plus_one(alpha), &self.noise),
                None,
            ),
        };
        self.forward_weights(x, w, index)
    }

    /// Logits with the op weights `w` (`[6, 5]`) given.
    pub fn forward_weights(
        &self,
        x: Tensor<B, 4>,
        w: Tensor<B, 2>,
        index: Option<Vec<usize>>,
    ) -> Tensor<B, 2> {
        let w = self.projection.apply(w, &nb201_node_edges());
        let [edges, ops] = w.dims();
        let rows: Vec<Tensor<B, 1>> = (0..edges)
            .map(|e| w.clone().slice([e..e + 1, 0..ops]).reshape([ops]))
            .collect();
        let mut h = self.stem_bn.forward(self.stem.forward(x));
        for s in &self.stages {
            h = match s {
                Stage::Cell(c) => c.forward(h, &rows, index.as_deref(), self.skip),
                Stage::Reduce(r) => r.forward(h),
            };
        }
        let h = relu(self.last_bn.forward(h));
        let [n, c, _, _] = h.dims();
        self.classifier
            .forward(h.mean_dims(&[2, 3]).reshape([n, c]))
    }

    /// The derived cell in NAS-Bench-201 notation (argmax per edge, DARTS-PT's decisions
    /// applied).
    pub fn arch(&self) -> Nb201Arch {
        let w = self
            .projection
            .apply(Softmax.weights(self.alphas.val()), &nb201_node_edges());
        let [_, ops] = w.dims();
        let v: Vec<f32> = w.into_data().convert::<f32>().to_vec().expect("f32");
        let rows: Vec<Vec<f32>> = v.chunks(ops).map(|c| c.to_vec()).collect();
        Nb201Arch::from_weights(&rows, &NB201_OPS).expect("6 edges of 5 ops")
    }
}

impl<B: Backend> MethodSupernet for Nb201Net<B> {
    fn set_aux_scale(&mut self, scale: f64) {
        self.skip = scale;
    }
    fn set_regularizer(&mut self, regularizer: ArchRegularizer) {
        self.regularizer = regularizer;
    }
    fn set_sampling(&mut self, sampling: Sampling) {
        self.sampling = sampling;
    }
    fn noise_mut(&mut self) -> &mut NoiseSource {
        &mut self.noise
    }
}

impl<B: AutodiffBackend> ArchModel<B> for Nb201Net<B> {
    type Batch = ImageBatch<B>;

    fn forward_batch(&self, b: &ImageBatch<B>) -> BatchOutput<B> {
        let reg = self.regularizer.loss(&[self.alphas.val()]);
        b.output(self.forward(b.images.clone()), reg)
    }

    fn arch_param_ids(&self) -> Vec<ParamId> {
        vec![self.alphas.id]
    }

    fn op_weights(&self) -> Vec<Tensor<B::InnerBackend, 2>> {
        vec![Softmax.weights(self.alphas.val()).inner()]
    }

    fn forward_with_op_weights(&self, b: &ImageBatch<B>, w: &[Tensor<B, 2>]) -> BatchOutput<B> {
        b.output(
            self.forward_weights(b.images.clone(), w[0].clone(), None),
            None,
        )
    }
}

/// Settings of a NAS-Bench-201 search.
#[derive(Clone, Debug)]
pub struct Nb201Search {
    /// CIFAR-10 directory.
    pub data: PathBuf,
    /// Use the first N training images (half train the weights, half drive α).
    pub limit_images: usize,
    /// C of the first stage.
    pub channels: usize,
    /// Cells per stage.
    pub cells: usize,
    /// Batch size.
    pub batch_size: usize,
    /// Epochs.
    pub epochs: usize,
    /// Stop each epoch after this many steps.
    pub max_steps: Option<usize>,
    /// First or second order.
    pub order: Order,
    /// Seed.
    pub seed: u64,
    /// Search method: DARTS, or one of the successors that apply to this space (GDAS, DARTS−,
    /// SDARTS-RS/ADV, β-DARTS, DrNAS).
    pub method: Method,
    /// DARTS-PT's selection after the search, with this many fine-tuning epochs between
    /// decisions (`None`: the argmax of α).
    pub select_pt: Option<usize>,
}

/// Why a method does not run on this space.
#[derive(Debug)]
pub struct NotOnNb201(pub Method);

impl std::fmt::Display for NotOnNb201 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} does not apply to the NAS-Bench-201 space here (supported: darts, gdas, darts-minus, sdarts-rs, sdarts-adv, beta-darts, drnas)",
            self.0
        )
    }
}

/// Run the search; `on_epoch` sees every epoch's statistics and architecture.
pub fn search<B: AutodiffBackend>(
    s: &Nb201Search,
    device: &B::Device,
    on_epoch: impl FnMut(usize, &EpochStats, &Nb201Arch),
) -> Result<Nb201Arch, Box<dyn std::error::Error>> {
    Ok(search_with_decisions::<B>(s, device, on_epoch)?.0)
}

/// DARTS-PT's view of the NAS-Bench-201 search: accuracy on the validation half in training
/// mode, fine-tuning epochs of the bilevel steps.
struct PtNb201<'a, B: AutodiffBackend> {
    bilevel: &'a mut Bilevel<B, Nb201Net<B>>,
    train: &'a Loader,
    val: &'a Loader,
    eval: &'a Loader,
    steps: usize,
    lr: CosineLr,
    device: &'a B::Device,
}

impl<B: AutodiffBackend> PtTarget for PtNb201<'_, B> {
    type Error = std::convert::Infallible;

    fn accuracy(&mut self, p: &[CellProjection]) -> f64 {
        let mut net = self.bilevel.model.clone();
        net.projection = p[0].clone();
        let net = net.valid();
        let (mut ok, mut n) = (0.0, 0.0);
        darts::ops::mode::train_mode(|| {
            for h in self.eval.epoch(0, 0) {
                let b = ImageBatch::<B::InnerBackend>::from_host(
                    h.images.clone(),
                    h.dims(),
                    &h.labels,
                    self.device,
                );
                let c = correct(net.forward(b.images), b.targets);
                ok += c
                    .into_data()
                    .convert::<f64>()
                    .to_vec::<f64>()
                    .expect("count")[0];
                n += h.len() as f64;
            }
        });
        ok / n.max(1.0)
    }

    fn tune(&mut self, epoch: usize, _: usize, p: &[CellProjection]) -> Result<(), Self::Error> {
        self.bilevel.model.projection = p[0].clone();
        let to_batch = |h: darts::data::cifar::HostBatch| {
            ImageBatch::<B>::from_host(h.images.clone(), h.dims(), &h.labels, self.device)
        };
        let key = (1 << 30) + epoch;
        let mut t = self.train.epoch(key, 0).take(self.steps).map(to_batch);
        let mut v = (0..)
            .flat_map(|k| self.val.epoch(key * 1000 + k, 0))
            .map(to_batch);
        let lr = self.lr.at(epoch);
        self.bilevel
            .run_epoch_with(key, |_, _| Some((t.next()?, v.next()?, lr)), |_| {});
        Ok(())
    }
}

/// [`search`], also returning DARTS-PT's decisions when [`Nb201Search::select_pt`] is set.
pub fn search_with_decisions<B: AutodiffBackend>(
    s: &Nb201Search,
    device: &B::Device,
    mut on_epoch: impl FnMut(usize, &EpochStats, &Nb201Arch),
) -> Result<(Nb201Arch, Vec<PtDecision>), Box<dyn std::error::Error>> {
    if matches!(s.method, Method::PcDarts | Method::FairDarts) {
        return Err(NotOnNb201(s.method).to_string().into());
    }
    let method = s.method.config();
    let mut data = Cifar10::load_train(&s.data)?;
    if s.limit_images < data.len() {
        data = data.subset(&(0..s.limit_images).collect::<Vec<_>>());
    }
    let data = Arc::new(data);
    let (train_idx, val_idx) = search_split(data.len(), 0.5)?;
    let loader = |idx: Vec<usize>, stream: u64| {
        let mut l = Loader::new(data.clone(), idx, s.batch_size);
        l.shuffle = true;
        l.augment = Augment::SEARCH;
        l.seed = s.seed;
        l.stream = stream;
        l
    };
    let eval = Loader::new(data.clone(), val_idx.clone(), s.batch_size);
    let (train, val) = (loader(train_idx, 1), loader(val_idx, 2));
    // Seed and build under the library's seed lock, as its drivers do: another thread seeding
    // or drawing from the backend's generator in between would change the initialisation.
    let net = {
        let _guard = darts::run::seed_lock();
        B::seed(device, s.seed);
        Nb201Net::<B>::new(s.channels, s.cells, 10, device)
    };
    let mut bilevel = Bilevel::new(
        net,
        WeightConfig {
            lr: CosineLr {
                max: 0.025,
                min: 0.001,
                epochs: s.epochs,
            },
            ..WeightConfig::darts_cifar(s.epochs)
        },
        ArchitectConfig {
            order: s.order,
            ..Default::default()
        },
    );
    let to_batch = |h: darts::data::cifar::HostBatch| {
        ImageBatch::<B>::from_host(h.images.clone(), h.dims(), &h.labels, device)
    };
    for epoch in 0..s.epochs {
        // The method's values for the epoch (the library sets them through `MethodSupernet`).
        method.apply(&mut bilevel, s.seed, epoch, s.epochs);
        let steps = s.max_steps.unwrap_or(usize::MAX);
        let t = train.epoch(epoch, 0).take(steps).map(to_batch);
        let mut v = (0..)
            .flat_map(|k| val.epoch(epoch * 1000 + k, 0))
            .map(to_batch);
        let stats = bilevel.run_epoch(epoch, t, &mut v, |_| {});
        on_epoch(epoch, &stats, &bilevel.model.arch());
    }
    let mut decisions = Vec::new();
    if let Some(interval) = s.select_pt {
        let cell = PtCell {
            name: "cell".into(),
            ops: NB201_OPS.len(),
            node_edges: nb201_node_edges(),
            topology: false,
        };
        // Six op decisions: `interval · 5 + 1` fine-tuning epochs at a tenth of the learning
        // rate, with SGD restarted.
        let epochs = tune_epochs(std::slice::from_ref(&cell), interval);
        bilevel.w_opt = darts::bilevel::Sgd::new(0.9, 3e-4);
        let mut target = PtNb201 {
            bilevel: &mut bilevel,
            train: &train,
            val: &val,
            eval: &eval,
            steps: s.max_steps.unwrap_or(usize::MAX),
            lr: CosineLr {
                max: 0.0025,
                min: 0.001,
                epochs,
            },
            device,
        };
        let out = match perturbation_select(&mut target, &[cell], interval, s.seed) {
            Ok(out) => out,
            Err(never) => match never {},
        };
        bilevel.model.projection = out.projections[0].clone();
        decisions = out.decisions;
    }
    Ok((bilevel.model.arch(), decisions))
}

#[derive(Parser, Debug)]
#[command(about = "NAS-Bench-201 cell search with the DARTS architect (a custom search space)")]
struct Args {
    /// CIFAR-10 directory (default: the shipped sample).
    #[arg(long)]
    data: Option<PathBuf>,
    /// cpu | wgpu[:N] | cuda[:N]
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, default_value_t = 8, value_parser = positive)]
    channels: usize,
    /// Cells per stage (5 in the benchmark).
    #[arg(long, default_value_t = 1, value_parser = positive)]
    cells: usize,
    #[arg(long, default_value_t = 16, value_parser = positive)]
    batch_size: usize,
    #[arg(long, default_value_t = 2, value_parser = positive)]
    epochs: usize,
    #[arg(long, default_value_t = 320, value_parser = positive)]
    limit_images: usize,
    /// Stop each epoch after N steps.
    #[arg(long, value_parser = positive)]
    max_steps: Option<usize>,
    /// Second-order architecture gradient.
    #[arg(long)]
    unrolled: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// darts, gdas, darts-minus, sdarts-rs, sdarts-adv, beta-darts or drnas.
    #[arg(long, default_value = "darts")]
    method: Method,
    /// Choose each edge's op with DARTS-PT after the search, this many fine-tuning epochs
    /// between decisions (the reference's 5).
    #[arg(long, value_parser = positive)]
    select_pt: Option<usize>,
}

/// A count that must be at least 1 (clap reports the flag and the value otherwise).
fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

struct Task(Nb201Search);

impl BackendTask for Task {
    type Output = Result<Nb201Arch, Box<dyn std::error::Error>>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        search::<B>(&self.0, &device, |epoch, st, arch| {
            println!(
                "epoch {}: train loss {:.3} acc {:.1}%  val loss {:.3}  {}",
                epoch + 1,
                st.train_loss,
                100.0 * st.train_acc.unwrap_or(0.0),
                st.val_loss,
                arch
            );
        })
    }
}

fn main() {
    // Reuse freed tensor memory instead of fresh pages (see `darts::alloc`).
    darts::alloc::tune_malloc();
    let a = Args::parse();
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/cifar10-sample");
    let s = Nb201Search {
        data: a.data.unwrap_or(sample),
        limit_images: a.limit_images,
        channels: a.channels,
        cells: a.cells,
        batch_size: a.batch_size,
        epochs: a.epochs,
        max_steps: a.max_steps,
        order: if a.unrolled {
            Order::Second
        } else {
            Order::First
        },
        seed: a.seed,
        method: a.method,
        select_pt: a.select_pt,
    };
    let spec: DeviceSpec = match a.device.parse() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2)
        }
    };
    match dispatch(&spec, Task(s)) {
        Ok(Ok(arch)) => println!("final architecture: {arch}"),
        Ok(Err(e)) => {
            eprintln!("error: {e}");
            std::process::exit(1)
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2)
        }
    }
}
