//! Operations for the GPU backends (wgpu, CUDA), built to launch few kernels: the depthwise
//! convolution ([`depthwise_autodiff`], and after a ReLU read with its input,
//! [`relu_depthwise_autodiff`]), the 1×1 convolution ([`pointwise_autodiff`]), 2-D
//! pooling ([`pool_autodiff`]), training-mode BatchNorm ([`normalize_autodiff`]) and a mixed
//! op's weighted sum with the node's running sum ([`mix_autodiff`]) as custom autodiff
//! operations over the primitives of [`GpuOps`], and a launch-free join of the
//! parameters' autodiff graphs ([`join_graphs`]).
//!
//! [`GpuOps`]' provided methods are Burn's own operations, so everything here is generic over
//! the inner backend (the tests run it on `Flex` against Burn's operations); `CubeBackend` and
//! `Fusion<CubeBackend>` — the types `--device wgpu|cuda` use — override each primitive with a
//! single CubeCL kernel (`kernels::cube`): one launch per depthwise forward, input gradient,
//! 1×1 forward and input gradient, pooling forward and backward, BatchNorm forward and
//! backward, two for the depthwise and 1×1 weight gradients. Burn 0.21's own operations take
//! several launches each (pooling permutes to NHWC and back; a grouped convolution's weight
//! gradient loops over the groups, two slices, two copies, a direct convolution and a
//! `slice_assign` per channel; BatchNorm composed of tensor operations is ~35 launches), and on
//! a GPU a DARTS step costs what its launches cost.
//!
//! The dispatch enters these paths only when the caller's generic backend *is* one of the GPU
//! types (checked by `TypeId`); everything else keeps Burn's operation.

use super::cpu::{Pooling, Window};
use super::{is, same};
use burn::tensor::backend::Backend;
use burn::tensor::ops::{ConvOptions, FloatTensor};
use burn::tensor::{Shape, Tensor, TensorMetadata, TensorPrimitive};
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_autodiff::Autodiff;

/// Try `$try::<B, I, generics…>(inputs, args…)` for each GPU type `I` compiled in (`Wgpu`,
/// then `Cuda`; further generic arguments of `$try` in brackets after its name): return from
/// the calling function with its `Ok`, else go on with the inputs it gives back; evaluates to
/// the inputs no type took.
macro_rules! try_gpu_types {
    ($B:ty, $inputs:expr, $try:ident $([$($gen:tt),*])? $(, $arg:expr)*) => {{
        #[allow(unused_mut)]
        let mut inputs = $inputs;
        #[cfg(feature = "wgpu")]
        {
            match $try::<$B, burn::backend::Wgpu $($(, $gen)*)?>(inputs $(, $arg)*) {
                Ok(out) => return Ok(out),
                Err(back) => inputs = back,
            }
        }
        #[cfg(feature = "cuda")]
        {
            match $try::<$B, burn::backend::Cuda $($(, $gen)*)?>(inputs $(, $arg)*) {
                Ok(out) => return Ok(out),
                Err(back) => inputs = back,
            }
        }
        let _ = ($(&$arg,)*);
        inputs
    }};
}

fn options(g: &Window) -> ConvOptions<2> {
    ConvOptions::new(g.stride, g.pad, g.dil, g.c)
}

/// The primitive operations behind this module's autodiff ops, on the inner backend. The
/// provided methods are Burn's own operations (any backend can implement the trait with an
/// empty `impl`; the tests do for `Flex`); `CubeBackend` and `Fusion<CubeBackend>` (the wgpu
/// and CUDA types) override every one with a single CubeCL kernel launch (`kernels::cube`).
///
/// Tensors are `[n, c, h, w]`; `g` is the geometry (for pools `kh = kw`, symmetric stride and
/// padding, dilation 1).
pub trait GpuOps: Backend {
    /// Depthwise convolution `[n, c, h, w] ⊛ [c, 1, kh, kw]` → `[n, c, ho, wo]`.
    fn dw_forward(x: FloatTensor<Self>, w: FloatTensor<Self>, g: &Window) -> FloatTensor<Self> {
        Self::conv2d(x, w, None, options(g))
    }

    /// Input gradient of [`GpuOps::dw_forward`] for the output gradient `gy`.
    fn dw_backward_x(gy: FloatTensor<Self>, w: FloatTensor<Self>, g: &Window) -> FloatTensor<Self> {
        let device = Self::float_device(&gy);
        let x = Tensor::<Self, 4>::zeros([g.n, g.c, g.h, g.w], &device)
            .into_primitive()
            .tensor();
        Self::conv2d_x_backward(x, w, gy, options(g))
    }

    /// Weight gradient `[c, 1, kh, kw]` of [`GpuOps::dw_forward`].
    fn dw_backward_w(x: FloatTensor<Self>, gy: FloatTensor<Self>, g: &Window) -> FloatTensor<Self> {
        depthwise_weight_grad::<Self>(float(x), float(gy), g)
            .into_primitive()
            .tensor()
    }

    /// [`GpuOps::dw_forward`] of `max(x, 0)`: the ReLU before a DARTS depthwise convolution,
    /// read with the input (on the CubeCL backends, no ReLU tensor and no launch of its own).
    fn dw_relu_forward(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        g: &Window,
    ) -> FloatTensor<Self> {
        Self::dw_forward(Self::relu(x), w, g)
    }

