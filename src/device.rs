//! Choosing a backend at run time: `--device cpu | wgpu[:N] | cuda[:N]`.
//!
//! Library code is generic over `B: AutodiffBackend`; a program writes its work once as a
//! [`BackendTask`] and [`dispatch`] runs it on the backend named by the user, or returns a clear
//! [`DeviceError`] when that backend was not compiled in.
//!
//! ```
//! use darts::device::{dispatch, BackendTask, DeviceSpec};
//! use burn::tensor::{backend::AutodiffBackend, ElementConversion, Tensor};
//! struct Sum;
//! impl BackendTask for Sum {
//!     type Output = f32;
//!     fn run<B: AutodiffBackend>(self, device: B::Device) -> f32 {
//!         Tensor::<B, 1>::from_floats([1.0, 2.0], &device).sum().into_scalar().elem()
//!     }
//! }
//! let spec: DeviceSpec = "cpu".parse().unwrap();
//! assert_eq!(dispatch(&spec, Sum).unwrap(), 3.0);
//! assert!("tpu".parse::<DeviceSpec>().is_err());
//! ```

use burn::tensor::backend::AutodiffBackend;
use std::fmt;
use std::str::FromStr;

/// A parsed `--device` value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    /// Burn's pure-Rust CPU backend (`flex`).
    Cpu,
    /// wgpu (Vulkan/Metal/DX12; software Vulkan works too); `None` = the default adapter.
    Wgpu(Option<usize>),
    /// CUDA device N (default 0).
    Cuda(usize),
}

/// Errors choosing a device.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeviceError {
    /// The string is not a device.
    #[error("unknown device `{0}`: expected cpu, wgpu, wgpu:N, cuda or cuda:N")]
    Parse(String),
    /// `--devices` names devices of different backends.
    #[error(
        "--devices {0} and {1} are of different backends: data-parallel peers share one backend"
    )]
    Mixed(String, String),
    /// The backend was not compiled in.
    #[error("the `{backend}` backend is not compiled in; rebuild with `--features {feature}`")]
    NotCompiled {
        /// Backend name.
        backend: &'static str,
        /// Cargo feature that enables it.
        feature: &'static str,
    },
}

