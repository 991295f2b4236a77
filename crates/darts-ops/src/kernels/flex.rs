//! The [`cpu`](super::cpu) kernels on Burn's `Flex` backend, plain and under `Autodiff`
//! (as custom operations with their own backward). Entered only when the generic backend `B` of
//! the caller *is* `Flex` or `Autodiff<Flex>`, which is checked by `TypeId`; any other backend
//! gets `Err` back with its inputs and takes Burn's own operation.

use super::cpu::{self, Pooling, Real, Window};
use super::{is, same, BatchNormed};
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_autodiff::Autodiff;
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

type Ad = Autodiff<Flex, NoCheckpointing>;

/// Which backend family `B` is, for the kernels.
enum Family {
    Plain,
    Autodiff,
    Other,
}

fn family<B: Backend>() -> Family {
    if is::<B, Flex>() {
        Family::Plain
    } else if is::<B, Ad>() {
        Family::Autodiff
    } else {
        Family::Other
    }
}

/// `B` is `Flex` or `Autodiff<Flex>` (no checkpointing).
pub(crate) fn is_flex<B: Backend>() -> bool {
    !matches!(family::<B>(), Family::Other)
}

/// Run `f` on the contiguous elements of `t` as `T`.
fn with_slice<T: Real + burn::tensor::Element + bytemuck::Pod, R>(
    t: &FlexTensor,
    f: impl FnOnce(&[T]) -> R,
) -> R {
    if let Some(s) = t.as_slice::<T>() {
        if s.len() == t.layout().num_elements() {
            return f(s);
        }
    }
    let c = t.to_contiguous();
    f(c.as_slice::<T>().expect("contiguous after to_contiguous"))
}

fn tensor<T: burn::tensor::Element>(v: Vec<T>, shape: [usize; 4]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(v, shape))
}

/// Dispatch on the element type (`f32` or `f64`; checked by the caller).
macro_rules! by_dtype {
    ($dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            DType::F64 => {
                type $T = f64;
                $body
            }
            _ => {
                type $T = f32;
                $body
            }
        }
    };
}

fn dw_forward(x: &FlexTensor, w: &FlexTensor, g: &Window) -> FlexTensor {
    let shape = [g.n, g.c, g.ho(), g.wo()];
    by_dtype!(x.dtype(), T => with_slice::<T, _>(x, |xs| with_slice::<T, _>(w, |ws| {
        tensor(cpu::depthwise_forward(xs, ws, g), shape)
    })))
}

fn dw_backward(
    x: &FlexTensor,
    w: &FlexTensor,
    gy: &FlexTensor,
    g: &Window,
    want_x: bool,
    want_w: bool,
) -> (FlexTensor, FlexTensor) {
    by_dtype!(x.dtype(), T => with_slice::<T, _>(x, |xs| with_slice::<T, _>(w, |ws| {
        with_slice::<T, _>(gy, |gs| {
            let (gx, gw) = cpu::depthwise_backward(xs, ws, gs, g, want_x, want_w);
            let gx = if want_x { gx } else { vec![0.0; g.n * g.c * g.h * g.w] };
            let gw = if want_w { gw } else { vec![0.0; g.c * g.kh * g.kw] };
            (tensor(gx, [g.n, g.c, g.h, g.w]), tensor(gw, [g.c, 1, g.kh, g.kw]))
        })
    })))
}

fn pool_forward(x: &FlexTensor, g: &Window, kind: Pooling) -> FlexTensor {
    let shape = [g.n, g.c, g.ho(), g.wo()];
    by_dtype!(x.dtype(), T => with_slice::<T, _>(x, |xs| tensor(cpu::pool_forward(xs, g, kind), shape)))
}

fn pool_backward(x: &FlexTensor, gy: &FlexTensor, g: &Window, kind: Pooling) -> FlexTensor {
    by_dtype!(x.dtype(), T => with_slice::<T, _>(x, |xs| with_slice::<T, _>(gy, |gs| {
        tensor(cpu::pool_backward(xs, gs, g, kind), [g.n, g.c, g.h, g.w])
    })))
}

/// Samples per group in the weight gradient's sum over the batch: a fixed grouping, so the
/// result does not depend on the number of threads.
const PW_GROUPS: usize = 8;