    /// Input gradient of [`GpuOps::dw_relu_forward`] with respect to `x` (the ReLU's input):
    /// [`GpuOps::dw_backward_x`] where `x > 0`, zero elsewhere.
    fn dw_relu_backward_x(
        gy: FloatTensor<Self>,
        w: FloatTensor<Self>,
        x: FloatTensor<Self>,
        g: &Window,
    ) -> FloatTensor<Self> {
        let gx = float::<Self>(Self::dw_backward_x(gy, w, g));
        let off = float::<Self>(x).lower_equal_elem(0.0);
        gx.mask_fill(off, 0.0).into_primitive().tensor()
    }

    /// Weight gradient of [`GpuOps::dw_relu_forward`]: [`GpuOps::dw_backward_w`] of `max(x, 0)`.
    fn dw_relu_backward_w(
        x: FloatTensor<Self>,
        gy: FloatTensor<Self>,
        g: &Window,
    ) -> FloatTensor<Self> {
        Self::dw_backward_w(Self::relu(x), gy, g)
    }

    /// 1×1 convolution without bias: `x` `[n, ci, h, w]`, `w` `[co, ci, 1, 1]` →
    /// `[n, co, h, w]` (Burn's provided form: one broadcast matrix product).
    fn pw_forward(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        let (x, w) = (float::<Self>(x), float::<Self>(w));
        let [n, ci, h, wd] = x.dims();
        let co = w.dims()[0];
        let y = w.reshape([1, co, ci]).matmul(x.reshape([n, ci, h * wd]));
        y.reshape([n, co, h, wd]).into_primitive().tensor()
    }

    /// Input gradient `[n, ci, h, w]` of [`GpuOps::pw_forward`] for the output gradient `gy`
    /// `[n, co, h, w]`: `Wᵀ · g` per image.
    fn pw_backward_x(gy: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        let (gy, w) = (float::<Self>(gy), float::<Self>(w));
        let [n, co, h, wd] = gy.dims();
        let ci = w.dims()[1];
        let wt = w.reshape([1, co, ci]).swap_dims(1, 2);
        let gx = wt.matmul(gy.reshape([n, co, h * wd]));
        gx.reshape([n, ci, h, wd]).into_primitive().tensor()
    }

    /// Weight gradient `[co, ci, 1, 1]` of [`GpuOps::pw_forward`]: `Σ_n g_n · x_nᵀ`.
    fn pw_backward_w(x: FloatTensor<Self>, gy: FloatTensor<Self>) -> FloatTensor<Self> {
        let (x, gy) = (float::<Self>(x), float::<Self>(gy));
        let [n, ci, h, wd] = x.dims();
        let co = gy.dims()[1];
        let xt = x.reshape([n, ci, h * wd]).swap_dims(1, 2);
        let gw = gy.reshape([n, co, h * wd]).matmul(xt).sum_dim(0);
        gw.reshape([co, ci, 1, 1]).into_primitive().tensor()
    }

    /// Training-mode batch normalisation without affine parameters: `x̂ = (x − μ)/√(σ² + ε)`
    /// over `(n, h, w)` per channel; returns `x̂`, the batch mean `[c]` and the biased batch
    /// variance `[c]`.
    fn bn_forward(x: FloatTensor<Self>, epsilon: f64) -> [FloatTensor<Self>; 3] {
        let x = float::<Self>(x);
        let [n, c, h, w] = x.dims();
        let count = (n * h * w) as f64;
        let x3 = x.reshape([n, c, h * w]);
        let mean = channel_sum(x3.clone()) / count;
        let centered = x3 - mean.clone();
        let var = channel_sum(centered.clone().square()) / count;
        let inv = (var.clone() + epsilon).powf_scalar(-0.5);
        let y = (centered * inv).reshape([n, c, h, w]);
        [y, mean.reshape([1, c, 1, 1]), var.reshape([1, c, 1, 1])]
            .map(|t| t.into_primitive().tensor())
    }

    /// Input gradient of [`GpuOps::bn_forward`] from its output `x̂`, the batch variance and
    /// the output gradient: `(g − mean(g) − x̂·mean(g·x̂))/√(σ² + ε)`.
    fn bn_backward(
        xhat: FloatTensor<Self>,
        var: FloatTensor<Self>,
        gy: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        let (y, g) = (float::<Self>(xhat), float::<Self>(gy));
        let [n, c, h, w] = g.dims();
        let count = (n * h * w) as f64;
        let inv = (float::<Self>(var).reshape([1, c, 1]) + epsilon).powf_scalar(-0.5);
        let (y, g) = (y.reshape([n, c, h * w]), g.reshape([n, c, h * w]));
        let mean_g = channel_sum(g.clone()) / count;
        let mean_gy = channel_sum(g.clone() * y.clone()) / count;
        ((g - mean_g - y * mean_gy) * inv)
            .reshape([n, c, h, w])
            .into_primitive()
            .tensor()
    }

