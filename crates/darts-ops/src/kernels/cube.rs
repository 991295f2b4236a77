//! CubeCL kernels for the GPU backends (one source for the wgpu and CUDA runtimes): the
//! depthwise convolution (forward, input gradient, and the weight gradient as a parallel
//! reduction) and 2-D pooling (forward and backward), each **one launch** on contiguous NCHW
//! tensors.
//!
//! Burn 0.21's own operations take several launches for each of these (pooling permutes to
//! NHWC and back; the grouped convolution's input gradient is a transposed convolution that
//! scans the dilated window with a modulo test; its weight gradient loops over the groups), and
//! on a DARTS supernet — eight depthwise convolutions and two pools on every one of its 14 edges
//! per cell — launches are what a step costs on a GPU (CubeCL 0.10 has no CUDA graphs).
//!
//! [`GpuOps`](super::gpu::GpuOps) is implemented here for `CubeBackend` (the kernels) and for
//! `Fusion<B>` (each op registered as one opaque custom operation of the fusion stream, the
//! pattern of burn-vision 0.21), so the types `--device wgpu|cuda` use run them.
//!
//! Geometry (kernel size, stride, padding, dilation, pooling mode) is compile-time: each
//! geometry is its own specialised kernel with unrolled window loops; DARTS uses a handful.
//! Runtime sizes come from the tensors' shapes. Coordinates are kept in the *padded* frame
//! (unsigned, `0 ≤ iy < h + 2p`), as Burn's own pooling kernels do.
//!
//! Results do not depend on scheduling: every output element is written by one unit that sums
//! in a fixed order, and the weight gradient's reduction is a fixed tree over shared memory.

use super::cpu::Pooling;
use super::cpu::Window;
use super::gpu::GpuOps;
use burn::tensor::ops::FloatTensor;
use burn::tensor::Shape;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::prelude::*;
use cubecl::{calculate_cube_count_elemwise, CubeCount, CubeDim};

/// Units per cube of the weight-gradient reduction (a power of two).
const REDUCE_BLOCK: u32 = 256;

/// Depthwise convolution forward: one unit per output element, `y[n, c, oy, ox] =
/// Σ_{i, j} x_pad[n, c, oy·s + i·d, ox·s + j·d] · w[c, i, j]`.
#[cube(launch)]
fn dw_forward_kernel<F: Float>(
    x: &Tensor<F>,
    w: &Tensor<F>,
    y: &mut Tensor<F>,
    #[comptime] k: (u32, u32),
    #[comptime] s: (u32, u32),
    #[comptime] p: (u32, u32),
    #[comptime] d: (u32, u32),
) {
    if ABSOLUTE_POS >= y.len() {
        terminate!();
    }
    let wo = y.shape(3);
    let ho = y.shape(2);
    let c = y.shape(1);
    let h = x.shape(2) as u32;
    let wd = x.shape(3) as u32;
    let ox = (ABSOLUTE_POS % wo) as u32;
    let rest = ABSOLUTE_POS / wo;
    let oy = (rest % ho) as u32;
    let plane = rest / ho;
    let ch = plane % c;
    let xbase = plane * x.shape(2) * x.shape(3);
    let wbase = ch * (k.0 * k.1) as usize;
    let mut acc = F::new(0.0);
    #[unroll]
    for i in 0..k.0 {
        let iy = oy * s.0 + i * d.0;
        if iy >= p.0 && iy < h + p.0 {
            let row = xbase + ((iy - p.0) * wd) as usize;
            #[unroll]
            for j in 0..k.1 {
                let ix = ox * s.1 + j * d.1;
                if ix >= p.1 && ix < wd + p.1 {
                    acc += x[row + (ix - p.1) as usize] * w[wbase + (i * k.1 + j) as usize];
                }
            }
        }
    }
    y[ABSOLUTE_POS] = acc;
}

