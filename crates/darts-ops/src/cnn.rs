//! The convolutional candidate operations of DARTS (reference `cnn/operations.py`).
//!
//! | name | module |
//! |---|---|
//! | `none` | [`Zero`]: zeros (stride 2 halves the spatial size) |
//! | `max_pool_3x3`, `avg_pool_3x3` | [`Pool`]: 3×3, padding 1 (average excludes padding); in search followed by a non-affine BN |
//! | `skip_connect` | [`Identity`] at stride 1, [`FactorizedReduce`] at stride 2 |
//! | `sep_conv_{3,5,7}x{3,5,7}` | [`SepConv`]: twice ReLU → depthwise k×k → 1×1 → BN |
//! | `dil_conv_{3,5}x{3,5}` | [`DilConv`]: ReLU → depthwise k×k dilation 2 → 1×1 → BN |
//! | `conv_7x1_1x7` | [`Conv7x1x1x7`]: ReLU → 1×7 → 7×1 → BN |

use crate::bn::BatchNorm2d;
use crate::conv::{Conv2d, Conv2dConfig};
use crate::kernels::relu;
use crate::kernels::{pool2d, Pooling};
use crate::OpError;
use burn::module::Module;
use burn::tensor::{backend::Backend, Tensor, TensorCreationOptions};
use serde::{Deserialize, Serialize};

/// ReLU → conv → BN (the 1×1 cell preprocessing, and the stem of NASNet-style ops).
#[derive(Module, Debug)]
pub struct ReLUConvBN<B: Backend> {
    /// Convolution.
    pub conv: Conv2d<B>,
    /// Normalisation.
    pub bn: BatchNorm2d<B>,
}

impl<B: Backend> ReLUConvBN<B> {
    /// `k×k` conv from `c_in` to `c_out`.
    pub fn new(
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        padding: usize,
        affine: bool,
        device: &B::Device,
    ) -> Self {
        Self {
            conv: Conv2dConfig::new(c_in, c_out, k, stride, padding).init(device),
            bn: BatchNorm2d::new(c_out, affine, device),
        }
    }

    /// `BN(conv(ReLU(x)))`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.bn.forward(self.conv.forward(relu(x)))
    }
}

/// The geometry of a convolution block: channels in and out, kernel side, stride, padding and
/// dilation (the arguments of PyTorch's `nn.Conv2d` that the DARTS ops vary).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvSpec {
    /// Input channels.
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
    /// Kernel side.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding on each side.
    pub padding: usize,
    /// Dilation.
    pub dilation: usize,
}

impl ConvSpec {
    /// A `kernel × kernel` convolution on `c` channels (in = out), stride 1, no padding or
    /// dilation.
    pub fn new(c: usize, kernel: usize) -> Self {
        Self {
            c_in: c,
            c_out: c,
            kernel,
            stride: 1,
            padding: 0,
            dilation: 1,
        }
    }

    /// With stride `s`.
    pub fn stride(self, s: usize) -> Self {
        Self { stride: s, ..self }
    }

    /// With padding `p`.
    pub fn padding(self, p: usize) -> Self {
        Self { padding: p, ..self }
    }

    /// With dilation `d`.
    pub fn dilation(self, d: usize) -> Self {
        Self {
            dilation: d,
            ..self
        }
    }
}

/// ReLU → depthwise k×k (dilated) → pointwise 1×1 → BN.
#[derive(Module, Debug)]
pub struct DilConv<B: Backend> {
    /// Depthwise convolution (groups = `c_in`).
    pub depthwise: Conv2d<B>,
    /// Pointwise convolution.
    pub pointwise: Conv2d<B>,
    /// Normalisation.
    pub bn: BatchNorm2d<B>,
}

impl<B: Backend> DilConv<B> {
    /// A new block of the geometry `spec` (its `c_in` groups in the depthwise convolution).
    pub fn new(spec: ConvSpec, affine: bool, device: &B::Device) -> Self {
        let ConvSpec {
            c_in,
            c_out,
            kernel,
            stride,
            padding,
            dilation,
        } = spec;
        Self {
            depthwise: Conv2dConfig::new(c_in, c_in, kernel, stride, padding)
                .dilation(dilation)
                .groups(c_in)
                .init(device),
            pointwise: Conv2dConfig::new(c_in, c_out, 1, 1, 0).init(device),
            bn: BatchNorm2d::new(c_out, affine, device),
        }
    }

