//! Kernels for the operations DARTS is made of and Burn runs slowly: depthwise convolution
//! (Burn's backward loops over the groups on every backend), 1×1 convolution and 3×3 pooling.
//!
//! [`depthwise_conv2d`], [`pointwise_conv2d`] and [`pool2d`] are generic over any backend.
//! * On `Flex` and `Autodiff<Flex>` (crate feature `flex`, on by default in the `darts` crate)
//!   they run the plain-slice kernels of [`cpu`], with a backward of their own (one pass over the
//!   planes for the input and weight gradients); so do training-mode BatchNorm
//!   ([`crate::BatchNorm2d`]: one op with the affine part folded in and a closed-form backward)
//!   and [`relu`].
//! * On `Wgpu` and `Cuda`, with or without `Autodiff` (features `wgpu`, `cuda`), the depthwise
//!   convolution and pooling run CubeCL kernels of their own (one launch forward, one or two
//!   backward, see [`gpu`]), and training-mode BatchNorm ([`crate::BatchNorm2d`]) is one custom
//!   op with one kernel each way ([`gpu::normalize_autodiff`]).
//! * The 1×1 convolution is one batched matrix product on every backend (its backward is two
//!   more), never Burn's general convolution, whose weight gradient is a serial fallback on the
//!   GPU backends.
//! * Everything else is Burn's `conv2d` with `groups = channels` and Burn's pooling.
//!
//! Tests check every path against the others and against finite differences.

pub mod cpu;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod cube;
#[cfg(feature = "flex")]
mod flex;
pub mod gpu;

pub use cpu::{Pooling, Window};

use burn::tensor::module::{avg_pool2d, conv2d, max_pool2d};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{backend::Backend, Tensor};

/// Move `a` into type `T` when it *is* a `T` (same `TypeId`), else give it back: how the
/// generic entry points hand a `Tensor<B, _>` to the backend-specific paths (`flex`, `gpu`).
#[cfg_attr(
    not(any(feature = "flex", feature = "wgpu", feature = "cuda")),
    allow(dead_code)
)]
fn cast<A: 'static, T: 'static>(a: A) -> Result<T, A> {
    let mut slot = Some(a);
    match (&mut slot as &mut dyn std::any::Any).downcast_mut::<Option<T>>() {
        Some(t) => Ok(t.take().expect("filled above")),
        None => Err(slot.expect("untouched")),
    }
}

/// `a` as `T`, where the caller has checked by `TypeId` that `A` is `T`.
fn same<A: 'static, T: 'static>(a: A) -> T {
    match cast(a) {
        Ok(t) => t,
        Err(_) => unreachable!("types compared by TypeId before the cast"),
    }
}

/// Whether `A` is `T`.
fn is<A: 'static, T: 'static>() -> bool {
    std::any::TypeId::of::<A>() == std::any::TypeId::of::<T>()
}

/// `DARTS_KERNELS=burn` in the environment (read once): every entry point here takes Burn's
/// own operation on every backend, as before these kernels existed — for before/after
/// measurements and for ruling the kernels out when something looks wrong.
pub fn burn_ops_forced() -> bool {
    static FORCED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FORCED.get_or_init(|| std::env::var("DARTS_KERNELS").is_ok_and(|v| v == "burn"))
}

/// The result of [`cpu_batch_norm`]: `y` and the batch mean and biased variance (`[c]`,
/// untracked).
pub(crate) type BatchNormed<B> = (Tensor<B, 4>, Tensor<B, 1>, Tensor<B, 1>);

/// Training-mode batch normalisation of `x` with batch statistics and an optional affine part
/// (`(γ, β)`), as one CPU operation with a closed-form backward on `Flex` / `Autodiff<Flex>`
/// ([`cpu::batch_norm_forward`], [`cpu::batch_norm_backward`]). Returns `y` and the batch mean
/// and biased variance (`[c]`, untracked); `Err` gives `x` back on every other backend, for
/// element types other than `f32`/`f64`, and under `DARTS_KERNELS=burn`.
#[cfg_attr(not(feature = "flex"), allow(unused_variables))]
pub(crate) fn cpu_batch_norm<B: Backend>(
    x: Tensor<B, 4>,
    affine: Option<(Tensor<B, 1>, Tensor<B, 1>)>,
    epsilon: f64,
) -> Result<BatchNormed<B>, Tensor<B, 4>> {
    #[cfg(feature = "flex")]
    if !burn_ops_forced() {
        return flex::batch_norm(x, affine, epsilon);
    }
    Err(x)
}