    /// Pooling forward `[n, c, h, w]` → `[n, c, ho, wo]`, and what the backward needs when it
    /// is not the input: `Some` (the max pool's arg-max indices, on the CubeCL backends) exactly
    /// when `kind` is [`Pooling::Max`] and [`GpuOps::pool_saves_argmax`].
    fn pool_forward(
        x: FloatTensor<Self>,
        g: &Window,
        kind: Pooling,
    ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>) {
        let (k, s, p) = ([g.kh, g.kw], g.stride, g.pad);
        let y = match kind {
            Pooling::Max => Self::max_pool2d(x, k, s, p, [1, 1], false),
            Pooling::AvgExcludePad => Self::avg_pool2d(x, k, s, p, false, false),
            Pooling::AvgIncludePad => Self::avg_pool2d(x, k, s, p, true, false),
        };
        (y, None)
    }

    /// Whether [`GpuOps::pool_forward`] returns the max pool's arg-max.
    fn pool_saves_argmax() -> bool {
        false
    }

    /// Input gradient of [`GpuOps::pool_forward`] (the max pool's goes to the first maximum
    /// of each window). `saved` is the forward's second output when it gave one, else the
    /// forward's input.
    fn pool_backward(
        saved: FloatTensor<Self>,
        gy: FloatTensor<Self>,
        g: &Window,
        kind: Pooling,
    ) -> FloatTensor<Self> {
        let x = saved;
        let (k, s, p) = ([g.kh, g.kw], g.stride, g.pad);
        match kind {
            Pooling::Max => {
                let idx = Self::max_pool2d_with_indices(x.clone(), k, s, p, [1, 1], false).indices;
                Self::max_pool2d_with_indices_backward(x, k, s, p, [1, 1], false, gy, idx).x_grad
            }
            Pooling::AvgExcludePad => Self::avg_pool2d_backward(x, gy, k, s, p, false, false),
            Pooling::AvgIncludePad => Self::avg_pool2d_backward(x, gy, k, s, p, true, false),
        }
    }

    /// A mixed op's weighted sum of its candidates' outputs `xs` (all of one shape, any rank)
    /// plus an optional accumulator: `acc + Σ_k w[offset + k] · xs[k]`, `w` `[ops]` (on the
    /// CubeCL backends one launch, instead of a stack of the candidates, a multiply and a
    /// reduction, and an add for the accumulator).
    fn mix_forward(
        xs: Vec<FloatTensor<Self>>,
        w: FloatTensor<Self>,
        offset: usize,
        acc: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        let shape = xs[0].shape();
        let w = flat::<Self>(w);
        let mut sum: Option<Tensor<Self, 1>> = None;
        for (k, x) in xs.into_iter().enumerate() {
            let term = flat::<Self>(x) * w.clone().slice(offset + k..offset + k + 1);
            sum = Some(match sum {
                Some(s) => s + term,
                None => term,
            });
        }
        let mut y = sum.expect("mix_forward: at least one candidate");
        if let Some(acc) = acc {
            y = flat::<Self>(acc) + y;
        }
        Self::float_reshape(y.into_primitive().tensor(), shape)
    }

    /// The candidates' gradients of [`GpuOps::mix_forward`]: `w[offset + k] · gy` for `k <
    /// count`.
    fn mix_backward_x(
        gy: FloatTensor<Self>,
        w: FloatTensor<Self>,
        offset: usize,
        count: usize,
    ) -> Vec<FloatTensor<Self>> {
        let shape = gy.shape();
        let (g, w) = (flat::<Self>(gy), flat::<Self>(w));
        (0..count)
            .map(|k| {
                let gx = g.clone() * w.clone().slice(offset + k..offset + k + 1);
                Self::float_reshape(gx.into_primitive().tensor(), shape.clone())
            })
            .collect()
    }

    /// The weight gradient `[ops]` of [`GpuOps::mix_forward`]: `Σ_e gy[e] · xs[k][e]` at `offset
    /// + k`, zero at every other op.
    fn mix_backward_w(
        xs: Vec<FloatTensor<Self>>,
        gy: FloatTensor<Self>,
        offset: usize,
        ops: usize,
    ) -> FloatTensor<Self> {
        let g = flat::<Self>(gy);
        let device = g.device();
        let count = xs.len();
        let mut parts = Vec::new();
        if offset > 0 {
            parts.push(Tensor::<Self, 1>::zeros([offset], &device));
        }
        parts.extend(xs.into_iter().map(|x| (flat::<Self>(x) * g.clone()).sum()));
        if ops > offset + count {
            parts.push(Tensor::zeros([ops - offset - count], &device));
        }
        Tensor::cat(parts, 0).into_primitive().tensor()
    }
}

/// `t` flattened to one dimension.
fn flat<I: Backend>(t: FloatTensor<I>) -> Tensor<I, 1> {
    let numel = t.shape().num_elements();
    Tensor::from_primitive(TensorPrimitive::Float(I::float_reshape(
        t,
        Shape::new([numel]),
    )))
}

#[cfg(feature = "flex")]
impl GpuOps for burn_flex::Flex {}

