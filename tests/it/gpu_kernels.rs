//! The CubeCL kernels of `darts_ops::kernels::cube` (through [`GpuOps`] on the GPU backend's
//! own type, i.e. inside Burn's fusion stream) against their definitions (plain f64 loops here)
//! and against Burn's own operations (the trait's provided methods, on flex): the depthwise
//! convolution forward, input gradient and weight gradient for every geometry DARTS uses
//! (3×3 and 5×5, stride 1 and 2, dilation 1 and 2) plus 7×7 and odd sizes, plain and with
//! the ReLU read with the input; max and average
//! pooling (both padding conventions) forward and backward, the max pool's ties included
//! (first maximum in row-major window order); the 1×1 convolution forward and both gradients;
//! training-mode BatchNorm forward (x̂, batch mean and variance) and backward; a mixed op's
//! weighted sum forward and both gradients (and through autodiff against flex). `N·C` spans many
//! workgroups (and, for the weight gradient, `N·Ho·Wo` many passes of a 256-unit cube).
#![cfg(any(feature = "wgpu", feature = "cuda"))]

use burn::backend::Flex;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use darts::ops::kernels::gpu::GpuOps;
use darts::ops::kernels::{self, Pooling, Window};

/// Deterministic values in (−1, 1) (an LCG), so flex and the GPU see the same numbers.
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f64 / (1u64 << 24) as f64 * 2.0 - 1.0) as f32
        })
        .collect()
}

fn prim<B: Backend>(v: &[f32], dims: [usize; 4], device: &B::Device) -> FloatTensor<B> {
    Tensor::<B, 4>::from_data(TensorData::new(v.to_vec(), dims), device)
        .into_primitive()
        .tensor()
}

fn read<B: Backend>(t: FloatTensor<B>) -> Vec<f32> {
    Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(t))
        .into_data()
        .to_vec::<f32>()
        .unwrap()
}

fn assert_close(what: &str, got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1e-6f64, |m, v| m.max(v.abs()));
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            (*a as f64 - b).abs() <= 1e-5 * scale.max(1.0),
            "{what}[{i}]: {a} vs {b} (scale {scale})"
        );
    }
}

fn as_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Padded-frame input value, or `None` in the padding.
fn at(x: &[f32], g: &Window, plane: usize, py: usize, px: usize) -> Option<f64> {
    let (y, x_) = (py.checked_sub(g.pad[0])?, px.checked_sub(g.pad[1])?);
    (y < g.h && x_ < g.w).then(|| x[(plane * g.h + y) * g.w + x_] as f64)
}

fn dw_forward_def(x: &[f32], w: &[f32], g: &Window) -> Vec<f64> {
    let (ho, wo) = (g.ho(), g.wo());
    let mut y = vec![0.0; g.n * g.c * ho * wo];
    for plane in 0..g.n * g.c {
        let c = plane % g.c;
        for oy in 0..ho {
            for ox in 0..wo {
                let mut acc = 0.0;
                for i in 0..g.kh {
                    for j in 0..g.kw {
                        let py = oy * g.stride[0] + i * g.dil[0];
                        let px = ox * g.stride[1] + j * g.dil[1];
                        if let Some(v) = at(x, g, plane, py, px) {
                            acc += v * w[(c * g.kh + i) * g.kw + j] as f64;
                        }
                    }
                }
                y[(plane * ho + oy) * wo + ox] = acc;
            }
        }
    }
    y
}

/// Both gradients of the depthwise convolution by the adjoint scatter of its definition.
fn dw_backward_def(x: &[f32], w: &[f32], gy: &[f32], g: &Window) -> (Vec<f64>, Vec<f64>) {
    let (ho, wo) = (g.ho(), g.wo());
    let mut gx = vec![0.0; x.len()];
    let mut gw = vec![0.0; w.len()];
    for plane in 0..g.n * g.c {
        let c = plane % g.c;
        for oy in 0..ho {
            for ox in 0..wo {
                let up = gy[(plane * ho + oy) * wo + ox] as f64;
                for i in 0..g.kh {
                    for j in 0..g.kw {
                        let py = oy * g.stride[0] + i * g.dil[0];
                        let px = ox * g.stride[1] + j * g.dil[1];
                        if let Some(v) = at(x, g, plane, py, px) {
                            let k = (c * g.kh + i) * g.kw + j;
                            gw[k] += v * up;
                            let xi = (plane * g.h + py - g.pad[0]) * g.w + px - g.pad[1];
                            gx[xi] += w[k] as f64 * up;
                        }
                    }
                }
            }
        }
    }
    (gx, gw)
}

