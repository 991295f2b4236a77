//! Stochastic relaxations: GDAS's hard Gumbel-softmax sample and DrNAS's Dirichlet sample,
//! with the random numbers drawn on the host from a seeded, resumable [`NoiseSource`].
//!
//! Both need gradients that Burn's tensor ops cannot express directly (a straight-through
//! estimator, the implicit derivative of a Gamma sample), so both are written with the
//! *surrogate* pattern: `value + g · (x − x.detach())`, whose value is `value` and whose
//! gradient with respect to `x` is `g` — exact, with nothing but standard tensor ops, on every
//! backend.

use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Where the random numbers of stochastic relaxations and perturbations come from: a fresh
/// generator per draw, seeded by `(seed, epoch, draw number)`. The draw counter is shared by
/// clones (the architect's copies of a model draw from the same sequence) and restarts at every
/// [`NoiseSource::start_epoch`], so a search resumed at an epoch boundary draws exactly the
/// numbers the uninterrupted one did.
#[derive(Clone, Debug, Default)]
pub struct NoiseSource {
    seed: u64,
    epoch: u64,
    counter: Arc<AtomicU64>,
}

impl NoiseSource {
    /// A source for `seed`, at epoch 0.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            epoch: 0,
            counter: Arc::default(),
        }
    }

    /// Restart the sequence for `epoch` (and `seed`).
    pub fn start_epoch(&mut self, seed: u64, epoch: usize) {
        self.seed = seed;
        self.epoch = epoch as u64;
        self.counter = Arc::default();
    }

    /// The generator of the next draw.
    pub fn rng(&self) -> StdRng {
        let k = self.counter.fetch_add(1, Ordering::Relaxed);
        StdRng::seed_from_u64(mix(mix(mix(0x005D_A275_u64, self.seed), self.epoch), k))
    }

    /// Draws taken so far in this epoch.
    pub fn draws(&self) -> u64 {
        self.counter.load(Ordering::Relaxed)
    }
}

/// A generator seeded by a tuple of words (e.g. `(seed, epoch, step, sample)`): the same tuple
/// gives the same numbers on every machine and in every run, so random decisions tied to a
/// sample do not depend on which peer holds it or whether the run was resumed.
pub fn keyed_rng(words: &[u64]) -> StdRng {
    let k = words.iter().fold(0x4B45_5945_u64, |acc, &w| mix(acc, w));
    StdRng::seed_from_u64(k)
}

/// SplitMix64-style mixing of two words.
fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_add(0x9E37_79B9_7F4A_7C15).rotate_left(17);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn constant_like<B: Backend>(v: Vec<f64>, like: &Tensor<B, 2>) -> Tensor<B, 2> {
    let dims = like.dims();
    Tensor::<B, 2>::from_data(TensorData::new(v, dims), (&like.device(), like.dtype()))
}

/// A uniform number in the open interval (0, 1).
fn open01(rng: &mut StdRng) -> f64 {
    loop {
        let u: f64 = rng.random();
        if u > 0.0 {
            return u;
        }
    }
}

/// GDAS's sample (reference `search_model_gdas.py: get_gumbel_prob`): Gumbel noise
/// `g = −ln E`, `E ~ Exp(1)`, `probs = softmax((log_softmax(α) + g) / τ)` per row, the index of
/// each row's maximum, and the straight-through weights `one_hot − probs.detach() + probs`
/// (value: the one-hot vector; gradient: that of `probs`). Redrawn, as the reference does, while
/// any Gumbel value or probability is infinite or NaN.
pub fn gumbel_hard<B: Backend>(
    alpha: Tensor<B, 2>,
    tau: f64,
    noise: &NoiseSource,
) -> (Tensor<B, 2>, Vec<usize>) {
    let [rows, cols] = alpha.dims();
    loop {
        let g = gumbel_noise(noise, rows * cols);
        let logits = (log_softmax(alpha.clone(), 1) + constant_like(g.clone(), &alpha)) / tau;
        let probs = softmax(logits, 1);
        let p = darts_ops::to_f64s(&probs);
        if g.iter().chain(&p).any(|x| !x.is_finite()) {
            continue;
        }
        let index: Vec<usize> = p
            .chunks(cols)
            .map(|row| {
                // First maximum, as torch's `max` on CPU and CUDA for distinct values.
                let mut best = 0;
                for (k, &v) in row.iter().enumerate() {
                    if v > row[best] {
                        best = k;
                    }
                }
                best
            })
            .collect();
        let mut one_hot = vec![0.0; rows * cols];
        for (r, &k) in index.iter().enumerate() {
            one_hot[r * cols + k] = 1.0;
        }
        let hard = constant_like(one_hot, &alpha) - probs.clone().detach() + probs;
        return (hard, index);
    }
}

