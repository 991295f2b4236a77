//! Image batches and the classification loss.

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use darts_bilevel::BatchOutput;

/// A batch of images `[N, 3, H, W]` with integer class targets `[N]`.
#[derive(Clone, Debug)]
pub struct ImageBatch<B: Backend> {
    /// Images.
    pub images: Tensor<B, 4>,
    /// Class indices.
    pub targets: Tensor<B, 1, Int>,
}

impl<B: Backend> ImageBatch<B> {
    /// From host data: `images` is `n·c·h·w` floats (NCHW), `labels` has `n` entries.
    pub fn from_host(
        images: Vec<f32>,
        dims: [usize; 4],
        labels: &[u8],
        device: &B::Device,
    ) -> Self {
        let images = Tensor::from_data(TensorData::new(images, dims), device);
        let l: Vec<i64> = labels.iter().map(|&x| x as i64).collect();
        let targets = Tensor::from_data(TensorData::new(l, [labels.len()]), device);
        Self { images, targets }
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.images.dims()[0]
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<B: AutodiffBackend> ImageBatch<B> {
    /// What a classifier's pass on this batch produced: the mean cross-entropy of `logits`,
    /// plus `regularization` when there is one (the cross-entropy alone is then the reported
    /// loss, [`BatchOutput::raw_loss`]), and the correct count.
    pub fn output(
        &self,
        logits: Tensor<B, 2>,
        regularization: Option<Tensor<B, 1>>,
    ) -> BatchOutput<B> {
        let ce = cross_entropy(logits.clone(), self.targets.clone());
        let correct = Some(correct(logits.detach(), self.targets.clone()));
        match regularization {
            None => BatchOutput::new(ce, correct, self.len()),
            Some(reg) => {
                let mut out = BatchOutput::new(ce.clone() + reg, correct, self.len());
                out.raw_loss = Some(ce);
                out
            }
        }
    }
}

/// Mean cross-entropy of `logits` `[N, K]` against `targets` `[N]` (shape `[1]`).
pub fn cross_entropy<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> Tensor<B, 1> {
    let [n, _] = logits.dims();
    let lp = log_softmax(logits, 1);
    lp.gather(1, targets.reshape([n, 1])).mean().neg()
}

/// Number of rows whose argmax equals the target (shape `[1]`, float).
pub fn correct<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> Tensor<B, 1> {
    let [n, _] = logits.dims();
    logits
        .argmax(1)
        .equal(targets.reshape([n, 1]))
        .float()
        .sum()
}