/// Depthwise convolution input gradient: one unit per input element, gathering the output
/// positions whose window covers it (no atomics).
#[cube(launch)]
fn dw_backward_x_kernel<F: Float>(
    gy: &Tensor<F>,
    w: &Tensor<F>,
    gx: &mut Tensor<F>,
    #[comptime] k: (u32, u32),
    #[comptime] s: (u32, u32),
    #[comptime] p: (u32, u32),
    #[comptime] d: (u32, u32),
) {
    if ABSOLUTE_POS >= gx.len() {
        terminate!();
    }
    let wd = gx.shape(3);
    let h = gx.shape(2);
    let c = gx.shape(1);
    let ho = gy.shape(2) as u32;
    let wo = gy.shape(3) as u32;
    let px = (ABSOLUTE_POS % wd) as u32 + p.1;
    let rest = ABSOLUTE_POS / wd;
    let py = (rest % h) as u32 + p.0;
    let plane = rest / h;
    let ch = plane % c;
    let gbase = plane * gy.shape(2) * gy.shape(3);
    let wbase = ch * (k.0 * k.1) as usize;
    let mut acc = F::new(0.0);
    #[unroll]
    for i in 0..k.0 {
        if py >= i * d.0 {
            let ty = py - i * d.0;
            let oy = ty / s.0;
            if ty % s.0 == 0 && oy < ho {
                let row = gbase + (oy * wo) as usize;
                #[unroll]
                for j in 0..k.1 {
                    if px >= j * d.1 {
                        let tx = px - j * d.1;
                        let ox = tx / s.1;
                        if tx % s.1 == 0 && ox < wo {
                            acc += gy[row + ox as usize] * w[wbase + (i * k.1 + j) as usize];
                        }
                    }
                }
            }
        }
    }
    gx[ABSOLUTE_POS] = acc;
}

/// Depthwise convolution weight gradient: one cube per `(c, i, j)`; its units stride over the
/// `n·Ho·Wo` products, then a fixed tree reduction in shared memory.
#[cube(launch)]
fn dw_backward_w_kernel<F: Float>(
    x: &Tensor<F>,
    gy: &Tensor<F>,
    gw: &mut Tensor<F>,
    #[comptime] k: (u32, u32),
    #[comptime] s: (u32, u32),
    #[comptime] p: (u32, u32),
    #[comptime] d: (u32, u32),
    #[comptime] block: u32,
) {
    let taps = (k.0 * k.1) as usize;
    let out = CUBE_POS as usize;
    let ch = out / taps;
    let tap = (out % taps) as u32;
    let i = tap / k.1;
    let j = tap % k.1;
    let n = gy.shape(0);
    let c = gy.shape(1);
    let ho = gy.shape(2);
    let wo = gy.shape(3);
    let h = x.shape(2) as u32;
    let wd = x.shape(3) as u32;
    let per = ho * wo;
    let total = n * per;
    let xplane = x.shape(2) * x.shape(3);
    let mut acc = F::new(0.0);
    let mut idx = UNIT_POS as usize;
    while idx < total {
        let b = idx / per;
        let r = idx % per;
        let oy = (r / wo) as u32;
        let ox = (r % wo) as u32;
        let iy = oy * s.0 + i * d.0;
        let ix = ox * s.1 + j * d.1;
        if iy >= p.0 && iy < h + p.0 && ix >= p.1 && ix < wd + p.1 {
            let plane = b * c + ch;
            let xi = plane * xplane + ((iy - p.0) * wd + ix - p.1) as usize;
            acc += x[xi] * gy[plane * per + r];
        }
        idx += block as usize;
    }
    let mut shared = SharedMemory::<F>::new(block as usize);
    shared[UNIT_POS as usize] = acc;
    sync_cube();
    let mut half = CUBE_DIM_X / 2;
    while half > 0 {
        if UNIT_POS_X < half {
            let a = shared[UNIT_POS_X as usize];
            let b = shared[(UNIT_POS_X + half) as usize];
            shared[UNIT_POS_X as usize] = a + b;
        }
        sync_cube();
        half /= 2;
    }
    if UNIT_POS == 0 {
        gw[out] = shared[0];
    }
}

/// `mode`: 0 max (padding is −∞), 1 average over the positions inside the input, 2 average
/// over `k²`.
#[cube(launch)]
fn pool_forward_kernel<F: Float>(
    x: &Tensor<F>,
    y: &mut Tensor<F>,
    #[comptime] k: u32,
    #[comptime] s: u32,
    #[comptime] p: u32,
    #[comptime] mode: u32,
) {
    if ABSOLUTE_POS >= y.len() {
        terminate!();
    }
    let wo = y.shape(3);
    let ho = y.shape(2);
    let h = x.shape(2) as u32;
    let wd = x.shape(3) as u32;
    let ox = (ABSOLUTE_POS % wo) as u32;
    let rest = ABSOLUTE_POS / wo;
    let oy = (rest % ho) as u32;
    let plane = rest / ho;
    let xbase = plane * x.shape(2) * x.shape(3);
    let mut acc = F::new(0.0);
    let mut found = false;
    let mut count: u32 = 0;
    #[unroll]
    for i in 0..k {
        let iy = oy * s + i;
        if iy >= p && iy < h + p {
            let row = xbase + ((iy - p) * wd) as usize;
            #[unroll]
            for j in 0..k {
                let ix = ox * s + j;
                if ix >= p && ix < wd + p {
                    let v = x[row + (ix - p) as usize];
                    if comptime!(mode == 0) {
                        if !found || v > acc {
                            acc = v;
                        }
                        found = true;
                    } else {
                        acc += v;
                        count += 1;
                    }
                }
            }
        }
    }
    if comptime!(mode == 1) {
        acc /= F::cast_from(count);
    }
    if comptime!(mode == 2) {
        acc /= F::cast_from(k * k);
    }
    y[ABSOLUTE_POS] = acc;
}