    /// `BN(pointwise(depthwise(ReLU(x))))`, the depthwise convolution dilated and strided.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let x = self.depthwise.forward_relu(x);
        self.bn.forward(self.pointwise.forward(x))
    }
}

/// Separable convolution: two [`DilConv`] blocks with dilation 1; only the first is strided.
#[derive(Module, Debug)]
pub struct SepConv<B: Backend> {
    /// First block (`c_in → c_in`, strided).
    pub first: DilConv<B>,
    /// Second block (`c_in → c_out`).
    pub second: DilConv<B>,
}

impl<B: Backend> SepConv<B> {
    /// A new op of the geometry `spec` (its dilation is not used: both halves have none; only
    /// the first is strided).
    pub fn new(spec: ConvSpec, affine: bool, device: &B::Device) -> Self {
        let first = ConvSpec {
            c_out: spec.c_in,
            dilation: 1,
            ..spec
        };
        let second = ConvSpec {
            c_in: spec.c_in,
            stride: 1,
            dilation: 1,
            ..spec
        };
        Self {
            first: DilConv::new(first, affine, device),
            second: DilConv::new(second, affine, device),
        }
    }

    /// Two `DilConv`-shaped halves without dilation, the first strided: `half₂(half₁(x))`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.second.forward(self.first.forward(x))
    }
}

/// ReLU, two 1×1 stride-2 convs (`c_out/2` each; the second on the input shifted by one pixel),
/// concatenated, then BN. Halves the spatial size.
#[derive(Module, Debug)]
pub struct FactorizedReduce<B: Backend> {
    /// Conv on the unshifted input.
    pub conv_1: Conv2d<B>,
    /// Conv on `x[:, :, 1:, 1:]`.
    pub conv_2: Conv2d<B>,
    /// Normalisation.
    pub bn: BatchNorm2d<B>,
}

impl<B: Backend> FactorizedReduce<B> {
    /// A new op; `c_out` must be even.
    pub fn new(c_in: usize, c_out: usize, affine: bool, device: &B::Device) -> Self {
        assert!(
            c_out.is_multiple_of(2),
            "FactorizedReduce needs an even c_out"
        );
        Self {
            conv_1: Conv2dConfig::new(c_in, c_out / 2, 1, 2, 0).init(device),
            conv_2: Conv2dConfig::new(c_in, c_out / 2, 1, 2, 0).init(device),
            bn: BatchNorm2d::new(c_out, affine, device),
        }
    }

    /// `BN(concat(conv₁(ReLU(x)), conv₂(ReLU(x)[:, :, 1:, 1:])))`: halves the resolution.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let x = relu(x);
        let [n, c, h, w] = x.dims();
        let shifted = x.clone().slice([0..n, 0..c, 1..h, 1..w]);
        let a = self.conv_1.forward(x);
        let b = self.conv_2.forward(shifted);
        self.bn.forward(Tensor::cat(vec![a, b], 1))
    }
}

/// `conv_7x1_1x7` (AmoebaNet): ReLU → 1×7 conv → 7×1 conv → BN.
#[derive(Module, Debug)]
pub struct Conv7x1x1x7<B: Backend> {
    /// 1×7 conv (stride along the width).
    pub conv_1x7: Conv2d<B>,
    /// 7×1 conv (stride along the height).
    pub conv_7x1: Conv2d<B>,
    /// Normalisation.
    pub bn: BatchNorm2d<B>,
}

impl<B: Backend> Conv7x1x1x7<B> {
    /// A new op.
    pub fn new(c: usize, stride: usize, affine: bool, device: &B::Device) -> Self {
        let mut a = Conv2dConfig::new(c, c, 1, 1, 0);
        a.kernel = [1, 7];
        a.stride = [1, stride];
        a.padding = [0, 3];
        let mut b = Conv2dConfig::new(c, c, 1, 1, 0);
        b.kernel = [7, 1];
        b.stride = [stride, 1];
        b.padding = [3, 0];
        Self {
            conv_1x7: a.init(device),
            conv_7x1: b.init(device),
            bn: BatchNorm2d::new(c, affine, device),
        }
    }

