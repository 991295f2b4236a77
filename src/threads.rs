//! Where a CPU job's threads come from.
//!
//! The CPU backend (`Flex`), `gemm` and this library's own kernels split every operation over
//! rayon's worker threads. Called from a thread that is *not* one of those workers (a
//! program's main thread), each parallel operation is injected into the pool and the caller
//! sleeps until a worker has finished it: two thread wake-ups per operation, and a DARTS step
//! is thousands of small operations (config B's second-order step: `perf` put 14% of the time
//! in the scheduler). [`run_pooled`] runs a whole job on a worker of a thread pool instead, so
//! each operation starts on the thread that needs it and the other workers steal parts of it.
//!
//! The pool is built for the call (as many threads as rayon's global pool would have:
//! `RAYON_NUM_THREADS` or the available cores) and ends with it. A pool of its own, rather than
//! the global one, keeps concurrent jobs apart: a worker waiting inside one job's operation
//! never picks up another job's body.
//!
//! The single-device drivers ([`crate::run`]'s `run_search`, `run_train`, `run_ptb_search`,
//! `run_ptb_train`) already run this way on CPU backends ([`run_pooled_on`]); a program that
//! drives the library itself can wrap its loop:
//!
//! ```
//! use burn::tensor::Tensor;
//! type B = burn::backend::Flex;
//! let sum = darts::threads::run_pooled(|| {
//!     let x = Tensor::<B, 1>::ones([1000], &Default::default());
//!     x.sum().into_scalar()
//! });
//! assert_eq!(sum, 1000.0);
//! ```
//!
//! Results do not depend on it: every reduction of the kernels runs in a fixed order, and the
//! pool has the same number of threads. `DARTS_POOL=caller` in the environment turns it off
//! (the job runs on the calling thread), for comparisons.
//!
//! The pool being the call's own also makes it safe around work that blocks: a worker of one
//! job waiting for another thread (a data-parallel peer's all-reduce, a prefetching loader)
//! holds up only that job. The per-peer drivers (`run_search_peer` and the like, one peer per
//! process under MPI) use it too; the threads of [`crate::parallel`]'s in-process groups share
//! the global pool as before (one pool per peer would put `peers × cores` busy threads on the
//! cores).

/// Runs `f` on a worker of a rayon thread pool built for this call (see the module docs) and
/// returns its result; a panic in `f` resumes on the caller. Falls back to running `f` on the
/// calling thread if the pool cannot be built or `DARTS_POOL=caller` is set.
pub fn run_pooled<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if std::env::var("DARTS_POOL").as_deref() == Ok("caller") {
        return f();
    }
    match rayon::ThreadPoolBuilder::new()
        .thread_name(|i| format!("darts-pool-{i}"))
        .build()
    {
        Ok(pool) => pool.install(f),
        Err(_) => f(),
    }
}

/// [`run_pooled`] for a job on backend `B`, except on the GPU types (`Wgpu`, `Cuda`, with or
/// without `Autodiff`): their operations are launched from the job's thread rather than split
/// over rayon's workers, so the job stays on the calling thread there.
pub fn run_pooled_on<B: burn::tensor::backend::Backend, R: Send>(
    f: impl FnOnce() -> R + Send,
) -> R {
    if darts_ops::kernels::gpu::is_gpu_type::<B>() {
        f()
    } else {
        run_pooled(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_on_a_worker_and_returns_the_result() {
        assert_eq!(rayon::current_thread_index(), None);
        let (inside, value) = run_pooled(|| (rayon::current_thread_index(), 6 * 7));
        assert!(inside.is_some(), "the job ran on the calling thread");
        assert_eq!(value, 42);
    }

    #[test]
    fn cpu_backends_run_on_a_worker() {
        let inside = run_pooled_on::<burn::backend::Flex, _>(rayon::current_thread_index);
        assert!(inside.is_some());
        let inside = run_pooled_on::<burn::backend::Autodiff<burn::backend::Flex>, _>(
            rayon::current_thread_index,
        );
        assert!(inside.is_some());
    }

    #[cfg(feature = "wgpu")]
    #[test]
    fn gpu_backends_stay_on_the_calling_thread() {
        type W = burn::backend::Autodiff<burn::backend::Wgpu>;
        assert_eq!(run_pooled_on::<W, _>(rayon::current_thread_index), None);
    }

    #[test]
    fn a_panic_reaches_the_caller() {
        let r = std::panic::catch_unwind(|| run_pooled(|| panic!("inside")));
        let msg = r.unwrap_err();
        assert_eq!(msg.downcast_ref::<&str>(), Some(&"inside"));
    }
}