/// The weight gradient `[c, 1, kh, kw]` of a depthwise convolution with Burn's operations and
/// without a loop over the channels (the provided [`GpuOps::dw_backward_w`]):
///
/// `∂L/∂w[c, i, j] = Σ_n Σ_{ho, wo} x_pad[n, c, ho·s + i·d, wo·s + j·d] · g[n, c, ho, wo]`
///
/// is, for every `(n, c)`, a convolution of the plane `x[n, c]` with the "filter" `g[n, c]`
/// (`Ho × Wo`), stride `d` and dilation `s` (the original dilation and stride swap roles), the
/// same zero padding, cut to the first `kh × kw` outputs; as one grouped convolution with
/// `groups = n·c` (input `[1, n·c, h, w]`, filters `[n·c, 1, Ho, Wo]`) followed by a sum over
/// `n`.
pub fn depthwise_weight_grad<I: Backend>(
    x: Tensor<I, 4>,
    gy: Tensor<I, 4>,
    g: &Window,
) -> Tensor<I, 4> {
    let (ho, wo) = (g.ho(), g.wo());
    let planes = g.n * g.c;
    let x = x.reshape([1, planes, g.h, g.w]);
    let filters = gy.reshape([planes, 1, ho, wo]);
    // Original stride ↔ dilation swap roles; the padding is the same.
    let opts = ConvOptions::new(g.dil, g.pad, g.stride, planes);
    let full = burn::tensor::module::conv2d(x, filters, None, opts);
    let [_, _, kh_out, kw_out] = full.dims();
    debug_assert!(kh_out >= g.kh && kw_out >= g.kw);
    let cut = if kh_out == g.kh && kw_out == g.kw {
        full
    } else {
        full.slice([0..1, 0..planes, 0..g.kh, 0..g.kw])
    };
    cut.reshape([g.n, g.c, g.kh, g.kw])
        .sum_dim(0)
        .reshape([g.c, 1, g.kh, g.kw])
}

fn float<I: Backend>(t: FloatTensor<I>) -> Tensor<I, 4> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

#[derive(Debug)]
struct DepthwiseBackward;

impl<I: GpuOps> Backward<I, 2> for DepthwiseBackward {
    /// The input, the filters, the geometry and whether a ReLU precedes the convolution.
    type State = (FloatTensor<I>, FloatTensor<I>, Window, bool);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w] = ops.parents;
        let gy = grads.consume::<I>(&ops.node);
        let (x, w, g, relu) = ops.state;
        if let Some(node) = node_w {
            let gw = if relu {
                I::dw_relu_backward_w(x.clone(), gy.clone(), &g)
            } else {
                I::dw_backward_w(x.clone(), gy.clone(), &g)
            };
            grads.register::<I>(node.id, gw);
        }
        if let Some(node) = node_x {
            let gx = if relu {
                I::dw_relu_backward_x(gy, w, x, &g)
            } else {
                I::dw_backward_x(gy, w, &g)
            };
            grads.register::<I>(node.id, gx);
        }
    }
}

/// Depthwise convolution on `Autodiff<I>` (no checkpointing) with the backward above.
pub fn depthwise_autodiff<I: GpuOps>(
    x: Tensor<Autodiff<I>, 4>,
    w: Tensor<Autodiff<I>, 4>,
    g: Window,
) -> Tensor<Autodiff<I>, 4> {
    depthwise_op::<I>(x, w, g, false)
}

/// The depthwise convolution of `max(x, 0)` on `Autodiff<I>` as one custom op
/// ([`GpuOps::dw_relu_forward`] and its gradients): the ReLU costs no tensor and, on the CubeCL
/// backends, no launch; the backward keeps `x` instead of the ReLU's output.
pub fn relu_depthwise_autodiff<I: GpuOps>(
    x: Tensor<Autodiff<I>, 4>,
    w: Tensor<Autodiff<I>, 4>,
    g: Window,
) -> Tensor<Autodiff<I>, 4> {
    depthwise_op::<I>(x, w, g, true)
}

