//! The same networks with the same weights and inputs on flex (CPU) and on a GPU backend:
//! a tiny conv + BN network (outputs and every gradient within 1e-4), a whole search supernet
//! forward and backward (every weight and α gradient within 1e-3), the first- and second-order
//! architecture gradients (within 1e-3), the strided 1×1 convolution, and the supernets of the
//! successor methods (PC-DARTS, DARTS−, GDAS). Each check runs on
//! wgpu with `--features wgpu` (on a machine without a GPU through Mesa's software Vulkan
//! driver, lavapipe, which `scripts/test.sh` installs) and on CUDA with `--features cuda` and
//! `--ignored` (benches/gpu_run.sh, on a lent GPU).
#![cfg(any(feature = "wgpu", feature = "cuda"))]

use burn::backend::{Autodiff, Flex};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Distribution, Tensor, TensorData};
use darts::ops::cnn::{ConvSpec, DilConv, SepConv};
use darts::ops::conv::Conv2dConfig;
use darts::ops::{BatchNorm2d, Conv2d, Linear};

#[derive(Module, Debug)]
struct Tiny<B: Backend> {
    stem: Conv2d<B>,
    bn: BatchNorm2d<B>,
    sep: SepConv<B>,
    dil: DilConv<B>,
    fc: Linear<B>,
}

impl<B: Backend> Tiny<B> {
    fn new(device: &B::Device) -> Self {
        Self {
            stem: Conv2dConfig::new(3, 8, 3, 1, 1).init(device),
            bn: BatchNorm2d::new(8, true, device),
            sep: SepConv::new(ConvSpec::new(8, 3).stride(2).padding(1), true, device),
            dil: DilConv::new(ConvSpec::new(8, 5).padding(4).dilation(2), false, device),
            fc: Linear::new(8, 5, device),
        }
    }
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let x = self.bn.forward(self.stem.forward(x));
        let x = self.dil.forward(self.sep.forward(x));
        let [n, c, _, _] = x.dims();
        self.fc.forward(x.mean_dims(&[2, 3]).reshape([n, c]))
    }
}

struct Load(Vec<TensorData>, usize);
impl<B: Backend> ModuleMapper<B> for Load {
    fn map_float<const D: usize>(&mut self, p: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let data = self.0[self.1].clone();
        self.1 += 1;
        p.map(|t| {
            let rg = t.is_require_grad();
            let n = Tensor::<B, D>::from_data(data, &t.device());
            if rg {
                n.require_grad()
            } else {
                n
            }
        })
    }
}

struct Grads<'a, B: AutodiffBackend>(&'a B::Gradients, Vec<TensorData>);
impl<B: AutodiffBackend> ModuleVisitor<B> for Grads<'_, B> {
    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
        if let Some(g) = p.val().grad(self.0) {
            self.1.push(g.into_data());
        }
    }
}

fn run<B: AutodiffBackend>(
    weights: &[TensorData],
    x: &TensorData,
    device: &B::Device,
) -> (TensorData, Vec<TensorData>) {
    let model = Tiny::<B>::new(device).map(&mut Load(weights.to_vec(), 0));
    let x = Tensor::<B, 4>::from_data(x.clone(), device);
    let y = model.forward(x);
    let loss = (y.clone() * y.clone()).mean() + y.clone().sum() * 0.1;
    let grads = loss.backward();
    let mut v = Grads::<B>(&grads, Vec::new());
    model.visit(&mut v);
    (y.into_data(), v.1)
}

fn check_small_network<G: AutodiffBackend>(gpu: &G::Device) {
    let dev = Default::default();
    let reference = Tiny::<Flex>::new(&dev);
    struct Collect(Vec<TensorData>);
    impl ModuleVisitor<Flex> for Collect {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<Flex, D>>) {
            self.0.push(p.val().into_data());
        }
    }
    let mut c = Collect(Vec::new());
    reference.visit(&mut c);
    let x = crate::common::seeded(5, || {
        Tensor::<Flex, 4>::random([4, 3, 12, 12], Distribution::Normal(0.0, 1.0), &dev)
    })
    .into_data();

    let (y_cpu, g_cpu) = run::<Autodiff<Flex>>(&c.0, &x, &dev);
    let (y_gpu, g_gpu) = run::<G>(&c.0, &x, gpu);
    assert_eq!(g_cpu.len(), g_gpu.len());
    assert!(
        g_cpu.len() >= 10,
        "expected a gradient for every trainable tensor"
    );
    let close = |a: &TensorData, b: &TensorData, what: &str| {
        let a: Vec<f32> = a.to_vec().unwrap();
        let b: Vec<f32> = b.to_vec().unwrap();
        assert_eq!(a.len(), b.len());
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs() / (1.0 + x.abs()))
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-4, "{what}: max difference {worst}");
    };
    close(&y_cpu, &y_gpu, "output");
    for (i, (a, b)) in g_cpu.iter().zip(&g_gpu).enumerate() {
        close(a, b, &format!("gradient {i}"));
    }
}

