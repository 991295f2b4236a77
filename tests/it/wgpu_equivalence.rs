//! The same tiny conv + BN network (stem conv, BN, a separable conv with depthwise convs, a
//! dilated conv, global pooling, linear), with the same weights and input, on flex (CPU) and on
//! wgpu: outputs and every gradient agree within 1e-4. Runs with `--features wgpu`; on a machine
//! without a GPU it uses a software Vulkan driver (mesa lavapipe), which `.ci/run` installs.
#![cfg(feature = "wgpu")]

use burn::backend::{Autodiff, Flex, Wgpu};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Distribution, Tensor, TensorData};
use darts::ops::cnn::{DilConv, SepConv};
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
            sep: SepConv::new(8, 8, 3, 2, 1, true, device),
            dil: DilConv::new(8, 8, 5, 1, 4, 2, false, device),
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

#[test]
fn flex_and_wgpu_agree_on_outputs_and_gradients() {
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
    let x =
        Tensor::<Flex, 4>::random([4, 3, 12, 12], Distribution::Normal(0.0, 1.0), &dev).into_data();

    let (y_cpu, g_cpu) = run::<Autodiff<Flex>>(&c.0, &x, &dev);
    let (y_gpu, g_gpu) = run::<Autodiff<Wgpu>>(&c.0, &x, &Default::default());
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