/// Pooling forward and backward by definition (padding never wins the max; ties go to the
/// first position in row-major window order).
fn pool_def(x: &[f32], gy: &[f32], g: &Window, kind: Pooling) -> (Vec<f64>, Vec<f64>) {
    let (ho, wo) = (g.ho(), g.wo());
    let mut y = vec![0.0; g.n * g.c * ho * wo];
    let mut gx = vec![0.0; x.len()];
    for plane in 0..g.n * g.c {
        for oy in 0..ho {
            for ox in 0..wo {
                let mut inside = vec![];
                for i in 0..g.kh {
                    for j in 0..g.kw {
                        let (py, px) = (oy * g.stride[0] + i, ox * g.stride[1] + j);
                        if let Some(v) = at(x, g, plane, py, px) {
                            let xi = (plane * g.h + py - g.pad[0]) * g.w + px - g.pad[1];
                            inside.push((xi, v));
                        }
                    }
                }
                let o = (plane * ho + oy) * wo + ox;
                let up = gy[o] as f64;
                match kind {
                    Pooling::Max => {
                        let mut best = inside[0];
                        for &(xi, v) in &inside[1..] {
                            if v > best.1 {
                                best = (xi, v);
                            }
                        }
                        y[o] = best.1;
                        gx[best.0] += up;
                    }
                    Pooling::AvgExcludePad | Pooling::AvgIncludePad => {
                        let count = if kind == Pooling::AvgExcludePad {
                            inside.len() as f64
                        } else {
                            (g.kh * g.kw) as f64
                        };
                        y[o] = inside.iter().map(|p| p.1).sum::<f64>() / count;
                        for &(xi, _) in &inside {
                            gx[xi] += up / count;
                        }
                    }
                }
            }
        }
    }
    (y, gx)
}

fn window([n, c, h, w]: [usize; 4], k: usize, s: usize, p: usize, d: usize) -> Window {
    Window {
        n,
        c,
        h,
        w,
        kh: k,
        kw: k,
        stride: [s, s],
        pad: [p, p],
        dil: [d, d],
    }
}