/// A small search supernet (every DARTS candidate op on every edge, normal and reduction cells)
/// with the same weights and α on flex and on wgpu.
fn supernet<B: AutodiffBackend>(
    weights: Option<&[TensorData]>,
    device: &B::Device,
) -> darts::cell::SearchNetwork<B, darts::ops::DartsOp<B>> {
    use darts::prelude::*;
    let net = SearchNetworkConfig {
        channels: 4,
        layers: 3,
        steps: 2,
        multiplier: 2,
        ..Default::default()
    }
    .init::<B, _, _>(&DartsSpace::default(), Softmax, device)
    .unwrap();
    match weights {
        Some(w) => net.map(&mut Load(w.to_vec(), 0)),
        None => net,
    }
}

fn all_floats<B: Backend, M: Module<B>>(m: &M) -> Vec<TensorData> {
    struct Collect(Vec<TensorData>);
    impl<B: Backend> ModuleVisitor<B> for Collect {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
            self.0.push(p.val().into_data());
        }
    }
    let mut c = Collect(Vec::new());
    m.visit(&mut c);
    c.0
}

/// Deterministic pseudo-random data (splitmix64, uniform in [-scale, scale]) that does not touch
/// the backends' global generator, which tests running in parallel share.
fn fixed_data(shape: &[usize], seed: u64, scale: f32) -> TensorData {
    let n: usize = shape.iter().product();
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x2545_F491_4F6C_DD1D;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect();
    TensorData::new(v, shape.to_vec())
}

/// Every float tensor of `m` replaced by [`fixed_data`] of its shape (weights ±0.3).
fn fixed_weights<B: Backend, M: Module<B>>(m: &M, seed: u64) -> Vec<TensorData> {
    all_floats(m)
        .iter()
        .enumerate()
        .map(|(i, d)| fixed_data(&d.shape, seed * 1000 + i as u64, 0.3))
        .collect()
}

fn image_batch<B: AutodiffBackend>(
    data: &TensorData,
    device: &B::Device,
) -> darts::cell::ImageBatch<B> {
    let n = data.shape[0];
    let t: Vec<i64> = (0..n as i64).map(|i| (3 * i + 1) % 10).collect();
    darts::cell::ImageBatch {
        images: Tensor::from_data(data.clone(), device),
        targets: Tensor::from_data(TensorData::new(t, [n]), device),
    }
}

fn worst_relative(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = a.iter().fold(1e-12f32, |m, x| m.max(x.abs()));
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / scale)
        .fold(0.0f32, f32::max)
}

/// A whole search supernet forward and backward (every weight and α) agrees between flex and
/// wgpu — the GPU path of the depthwise convolutions, 1×1 convolutions as matrix products,
/// pooling and BatchNorm against the CPU kernels.
fn check_search_supernet<G: AutodiffBackend>(gpu: &G::Device) {
    let dev = Default::default();
    let w = fixed_weights(&supernet::<Autodiff<Flex>>(None, &dev), 2);
    let x = fixed_data(&[4, 3, 16, 16], 20, 1.5);
    let cpu = loss_and_gradients(&supernet::<Autodiff<Flex>>(Some(&w), &dev), &x, &dev);
    let gpu = loss_and_gradients(&supernet::<G>(Some(&w), gpu), &x, gpu);
    assert!(cpu.1.len() > 100, "only {} gradients", cpu.1.len());
    assert_agree("supernet", cpu, gpu);
}

/// The loss of `net` on the batch `x` and the gradient of every parameter (visit order).
fn loss_and_gradients<
    B: AutodiffBackend,
    M: darts::bilevel::ArchModel<B, Batch = darts::cell::ImageBatch<B>>,
