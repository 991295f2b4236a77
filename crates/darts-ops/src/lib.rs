//! The building blocks of DARTS search spaces: candidate operations and the layers they are made
//! of, with PyTorch semantics (explicit symmetric padding, bias-free convolutions, BatchNorm with
//! momentum 0.1 and unbiased running variance, optional affine parameters).
//!
//! * [`bn`]: BatchNorm whose running statistics are *never* updated behind your back: a forward
//!   pass only records the update when a [`bn::record_bn_updates`] scope is open, and the trainer
//!   commits it explicitly. This makes virtual steps and finite-difference passes side-effect free
//!   (Burn's own BatchNorm shares running statistics between module clones).
//! * [`conv`]: 2-D convolution (groups, dilation, stride, explicit padding, no bias) and linear.
//! * [`cnn`]: the eight DARTS primitives plus `sep_conv_7x7` and `conv_7x1_1x7`, as
//!   [`cnn::Primitive`] (names, stable order) and [`cnn::DartsOp`] (the Burn module).
//! * [`rnn`]: the recurrent primitives (`none, tanh, relu, sigmoid, identity`).
//! * [`kernels`]: depthwise convolution and pooling with fast CPU kernels on `Flex` (and
//!   Burn's own operations on every other backend).
//! * [`count`]: counting trainable weights (excluding BN running statistics and chosen ids).
#![warn(missing_docs)]

pub mod bn;
pub mod cnn;
pub mod conv;
pub mod count;
pub mod kernels;
pub mod mode;
pub mod rnn;
pub mod wider;

pub use bn::{record_bn_updates, BatchNorm2d, BnUpdates};
pub use cnn::{ConvSpec, DartsOp, OpOptions, Primitive};
pub use conv::{Conv2d, Linear};
pub use count::trainable_params;
pub use rnn::{RnnOp, RnnPrimitive};

/// Errors for invalid op configurations.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpError {
    /// An operation name is unknown.
    #[error("unknown operation `{name}`; known: {known}")]
    UnknownOp {
        /// The name given.
        name: String,
        /// Comma-separated list of known names.
        known: String,
    },
}

/// A tensor's values on the host as `f32`, whatever its element type (reads the device).
pub fn to_f32s<B: burn::tensor::backend::Backend, const D: usize>(
    t: &burn::tensor::Tensor<B, D>,
) -> Vec<f32> {
    t.clone()
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("converted to f32")
}

/// The first value of `t` (the value of a one-element tensor) as `f64` (reads the device).
pub fn to_f64<B: burn::tensor::backend::Backend, const D: usize>(
    t: &burn::tensor::Tensor<B, D>,
) -> f64 {
    to_f64s(t)[0]
}

/// A tensor's values on the host as `f64`, whatever its element type (reads the device).
pub fn to_f64s<B: burn::tensor::backend::Backend, const D: usize>(
    t: &burn::tensor::Tensor<B, D>,
) -> Vec<f64> {
    t.clone()
        .into_data()
        .convert::<f64>()
        .into_vec::<f64>()
        .expect("converted to f64")
}