/// `y_i = W · x_i` per sample (`x`: `[n, ci, hw]`, `w`: `[co, ci]`), samples in parallel.
fn pw_forward_slices<T: Real>(x: &[T], w: &[T], [n, ci, co, hw]: [usize; 4]) -> Vec<T> {
    cpu::par_build(
        n * co * hw,
        co * hw,
        || (),
        |_, i, o| {
            let xi = &x[i * ci * hw..(i + 1) * ci * hw];
            mm(o, [co, hw, ci], w, [ci, 1], xi, [hw, 1], false);
        },
    )
}

/// `dL/dx_i = Wᵀ · g_i` per sample.
fn pw_grad_x<T: Real>(gy: &[T], w: &[T], [n, ci, co, hw]: [usize; 4]) -> Vec<T> {
    cpu::par_build(
        n * ci * hw,
        ci * hw,
        || (),
        |_, i, o| {
            let gi = &gy[i * co * hw..(i + 1) * co * hw];
            mm(o, [ci, hw, co], w, [1, ci], gi, [hw, 1], false);
        },
    )
}

/// `dL/dW = Σ_i g_i · x_iᵀ`: [`PW_GROUPS`] groups of consecutive samples in parallel, each
/// summed in order, then the groups' sums in order.
fn pw_grad_w<T: Real>(x: &[T], gy: &[T], [n, ci, co, hw]: [usize; 4]) -> Vec<T> {
    let groups = n.clamp(1, PW_GROUPS);
    let per = n.div_ceil(groups).max(1);
    let partials: Vec<Vec<T>> = (0..groups)
        .into_par_iter()
        .map(|g| {
            let mut acc = vec![T::ZERO; co * ci];
            for i in g * per..n.min((g + 1) * per) {
                let gi = &gy[i * co * hw..(i + 1) * co * hw];
                let xi = &x[i * ci * hw..(i + 1) * ci * hw];
                mm(
                    &mut acc,
                    [co, ci, hw],
                    gi,
                    [hw, 1],
                    xi,
                    [1, hw],
                    i > g * per,
                );
            }
            acc
        })
        .collect();
    let mut total = vec![T::ZERO; co * ci];
    for p in partials {
        for (t, v) in total.iter_mut().zip(p) {
            *t += v;
        }
    }
    total
}

/// `[n, c_in, h, w]`, `[c_out, c_in, 1, 1]` → `[n, c_out, h, w]`: one product per sample.
fn pw_forward(x: &FlexTensor, w: &FlexTensor) -> FlexTensor {
    let [n, ci, h, wd] = dims4(x);
    let co = w.layout().shape()[0];
    by_dtype!(x.dtype(), T => with_slice::<T, _>(x, |xs| with_slice::<T, _>(w, |ws| {
        tensor(pw_forward_slices(xs, ws, [n, ci, co, h * wd]), [n, co, h, wd])
    })))
}

fn pw_backward(
    x: &FlexTensor,
    w: &FlexTensor,
    gy: &FlexTensor,
    want_x: bool,
    want_w: bool,
) -> (Option<FlexTensor>, Option<FlexTensor>) {
    let [n, ci, h, wd] = dims4(x);
    let co = w.layout().shape()[0];
    let dims = [n, ci, co, h * wd];
    by_dtype!(x.dtype(), T => with_slice::<T, _>(gy, |gs| {
        let gx = want_x.then(|| with_slice::<T, _>(w, |ws| {
            tensor(pw_grad_x(gs, ws, dims), [n, ci, h, wd])
        }));
        let gw = want_w.then(|| with_slice::<T, _>(x, |xs| {
            tensor(pw_grad_w(xs, gs, dims), [co, ci, 1, 1])
        }));
        (gx, gw)
    }))
}

fn dims4(t: &FlexTensor) -> [usize; 4] {
    let s = t.layout().shape();
    [s[0], s[1], s[2], s[3]]
}

#[derive(Debug)]
struct PointwiseBackward;

impl Backward<Flex, 2> for PointwiseBackward {
    type State = (FlexTensor, FlexTensor, ());

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w] = ops.parents;
        let gy = grads.consume::<Flex>(&ops.node);
        let (x, w, ()) = ops.state;
        let (gx, gw) = pw_backward(&x, &w, &gy, node_x.is_some(), node_w.is_some());
        if let (Some(node), Some(gx)) = (node_x, gx) {
            grads.register::<Flex>(node.id, gx);
        }
        if let (Some(node), Some(gw)) = (node_w, gw) {
            grads.register::<Flex>(node.id, gw);
        }
    }
}

