//! Convolution and linear layers with PyTorch's default initialisation
//! (`kaiming_uniform_(a=√5)`, i.e. U(−1/√fan_in, 1/√fan_in)) and explicit padding.

use burn::module::{Module, Param};
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{backend::Backend, s, Distribution, Tensor};

/// A 2-D convolution without bias (DARTS never uses conv biases).
#[derive(Module, Debug)]
pub struct Conv2d<B: Backend> {
    /// Weight `[C_out, C_in / groups, kh, kw]`.
    pub weight: Param<Tensor<B, 4>>,
    /// Stride `[sh, sw]`.
    pub stride: [usize; 2],
    /// Symmetric zero padding `[ph, pw]`.
    pub padding: [usize; 2],
    /// Dilation `[dh, dw]`.
    pub dilation: [usize; 2],
    /// Groups (`C_in` for a depthwise convolution).
    pub groups: usize,
}

/// Configuration of a [`Conv2d`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dConfig {
    /// Input channels.
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
    /// Kernel size `[kh, kw]`.
    pub kernel: [usize; 2],
    /// Stride.
    pub stride: [usize; 2],
    /// Padding.
    pub padding: [usize; 2],
    /// Dilation.
    pub dilation: [usize; 2],
    /// Groups.
    pub groups: usize,
}

impl Conv2dConfig {
    /// A square `k×k` convolution with the given stride and padding.
    pub fn new(c_in: usize, c_out: usize, k: usize, stride: usize, padding: usize) -> Self {
        Self {
            c_in,
            c_out,
            kernel: [k, k],
            stride: [stride, stride],
            padding: [padding, padding],
            dilation: [1, 1],
            groups: 1,
        }
    }

    /// Set the dilation (both axes).
    pub fn dilation(mut self, d: usize) -> Self {
        self.dilation = [d, d];
        self
    }

    /// Set the number of groups.
    pub fn groups(mut self, g: usize) -> Self {
        self.groups = g;
        self
    }

    /// Build the layer.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Conv2d<B> {
        let fan_in = self.c_in / self.groups * self.kernel[0] * self.kernel[1];
        let bound = 1.0 / (fan_in as f64).sqrt();
        let weight = Tensor::random(
            [
                self.c_out,
                self.c_in / self.groups,
                self.kernel[0],
                self.kernel[1],
            ],
            Distribution::Uniform(-bound, bound),
            device,
        );
        Conv2d {
            weight: Param::from_tensor(weight),
            stride: self.stride,
            padding: self.padding,
            dilation: self.dilation,
            groups: self.groups,
        }
    }
}

impl<B: Backend> Conv2d<B> {
    /// Apply to `[N, C_in, H, W]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [_, _, kh, kw] = self.weight.dims();
        if self.groups == 1 && [kh, kw] == [1, 1] && self.padding == [0, 0] {
            // A strided 1×1 convolution (FactorizedReduce) is a 1×1 convolution of the
            // subsampled input. Besides being one matrix product, this avoids Burn 0.21's CubeCL
            // input gradient of a strided 1×1 convolution, which is wrong (checked in
            // tests/it/gpu_equivalence.rs).
            let x = if self.stride == [1, 1] {
                x
            } else {
                let [sh, sw] = self.stride.map(|s| s as isize);
                x.slice(s![.., .., 0..;sh, 0..;sw])
            };
            return crate::kernels::pointwise_conv2d(x, self.weight.val());
        }
        if self.is_depthwise() {
            return crate::kernels::depthwise_conv2d(
                x,
                self.weight.val(),
                self.stride,
                self.padding,
                self.dilation,
            );
        }
        conv2d(
            x,
            self.weight.val(),
            None,
            ConvOptions::new(self.stride, self.padding, self.dilation, self.groups),
        )
    }

    /// One filter per input channel (groups = channels in = channels out).
    fn is_depthwise(&self) -> bool {
        let [c_out, c_in_per_group, _, _] = self.weight.dims();
        self.groups > 1 && c_in_per_group == 1 && c_out == self.groups
    }

    /// `forward(max(x, 0))`. A depthwise layer on the wgpu/CUDA types reads the ReLU with its
    /// input in one op ([`crate::kernels::relu_depthwise_conv2d`]); every other layer and
    /// backend applies [`crate::kernels::relu`] first.
    pub fn forward_relu(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        if self.is_depthwise() {
            return crate::kernels::relu_depthwise_conv2d(
                x,
                self.weight.val(),
                self.stride,
                self.padding,
                self.dilation,
            );
        }
        self.forward(crate::kernels::relu(x))
    }
}

/// A fully connected layer `y = x W + b` (`W` stored `[in, out]`), PyTorch initialisation.
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    /// Weight `[in, out]`.
    pub weight: Param<Tensor<B, 2>>,
    /// Bias `[out]`.
    pub bias: Param<Tensor<B, 1>>,
}

impl<B: Backend> Linear<B> {
    /// A new layer.
    pub fn new(d_in: usize, d_out: usize, device: &B::Device) -> Self {
        let bound = 1.0 / (d_in as f64).sqrt();
        Self {
            weight: Param::from_tensor(Tensor::random(
                [d_in, d_out],
                Distribution::Uniform(-bound, bound),
                device,
            )),
            bias: Param::from_tensor(Tensor::random(
                [d_out],
                Distribution::Uniform(-bound, bound),
                device,
            )),
        }
    }

    /// Apply to `[N, in]`.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let out = self.bias.dims()[0];
        x.matmul(self.weight.val()) + self.bias.val().reshape([1, out])
    }
}
