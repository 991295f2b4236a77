//! Using a trained network: 8-bit RGB images in, class probabilities out.
//!
//! ```no_run
//! use darts::genotype::catalog;
//! use darts::infer::Classifier;
//! use darts::prelude::*;
//! type B = darts::burn::backend::Flex;
//! let config = EvalNetworkConfig { channels: 36, layers: 20, auxiliary: true, ..Default::default() };
//! let genotype = catalog::conv("DARTS_V2").unwrap();
//! // A PyTorch state dict of the reference's NetworkCIFAR, or a run's weights.safetensors.
//! let model = Classifier::<B>::from_weights(&config, &genotype, "weights.safetensors".as_ref(), &Default::default()).unwrap();
//! let image = vec![0u8; 32 * 32 * 3]; // height × width × RGB
//! let p = model.probabilities(&image, 1, 32, 32).unwrap();
//! println!("class {} with probability {:.3}", Classifier::<B>::top1(&p[0]), p[0][Classifier::<B>::top1(&p[0])]);
//! ```

use crate::interop::{import_reference, InteropError};
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use darts_cell::{EvalNetwork, EvalNetworkConfig};
use darts_data::cifar::{MEAN, STD};
use darts_genotype::Genotype;
use std::path::Path;

/// Errors of [`Classifier`].
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// The image buffer does not hold `n` images of the given size.
    #[error("{len} bytes do not hold {n} images of {height}×{width}×3")]
    Shape {
        /// Bytes given.
        len: usize,
        /// Images announced.
        n: usize,
        /// Height.
        height: usize,
        /// Width.
        width: usize,
    },
    /// The network could not be built for the configuration.
    #[error(transparent)]
    Network(#[from] darts_cell::CellError),
    /// The weights could not be loaded.
    #[error(transparent)]
    Weights(#[from] InteropError),
}

/// A trained network in evaluation mode (BatchNorm on running statistics, no drop path, no
/// auxiliary head), fed with images normalised as in training (CIFAR-10 mean and deviation).
#[derive(Debug)]
pub struct Classifier<B: Backend> {
    net: EvalNetwork<B>,
    device: B::Device,
}

impl<B: Backend> Classifier<B> {
    /// Wrap a network. On an autodiff backend pass `net.valid()` and its inner backend: the
    /// mode follows the backend (`darts::ops::mode`).
    pub fn new(net: EvalNetwork<B>, device: &B::Device) -> Self {
        Self {
            net,
            device: device.clone(),
        }
    }

    /// Build the network of `config` and `genotype` and load `weights` into it (see
    /// [`crate::interop::import_reference`]).
    pub fn from_weights(
        config: &EvalNetworkConfig,
        genotype: &Genotype,
        weights: &Path,
        device: &B::Device,
    ) -> Result<Self, InferError> {
        let net = config.init::<B>(genotype, device)?;
        Ok(Self::new(import_reference(net, weights)?, device))
    }

    /// Class probabilities of `n` images, `height × width × 3` bytes each (RGB, row-major), one
    /// row per image.
    pub fn probabilities(
        &self,
        images: &[u8],
        n: usize,
        height: usize,
        width: usize,
    ) -> Result<Vec<Vec<f32>>, InferError> {
        let plane = height * width;
        if n == 0 || plane == 0 || images.len() != n * plane * 3 {
            return Err(InferError::Shape {
                len: images.len(),
                n,
                height,
                width,
            });
        }
        let mut x = vec![0f32; images.len()];
        for (i, image) in images.chunks_exact(plane * 3).enumerate() {
            for (p, rgb) in image.chunks_exact(3).enumerate() {
                for c in 0..3 {
                    x[(i * 3 + c) * plane + p] = (rgb[c] as f32 / 255.0 - MEAN[c]) / STD[c];
                }
            }
        }
        let x = Tensor::<B, 4>::from_data(TensorData::new(x, [n, 3, height, width]), &self.device);
        let p = softmax(self.net.forward(x, 0.0).logits, 1);
        let classes = p.dims()[1];
        let flat: Vec<f32> = p
            .into_data()
            .convert::<f32>()
            .to_vec()
            .expect("f32 probabilities");
        Ok(flat.chunks_exact(classes).map(<[f32]>::to_vec).collect())
    }

    /// The most probable class of one row of [`Classifier::probabilities`].
    pub fn top1(probabilities: &[f32]) -> usize {
        let mut best = 0;
        for (k, p) in probabilities.iter().enumerate() {
            if *p > probabilities[best] {
                best = k;
            }
        }
        best
    }
}