/// 1×1 convolution on `Flex` / `Autodiff<Flex>` as a batched matrix product, with the weight
/// entering the autodiff graph directly (reshaping it as a tracked op first would give it a
/// graph of its own, and Burn 0.21 merges graphs in arbitrary order, sometimes copying the
/// whole activation graph into the weight's); `Err` gives the inputs back otherwise.
pub(crate) fn pointwise<B: Backend>(x: Tensor<B, 4>, w: Tensor<B, 4>) -> TwoInputs<B> {
    two_inputs(x, w, PointwiseBackward, (), pw_forward)
}

/// The result of a two-input kernel: the output, or the inputs back for Burn's own op.
pub(crate) type TwoInputs<B> = Result<Tensor<B, 4>, (Tensor<B, 4>, Tensor<B, 4>)>;

/// Run a custom two-input operation on `Flex` (forward only) or `Autodiff<Flex>` (with `op`'s
/// backward, whose state is both inputs and `extra`); `Err` gives the inputs back on any other
/// backend or element type.
fn two_inputs<B: Backend, O, E>(
    x: Tensor<B, 4>,
    w: Tensor<B, 4>,
    op: O,
    extra: E,
    fwd: impl Fn(&FlexTensor, &FlexTensor) -> FlexTensor,
) -> TwoInputs<B>
where
    O: Backward<Flex, 2, State = (FlexTensor, FlexTensor, E)>,
    E: Clone + Send + std::fmt::Debug + 'static,
{
    if !float_dtype_ok(x.dtype()) || x.dtype() != w.dtype() {
        return Err((x, w));
    }
    match family::<B>() {
        Family::Plain => {
            let x: Tensor<Flex, 4> = same(x);
            let w: Tensor<Flex, 4> = same(w);
            let y = fwd(&x.into_primitive().tensor(), &w.into_primitive().tensor());
            Ok(same(Tensor::<Flex, 4>::from_primitive(
                TensorPrimitive::Float(y),
            )))
        }
        Family::Autodiff => {
            let x: Tensor<Ad, 4> = same(x);
            let w: Tensor<Ad, 4> = same(w);
            let xa = x.into_primitive().tensor();
            let wa = w.into_primitive().tensor();
            let prep = op
                .prepare::<NoCheckpointing>([xa.node.clone(), wa.node.clone()])
                .compute_bound()
                .stateful();
            let y = fwd(&xa.primitive, &wa.primitive);
            let out = match prep {
                OpsKind::Tracked(prep) => prep.finish((xa.primitive, wa.primitive, extra), y),
                OpsKind::UnTracked(prep) => prep.finish(y),
            };
            Ok(same(Tensor::<Ad, 4>::from_primitive(
                TensorPrimitive::Float(out),
            )))
        }
        Family::Other => Err((x, w)),
    }
}

#[derive(Debug)]
struct DepthwiseBackward;

impl Backward<Flex, 2> for DepthwiseBackward {
    type State = (FlexTensor, FlexTensor, Window);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w] = ops.parents;
        let gy = grads.consume::<Flex>(&ops.node);
        let (x, w, g) = ops.state;
        let (gx, gw) = dw_backward(&x, &w, &gy, &g, node_x.is_some(), node_w.is_some());
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, gx);
        }
        if let Some(node) = node_w {
            grads.register::<Flex>(node.id, gw);
        }
    }
}

#[derive(Debug)]
struct PoolBackward;

impl Backward<Flex, 1> for PoolBackward {
    type State = (FlexTensor, Window, Pooling);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let gy = grads.consume::<Flex>(&ops.node);
        let (x, g, kind) = ops.state;
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, pool_backward(&x, &gy, &g, kind));
        }
    }
}

fn float_dtype_ok(d: DType) -> bool {
    matches!(d, DType::F32 | DType::F64)
}