/// `max(x, 0)`: on `Flex` / `Autodiff<Flex>` one pass each way ([`cpu::relu_forward`],
/// [`cpu::relu_backward`]; Burn's builds a mask and fills it, twice as many passes), Burn's
/// `relu` on every other backend (where fusion merges it with its neighbours).
pub fn relu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    #[cfg(feature = "flex")]
    let x = if burn_ops_forced() {
        x
    } else {
        match flex::relu(x) {
            Ok(y) => return y,
            Err(x) => x,
        }
    };
    burn::tensor::activation::relu(x)
}

/// Whether [`depthwise_conv2d`] and [`pool2d`] run this crate's CPU kernels on backend `B`
/// (`Flex` or `Autodiff<Flex>` with the `flex` feature, `f32`/`f64` data) rather than Burn's
/// own operations.
pub fn uses_cpu_kernels<B: Backend>() -> bool {
    #[cfg(feature = "flex")]
    {
        flex::is_flex::<B>()
    }
    #[cfg(not(feature = "flex"))]
    {
        false
    }
}

/// Depthwise 2-D convolution without bias: `x` `[n, c, h, w]`, `weight` `[c, 1, kh, kw]`
/// (one filter per channel, groups = `c`), symmetric zero padding.
///
/// # Panics
/// If the shapes do not describe a depthwise convolution (a programming error: the layers of
/// this crate build them consistently).
pub fn depthwise_conv2d<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
) -> Tensor<B, 4> {
    depthwise(x, weight, stride, padding, dilation, false)
}

/// [`depthwise_conv2d`] of `max(x, 0)`, the ReLU → depthwise pair every DARTS separable and
/// dilated convolution starts with. On the wgpu/CUDA types one custom op whose kernels read
/// the ReLU with their input ([`gpu::relu_depthwise_autodiff`]: no ReLU tensor kept for the
/// backward, no launch of its own either way); elsewhere [`relu`] then [`depthwise_conv2d`].
///
/// # Panics
/// As [`depthwise_conv2d`].
pub fn relu_depthwise_conv2d<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
) -> Tensor<B, 4> {
    depthwise(x, weight, stride, padding, dilation, true)
}

/// [`depthwise_conv2d`], of `max(x, 0)` when `with_relu`: the GPU types take the ReLU into
/// their op, every other backend applies [`relu`] first.
fn depthwise<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
    with_relu: bool,
) -> Tensor<B, 4> {
    let [n, c, h, w] = x.dims();
    let [co, ci, kh, kw] = weight.dims();
    assert!(
        co == c && ci == 1,
        "depthwise_conv2d: weight {:?} for {c} channels",
        weight.dims()
    );
    let g = Window {
        n,
        c,
        h,
        w,
        kh,
        kw,
        stride,
        pad: padding,
        dil: dilation,
    };
    let relu_first = |x| if with_relu { relu(x) } else { x };
    if burn_ops_forced() {
        let opts = ConvOptions::new(stride, padding, dilation, c);
        return conv2d(relu_first(x), weight, None, opts);
    }
    let (x, weight) = if g.is_valid() {
        match gpu::depthwise(x, weight, g, with_relu) {
            Ok(y) => return y,
            Err(back) => back,
        }
    } else {
        (x, weight)
    };
    let x = relu_first(x);
    #[cfg(feature = "flex")]
    let (x, weight) = if g.is_valid() {
        match flex::depthwise(x, weight, g) {
            Ok(y) => return y,
            Err(back) => back,
        }
    } else {
        (x, weight)
    };
    conv2d(
        x,
        weight,
        None,
        ConvOptions::new(stride, padding, dilation, c),
    )
}