fn depthwise_op<I: GpuOps>(
    x: Tensor<Autodiff<I>, 4>,
    w: Tensor<Autodiff<I>, 4>,
    g: Window,
    relu: bool,
) -> Tensor<Autodiff<I>, 4> {
    let xa = x.into_primitive().tensor();
    let wa = w.into_primitive().tensor();
    let prep = DepthwiseBackward
        .prepare::<NoCheckpointing>([xa.node.clone(), wa.node.clone()])
        .compute_bound()
        .stateful();
    let (xp, wp) = (xa.primitive.clone(), wa.primitive.clone());
    let y = if relu {
        I::dw_relu_forward(xp, wp, &g)
    } else {
        I::dw_forward(xp, wp, &g)
    };
    let out = match prep {
        OpsKind::Tracked(prep) => prep.finish((xa.primitive, wa.primitive, g, relu), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// Run the depthwise op (after a ReLU with `relu`) on `Autodiff<I>` when `B` is that type,
/// the plain forward when `B` is `I` itself (inference); else give the inputs back.
#[cfg_attr(not(any(feature = "wgpu", feature = "cuda")), allow(dead_code))]
fn try_depthwise<B: Backend, I: GpuOps>(
    (x, w): (Tensor<B, 4>, Tensor<B, 4>),
    g: Window,
    relu: bool,
) -> Result<Tensor<B, 4>, (Tensor<B, 4>, Tensor<B, 4>)> {
    if is::<B, I>() {
        let (x, w) = (same::<_, Tensor<I, 4>>(x), same::<_, Tensor<I, 4>>(w));
        let (x, w) = (x.into_primitive().tensor(), w.into_primitive().tensor());
        let y = if relu {
            I::dw_relu_forward(x, w, &g)
        } else {
            I::dw_forward(x, w, &g)
        };
        return Ok(same(float::<I>(y)));
    }
    if !is::<B, Autodiff<I>>() {
        return Err((x, w));
    }
    let (x, w) = (same(x), same(w));
    Ok(same(depthwise_op::<I>(x, w, g, relu)))
}

/// Whether `depthwise` takes this module's backward on backend `B`: `Autodiff<Wgpu>` and
/// `Autodiff<Cuda>` (the types `--device wgpu|cuda` use) when those features are on.
pub fn is_gpu_autodiff<B: Backend>() -> bool {
    #[allow(unused_mut)]
    let mut yes = false;
    #[cfg(feature = "wgpu")]
    {
        yes |= is::<B, Autodiff<burn::backend::Wgpu>>();
    }
    #[cfg(feature = "cuda")]
    {
        yes |= is::<B, Autodiff<burn::backend::Cuda>>();
    }
    yes
}

/// Whether `B` is one of the GPU backends (`Wgpu`, `Cuda`, with or without `Autodiff`), for
/// choices that favour fewer, larger kernel launches there (`false` under `DARTS_KERNELS=burn`;
/// [`is_gpu_type`] says what the type is whatever the setting).
pub fn is_gpu<B: Backend>() -> bool {
    is_gpu_type::<B>() && !super::burn_ops_forced()
}

/// Whether `B` is `Wgpu` or `Cuda`, with or without `Autodiff` (the types `--device wgpu|cuda`
/// use, when those features are on).
pub fn is_gpu_type<B: Backend>() -> bool {
    #[allow(unused_mut)]
    let mut yes = is_gpu_autodiff::<B>();
    #[cfg(feature = "wgpu")]
    {
        yes |= is::<B, burn::backend::Wgpu>();
    }
    #[cfg(feature = "cuda")]
    {
        yes |= is::<B, burn::backend::Cuda>();
    }
    yes
}

/// Depthwise convolution (of `max(x, 0)` with `relu`) through [`GpuOps`] on the GPU backends
/// (with autodiff: the custom op of [`depthwise_autodiff`] / [`relu_depthwise_autodiff`];
/// without: the forward); `Err` gives the inputs back on every other backend.
pub(crate) fn depthwise<B: Backend>(
    x: Tensor<B, 4>,
    w: Tensor<B, 4>,
    g: Window,
    relu: bool,
) -> Result<Tensor<B, 4>, (Tensor<B, 4>, Tensor<B, 4>)> {
    Err(try_gpu_types!(B, (x, w), try_depthwise, g, relu))
}

#[derive(Debug)]
struct PointwiseBackward;

impl<I: GpuOps> Backward<I, 2> for PointwiseBackward {
    type State = (FloatTensor<I>, FloatTensor<I>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w] = ops.parents;
        let gy = grads.consume::<I>(&ops.node);
        let (x, w) = ops.state;
        if let Some(node) = node_w {
            grads.register::<I>(node.id, I::pw_backward_w(x, gy.clone()));
        }
        if let Some(node) = node_x {
            grads.register::<I>(node.id, I::pw_backward_x(gy, w));
        }
    }
}

/// 1×1 convolution (`x` `[n, ci, h, w]`, `w` `[co, ci, 1, 1]`) on `Autodiff<I>` (no
/// checkpointing) through [`GpuOps::pw_forward`] and its two gradients: on the CubeCL
/// backends one launch forward, one for the input gradient and two for the weight gradient.
pub fn pointwise_autodiff<I: GpuOps>(
    x: Tensor<Autodiff<I>, 4>,
    w: Tensor<Autodiff<I>, 4>,
) -> Tensor<Autodiff<I>, 4> {
    let xa = x.into_primitive().tensor();
    let wa = w.into_primitive().tensor();
    let prep = PointwiseBackward
        .prepare::<NoCheckpointing>([xa.node.clone(), wa.node.clone()])
        .compute_bound()
        .stateful();
    let y = I::pw_forward(xa.primitive.clone(), wa.primitive.clone());
    let out = match prep {
        OpsKind::Tracked(prep) => prep.finish((xa.primitive, wa.primitive), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

#[cfg_attr(not(any(feature = "wgpu", feature = "cuda")), allow(dead_code))]
fn try_pointwise<B: Backend, I: GpuOps>(
    (x, w): (Tensor<B, 4>, Tensor<B, 4>),
) -> Result<Tensor<B, 4>, (Tensor<B, 4>, Tensor<B, 4>)> {
    if is::<B, I>() {
        let (x, w) = (same::<_, Tensor<I, 4>>(x), same::<_, Tensor<I, 4>>(w));
        let y = I::pw_forward(x.into_primitive().tensor(), w.into_primitive().tensor());
        return Ok(same(float::<I>(y)));
    }
    if !is::<B, Autodiff<I>>() {
        return Err((x, w));
    }
    let (x, w) = (same(x), same(w));
    Ok(same(pointwise_autodiff::<I>(x, w)))
}

/// 1×1 convolution through [`GpuOps`] on the GPU backends (with or without autodiff); `Err`
/// gives the inputs back on every other backend.
pub(crate) fn pointwise<B: Backend>(
    x: Tensor<B, 4>,
    w: Tensor<B, 4>,
) -> Result<Tensor<B, 4>, (Tensor<B, 4>, Tensor<B, 4>)> {
    Err(try_gpu_types!(B, (x, w), try_pointwise))
}

#[derive(Debug)]
struct PoolBackward;

impl<I: GpuOps> Backward<I, 1> for PoolBackward {
    /// The forward's saved tensor (or its input), the geometry and the kind.
    type State = (FloatTensor<I>, Window, Pooling);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let gy = grads.consume::<I>(&ops.node);
        let Some(node) = node_x else { return };
        let (x, g, kind) = ops.state;
        grads.register::<I>(node.id, I::pool_backward(x, gy, &g, kind));
    }
}

/// 2-D pooling on `Autodiff<I>` (no checkpointing) through [`GpuOps`]: one launch forward,
/// one backward (the max pool recomputes each window's arg-max instead of storing indices).
pub fn pool_autodiff<I: GpuOps>(
    x: Tensor<Autodiff<I>, 4>,
    g: Window,
    kind: Pooling,
) -> Tensor<Autodiff<I>, 4> {
    let xa = x.into_primitive().tensor();
    let prep = PoolBackward
        .prepare::<NoCheckpointing>([xa.node.clone()])
        .compute_bound()
        .stateful();
    let (y, saved) = I::pool_forward(xa.primitive.clone(), &g, kind);
    let out = match prep {
        OpsKind::Tracked(prep) => prep.finish((saved.unwrap_or(xa.primitive), g, kind), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

#[cfg_attr(not(any(feature = "wgpu", feature = "cuda")), allow(dead_code))]
fn try_pool<B: Backend, I: GpuOps>(
    x: Tensor<B, 4>,
    g: Window,
    kind: Pooling,
) -> Result<Tensor<B, 4>, Tensor<B, 4>> {
    if is::<B, I>() {
        let x = same::<_, Tensor<I, 4>>(x);
        let (y, _) = I::pool_forward(x.into_primitive().tensor(), &g, kind);
        return Ok(same(float::<I>(y)));
    }
    if !is::<B, Autodiff<I>>() {
        return Err(x);
    }
    Ok(same(pool_autodiff::<I>(same(x), g, kind)))
}

/// Pooling through the CubeCL kernels on the GPU backends (with or without autodiff); `Err`
/// gives the input back on every other backend.
pub(crate) fn pool<B: Backend>(
    x: Tensor<B, 4>,
    g: Window,
    kind: Pooling,
) -> Result<Tensor<B, 4>, Tensor<B, 4>> {
    Err(try_gpu_types!(B, x, try_pool, g, kind))
}

#[derive(Debug)]
struct JoinBackward;

impl<I: Backend> Backward<I, 2> for JoinBackward {
    type State = ();

    /// Never reached: the joining nodes are dropped at once and are no loss's ancestors.
    fn backward(self, _: Ops<(), 2>, _: &mut Gradients, _: &mut Checkpointer) {}
}

/// Merge the autodiff graphs of `tensors` by a balanced tree of binary no-op operations (each
/// output is its first input's primitive: no kernel launch, no copy).
pub fn join_graphs_autodiff<I: Backend>(tensors: Vec<Tensor<Autodiff<I>, 1>>) {
    let mut level: Vec<_> = tensors
        .into_iter()
        .map(|t| t.into_primitive().tensor())
        .collect();
    while level.len() > 1 {
        let mut next = Vec::with_capacity(level.len().div_ceil(2));
        let mut it = level.into_iter();
        while let Some(a) = it.next() {
            match it.next() {
                Some(b) => {
                    let out = a.primitive.clone();
                    next.push(
                        JoinBackward
                            .prepare::<NoCheckpointing>([a.node.clone(), b.node.clone()])
                            .compute_bound()
                            .stateless(out),
                    );
                }
                None => next.push(a),
            }
        }
        level = next;
    }
}

#[cfg_attr(not(any(feature = "wgpu", feature = "cuda")), allow(dead_code))]
fn try_join<B: Backend, I: Backend>(tensors: Vec<Tensor<B, 1>>) -> Result<(), Vec<Tensor<B, 1>>> {
    if !is::<B, Autodiff<I>>() {
        return Err(tensors);
    }
    join_graphs_autodiff::<I>(tensors.into_iter().map(same).collect());
    Ok(())
}

/// Join the autodiff graphs of `tensors` without any kernel launch on the GPU autodiff
/// backends (where `cat` of one-element views costs a slice and a copy launch per parameter);
/// `Err` gives the tensors back on every other backend.
pub fn join_graphs<B: Backend>(tensors: Vec<Tensor<B, 1>>) -> Result<(), Vec<Tensor<B, 1>>> {
    if super::burn_ops_forced() {
        return Err(tensors);
    }
    Err(try_gpu_types!(B, tensors, try_join))
}

/// Sum of `[n, c, l]` over dimensions 0 and 2, as `[1, c, 1]`.
fn channel_sum<I: Backend>(t: Tensor<I, 3>) -> Tensor<I, 3> {
    t.sum_dim(2).sum_dim(0)
}

#[derive(Debug)]
struct NormalizeBackward;

impl<I: GpuOps> Backward<I, 1> for NormalizeBackward {
    /// The normalised output `x̂`, the batch variance `[1, c, 1, 1]` and ε.
    type State = (FloatTensor<I>, FloatTensor<I>, f64);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let gy = grads.consume::<I>(&ops.node);
        let Some(node) = node_x else { return };
        let (y, var, epsilon) = ops.state;
        grads.register::<I>(node.id, I::bn_backward(y, var, gy, epsilon));
    }
}

/// Training-mode batch normalisation without affine parameters on `Autodiff<I>`, as one custom
/// operation through [`GpuOps::bn_forward`] / [`GpuOps::bn_backward`] (on the CubeCL backends
/// one kernel launch each way; Burn's composed operations take ~35). Returns `x̂` and the
/// batch mean and (biased) variance for the running statistics.
pub fn normalize_autodiff<I: GpuOps>(
    x: Tensor<Autodiff<I>, 4>,
    epsilon: f64,
) -> (Tensor<Autodiff<I>, 4>, Tensor<I, 1>, Tensor<I, 1>) {
    let xa = x.into_primitive().tensor();
    let prep = NormalizeBackward
        .prepare::<NoCheckpointing>([xa.node.clone()])
        .compute_bound()
        .stateful();
    let c = float::<I>(xa.primitive.clone()).dims()[1];
    let [y, mean, var] = I::bn_forward(xa.primitive, epsilon);
    let out = match prep {
        OpsKind::Tracked(prep) => prep.finish((y.clone(), var.clone(), epsilon), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    (
        Tensor::from_primitive(TensorPrimitive::Float(out)),
        float::<I>(mean).reshape([c]),
        float::<I>(var).reshape([c]),
    )
}

/// The result of [`normalize`]: `x̂` and the batch mean and variance (detached, on `B`).
pub(crate) type Normalized<B> = (Tensor<B, 4>, Tensor<B, 1>, Tensor<B, 1>);

#[cfg_attr(not(any(feature = "wgpu", feature = "cuda")), allow(dead_code))]
fn try_normalize<B: Backend, I: GpuOps>(
    x: Tensor<B, 4>,
    epsilon: f64,
) -> Result<Normalized<B>, Tensor<B, 4>> {
    if !is::<B, Autodiff<I>>() {
        return Err(x);
    }
    let (y, mean, var) = normalize_autodiff::<I>(same(x), epsilon);
    let lift = |t: Tensor<I, 1>| Tensor::<Autodiff<I>, 1>::from_inner(t);
    Ok((same(y), same(lift(mean)), same(lift(var))))
}

/// Training-mode normalisation with the fused backward on the GPU autodiff backends; `Err`
/// gives the input back on every other backend.
pub(crate) fn normalize<B: Backend>(
    x: Tensor<B, 4>,
    epsilon: f64,
) -> Result<Normalized<B>, Tensor<B, 4>> {
    Err(try_gpu_types!(B, x, try_normalize, epsilon))
}

/// The most candidates [`mix_autodiff`] (and so `kernels::weighted_sum`) takes as one
/// operation; more go through Burn's operations.
pub const MIX_MAX: usize = 8;

#[derive(Debug)]
struct MixBackward<const N: usize>;

impl<I: GpuOps, const N: usize> Backward<I, N> for MixBackward<N> {
    /// The candidates' outputs (kept only when the weights need a gradient), the weights, the
    /// offset of the first candidate's weight, and the numbers of ops and of candidates. The
    /// parents are the candidates, the weights and, when there is one, the accumulator.
    type State = (Vec<FloatTensor<I>>, FloatTensor<I>, usize, usize, usize);

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let gy = grads.consume::<I>(&ops.node);
        let (xs, w, offset, n_ops, count) = ops.state;
        let parents = ops.parents;
        if let Some(node) = &parents[count] {
            let gw = I::mix_backward_w(xs, gy.clone(), offset, n_ops);
            grads.register::<I>(node.id, gw);
        }
        if parents[..count].iter().any(Option::is_some) {
            let gxs = I::mix_backward_x(gy.clone(), w, offset, count);
            for (parent, gx) in parents[..count].iter().zip(gxs) {
                if let Some(node) = parent {
                    grads.register::<I>(node.id, gx);
                }
            }
        }
        if N > count + 1 {
            if let Some(node) = &parents[count + 1] {
                grads.register::<I>(node.id, gy);
            }
        }
    }
}

/// [`mix_autodiff`] with `N` parents (`xs.len() + 1`, plus one with an accumulator).
fn mix_autodiff_n<I: GpuOps, const N: usize>(
    xs: Vec<FloatTensor<Autodiff<I>>>,
    w: FloatTensor<Autodiff<I>>,
    offset: usize,
    acc: Option<FloatTensor<Autodiff<I>>>,
) -> FloatTensor<Autodiff<I>> {
    let count = xs.len();
    let mut nodes: Vec<_> = xs.iter().map(|t| t.node.clone()).collect();
    nodes.push(w.node.clone());
    nodes.extend(acc.iter().map(|t| t.node.clone()));
    let Ok(nodes) = <[_; N]>::try_from(nodes) else {
        unreachable!("mix_autodiff_n called with N = candidates + 1 (+ 1 with an accumulator)")
    };
    let prep = MixBackward::<N>
        .prepare::<NoCheckpointing>(nodes)
        .compute_bound()
        .stateful();
    let n_ops = w.primitive.shape().num_elements();
    let keep = !w.node.requirement.is_none();
    let xs: Vec<_> = xs.into_iter().map(|t| t.primitive).collect();
    let y = I::mix_forward(
        xs.clone(),
        w.primitive.clone(),
        offset,
        acc.map(|t| t.primitive),
    );
    match prep {
        OpsKind::Tracked(prep) => {
            let kept = if keep { xs } else { Vec::new() };
            prep.finish((kept, w.primitive, offset, n_ops, count), y)
        }
        OpsKind::UnTracked(prep) => prep.finish(y),
    }
}

/// A mixed op's weighted sum `acc + Σ_k w[offset + k] · xs[k]` on `Autodiff<I>` (no
/// checkpointing) as one custom operation through [`GpuOps::mix_forward`] and its gradients: on
/// the CubeCL backends one launch forward, one for every candidate's gradient together and two
/// for the weights' gradient. `1 ≤ xs.len() ≤ MIX_MAX`.
pub fn mix_autodiff<I: GpuOps, const D: usize>(
    xs: Vec<Tensor<Autodiff<I>, D>>,
    w: Tensor<Autodiff<I>, 1>,
    offset: usize,
    acc: Option<Tensor<Autodiff<I>, D>>,
) -> Tensor<Autodiff<I>, D> {
    let xs: Vec<_> = xs
        .into_iter()
        .map(|t| t.into_primitive().tensor())
        .collect();
    let w = w.into_primitive().tensor();
    let acc = acc.map(|t| t.into_primitive().tensor());
    let parents = xs.len() + 1 + usize::from(acc.is_some());
    let y = match parents {
        2 => mix_autodiff_n::<I, 2>(xs, w, offset, acc),
        3 => mix_autodiff_n::<I, 3>(xs, w, offset, acc),
        4 => mix_autodiff_n::<I, 4>(xs, w, offset, acc),
        5 => mix_autodiff_n::<I, 5>(xs, w, offset, acc),
        6 => mix_autodiff_n::<I, 6>(xs, w, offset, acc),
        7 => mix_autodiff_n::<I, 7>(xs, w, offset, acc),
        8 => mix_autodiff_n::<I, 8>(xs, w, offset, acc),
        9 => mix_autodiff_n::<I, 9>(xs, w, offset, acc),
        10 => mix_autodiff_n::<I, 10>(xs, w, offset, acc),
        _ => panic!("mix_autodiff: 1 to {MIX_MAX} candidates, got {}", xs.len()),
    };
    Tensor::from_primitive(TensorPrimitive::Float(y))
}

/// The inputs of [`mix`]: the candidates' outputs, the weights and the accumulator.
pub(crate) type MixInputs<B, const D: usize> =
    (Vec<Tensor<B, D>>, Tensor<B, 1>, Option<Tensor<B, D>>);

#[cfg_attr(not(any(feature = "wgpu", feature = "cuda")), allow(dead_code))]
fn try_mix<B: Backend, I: GpuOps, const D: usize>(
    (xs, w, acc): MixInputs<B, D>,
    offset: usize,
) -> Result<Tensor<B, D>, MixInputs<B, D>> {
    if is::<B, I>() {
        let xs = xs
            .into_iter()
            .map(|t| same::<_, Tensor<I, D>>(t).into_primitive().tensor())
            .collect();
        let w = same::<_, Tensor<I, 1>>(w).into_primitive().tensor();
        let acc = acc.map(|t| same::<_, Tensor<I, D>>(t).into_primitive().tensor());
        let y = I::mix_forward(xs, w, offset, acc);
        return Ok(same(Tensor::<I, D>::from_primitive(
            TensorPrimitive::Float(y),
        )));
    }
    if !is::<B, Autodiff<I>>() {
        return Err((xs, w, acc));
    }
    let xs = xs.into_iter().map(same).collect();
    Ok(same(mix_autodiff::<I, D>(
        xs,
        same(w),
        offset,
        acc.map(same),
    )))
}

/// A mixed op's weighted sum (see [`mix_autodiff`]) on the GPU backends, with or without
/// autodiff, for 1 to [`MIX_MAX`] candidates; `Err` gives the inputs back on every other
/// backend.
pub(crate) fn mix<B: Backend, const D: usize>(
    xs: Vec<Tensor<B, D>>,
    w: Tensor<B, 1>,
    offset: usize,
    acc: Option<Tensor<B, D>>,
) -> Result<Tensor<B, D>, MixInputs<B, D>> {
    if xs.is_empty() || xs.len() > MIX_MAX {
        return Err((xs, w, acc));
    }
    Err(try_gpu_types!(B, (xs, w, acc), try_mix[D], offset))
}