/// Depthwise convolution on `Flex` / `Autodiff<Flex>`; `Err` gives the inputs back otherwise.
pub(crate) fn depthwise<B: Backend>(x: Tensor<B, 4>, w: Tensor<B, 4>, g: Window) -> TwoInputs<B> {
    two_inputs(x, w, DepthwiseBackward, g, move |x, w| dw_forward(x, w, &g))
}

/// Pooling on `Flex` / `Autodiff<Flex>`; `Err` gives the input back otherwise.
pub(crate) fn pool<B: Backend>(
    x: Tensor<B, 4>,
    g: Window,
    kind: Pooling,
) -> Result<Tensor<B, 4>, Tensor<B, 4>> {
    if !float_dtype_ok(x.dtype()) {
        return Err(x);
    }
    match family::<B>() {
        Family::Plain => {
            let x: Tensor<Flex, 4> = same(x);
            let y = pool_forward(&x.into_primitive().tensor(), &g, kind);
            Ok(same(Tensor::<Flex, 4>::from_primitive(
                TensorPrimitive::Float(y),
            )))
        }
        Family::Autodiff => {
            let x: Tensor<Ad, 4> = same(x);
            let xa = x.into_primitive().tensor();
            let prep = PoolBackward
                .prepare::<NoCheckpointing>([xa.node.clone()])
                .compute_bound()
                .stateful();
            let y = pool_forward(&xa.primitive, &g, kind);
            let out = match prep {
                OpsKind::Tracked(prep) => prep.finish((xa.primitive, g, kind), y),
                OpsKind::UnTracked(prep) => prep.finish(y),
            };
            Ok(same(Tensor::<Ad, 4>::from_primitive(
                TensorPrimitive::Float(out),
            )))
        }
        Family::Other => Err(x),
    }
}

/// What the batch-normalisation backward keeps: the input, γ (affine only), the batch
/// statistics, ε and the `[n, c, h·w]` geometry.
#[derive(Clone, Debug)]
struct BnState {
    x: FlexTensor,
    gamma: Option<FlexTensor>,
    mean: Vec<f64>,
    var: Vec<f64>,
    eps: f64,
    dims: [usize; 3],
}

/// `(dL/dx, dL/dγ, dL/dβ)` of the batch normalisation recorded in `s`.
fn bn_backward(
    s: &BnState,
    gy: &FlexTensor,
    want_x: bool,
) -> (Option<FlexTensor>, FlexTensor, FlexTensor) {
    let [n, c, hw] = s.dims;
    let shape4 = dims4(&s.x);
    by_dtype!(s.x.dtype(), T => with_slice::<T, _>(&s.x, |xs| with_slice::<T, _>(gy, |gs| {
        let run = |gamma: Option<&[T]>| {
            cpu::batch_norm_backward(xs, gs, [n, c, hw], &s.mean, &s.var, gamma, s.eps, want_x)
        };
        let (gx, gg, gb) = match &s.gamma {
            Some(g) => with_slice::<T, _>(g, |g| run(Some(g))),
            None => run(None),
        };
        let vec1 = |v: Vec<T>| FlexTensor::from_data(TensorData::new(v, [c]));
        (gx.map(|v| tensor(v, shape4)), vec1(gg), vec1(gb))
    })))
}

/// Batch normalisation with an affine part: parents `x`, `γ`, `β`.
#[derive(Debug)]
struct BnAffineBackward;

impl Backward<Flex, 3> for BnAffineBackward {
    type State = BnState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_g, node_b] = ops.parents;
        let gy = grads.consume::<Flex>(&ops.node);
        let (gx, gg, gb) = bn_backward(&ops.state, &gy, node_x.is_some());
        if let (Some(node), Some(gx)) = (node_x, gx) {
            grads.register::<Flex>(node.id, gx);
        }
        if let Some(node) = node_g {
            grads.register::<Flex>(node.id, gg);
        }
        if let Some(node) = node_b {
            grads.register::<Flex>(node.id, gb);
        }
    }
}

/// Batch normalisation without affine parameters: parent `x`.
#[derive(Debug)]
struct BnPlainBackward;

impl Backward<Flex, 1> for BnPlainBackward {
    type State = BnState;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let gy = grads.consume::<Flex>(&ops.node);
        if let (Some(node), (Some(gx), _, _)) = (node_x, bn_backward(&ops.state, &gy, true)) {
            grads.register::<Flex>(node.id, gx);
        }
    }
}