/// A mixed op's weighted sum of its candidates' outputs `xs` (one shape, any rank), with the
/// candidate `k`'s weight at `w[ops[k]]`, plus an optional accumulator (the sum of a node's
/// edges so far): `acc + Σ_k w[ops[k]] · xs[k]`.
///
/// On the wgpu/CUDA types, when `ops` are consecutive and at most [`gpu::MIX_MAX`], it is one
/// custom operation ([`gpu::mix_autodiff`]): one kernel launch forward, and backward one for
/// every candidate's gradient together and two for the weights' gradient — instead of a
/// multiply and an add per candidate (or a stack of the candidates, a multiply and a
/// reduction), each a launch, and a copy of every candidate for the stack. Elsewhere it is
/// Burn's operations in order, each candidate taken from `xs` as it is needed (so the
/// candidates of an edge are computed and weighted one after the other, as before): a
/// row-broadcast multiply by its weight, a running sum, then `acc +` the sum.
///
/// # Panics
/// When `xs` is empty, `ops` is not as long as `xs`, an index in `ops` is out of `w`'s range,
/// or the candidates and the accumulator differ in shape.
pub fn weighted_sum<B: Backend, const D: usize>(
    xs: impl IntoIterator<Item = Tensor<B, D>>,
    w: Tensor<B, 1>,
    ops: &[usize],
    acc: Option<Tensor<B, D>>,
) -> Tensor<B, D> {
    let consecutive = ops.windows(2).all(|p| p[1] == p[0] + 1);
    if consecutive && !ops.is_empty() && ops.len() <= gpu::MIX_MAX && gpu::is_gpu::<B>() {
        let xs: Vec<_> = xs.into_iter().collect();
        assert_eq!(
            xs.len(),
            ops.len(),
            "weighted_sum: one op index per candidate"
        );
        // The kernels index every input by the output's elements: one shape for all.
        let dims = xs[0].dims();
        assert!(
            xs.iter().all(|x| x.dims() == dims) && acc.iter().all(|a| a.dims() == dims),
            "weighted_sum: candidates and accumulator of one shape"
        );
        assert!(
            ops[ops.len() - 1] < w.dims()[0],
            "weighted_sum: op index {} for {} weights",
            ops[ops.len() - 1],
            w.dims()[0]
        );
        return match gpu::mix(xs, w, ops[0], acc) {
            Ok(y) => y,
            Err((xs, w, acc)) => weighted_sum_burn(xs, w, ops, acc),
        };
    }
    weighted_sum_burn(xs, w, ops, acc)
}

fn weighted_sum_burn<B: Backend, const D: usize>(
    xs: impl IntoIterator<Item = Tensor<B, D>>,
    w: Tensor<B, 1>,
    ops: &[usize],
    acc: Option<Tensor<B, D>>,
) -> Tensor<B, D> {
    let mut sum: Option<Tensor<B, D>> = None;
    let mut taken = 0;
    for (x, &k) in xs.into_iter().zip(ops) {
        let shape = x.dims();
        let numel: usize = shape.iter().product();
        // [1, numel] · [1, 1]: the row-broadcast path, much faster on CPU backends than a
        // rank-D broadcast of a [1, ..., 1] tensor.
        let wk = w.clone().slice(k..k + 1).reshape([1, 1]);
        let y = (x.reshape([1, numel]) * wk).reshape(shape);
        sum = Some(match sum {
            Some(s) => s + y,
            None => y,
        });
        taken += 1;
    }
    assert!(
        taken > 0 && taken == ops.len(),
        "weighted_sum: one op index per candidate, at least one candidate"
    );
    let sum = sum.expect("checked above");
    match acc {
        Some(acc) => acc + sum,
        None => sum,
    }
}

/// 1×1 convolution without bias, stride 1, no padding: `x` `[n, c_in, h, w]`, `weight`
/// `[c_out, c_in, 1, 1]`, as one batched matrix product `W · X_n` (its backward is two more),
/// never Burn's general convolution, whose weight gradient is a serial per-thread reduction on
/// the GPU backends. On `Flex` it is a custom op over `gemm` (the weight enters the autodiff
/// graph directly); on the wgpu/CUDA types a custom op over CubeCL kernels of this crate
/// ([`gpu::pointwise_autodiff`]); elsewhere Burn's broadcasting `matmul`.
pub fn pointwise_conv2d<B: Backend>(x: Tensor<B, 4>, weight: Tensor<B, 4>) -> Tensor<B, 4> {
    let [n, c_in, h, w] = x.dims();
    let [c_out, ci, kh, kw] = weight.dims();
    assert!(
        ci == c_in && kh == 1 && kw == 1,
        "pointwise_conv2d: weight {:?} for {c_in} channels",
        weight.dims()
    );
    if burn_ops_forced() {
        return conv2d(x, weight, None, ConvOptions::new([1, 1], [0, 0], [1, 1], 1));
    }
    #[cfg(feature = "flex")]
    let (x, weight) = match flex::pointwise(x, weight) {
        Ok(y) => return y,
        Err(back) => back,
    };
    let (x, weight) = match gpu::pointwise(x, weight) {
        Ok(y) => return y,
        Err(back) => back,
    };
    pointwise_matmul(x, weight, [n, c_in, h, w], c_out)
}

