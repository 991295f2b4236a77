//! CubeCL kernels for the GPU backends (one source for the wgpu and CUDA runtimes): the
//! depthwise convolution (forward, input gradient, and the weight gradient as a parallel
//! reduction), the 1×1 convolution (the same three), 2-D pooling (forward and backward),
//! training-mode BatchNorm (forward and backward) and a mixed op's weighted sum (forward, the
//! candidates' gradients, the weights' gradient), each **one launch** on contiguous tensors (the
//! weight gradients two).
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
//! in a fixed order, BatchNorm's per-channel reductions are a fixed tree over shared memory,
//! and the weight gradients sum per image and chunk of the image in a fixed order, then over
//! the chunks.
//!
//! Each unit computes a block of neighbouring results (4 × 4 outputs of a depthwise
//! convolution, 4 pixels × 8 channels of a 1×1) and reads each input value, weight and gradient
//! value once for the whole block: on lavapipe, where this project measures without a GPU, a
//! kernel's time follows the values its units read (`kernel_profile` example), and on a GPU the
//! blocks still leave tens of thousands of units for DARTS's shapes.

// Kernel bodies are CubeCL's Rust dialect: `is_multiple_of` is not among the methods it
// translates, `%` is; and a `comptime!` condition must be an `if` of its own to remove the code
// it guards from the kernel (joined with `&&` to a runtime test it becomes a runtime `and`,
// whose right side is evaluated).
#![allow(clippy::manual_is_multiple_of, clippy::collapsible_if)]

use super::cpu::Pooling;
use super::cpu::Window;
use super::gpu::GpuOps;
use burn::tensor::ops::FloatTensor;
use burn::tensor::Shape;
use burn::tensor::{Tensor as BurnTensor, TensorPrimitive};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::prelude::*;
use cubecl::{calculate_cube_count_elemwise, CubeCount, CubeDim};

/// Columns of a unit's block in the depthwise forward and input-gradient kernels (for the
/// input gradient rounded to a multiple of the stride), and outputs per step of the weight
/// gradient's walk along a row. On lavapipe (llvmpipe loads a buffer value lane by lane) a
/// kernel's time follows the values its units read, so each unit computes a block and reads
/// each value once for it.
const DW_BLOCK: u32 = 4;

/// Rows of a unit's block in the depthwise forward and input-gradient kernels (for the input
/// gradient rounded to a multiple of the stride).
const DW_ROWS: u32 = 4;

/// Pixels per unit of the 1×1 kernel.
const PW_PIXELS: u32 = 4;

/// Pixels per unit of the 1×1 weight gradient's first stage.
const PW_CHUNK: u32 = 256;

/// Output rows per unit of the depthwise weight gradient's first stage.
const DWW_ROWS: u32 = 8;

/// Units (rows of partial sums) of a mixed op's weight gradient, at most.
const MIX_UNITS: usize = 4096;

/// Units per cube of the BatchNorm kernels' per-channel reductions (a power of two).
const REDUCE_BLOCK: u32 = 256;

/// Read `len` values of an input row into `seg`: slot `q` is the padded-frame column
/// `start + q` of the row starting at `row` (width `wd`, padding `pad`), zero in the padding,
/// and `max(v, 0)` with `relu`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn load_segment<F: Float>(
    x: &Tensor<F>,
    seg: &mut Array<F>,
    row: usize,
    start: u32,
    wd: u32,
    #[comptime] pad: u32,
    #[comptime] len: u32,
    #[comptime] relu: bool,
) {
    #[unroll]
    for q in 0..len {
        let ix = start + q;
        let mut v = F::new(0.0);
        if ix >= pad && ix < wd + pad {
            v = x[row + (ix - pad) as usize];
            if comptime!(relu) {
                v = F::max(v, F::new(0.0));
            }
        }
        seg[q as usize] = v;
    }
}

/// Depthwise convolution forward: one unit per block of `BY × BX` neighbouring outputs
/// `(column block, row block, plane)` of a 3-D grid (no integer division per unit), `y[n, c,
/// oy, ox] = Σ_{i, j} x_pad[n, c, oy·s + i·d, ox·s + j·d] · w[c, i, j]`. The unit reads its
/// channel's weights once and each input row segment its windows cover once (zero in the
/// padding), for every output row and window row that meet on it.
#[cube(launch_unchecked)]
fn dw_forward_kernel<F: Float>(
    x: &Tensor<F>,
    w: &Tensor<F>,
    y: &mut Tensor<F>,
    #[comptime] k: (u32, u32),
    #[comptime] s: (u32, u32),
    #[comptime] p: (u32, u32),
    #[comptime] d: (u32, u32),
    #[comptime] bx: u32,
    #[comptime] by: u32,
    #[comptime] relu: bool,
) {
    let ox0 = ABSOLUTE_POS_X * bx;
    let oy0 = ABSOLUTE_POS_Y * by;
    let plane = ABSOLUTE_POS_Z as usize;
    let wo = y.shape(3) as u32;
    let ho = y.shape(2) as u32;
    if ox0 >= wo || oy0 >= ho {
        terminate!();
    }
    let h = x.shape(2) as u32;
    let wd = x.shape(3) as u32;
    let ch = plane % y.shape(1);
    let xbase = plane * x.shape(2) * x.shape(3);
    let wbase = ch * (k.0 * k.1) as usize;
    let mut wv = Array::<F>::new((k.0 * k.1) as usize);
    #[unroll]
    for t in 0..k.0 * k.1 {
        wv[t as usize] = w[wbase + t as usize];
    }
    // The input columns the block's windows cover, in the padded frame: ox0·s + t; the rows:
    // oy0·s + t.
    let seg_len = comptime!((bx - 1) * s.1 + (k.1 - 1) * d.1 + 1);
    let rows_len = comptime!((by - 1) * s.0 + (k.0 - 1) * d.0 + 1);
    let mut acc = Array::<F>::new((by * bx) as usize);
    #[unroll]
    for t in 0..by * bx {
        acc[t as usize] = F::new(0.0);
    }
    let mut seg = Array::<F>::new(seg_len as usize);
    #[unroll]
    for t in 0..rows_len {
        let iy = oy0 * s.0 + t;
        if iy >= p.0 && iy < h + p.0 {
            let row = xbase + ((iy - p.0) * wd) as usize;
            load_segment::<F>(x, &mut seg, row, ox0 * s.1, wd, p.1, seg_len, relu);
            // Output row r meets window row i on input row t when r·s + i·d = t (constants
            // after unrolling: the test costs nothing).
            #[unroll]
            for r in 0..by {
                #[unroll]
                for i in 0..k.0 {
                    if r * s.0 + i * d.0 == t {
                        #[unroll]
                        for j in 0..k.1 {
                            let wij = wv[(i * k.1 + j) as usize];
                            #[unroll]
                            for b in 0..bx {
                                acc[(r * bx + b) as usize] +=
                                    seg[(b * s.1 + j * d.1) as usize] * wij;
                            }
                        }
                    }
                }
            }
        }
    }
    #[unroll]
    for r in 0..by {
        if oy0 + r < ho {
            let out = (plane * ho as usize + (oy0 + r) as usize) * wo as usize + ox0 as usize;
            #[unroll]
            for b in 0..bx {
                if ox0 + b < wo {
                    y[out + b as usize] = acc[(r * bx + b) as usize];
                }
            }
        }
    }
}