/// `y` and the batch statistics, computed on plain `Flex` tensors.
fn bn_forward(
    x: &FlexTensor,
    gamma: Option<&FlexTensor>,
    beta: Option<&FlexTensor>,
    eps: f64,
) -> (FlexTensor, Vec<f64>, Vec<f64>) {
    let shape4 = dims4(x);
    let [n, c, h, w] = shape4;
    by_dtype!(x.dtype(), T => with_slice::<T, _>(x, |xs| {
        let run = |g: Option<&[T]>, b: Option<&[T]>| {
            let (y, mean, var) = cpu::batch_norm_forward(xs, [n, c, h * w], g, b, eps);
            (tensor(y, shape4), mean, var)
        };
        match (gamma, beta) {
            (Some(g), Some(b)) => with_slice::<T, _>(g, |g| with_slice::<T, _>(b, |b| run(Some(g), Some(b)))),
            _ => run(None, None),
        }
    }))
}

/// Record the batch normalisation of `x` as `op` (its `parents`: `x`, or `x`, `γ`, `β`) and
/// compute it: the output and the batch statistics.
fn bn_tracked<const N: usize, O: Backward<Flex, N, State = BnState>>(
    op: O,
    parents: [&FloatTensor<Ad>; N],
    x: FlexTensor,
    affine: Option<(FlexTensor, FlexTensor)>,
    eps: f64,
) -> (FloatTensor<Ad>, Vec<f64>, Vec<f64>) {
    let prep = op
        .prepare::<NoCheckpointing>(parents.map(|t| t.node.clone()))
        .compute_bound()
        .stateful();
    let (gamma, beta) = affine.map_or((None, None), |(g, b)| (Some(g), Some(b)));
    let (y, mean, var) = bn_forward(&x, gamma.as_ref(), beta.as_ref(), eps);
    let out = match prep {
        OpsKind::Tracked(prep) => {
            let [n, c, h, w] = dims4(&x);
            let state = BnState {
                x,
                gamma,
                mean: mean.clone(),
                var: var.clone(),
                eps,
                dims: [n, c, h * w],
            };
            prep.finish(state, y)
        }
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    (out, mean, var)
}

/// Training-mode batch normalisation (batch statistics, optional affine part `γ`, `β`) on
/// `Flex` / `Autodiff<Flex>` as one operation with a closed-form backward; `Err` gives the
/// input back on every other backend or element type (and when only one of `γ`, `β` is given).
pub(crate) fn batch_norm<B: Backend>(
    x: Tensor<B, 4>,
    affine: Option<(Tensor<B, 1>, Tensor<B, 1>)>,
    eps: f64,
) -> Result<BatchNormed<B>, Tensor<B, 4>> {
    if !float_dtype_ok(x.dtype())
        || affine
            .as_ref()
            .is_some_and(|(g, b)| g.dtype() != x.dtype() || b.dtype() != x.dtype())
    {
        return Err(x);
    }
    let [_, c, _, _] = x.dims();
    let stats = |v: Vec<f64>, dtype: DType| -> Tensor<Flex, 1> {
        let data = TensorData::new(v, [c]).convert_dtype(dtype);
        Tensor::from_primitive(TensorPrimitive::Float(FlexTensor::from_data(data)))
    };
    match family::<B>() {
        Family::Plain => {
            let dtype = x.dtype();
            let x: Tensor<Flex, 4> = same(x);
            let prim = |t: Tensor<Flex, 1>| t.into_primitive().tensor();
            let affine = affine.map(|(g, b)| (prim(same(g)), prim(same(b))));
            let (y, mean, var) = bn_forward(
                &x.into_primitive().tensor(),
                affine.as_ref().map(|a| &a.0),
                affine.as_ref().map(|a| &a.1),
                eps,
            );
            let y = Tensor::<Flex, 4>::from_primitive(TensorPrimitive::Float(y));
            Ok((same(y), same(stats(mean, dtype)), same(stats(var, dtype))))
        }
        Family::Autodiff => {
            let dtype = x.dtype();
            let x: Tensor<Ad, 4> = same(x);
            let xa = x.into_primitive().tensor();
            let lift =
                |t: Tensor<Flex, 1>| -> Tensor<B, 1> { same(Tensor::<Ad, 1>::from_inner(t)) };
            let wrap = |y| -> Tensor<B, 4> {
                same(Tensor::<Ad, 4>::from_primitive(TensorPrimitive::Float(y)))
            };
            let (out, mean, var) = match affine {
                Some((g, b)) => {
                    let g: Tensor<Ad, 1> = same(g);
                    let b: Tensor<Ad, 1> = same(b);
                    let (ga, ba) = (g.into_primitive().tensor(), b.into_primitive().tensor());
                    let affine = Some((ga.primitive.clone(), ba.primitive.clone()));
                    let parents = [&xa, &ga, &ba];
                    bn_tracked(BnAffineBackward, parents, xa.primitive.clone(), affine, eps)
                }
                None => bn_tracked(BnPlainBackward, [&xa], xa.primitive.clone(), None, eps),
            };
            Ok((wrap(out), lift(stats(mean, dtype)), lift(stats(var, dtype))))
        }
        Family::Other => Err(x),
    }
}

#[derive(Debug)]
struct ReluBackward;

impl Backward<Flex, 1> for ReluBackward {
    type State = FlexTensor;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let gy = grads.consume::<Flex>(&ops.node);
        let y = ops.state;
        if let Some(node) = node_x {
            let shape = y.layout().shape().clone();
            let gx = by_dtype!(y.dtype(), T => with_slice::<T, _>(&y, |ys| with_slice::<T, _>(&gy, |gs| {
                FlexTensor::from_data(TensorData::new(cpu::relu_backward(ys, gs), shape))
            })));
            grads.register::<Flex>(node.id, gx);
        }
    }
}