/// Runs `G`'s kernels and flex's Burn operations on the same data; checks both against the
/// definition.
pub fn check_depthwise<G: GpuOps>(device: &G::Device) {
    let flex = Default::default();
    // (k, stride, padding, dilation) of DARTS's sep/dil convs, then 7×7, asymmetric cuts,
    // stride 3 and more padding than the window reaches.
    for (k, s, p, d) in [
        (3, 1, 1, 1),
        (3, 2, 1, 1),
        (5, 1, 2, 1),
        (5, 2, 2, 1),
        (3, 1, 2, 2),
        (3, 2, 2, 2),
        (5, 1, 4, 2),
        (5, 2, 4, 2),
        (7, 1, 3, 1),
        (3, 2, 0, 1),
        (3, 1, 0, 1),
        (5, 1, 1, 2),
        (3, 3, 1, 1),
        (3, 1, 3, 1),
        (5, 3, 4, 2),
    ] {
        for (n, c, h, w) in [(3, 37, 9, 7), (2, 16, 16, 16)] {
            let g = window([n, c, h, w], k, s, p, d);
            let what = format!("k{k} s{s} p{p} d{d} {n}×{c}×{h}×{w}");
            let x = values(n * c * h * w, 1);
            let wt = values(c * k * k, 2);
            let gy = values(n * c * g.ho() * g.wo(), 3);
            let (xd, wd, gyd) = ([n, c, h, w], [c, 1, k, k], [n, c, g.ho(), g.wo()]);
            let y_def = dw_forward_def(&x, &wt, &g);
            let (gx_def, gw_def) = dw_backward_def(&x, &wt, &gy, &g);

            let y = read::<G>(G::dw_forward(
                prim::<G>(&x, xd, device),
                prim::<G>(&wt, wd, device),
                &g,
            ));
            let gx = read::<G>(G::dw_backward_x(
                prim::<G>(&gy, gyd, device),
                prim::<G>(&wt, wd, device),
                &g,
            ));
            let gw = read::<G>(G::dw_backward_w(
                prim::<G>(&x, xd, device),
                prim::<G>(&gy, gyd, device),
                &g,
            ));
            assert_close(&format!("{what} forward"), &y, &y_def);
            assert_close(&format!("{what} input gradient"), &gx, &gx_def);
            assert_close(&format!("{what} weight gradient"), &gw, &gw_def);

            // Burn's own operations agree with the same definition (so with the kernels).
            let y_burn = read::<Flex>(Flex::dw_forward(
                prim::<Flex>(&x, xd, &flex),
                prim::<Flex>(&wt, wd, &flex),
                &g,
            ));
            let gx_burn = read::<Flex>(Flex::dw_backward_x(
                prim::<Flex>(&gy, gyd, &flex),
                prim::<Flex>(&wt, wd, &flex),
                &g,
            ));
            let gw_burn = read::<Flex>(Flex::dw_backward_w(
                prim::<Flex>(&x, xd, &flex),
                prim::<Flex>(&gy, gyd, &flex),
                &g,
            ));
            assert_close(&format!("{what} forward vs Burn"), &y, &as_f64(&y_burn));
            assert_close(
                &format!("{what} input gradient vs Burn"),
                &gx,
                &as_f64(&gx_burn),
            );
            assert_close(
                &format!("{what} weight gradient vs Burn"),
                &gw,
                &as_f64(&gw_burn),
            );

            // The same convolution after a ReLU read with the input: the definition on
            // max(x, 0), the input gradient zero where x ≤ 0 (about half the values).
            let xr: Vec<f32> = x.iter().map(|v| v.max(0.0)).collect();
            let yr_def = dw_forward_def(&xr, &wt, &g);
            let (gxr_pre, gwr_def) = dw_backward_def(&xr, &wt, &gy, &g);
            let gxr_def: Vec<f64> = gxr_pre
                .iter()
                .zip(&x)
                .map(|(d, v)| if *v > 0.0 { *d } else { 0.0 })
                .collect();
            let relu_ops = |xd_: [usize; 4], dev: &G::Device| {
                let y = G::dw_relu_forward(prim::<G>(&x, xd_, dev), prim::<G>(&wt, wd, dev), &g);
                let gx = G::dw_relu_backward_x(
                    prim::<G>(&gy, gyd, dev),
                    prim::<G>(&wt, wd, dev),
                    prim::<G>(&x, xd_, dev),
                    &g,
                );
                let gw =
                    G::dw_relu_backward_w(prim::<G>(&x, xd_, dev), prim::<G>(&gy, gyd, dev), &g);
                (read::<G>(y), read::<G>(gx), read::<G>(gw))
            };
            let (yr, gxr, gwr) = relu_ops(xd, device);
            assert_close(&format!("{what} ReLU forward"), &yr, &yr_def);
            assert_close(&format!("{what} ReLU input gradient"), &gxr, &gxr_def);
            assert_close(&format!("{what} ReLU weight gradient"), &gwr, &gwr_def);
            let gxr_burn = read::<Flex>(Flex::dw_relu_backward_x(
                prim::<Flex>(&gy, gyd, &flex),
                prim::<Flex>(&wt, wd, &flex),
                prim::<Flex>(&x, xd, &flex),
                &g,
            ));
            assert_close(
                &format!("{what} ReLU input gradient vs Burn"),
                &gxr,
                &as_f64(&gxr_burn),
            );
        }
    }
}

