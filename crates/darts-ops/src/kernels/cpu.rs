//! Plain-slice CPU kernels for depthwise convolution, 2-D pooling and training-mode batch
//! normalisation, forward and backward, on contiguous NCHW data. Work is split over the `N·C`
//! planes (the channels for batch normalisation) with rayon; every reduction is done in a fixed
//! order, so results do not depend on the number of threads.

use rayon::prelude::*;
use std::ops::{Add, AddAssign, Div, Mul, Sub};

/// The element types the kernels run on (`f32`, `f64`).
pub trait Real:
    Copy
    + Send
    + Sync
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + AddAssign
    + 'static
{
    /// 0.
    const ZERO: Self;
    /// −∞.
    const NEG_INFINITY: Self;
    /// `n` as this type.
    fn from_usize(n: usize) -> Self;
    /// Not a number?
    fn is_nan(self) -> bool;
    /// As `f64`.
    fn to_f64(self) -> f64;
    /// From `f64` (rounded to nearest).
    fn from_f64(v: f64) -> Self;
}

macro_rules! real {
    ($t:ident) => {
        impl Real for $t {
            const ZERO: Self = 0.0;
            const NEG_INFINITY: Self = $t::NEG_INFINITY;
            fn from_usize(n: usize) -> Self {
                n as $t
            }
            fn is_nan(self) -> bool {
                $t::is_nan(self)
            }
            fn to_f64(self) -> f64 {
                self as f64
            }
            fn from_f64(v: f64) -> Self {
                v as $t
            }
        }
    };
}

real!(f32);
real!(f64);

/// A vector of `len` elements built chunk by chunk in parallel: each chunk of `chunk` elements
/// (the last may be shorter) is zeroed by the task that then hands it to `f(state, index,
/// chunk)` (`state` from `init`, once per task split). The memory is touched once, by the
/// thread that fills it, instead of zero-filled up front on the calling thread (a serial
/// `memset` per output tensor: 7% of a config B search step before).
pub(crate) fn par_build<T: Real, S>(
    len: usize,
    chunk: usize,
    init: impl Fn() -> S + Sync + Send,
    f: impl Fn(&mut S, usize, &mut [T]) + Sync + Send,
) -> Vec<T> {
    if len == 0 || chunk == 0 {
        return vec![T::ZERO; len];
    }
    let mut v: Vec<T> = Vec::with_capacity(len);
    v.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk)
        .enumerate()
        .for_each_init(init, |state, (i, c)| {
            for e in c.iter_mut() {
                e.write(T::ZERO);
            }
            // SAFETY: every element of `c` was initialised just above, and `MaybeUninit<T>`
            // has the layout of `T`.
            let c = unsafe { &mut *(c as *mut [std::mem::MaybeUninit<T>] as *mut [T]) };
            f(state, i, c);
        });
    // SAFETY: the chunks cover `0..len` and every one was initialised (a panic in `f` unwinds
    // out of `for_each_init` before this line, and the vector is dropped empty).
    unsafe { v.set_len(len) };
    v
}

/// Geometry of a sliding-window op on `[n, c, h, w]` input with a `kh×kw` window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Batch size.
    pub n: usize,
    /// Channels.
    pub c: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Window height.
    pub kh: usize,
    /// Window width.
    pub kw: usize,
    /// Stride `[sh, sw]`.
    pub stride: [usize; 2],
    /// Symmetric zero padding `[ph, pw]`.
    pub pad: [usize; 2],
    /// Dilation `[dh, dw]`.
    pub dil: [usize; 2],
}

impl Window {
    /// Output height.
    pub fn ho(&self) -> usize {
        (self.h + 2 * self.pad[0] - self.dil[0] * (self.kh - 1) - 1) / self.stride[0] + 1
    }

    /// Output width.
    pub fn wo(&self) -> usize {
        (self.w + 2 * self.pad[1] - self.dil[1] * (self.kw - 1) - 1) / self.stride[1] + 1
    }

    /// Whether the window fits the padded input at least once.
    pub fn is_valid(&self) -> bool {
        self.n > 0
            && self.c > 0
            && self.kh > 0
            && self.kw > 0
            && self.stride.iter().all(|&s| s > 0)
            && self.dil.iter().all(|&d| d > 0)
            && self.h + 2 * self.pad[0] > self.dil[0] * (self.kh - 1)
            && self.w + 2 * self.pad[1] > self.dil[1] * (self.kw - 1)
    }

    /// Input row read by output row `oy` at window row `ky`, if inside the input.
    #[inline(always)]
    fn in_row(&self, oy: usize, ky: usize) -> Option<usize> {
        let iy = (oy * self.stride[0] + ky * self.dil[0]) as isize - self.pad[0] as isize;
        (iy >= 0 && (iy as usize) < self.h).then_some(iy as usize)
    }

    /// Column offset of window column `kx` (input column = `ox·sw + off`).
    #[inline(always)]
    fn col_offset(&self, kx: usize) -> isize {
        (kx * self.dil[1]) as isize - self.pad[1] as isize
    }

    /// The output columns `lo..hi` whose input column `ox·sw + off` lies inside the input.
    #[inline(always)]
    fn col_range(&self, off: isize, wo: usize) -> (usize, usize) {
        let s = self.stride[1] as isize;
        let lo = if off >= 0 { 0 } else { ((-off) + s - 1) / s };
        let last = self.w as isize - 1 - off;
        let hi = if last < 0 {
            0
        } else {
            (last / s + 1).min(wo as isize)
        };
        (lo as usize, (hi.max(lo)) as usize)
    }
}

/// Per window column `kx`: the input-column offset and the valid output columns `lo..hi`.
fn columns(g: &Window) -> Vec<(isize, usize, usize)> {
    let wo = g.wo();
    (0..g.kw)
        .map(|kx| {
            let off = g.col_offset(kx);
            let (lo, hi) = g.col_range(off, wo);
            (off, lo, hi)
        })
        .collect()
}

/// Runs `$body` (an expression using only `#[inline(always)]` helpers) compiled for AVX2+FMA
/// when the CPU has them, else for the baseline target.
macro_rules! multiversion {
    ($name:ident, $avx:ident, ($($arg:ident : $ty:ty),*), $body:expr) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        fn $avx<T: Real>($($arg: $ty),*) {
            $body
        }

        fn $name<T: Real>($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU supports the features the function is compiled for.
                    unsafe { $avx($($arg),*) };
                    return;
                }
            }
            $body
        }
    };
}