/// `[1, c_out, c_in] × [n, c_in, h·w]` → `[n, c_out, h, w]`.
fn pointwise_matmul<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    [n, c_in, h, w]: [usize; 4],
    c_out: usize,
) -> Tensor<B, 4> {
    let w3 = weight.reshape([1, c_out, c_in]);
    let x3 = x.reshape([n, c_in, h * w]);
    w3.matmul(x3).reshape([n, c_out, h, w])
}

/// 2-D pooling of `[n, c, h, w]` with a `k×k` window, stride and symmetric padding.
/// [`Pooling::Max`] treats padding as −∞; [`Pooling::AvgExcludePad`] divides by the number
/// of window positions inside the input (PyTorch's `count_include_pad=False`, the DARTS
/// `avg_pool_3x3`); [`Pooling::AvgIncludePad`] by `k²`.
pub fn pool2d<B: Backend>(
    x: Tensor<B, 4>,
    kind: Pooling,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Tensor<B, 4> {
    let [n, c, h, w] = x.dims();
    let g = Window {
        n,
        c,
        h,
        w,
        kh: kernel,
        kw: kernel,
        stride: [stride, stride],
        pad: [padding, padding],
        dil: [1, 1],
    };
    #[cfg(feature = "flex")]
    let x = if g.is_valid() && 2 * padding <= kernel && !burn_ops_forced() {
        match flex::pool(x, g, kind) {
            Ok(y) => return y,
            Err(back) => back,
        }
    } else {
        x
    };
    let x = if g.is_valid() && 2 * padding <= kernel && !burn_ops_forced() {
        match gpu::pool(x, g, kind) {
            Ok(y) => return y,
            Err(back) => back,
        }
    } else {
        x
    };
    let (k, s, p) = ([kernel; 2], [stride; 2], [padding; 2]);
    match kind {
        Pooling::Max => max_pool2d(x, k, s, p, [1, 1], false),
        Pooling::AvgExcludePad => avg_pool2d(x, k, s, p, false, false),
        Pooling::AvgIncludePad => avg_pool2d(x, k, s, p, true, false),
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::{Distribution, TensorData};

    type Ad = Autodiff<Flex>;

    #[test]
    fn flex_takes_the_kernels_other_backends_do_not() {
        assert!(uses_cpu_kernels::<Flex>());
        assert!(uses_cpu_kernels::<Ad>());
        // Another checkpointing strategy is another type: Burn's operations.
        assert!(!uses_cpu_kernels::<
            Autodiff<Flex, burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing>,
        >());
    }

    /// Burn's own operations, bypassing the kernels.
    fn reference_dw<B: Backend>(
        x: Tensor<B, 4>,
        w: Tensor<B, 4>,
        s: usize,
        p: usize,
        d: usize,
    ) -> Tensor<B, 4> {
        let c = x.dims()[1];
        conv2d(x, w, None, ConvOptions::new([s, s], [p, p], [d, d], c))
    }

    fn close(a: TensorData, b: TensorData, tol: f64, what: &str) {
        let a = a.to_vec::<f32>().unwrap();
        let b = b.to_vec::<f32>().unwrap();
        assert_eq!(a.len(), b.len(), "{what}");
        let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs())) as f64;
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!(
                ((x - y).abs() as f64) <= tol * scale,
                "{what}[{i}]: {x} vs {y}"
            );
        }
    }

    #[test]
    fn depthwise_on_flex_agrees_with_burns_grouped_conv_forward_and_backward() {
        let dev = Default::default();
        for (k, p, d, s) in [
            (3, 1, 1, 1),
            (3, 1, 1, 2),
            (5, 2, 1, 2),
            (3, 2, 2, 1),
            (5, 4, 2, 2),
        ] {
            let x0 = Tensor::<Ad, 4>::random([2, 3, 9, 8], Distribution::Normal(0.0, 1.0), &dev);
            let w0 = Tensor::<Ad, 4>::random([3, 1, k, k], Distribution::Normal(0.0, 1.0), &dev);
            let run = |ours: bool| {
                let x = x0.clone().detach().require_grad();
                let w = w0.clone().detach().require_grad();
                let y = if ours {
                    depthwise_conv2d(x.clone(), w.clone(), [s, s], [p, p], [d, d])
                } else {
                    reference_dw(x.clone(), w.clone(), s, p, d)
                };
                // A non-uniform upstream gradient.
                let up = Tensor::<Ad, 4>::random(y.dims(), Distribution::Normal(0.0, 1.0), &dev)
                    .detach();
                let up = up.inner();
                let loss = (y.clone() * Tensor::from_inner(up)).sum();
                let grads = loss.backward();
                (
                    y.into_data(),
                    x.grad(&grads).unwrap().into_data(),
                    w.grad(&grads).unwrap().into_data(),
                )
            };
            Ad::seed(&dev, 7);
            let ours = run(true);
            Ad::seed(&dev, 7);
            let theirs = run(false);
            let what = format!("k{k} p{p} d{d} s{s}");
            close(ours.0, theirs.0, 1e-5, &format!("{what} out"));
            close(ours.1, theirs.1, 1e-5, &format!("{what} dx"));
            close(ours.2, theirs.2, 1e-5, &format!("{what} dw"));
        }
    }

    /// The GPU backends' depthwise op (`gpu::depthwise_autodiff`, generic over the inner
    /// backend) run here on `Flex`: its batch-folded weight gradient and the backend's own
    /// forward and input gradient against Burn's grouped convolution, for the DARTS geometries
    /// and odd sizes (several planes, non-square, batch 3).
    #[test]
    fn gpu_depthwise_backward_agrees_with_burns_grouped_conv() {
        let dev = Default::default();
        for (k, p, d, s, h, w) in [
            (3, 1, 1, 1, 9, 8),
            (3, 1, 1, 2, 9, 8),
            (5, 2, 1, 1, 7, 11),
            (5, 2, 1, 2, 8, 8),
            (3, 2, 2, 1, 9, 8),
            (3, 2, 2, 2, 10, 7),
            (5, 4, 2, 2, 9, 8),
            (7, 3, 1, 1, 6, 9),
            (3, 0, 1, 2, 8, 9),
        ] {
            let c = 5;
            let x0 = Tensor::<Ad, 4>::random([3, c, h, w], Distribution::Normal(0.0, 1.0), &dev);
            let w0 = Tensor::<Ad, 4>::random([c, 1, k, k], Distribution::Normal(0.0, 1.0), &dev);
            let g = Window {
                n: 3,
                c,
                h,
                w,
                kh: k,
                kw: k,
                stride: [s, s],
                pad: [p, p],
                dil: [d, d],
            };
            let up = Tensor::<Ad, 4>::random(
                [3, c, g.ho(), g.wo()],
                Distribution::Normal(0.0, 1.0),
                &dev,
            )
            .detach();
            let run = |ours: bool| {
                let x = x0.clone().detach().require_grad();
                let wt = w0.clone().detach().require_grad();
                let y = if ours {
                    gpu::depthwise_autodiff::<Flex>(x.clone(), wt.clone(), g)
                } else {
                    reference_dw(x.clone(), wt.clone(), s, p, d)
                };
                let grads = (y.clone() * up.clone()).sum().backward();
                (
                    y.into_data(),
                    x.grad(&grads).unwrap().into_data(),
                    wt.grad(&grads).unwrap().into_data(),
                )
            };
            let (ours, theirs) = (run(true), run(false));
            let what = format!("k{k} p{p} d{d} s{s} {h}x{w}");
            close(ours.0, theirs.0, 1e-5, &format!("{what} out"));
            close(ours.1, theirs.1, 1e-5, &format!("{what} dx"));
            close(ours.2, theirs.2, 1e-5, &format!("{what} dw"));
        }
    }

    /// The GPU backends' fused training-mode BatchNorm core (`gpu::normalize_autodiff`, run
    /// here on `Flex`) against the composed `BatchNorm2d` forward and backward, and its batch
    /// statistics.
    #[test]
    fn gpu_normalize_agrees_with_the_composed_batch_norm() {
        let dev = Default::default();
        for [n, c, h, w] in [[4, 3, 5, 6], [6, 7, 1, 1], [3, 2, 8, 4]] {
            let x0 = Tensor::<Ad, 4>::random([n, c, h, w], Distribution::Normal(1.0, 2.0), &dev);
            let up = Tensor::<Ad, 4>::random([n, c, h, w], Distribution::Normal(0.0, 1.0), &dev)
                .detach();
            let bn = crate::BatchNorm2d::<Ad>::new(c, false, &dev);
            let run = |ours: bool| {
                let x = x0.clone().detach().require_grad();
                let (y, stats) = if ours {
                    let (y, m, v) = gpu::normalize_autodiff::<Flex>(x.clone(), 1e-5);
                    (y, Some((m.into_data(), v.into_data())))
                } else {
                    (bn.forward(x.clone()), None)
                };
                let grads = (y.clone() * up.clone()).sum().backward();
                (y.into_data(), x.grad(&grads).unwrap().into_data(), stats)
            };
            let (ours, theirs) = (run(true), run(false));
            let what = format!("{n}x{c}x{h}x{w}");
            close(ours.0, theirs.0, 1e-5, &format!("{what} out"));
            close(ours.1, theirs.1, 1e-4, &format!("{what} dx"));
            // The batch statistics, against their definition.
            let xs: Vec<f32> = x0.clone().into_data().to_vec().unwrap();
            let (m, v) = ours.2.unwrap();
            let (m, v): (Vec<f32>, Vec<f32>) = (m.to_vec().unwrap(), v.to_vec().unwrap());
            for ch in 0..c {
                let vals: Vec<f64> = (0..n)
                    .flat_map(|i| (0..h * w).map(move |k| (i * c + ch) * h * w + k))
                    .map(|j| xs[j] as f64)
                    .collect();
                let mean = vals.iter().sum::<f64>() / vals.len() as f64;
                let var = vals.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / vals.len() as f64;
                assert!((m[ch] as f64 - mean).abs() < 1e-5, "{what} mean");
                assert!(
                    (v[ch] as f64 - var).abs() < 1e-4 * var.max(1.0),
                    "{what} var"
                );
            }
        }
    }

    /// A 1×1 convolution `[3, 4, 5, 6]` → 7 channels, `ours` against Burn's `conv2d`: output
    /// and both gradients.
    fn check_pointwise(ours: impl Fn(Tensor<Ad, 4>, Tensor<Ad, 4>) -> Tensor<Ad, 4>, what: &str) {
        let dev = Default::default();
        let x0 = Tensor::<Ad, 4>::random([3, 4, 5, 6], Distribution::Normal(0.0, 1.0), &dev);
        let w0 = Tensor::<Ad, 4>::random([7, 4, 1, 1], Distribution::Normal(0.0, 1.0), &dev);
        let up = Tensor::<Ad, 4>::random([3, 7, 5, 6], Distribution::Normal(0.0, 1.0), &dev);
        let run = |mine: bool| {
            let x = x0.clone().detach().require_grad();
            let w = w0.clone().detach().require_grad();
            let y = if mine {
                ours(x.clone(), w.clone())
            } else {
                let opts = ConvOptions::new([1, 1], [0, 0], [1, 1], 1);
                conv2d(x.clone(), w.clone(), None, opts)
            };
            let grads = (y.clone() * up.clone().detach()).sum().backward();
            (
                y.into_data(),
                x.grad(&grads).unwrap().into_data(),
                w.grad(&grads).unwrap().into_data(),
            )
        };
        let (a, b) = (run(true), run(false));
        close(a.0, b.0, 1e-5, &format!("{what} out"));
        close(a.1, b.1, 1e-5, &format!("{what} dx"));
        close(a.2, b.2, 1e-5, &format!("{what} dw"));
    }

    /// The batched-matmul 1×1 convolution every non-Flex backend takes, against Burn's conv.
    #[test]
    fn pointwise_matmul_agrees_with_burns_conv_forward_and_backward() {
        check_pointwise(|x, w| pointwise_matmul(x, w, [3, 4, 5, 6], 7), "matmul");
    }

    #[test]
    fn pools_on_flex_agree_with_burns_pools_forward_and_backward() {
        let dev = Default::default();
        for s in [1, 2] {
            for kind in [Pooling::Max, Pooling::AvgExcludePad, Pooling::AvgIncludePad] {
                let x0 =
                    Tensor::<Ad, 4>::random([2, 3, 7, 8], Distribution::Normal(0.0, 1.0), &dev);
                let up0 = Tensor::<Ad, 4>::random(
                    [2, 3, (7 - 1) / s + 1, (8 - 1) / s + 1],
                    Distribution::Normal(0.0, 1.0),
                    &dev,
                );
                let run = |ours: bool| {
                    let x = x0.clone().detach().require_grad();
                    let y = if ours {
                        pool2d(x.clone(), kind, 3, s, 1)
                    } else {
                        let (k, st, p) = ([3, 3], [s, s], [1, 1]);
                        match kind {
                            Pooling::Max => max_pool2d(x.clone(), k, st, p, [1, 1], false),
                            Pooling::AvgExcludePad => avg_pool2d(x.clone(), k, st, p, false, false),
                            Pooling::AvgIncludePad => avg_pool2d(x.clone(), k, st, p, true, false),
                        }
                    };
                    let loss = (y.clone() * up0.clone().detach()).sum();
                    let grads = loss.backward();
                    (y.into_data(), x.grad(&grads).unwrap().into_data())
                };
                let ours = run(true);
                let theirs = run(false);
                let what = format!("{kind:?} s{s}");
                close(ours.0, theirs.0, 1e-6, &format!("{what} out"));
                close(ours.1, theirs.1, 1e-6, &format!("{what} dx"));
            }
        }
    }

    #[test]
    fn pointwise_on_flex_agrees_with_burns_conv_forward_and_backward() {
        check_pointwise(pointwise_conv2d, "1x1");
    }

    /// Training-mode batch normalisation by its definition, in Burn's composed operations.
    fn reference_bn<B: Backend>(
        x: Tensor<B, 4>,
        affine: Option<(Tensor<B, 1>, Tensor<B, 1>)>,
        eps: f64,
    ) -> Tensor<B, 4> {
        let c = x.dims()[1];
        let centered = x.clone() - x.mean_dims(&[0, 2, 3]);
        let var = centered.clone().square().mean_dims(&[0, 2, 3]);
        let y = centered / (var + eps).sqrt();
        match affine {
            Some((g, b)) => y * g.reshape([1, c, 1, 1]) + b.reshape([1, c, 1, 1]),
            None => y,
        }
    }

    /// The CPU batch normalisation (`Autodiff<Flex>`, f32 and f64, with and without the
    /// affine part) against its definition: output, input gradient, `dγ`, `dβ` and the batch
    /// statistics, on shapes from one value per plane to planes with a lane remainder.
    #[test]
    fn cpu_batch_norm_matches_its_definition_forward_and_backward() {
        use burn::tensor::DType;
        let dev = Default::default();
        for [n, c, h, w] in [[4, 3, 5, 7], [2, 5, 17, 17], [3, 2, 1, 1], [1, 1, 4, 4]] {
            for dtype in [DType::F32, DType::F64] {
                for affine in [false, true] {
                    let rnd = |shape: Vec<usize>, mean: f64| {
                        Tensor::<Ad, 1>::random(
                            [shape.iter().product::<usize>()],
                            Distribution::Normal(mean, 2.0),
                            &dev,
                        )
                        .cast(dtype)
                    };
                    let x0 = rnd(vec![n, c, h, w], 3.0).reshape([n, c, h, w]);
                    let up = rnd(vec![n, c, h, w], 0.0).reshape([n, c, h, w]);
                    let (g0, b0) = (rnd(vec![c], 1.0), rnd(vec![c], 0.0));
                    let run = |ours: bool| {
                        let x = x0.clone().detach().require_grad();
                        let (g, b) = (g0.clone().require_grad(), b0.clone().require_grad());
                        let aff = affine.then(|| (g.clone(), b.clone()));
                        let (y, stats) = if ours {
                            let (y, m, v) = cpu_batch_norm(x.clone(), aff, 1e-5)
                                .unwrap_or_else(|_| panic!("Autodiff<Flex> takes the kernel"));
                            (y, Some((m, v)))
                        } else {
                            (reference_bn(x.clone(), aff, 1e-5), None)
                        };
                        assert_eq!(y.dtype(), dtype);
                        let grads = (y.clone() * up.clone()).sum().backward();
                        let f32s = |t: Tensor<Ad, 4>| t.cast(DType::F32).into_data();
                        let f32v = |t: Option<Tensor<Ad, 1>>| {
                            t.map(|t| t.cast(DType::F32).reshape([1, 1, 1, c]).into_data())
                        };
                        (
                            f32s(y),
                            f32s(x.grad(&grads).map(Tensor::from_inner).unwrap()),
                            f32v(affine.then(|| Tensor::from_inner(g.grad(&grads).unwrap()))),
                            f32v(affine.then(|| Tensor::from_inner(b.grad(&grads).unwrap()))),
                            stats,
                        )
                    };
                    let (a, b) = (run(true), run(false));
                    let what = format!("{n}x{c}x{h}x{w} {dtype:?} affine={affine}");
                    let tol = if dtype == DType::F64 { 1e-6 } else { 1e-4 };
                    close(a.0, b.0, tol, &format!("{what} out"));
                    close(a.1, b.1, tol, &format!("{what} dx"));
                    if affine {
                        close(a.2.unwrap(), b.2.unwrap(), tol, &format!("{what} dgamma"));
                        close(a.3.unwrap(), b.3.unwrap(), tol, &format!("{what} dbeta"));
                    }
                    // The statistics: the definition's mean and biased variance.
                    let (m, v) = a.4.unwrap();
                    assert_eq!(m.dtype(), dtype);
                    let x4 = x0.clone().cast(DType::F32);
                    let mean = x4.clone().mean_dims(&[0, 2, 3]);
                    let var = (x4 - mean.clone()).square().mean_dims(&[0, 2, 3]);
                    let as4 = |t: Tensor<Ad, 1>| t.cast(DType::F32).reshape([1, c, 1, 1]);
                    close(
                        as4(m).into_data(),
                        mean.into_data(),
                        1e-5,
                        &format!("{what} mean"),
                    );
                    close(
                        as4(v).into_data(),
                        var.into_data(),
                        1e-5,
                        &format!("{what} var"),
                    );
                }
            }
        }
        // Plain Flex (no autodiff) takes the same kernel.
        let x = Tensor::<Flex, 4>::random([2, 3, 4, 5], Distribution::Normal(1.0, 2.0), &dev);
        let (y, _, _) = cpu_batch_norm(x.clone(), None, 1e-5).unwrap_or_else(|_| panic!("flex"));
        close(
            y.into_data(),
            reference_bn(x, None, 1e-5).into_data(),
            1e-5,
            "plain flex bn",
        );
    }

    /// The CPU ReLU against Burn's: output and input gradient (f32, f64, plain Flex), with
    /// zeros, negative zeros and a NaN in the input (NaN stays NaN, as in PyTorch).
    #[test]
    fn cpu_relu_agrees_with_burns() {
        use burn::tensor::DType;
        let dev = Default::default();
        for dtype in [DType::F32, DType::F64] {
            // More values than one parallel chunk, so several tasks run.
            let mut v: Vec<f32> = (0..70_001)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
                .collect();
            v[3] = 0.0;
            v[4] = -0.0;
            let x0 = Tensor::<Ad, 1>::from_floats(v.as_slice(), &dev).cast(dtype);
            let up = Tensor::<Ad, 1>::random([v.len()], Distribution::Normal(0.0, 1.0), &dev)
                .cast(dtype);
            let run = |ours: bool| {
                let x = x0.clone().require_grad();
                let y = if ours {
                    relu(x.clone())
                } else {
                    burn::tensor::activation::relu(x.clone())
                };
                assert_eq!(y.dtype(), dtype);
                let g = (y.clone() * up.clone()).sum().backward();
                let gx: Tensor<Ad, 1> = Tensor::from_inner(x.grad(&g).unwrap());
                (
                    y.cast(DType::F32).into_data(),
                    gx.cast(DType::F32).into_data(),
                )
            };
            let (a, b) = (run(true), run(false));
            assert_eq!(a.0, b.0, "relu {dtype:?}");
            assert_eq!(a.1, b.1, "relu grad {dtype:?}");
        }
        let x = Tensor::<Flex, 1>::from_floats([f32::NAN, -1.0, 2.0], &dev);
        let y: Vec<f32> = relu(x).into_data().to_vec().unwrap();
        assert!(y[0].is_nan());
        assert_eq!(&y[1..], &[0.0, 2.0]);
    }

    #[test]
    fn kernels_run_without_autodiff_and_in_f64() {
        let dev = Default::default();
        let x = Tensor::<Flex, 4>::random([1, 2, 5, 5], Distribution::Normal(0.0, 1.0), &dev);
        let w = Tensor::<Flex, 4>::random([2, 1, 3, 3], Distribution::Normal(0.0, 1.0), &dev);
        let ours = depthwise_conv2d(x.clone(), w.clone(), [1, 1], [1, 1], [1, 1]);
        let theirs = reference_dw(x.clone(), w.clone(), 1, 1, 1);
        close(ours.into_data(), theirs.into_data(), 1e-5, "plain flex dw");
        let x64 = x.clone().cast(burn::tensor::DType::F64);
        let w64 = w.clone().cast(burn::tensor::DType::F64);
        let y64 = depthwise_conv2d(x64, w64, [1, 1], [1, 1], [1, 1]);
        assert_eq!(y64.dtype(), burn::tensor::DType::F64);
        let y64 = y64.cast(burn::tensor::DType::F32);
        let theirs = reference_dw(x.clone(), w, 1, 1, 1);
        close(y64.into_data(), theirs.into_data(), 1e-5, "f64 flex dw");
        let ours = pool2d(x.clone(), Pooling::AvgExcludePad, 3, 1, 1);
        let theirs = avg_pool2d(x, [3, 3], [1, 1], [1, 1], false, false);
        close(
            ours.into_data(),
            theirs.into_data(),
            1e-6,
            "plain flex avg pool",
        );
    }
}