fn relu_forward(x: &FlexTensor) -> FlexTensor {
    let shape = x.layout().shape().clone();
    by_dtype!(x.dtype(), T => with_slice::<T, _>(x, |xs| {
        FlexTensor::from_data(TensorData::new(cpu::relu_forward(xs), shape))
    }))
}

/// ReLU on `Flex` / `Autodiff<Flex>` in one pass each way (the backward keeps the output);
/// `Err` gives the input back otherwise.
pub(crate) fn relu<B: Backend, const D: usize>(
    x: Tensor<B, D>,
) -> Result<Tensor<B, D>, Tensor<B, D>> {
    if !float_dtype_ok(x.dtype()) {
        return Err(x);
    }
    match family::<B>() {
        Family::Plain => {
            let x: Tensor<Flex, D> = same(x);
            let y = relu_forward(&x.into_primitive().tensor());
            Ok(same(Tensor::<Flex, D>::from_primitive(
                TensorPrimitive::Float(y),
            )))
        }
        Family::Autodiff => {
            let x: Tensor<Ad, D> = same(x);
            let xa = x.into_primitive().tensor();
            let prep = ReluBackward
                .prepare::<NoCheckpointing>([xa.node.clone()])
                .compute_bound()
                .stateful();
            let y = relu_forward(&xa.primitive);
            let out = match prep {
                OpsKind::Tracked(prep) => prep.finish(y.clone(), y),
                OpsKind::UnTracked(prep) => prep.finish(y),
            };
            Ok(same(Tensor::<Ad, D>::from_primitive(
                TensorPrimitive::Float(out),
            )))
        }
        Family::Other => Err(x),
    }
}

/// `dst (m×n, row-major) (+)= lhs (m×k) · rhs (k×n)`, the operands given by their row and
/// column strides, through the `gemm` crate on one thread (callers split the work).
#[allow(clippy::too_many_arguments)]
fn mm<T: Real>(
    dst: &mut [T],
    [m, n, k]: [usize; 3],
    lhs: &[T],
    [lhs_rs, lhs_cs]: [usize; 2],
    rhs: &[T],
    [rhs_rs, rhs_cs]: [usize; 2],
    accumulate: bool,
) {
    debug_assert!(dst.len() >= m * n);
    debug_assert!(m == 0 || k == 0 || lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs);
    debug_assert!(k == 0 || n == 0 || rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs);
    let one = T::from_f64(1.0);
    // SAFETY: `dst` holds `m×n` values at row stride `n`; `lhs` and `rhs` hold every element
    // their strides address (checked above in debug builds, and by the callers' shapes); the
    // element type is f32 or f64, which `gemm` dispatches on.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            one,
            one,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}