/// `n` standard Gumbel numbers `−ln E`, `E ~ Exp(1)` (i.e. `−ln(−ln U)`), one draw of `noise`.
pub fn gumbel_noise(noise: &NoiseSource, n: usize) -> Vec<f64> {
    let mut rng = noise.rng();
    (0..n).map(|_| -(-open01(&mut rng).ln()).ln()).collect()
}

/// A standard normal number (Box–Muller).
fn normal(rng: &mut StdRng) -> f64 {
    let (u, v) = (open01(rng), open01(rng));
    (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
}

/// A `Gamma(a, 1)` sample (Marsaglia and Tsang; for `a < 1` the boost `Gamma(a + 1) · U^{1/a}`).
pub fn sample_gamma(a: f64, rng: &mut StdRng) -> f64 {
    if a < 1.0 {
        let u = open01(rng);
        return sample_gamma(a + 1.0, rng) * u.powf(1.0 / a);
    }
    let d = a - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = normal(rng);
        let v = (1.0 + c * x).powi(3);
        if v <= 0.0 {
            continue;
        }
        let u = open01(rng);
        if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
            return d * v;
        }
    }
}

/// `ln Γ(x)` for `x > 0` (Lanczos, g = 7, 9 terms; relative error below 1e-14).
pub fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection.
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut s = G[0];
    for (i, g) in G.iter().enumerate().skip(1) {
        s += g / (x + i as f64);
    }
    let t = x + 7.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + s.ln()
}

/// The digamma function `ψ(x) = d ln Γ(x) / dx` for `x > 0` (recurrence to `x ≥ 12`, then the
/// asymptotic series: truncation error below 1e-16, so that differences of nearby values that
/// take different numbers of recurrence steps stay smooth).
pub fn digamma(mut x: f64) -> f64 {
    let mut r = 0.0;
    while x < 12.0 {
        r -= 1.0 / x;
        x += 1.0;
    }
    let f = 1.0 / (x * x);
    r + x.ln()
        - 0.5 / x
        - f * (1.0 / 12.0 - f * (1.0 / 120.0 - f * (1.0 / 252.0 - f * (1.0 / 240.0 - f / 132.0))))
}

/// The trigamma function `ψ′(x)` for `x > 0` (as [`digamma`]).
pub fn trigamma(mut x: f64) -> f64 {
    let mut r = 0.0;
    while x < 12.0 {
        r += 1.0 / (x * x);
        x += 1.0;
    }
    let f = 1.0 / (x * x);
    r + 1.0 / x + f / 2.0 + f / x * (1.0 / 6.0 - f * (1.0 / 30.0 - f * (1.0 / 42.0 - f / 30.0)))
}

/// The regularised lower incomplete gamma function `P(a, x)` (series for `x < a + 1`, Lentz's
/// continued fraction otherwise; Numerical Recipes §6.2).
pub fn gamma_p(a: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    let lg = ln_gamma(a);
    if x < a + 1.0 {
        let (mut ap, mut sum, mut del) = (a, 1.0 / a, 1.0 / a);
        for _ in 0..10_000 {
            ap += 1.0;
            del *= x / ap;
            sum += del;
            if del.abs() < sum.abs() * 1e-17 {
                break;
            }
        }
        (sum.ln() - x + a * x.ln() - lg).exp()
    } else {
        let tiny = 1e-300;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / tiny;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..10_000 {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            if d.abs() < tiny {
                d = tiny;
            }
            c = b + an / c;
            if c.abs() < tiny {
                c = tiny;
            }
            d = 1.0 / d;
            let del = d * c;
            h *= del;
            if (del - 1.0).abs() < 1e-17 {
                break;
            }
        }
        1.0 - (-x + a * x.ln() - lg).exp() * h
    }
}