pub fn check_pooling<G: GpuOps>(device: &G::Device) {
    let flex = Default::default();
    for kind in [Pooling::Max, Pooling::AvgExcludePad, Pooling::AvgIncludePad] {
        for (k, s, p) in [(3, 1, 1), (3, 2, 1), (2, 2, 0), (5, 3, 0), (3, 2, 0)] {
            for (n, c, h, w) in [(3, 37, 9, 7), (2, 16, 16, 16)] {
                let g = window([n, c, h, w], k, s, p, 1);
                let what = format!("{kind:?} k{k} s{s} p{p} {n}×{c}×{h}×{w}");
                let x = values(n * c * h * w, 4);
                let gy = values(n * c * g.ho() * g.wo(), 5);
                let (xd, gyd) = ([n, c, h, w], [n, c, g.ho(), g.wo()]);
                let (y_def, gx_def) = pool_def(&x, &gy, &g, kind);
                let (y, saved) = G::pool_forward(prim::<G>(&x, xd, device), &g, kind);
                assert_eq!(
                    saved.is_some(),
                    kind == Pooling::Max && G::pool_saves_argmax()
                );
                let saved = saved.unwrap_or_else(|| prim::<G>(&x, xd, device));
                let gx = read::<G>(G::pool_backward(
                    saved,
                    prim::<G>(&gy, gyd, device),
                    &g,
                    kind,
                ));
                let y = read::<G>(y);
                assert_close(&format!("{what} forward"), &y, &y_def);
                assert_close(&format!("{what} backward"), &gx, &gx_def);

                let y_burn =
                    read::<Flex>(Flex::pool_forward(prim::<Flex>(&x, xd, &flex), &g, kind).0);
                let gx_burn = read::<Flex>(Flex::pool_backward(
                    prim::<Flex>(&x, xd, &flex),
                    prim::<Flex>(&gy, gyd, &flex),
                    &g,
                    kind,
                ));
                assert_close(&format!("{what} forward vs Burn"), &y, &as_f64(&y_burn));
                assert_close(&format!("{what} backward vs Burn"), &gx, &as_f64(&gx_burn));
            }
        }
    }
    // Ties: a plane of equal values (and one of repeated steps) sends every window's gradient
    // to its first maximum in row-major order.
    let g = window([1, 2, 6, 5], 3, 1, 1, 1);
    let mut x = vec![0.5f32; 30];
    x.extend((0..30).map(|i| (i / 7) as f32));
    let gy = values(g.n * g.c * g.ho() * g.wo(), 6);
    let (_, gx_def) = pool_def(&x, &gy, &g, Pooling::Max);
    let (_, saved) = G::pool_forward(prim::<G>(&x, [1, 2, 6, 5], device), &g, Pooling::Max);
    let saved = saved.unwrap_or_else(|| prim::<G>(&x, [1, 2, 6, 5], device));
    let gy_t = prim::<G>(&gy, [1, 2, g.ho(), g.wo()], device);
    let gx = read::<G>(G::pool_backward(saved, gy_t, &g, Pooling::Max));
    assert_close("max pool ties", &gx, &gx_def);
}

/// Training-mode BatchNorm by definition (f64): `x̂`, mean, biased variance and the input
/// gradient `(g − mean(g) − x̂·mean(g·x̂))/√(σ² + ε)`.
fn bn_def(x: &[f32], gy: &[f32], [n, c, h, w]: [usize; 4], eps: f64) -> [Vec<f64>; 4] {
    let hw = h * w;
    let (mut y, mut gx) = (vec![0.0; x.len()], vec![0.0; x.len()]);
    let (mut means, mut vars) = (vec![0.0; c], vec![0.0; c]);
    for ch in 0..c {
        let at: Vec<usize> = (0..n)
            .flat_map(|b| (0..hw).map(move |r| (b * c + ch) * hw + r))
            .collect();
        let count = at.len() as f64;
        let mean = at.iter().map(|&i| x[i] as f64).sum::<f64>() / count;
        let var = at
            .iter()
            .map(|&i| (x[i] as f64 - mean).powi(2))
            .sum::<f64>()
            / count;
        let inv = 1.0 / (var + eps).sqrt();
        for &i in &at {
            y[i] = (x[i] as f64 - mean) * inv;
        }
        let mg = at.iter().map(|&i| gy[i] as f64).sum::<f64>() / count;
        let mgy = at.iter().map(|&i| gy[i] as f64 * y[i]).sum::<f64>() / count;
        for &i in &at {
            gx[i] = (gy[i] as f64 - mg - y[i] * mgy) * inv;
        }
        (means[ch], vars[ch]) = (mean, var);
    }
    [y, means, vars, gx]
}