impl FromStr for DeviceSpec {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        let (name, index) = match lower.split_once(':') {
            Some((n, i)) => (
                n,
                Some(
                    i.parse::<usize>()
                        .map_err(|_| DeviceError::Parse(s.to_string()))?,
                ),
            ),
            None => (lower.as_str(), None),
        };
        match (name, index) {
            ("cpu" | "flex", None) => Ok(DeviceSpec::Cpu),
            ("wgpu", i) => Ok(DeviceSpec::Wgpu(i)),
            ("cuda", i) => Ok(DeviceSpec::Cuda(i.unwrap_or(0))),
            _ => Err(DeviceError::Parse(s.to_string())),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Wgpu(None) => write!(f, "wgpu"),
            DeviceSpec::Wgpu(Some(i)) => write!(f, "wgpu:{i}"),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// Work that runs on any autodiff backend.
pub trait BackendTask {
    /// What the work returns.
    type Output;
    /// Run on backend `B`, device `device`.
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output;
}

/// Run `task` on the backend named by `spec`.
#[allow(unused_variables, unreachable_code)]
pub fn dispatch<T: BackendTask>(spec: &DeviceSpec, task: T) -> Result<T::Output, DeviceError> {
    match *spec {
        DeviceSpec::Cpu => {
            #[cfg(feature = "flex")]
            return Ok(task.run::<burn::backend::Autodiff<burn::backend::Flex>>(Default::default()));
            Err(DeviceError::NotCompiled {
                backend: "cpu (flex)",
                feature: "flex",
            })
        }
        DeviceSpec::Wgpu(index) => {
            #[cfg(feature = "wgpu")]
            {
                use burn::backend::wgpu::WgpuDevice;
                let device = match index {
                    None => WgpuDevice::DefaultDevice,
                    Some(i) => WgpuDevice::DiscreteGpu(i),
                };
                return Ok(task.run::<burn::backend::Autodiff<burn::backend::Wgpu>>(device));
            }
            Err(DeviceError::NotCompiled {
                backend: "wgpu",
                feature: "wgpu",
            })
        }
        DeviceSpec::Cuda(index) => {
            #[cfg(feature = "cuda")]
            {
                let device = burn::backend::cuda::CudaDevice::new(index);
                return Ok(task.run::<burn::backend::Autodiff<burn::backend::Cuda>>(device));
            }
            Err(DeviceError::NotCompiled {
                backend: "cuda",
                feature: "cuda",
            })
        }
    }
}

/// Work that runs on several devices of one backend (data parallelism).
pub trait BackendTaskMulti {
    /// What the work returns.
    type Output;
    /// Run on backend `B`, devices `devices` (at least one).
    fn run<B: AutodiffBackend>(self, devices: Vec<B::Device>) -> Self::Output;
}

/// Run `task` on the devices named by `specs` (`--devices cpu,cpu`, `--devices cuda:0,cuda:1`),
/// which must all be of one backend.
#[allow(unused_variables, unreachable_code)]
pub fn dispatch_devices<T: BackendTaskMulti>(
    specs: &[DeviceSpec],
    task: T,
) -> Result<T::Output, DeviceError> {
    let Some(first) = specs.first() else {
        return Err(DeviceError::Parse("(no device)".into()));
    };
    let kind = |s: &DeviceSpec| std::mem::discriminant(s);
    if let Some(other) = specs.iter().find(|s| kind(s) != kind(first)) {
        return Err(DeviceError::Mixed(first.to_string(), other.to_string()));
    }
    match *first {
        DeviceSpec::Cpu => {
            #[cfg(feature = "flex")]
            return Ok(task.run::<burn::backend::Autodiff<burn::backend::Flex>>(
                specs.iter().map(|_| Default::default()).collect(),
            ));
            Err(DeviceError::NotCompiled {
                backend: "cpu (flex)",
                feature: "flex",
            })
        }
        DeviceSpec::Wgpu(_) => {
            #[cfg(feature = "wgpu")]
            {
                use burn::backend::wgpu::WgpuDevice;
                let devices = specs
                    .iter()
                    .map(|s| match s {
                        DeviceSpec::Wgpu(Some(i)) => WgpuDevice::DiscreteGpu(*i),
                        _ => WgpuDevice::DefaultDevice,
                    })
                    .collect();
                return Ok(task.run::<burn::backend::Autodiff<burn::backend::Wgpu>>(devices));
            }
            Err(DeviceError::NotCompiled {
                backend: "wgpu",
                feature: "wgpu",
            })
        }
        DeviceSpec::Cuda(_) => {
            #[cfg(feature = "cuda")]
            {
                let devices = specs
                    .iter()
                    .map(|s| match s {
                        DeviceSpec::Cuda(i) => burn::backend::cuda::CudaDevice::new(*i),
                        _ => burn::backend::cuda::CudaDevice::new(0),
                    })
                    .collect();
                return Ok(task.run::<burn::backend::Autodiff<burn::backend::Cuda>>(devices));
            }
            Err(DeviceError::NotCompiled {
                backend: "cuda",
                feature: "cuda",
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse() {
        assert_eq!("cpu".parse(), Ok(DeviceSpec::Cpu));
        assert_eq!("CUDA:1".parse(), Ok(DeviceSpec::Cuda(1)));
        assert_eq!("cuda".parse(), Ok(DeviceSpec::Cuda(0)));
        assert_eq!("wgpu".parse(), Ok(DeviceSpec::Wgpu(None)));
        assert_eq!("wgpu:2".parse(), Ok(DeviceSpec::Wgpu(Some(2))));
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
        assert!("cpu:1".parse::<DeviceSpec>().is_err());
        assert_eq!(DeviceSpec::Cuda(3).to_string(), "cuda:3");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn missing_backend_is_a_clear_error() {
        struct Nop;
        impl BackendTask for Nop {
            type Output = ();
            fn run<B: AutodiffBackend>(self, _device: B::Device) {}
        }
        let e = dispatch(&DeviceSpec::Cuda(0), Nop).unwrap_err();
        assert!(e.to_string().contains("--features cuda"));
    }
}