>(
    net: &M,
    x: &TensorData,
    device: &B::Device,
) -> (f32, Vec<Vec<f32>>) {
    let batch = image_batch::<B>(x, device);
    darts::bilevel::join_parameter_graphs(net);
    let loss = net.forward_batch(&batch).loss;
    let l: f32 = loss.clone().into_data().to_vec::<f32>().unwrap()[0];
    let grads = loss.backward();
    let mut v = Grads::<B>(&grads, Vec::new());
    net.visit(&mut v);
    (l, v.1.iter().map(|d| d.to_vec::<f32>().unwrap()).collect())
}

/// The losses within 1e-4 relative and every gradient within 1e-3 (relative to its largest
/// value) between the CPU and the GPU pass.
fn assert_agree(
    label: &str,
    (l_cpu, g_cpu): (f32, Vec<Vec<f32>>),
    (l_gpu, g_gpu): (f32, Vec<Vec<f32>>),
) {
    assert!(
        (l_cpu - l_gpu).abs() <= 1e-4 * l_cpu.abs().max(1.0),
        "{label}: {l_cpu} vs {l_gpu}"
    );
    assert_eq!(g_cpu.len(), g_gpu.len(), "{label}");
    for (i, (a, b)) in g_cpu.iter().zip(&g_gpu).enumerate() {
        let worst = worst_relative(a, b);
        assert!(
            worst < 1e-3,
            "{label}: gradient {i} ({} values): {worst}",
            a.len()
        );
    }
}

/// The first- and second-order architecture gradients of the supernet agree between flex and
/// wgpu within 1e-3 relative (the second order: virtual step with momentum and weight decay,
/// the gradient at w′, both finite-difference passes). The batch and image size keep every
/// BatchNorm over enough values: at batch 2 on 8×8 images the last reduction cell normalises
/// 1×1 maps over two values, which amplifies rounding so much that the two backends' α
/// gradients at w ± εu differed by 16% (and by 1e-6 here).
fn check_architect_steps<G: AutodiffBackend>(gpu: &G::Device) {
    use darts::bilevel::{ArchModel, Architect, ArchitectConfig, Order, Sgd};
    let dev = Default::default();
    let w = fixed_weights(&supernet::<Autodiff<Flex>>(None, &dev), 3);
    let train = fixed_data(&[4, 3, 16, 16], 30, 1.5);
    let val = fixed_data(&[4, 3, 16, 16], 31, 1.5);
    fn dalpha<B: AutodiffBackend>(
        order: Order,
        w: &[TensorData],
        train: &TensorData,
        val: &TensorData,
        device: &B::Device,
    ) -> Vec<f32> {
        let net = supernet::<B>(Some(w), device);
        let (t, v) = (
            image_batch::<B>(train, device),
            image_batch::<B>(val, device),
        );
        let architect = Architect::<B>::new(ArchitectConfig {
            order,
            ..Default::default()
        });
        let sgd = Sgd::<B::InnerBackend>::new(0.9, 3e-4);
        let g = architect.gradient(&net, &sgd, &t, &v, 0.5);
        net.arch_param_ids()
            .iter()
            .flat_map(|id| g.dalpha[id].clone().into_data().to_vec::<f32>().unwrap())
            .collect()
    }
    for order in [Order::First, Order::Second] {
        let cpu = dalpha::<Autodiff<Flex>>(order, &w, &train, &val, &dev);
        let on_gpu = dalpha::<G>(order, &w, &train, &val, gpu);
        let diff: f32 = cpu
            .iter()
            .zip(&on_gpu)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f32>();
        let norm: f32 = cpu.iter().map(|a| a * a).sum::<f32>();
        let rel = (diff / norm).sqrt();
        println!("{order:?}: ‖dα_wgpu − dα_flex‖ / ‖dα_flex‖ = {rel:.2e}");
        assert!(rel < 1e-3, "{order:?}: relative difference {rel}");
    }
}