pub fn check_batchnorm<G: GpuOps>(device: &G::Device) {
    let flex = Default::default();
    let eps = 1e-5;
    // One plane smaller than a cube, odd sizes, several passes of a 256-unit cube, and many
    // small planes (stacked several to a cube's pass, over several passes); the last with a
    // mean far from zero against the spread (the forward kernel sums in one pass, shifted).
    for (dims, offset) in [
        ([1, 5, 3, 3], 0.5),
        ([3, 37, 9, 7], 0.5),
        ([2, 16, 16, 16], 0.5),
        ([4, 3, 32, 32], 0.5),
        ([40, 3, 4, 4], 0.5),
        ([9, 2, 5, 5], 20.0),
    ] {
        let len = dims.iter().product();
        // An offset mean, as BN inputs have.
        let x: Vec<f32> = values(len, 7).iter().map(|v| 3.0 * v + offset).collect();
        let gy = values(len, 8);
        let [y_def, mean_def, var_def, gx_def] = bn_def(&x, &gy, dims, eps);
        let c = dims[1];
        let [y, mean, var] = G::bn_forward(prim::<G>(&x, dims, device), eps);
        let gx = G::bn_backward(y.clone(), var.clone(), prim::<G>(&gy, dims, device), eps);
        let what = format!("BatchNorm {dims:?}");
        let (y, mean, var, gx) = (read::<G>(y), read::<G>(mean), read::<G>(var), read::<G>(gx));
        assert_close(&format!("{what} x̂"), &y, &y_def);
        assert_close(&format!("{what} mean"), &mean, &mean_def);
        assert_close(&format!("{what} variance"), &var, &var_def);
        assert_close(&format!("{what} input gradient"), &gx, &gx_def);
        assert_eq!(mean.len(), c);

        let [yb, _, varb] = Flex::bn_forward(prim::<Flex>(&x, dims, &flex), eps);
        let gxb = Flex::bn_backward(yb.clone(), varb, prim::<Flex>(&gy, dims, &flex), eps);
        assert_close(&format!("{what} x̂ vs Burn"), &y, &as_f64(&read::<Flex>(yb)));
        assert_close(
            &format!("{what} gradient vs Burn"),
            &gx,
            &as_f64(&read::<Flex>(gxb)),
        );
    }
}

/// The 1×1 convolution by its definition: `y[n, o, p] = Σ_i w[o, i]·x[n, i, p]`, its input
/// gradient `Σ_o w[o, i]·g[n, o, p]` and weight gradient `Σ_{n, p} g[n, o, p]·x[n, i, p]`.
fn pw_def(
    x: &[f32],
    w: &[f32],
    gy: &[f32],
    [n, ci, h, wd]: [usize; 4],
    co: usize,
) -> [Vec<f64>; 3] {
    let hw = h * wd;
    let (mut y, mut gx, mut gw) = (
        vec![0.0; n * co * hw],
        vec![0.0; n * ci * hw],
        vec![0.0; co * ci],
    );
    for b in 0..n {
        for o in 0..co {
            for i in 0..ci {
                let wv = w[o * ci + i] as f64;
                for p in 0..hw {
                    let (xv, g) = (
                        x[(b * ci + i) * hw + p] as f64,
                        gy[(b * co + o) * hw + p] as f64,
                    );
                    y[(b * co + o) * hw + p] += wv * xv;
                    gx[(b * ci + i) * hw + p] += wv * g;
                    gw[o * ci + i] += g * xv;
                }
            }
        }
    }
    [y, gx, gw]
}

pub fn check_pointwise<G: GpuOps>(device: &G::Device) {
    let flex = Default::default();
    // DARTS's channel counts, odd sizes, and more pixels than a 256-unit cube covers; channel
    // counts that do not fill a cube's rows; a reduction from 37 to 5 channels.
    for ([n, ci, h, w], co) in [
        ([2, 16, 16, 16], 16),
        ([3, 37, 9, 7], 5),
        ([4, 3, 32, 32], 24),
        ([1, 1, 1, 1], 1),
        ([5, 8, 3, 5], 8),
        ([2, 10, 5, 5], 6),
    ] {
        let what = format!("1×1 {n}×{ci}×{h}×{w} → {co}");
        let (xd, wd, gyd) = ([n, ci, h, w], [co, ci, 1, 1], [n, co, h, w]);
        let x = values(n * ci * h * w, 11);
        let wt = values(co * ci, 12);
        let gy = values(n * co * h * w, 13);
        let [y_def, gx_def, gw_def] = pw_def(&x, &wt, &gy, xd, co);
        let y = read::<G>(G::pw_forward(
            prim::<G>(&x, xd, device),
            prim::<G>(&wt, wd, device),
        ));
        let gx = read::<G>(G::pw_backward_x(
            prim::<G>(&gy, gyd, device),
            prim::<G>(&wt, wd, device),
        ));
        let gw = read::<G>(G::pw_backward_w(
            prim::<G>(&x, xd, device),
            prim::<G>(&gy, gyd, device),
        ));
        assert_close(&format!("{what} forward"), &y, &y_def);
        assert_close(&format!("{what} input gradient"), &gx, &gx_def);
        assert_close(&format!("{what} weight gradient"), &gw, &gw_def);

        // Burn's own operations (the provided methods: matrix products) agree too.
        let y_burn = read::<Flex>(Flex::pw_forward(
            prim::<Flex>(&x, xd, &flex),
            prim::<Flex>(&wt, wd, &flex),
        ));
        let gx_burn = read::<Flex>(Flex::pw_backward_x(
            prim::<Flex>(&gy, gyd, &flex),
            prim::<Flex>(&wt, wd, &flex),
        ));
        let gw_burn = read::<Flex>(Flex::pw_backward_w(
            prim::<Flex>(&x, xd, &flex),
            prim::<Flex>(&gy, gyd, &flex),
        ));
        assert_close(&format!("{what} forward vs Burn"), &y, &as_f64(&y_burn));
        assert_close(
            &format!("{what} input gradient vs Burn"),
            &gx,
            &as_f64(&gx_burn),
        );
        assert_close(
            &format!("{what} weight gradient vs Burn"),
            &gw,
            &as_f64(&gw_burn),
        );
    }
}