/// Pooling backward: one unit per input element. For the max pool each covering window's
/// arg-max is recomputed (first maximum in row-major window order, PyTorch's rule).
#[cube(launch)]
fn pool_backward_kernel<F: Float>(
    x: &Tensor<F>,
    gy: &Tensor<F>,
    gx: &mut Tensor<F>,
    #[comptime] k: u32,
    #[comptime] s: u32,
    #[comptime] p: u32,
    #[comptime] mode: u32,
) {
    if ABSOLUTE_POS >= gx.len() {
        terminate!();
    }
    let wd = gx.shape(3);
    let h = gx.shape(2);
    let ho = gy.shape(2) as u32;
    let wo = gy.shape(3) as u32;
    let hu = h as u32;
    let wu = wd as u32;
    let px = (ABSOLUTE_POS % wd) as u32 + p;
    let rest = ABSOLUTE_POS / wd;
    let py = (rest % h) as u32 + p;
    let plane = rest / h;
    let xbase = plane * h * wd;
    let gbase = plane * gy.shape(2) * gy.shape(3);
    let mut acc = F::new(0.0);
    #[unroll]
    for i in 0..k {
        if py >= i && (py - i) % s == 0 && (py - i) / s < ho {
            let oy = (py - i) / s;
            #[unroll]
            for j in 0..k {
                if px >= j && (px - j) % s == 0 && (px - j) / s < wo {
                    let ox = (px - j) / s;
                    let g = gy[gbase + (oy * wo + ox) as usize];
                    if comptime!(mode == 0) {
                        // Recompute the window's first maximum.
                        let mut best = F::new(0.0);
                        let mut found = false;
                        let mut at_y = 0u32;
                        let mut at_x = 0u32;
                        #[unroll]
                        for a in 0..k {
                            let iy = oy * s + a;
                            if iy >= p && iy < hu + p {
                                #[unroll]
                                for b in 0..k {
                                    let ix = ox * s + b;
                                    if ix >= p && ix < wu + p {
                                        let v = x[xbase + ((iy - p) * wu + ix - p) as usize];
                                        if !found || v > best {
                                            best = v;
                                            at_y = iy;
                                            at_x = ix;
                                        }
                                        found = true;
                                    }
                                }
                            }
                        }
                        if at_y == py && at_x == px {
                            acc += g;
                        }
                    } else if comptime!(mode == 1) {
                        // The window's extent inside the input, in the padded frame.
                        let mut y0 = oy * s;
                        if y0 < p {
                            y0 = p;
                        }
                        let mut y1 = oy * s + k;
                        if y1 > hu + p {
                            y1 = hu + p;
                        }
                        let mut x0 = ox * s;
                        if x0 < p {
                            x0 = p;
                        }
                        let mut x1 = ox * s + k;
                        if x1 > wu + p {
                            x1 = wu + p;
                        }
                        acc += g / F::cast_from((y1 - y0) * (x1 - x0));
                    } else {
                        acc += g / F::cast_from(k * k);
                    }
                }
            }
        }
    }
    gx[ABSOLUTE_POS] = acc;
}

fn u(v: usize) -> u32 {
    u32::try_from(v).expect("window geometry fits in u32")
}

fn geometry(g: &Window) -> [(u32, u32); 4] {
    [
        (u(g.kh), u(g.kw)),
        (u(g.stride[0]), u(g.stride[1])),
        (u(g.pad[0]), u(g.pad[1])),
        (u(g.dil[0]), u(g.dil[1])),
    ]
}

fn empty_like<R: CubeRuntime, F: FloatElement>(
    t: &CubeTensor<R>,
    dims: [usize; 4],
) -> CubeTensor<R> {
    let shape = Shape::new(dims);
    let bytes = shape.num_elements() * core::mem::size_of::<F>();
    let handle = t.client.empty(bytes);
    CubeTensor::new_contiguous(
        t.client.clone(),
        t.device.clone(),
        shape,
        handle,
        F::dtype(),
    )
}