/// A strided 1×1 convolution (FactorizedReduce, the reduction cells' skip_connect and
/// preprocessing) on wgpu: its input gradient agrees with flex. Burn 0.21's own CubeCL op gets it
/// wrong (every element off); `Conv2d` subsamples and takes the 1×1 matrix product instead.
fn check_strided_pointwise_conv<G: AutodiffBackend>(gpu: &G::Device) {
    let dev = Default::default();
    for hw in [8, 7] {
        let x = fixed_data(&[2, 4, hw, hw], 11, 1.5);
        let w = fixed_weights(&Conv2dConfig::new(4, 6, 1, 2, 0).init::<Flex>(&dev), 12);
        fn pass<B: AutodiffBackend>(
            w: &[TensorData],
            x: &TensorData,
            d: &B::Device,
        ) -> Vec<Vec<f32>> {
            let conv = Conv2dConfig::new(4, 6, 1, 2, 0)
                .init::<B>(d)
                .map(&mut Load(w.to_vec(), 0));
            let x = Tensor::<B, 4>::from_data(x.clone(), d).require_grad();
            let y = conv.forward(x.clone());
            let g = ((y.clone() * y.clone()).sum() + y.clone().sum()).backward();
            vec![
                y.into_data().to_vec().unwrap(),
                x.grad(&g).unwrap().into_data().to_vec().unwrap(),
                conv.weight
                    .val()
                    .grad(&g)
                    .unwrap()
                    .into_data()
                    .to_vec()
                    .unwrap(),
            ]
        }
        let a = pass::<Autodiff<Flex>>(&w, &x, &dev);
        let b = pass::<G>(&w, &x, gpu);
        for (i, what) in ["output", "input gradient", "weight gradient"]
            .iter()
            .enumerate()
        {
            let worst = worst_relative(&a[i], &b[i]);
            assert!(worst < 1e-5, "{hw}x{hw} {what}: {worst}");
        }
    }
}

/// The successor methods' supernets (PC-DARTS's partial channels and edge normalisation,
/// DARTS−'s auxiliary skips, GDAS's sampled single op per edge with the same noise on both
/// backends) forward and backward agree between flex and the GPU backend within 1e-3.
fn check_method_supernets<G: AutodiffBackend>(gpu: &G::Device) {
    use darts::methods::{Method, MethodNet};
    use darts::mixed_op::stochastic::NoiseSource;
    fn build<B: AutodiffBackend>(
        method: Method,
        w: Option<&[TensorData]>,
        device: &B::Device,
    ) -> MethodNet<B> {
        let m = method.config();
        let base = darts::cell::SearchNetworkConfig {
            channels: 8,
            layers: 3,
            steps: 2,
            multiplier: 2,
            ..Default::default()
        };
        let mut net = m.supernet::<B>(base, device).unwrap();
        net.aux_scale = m.schedule(10, 50).aux_skip_scale.unwrap_or(0.0);
        net.sampling = m.sampling(10, 50);
        net.noise = NoiseSource::new(9);
        match w {
            Some(w) => net.map(&mut Load(w.to_vec(), 0)),
            None => net,
        }
    }
    let dev = Default::default();
    let x = fixed_data(&[4, 3, 16, 16], 40, 1.5);
    for method in [Method::PcDarts, Method::DartsMinus, Method::Gdas] {
        let w = fixed_weights(&build::<Autodiff<Flex>>(method, None, &dev), 4);
        let cpu = loss_and_gradients(&build::<Autodiff<Flex>>(method, Some(&w), &dev), &x, &dev);
        let gpu = loss_and_gradients(&build::<G>(method, Some(&w), gpu), &x, gpu);
        assert_agree(method.name(), cpu, gpu);
    }
}

