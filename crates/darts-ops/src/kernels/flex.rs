//! The [`cpu`](super::cpu) kernels on Burn's `Flex` backend, plain and under `Autodiff`
//! (as custom operations with their own backward). Entered only when the generic backend `B` of
//! the caller *is* `Flex` or `Autodiff<Flex>`, which is checked by `TypeId`; any other backend
//! gets `Err` back with its inputs and takes Burn's own operation.

use super::cpu::{self, Pooling, Real, Window};
use super::{is, same, BatchNormed};
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensorOps;
use burn::tensor::{DType, Shape, Tensor, TensorData, TensorPrimitive};
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_autodiff::Autodiff;
use burn_flex::{Flex, FlexTensor};

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

/// `[n, c_in, h, w]`, `[c_out, c_in, 1, 1]` → `[n, c_out, h, w]` as one batched product.
fn pw_forward(x: &FlexTensor, w: &FlexTensor) -> FlexTensor {
    let [n, ci, h, wd] = dims4(x);
    let co = w.layout().shape()[0];
    let w3 = Flex::float_reshape(w.clone(), Shape::new([1, co, ci]));
    let x3 = Flex::float_reshape(x.clone(), Shape::new([n, ci, h * wd]));
    Flex::float_reshape(Flex::float_matmul(w3, x3), Shape::new([n, co, h, wd]))
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
    let g3 = Flex::float_reshape(gy.clone(), Shape::new([n, co, h * wd]));
    let gx = want_x.then(|| {
        let wt = Flex::float_reshape(w.clone(), Shape::new([co, ci]));
        let wt = Flex::float_reshape(Flex::float_swap_dims(wt, 0, 1), Shape::new([1, ci, co]));
        Flex::float_reshape(
            Flex::float_matmul(wt, g3.clone()),
            Shape::new([n, ci, h, wd]),
        )
    });
    let gw = want_w.then(|| {
        let x3 = Flex::float_reshape(x.clone(), Shape::new([n, ci, h * wd]));
        let per_sample = Flex::float_matmul(g3, Flex::float_swap_dims(x3, 1, 2));
        Flex::float_reshape(
            Flex::float_sum_dim(per_sample, 0),
            Shape::new([co, ci, 1, 1]),
        )
    });
    (gx, gw)
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
            let dims = {
                let [n, c, h, w] = dims4(&xa.primitive);
                [n, c, h * w]
            };
            let lift =
                |t: Tensor<Flex, 1>| -> Tensor<B, 1> { same(Tensor::<Ad, 1>::from_inner(t)) };
            let wrap = |y| -> Tensor<B, 4> {
                same(Tensor::<Ad, 4>::from_primitive(TensorPrimitive::Float(y)))
            };
            match affine {
                Some((g, b)) => {
                    let g: Tensor<Ad, 1> = same(g);
                    let b: Tensor<Ad, 1> = same(b);
                    let (ga, ba) = (g.into_primitive().tensor(), b.into_primitive().tensor());
                    let prep = BnAffineBackward
                        .prepare::<NoCheckpointing>([
                            xa.node.clone(),
                            ga.node.clone(),
                            ba.node.clone(),
                        ])
                        .compute_bound()
                        .stateful();
                    let (y, mean, var) =
                        bn_forward(&xa.primitive, Some(&ga.primitive), Some(&ba.primitive), eps);
                    let (m, v) = (stats(mean.clone(), dtype), stats(var.clone(), dtype));
                    let out = match prep {
                        OpsKind::Tracked(prep) => {
                            let state = BnState {
                                x: xa.primitive,
                                gamma: Some(ga.primitive),
                                mean,
                                var,
                                eps,
                                dims,
                            };
                            prep.finish(state, y)
                        }
                        OpsKind::UnTracked(prep) => prep.finish(y),
                    };
                    Ok((wrap(out), lift(m), lift(v)))
                }
                None => {
                    let prep = BnPlainBackward
                        .prepare::<NoCheckpointing>([xa.node.clone()])
                        .compute_bound()
                        .stateful();
                    let (y, mean, var) = bn_forward(&xa.primitive, None, None, eps);
                    let (m, v) = (stats(mean.clone(), dtype), stats(var.clone(), dtype));
                    let out = match prep {
                        OpsKind::Tracked(prep) => {
                            let state = BnState {
                                x: xa.primitive,
                                gamma: None,
                                mean,
                                var,
                                eps,
                                dims,
                            };
                            prep.finish(state, y)
                        }
                        OpsKind::UnTracked(prep) => prep.finish(y),
                    };
                    Ok((wrap(out), lift(m), lift(v)))
                }
            }
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