/// The pathwise derivative `dz/da` of a `Gamma(a, 1)` sample `z` by implicit differentiation of
/// its CDF held fixed: `P(a, z) = u` ⇒ `dz/da = −(∂P/∂a) / (∂P/∂z)`, with
/// `∂P/∂z = z^{a−1} e^{−z} / Γ(a)` and `∂P/∂a` by a central difference of `P` in `a` (step
/// `10⁻⁵·max(a, 1)`; `P` is accurate to ~1e-15, so the derivative to ~1e-9).
pub fn gamma_sample_grad(a: f64, z: f64) -> f64 {
    let h = 1e-5 * a.max(1.0);
    let lo = (a - h).max(a * 0.5);
    let dp_da = (gamma_p(a + h, z) - gamma_p(lo, z)) / (a + h - lo);
    let log_density = (a - 1.0) * z.ln() - z - ln_gamma(a);
    let dp_dz = log_density.exp();
    if dp_dz <= 0.0 || !dp_dz.is_finite() {
        return 0.0;
    }
    -dp_da / dp_dz
}

/// DrNAS's Dirichlet sample of each row of `concentration` (`[rows, ops]`, all positive):
/// `z_k ~ Gamma(c_k, 1)`, `w = z / Σ_k z_k`, with the pathwise gradient `∂z_k/∂c_k` of
/// [`gamma_sample_grad`] (through the surrogate `z + (∂z/∂c) · (c − c.detach())`, then the
/// normalisation as ordinary tensor ops). Zero samples (underflow at tiny concentrations) are
/// raised to the smallest positive f64, as PyTorch clamps its Dirichlet samples.
pub fn dirichlet_rsample<B: Backend>(
    concentration: Tensor<B, 2>,
    noise: &NoiseSource,
) -> Tensor<B, 2> {
    let c = darts_ops::to_f64s(&concentration);
    let mut rng = noise.rng();
    let z: Vec<f64> = c
        .iter()
        .map(|&a| sample_gamma(a, &mut rng).max(f64::MIN_POSITIVE))
        .collect();
    let dz: Vec<f64> = c
        .iter()
        .zip(&z)
        .map(|(&a, &z)| gamma_sample_grad(a, z))
        .collect();
    let zt = constant_like(z, &concentration)
        + constant_like(dz, &concentration)
            * (concentration.clone() - concentration.clone().detach());
    let sum = zt.clone().sum_dim(1);
    zt / sum
}

/// `KL(Dir(c) ‖ Dir(1))` summed over the rows of `concentration`, with its gradient
/// (`∂KL/∂c_k = (c_k − 1)(ψ′(c_k) − ψ′(c₀)) − Σ_j (c_j − 1) ψ′(c₀) + …`, written out below) through
/// the surrogate: DrNAS's optional regulariser (`reg_type='kl'`, reference
/// `model_search.py: _get_kl_reg`, with `torch.distributions.kl_divergence`).
pub fn dirichlet_kl_uniform<B: Backend>(concentration: Tensor<B, 2>) -> Tensor<B, 1> {
    let [rows, cols] = concentration.dims();
    let c = darts_ops::to_f64s(&concentration);
    let mut value = 0.0;
    let mut grad = vec![0.0; c.len()];
    for r in 0..rows {
        let row = &c[r * cols..(r + 1) * cols];
        let c0: f64 = row.iter().sum();
        let k = cols as f64;
        // KL(Dir(c) ‖ Dir(1)) = ln Γ(c₀) − Σ ln Γ(c_k) − ln Γ(K) + Σ (c_k − 1)(ψ(c_k) − ψ(c₀)).
        let psi0 = digamma(c0);
        let mut kl = ln_gamma(c0) - ln_gamma(k);
        for &a in row {
            kl += -ln_gamma(a) + (a - 1.0) * (digamma(a) - psi0);
        }
        value += kl;
        // ∂/∂c_j = ψ(c₀) − ψ(c_j) + (ψ(c_j) − ψ(c₀)) + (c_j − 1) ψ′(c_j) − Σ_k (c_k − 1) ψ′(c₀)
        //        = (c_j − 1) ψ′(c_j) − (c₀ − K) ψ′(c₀).
        let t0 = trigamma(c0);
        for (j, &a) in row.iter().enumerate() {
            grad[r * cols + j] = (a - 1.0) * trigamma(a) - (c0 - k) * t0;
        }
    }
    let g = constant_like(grad, &concentration);
    let surrogate = (g * (concentration.clone() - concentration.detach())).sum();
    let dev = surrogate.device();
    let v = Tensor::<B, 1>::from_data(TensorData::new(vec![value], [1]), (&dev, surrogate.dtype()));
    v + surrogate
}