/// A data-parallel search step (two peers, threads of one process, `burn-collective` summing
/// device tensors) agrees between flex and the GPU backend: every parameter after one first-order
/// step and the BatchNorm averaging within 1e-3 relative, and on each backend the two replicas
/// agree within 1e-5.
fn check_data_parallel_step<G: AutodiffBackend>(gpu: &G::Device) {
    let dev = Default::default();
    let w = fixed_weights(&supernet::<Autodiff<Flex>>(None, &dev), 4);
    let train = fixed_data(&[8, 3, 16, 16], 40, 1.5);
    let val = fixed_data(&[8, 3, 16, 16], 41, 1.5);
    fn two_peers<B: AutodiffBackend>(
        w: &[TensorData],
        train: &TensorData,
        val: &TensorData,
        device: &B::Device,
    ) -> Vec<Vec<f32>> {
        use darts::bilevel::{average_buffers, ArchitectConfig, Bilevel, WeightConfig};
        use darts::parallel::{run_local, shard_range, GroupConfig};
        let devices = [device.clone(), device.clone()];
        let mut out = run_local::<B::InnerBackend, _, _>(
            &devices,
            &GroupConfig::local(2),
            |rank, d, sync| {
                let shard = |x: &TensorData| {
                    let b = image_batch::<B>(x, &d);
                    let r = shard_range(x.shape[0], rank, 2);
                    darts::cell::ImageBatch {
                        images: b.images.narrow(0, r.start, r.len()),
                        targets: b.targets.narrow(0, r.start, r.len()),
                    }
                };
                let mut s = Bilevel::new(
                    supernet::<B>(Some(w), &d),
                    WeightConfig::darts_cifar(10),
                    ArchitectConfig::default(),
                );
                s.sync = Some(sync.clone());
                s.step(&shard(train), &shard(val), 0.025);
                let model = average_buffers(s.model.clone(), sync.as_ref());
                assert_eq!(sync.failure(), None, "peer {rank}: the group failed");
                all_floats(&model)
                    .into_iter()
                    .map(|d| d.to_vec::<f32>().unwrap())
                    .collect::<Vec<_>>()
            },
        )
        .unwrap();
        // Equal up to rounding (flex's replicas are bitwise equal, see tests/it/parallel.rs).
        // This caught a race: peers on one device got clones of one reduced tensor, and under
        // fusion one peer's in-place division could run before the other's queued read (one
        // replica's BatchNorm statistics came out divided twice, relative difference 0.5–1);
        // each peer now gets a tensor of its own (`darts::parallel`, `serve`).
        for (i, (a, b)) in out[0].iter().zip(&out[1]).enumerate() {
            let worst = worst_relative(a, b);
            println!("replicas, parameter {i}: {worst:e}");
            assert!(
                worst < 1e-5,
                "the replicas differ: parameter {i}: {worst:e}"
            );
        }
        out.remove(0)
    }
    let cpu = two_peers::<Autodiff<Flex>>(&w, &train, &val, &dev);
    let on_gpu = two_peers::<G>(&w, &train, &val, gpu);
    assert_eq!(cpu.len(), on_gpu.len());
    for (i, (a, b)) in cpu.iter().zip(&on_gpu).enumerate() {
        let worst = worst_relative(a, b);
        assert!(worst < 1e-3, "parameter {i} ({} values): {worst}", a.len());
    }
}

/// The checks above on `--device wgpu` (in CI: Mesa's software Vulkan driver).
#[cfg(feature = "wgpu")]
mod wgpu {
    use burn::backend::{Autodiff, Wgpu};
    type G = Autodiff<Wgpu>;

    #[test]
    fn small_network_agrees_with_flex() {
        super::check_small_network::<G>(&Default::default());
    }

    #[test]
    fn search_supernet_agrees_with_flex() {
        super::check_search_supernet::<G>(&Default::default());
    }

    #[test]
    fn architect_steps_agrees_with_flex() {
        super::check_architect_steps::<G>(&Default::default());
    }

    #[test]
    fn strided_pointwise_conv_agrees_with_flex() {
        super::check_strided_pointwise_conv::<G>(&Default::default());
    }

    #[test]
    fn method_supernets_agree_with_flex() {
        super::check_method_supernets::<G>(&Default::default());
    }

    #[test]
    fn data_parallel_step_agrees_with_flex() {
        super::check_data_parallel_step::<G>(&Default::default());
    }
}

/// The same checks on `--device cuda`: compiled with `--features cuda`, run on a machine with an
/// NVIDIA GPU with `--ignored` (benches/gpu_run.sh does).
#[cfg(feature = "cuda")]
mod cuda {
    use burn::backend::{Autodiff, Cuda};
    type G = Autodiff<Cuda>;

    #[test]
    #[ignore = "needs an NVIDIA GPU; run with --ignored"]
    fn small_network_agrees_with_flex() {
        super::check_small_network::<G>(&Default::default());
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU; run with --ignored"]
    fn search_supernet_agrees_with_flex() {
        super::check_search_supernet::<G>(&Default::default());
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU; run with --ignored"]
    fn architect_steps_agrees_with_flex() {
        super::check_architect_steps::<G>(&Default::default());
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU; run with --ignored"]
    fn strided_pointwise_conv_agrees_with_flex() {
        super::check_strided_pointwise_conv::<G>(&Default::default());
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU; run with --ignored"]
    fn method_supernets_agree_with_flex() {
        super::check_method_supernets::<G>(&Default::default());
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU; run with --ignored"]
    fn data_parallel_step_agrees_with_flex() {
        super::check_data_parallel_step::<G>(&Default::default());
    }
}