    /// `BN(conv₇ₓ₁(conv₁ₓ₇(ReLU(x))))`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.bn
            .forward(self.conv_7x1.forward(self.conv_1x7.forward(relu(x))))
    }
}

/// How [`Primitive::build`] sets up an op's BatchNorms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpOptions {
    /// BN with affine parameters (false in the search supernet, true in derived networks).
    pub affine: bool,
    /// A non-affine BN after each pooling op (the search supernet has one).
    pub bn_after_pool: bool,
}

impl OpOptions {
    /// The search supernet's ops: BN without affine parameters, a BN after pools.
    pub const SEARCH: OpOptions = OpOptions {
        affine: false,
        bn_after_pool: true,
    };
    /// A derived network's ops: affine BN, pools without BN.
    pub const DERIVED: OpOptions = OpOptions {
        affine: true,
        bn_after_pool: false,
    };
}

/// 3×3 pooling with padding 1, optionally followed by a BN (the search supernet adds a
/// non-affine BN after every pool).
#[derive(Module, Debug)]
pub struct Pool<B: Backend> {
    /// Max (true) or average (false).
    pub max: bool,
    /// Stride.
    pub stride: usize,
    /// BN after the pool (search only).
    pub bn: Option<BatchNorm2d<B>>,
}

impl<B: Backend> Pool<B> {
    /// 3×3 max or average pooling (padding 1), then the BN when there is one.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let kind = if self.max {
            Pooling::Max
        } else {
            Pooling::AvgExcludePad
        };
        let y = pool2d(x, kind, 3, self.stride, 1);
        match &self.bn {
            Some(bn) => bn.forward(y),
            None => y,
        }
    }
}

/// The `none` op: zeros, spatially subsampled by the stride.
#[derive(Module, Clone, Debug)]
pub struct Zero {
    /// Stride.
    pub stride: usize,
}

impl Zero {
    /// Zeros of the output's shape (strided when the op reduces), in `x`'s dtype and device.
    pub fn forward<B: Backend>(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [n, c, h, w] = x.dims();
        let s = self.stride;
        // The input's dtype and device: an f64 model gets f64 zeros.
        let options = TensorCreationOptions::new(x.device()).with_dtype(x.dtype());
        Tensor::zeros([n, c, h.div_ceil(s), w.div_ceil(s)], options)
    }
}

/// The identity (`skip_connect` at stride 1).
#[derive(Module, Clone, Debug)]
pub struct Identity;

/// Any DARTS candidate operation, as one Burn module.
// Variants differ in size by design (an op is built once and lives in a Vec); boxing them would
// put every op behind a pointer for no gain.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum DartsOp<B: Backend> {
    /// `none`.
    Zero(Zero),
    /// `max_pool_3x3` / `avg_pool_3x3`.
    Pool(Pool<B>),
    /// `skip_connect` at stride 1.
    Identity(Identity),
    /// `skip_connect` at stride 2.
    FactorizedReduce(FactorizedReduce<B>),
    /// `sep_conv_*`.
    SepConv(SepConv<B>),
    /// `dil_conv_*`.
    DilConv(DilConv<B>),
    /// `conv_7x1_1x7`.
    Conv7x1x1x7(Conv7x1x1x7<B>),
}

impl<B: Backend> DartsOp<B> {
    /// The op's output for `x`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match self {
            DartsOp::Zero(z) => z.forward(x),
            DartsOp::Pool(p) => p.forward(x),
            DartsOp::Identity(_) => x,
            DartsOp::FactorizedReduce(f) => f.forward(x),
            DartsOp::SepConv(s) => s.forward(x),
            DartsOp::DilConv(d) => d.forward(x),
            DartsOp::Conv7x1x1x7(c) => c.forward(x),
        }
    }

    /// Whether this is the identity (drop path skips identities).
    pub fn is_identity(&self) -> bool {
        matches!(self, DartsOp::Identity(_))
    }

    /// Whether this is the `none` op (its output is identically zero).
    pub fn is_zero(&self) -> bool {
        matches!(self, DartsOp::Zero(_))
    }
}