/// Lanes of the depthwise kernels' accumulators: each unit of work is `DW_LANES` adjacent output
/// columns, summed over every tap in registers before one store.
const DW_LANES: usize = 8;

/// Layout of one plane zero-padded and split into column phases (see [`fill_padded`]).
#[derive(Clone, Copy, Debug)]
struct Padded {
    /// Padded rows.
    rows: usize,
    /// Length of one column phase of a row.
    phase_len: usize,
    /// Elements per padded row (`stride · phase_len`).
    row_stride: usize,
}

impl Window {
    /// The padded layout of an input plane.
    fn padded(&self) -> Padded {
        let s = self.stride[1];
        let phase_len = (self.w + 2 * self.pad[1]).div_ceil(s);
        Padded {
            rows: self.h + 2 * self.pad[0],
            phase_len,
            row_stride: s * phase_len,
        }
    }

    /// Per tap `(ky, kx)`, in row-major window order: where the input of output `(0, 0)` sits in
    /// the padded plane. Output `(oy, ox)` reads `oy·stride·row_stride + ox + offset`: the
    /// column phases make the window's columns contiguous whatever the stride.
    fn tap_offsets(&self, pd: &Padded) -> Vec<usize> {
        let (s, d) = (self.stride[1], self.dil[1]);
        (0..self.kh)
            .flat_map(|ky| {
                (0..self.kw).map(move |kx| {
                    let col = kx * d;
                    ky * self.dil[0] * pd.row_stride + (col % s) * pd.phase_len + col / s
                })
            })
            .collect()
    }
}

/// A padded plane's buffer, kept by a task from plane to plane.
struct PadBuf<T> {
    data: Vec<T>,
    /// The layout the buffer last held (what `fill_*` wrote where).
    layout: Option<[usize; 9]>,
}

impl<T> Default for PadBuf<T> {
    fn default() -> Self {
        Self {
            data: Vec::new(),
            layout: None,
        }
    }
}

impl<T: Real> PadBuf<T> {
    /// The buffer for a plane of `layout`: zeroed, unless it already holds a plane of that same
    /// layout, whose zeros (every position a plane's data does not overwrite) are then still in
    /// place.
    fn prepare(&mut self, layout: [usize; 9], len: usize) -> &mut [T] {
        if self.layout != Some(layout) || self.data.len() != len {
            self.data.clear();
            self.data.resize(len, T::ZERO);
            self.layout = Some(layout);
        }
        &mut self.data
    }
}

/// Copies one input plane into `buf`, zero-padded by `pad` and with each padded row split into
/// `stride[1]` phases (padded column `px` at `(px % s)·phase_len + px / s`), so that a strided
/// window's columns are adjacent in memory.
fn fill_padded<T: Real>(xp: &[T], g: &Window, pd: &Padded, pb: &mut PadBuf<T>) {
    let (s, pad) = (g.stride[1], g.pad[1]);
    let layout = [0, g.h, g.w, g.pad[0], pad, 1, s, pd.rows, pd.row_stride];
    let buf = pb.prepare(layout, pd.rows * pd.row_stride);
    for (iy, src) in xp.chunks_exact(g.w).enumerate() {
        let row = &mut buf[(iy + g.pad[0]) * pd.row_stride..][..pd.row_stride];
        if s == 1 {
            row[pad..pad + g.w].copy_from_slice(src);
            continue;
        }
        for r in 0..s {
            // The first padded column of phase r that holds an input column.
            let first = if pad > r {
                r + (pad - r).div_ceil(s) * s
            } else {
                r
            };
            let dst = &mut row[r * pd.phase_len + first / s..(r + 1) * pd.phase_len];
            for (d, &v) in dst.iter_mut().zip(src.iter().skip(first - pad).step_by(s)) {
                *d = v;
            }
        }
    }
}

/// One plane of the depthwise forward from its padded copy: `DW_LANES` outputs at a time, every
/// tap summed in registers (taps in row-major window order), one store.
#[inline(always)]
fn dw_fwd_padded_body<T: Real>(buf: &[T], wp: &[T], o: &mut [T], g: &Window, taps: &[usize]) {
    let (wo, rs) = (g.wo(), g.padded().row_stride);
    let full = wo - wo % DW_LANES;
    for (oy, orow) in o.chunks_exact_mut(wo).enumerate() {
        let base = oy * g.stride[0] * rs;
        for ox in (0..full).step_by(DW_LANES) {
            let mut acc = [T::ZERO; DW_LANES];
            for (&t, &wv) in taps.iter().zip(wp) {
                let xs: &[T; DW_LANES] = buf[base + t + ox..][..DW_LANES].try_into().unwrap();
                for j in 0..DW_LANES {
                    acc[j] += wv * xs[j];
                }
            }
            orow[ox..ox + DW_LANES].copy_from_slice(&acc);
        }
        for (ox, o) in orow.iter_mut().enumerate().skip(full) {
            let mut acc = T::ZERO;
            for (&t, &wv) in taps.iter().zip(wp) {
                acc += wv * buf[base + t + ox];
            }
            *o = acc;
        }
    }
}

multiversion!(
    dw_fwd_padded,
    dw_fwd_padded_avx2,
    (buf: &[T], wp: &[T], o: &mut [T], g: &Window, taps: &[usize]),
    dw_fwd_padded_body(buf, wp, o, g, taps)
);

/// One plane's weight gradient from the padded input: per tap, `DW_LANES` column partial sums
/// (`accs`) and one for the columns past the last full group (`tails`), then
/// `gw[k] = Σ lanes + tail` in a fixed order.
#[inline(always)]
fn dw_wgrad_padded_body<T: Real>(
    buf: &[T],
    gp: &[T],
    gw: &mut [T],
    g: &Window,
    taps: &[usize],
    accs: &mut [[T; DW_LANES]],
    tails: &mut [T],
) {
    let (wo, rs) = (g.wo(), g.padded().row_stride);
    let full = wo - wo % DW_LANES;
    accs.fill([T::ZERO; DW_LANES]);
    tails.fill(T::ZERO);
    for (oy, grow) in gp.chunks_exact(wo).enumerate() {
        let base = oy * g.stride[0] * rs;
        for ox in (0..full).step_by(DW_LANES) {
            let gs: &[T; DW_LANES] = grow[ox..ox + DW_LANES].try_into().unwrap();
            for (a, &t) in accs.iter_mut().zip(taps) {
                let xs: &[T; DW_LANES] = buf[base + t + ox..][..DW_LANES].try_into().unwrap();
                for j in 0..DW_LANES {
                    a[j] += gs[j] * xs[j];
                }
            }
        }
        for (ox, &gv) in grow.iter().enumerate().skip(full) {
            for (tl, &t) in tails.iter_mut().zip(taps) {
                *tl += gv * buf[base + t + ox];
            }
        }
    }
    for ((d, a), &tl) in gw.iter_mut().zip(accs.iter()).zip(tails.iter()) {
        let mut sum = T::ZERO;
        for &v in a {
            sum += v;
        }
        *d = sum + tl;
    }
}