/// Depthwise convolution input gradient: one unit per block of `BY × BX` neighbouring inputs
/// `(column block, row block, plane)` with `BY`, `BX` multiples of the strides, `gx[n, c, iy,
/// ix] = Σ g[n, c, (iy + p − i·d)/s, (ix + p − j·d)/s] · w[c, i, j]` over the window positions
/// `(i, j)` where both divisions are exact and land inside the output (no atomics). The unit
/// reads its channel's weights once and each gradient row segment its inputs draw on once.
/// Which output row and column an input meets each window row and column on is a constant of
/// its place in the block (blocks start on multiples of the stride), so the tests and slot
/// indices below are constants after unrolling.
#[cube(launch_unchecked)]
fn dw_backward_x_kernel<F: Float>(
    gy: &Tensor<F>,
    w: &Tensor<F>,
    gx: &mut Tensor<F>,
    #[comptime] k: (u32, u32),
    #[comptime] s: (u32, u32),
    #[comptime] p: (u32, u32),
    #[comptime] d: (u32, u32),
    #[comptime] bx: u32,
    #[comptime] by: u32,
    #[comptime] relu: bool,
    x: &Tensor<F>,
) {
    let ix0 = ABSOLUTE_POS_X * bx;
    let iy0 = ABSOLUTE_POS_Y * by;
    let plane = ABSOLUTE_POS_Z as usize;
    let wd = gx.shape(3) as u32;
    let h = gx.shape(2) as u32;
    if ix0 >= wd || iy0 >= h {
        terminate!();
    }
    let ho = gy.shape(2) as u32;
    let wo = gy.shape(3) as u32;
    let ch = plane % gx.shape(1);
    let gbase = plane * gy.shape(2) * gy.shape(3);
    let wbase = ch * (k.0 * k.1) as usize;
    let mut wv = Array::<F>::new((k.0 * k.1) as usize);
    #[unroll]
    for t in 0..k.0 * k.1 {
        wv[t as usize] = w[wbase + t as usize];
    }
    // Input row iy0 + r meets window row i on output row iy0/s + m with m = (r + p − i·d)/s
    // when that division is exact. `lift` (a multiple of s, at least (k − 1)·d) keeps the
    // numerator unsigned: m = (r + p + lift − i·d)/s − lift/s. Slot t of the unit's rows is
    // m − m_lo (m_lo the least m of the block): output row iy0/s + t + m_lo, kept unsigned
    // as iy0/s + t + up − down. Columns likewise.
    let sy = comptime!(slots(k.0, s.0, p.0, d.0, by));
    let sx = comptime!(slots(k.1, s.1, p.1, d.1, bx));
    let (lift_y, first_y, rows_len, up_y, down_y) = comptime!((sy[0], sy[1], sy[2], sy[3], sy[4]));
    let (lift_x, first_x, seg_len, up_x, down_x) = comptime!((sx[0], sx[1], sx[2], sx[3], sx[4]));
    let qy0 = iy0 / s.0;
    let qx0 = ix0 / s.1;
    let mut acc = Array::<F>::new((by * bx) as usize);
    #[unroll]
    for t in 0..by * bx {
        acc[t as usize] = F::new(0.0);
    }
    let mut seg = Array::<F>::new(seg_len as usize);
    #[unroll]
    for t in 0..rows_len {
        let oy = qy0 + t + up_y;
        if oy >= down_y && oy - down_y < ho {
            let row = gbase + ((oy - down_y) * wo) as usize;
            // Slot q: output column qx0 + q + up − down (zero outside the output).
            load_segment::<F>(gy, &mut seg, row, qx0 + up_x, wo, down_x, seg_len, false);
            #[unroll]
            for r in 0..by {
                #[unroll]
                for i in 0..k.0 {
                    let ey = r + p.0 + lift_y - i * d.0;
                    if ey % s.0 == 0 && ey / s.0 == t + first_y {
                        #[unroll]
                        for j in 0..k.1 {
                            let wij = wv[(i * k.1 + j) as usize];
                            #[unroll]
                            for b in 0..bx {
                                let ex = b + p.1 + lift_x - j * d.1;
                                if ex % s.1 == 0 {
                                    acc[(r * bx + b) as usize] +=
                                        seg[(ex / s.1 - first_x) as usize] * wij;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    #[unroll]
    for r in 0..by {
        if iy0 + r < h {
            let out = (plane * h as usize + (iy0 + r) as usize) * wd as usize + ix0 as usize;
            #[unroll]
            for b in 0..bx {
                if ix0 + b < wd {
                    let mut v = acc[(r * bx + b) as usize];
                    if comptime!(relu) {
                        if x[out + b as usize] <= F::new(0.0) {
                            v = F::new(0.0);
                        }
                    }
                    gx[out + b as usize] = v;
                }
            }
        }
    }
}

/// The output slots of one axis of [`dw_backward_x_kernel`]'s block of `block` inputs
/// (window `k`, stride `s`, padding `p`, dilation `d`): `[lift, first, len, up, down]` with
/// `lift` a multiple of `s` at least `(k − 1)·d`, `first = lift/s + m_lo`, `len` the number
/// of output positions the block draws on, and `up − down = m_lo` (both non-negative).
fn slots(k: u32, s: u32, p: u32, d: u32, block: u32) -> [u32; 5] {
    let (k, s, p, d, block) = (
        i64::from(k),
        i64::from(s),
        i64::from(p),
        i64::from(d),
        i64::from(block),
    );
    let reach = (k - 1) * d;
    let lift = s * ((reach + s - 1) / s);
    // m ranges over ⌈(p − reach)/s⌉ ..= ⌊(block − 1 + p)/s⌋.
    let lo = (p - reach).div_euclid(s) + i64::from((p - reach).rem_euclid(s) != 0);
    let hi = (block - 1 + p).div_euclid(s);
    let c = |v: i64| u32::try_from(v).expect("depthwise geometry fits in u32");
    [
        c(lift),
        c(lift / s + lo),
        c(hi - lo + 1),
        c(lo.max(0)),
        c((-lo).max(0)),
    ]
}

/// Depthwise convolution weight gradient, first stage: one unit per `(window row i, channel,
/// chunk of ROWS output rows, image)` sums `x_pad[n, c, oy·s + i·d, ox·s + j·d] · g[n, c, oy,
/// ox]` over its chunk for every window column `j` into `partial[n · chunks + chunk, c, i, j]`
/// (no barriers, no atomics). Along a row it takes `BX` outputs at a time: the `BX` gradient
/// values and the input segment their windows cover are read once for `BX · kw` products. The
/// sum over the rows of `partial` follows as one reduction.
#[cube(launch_unchecked)]
fn dw_backward_w_kernel<F: Float>(
    x: &Tensor<F>,
    gy: &Tensor<F>,
    partial: &mut Tensor<F>,
    #[comptime] k: (u32, u32),
    #[comptime] s: (u32, u32),
    #[comptime] p: (u32, u32),
    #[comptime] d: (u32, u32),
    #[comptime] relu: bool,
    #[comptime] bx: u32,
    #[comptime] rows: u32,
) {
    let c = x.shape(1) as u32;
    let ho = gy.shape(2) as u32;
    let wo = gy.shape(3) as u32;
    let h = x.shape(2) as u32;
    let wd = x.shape(3) as u32;
    let chunks = ho.div_ceil(rows);
    let units = x.shape(0) * (c * chunks * k.0) as usize;
    if ABSOLUTE_POS >= units {
        terminate!();
    }
    let i = (ABSOLUTE_POS % k.0 as usize) as u32;
    let rest = ABSOLUTE_POS / k.0 as usize;
    let ch = (rest % c as usize) as u32;
    let rest = rest / c as usize;
    let chunk = (rest % chunks as usize) as u32;
    let n = (rest / chunks as usize) as u32;
    let plane = (n * c + ch) as usize;
    let xbase = plane * (h * wd) as usize;
    let gbase = plane * (ho * wo) as usize;
    let oy0 = chunk * rows;
    let mut oy1 = oy0 + rows;
    if oy1 > ho {
        oy1 = ho;
    }
    let seg_len = comptime!((bx - 1) * s.1 + (k.1 - 1) * d.1 + 1);
    let mut acc = Array::<F>::new(k.1 as usize);
    #[unroll]
    for j in 0..k.1 {
        acc[j as usize] = F::new(0.0);
    }
    let mut seg = Array::<F>::new(seg_len as usize);
    let mut gv = Array::<F>::new(bx as usize);
    for oy in oy0..oy1 {
        let iy = oy * s.0 + i * d.0;
        if iy >= p.0 && iy < h + p.0 {
            let xrow = xbase + ((iy - p.0) * wd) as usize;
            let grow = gbase + (oy * wo) as usize;
            let mut ox0 = 0u32;
            while ox0 < wo {
                load_segment::<F>(gy, &mut gv, grow, ox0, wo, 0u32, bx, false);
                load_segment::<F>(x, &mut seg, xrow, ox0 * s.1, wd, p.1, seg_len, relu);
                #[unroll]
                for j in 0..k.1 {
                    #[unroll]
                    for b in 0..bx {
                        acc[j as usize] += seg[(b * s.1 + j * d.1) as usize] * gv[b as usize];
                    }
                }
                ox0 += bx;
            }
        }
    }
    let out = (((n * chunks + chunk) * c + ch) * k.0 * k.1 + i * k.1) as usize;
    #[unroll]
    for j in 0..k.1 {
        partial[out + j as usize] = acc[j as usize];
    }
}

/// 1×1 convolution (and its input gradient): one unit per `PX` neighbouring pixels and block
/// of `BLOCK` output channels (pixels along the cube's x, the channel block and the image from
/// the cube position), `y[n, o, p] = Σ_i w[o, i] · a[n, i, p]` over the input's channels (`a`
/// `[n, ci, h, w]`); per input channel the unit reads `PX` input values and `BLOCK` weights for
/// `PX · BLOCK` products. `FULL` says the pixels of a plane are a multiple of `PX` (no pixel
/// bound test). `TRANSPOSE` reads the weight as `[ci, co]` (`w[i, o]`), which makes the same
/// kernel the input gradient `Wᵀ · g`. All units of a cube read the same weights.
#[cube(launch_unchecked)]
fn pw_kernel<F: Float>(
    a: &Tensor<F>,
    w: &Tensor<F>,
    y: &mut Tensor<F>,
    #[comptime] transpose: bool,
    #[comptime] block: u32,
    #[comptime] px: u32,
    #[comptime] full: bool,
) {
    let p0 = (ABSOLUTE_POS_X * px) as usize;
    let o = (CUBE_POS_Y * block) as usize;
    let n = CUBE_POS_Z as usize;
    let hw = y.shape(2) * y.shape(3);
    if p0 >= hw {
        terminate!();
    }
    let co = y.shape(1);
    let ci = a.shape(1);
    let abase = n * ci * hw + p0;
    let mut acc = Array::<F>::new((block * px) as usize);
    #[unroll]
    for t in 0..block * px {
        acc[t as usize] = F::new(0.0);
    }
    let mut xv = Array::<F>::new(px as usize);
    for i in 0..ci {
        let row = abase + i * hw;
        #[unroll]
        for q in 0..px {
            if comptime!(full) {
                xv[q as usize] = a[row + q as usize];
            } else {
                let mut v = F::new(0.0);
                if p0 + (q as usize) < hw {
                    v = a[row + q as usize];
                }
                xv[q as usize] = v;
            }
        }
        #[unroll]
        for b in 0..block {
            let wv = if comptime!(transpose) {
                w[i * co + o + b as usize]
            } else {
                w[(o + b as usize) * ci + i]
            };
            #[unroll]
            for q in 0..px {
                acc[(b * px + q) as usize] += wv * xv[q as usize];
            }
        }
    }
    let ybase = (n * co + o) * hw + p0;
    #[unroll]
    for b in 0..block {
        #[unroll]
        for q in 0..px {
            // Without `full` the last unit of a plane may run past its end.
            if comptime!(full) || p0 + (q as usize) < hw {
                y[ybase + b as usize * hw + q as usize] = acc[(b * px + q) as usize];
            }
        }
    }
}

/// 1×1 convolution weight gradient, first stage: one unit per `(n, chunk of pixels, block of
/// BO output channels, block of BI input channels)` sums `g[n, o, p] · x[n, i, p]` over its
/// chunk's pixels for its `BO × BI` pairs into `partial[n · chunks + chunk, o, i]` in a fixed
/// order (no barriers, no atomics; per pixel `BO + BI` values are read for `BO · BI`
/// products); the sum over the rows of `partial` follows as one reduction.
#[cube(launch_unchecked)]
fn pw_backward_w_kernel<F: Float>(
    x: &Tensor<F>,
    gy: &Tensor<F>,
    partial: &mut Tensor<F>,
    #[comptime] bo: u32,
    #[comptime] bi: u32,
    #[comptime] chunk: u32,
) {
    let ci = x.shape(1);
    let co = gy.shape(1);
    let hw = x.shape(2) * x.shape(3);
    let iblocks = ci / bi as usize;
    let oblocks = co / bo as usize;
    let chunks = hw.div_ceil(chunk as usize);
    let units = x.shape(0) * chunks * oblocks * iblocks;
    if ABSOLUTE_POS >= units {
        terminate!();
    }
    let ib = ABSOLUTE_POS % iblocks;
    let rest = ABSOLUTE_POS / iblocks;
    let ob = rest % oblocks;
    let row = rest / oblocks;
    let n = row / chunks;
    let p0 = (row % chunks) * chunk as usize;
    let mut p1 = p0 + chunk as usize;
    if p1 > hw {
        p1 = hw;
    }
    let i0 = ib * bi as usize;
    let o0 = ob * bo as usize;
    let xbase = (n * ci + i0) * hw;
    let gbase = (n * co + o0) * hw;
    let mut acc = Array::<F>::new((bo * bi) as usize);
    #[unroll]
    for t in 0..bo * bi {
        acc[t as usize] = F::new(0.0);
    }
    let mut gv = Array::<F>::new(bo as usize);
    for p in p0..p1 {
        #[unroll]
        for a in 0..bo {
            gv[a as usize] = gy[gbase + a as usize * hw + p];
        }
        #[unroll]
        for b in 0..bi {
            let xv = x[xbase + b as usize * hw + p];
            #[unroll]
            for a in 0..bo {
                acc[(a * bi + b) as usize] += gv[a as usize] * xv;
            }
        }
    }
    let out = (row * co + o0) * ci + i0;
    #[unroll]
    for a in 0..bo {
        #[unroll]
        for b in 0..bi {
            partial[out + a as usize * ci + b as usize] = acc[(a * bi + b) as usize];
        }
    }
}

/// A mixed op's weighted sum (forward): one unit per element, `y[e] = acc[e] + Σ_k w[offset + k]
/// · xs[k][e]` over flat tensors of one shape. With `ACC` the sequence's last tensor is the
/// accumulator (the node's sum so far), added after the weighted sum.
#[cube(launch_unchecked)]
fn mix_forward_kernel<F: Float>(
    xs: &Sequence<Tensor<F>>,
    w: &Tensor<F>,
    y: &mut Tensor<F>,
    #[comptime] offset: u32,
    #[comptime] acc: bool,
) {
    let e = ABSOLUTE_POS;
    if e >= y.len() {
        terminate!();
    }
    let n = comptime!(xs.len());
    let k = comptime!(if acc { n - 1 } else { n });
    let mut s = F::new(0.0);
    #[unroll]
    for i in 0..k {
        s += w[offset as usize + i] * xs.index(i)[e];
    }
    if comptime!(acc) {
        s = xs.index(k)[e] + s;
    }
    y[e] = s;
}

/// A mixed op's candidate gradients: one unit per element writes `gxs[k][e] = w[offset + k] ·
/// gy[e]` for every candidate `k` (the output gradient is read once).
#[cube(launch_unchecked)]
fn mix_backward_x_kernel<F: Float>(
    gy: &Tensor<F>,
    w: &Tensor<F>,
    gxs: &mut Sequence<Tensor<F>>,
    #[comptime] offset: u32,
) {
    let e = ABSOLUTE_POS;
    if e >= gy.len() {
        terminate!();
    }
    let g = gy[e];
    let k = comptime!(gxs.len());
    #[unroll]
    for i in 0..k {
        let wk = w[offset as usize + i];
        let gx = gxs.index_mut(i);
        gx[e] = wk * g;
    }
}

/// A mixed op's weight gradient, first stage: unit `t` of `T` sums `gy[e] · xs[k][e]` over the
/// elements `e = t, t + T, t + 2T, …` for every candidate (a fixed order) into `partial[t,
/// offset + k]`, and zero into the row's other columns; the sum over `t` follows as one
/// reduction.
#[cube(launch_unchecked)]
fn mix_backward_w_kernel<F: Float>(
    xs: &Sequence<Tensor<F>>,
    gy: &Tensor<F>,
    partial: &mut Tensor<F>,
    #[comptime] offset: u32,
    #[comptime] ops: u32,
) {
    let t = ABSOLUTE_POS;
    let units = partial.len() / ops as usize;
    if t >= units {
        terminate!();
    }
    let numel = gy.len();
    let k = comptime!(xs.len());
    let mut acc = Array::<F>::new(k);
    #[unroll]
    for i in 0..k {
        acc[i] = F::new(0.0);
    }
    let mut e = t;
    while e < numel {
        let g = gy[e];
        #[unroll]
        for i in 0..k {
            acc[i] += g * xs.index(i)[e];
        }
        e += units;
    }
    let row = t * ops as usize;
    #[unroll]
    for c in 0..ops {
        if comptime!(c < offset || c >= offset + k as u32) {
            partial[row + c as usize] = F::new(0.0);
        }
    }
    #[unroll]
    for i in 0..k {
        partial[row + offset as usize + i] = acc[i];
    }
}

/// The sum of every unit's `value` over a cube of a power of two of units (`UNIT_POS` is the
/// flattened index), by a fixed tree in shared memory; every unit gets the result.
#[cube]
fn cube_sum<F: Float>(shared: &mut SharedMemory<F>, value: F) -> F {
    shared[UNIT_POS as usize] = value;
    sync_cube();
    let mut half = CUBE_DIM / 2;
    while half > 0 {
        if UNIT_POS < half {
            let a = shared[UNIT_POS as usize];
            let b = shared[(UNIT_POS + half) as usize];
            shared[UNIT_POS as usize] = a + b;
        }
        sync_cube();
        half /= 2;
    }
    let total = shared[0];
    sync_cube();
    total
}

/// Where a unit of a BatchNorm cube starts in its channel and how it steps: `[first image,
/// images per step, first pixel, pixels per step]`. Planes of at least `block` pixels take the
/// whole cube, pixel after pixel (`block` apart); smaller planes are stacked `block / hw` to
/// a step, so every unit has work (units beyond the stack get a first image past the end).
#[cube]
fn bn_layout(hw: usize, n: usize, #[comptime] block: u32) -> (usize, usize, usize, usize) {
    let unit = UNIT_POS as usize;
    let mut first = 0usize;
    let mut per = 1usize;
    let mut r0 = unit;
    let mut stride = CUBE_DIM as usize;
    if hw < block as usize {
        per = block as usize / hw;
        let q = unit / hw;
        first = q;
        if q >= per {
            first = n;
        }
        r0 = unit % hw;
        stride = hw;
    }
    (first, per, r0, stride)
}

/// Training-mode BatchNorm forward without affine parameters: one cube per channel sums the
/// values and their squares, shifted by the channel's first value (one pass; the shift keeps
/// the variance's difference of sums well conditioned), then writes
/// `x̂ = (x − μ)/√(σ² + ε)` with the biased variance.
#[cube(launch_unchecked)]
fn bn_forward_kernel<F: Float>(
    x: &Tensor<F>,
    y: &mut Tensor<F>,
    mean_out: &mut Tensor<F>,
    var_out: &mut Tensor<F>,
    #[comptime] eps_bits: u32,
    #[comptime] block: u32,
) {
    let ch = CUBE_POS;
    let c = x.shape(1);
    let hw = x.shape(2) * x.shape(3);
    let n = x.shape(0);
    let count = F::cast_from((n * hw) as u32);
    let (first, per, r0, stride) = bn_layout(hw, n, block);
    let mut shared = SharedMemory::<F>::new(block as usize);
    let shift = x[ch * hw];
    let mut s1 = F::new(0.0);
    let mut s2 = F::new(0.0);
    let mut b = first;
    while b < n {
        let base = (b * c + ch) * hw;
        let mut r = r0;
        while r < hw {
            let v = x[base + r] - shift;
            s1 += v;
            s2 += v * v;
            r += stride;
        }
        b += per;
    }
    let m1 = cube_sum::<F>(&mut shared, s1) / count;
    let m2 = cube_sum::<F>(&mut shared, s2) / count;
    let mean = shift + m1;
    let var = F::max(m2 - m1 * m1, F::new(0.0));
    let inv = F::new(1.0) / F::sqrt(var + F::new(comptime!(f32::from_bits(eps_bits))));
    let mut b = first;
    while b < n {
        let base = (b * c + ch) * hw;
        let mut r = r0;
        while r < hw {
            y[base + r] = (x[base + r] - mean) * inv;
            r += stride;
        }
        b += per;
    }
    if UNIT_POS == 0 {
        mean_out[ch] = mean;
        var_out[ch] = var;
    }
}

/// BatchNorm backward: one cube per channel reduces `Σg` and `Σg·x̂`, then writes
/// `dx = (g − mean(g) − x̂·mean(g·x̂))/√(σ² + ε)`.
#[cube(launch_unchecked)]
fn bn_backward_kernel<F: Float>(
    xhat: &Tensor<F>,
    var: &Tensor<F>,
    gy: &Tensor<F>,
    gx: &mut Tensor<F>,
    #[comptime] eps_bits: u32,
    #[comptime] block: u32,
) {
    let ch = CUBE_POS;
    let c = gy.shape(1);
    let hw = gy.shape(2) * gy.shape(3);
    let n = gy.shape(0);
    let count = F::cast_from((n * hw) as u32);
    let (first, per, r0, stride) = bn_layout(hw, n, block);
    let mut shared = SharedMemory::<F>::new(block as usize);
    let mut sg = F::new(0.0);
    let mut sgy = F::new(0.0);
    let mut b = first;
    while b < n {
        let base = (b * c + ch) * hw;
        let mut r = r0;
        while r < hw {
            let g = gy[base + r];
            sg += g;
            sgy += g * xhat[base + r];
            r += stride;
        }
        b += per;
    }
    let mean_g = cube_sum::<F>(&mut shared, sg) / count;
    let mean_gy = cube_sum::<F>(&mut shared, sgy) / count;
    let inv = F::new(1.0) / F::sqrt(var[ch] + F::new(comptime!(f32::from_bits(eps_bits))));
    let mut b = first;
    while b < n {
        let base = (b * c + ch) * hw;
        let mut r = r0;
        while r < hw {
            let at = base + r;
            gx[at] = (gy[at] - mean_g - xhat[at] * mean_gy) * inv;
            r += stride;
        }
        b += per;
    }
}

/// Pooling forward, one unit per output element `(ox, oy, plane)`. `mode`: 0 max (padding is
/// −∞), 1 average over the positions inside the input, 2 average over `k²`. With `ARGMAX`
/// the max pool also writes each window's first maximum as a flat index into its plane
/// (as `F`: exact below 2²⁴ positions per plane).
#[cube(launch_unchecked)]
fn pool_forward_kernel<F: Float>(
    x: &Tensor<F>,
    y: &mut Tensor<F>,
    argmax: &mut Tensor<F>,
    #[comptime] k: u32,
    #[comptime] s: u32,
    #[comptime] p: u32,
    #[comptime] mode: u32,
    #[comptime] with_argmax: bool,
) {
    let ox = ABSOLUTE_POS_X;
    let oy = ABSOLUTE_POS_Y;
    let plane = ABSOLUTE_POS_Z as usize;
    let wo = y.shape(3) as u32;
    let ho = y.shape(2) as u32;
    if ox >= wo || oy >= ho {
        terminate!();
    }
    let h = x.shape(2) as u32;
    let wd = x.shape(3) as u32;
    let xbase = plane * x.shape(2) * x.shape(3);
    let mut acc = F::new(0.0);
    let mut found = false;
    let mut at: u32 = 0;
    let mut count: u32 = 0;
    #[unroll]
    for i in 0..k {
        let iy = oy * s + i;
        if iy >= p && iy < h + p {
            let row = (iy - p) * wd;
            #[unroll]
            for j in 0..k {
                let ix = ox * s + j;
                if ix >= p && ix < wd + p {
                    let v = x[xbase + (row + ix - p) as usize];
                    if comptime!(mode == 0) {
                        if !found || v > acc {
                            acc = v;
                            at = row + ix - p;
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
    let o = (plane * ho as usize + oy as usize) * wo as usize + ox as usize;
    y[o] = acc;
    if comptime!(with_argmax) {
        argmax[o] = F::cast_from(at);
    }
}

/// Pooling backward: one unit per input element `(ix, iy, plane)`, gathering the windows that
/// cover it. The max pool takes `argmax` of the forward (a window's gradient goes to its first
/// maximum, PyTorch's rule); the average pools ignore it.
#[cube(launch_unchecked)]
fn pool_backward_kernel<F: Float>(
    argmax: &Tensor<F>,
    gy: &Tensor<F>,
    gx: &mut Tensor<F>,
    #[comptime] k: u32,
    #[comptime] s: u32,
    #[comptime] p: u32,
    #[comptime] mode: u32,
) {
    let ix = ABSOLUTE_POS_X;
    let iy = ABSOLUTE_POS_Y;
    let plane = ABSOLUTE_POS_Z as usize;
    let wd = gx.shape(3) as u32;
    let h = gx.shape(2) as u32;
    if ix >= wd || iy >= h {
        terminate!();
    }
    let ho = gy.shape(2) as u32;
    let wo = gy.shape(3) as u32;
    let px = ix + p;
    let py = iy + p;
    let me = F::cast_from(iy * wd + ix);
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
                    let o = gbase + (oy * wo + ox) as usize;
                    let g = gy[o];
                    if comptime!(mode == 0) {
                        if argmax[o] == me {
                            acc += g;
                        }
                    } else if comptime!(mode == 1) {
                        // The window's extent inside the input, in the padded frame.
                        let mut y0 = oy * s;
                        if y0 < p {
                            y0 = p;
                        }
                        let mut y1 = oy * s + k;
                        if y1 > h + p {
                            y1 = h + p;
                        }
                        let mut x0 = ox * s;
                        if x0 < p {
                            x0 = p;
                        }
                        let mut x1 = ox * s + k;
                        if x1 > wd + p {
                            x1 = wd + p;
                        }
                        acc += g / F::cast_from((y1 - y0) * (x1 - x0));
                    } else {
                        acc += g / F::cast_from(k * k);
                    }
                }
            }
        }
    }
    gx[(plane * h as usize + iy as usize) * wd as usize + ix as usize] = acc;
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
    empty_shaped::<R, F>(t, Shape::new(dims))
}

/// A new contiguous tensor of `shape` on `t`'s device.
fn empty_shaped<R: CubeRuntime, F: FloatElement>(t: &CubeTensor<R>, shape: Shape) -> CubeTensor<R> {
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

fn dims4<R: CubeRuntime>(t: &CubeTensor<R>) -> [usize; 4] {
    let s = t.meta.shape();
    [s[0], s[1], s[2], s[3]]
}

/// A 3-D grid over `[planes, rows, cols]`: cubes of up to 16×16 units tile a plane (narrower
/// planes get narrower, taller tiles), `z` counts the planes.
fn grid(planes: usize, rows: usize, cols: usize) -> (CubeCount, CubeDim) {
    let x = u(cols).next_power_of_two().clamp(1, 16);
    let y = u(rows).next_power_of_two().clamp(1, 256 / x);
    let dim = CubeDim::new_2d(x, y);
    let count = CubeCount::Static(u(cols).div_ceil(x), u(rows).div_ceil(y), u(planes));
    (count, dim)
}

/// A 1-D grid of `units` units (cubes of the runtime's default size).
fn linear_grid<R: CubeRuntime>(client: &ComputeClient<R>, units: usize) -> (CubeCount, CubeDim) {
    let dim = CubeDim::new(client, units);
    (calculate_cube_count_elemwise(client, units, dim), dim)
}

fn mode(kind: Pooling) -> u32 {
    match kind {
        Pooling::Max => 0,
        Pooling::AvgExcludePad => 1,
        Pooling::AvgIncludePad => 2,
    }
}

/// Launch a depthwise kernel `kernel(a, b, out, k, s, p, d)` on `grid` (cube count and
/// dimension) with the geometry of window `g` (`F`, `R` as at the call site).
macro_rules! launch_depthwise {
    ($kernel:ident, $grid:expr, $a:expr, $b:expr, $out:expr, $g:expr $(, $extra:expr)*) => {{
        let [k, s, p, d] = geometry($g);
        let (count, dim) = $grid;
        let client = $a.client.clone();
        // SAFETY: every index the kernel forms is inside its tensors (guarded by the shape
        // checks at its top and the window bounds tests); each unit writes its own element.
        unsafe {
            $kernel::launch_unchecked::<F, R>(
                &client,
                count,
                dim,
                $a.into_tensor_arg(),
                $b.into_tensor_arg(),
                $out.clone().into_tensor_arg(),
                k,
                s,
                p,
                d,
                $($extra,)*
            );
        }
    }};
}

/// Depthwise forward of `x` (or of `max(x, 0)` with `relu`), one launch.
fn dw_forward_launch<R: CubeRuntime, F: FloatElement>(
    x: CubeTensor<R>,
    w: CubeTensor<R>,
    g: &Window,
    relu: bool,
) -> CubeTensor<R> {
    let (x, w) = (into_contiguous(x), into_contiguous(w));
    let y = empty_like::<R, F>(&x, [g.n, g.c, g.ho(), g.wo()]);
    let cubes = grid(
        g.n * g.c,
        g.ho().div_ceil(DW_ROWS as usize),
        g.wo().div_ceil(DW_BLOCK as usize),
    );
    launch_depthwise!(
        dw_forward_kernel,
        cubes,
        x,
        w,
        y,
        g,
        DW_BLOCK,
        DW_ROWS,
        relu
    );
    y
}

/// Depthwise input gradient, one launch; with `relu_input = Some(x)` the gradient of the
/// convolution of `max(x, 0)` with respect to `x` (zero where `x ≤ 0`).
fn dw_backward_x_launch<R: CubeRuntime, F: FloatElement>(
    gy: CubeTensor<R>,
    w: CubeTensor<R>,
    relu_input: Option<CubeTensor<R>>,
    g: &Window,
) -> CubeTensor<R> {
    let (gy, w) = (into_contiguous(gy), into_contiguous(w));
    let gx = empty_like::<R, F>(&gy, [g.n, g.c, g.h, g.w]);
    let relu = relu_input.is_some();
    // Without the ReLU the kernels never read `x`: the gradient stands in for it.
    let x = relu_input
        .map(into_contiguous)
        .unwrap_or_else(|| gy.clone());
    // Blocks start on multiples of the strides.
    let bx = g.stride[1] * (DW_BLOCK as usize / g.stride[1]).max(1);
    let by = g.stride[0] * (DW_ROWS as usize / g.stride[0]).max(1);
    let cubes = grid(g.n * g.c, g.h.div_ceil(by), g.w.div_ceil(bx));
    let x = x.into_tensor_arg();
    launch_depthwise!(
        dw_backward_x_kernel,
        cubes,
        gy,
        w,
        gx,
        g,
        u(bx),
        u(by),
        relu,
        x
    );
    gx
}

/// Depthwise weight gradient (of the convolution of `max(x, 0)` with `relu`): the per-image
/// partial sums in one launch, then Burn's sum over the batch.
fn dw_backward_w_launch<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    x: CubeTensor<R>,
    gy: CubeTensor<R>,
    g: &Window,
    relu: bool,
) -> CubeTensor<R> {
    let (x, gy) = (into_contiguous(x), into_contiguous(gy));
    let chunks = g.ho().div_ceil(DWW_ROWS as usize);
    let partial = empty_like::<R, F>(&x, [g.n * chunks, g.c, g.kh, g.kw]);
    let units = g.n * chunks * g.c * g.kh;
    let cubes = linear_grid(&x.client, units);
    launch_depthwise!(
        dw_backward_w_kernel,
        cubes,
        x,
        gy,
        partial,
        g,
        relu,
        DW_BLOCK,
        DWW_ROWS
    );
    BurnTensor::<CubeBackend<R, F, I, BT>, 4>::from_primitive(TensorPrimitive::Float(partial))
        .sum_dim(0)
        .reshape([g.c, 1, g.kh, g.kw])
        .into_primitive()
        .tensor()
}

/// Launch [`pw_kernel`] for `out` `[n, co, h, w]` from `a` `[n, ci, h, w]` and the weight.
fn launch_pointwise<R: CubeRuntime, F: FloatElement>(
    a: CubeTensor<R>,
    w: CubeTensor<R>,
    out: CubeTensor<R>,
    transpose: bool,
) {
    let [n, co, h, wd] = dims4(&out);
    // Output channels per unit: the largest of 8, 4, 2, 1 that divides them.
    let block = [8, 4, 2, 1].into_iter().find(|b| co % b == 0).unwrap_or(1);
    let pixels = u(h * wd);
    let full = pixels % PW_PIXELS == 0;
    let units = pixels.div_ceil(PW_PIXELS);
    let x = units.next_power_of_two().clamp(1, 256);
    let (count, dim) = (
        CubeCount::Static(units.div_ceil(x), u(co / block), u(n)),
        CubeDim::new_1d(x),
    );
    let client = a.client.clone();
    // SAFETY: every index the kernel forms is inside its tensors (the pixel and channel bound
    // test at its top; `a` and `w` have the shapes the op checked); each unit writes its own
    // element.
    unsafe {
        pw_kernel::launch_unchecked::<F, R>(
            &client,
            count,
            dim,
            a.into_tensor_arg(),
            w.into_tensor_arg(),
            out.into_tensor_arg(),
            transpose,
            u(block),
            PW_PIXELS,
            full,
        );
    }
}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> GpuOps
    for CubeBackend<R, F, I, BT>
{
    fn dw_forward(x: FloatTensor<Self>, w: FloatTensor<Self>, g: &Window) -> FloatTensor<Self> {
        dw_forward_launch::<R, F>(x, w, g, false)
    }

    fn dw_backward_x(gy: FloatTensor<Self>, w: FloatTensor<Self>, g: &Window) -> FloatTensor<Self> {
        dw_backward_x_launch::<R, F>(gy, w, None, g)
    }

    fn dw_backward_w(x: FloatTensor<Self>, gy: FloatTensor<Self>, g: &Window) -> FloatTensor<Self> {
        dw_backward_w_launch::<R, F, I, BT>(x, gy, g, false)
    }

    fn dw_relu_forward(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        g: &Window,
    ) -> FloatTensor<Self> {
        dw_forward_launch::<R, F>(x, w, g, true)
    }

    fn dw_relu_backward_x(
        gy: FloatTensor<Self>,
        w: FloatTensor<Self>,
        x: FloatTensor<Self>,
        g: &Window,
    ) -> FloatTensor<Self> {
        dw_backward_x_launch::<R, F>(gy, w, Some(x), g)
    }

    fn dw_relu_backward_w(
        x: FloatTensor<Self>,
        gy: FloatTensor<Self>,
        g: &Window,
    ) -> FloatTensor<Self> {
        dw_backward_w_launch::<R, F, I, BT>(x, gy, g, true)
    }

    fn pw_forward(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        let (x, w) = (into_contiguous(x), into_contiguous(w));
        let [n, _, h, wd] = dims4(&x);
        let co = dims4(&w)[0];
        let y = empty_like::<R, F>(&x, [n, co, h, wd]);
        launch_pointwise::<R, F>(x, w, y.clone(), false);
        y
    }

    fn pw_backward_x(gy: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        let (gy, w) = (into_contiguous(gy), into_contiguous(w));
        let [n, _, h, wd] = dims4(&gy);
        let ci = dims4(&w)[1];
        let gx = empty_like::<R, F>(&gy, [n, ci, h, wd]);
        launch_pointwise::<R, F>(gy, w, gx.clone(), true);
        gx
    }

    fn pw_backward_w(x: FloatTensor<Self>, gy: FloatTensor<Self>) -> FloatTensor<Self> {
        let (x, gy) = (into_contiguous(x), into_contiguous(gy));
        let [n, ci, _, _] = dims4(&x);
        let co = dims4(&gy)[1];
        let hw = x.meta.num_elements() / (n * ci);
        let chunks = hw.div_ceil(PW_CHUNK as usize);
        let partial = empty_like::<R, F>(&x, [n * chunks, co, ci, 1]);
        // Channels per unit: the largest of 4, 2, 1 that divides them.
        let block = |c: usize| [4, 2, 1].into_iter().find(|b| c % b == 0).unwrap_or(1);
        let (bo, bi) = (block(co), block(ci));
        let units = n * chunks * (co / bo) * (ci / bi);
        let (count, dim) = linear_grid(&x.client, units);
        // SAFETY: every index the kernel forms is inside its tensors (the bound test at its
        // top; `partial` has a `bo × bi` tile per unit); each unit writes its own elements.
        unsafe {
            pw_backward_w_kernel::launch_unchecked::<F, R>(
                &x.client.clone(),
                count,
                dim,
                x.into_tensor_arg(),
                gy.into_tensor_arg(),
                partial.clone().into_tensor_arg(),
                u(bo),
                u(bi),
                PW_CHUNK,
            );
        }
        BurnTensor::<Self, 4>::from_primitive(TensorPrimitive::Float(partial))
            .sum_dim(0)
            .reshape([co, ci, 1, 1])
            .into_primitive()
            .tensor()
    }

    fn bn_forward(x: FloatTensor<Self>, epsilon: f64) -> [FloatTensor<Self>; 3] {
        let x = into_contiguous(x);
        let [n, c, h, w] = dims4(&x);
        let y = empty_like::<R, F>(&x, [n, c, h, w]);
        let mean = empty_like::<R, F>(&x, [1, c, 1, 1]);
        let var = empty_like::<R, F>(&x, [1, c, 1, 1]);
        // SAFETY: every index the kernel forms is inside its tensor (guarded by the
        // shape checks at its top and the window bounds tests).
        unsafe {
            bn_forward_kernel::launch_unchecked::<F, R>(
                &x.client.clone(),
                CubeCount::Static(u(c), 1, 1),
                CubeDim::new_1d(REDUCE_BLOCK),
                x.into_tensor_arg(),
                y.clone().into_tensor_arg(),
                mean.clone().into_tensor_arg(),
                var.clone().into_tensor_arg(),
                (epsilon as f32).to_bits(),
                REDUCE_BLOCK,
            );
        }
        [y, mean, var]
    }

    fn bn_backward(
        xhat: FloatTensor<Self>,
        var: FloatTensor<Self>,
        gy: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        let (xhat, var, gy) = (
            into_contiguous(xhat),
            into_contiguous(var),
            into_contiguous(gy),
        );
        let dims = dims4(&gy);
        let gx = empty_like::<R, F>(&gy, dims);
        // SAFETY: every index the kernel forms is inside its tensor (guarded by the
        // shape checks at its top and the window bounds tests).
        unsafe {
            bn_backward_kernel::launch_unchecked::<F, R>(
                &gy.client.clone(),
                CubeCount::Static(u(dims[1]), 1, 1),
                CubeDim::new_1d(REDUCE_BLOCK),
                xhat.into_tensor_arg(),
                var.into_tensor_arg(),
                gy.into_tensor_arg(),
                gx.clone().into_tensor_arg(),
                (epsilon as f32).to_bits(),
                REDUCE_BLOCK,
            );
        }
        gx
    }

    fn mix_forward(
        xs: Vec<FloatTensor<Self>>,
        w: FloatTensor<Self>,
        offset: usize,
        acc: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        let w = into_contiguous(w);
        let shape = xs[0].meta.shape().clone();
        // The launch is unchecked: every input must have the output's shape.
        assert!(
            xs.iter().chain(&acc).all(|t| *t.meta.shape() == shape)
                && w.meta.num_elements() >= offset + xs.len(),
            "mix_forward: candidates and accumulator of one shape, a weight for each"
        );
        let y = empty_shaped::<R, F>(&w, shape);
        let numel = y.meta.num_elements();
        let with_acc = acc.is_some();
        let seq: SequenceArg<R, Tensor<F>> = xs
            .into_iter()
            .chain(acc)
            .map(|t| into_contiguous(t).into_tensor_arg())
            .collect();
        let client = w.client.clone();
        let (count, dim) = linear_grid(&client, numel);
        // SAFETY: every index the kernel forms is inside its tensors (the element bound test at
        // its top; all inputs have `y`'s shape, `w` has `offset + count` elements at least);
        // each unit writes its own element.
        unsafe {
            mix_forward_kernel::launch_unchecked::<F, R>(
                &client,
                count,
                dim,
                seq,
                w.into_tensor_arg(),
                y.clone().into_tensor_arg(),
                u(offset),
                with_acc,
            );
        }
        y
    }

    fn mix_backward_x(
        gy: FloatTensor<Self>,
        w: FloatTensor<Self>,
        offset: usize,
        count: usize,
    ) -> Vec<FloatTensor<Self>> {
        let (gy, w) = (into_contiguous(gy), into_contiguous(w));
        assert!(
            w.meta.num_elements() >= offset + count,
            "mix_backward_x: a weight for each candidate"
        );
        let shape = gy.meta.shape().clone();
        let gxs: Vec<_> = (0..count)
            .map(|_| empty_shaped::<R, F>(&gy, shape.clone()))
            .collect();
        let numel = gy.meta.num_elements();
        let client = gy.client.clone();
        let (cubes, dim) = linear_grid(&client, numel);
        let seq: SequenceArg<R, Tensor<F>> =
            gxs.iter().map(|t| t.clone().into_tensor_arg()).collect();
        // SAFETY: every index the kernel forms is inside its tensors (the element bound test at
        // its top; the outputs have `gy`'s shape); each unit writes its own elements.
        unsafe {
            mix_backward_x_kernel::launch_unchecked::<F, R>(
                &client,
                cubes,
                dim,
                gy.into_tensor_arg(),
                w.into_tensor_arg(),
                seq,
                u(offset),
            );
        }
        gxs
    }

    fn mix_backward_w(
        xs: Vec<FloatTensor<Self>>,
        gy: FloatTensor<Self>,
        offset: usize,
        ops: usize,
    ) -> FloatTensor<Self> {
        let gy = into_contiguous(gy);
        assert!(
            xs.iter().all(|t| t.meta.shape() == gy.meta.shape()) && offset + xs.len() <= ops,
            "mix_backward_w: candidates of the gradient's shape, a weight for each"
        );
        let numel = gy.meta.num_elements();
        // Units (rows of partial sums): a fixed function of the size, so results do not
        // depend on the device.
        let units = numel.clamp(1, MIX_UNITS);
        let partial = empty_shaped::<R, F>(&gy, Shape::new([units, ops]));
        let seq: SequenceArg<R, Tensor<F>> = xs
            .into_iter()
            .map(|t| into_contiguous(t).into_tensor_arg())
            .collect();
        let client = gy.client.clone();
        let (cubes, dim) = linear_grid(&client, units);
        // SAFETY: every index the kernel forms is inside its tensors (the unit bound test at
        // its top; the candidates have `gy`'s shape; `partial` has `ops` columns, `offset +
        // candidates ≤ ops`); each unit writes its own row.
        unsafe {
            mix_backward_w_kernel::launch_unchecked::<F, R>(
                &client,
                cubes,
                dim,
                seq,
                gy.into_tensor_arg(),
                partial.clone().into_tensor_arg(),
                u(offset),
                u(ops),
            );
        }
        BurnTensor::<Self, 2>::from_primitive(TensorPrimitive::Float(partial))
            .sum_dim(0)
            .reshape([ops])
            .into_primitive()
            .tensor()
    }

    fn pool_forward(
        x: FloatTensor<Self>,
        g: &Window,
        kind: Pooling,
    ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>) {
        let x = into_contiguous(x);
        let dims = [g.n, g.c, g.ho(), g.wo()];
        let y = empty_like::<R, F>(&x, dims);
        let max = kind == Pooling::Max;
        // The arg-max output (a one-element placeholder for the average pools).
        let argmax = empty_like::<R, F>(&x, if max { dims } else { [1, 1, 1, 1] });
        let (count, dim) = grid(g.n * g.c, g.ho(), g.wo());
        // SAFETY: every index the kernel forms is inside its tensor (guarded by the
        // shape checks at its top and the window bounds tests).
        unsafe {
            pool_forward_kernel::launch_unchecked::<F, R>(
                &x.client.clone(),
                count,
                dim,
                x.into_tensor_arg(),
                y.clone().into_tensor_arg(),
                argmax.clone().into_tensor_arg(),
                u(g.kh),
                u(g.stride[0]),
                u(g.pad[0]),
                mode(kind),
                max,
            );
        }
        (y, max.then_some(argmax))
    }

    fn pool_saves_argmax() -> bool {
        true
    }

    fn pool_backward(
        saved: FloatTensor<Self>,
        gy: FloatTensor<Self>,
        g: &Window,
        kind: Pooling,
    ) -> FloatTensor<Self> {
        let (saved, gy) = (into_contiguous(saved), into_contiguous(gy));
        let gx = empty_like::<R, F>(&gy, [g.n, g.c, g.h, g.w]);
        let (count, dim) = grid(g.n * g.c, g.h, g.w);
        // SAFETY: every index the kernel forms is inside its tensor (guarded by the
        // shape checks at its top and the window bounds tests).
        unsafe {
            pool_backward_kernel::launch_unchecked::<F, R>(
                &gy.client.clone(),
                count,
                dim,
                saved.into_tensor_arg(),
                gy.into_tensor_arg(),
                gx.clone().into_tensor_arg(),
                u(g.kh),
                u(g.stride[0]),
                u(g.pad[0]),
                mode(kind),
            );
        }
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
        DwForward(Window),
        DwBackwardX(Window),
        DwBackwardW(Window),
        DwReluForward(Window),
        DwReluBackwardX(Window),
        DwReluBackwardW(Window),
        PwForward,
        PwBackwardX,
        PwBackwardW,
        PoolForward(Window, Pooling),
        PoolBackward(Window, Pooling),
        BnForward(f64),
        BnBackward(f64),
        /// Offset of the first candidate's weight, whether the last input is an accumulator.
        MixForward(usize, bool),
        /// Offset, number of candidates.
        MixBackwardX(usize, usize),
        /// Offset, number of ops.
        MixBackwardW(usize, usize),
    }

    #[derive(Clone, Debug)]
    struct Custom<B> {
        desc: CustomOpIr,
        op: Op,
        _b: PhantomData<B>,
    }

    impl<B: FusionBackend + GpuOps> Operation<B::FusionRuntime> for Custom<B> {
        fn execute(
            &self,
            handles: &mut HandleContainer<<B::FusionRuntime as FusionRuntime>::FusionHandle>,
        ) {
            let input = |handles: &mut HandleContainer<_>, i: usize| {
                handles.get_float_tensor::<B>(&self.desc.inputs[i])
            };
            let outputs: Vec<FloatTensor<B>> = match self.op {
                Op::PoolForward(g, kind) => {
                    let (y, saved) = B::pool_forward(input(handles, 0), &g, kind);
                    std::iter::once(y).chain(saved).collect()
                }
                Op::BnForward(eps) => B::bn_forward(input(handles, 0), eps).into(),
                Op::DwReluBackwardX(g) => {
                    let (gy, w) = (input(handles, 0), input(handles, 1));
                    vec![B::dw_relu_backward_x(gy, w, input(handles, 2), &g)]
                }
                Op::BnBackward(eps) => {
                    let (y, var) = (input(handles, 0), input(handles, 1));
                    vec![B::bn_backward(y, var, input(handles, 2), eps)]
                }
                // Inputs: the candidates, the weights, then the accumulator if any.
                Op::MixForward(offset, acc) => {
                    let mut xs: Vec<_> = (0..self.desc.inputs.len())
                        .map(|i| input(handles, i))
                        .collect();
                    let acc = if acc { xs.pop() } else { None };
                    let w = xs.pop().expect("the weights");
                    vec![B::mix_forward(xs, w, offset, acc)]
                }
                // Inputs: the output gradient, the weights.
                Op::MixBackwardX(offset, count) => {
                    let (gy, w) = (input(handles, 0), input(handles, 1));
                    B::mix_backward_x(gy, w, offset, count)
                }
                // Inputs: the candidates, then the output gradient.
                Op::MixBackwardW(offset, ops) => {
                    let mut xs: Vec<_> = (0..self.desc.inputs.len())
                        .map(|i| input(handles, i))
                        .collect();
                    let gy = xs.pop().expect("the output gradient");
                    vec![B::mix_backward_w(xs, gy, offset, ops)]
                }
                op => {
                    let (a, b) = (input(handles, 0), input(handles, 1));
                    vec![match op {
                        Op::DwForward(g) => B::dw_forward(a, b, &g),
                        Op::DwBackwardX(g) => B::dw_backward_x(a, b, &g),
                        Op::DwBackwardW(g) => B::dw_backward_w(a, b, &g),
                        Op::DwReluForward(g) => B::dw_relu_forward(a, b, &g),
                        Op::DwReluBackwardW(g) => B::dw_relu_backward_w(a, b, &g),
                        Op::PwForward => B::pw_forward(a, b),
                        Op::PwBackwardX => B::pw_backward_x(a, b),
                        Op::PwBackwardW => B::pw_backward_w(a, b),
                        Op::PoolBackward(g, kind) => B::pool_backward(a, b, &g, kind),
                        _ => unreachable!("matched above"),
                    }]
                }
            };
            for (ir, out) in self.desc.outputs.iter().zip(outputs) {
                handles.register_float_tensor::<B>(&ir.id, out);
            }
        }
    }

    fn register<B: FusionBackend + GpuOps>(
        name: &'static str,
        inputs: Vec<FloatTensor<Fusion<B>>>,
        dims: [usize; 4],
        op: Op,
    ) -> FloatTensor<Fusion<B>> {
        register_many::<B>(name, inputs, &[dims], op).remove(0)
    }

    fn register_many<B: FusionBackend + GpuOps>(
        name: &'static str,
        inputs: Vec<FloatTensor<Fusion<B>>>,
        dims: &[[usize; 4]],
        op: Op,
    ) -> Vec<FloatTensor<Fusion<B>>> {
        let shapes = dims.iter().map(|&d| Shape::new(d)).collect();
        register_shapes::<B>(name, inputs, shapes, op)
    }

    fn register_shapes<B: FusionBackend + GpuOps>(
        name: &'static str,
        inputs: Vec<FloatTensor<Fusion<B>>>,
        shapes: Vec<Shape>,
        op: Op,
    ) -> Vec<FloatTensor<Fusion<B>>> {
        let client = inputs[0].client.clone();
        let dtype = inputs[0].dtype;
        let streams = OperationStreams::with_inputs(inputs.iter());
        let outs: Vec<TensorIr> = shapes
            .into_iter()
            .map(|shape| TensorIr::uninit(client.create_empty_handle(), shape, dtype))
            .collect();
        let irs: Vec<TensorIr> = inputs.into_iter().map(|t| t.into_ir()).collect();
        let desc = CustomOpIr::new(name, &irs, &outs);
        let custom = Custom::<B> {
            desc: desc.clone(),
            op,
            _b: PhantomData,
        };
        client.register(streams, OperationIr::Custom(desc), custom)
    }

    impl<B: FusionBackend + GpuOps> GpuOps for Fusion<B> {
        fn dw_forward(x: FloatTensor<Self>, w: FloatTensor<Self>, g: &Window) -> FloatTensor<Self> {
            let dims = [g.n, g.c, g.ho(), g.wo()];
            register::<B>("darts_dw_forward", vec![x, w], dims, Op::DwForward(*g))
        }

        fn dw_backward_x(
            gy: FloatTensor<Self>,
            w: FloatTensor<Self>,
            g: &Window,
        ) -> FloatTensor<Self> {
            let dims = [g.n, g.c, g.h, g.w];
            register::<B>(
                "darts_dw_backward_x",
                vec![gy, w],
                dims,
                Op::DwBackwardX(*g),
            )
        }

        fn dw_backward_w(
            x: FloatTensor<Self>,
            gy: FloatTensor<Self>,
            g: &Window,
        ) -> FloatTensor<Self> {
            let dims = [g.c, 1, g.kh, g.kw];
            register::<B>(
                "darts_dw_backward_w",
                vec![x, gy],
                dims,
                Op::DwBackwardW(*g),
            )
        }

        fn dw_relu_forward(
            x: FloatTensor<Self>,
            w: FloatTensor<Self>,
            g: &Window,
        ) -> FloatTensor<Self> {
            let dims = [g.n, g.c, g.ho(), g.wo()];
            let op = Op::DwReluForward(*g);
            register::<B>("darts_dw_relu_forward", vec![x, w], dims, op)
        }

        fn dw_relu_backward_x(
            gy: FloatTensor<Self>,
            w: FloatTensor<Self>,
            x: FloatTensor<Self>,
            g: &Window,
        ) -> FloatTensor<Self> {
            let dims = [g.n, g.c, g.h, g.w];
            let op = Op::DwReluBackwardX(*g);
            register::<B>("darts_dw_relu_backward_x", vec![gy, w, x], dims, op)
        }

        fn dw_relu_backward_w(
            x: FloatTensor<Self>,
            gy: FloatTensor<Self>,
            g: &Window,
        ) -> FloatTensor<Self> {
            let dims = [g.c, 1, g.kh, g.kw];
            let op = Op::DwReluBackwardW(*g);
            register::<B>("darts_dw_relu_backward_w", vec![x, gy], dims, op)
        }

        fn pw_forward(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
            let [n, _, h, wd] = x.shape.dims();
            let dims = [n, w.shape.dims::<4>()[0], h, wd];
            register::<B>("darts_pw_forward", vec![x, w], dims, Op::PwForward)
        }

        fn pw_backward_x(gy: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
            let [n, _, h, wd] = gy.shape.dims();
            let dims = [n, w.shape.dims::<4>()[1], h, wd];
            register::<B>("darts_pw_backward_x", vec![gy, w], dims, Op::PwBackwardX)
        }

        fn pw_backward_w(x: FloatTensor<Self>, gy: FloatTensor<Self>) -> FloatTensor<Self> {
            let dims = [gy.shape.dims::<4>()[1], x.shape.dims::<4>()[1], 1, 1];
            register::<B>("darts_pw_backward_w", vec![x, gy], dims, Op::PwBackwardW)
        }

        fn bn_forward(x: FloatTensor<Self>, epsilon: f64) -> [FloatTensor<Self>; 3] {
            let [n, c, h, w] = x.shape.dims();
            let dims = [[n, c, h, w], [1, c, 1, 1], [1, c, 1, 1]];
            let op = Op::BnForward(epsilon);
            let mut outs = register_many::<B>("darts_bn_forward", vec![x], &dims, op);
            let var = outs.pop().expect("three outputs");
            let mean = outs.pop().expect("three outputs");
            [outs.pop().expect("three outputs"), mean, var]
        }

        fn bn_backward(
            xhat: FloatTensor<Self>,
            var: FloatTensor<Self>,
            gy: FloatTensor<Self>,
            epsilon: f64,
        ) -> FloatTensor<Self> {
            let dims = gy.shape.dims();
            let op = Op::BnBackward(epsilon);
            register::<B>("darts_bn_backward", vec![xhat, var, gy], dims, op)
        }

        fn pool_forward(
            x: FloatTensor<Self>,
            g: &Window,
            kind: Pooling,
        ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>) {
            let dims = [g.n, g.c, g.ho(), g.wo()];
            let op = Op::PoolForward(*g, kind);
            if kind == Pooling::Max && B::pool_saves_argmax() {
                let mut outs = register_many::<B>("darts_pool_forward", vec![x], &[dims; 2], op);
                let argmax = outs.pop().expect("two outputs");
                (outs.pop().expect("two outputs"), Some(argmax))
            } else {
                (register::<B>("darts_pool_forward", vec![x], dims, op), None)
            }
        }

        fn pool_saves_argmax() -> bool {
            B::pool_saves_argmax()
        }

        fn pool_backward(
            x: FloatTensor<Self>,
            gy: FloatTensor<Self>,
            g: &Window,
            kind: Pooling,
        ) -> FloatTensor<Self> {
            let dims = [g.n, g.c, g.h, g.w];
            let op = Op::PoolBackward(*g, kind);
            register::<B>("darts_pool_backward", vec![x, gy], dims, op)
        }

        fn mix_forward(
            xs: Vec<FloatTensor<Self>>,
            w: FloatTensor<Self>,
            offset: usize,
            acc: Option<FloatTensor<Self>>,
        ) -> FloatTensor<Self> {
            let shape = xs[0].shape.clone();
            let op = Op::MixForward(offset, acc.is_some());
            let mut inputs = xs;
            inputs.push(w);
            inputs.extend(acc);
            register_shapes::<B>("darts_mix_forward", inputs, vec![shape], op).remove(0)
        }

        fn mix_backward_x(
            gy: FloatTensor<Self>,
            w: FloatTensor<Self>,
            offset: usize,
            count: usize,
        ) -> Vec<FloatTensor<Self>> {
            let shapes = vec![gy.shape.clone(); count];
            let op = Op::MixBackwardX(offset, count);
            register_shapes::<B>("darts_mix_backward_x", vec![gy, w], shapes, op)
        }

        fn mix_backward_w(
            xs: Vec<FloatTensor<Self>>,
            gy: FloatTensor<Self>,
            offset: usize,
            ops: usize,
        ) -> FloatTensor<Self> {
            let op = Op::MixBackwardW(offset, ops);
            let mut inputs = xs;
            inputs.push(gy);
            let shapes = vec![Shape::new([ops])];
            register_shapes::<B>("darts_mix_backward_w", inputs, shapes, op).remove(0)
        }
    }
}
