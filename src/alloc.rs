//! Memory-allocator settings for training on the CPU.
//!
//! A DARTS step on the CPU allocates and frees hundreds of activation and gradient tensors of
//! megabytes each. glibc's `malloc` serves blocks that large with fresh `mmap` pages and hands
//! them back to the kernel on `free`, so every step pays one page fault (and a zeroed page) per
//! 4 KiB of every new tensor, and the TLB shoot-downs of the `munmap`s: on the derived network
//! (DARTS_V2, C = 36, batch 96) that is about 1.6 million page faults per training step.
//! [`tune_malloc`] tells glibc to keep such blocks in its heap and reuse them instead (the
//! `mmap` threshold raised to 1 GiB, the heap never trimmed below 2 GiB of free space at its
//! top). Peak memory is unchanged (the same tensors are alive at the same time); freed memory
//! stays with the process for the next step.
//!
//! The example programs call it first thing in `main`. A program of your own can do the same:
//!
//! ```
//! // Before the first tensor is allocated:
//! let tuned = darts::alloc::tune_malloc();
//! # let _ = tuned;
//! ```
//!
//! It is a process-wide setting of the C allocator, so the library never calls it on its own.
//! On other C libraries and platforms it does nothing and returns `false`.

/// Raise glibc's `mmap` threshold to 1 GiB and its trim threshold to 2 GiB (see the module
/// docs). Returns whether both settings took; `false` (and no change) where the C library is
/// not glibc.
pub fn tune_malloc() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `mallopt` only changes allocator parameters; glibc rejects a value out of its
        // range by returning 0 and leaving the setting as it was.
        unsafe {
            let mmap = libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30) == 1;
            let trim = libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1;
            mmap && trim
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tune_malloc_takes_on_glibc() {
        let tuned = super::tune_malloc();
        assert_eq!(tuned, cfg!(all(target_os = "linux", target_env = "gnu")));
        // Large blocks still allocate, fill and free.
        let v = vec![1.5f32; 16 << 20];
        assert_eq!(
            v.iter().map(|&x| x as f64).sum::<f64>(),
            1.5 * (16 << 20) as f64
        );
    }
}