multiversion!(
    dw_wgrad_padded,
    dw_wgrad_padded_avx2,
    (
        buf: &[T],
        gp: &[T],
        gw: &mut [T],
        g: &Window,
        taps: &[usize],
        accs: &mut [[T; DW_LANES]],
        tails: &mut [T]
    ),
    dw_wgrad_padded_body(buf, gp, gw, g, taps, accs, tails)
);

/// `out[n,c] = Σ_k w[c,k] · x[n,c, window k]`: depthwise convolution (groups = channels, one
/// filter per channel, no bias). `x`: `[n,c,h,w]`, `w`: `[c,kh,kw]`; returns `[n,c,ho,wo]`.
pub fn depthwise_forward<T: Real>(x: &[T], w: &[T], g: &Window) -> Vec<T> {
    let (ho, wo) = (g.ho(), g.wo());
    let plane = g.h * g.w;
    let ntaps = g.kh * g.kw;
    let pd = g.padded();
    let taps = g.tap_offsets(&pd);
    par_build(g.n * g.c * ho * wo, ho * wo, PadBuf::default, |pb, p, o| {
        let c = p % g.c;
        fill_padded(&x[p * plane..(p + 1) * plane], g, &pd, pb);
        dw_fwd_padded(&pb.data, &w[c * ntaps..(c + 1) * ntaps], o, g, &taps)
    })
}

/// The stride-1 geometry whose forward, over `dL/dout` spread out by the stride (zeros
/// between) and padded by `(k−1)·dil − pad` ([`fill_spread`]), with the filters flipped, is the
/// input gradient: `None` if that padding would be negative.
fn transposed_window(g: &Window) -> Option<Window> {
    let q0 = ((g.kh - 1) * g.dil[0]).checked_sub(g.pad[0])?;
    let q1 = ((g.kw - 1) * g.dil[1]).checked_sub(g.pad[1])?;
    let h = (g.h + (g.kh - 1) * g.dil[0]).checked_sub(2 * q0)?;
    let w = (g.w + (g.kw - 1) * g.dil[1]).checked_sub(2 * q1)?;
    let t = Window {
        h,
        w,
        pad: [q0, q1],
        stride: [1, 1],
        ..*g
    };
    (t.is_valid() && t.ho() == g.h && t.wo() == g.w).then_some(t)
}

/// Copies one plane of `dL/dout` (geometry `g`) into `buf` as the padded input of `t`
/// ([`transposed_window`]): output `(oy, ox)` at padded `(q0 + oy·s0, q1 + ox·s1)`, zeros
/// elsewhere.
fn fill_spread<T: Real>(gp: &[T], g: &Window, t: &Window, pd: &Padded, pb: &mut PadBuf<T>) {
    let (s0, s1, q1) = (g.stride[0], g.stride[1], t.pad[1]);
    let layout = [
        1,
        g.ho(),
        g.wo(),
        t.pad[0],
        q1,
        s0,
        s1,
        pd.rows,
        pd.row_stride,
    ];
    let buf = pb.prepare(layout, pd.rows * pd.row_stride);
    for (oy, grow) in gp.chunks_exact(g.wo()).enumerate() {
        let row = &mut buf[(t.pad[0] + oy * s0) * pd.row_stride..][..pd.row_stride];
        if s1 == 1 {
            row[q1..q1 + grow.len()].copy_from_slice(grow);
        } else {
            for (d, &v) in row[q1..].iter_mut().step_by(s1).zip(grow) {
                *d = v;
            }
        }
    }
}

/// One plane of the depthwise input gradient when [`transposed_window`] has none (scattered: each
/// output's gradient added to the inputs its window read), into `gxp`.
#[inline(always)]
fn dw_bwd_input_plane_body<T: Real>(
    wp: &[T],
    gp: &[T],
    gxp: &mut [T],
    g: &Window,
    cols: &[(isize, usize, usize)],
) {
    let wo = g.wo();
    let s = g.stride[1] as isize;
    for (oy, grow) in gp.chunks_exact(wo).enumerate() {
        for ky in 0..g.kh {
            let Some(iy) = g.in_row(oy, ky) else { continue };
            let xrow = &mut gxp[iy * g.w..(iy + 1) * g.w];
            for (kx, &(off, lo, hi)) in cols.iter().enumerate() {
                let wv = wp[ky * g.kw + kx];
                for (ox, &gv) in grow.iter().enumerate().take(hi).skip(lo) {
                    xrow[(ox as isize * s + off) as usize] += wv * gv;
                }
            }
        }
    }
}

multiversion!(
    dw_bwd_input_plane,
    dw_bwd_input_plane_avx2,
    (wp: &[T], gp: &[T], gxp: &mut [T], g: &Window, cols: &[(isize, usize, usize)]),
    dw_bwd_input_plane_body(wp, gp, gxp, g, cols)
);

/// Per-task scratch of [`depthwise_backward`].
struct DwScratch<T> {
    buf: PadBuf<T>,
    accs: Vec<[T; DW_LANES]>,
    tails: Vec<T>,
}