/// A mixed op's weighted sum, forward and both gradients, against its definition and Burn's
/// operations (flex): every candidate count from 1 to `MIX_MAX` (DARTS: 7 after `none`, at
/// offset 1 of 8), with and without the accumulator, sizes below and above the weight
/// gradient's 4096 units (so units sum several elements).
pub fn check_mix<G: GpuOps>(device: &G::Device) {
    let flex = Default::default();
    let cases = [
        (7, 1, 8, [16, 8, 8, 8], true),
        (7, 1, 8, [3, 37, 9, 7], false),
        (8, 0, 8, [2, 5, 11, 9], true),
        (1, 0, 1, [1, 1, 1, 1], false),
        (1, 2, 4, [2, 3, 4, 5], true),
        (3, 2, 6, [5, 8, 3, 5], false),
        (2, 0, 5, [2, 16, 16, 16], true),
    ];
    for (count, offset, ops, dims, with_acc) in cases {
        let what = format!("mix of {count} at {offset}/{ops}, {dims:?}, accumulator {with_acc}");
        let numel: usize = dims.iter().product();
        let xs: Vec<Vec<f32>> = (0..count).map(|k| values(numel, 20 + k as u64)).collect();
        let w = values(ops, 31);
        let acc = values(numel, 32);
        let gy = values(numel, 33);
        let mut y_def = vec![0.0f64; numel];
        let mut gw_def = vec![0.0f64; ops];
        for (k, x) in xs.iter().enumerate() {
            let wk = w[offset + k] as f64;
            for e in 0..numel {
                y_def[e] += wk * x[e] as f64;
                gw_def[offset + k] += gy[e] as f64 * x[e] as f64;
            }
        }
        if with_acc {
            for (y, a) in y_def.iter_mut().zip(&acc) {
                *y += *a as f64;
            }
        }
        let w1 = |v: &[f32], d: &G::Device| -> FloatTensor<G> {
            Tensor::<G, 1>::from_data(TensorData::new(v.to_vec(), [ops]), d)
                .into_primitive()
                .tensor()
        };
        let xs_g = || xs.iter().map(|x| prim::<G>(x, dims, device)).collect();
        let acc_g = with_acc.then(|| prim::<G>(&acc, dims, device));
        let y = read::<G>(G::mix_forward(xs_g(), w1(&w, device), offset, acc_g));
        assert_close(&format!("{what}: forward"), &y, &y_def);
        let gxs = G::mix_backward_x(prim::<G>(&gy, dims, device), w1(&w, device), offset, count);
        assert_eq!(gxs.len(), count, "{what}: one gradient per candidate");
        for (k, gx) in gxs.into_iter().enumerate() {
            let want: Vec<f64> = gy
                .iter()
                .map(|&g| g as f64 * w[offset + k] as f64)
                .collect();
            assert_close(
                &format!("{what}: gradient of candidate {k}"),
                &read::<G>(gx),
                &want,
            );
        }
        let gw = G::mix_backward_w(xs_g(), prim::<G>(&gy, dims, device), offset, ops);
        let gw = Tensor::<G, 1>::from_primitive(TensorPrimitive::Float(gw))
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        assert_close(&format!("{what}: weight gradient"), &gw, &gw_def);

        // Burn's own operations (the provided methods) agree too.
        let w1f = Tensor::<Flex, 1>::from_data(TensorData::new(w.clone(), [ops]), &flex);
        let xs_f = xs.iter().map(|x| prim::<Flex>(x, dims, &flex)).collect();
        let acc_f = with_acc.then(|| prim::<Flex>(&acc, dims, &flex));
        let w_f = w1f.clone().into_primitive().tensor();
        let y_burn = read::<Flex>(Flex::mix_forward(xs_f, w_f, offset, acc_f));
        assert_close(&format!("{what}: forward vs Burn"), &y, &as_f64(&y_burn));
        let xs_f = xs.iter().map(|x| prim::<Flex>(x, dims, &flex)).collect();
        let gy_f = prim::<Flex>(&gy, dims, &flex);
        let gw_burn = Flex::mix_backward_w(xs_f, gy_f, offset, ops);
        let gw_burn = Tensor::<Flex, 1>::from_primitive(TensorPrimitive::Float(gw_burn))
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        assert_close(
            &format!("{what}: weight gradient vs Burn"),
            &gw,
            &as_f64(&gw_burn),
        );
    }
}

