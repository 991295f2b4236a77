//! Helpers shared by the integration tests.
#![allow(dead_code)]

use burn::backend::{Autodiff, Flex};
use burn::module::ParamId;
use burn::tensor::{Distribution, Int, Tensor};
use darts::bilevel::params::{set_values, values};
use darts::bilevel::ArchModel;
use darts::cell::ImageBatch;

pub type B = Autodiff<Flex>;
pub type Inner = Flex;

/// Run `f` with the (process-wide) backend generator seeded, holding a lock so that tests
/// running in parallel threads cannot interleave their draws: every test sees the same numbers
/// on every run.
pub fn seeded<T>(seed: u64, f: impl FnOnce() -> T) -> T {
    let _guard = darts::run::seed_lock();
    <B as burn::tensor::backend::Backend>::seed(&Default::default(), seed);
    f()
}

/// A synthetic batch (the architect's math does not depend on the data's provenance),
/// deterministic in `(n, hw, seed_shift)`.
pub fn batch(n: usize, hw: usize, seed_shift: f32) -> ImageBatch<B> {
    let dev = Default::default();
    let seed = (n * 1000 + hw) as u64 ^ seed_shift.to_bits() as u64;
    let images = seeded(seed, || {
        Tensor::<B, 4>::random([n, 3, hw, hw], Distribution::Normal(0.0, 1.0), &dev)
    }) + seed_shift;
    let t: Vec<i64> = (0..n as i64).map(|i| i % 10).collect();
    ImageBatch {
        images,
        targets: Tensor::<B, 1, Int>::from_data(burn::tensor::TensorData::new(t, [n]), &dev),
    }
}

/// All architecture parameters concatenated (in `arch_param_ids` order).
pub fn alpha_vec<M: ArchModel<B>>(m: &M) -> Vec<f64> {
    let ids = m.arch_param_ids();
    let v = values(m, &ids);
    ids.iter()
        .flat_map(|id| {
            v[id]
                .clone()
                .into_data()
                .convert::<f64>()
                .to_vec::<f64>()
                .unwrap()
        })
        .collect()
}

/// Flattened per-id map to one vector (in `ids` order).
pub fn flat(map: &darts::bilevel::params::FlatParams<B>, ids: &[ParamId]) -> Vec<f64> {
    ids.iter()
        .flat_map(|id| {
            map[id]
                .clone()
                .into_data()
                .convert::<f64>()
                .to_vec::<f64>()
                .unwrap()
        })
        .collect()
}

/// Replace the architecture parameters with `alpha` (concatenated, `arch_param_ids` order).
pub fn with_alpha<M: ArchModel<B>>(m: M, alpha: &[f64]) -> M {
    let ids = m.arch_param_ids();
    let cur = values(&m, &ids);
    let dev = Default::default();
    let mut off = 0;
    let mut new = std::collections::BTreeMap::new();
    for id in &ids {
        let n = cur[id].dims()[0];
        let dtype = cur[id].dtype();
        let data = burn::tensor::TensorData::new(alpha[off..off + n].to_vec(), [n]);
        new.insert(*id, Tensor::<Inner, 1>::from_data(data, (&dev, dtype)));
        off += n;
    }
    set_values(m, &new)
}

pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

pub fn norm(a: &[f64]) -> f64 {
    dot(a, a).sqrt()
}

pub fn scalar(t: Tensor<B, 1>) -> f64 {
    t.into_data().convert::<f64>().to_vec::<f64>().unwrap()[0]
}

/// Cast every float parameter of `m` to f64 (Flex picks the element type per tensor at run
/// time), so finite-difference checks are not swamped by f32 rounding.
pub fn to_f64<M: burn::module::Module<B>>(m: M) -> M {
    use burn::module::{ModuleMapper, Param};
    struct Cast;
    impl ModuleMapper<B> for Cast {
        fn map_float<const D: usize>(&mut self, p: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            p.map(|t| {
                let rg = t.is_require_grad();
                let t = Tensor::<B, D>::from_inner(t.inner().cast(burn::tensor::DType::F64));
                if rg {
                    t.require_grad()
                } else {
                    t
                }
            })
        }
    }
    m.map(&mut Cast)
}

/// A batch cast to f64.
pub fn batch_f64(b: ImageBatch<B>) -> ImageBatch<B> {
    ImageBatch {
        images: Tensor::from_inner(b.images.inner().cast(burn::tensor::DType::F64)),
        targets: b.targets,
    }
}

/// The shared real-data directory, or `None` (test skipped with a message) when it is missing
/// outside CI. Under `CI=true` a missing directory fails the test.
pub fn real_data(sub: &str) -> Option<std::path::PathBuf> {
    let dir = darts::data::data_dir().join(sub);
    if dir.exists() {
        return Some(dir);
    }
    if std::env::var("CI").map(|v| v == "true").unwrap_or(false) {
        panic!(
            "real data missing at {} (CI=true: this test must not skip)",
            dir.display()
        );
    }
    eprintln!("skipping: real data missing at {}", dir.display());
    None
}

/// `v / ‖v‖`.
pub fn unit(v: Vec<f64>) -> Vec<f64> {
    let n = norm(&v);
    v.into_iter().map(|x| x / n).collect()
}

/// The unit vectors of `R^n`.
pub fn coordinates(n: usize) -> Vec<Vec<f64>> {
    (0..n)
        .map(|i| {
            let mut e = vec![0.0; n];
            e[i] = 1.0;
            e
        })
        .collect()
}

/// Central difference `(f(x0 + h·d) − f(x0 − h·d)) / 2h`.
pub fn central_difference(f: &dyn Fn(&[f64]) -> f64, x0: &[f64], d: &[f64], h: f64) -> f64 {
    let plus: Vec<f64> = x0.iter().zip(d).map(|(a, d)| a + h * d).collect();
    let minus: Vec<f64> = x0.iter().zip(d).map(|(a, d)| a - h * d).collect();
    (f(&plus) - f(&minus)) / (2.0 * h)
}

/// The architect's `dα` of `search` (its own order) and the first-order `dα`, flattened, at the
/// current model.
pub fn arch_gradients<M: ArchModel<B>>(
    search: &darts::bilevel::Bilevel<B, M>,
    train: &M::Batch,
    val: &M::Batch,
    xi: f64,
) -> (Vec<f64>, Vec<f64>) {
    let model = &search.model;
    let ids = model.arch_param_ids();
    let ours = search
        .architect
        .gradient(model, &search.w_opt, train, val, xi)
        .dalpha;
    let first = darts::bilevel::Architect::<B>::new(Default::default())
        .gradient(model, &search.w_opt, train, val, xi)
        .dalpha;
    (flat(&ours, &ids), flat(&first, &ids))
}

/// The exact unrolled objective `α ↦ L_val(w − ξ(m·v + ∇w L_train(w, α) + wd·w), α)` of
/// `search` (its virtual step, including its momentum buffers and clipping).
pub fn unrolled_objective<'a, M: ArchModel<B>>(
    search: &'a darts::bilevel::Bilevel<B, M>,
    train: &'a M::Batch,
    val: &'a M::Batch,
    xi: f64,
) -> impl Fn(&[f64]) -> f64 + 'a {
    move |a: &[f64]| {
        let m = with_alpha(search.model.clone(), a);
        let wp = search.architect.virtual_step(&m, &search.w_opt, train, xi);
        scalar(set_values(m, &wp).loss(val))
    }
}

/// Whether this CPU takes the same kernel paths as the project's CI machine (x86-64 with
/// AVX-512 and AVX2), where the pinned bit patterns of the regression tests were recorded.
pub fn same_cpu_as_ci() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