/// Backward of [`depthwise_forward`]: `(dL/dx, dL/dw)` from `dL/dout` (`gy`, `[n,c,ho,wo]`).
/// Either part can be skipped (returned empty).
///
/// The weight gradient reduces each plane against its padded input (a zero-padded copy), then sums
/// the planes over the batch in batch order. The input gradient is the forward kernel run over
/// `dL/dout` spread out by the stride and padded (`transposed_window`), with the filters
/// flipped (scattered output by output where that padding would be negative).
pub fn depthwise_backward<T: Real>(
    x: &[T],
    w: &[T],
    gy: &[T],
    g: &Window,
    want_x: bool,
    want_w: bool,
) -> (Vec<T>, Vec<T>) {
    let (ho, wo) = (g.ho(), g.wo());
    let plane = g.h * g.w;
    let oplane = ho * wo;
    let ntaps = g.kh * g.kw;
    let planes = g.n * g.c;
    let pd = g.padded();
    let taps = g.tap_offsets(&pd);
    let transposed = transposed_window(g).map(|t| {
        let tpd = t.padded();
        (t, tpd, t.tap_offsets(&tpd))
    });
    let flipped: Vec<T> = w
        .chunks_exact(ntaps)
        .flat_map(|f| f.iter().rev().copied())
        .collect();
    let cols = columns(g);
    let mut gw_parts = if want_w {
        vec![T::ZERO; planes * ntaps]
    } else {
        Vec::new()
    };
    let scratch = || DwScratch {
        buf: PadBuf::default(),
        accs: vec![[T::ZERO; DW_LANES]; ntaps],
        tails: vec![T::ZERO; ntaps],
    };
    gw_parts
        .par_chunks_mut(ntaps.max(1))
        .enumerate()
        .for_each_init(scratch, |s, (p, gwp)| {
            fill_padded(&x[p * plane..(p + 1) * plane], g, &pd, &mut s.buf);
            let gp = &gy[p * oplane..(p + 1) * oplane];
            dw_wgrad_padded(&s.buf.data, gp, gwp, g, &taps, &mut s.accs, &mut s.tails);
        });
    let input_grad = |pb: &mut PadBuf<T>, p: usize, gxp: &mut [T]| {
        let c = p % g.c;
        let gp = &gy[p * oplane..(p + 1) * oplane];
        match &transposed {
            Some((t, tpd, ttaps)) => {
                fill_spread(gp, g, t, tpd, pb);
                dw_fwd_padded(
                    &pb.data,
                    &flipped[c * ntaps..(c + 1) * ntaps],
                    gxp,
                    t,
                    ttaps,
                );
            }
            None => dw_bwd_input_plane(&w[c * ntaps..(c + 1) * ntaps], gp, gxp, g, &cols),
        }
    };
    let gx = if want_x {
        par_build(planes * plane, plane, PadBuf::default, input_grad)
    } else {
        Vec::new()
    };
    let gw = if want_w {
        // Sum the per-plane parts over the batch, in batch order.
        let mut gw = vec![T::ZERO; g.c * ntaps];
        for (p, part) in gw_parts.chunks(ntaps).enumerate() {
            let c = p % g.c;
            for (d, &v) in gw[c * ntaps..(c + 1) * ntaps].iter_mut().zip(part) {
                *d += v;
            }
        }
        gw
    } else {
        Vec::new()
    };
    (gx, gw)
}

/// Pooling kind of [`pool_forward`] / [`pool_backward`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    /// Maximum over the window (padding never wins; ties go to the first position in
    /// row-major window order, as PyTorch's CPU kernel).
    Max,
    /// Mean over the window positions inside the input (`count_include_pad = False`).
    AvgExcludePad,
    /// Sum over the window divided by the full window size (`count_include_pad = True`).
    AvgIncludePad,
}

/// Rows `0..kh` of the window of output row `oy` that fall inside the input, as a count.
fn rows_inside(g: &Window, oy: usize) -> usize {
    (0..g.kh).filter(|&ky| g.in_row(oy, ky).is_some()).count()
}

/// Columns of the window of output column `ox` that fall inside the input, as a count.
fn cols_inside(g: &Window, ox: usize) -> usize {
    (0..g.kw)
        .filter(|&kx| {
            let ix = ox as isize * g.stride[1] as isize + g.col_offset(kx);
            ix >= 0 && (ix as usize) < g.w
        })
        .count()
}

/// The divisor of each output position of an average pool (`ho·wo` values).
fn divisors<T: Real>(g: &Window, kind: Pooling) -> Vec<T> {
    let (ho, wo) = (g.ho(), g.wo());
    let full = T::from_usize(g.kh * g.kw);
    let cols: Vec<usize> = (0..wo).map(|ox| cols_inside(g, ox)).collect();
    let mut d = Vec::with_capacity(ho * wo);
    for oy in 0..ho {
        let rows = rows_inside(g, oy);
        for &c in &cols {
            d.push(match kind {
                Pooling::AvgExcludePad => T::from_usize((rows * c).max(1)),
                _ => full,
            });
        }
    }
    d
}