/// [`kernels::weighted_sum`] on the GPU autodiff type (one custom op) against flex (Burn's
/// operations): the output and the gradients of every candidate, the weights and the
/// accumulator, for a loss that weights every element differently.
pub fn check_weighted_sum_autodiff<G: GpuOps>(device: &G::Device) {
    use burn::backend::Autodiff;
    fn run<B: burn::tensor::backend::AutodiffBackend>(
        device: &B::Device,
        ops: &[usize],
        with_acc: bool,
    ) -> Vec<Vec<f32>> {
        let dims = [3, 4, 5, 6];
        let numel = 3 * 4 * 5 * 6;
        let t = |seed: u64| {
            Tensor::<B, 4>::from_data(TensorData::new(values(numel, seed), dims), device)
                .require_grad()
        };
        let xs: Vec<_> = (0..ops.len()).map(|k| t(40 + k as u64)).collect();
        let w =
            Tensor::<B, 1>::from_data(TensorData::new(values(8, 50), [8]), device).require_grad();
        let acc = t(51);
        let loss_w = Tensor::<B, 4>::from_data(TensorData::new(values(numel, 52), dims), device);
        let y = kernels::weighted_sum(xs.clone(), w.clone(), ops, with_acc.then(|| acc.clone()));
        let grads = (y.clone() * loss_w).sum().backward();
        let v = |t: TensorData| t.to_vec::<f32>().unwrap();
        let mut out = vec![v(y.into_data())];
        out.extend(xs.iter().map(|x| v(x.grad(&grads).unwrap().into_data())));
        out.push(v(w.grad(&grads).unwrap().into_data()));
        if with_acc {
            out.push(v(acc.grad(&grads).unwrap().into_data()));
        }
        out
    }
    for (ops, with_acc) in [
        (&[1, 2, 3, 4, 5, 6, 7][..], true),
        (&[1, 2, 3, 4, 5, 6, 7][..], false),
        (&[0][..], true),
        (&[2, 3, 4][..], false),
        // Not consecutive: Burn's operations on both backends.
        (&[0, 2, 5][..], true),
    ] {
        let gpu = run::<Autodiff<G>>(device, ops, with_acc);
        let cpu = run::<Autodiff<Flex>>(&Default::default(), ops, with_acc);
        assert_eq!(gpu.len(), cpu.len());
        for (i, (g, c)) in gpu.iter().zip(&cpu).enumerate() {
            assert_close(
                &format!("weighted_sum {ops:?} (accumulator {with_acc}) output/gradient {i}"),
                g,
                &as_f64(c),
            );
        }
    }
}