/// The named primitives. The first eight, in this order, are the DARTS search space
/// ([`Primitive::DARTS`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum Primitive {
    None,
    MaxPool3x3,
    AvgPool3x3,
    SkipConnect,
    SepConv3x3,
    SepConv5x5,
    DilConv3x3,
    DilConv5x5,
    SepConv7x7,
    Conv7x1x1x7,
}

impl Primitive {
    /// The DARTS search space, in the reference order.
    pub const DARTS: [Primitive; 8] = [
        Primitive::None,
        Primitive::MaxPool3x3,
        Primitive::AvgPool3x3,
        Primitive::SkipConnect,
        Primitive::SepConv3x3,
        Primitive::SepConv5x5,
        Primitive::DilConv3x3,
        Primitive::DilConv5x5,
    ];

    /// Every primitive known to this crate.
    pub const ALL: [Primitive; 10] = [
        Primitive::None,
        Primitive::MaxPool3x3,
        Primitive::AvgPool3x3,
        Primitive::SkipConnect,
        Primitive::SepConv3x3,
        Primitive::SepConv5x5,
        Primitive::DilConv3x3,
        Primitive::DilConv5x5,
        Primitive::SepConv7x7,
        Primitive::Conv7x1x1x7,
    ];

    /// The reference name, e.g. `sep_conv_3x3`.
    pub fn name(self) -> &'static str {
        match self {
            Primitive::None => "none",
            Primitive::MaxPool3x3 => "max_pool_3x3",
            Primitive::AvgPool3x3 => "avg_pool_3x3",
            Primitive::SkipConnect => "skip_connect",
            Primitive::SepConv3x3 => "sep_conv_3x3",
            Primitive::SepConv5x5 => "sep_conv_5x5",
            Primitive::DilConv3x3 => "dil_conv_3x3",
            Primitive::DilConv5x5 => "dil_conv_5x5",
            Primitive::SepConv7x7 => "sep_conv_7x7",
            Primitive::Conv7x1x1x7 => "conv_7x1_1x7",
        }
    }

    /// Look a primitive up by its reference name.
    pub fn from_name(name: &str) -> Result<Self, OpError> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| OpError::UnknownOp {
                name: name.to_string(),
                known: Self::ALL.map(|p| p.name()).join(", "),
            })
    }

    /// Build the op on `c` channels (in = out) with the given stride, BatchNorms as `opts` says
    /// ([`OpOptions::SEARCH`] in the supernet, [`OpOptions::DERIVED`] in derived networks).
    pub fn build<B: Backend>(
        self,
        c: usize,
        stride: usize,
        opts: OpOptions,
        device: &B::Device,
    ) -> DartsOp<B> {
        let OpOptions {
            affine,
            bn_after_pool,
        } = opts;
        let sep = |k: usize, padding: usize| ConvSpec::new(c, k).stride(stride).padding(padding);
        let pool = |max: bool| {
            DartsOp::Pool(Pool {
                max,
                stride,
                bn: bn_after_pool.then(|| BatchNorm2d::new(c, false, device)),
            })
        };
        match self {
            Primitive::None => DartsOp::Zero(Zero { stride }),
            Primitive::MaxPool3x3 => pool(true),
            Primitive::AvgPool3x3 => pool(false),
            Primitive::SkipConnect if stride == 1 => DartsOp::Identity(Identity),
            Primitive::SkipConnect => {
                DartsOp::FactorizedReduce(FactorizedReduce::new(c, c, affine, device))
            }
            Primitive::SepConv3x3 => DartsOp::SepConv(SepConv::new(sep(3, 1), affine, device)),
            Primitive::SepConv5x5 => DartsOp::SepConv(SepConv::new(sep(5, 2), affine, device)),
            Primitive::SepConv7x7 => DartsOp::SepConv(SepConv::new(sep(7, 3), affine, device)),
            Primitive::DilConv3x3 => {
                DartsOp::DilConv(DilConv::new(sep(3, 2).dilation(2), affine, device))
            }
            Primitive::DilConv5x5 => {
                DartsOp::DilConv(DilConv::new(sep(5, 4).dilation(2), affine, device))
            }
            Primitive::Conv7x1x1x7 => {
                DartsOp::Conv7x1x1x7(Conv7x1x1x7::new(c, stride, affine, device))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::Distribution;
    type B = Autodiff<Flex>;

    #[test]
    fn names_round_trip() {
        for p in Primitive::ALL {
            assert_eq!(Primitive::from_name(p.name()).unwrap(), p);
        }
        assert!(matches!(
            Primitive::from_name("conv_9x9"),
            Err(OpError::UnknownOp { .. })
        ));
    }

    #[test]
    fn shapes_at_stride_1_and_2_for_every_op() {
        let dev = Default::default();
        for (h, w) in [(8usize, 8usize), (7, 7)] {
            let x = Tensor::<B, 4>::random([2, 4, h, w], Distribution::Default, &dev);
            for p in Primitive::ALL {
                for stride in [1, 2] {
                    if p == Primitive::SkipConnect && stride == 2 && h % 2 == 1 {
                        continue; // FactorizedReduce needs an even size (as in the reference)
                    }
                    let op = p.build::<B>(4, stride, OpOptions::SEARCH, &dev);
                    let y = op.forward(x.clone());
                    let expect = [2, 4, h.div_ceil(stride), w.div_ceil(stride)];
                    assert_eq!(y.dims(), expect, "{} stride {stride} on {h}x{w}", p.name());
                }
            }
        }
    }

    #[test]
    fn op_parameter_counts_match_reference_formulas() {
        let dev = Default::default();
        let c = 16;
        let count = |p: Primitive, affine| {
            crate::trainable_params(
                &p.build::<Flex>(
                    c,
                    1,
                    OpOptions {
                        affine,
                        bn_after_pool: false,
                    },
                    &dev,
                ),
                &[],
            )
        };
        // sep_conv_k: 2 * (C*k*k + C*C) (+ 2 * 2C affine)
        assert_eq!(count(Primitive::SepConv3x3, false), 2 * (c * 9 + c * c));
        assert_eq!(
            count(Primitive::SepConv5x5, true),
            2 * (c * 25 + c * c) + 4 * c
        );
        assert_eq!(count(Primitive::DilConv5x5, false), c * 25 + c * c);
        assert_eq!(count(Primitive::Conv7x1x1x7, true), 2 * 7 * c * c + 2 * c);
        assert_eq!(count(Primitive::MaxPool3x3, true), 0);
        let fr = Primitive::SkipConnect.build::<Flex>(c, 2, OpOptions::DERIVED, &dev);
        assert_eq!(crate::trainable_params(&fr, &[]), c * c + 2 * c);
    }

    #[test]
    fn pools_and_zero_values() {
        let dev = Default::default();
        let x = Tensor::<Flex, 4>::from_floats(
            [[[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]]],
            &dev,
        );
        let avg = Primitive::AvgPool3x3.build::<Flex>(
            1,
            1,
            OpOptions {
                affine: false,
                bn_after_pool: false,
            },
            &dev,
        );
        let y: Vec<f32> = avg.forward(x.clone()).into_data().to_vec().unwrap();
        // Corner: mean of 1,2,4,5 (padding excluded) = 3.
        assert!((y[0] - 3.0).abs() < 1e-6);
        assert!((y[4] - 5.0).abs() < 1e-6);
        let max = Primitive::MaxPool3x3.build::<Flex>(
            1,
            2,
            OpOptions {
                affine: false,
                bn_after_pool: false,
            },
            &dev,
        );
        let y: Vec<f32> = max.forward(x.clone() * -1.0).into_data().to_vec().unwrap();
        // Padding never wins a max: windows centred on (0,0), (0,2), (2,0), (2,2).
        assert_eq!(y, vec![-1.0, -2.0, -4.0, -5.0]);
        let z = Primitive::None.build::<Flex>(
            1,
            2,
            OpOptions {
                affine: false,
                bn_after_pool: false,
            },
            &dev,
        );
        assert_eq!(z.forward(x).dims(), [1, 1, 2, 2]);
    }
}