/// One plane of a pool, separably: a pass along the rows (`h × wo`), then along the columns.
/// With `arg`, also the input index of each output's maximum (first in row-major window
/// order: the first row holding the maximum, and in it the first column).
#[inline(always)]
fn pool_plane_body<T: Real>(
    xp: &[T],
    g: &Window,
    kind: Pooling,
    div: &[T],
    out: &mut [T],
    mut arg: Option<&mut [usize]>,
) {
    let (ho, wo) = (g.ho(), g.wo());
    let max = kind == Pooling::Max;
    let init = if max { T::NEG_INFINITY } else { T::ZERO };
    let s = g.stride[1] as isize;
    let mut hv = vec![init; g.h * wo];
    let mut hk = if arg.is_some() {
        vec![usize::MAX; g.h * wo]
    } else {
        Vec::new()
    };
    // Row pass. Interior output columns `a..b` (inside every window column's valid range)
    // run tap by tap over contiguous slices; the few border columns go one by one. A strided
    // window reads the column phases of an unpadded copy of the plane (`fill_padded`).
    let cols = columns(g);
    let a = cols.iter().map(|&(_, lo, _)| lo).max().unwrap_or(0);
    let b = cols.iter().map(|&(_, _, hi)| hi).min().unwrap_or(0);
    let bare = Window { pad: [0, 0], ..*g };
    let pd = bare.padded();
    let pl = pd.phase_len;
    let mut phases = PadBuf::default();
    if s != 1 {
        fill_padded(xp, &bare, &pd, &mut phases);
    }
    for iy in 0..g.h {
        let xrow = &xp[iy * g.w..(iy + 1) * g.w];
        let src: &[T] = if s == 1 {
            xrow
        } else {
            &phases.data[iy * pd.row_stride..][..pd.row_stride]
        };
        let hrow = &mut hv[iy * wo..(iy + 1) * wo];
        let mut krow = if hk.is_empty() {
            None
        } else {
            Some(&mut hk[iy * wo..(iy + 1) * wo])
        };
        for (kx, &(off, _, _)) in cols.iter().enumerate() {
            if a >= b {
                break;
            }
            // Input column `ox·s + off` is element `ox + off div s` of phase `off mod s`.
            let start = off.rem_euclid(s) as usize * pl + (a as isize + off.div_euclid(s)) as usize;
            let seg = &src[start..start + (b - a)];
            let dst = &mut hrow[a..b];
            match krow.as_deref_mut() {
                _ if !max => {
                    for (o, &v) in dst.iter_mut().zip(seg) {
                        *o += v;
                    }
                }
                None => {
                    for (o, &v) in dst.iter_mut().zip(seg) {
                        *o = if v > *o || v.is_nan() { v } else { *o };
                    }
                }
                Some(kr) => {
                    for (((o, k), &v), ox) in dst.iter_mut().zip(&mut kr[a..b]).zip(seg).zip(a..) {
                        if kx == 0 || v > *o || v.is_nan() {
                            *o = v;
                            *k = (ox as isize * s + off) as usize;
                        }
                    }
                }
            }
        }
        for ox in (0..a.min(wo)).chain(b.max(a)..wo) {
            let mut acc = init;
            let mut at = usize::MAX;
            for &(off, _, _) in &cols {
                let ix = ox as isize * s + off;
                if ix < 0 || ix as usize >= g.w {
                    continue;
                }
                let v = xrow[ix as usize];
                if !max {
                    acc += v;
                } else if at == usize::MAX || v > acc || v.is_nan() {
                    acc = v;
                    at = ix as usize;
                }
            }
            hrow[ox] = acc;
            if let Some(kr) = krow.as_deref_mut() {
                kr[ox] = at;
            }
        }
    }
    // Column pass.
    for oy in 0..ho {
        let orow = &mut out[oy * wo..(oy + 1) * wo];
        orow.fill(init);
        let mut arow = arg.as_deref_mut().map(|a| &mut a[oy * wo..(oy + 1) * wo]);
        if let Some(a) = arow.as_deref_mut() {
            a.fill(usize::MAX);
        }
        for ky in 0..g.kh {
            let Some(iy) = g.in_row(oy, ky) else { continue };
            let hrow = &hv[iy * wo..(iy + 1) * wo];
            match (max, arow.as_deref_mut()) {
                (false, _) => {
                    for (o, &v) in orow.iter_mut().zip(hrow) {
                        *o += v;
                    }
                }
                (true, None) => {
                    for (o, &v) in orow.iter_mut().zip(hrow) {
                        *o = if v > *o || v.is_nan() { v } else { *o };
                    }
                }
                (true, Some(a)) => {
                    let krow = &hk[iy * wo..(iy + 1) * wo];
                    for ox in 0..wo {
                        let v = hrow[ox];
                        if krow[ox] != usize::MAX
                            && (a[ox] == usize::MAX || v > orow[ox] || v.is_nan())
                        {
                            orow[ox] = v;
                            a[ox] = iy * g.w + krow[ox];
                        }
                    }
                }
            }
        }
        if !max {
            for (o, &d) in orow.iter_mut().zip(&div[oy * wo..(oy + 1) * wo]) {
                *o = *o / d;
            }
        }
    }
}

multiversion!(
    pool_plane,
    pool_plane_avx2,
    (
        xp: &[T],
        g: &Window,
        kind: Pooling,
        div: &[T],
        out: &mut [T],
        arg: Option<&mut [usize]>
    ),
    pool_plane_body(xp, g, kind, div, out, arg)
);

/// 2-D pooling of `[n,c,h,w]` (contiguous) to `[n,c,ho,wo]` (dilation must be 1).
pub fn pool_forward<T: Real>(x: &[T], g: &Window, kind: Pooling) -> Vec<T> {
    debug_assert_eq!(g.dil, [1, 1]);
    let (ho, wo) = (g.ho(), g.wo());
    let plane = g.h * g.w;
    let div = divisors::<T>(g, kind);
    par_build(
        g.n * g.c * ho * wo,
        ho * wo,
        || (),
        |_, p, o| pool_plane(&x[p * plane..(p + 1) * plane], g, kind, &div, o, None),
    )
}