/// The public entry points on the plain (inference) GPU type take the kernels too and agree
/// with flex.
pub fn check_inference_entry_points<G: GpuOps>(device: &G::Device) {
    let flex = Default::default();
    let dims = [2, 5, 11, 9];
    let (x, wt) = (values(2 * 5 * 11 * 9, 9), values(5 * 9, 10));
    let xg = Tensor::<G, 4>::from_data(TensorData::new(x.clone(), dims), device);
    let wg = Tensor::<G, 4>::from_data(TensorData::new(wt.clone(), [5, 1, 3, 3]), device);
    let xf = Tensor::<Flex, 4>::from_data(TensorData::new(x, dims), &flex);
    let wf = Tensor::<Flex, 4>::from_data(TensorData::new(wt, [5, 1, 3, 3]), &flex);
    let v = |t: TensorData| t.to_vec::<f32>().unwrap();
    let dg =
        v(kernels::depthwise_conv2d(xg.clone(), wg.clone(), [2, 2], [2, 2], [2, 2]).into_data());
    let df =
        v(kernels::depthwise_conv2d(xf.clone(), wf.clone(), [2, 2], [2, 2], [2, 2]).into_data());
    assert_close("inference depthwise", &dg, &as_f64(&df));
    let rg = v(
        kernels::relu_depthwise_conv2d(xg.clone(), wg.clone(), [1, 1], [1, 1], [1, 1]).into_data(),
    );
    let rf = v(kernels::relu_depthwise_conv2d(xf.clone(), wf, [1, 1], [1, 1], [1, 1]).into_data());
    assert_close("inference ReLU + depthwise", &rg, &as_f64(&rf));
    let pg = v(kernels::pool2d(xg.clone(), Pooling::Max, 3, 2, 1).into_data());
    let pf = v(kernels::pool2d(xf.clone(), Pooling::Max, 3, 2, 1).into_data());
    assert_close("inference max pool", &pg, &as_f64(&pf));
    let w1 = values(7 * 5, 14);
    let w1g = Tensor::<G, 4>::from_data(TensorData::new(w1.clone(), [7, 5, 1, 1]), device);
    let w1f = Tensor::<Flex, 4>::from_data(TensorData::new(w1, [7, 5, 1, 1]), &flex);
    let qg = v(kernels::pointwise_conv2d(xg, w1g).into_data());
    let qf = v(kernels::pointwise_conv2d(xf, w1f).into_data());
    assert_close("inference 1×1 convolution", &qg, &as_f64(&qf));
}

#[cfg(feature = "wgpu")]
mod wgpu {
    use burn::backend::Wgpu;

    #[test]
    fn depthwise_kernels_agree_with_definition_and_burn() {
        super::check_depthwise::<Wgpu>(&Default::default());
    }

    #[test]
    fn pooling_kernels_agree_with_definition_and_burn() {
        super::check_pooling::<Wgpu>(&Default::default());
    }

    #[test]
    fn batchnorm_kernels_agree_with_definition_and_burn() {
        super::check_batchnorm::<Wgpu>(&Default::default());
    }

    #[test]
    fn pointwise_kernels_agree_with_definition_and_burn() {
        super::check_pointwise::<Wgpu>(&Default::default());
    }

    #[test]
    fn inference_entry_points_agree_with_flex() {
        super::check_inference_entry_points::<Wgpu>(&Default::default());
    }

    #[test]
    fn mix_kernels_agree_with_definition_and_burn() {
        super::check_mix::<Wgpu>(&Default::default());
    }

    #[test]
    fn weighted_sum_autodiff_agrees_with_flex() {
        super::check_weighted_sum_autodiff::<Wgpu>(&Default::default());
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use burn::backend::Cuda;

    #[test]
    #[ignore = "needs an NVIDIA GPU; run with --ignored"]
    fn depthwise_kernels_agree_with_definition_and_burn() {
        super::check_depthwise::<Cuda>(&Default::default());
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU; run with --ignored"]
    fn pooling_kernels_agree_with_definition_and_burn() {
        super::check_pooling::<Cuda>(&Default::default());
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU; run with --ignored"]
    fn batchnorm_kernels_agree_with_definition_and_burn() {
        super::check_batchnorm::<Cuda>(&Default::default());
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU; run with --ignored"]
    fn pointwise_kernels_agree_with_definition_and_burn() {
        super::check_pointwise::<Cuda>(&Default::default());
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU; run with --ignored"]
    fn inference_entry_points_agree_with_flex() {
        super::check_inference_entry_points::<Cuda>(&Default::default());
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU; run with --ignored"]
    fn mix_kernels_agree_with_definition_and_burn() {
        super::check_mix::<Cuda>(&Default::default());
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU; run with --ignored"]
    fn weighted_sum_autodiff_agrees_with_flex() {
        super::check_weighted_sum_autodiff::<Cuda>(&Default::default());
    }
}