fn elementwise<R: CubeRuntime>(t: &CubeTensor<R>, units: usize) -> (CubeCount, CubeDim) {
    let dim = CubeDim::new(&t.client, units);
    (calculate_cube_count_elemwise(&t.client, units, dim), dim)
}

fn mode(kind: Pooling) -> u32 {
    match kind {
        Pooling::Max => 0,
        Pooling::AvgExcludePad => 1,
        Pooling::AvgIncludePad => 2,
    }
}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> GpuOps
    for CubeBackend<R, F, I, BT>
{
    fn dw_forward(x: FloatTensor<Self>, w: FloatTensor<Self>, g: &Window) -> FloatTensor<Self> {
        let (x, w) = (into_contiguous(x), into_contiguous(w));
        let y = empty_like::<R, F>(&x, [g.n, g.c, g.ho(), g.wo()]);
        let (count, dim) = elementwise(&y, g.n * g.c * g.ho() * g.wo());
        let [k, s, p, d] = geometry(g);
        dw_forward_kernel::launch::<F, R>(
            &x.client.clone(),
            count,
            dim,
            x.into_tensor_arg(),
            w.into_tensor_arg(),
            y.clone().into_tensor_arg(),
            k,
            s,
            p,
            d,
        );
        y
    }

    fn dw_backward_x(gy: FloatTensor<Self>, w: FloatTensor<Self>, g: &Window) -> FloatTensor<Self> {
        let (gy, w) = (into_contiguous(gy), into_contiguous(w));
        let gx = empty_like::<R, F>(&gy, [g.n, g.c, g.h, g.w]);
        let (count, dim) = elementwise(&gx, g.n * g.c * g.h * g.w);
        let [k, s, p, d] = geometry(g);
        dw_backward_x_kernel::launch::<F, R>(
            &gy.client.clone(),
            count,
            dim,
            gy.into_tensor_arg(),
            w.into_tensor_arg(),
            gx.clone().into_tensor_arg(),
            k,
            s,
            p,
            d,
        );
        gx
    }

    fn dw_backward_w(x: FloatTensor<Self>, gy: FloatTensor<Self>, g: &Window) -> FloatTensor<Self> {
        let (x, gy) = (into_contiguous(x), into_contiguous(gy));
        let gw = empty_like::<R, F>(&x, [g.c, 1, g.kh, g.kw]);
        let [k, s, p, d] = geometry(g);
        let cubes = u(g.c * g.kh * g.kw);
        dw_backward_w_kernel::launch::<F, R>(
            &x.client.clone(),
            CubeCount::Static(cubes, 1, 1),
            CubeDim::new_1d(REDUCE_BLOCK),
            x.into_tensor_arg(),
            gy.into_tensor_arg(),
            gw.clone().into_tensor_arg(),
            k,
            s,
            p,
            d,
            REDUCE_BLOCK,
        );
        gw
    }

    fn pool_forward(x: FloatTensor<Self>, g: &Window, kind: Pooling) -> FloatTensor<Self> {
        let x = into_contiguous(x);
        let y = empty_like::<R, F>(&x, [g.n, g.c, g.ho(), g.wo()]);
        let (count, dim) = elementwise(&y, g.n * g.c * g.ho() * g.wo());
        pool_forward_kernel::launch::<F, R>(
            &x.client.clone(),
            count,
            dim,
            x.into_tensor_arg(),
            y.clone().into_tensor_arg(),
            u(g.kh),
            u(g.stride[0]),
            u(g.pad[0]),
            mode(kind),
        );
        y
    }

    fn pool_backward(
        x: FloatTensor<Self>,
        gy: FloatTensor<Self>,
        g: &Window,
        kind: Pooling,
    ) -> FloatTensor<Self> {
        let (x, gy) = (into_contiguous(x), into_contiguous(gy));
        let gx = empty_like::<R, F>(&x, [g.n, g.c, g.h, g.w]);
        let (count, dim) = elementwise(&gx, g.n * g.c * g.h * g.w);
        pool_backward_kernel::launch::<F, R>(
            &x.client.clone(),
            count,
            dim,
            x.into_tensor_arg(),
            gy.into_tensor_arg(),
            gx.clone().into_tensor_arg(),
            u(g.kh),
            u(g.stride[0]),
            u(g.pad[0]),
            mode(kind),
        );
        gx
    }
}

/// Each op as one custom operation of the fusion stream, executed by the inner backend `B`.
mod fusion {
    use super::*;
    use burn_fusion::stream::{Operation, OperationStreams};
    use burn_fusion::{Fusion, FusionBackend, FusionRuntime};
    use burn_ir::{CustomOpIr, HandleContainer, OperationIr, TensorIr};
    use core::marker::PhantomData;