/// Backward of [`pool_forward`]: `dL/dx` from `x` and `dL/dout` (`gy`). The maximum's position
/// is recomputed from `x` (nothing is stored by the forward).
pub fn pool_backward<T: Real>(x: &[T], gy: &[T], g: &Window, kind: Pooling) -> Vec<T> {
    debug_assert_eq!(g.dil, [1, 1]);
    let (ho, wo) = (g.ho(), g.wo());
    let plane = g.h * g.w;
    let div = divisors::<T>(g, kind);
    par_build(
        g.n * g.c * plane,
        plane,
        || (),
        |_, p, gxp| {
            let xp = &x[p * plane..(p + 1) * plane];
            let gp = &gy[p * ho * wo..(p + 1) * ho * wo];
            if kind == Pooling::Max {
                let mut out = vec![T::ZERO; ho * wo];
                let mut arg = vec![usize::MAX; ho * wo];
                pool_plane(xp, g, kind, &div, &mut out, Some(&mut arg));
                for (&a, &gv) in arg.iter().zip(gp) {
                    if a != usize::MAX {
                        gxp[a] += gv;
                    }
                }
                return;
            }
            // Average: spread g/div back along the columns, then along the rows.
            let mut rows = vec![T::ZERO; g.h * wo];
            for oy in 0..ho {
                let grow = &gp[oy * wo..(oy + 1) * wo];
                let drow = &div[oy * wo..(oy + 1) * wo];
                for ky in 0..g.kh {
                    let Some(iy) = g.in_row(oy, ky) else { continue };
                    for ((r, &gv), &d) in
                        rows[iy * wo..(iy + 1) * wo].iter_mut().zip(grow).zip(drow)
                    {
                        *r += gv / d;
                    }
                }
            }
            let s = g.stride[1] as isize;
            for iy in 0..g.h {
                let rrow = &rows[iy * wo..(iy + 1) * wo];
                let xrow = &mut gxp[iy * g.w..(iy + 1) * g.w];
                for kx in 0..g.kw {
                    let off = g.col_offset(kx);
                    let (lo, hi) = g.col_range(off, wo);
                    if lo >= hi {
                        continue;
                    }
                    if s == 1 {
                        let start = (lo as isize + off) as usize;
                        for (d, &v) in xrow[start..start + (hi - lo)].iter_mut().zip(&rrow[lo..hi])
                        {
                            *d += v;
                        }
                    } else {
                        for (ox, &v) in rrow.iter().enumerate().take(hi).skip(lo) {
                            xrow[(ox as isize * s + off) as usize] += v;
                        }
                    }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct, loop-for-loop definition of the depthwise convolution.
    fn naive_dw(x: &[f64], w: &[f64], g: &Window) -> Vec<f64> {
        let (ho, wo) = (g.ho(), g.wo());
        let mut out = vec![0.0; g.n * g.c * ho * wo];
        for n in 0..g.n {
            for c in 0..g.c {
                for oy in 0..ho {
                    for ox in 0..wo {
                        let mut acc = 0.0;
                        for ky in 0..g.kh {
                            for kx in 0..g.kw {
                                let iy =
                                    (oy * g.stride[0] + ky * g.dil[0]) as isize - g.pad[0] as isize;
                                let ix =
                                    (ox * g.stride[1] + kx * g.dil[1]) as isize - g.pad[1] as isize;
                                if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                    continue;
                                }
                                acc += w[(c * g.kh + ky) * g.kw + kx]
                                    * x[((n * g.c + c) * g.h + iy as usize) * g.w + ix as usize];
                            }
                        }
                        out[((n * g.c + c) * ho + oy) * wo + ox] = acc;
                    }
                }
            }
        }
        out
    }

    fn data(len: usize, seed: u64) -> Vec<f64> {
        // A small LCG: deterministic, no dependency.
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
            })
            .collect()
    }

    fn geometries() -> Vec<Window> {
        let mut v = Vec::new();
        // (3, 3, 1): padding wider than the window, the scattered input gradient.
        for (k, pad, dil) in [
            (3, 1, 1),
            (5, 2, 1),
            (3, 2, 2),
            (5, 4, 2),
            (3, 0, 1),
            (3, 3, 1),
        ] {
            for stride in [1, 2] {
                for (h, w) in [(7, 6), (8, 8), (5, 9), (11, 21), (32, 32)] {
                    v.push(Window {
                        n: 2,
                        c: 3,
                        h,
                        w,
                        kh: k,
                        kw: k,
                        stride: [stride, stride],
                        pad: [pad, pad],
                        dil: [dil, dil],
                    });
                }
            }
        }
        v
    }

    #[test]
    fn depthwise_matches_the_definition_and_its_adjoint() {
        for g in geometries() {
            assert!(g.is_valid());
            assert_eq!(
                transposed_window(&g).is_some(),
                g.pad[0] <= (g.kh - 1) * g.dil[0],
                "{g:?}"
            );
            let x = data(g.n * g.c * g.h * g.w, 1);
            let w = data(g.c * g.kh * g.kw, 2);
            let out = depthwise_forward(&x, &w, &g);
            let want = naive_dw(&x, &w, &g);
            assert_eq!(out.len(), want.len());
            for (a, b) in out.iter().zip(&want) {
                assert!((a - b).abs() < 1e-12, "{g:?}: {a} vs {b}");
            }
            // The backward is the adjoint: <gy, conv(x, w)> is bilinear, so
            // <gx, dx> = <gy, conv(dx, w)> and <gw, dw> = <gy, conv(x, dw)>.
            let gy = data(out.len(), 3);
            let (gx, gw) = depthwise_backward(&x, &w, &gy, &g, true, true);
            let dx = data(x.len(), 4);
            let dw = data(w.len(), 5);
            let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(p, q)| p * q).sum::<f64>();
            let lhs_x = dot(&gx, &dx);
            let rhs_x = dot(&gy, &naive_dw(&dx, &w, &g));
            assert!((lhs_x - rhs_x).abs() < 1e-10, "{g:?}: {lhs_x} vs {rhs_x}");
            let lhs_w = dot(&gw, &dw);
            let rhs_w = dot(&gy, &naive_dw(&x, &dw, &g));
            assert!((lhs_w - rhs_w).abs() < 1e-10, "{g:?}: {lhs_w} vs {rhs_w}");
            // Parts can be skipped.
            let (gx2, gw2) = depthwise_backward(&x, &w, &gy, &g, true, false);
            assert_eq!(gx2, gx);
            assert!(gw2.is_empty());
            let (gx3, gw3) = depthwise_backward(&x, &w, &gy, &g, false, true);
            assert!(gx3.is_empty());
            assert_eq!(gw3, gw);
        }
    }

    fn naive_pool(x: &[f64], g: &Window, kind: Pooling) -> Vec<f64> {
        let (ho, wo) = (g.ho(), g.wo());
        let mut out = Vec::new();
        for p in 0..g.n * g.c {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut vals = Vec::new();
                    for ky in 0..g.kh {
                        for kx in 0..g.kw {
                            let iy = (oy * g.stride[0] + ky) as isize - g.pad[0] as isize;
                            let ix = (ox * g.stride[1] + kx) as isize - g.pad[1] as isize;
                            if iy >= 0 && ix >= 0 && iy < g.h as isize && ix < g.w as isize {
                                vals.push(x[p * g.h * g.w + iy as usize * g.w + ix as usize]);
                            }
                        }
                    }
                    out.push(match kind {
                        Pooling::Max => vals.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
                        Pooling::AvgExcludePad => vals.iter().sum::<f64>() / vals.len() as f64,
                        Pooling::AvgIncludePad => vals.iter().sum::<f64>() / (g.kh * g.kw) as f64,
                    });
                }
            }
        }
        out
    }

    #[test]
    fn pools_match_the_definition_and_finite_differences() {
        // 3×3 (stride 1 and 2, padding 1: the DARTS pools), 5×5/3 (the auxiliary head's),
        // 2×2/2; widths with no, few and many interior columns.
        for (k, stride, pad) in [(3, 1, 1), (3, 2, 1), (5, 3, 0), (2, 2, 0)] {
            for (h, w) in [(7, 6), (8, 8), (1, 3), (11, 21)] {
                let g = Window {
                    n: 2,
                    c: 2,
                    h,
                    w,
                    kh: k,
                    kw: k,
                    stride: [stride, stride],
                    pad: [pad, pad],
                    dil: [1, 1],
                };
                if !g.is_valid() {
                    continue;
                }
                for kind in [Pooling::Max, Pooling::AvgExcludePad, Pooling::AvgIncludePad] {
                    let x = data(g.n * g.c * h * w, 7);
                    let out = pool_forward(&x, &g, kind);
                    let want = naive_pool(&x, &g, kind);
                    for (a, b) in out.iter().zip(&want) {
                        assert!((a - b).abs() < 1e-12, "{kind:?} {g:?}");
                    }
                    // Gradient of <gy, pool(x)> by central differences (x has no ties).
                    let gy = data(out.len(), 8);
                    let gx = pool_backward(&x, &gy, &g, kind);
                    let f = |x: &[f64]| {
                        pool_forward(x, &g, kind)
                            .iter()
                            .zip(&gy)
                            .map(|(a, b)| a * b)
                            .sum::<f64>()
                    };
                    for i in 0..x.len() {
                        let mut xp = x.clone();
                        let mut xm = x.clone();
                        xp[i] += 1e-6;
                        xm[i] -= 1e-6;
                        let fd = (f(&xp) - f(&xm)) / 2e-6;
                        assert!((fd - gx[i]).abs() < 1e-6, "{kind:?} {g:?} at {i}");
                    }
                }
            }
        }
    }

    #[test]
    fn max_pool_ties_go_to_the_first_window_position() {
        let g = Window {
            n: 1,
            c: 1,
            h: 2,
            w: 2,
            kh: 3,
            kw: 3,
            stride: [1, 1],
            pad: [1, 1],
            dil: [1, 1],
        };
        let x = [1.0f64, 1.0, 1.0, 1.0];
        let gx = pool_backward(&x, &[1.0, 1.0, 1.0, 1.0], &g, Pooling::Max);
        // Every window holds all four (equal) values; the first in row-major order is x[0].
        assert_eq!(gx, vec![4.0, 0.0, 0.0, 0.0]);
    }
}

