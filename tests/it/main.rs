//! Integration tests, in one binary (one link of Burn instead of one per file).

mod architect;
mod cifar_data;
mod cifar_end_to_end;
mod common;
mod gpu_equivalence;
mod gpu_kernels;
mod interop;
mod methods;
mod nb201;
mod parallel;
mod ptb;
mod robustness;
mod search_space;