    /// Which of the trait's ops a registered custom operation runs.
    #[derive(Clone, Copy, Debug)]
    enum Op {
        DwForward,
        DwBackwardX,
        DwBackwardW,
        PoolForward(Pooling),
        PoolBackward(Pooling),
    }

    #[derive(Clone, Debug)]
    struct Custom<B> {
        desc: CustomOpIr,
        op: Op,
        g: Window,
        _b: PhantomData<B>,
    }

    impl<B: FusionBackend + GpuOps> Operation<B::FusionRuntime> for Custom<B> {
        fn execute(
            &self,
            handles: &mut HandleContainer<<B::FusionRuntime as FusionRuntime>::FusionHandle>,
        ) {
            let g = &self.g;
            let out = match self.op {
                Op::PoolForward(kind) => {
                    let ([x], _) = self.desc.as_fixed::<1, 1>();
                    B::pool_forward(handles.get_float_tensor::<B>(x), g, kind)
                }
                op => {
                    let ([a, b], _) = self.desc.as_fixed::<2, 1>();
                    let a = handles.get_float_tensor::<B>(a);
                    let b = handles.get_float_tensor::<B>(b);
                    match op {
                        Op::DwForward => B::dw_forward(a, b, g),
                        Op::DwBackwardX => B::dw_backward_x(a, b, g),
                        Op::DwBackwardW => B::dw_backward_w(a, b, g),
                        Op::PoolBackward(kind) => B::pool_backward(a, b, g, kind),
                        Op::PoolForward(_) => unreachable!("matched above"),
                    }
                }
            };
            handles.register_float_tensor::<B>(&self.desc.outputs[0].id, out);
        }
    }

    fn register<B: FusionBackend + GpuOps>(
        name: &'static str,
        inputs: Vec<FloatTensor<Fusion<B>>>,
        dims: [usize; 4],
        op: Op,
        g: &Window,
    ) -> FloatTensor<Fusion<B>> {
        let client = inputs[0].client.clone();
        let dtype = inputs[0].dtype;
        let streams = OperationStreams::with_inputs(inputs.iter());
        let out = TensorIr::uninit(client.create_empty_handle(), Shape::new(dims), dtype);
        let irs: Vec<TensorIr> = inputs.into_iter().map(|t| t.into_ir()).collect();
        let desc = CustomOpIr::new(name, &irs, &[out]);
        let custom = Custom::<B> {
            desc: desc.clone(),
            op,
            g: *g,
            _b: PhantomData,
        };
        client
            .register(streams, OperationIr::Custom(desc), custom)
            .remove(0)
    }

    impl<B: FusionBackend + GpuOps> GpuOps for Fusion<B> {
        fn dw_forward(x: FloatTensor<Self>, w: FloatTensor<Self>, g: &Window) -> FloatTensor<Self> {
            let dims = [g.n, g.c, g.ho(), g.wo()];
            register::<B>("darts_dw_forward", vec![x, w], dims, Op::DwForward, g)
        }

        fn dw_backward_x(
            gy: FloatTensor<Self>,
            w: FloatTensor<Self>,
            g: &Window,
        ) -> FloatTensor<Self> {
            let dims = [g.n, g.c, g.h, g.w];
            register::<B>("darts_dw_backward_x", vec![gy, w], dims, Op::DwBackwardX, g)
        }

        fn dw_backward_w(
            x: FloatTensor<Self>,
            gy: FloatTensor<Self>,
            g: &Window,
        ) -> FloatTensor<Self> {
            let dims = [g.c, 1, g.kh, g.kw];
            register::<B>("darts_dw_backward_w", vec![x, gy], dims, Op::DwBackwardW, g)
        }

        fn pool_forward(x: FloatTensor<Self>, g: &Window, kind: Pooling) -> FloatTensor<Self> {
            let dims = [g.n, g.c, g.ho(), g.wo()];
            register::<B>(
                "darts_pool_forward",
                vec![x],
                dims,
                Op::PoolForward(kind),
                g,
            )
        }

        fn pool_backward(
            x: FloatTensor<Self>,
            gy: FloatTensor<Self>,
            g: &Window,
            kind: Pooling,
        ) -> FloatTensor<Self> {
            let dims = [g.n, g.c, g.h, g.w];
            let op = Op::PoolBackward(kind);
            register::<B>("darts_pool_backward", vec![x, gy], dims, op, g)
        }
    }
}