/// Lanes of the partial sums in the batch-normalisation reductions (a fixed number, so the
/// summation order does not depend on the CPU).
const LANES: usize = 16;

/// `Σ f(a_i)` over a row, in [`LANES`] interleaved partial sums (see [`lane_sum2`]).
#[inline(always)]
fn lane_sum<T: Real>(a: &[T], f: impl Fn(T) -> T) -> T {
    let mut acc = [T::ZERO; LANES];
    let ac = a.chunks_exact(LANES);
    let mut tail = T::ZERO;
    for &x in ac.remainder() {
        tail += f(x);
    }
    for ca in ac {
        for l in 0..LANES {
            acc[l] += f(ca[l]);
        }
    }
    let mut s = T::ZERO;
    for a in acc {
        s += a;
    }
    s + tail
}

/// `Σ f(a_i, b_i)` over two equally long rows, in [`LANES`] interleaved partial sums added in a
/// fixed order at the end (vectorises; the same bits on every run).
#[inline(always)]
fn lane_sum2<T: Real>(a: &[T], b: &[T], f: impl Fn(T, T) -> T) -> T {
    let mut acc = [T::ZERO; LANES];
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (ca, cb) in ac.zip(bc) {
        for l in 0..LANES {
            acc[l] += f(ca[l], cb[l]);
        }
    }
    let mut tail = T::ZERO;
    for (&x, &y) in ar.iter().zip(br) {
        tail += f(x, y);
    }
    let mut s = T::ZERO;
    for a in acc {
        s += a;
    }
    s + tail
}

/// Channel `ch`'s batch statistics over its `n` planes (`x[(i·c + ch)·hw..][..hw]`): the mean,
/// then the biased variance of the centred values, each plane's partial sums added in `f64`.
#[inline(always)]
fn bn_fwd_stats_body<T: Real>(x: &[T], [n, c, hw]: [usize; 3], ch: usize, stats: &mut (f64, f64)) {
    let count = (n * hw) as f64;
    let plane = |i: usize| &x[(i * c + ch) * hw..(i * c + ch + 1) * hw];
    let mut sum = 0.0f64;
    for i in 0..n {
        sum += lane_sum(plane(i), |a| a).to_f64();
    }
    let mean = sum / count;
    let m = T::from_f64(mean);
    let mut sq = 0.0f64;
    for i in 0..n {
        sq += lane_sum(plane(i), |a| (a - m) * (a - m)).to_f64();
    }
    *stats = (mean, sq / count);
}

multiversion!(
    bn_fwd_stats,
    bn_fwd_stats_avx2,
    (x: &[T], dims: [usize; 3], ch: usize, stats: &mut (f64, f64)),
    bn_fwd_stats_body(x, dims, ch, stats)
);

/// One plane of the forward: `y = (x − mean)·scale + shift`.
#[inline(always)]
fn bn_fwd_plane_body<T: Real>(xp: &[T], yp: &mut [T], [mean, scale, shift]: [T; 3]) {
    for (o, &v) in yp.iter_mut().zip(xp) {
        *o = (v - mean) * scale + shift;
    }
}

multiversion!(
    bn_fwd_plane,
    bn_fwd_plane_avx2,
    (xp: &[T], yp: &mut [T], coef: [T; 3]),
    bn_fwd_plane_body(xp, yp, coef)
);

/// Training-mode batch normalisation of `x` (`[n, c, hw]`, contiguous) with batch statistics:
/// `y = (x − mean_c)/√(var_c + ε)·γ_c + β_c` (γ = 1, β = 0 when `None`). Returns `y` and the
/// per-channel mean and biased variance (as PyTorch: the variance is the mean square of the
/// centred values, a second pass; the partial sums of each plane are added in `f64`).
/// Channels, then planes, in parallel.
pub fn batch_norm_forward<T: Real>(
    x: &[T],
    [n, c, hw]: [usize; 3],
    gamma: Option<&[T]>,
    beta: Option<&[T]>,
    eps: f64,
) -> (Vec<T>, Vec<f64>, Vec<f64>) {
    let stats: Vec<(f64, f64)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let mut st = (0.0, 0.0);
            bn_fwd_stats(x, [n, c, hw], ch, &mut st);
            st
        })
        .collect();
    let coef: Vec<[T; 3]> = (0..c)
        .map(|ch| {
            let (mean, var) = stats[ch];
            let g = gamma.map_or(T::from_f64(1.0), |g| g[ch]);
            let b = beta.map_or(T::ZERO, |b| b[ch]);
            [
                T::from_f64(mean),
                T::from_f64(1.0 / (var + eps).sqrt()) * g,
                b,
            ]
        })
        .collect();
    let y = par_build(
        n * c * hw,
        hw,
        || (),
        |_, p, yp| bn_fwd_plane(&x[p * hw..(p + 1) * hw], yp, coef[p % c]),
    );
    let (mean, var) = stats.into_iter().unzip();
    (y, mean, var)
}

/// Channel `ch`'s `(Σ g, Σ g·(x − mean))` over its `n` planes (see [`bn_fwd_stats_body`]).
#[inline(always)]
fn bn_bwd_sums_body<T: Real>(
    x: &[T],
    gy: &[T],
    [n, c, hw]: [usize; 3],
    ch: usize,
    mean: T,
    sums: &mut (f64, f64),
) {
    let (mut sg, mut sgx) = (0.0f64, 0.0f64);
    for i in 0..n {
        let r = (i * c + ch) * hw..(i * c + ch + 1) * hw;
        let (xr, gr) = (&x[r.clone()], &gy[r]);
        sg += lane_sum(gr, |g| g).to_f64();
        sgx += lane_sum2(xr, gr, |v, g| g * (v - mean)).to_f64();
    }
    *sums = (sg, sgx);
}

multiversion!(
    bn_bwd_sums,
    bn_bwd_sums_avx2,
    (x: &[T], gy: &[T], dims: [usize; 3], ch: usize, mean: T, sums: &mut (f64, f64)),
    bn_bwd_sums_body(x, gy, dims, ch, mean, sums)
);

/// One plane of the input gradient: `k·(g − mean(g) − x̂·mean(g·x̂))`, `x̂ = (x − mean)/σ`;
/// `coef` is (mean, 1/σ, k = γ/σ, mean(g), mean(g·x̂)).
#[inline(always)]
fn bn_bwd_plane_body<T: Real>(xp: &[T], gp: &[T], op: &mut [T], coef: [T; 5]) {
    let [mean, inv_std, k, mg, mgx] = coef;
    for ((o, &v), &g) in op.iter_mut().zip(xp).zip(gp) {
        let xh = (v - mean) * inv_std;
        *o = k * (g - mg - xh * mgx);
    }
}

multiversion!(
    bn_bwd_plane,
    bn_bwd_plane_avx2,
    (xp: &[T], gp: &[T], op: &mut [T], coef: [T; 5]),
    bn_bwd_plane_body(xp, gp, op, coef)
);

/// The gradients of [`batch_norm_forward`] from its input `x`, the statistics it returned and
/// `dL/dy` (`gy`): `dL/dx = γ/σ · (g − mean(g) − x̂·mean(g·x̂))` (when `want_x`), `dL/dγ = Σ g·x̂`
/// and `dL/dβ = Σ g` per channel (`σ = √(var + ε)`, `x̂ = (x − mean)/σ`).
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_backward<T: Real>(
    x: &[T],
    gy: &[T],
    [n, c, hw]: [usize; 3],
    mean: &[f64],
    var: &[f64],
    gamma: Option<&[T]>,
    eps: f64,
    want_x: bool,
) -> (Option<Vec<T>>, Vec<T>, Vec<T>) {
    let inv_std: Vec<T> = var
        .iter()
        .map(|&v| T::from_f64(1.0 / (v + eps).sqrt()))
        .collect();
    // (Σ g, Σ g·x̂) per channel; Σ g·x̂ = (1/σ)·Σ g·(x − mean).
    let sums: Vec<(f64, f64)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let mut s = (0.0, 0.0);
            bn_bwd_sums(x, gy, [n, c, hw], ch, T::from_f64(mean[ch]), &mut s);
            (s.0, s.1 * inv_std[ch].to_f64())
        })
        .collect();
    let gx = want_x.then(|| {
        let count = (n * hw) as f64;
        let coef: Vec<[T; 5]> = (0..c)
            .map(|ch| {
                let g = gamma.map_or(T::from_f64(1.0), |g| g[ch]);
                let (sg, sgxh) = sums[ch];
                [
                    T::from_f64(mean[ch]),
                    inv_std[ch],
                    g * inv_std[ch],
                    T::from_f64(sg / count),
                    T::from_f64(sgxh / count),
                ]
            })
            .collect();
        par_build(
            n * c * hw,
            hw,
            || (),
            |_, p, op| {
                let r = p * hw..(p + 1) * hw;
                bn_bwd_plane(&x[r.clone()], &gy[r], op, coef[p % c])
            },
        )
    });
    let gbeta = sums.iter().map(|s| T::from_f64(s.0)).collect();
    let ggamma = sums.iter().map(|s| T::from_f64(s.1)).collect();
    (gx, ggamma, gbeta)
}

/// Elements per parallel task of the element-wise kernels.
const ELEMENTWISE_CHUNK: usize = 1 << 15;

/// `max(x, 0)` element-wise (`-0` gives `0`; NaN stays NaN, as in PyTorch and Burn).
pub fn relu_forward<T: Real>(x: &[T]) -> Vec<T> {
    const K: usize = ELEMENTWISE_CHUNK;
    par_build(
        x.len(),
        K,
        || (),
        |_, i, y| relu_fwd_chunk(&x[i * K..(i * K + y.len())], y),
    )
}

#[inline(always)]
fn relu_fwd_body<T: Real>(x: &[T], y: &mut [T]) {
    for (y, &v) in y.iter_mut().zip(x) {
        *y = if v <= T::ZERO { T::ZERO } else { v };
    }
}

multiversion!(relu_fwd_chunk, relu_fwd_chunk_avx2, (x: &[T], y: &mut [T]), relu_fwd_body(x, y));

/// The ReLU's input gradient from its output `y` and `dL/dy`: `gy` where `y > 0`, else 0
/// (PyTorch's `threshold_backward` rule).
pub fn relu_backward<T: Real>(y: &[T], gy: &[T]) -> Vec<T> {
    const K: usize = ELEMENTWISE_CHUNK;
    par_build(
        y.len(),
        K,
        || (),
        |_, i, gx| {
            let r = i * K..(i * K + gx.len());
            relu_bwd_chunk(&y[r.clone()], &gy[r], gx)
        },
    )
}

#[inline(always)]
fn relu_bwd_body<T: Real>(y: &[T], gy: &[T], gx: &mut [T]) {
    for ((o, &v), &g) in gx.iter_mut().zip(y).zip(gy) {
        *o = if v <= T::ZERO { T::ZERO } else { g };
    }
}

multiversion!(
    relu_bwd_chunk,
    relu_bwd_chunk_avx2,
    (y: &[T], gy: &[T], gx: &mut [T]),
    relu_bwd_body(y, gy, gx)
);
