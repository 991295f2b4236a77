//! What travels with a recurrent batch: the token window, the hidden state it starts from and
//! its dropout masks; and what a forward pass returns.

use super::RnnDropout;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Dropout masks for one batch, already scaled by `1 / keep`; `None` = no dropout there.
#[derive(Clone, Debug)]
pub struct RnnMasks<B: Backend> {
    /// `[vocab, 1]`: embedding dropout (whole rows of the embedding matrix).
    pub embedding: Option<Tensor<B, 2>>,
    /// `[1, N·E]`: locked dropout on the embeddings (the same for every time step).
    pub input: Option<Tensor<B, 2>>,
    /// `[N, E]`: the cell's input mask.
    pub x: Option<Tensor<B, 2>>,
    /// `[N, H]`: the cell's hidden mask.
    pub h: Option<Tensor<B, 2>>,
    /// `[1, N·H]`: locked dropout on the cell outputs.
    pub output: Option<Tensor<B, 2>>,
}

impl<B: Backend> RnnMasks<B> {
    /// No dropout (evaluation).
    pub fn none() -> Self {
        Self {
            embedding: None,
            input: None,
            x: None,
            h: None,
            output: None,
        }
    }

    /// Draw all masks for a batch of `batch` sequences, deterministically from `seed`.
    pub fn sample(
        p: &RnnDropout,
        vocab: usize,
        batch: usize,
        emsize: usize,
        nhid: usize,
        seed: u64,
        device: &B::Device,
    ) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut mask = |prob: f64, shape: [usize; 2]| -> Option<Tensor<B, 2>> {
            if prob <= 0.0 {
                return None;
            }
            let keep = 1.0 - prob;
            let v: Vec<f32> = (0..shape[0] * shape[1])
                .map(|_| {
                    if rng.random::<f64>() < keep {
                        (1.0 / keep) as f32
                    } else {
                        0.0
                    }
                })
                .collect();
            Some(Tensor::from_data(TensorData::new(v, shape), device))
        };
        Self {
            embedding: mask(p.embedding, [vocab, 1]),
            input: mask(p.input, [1, batch * emsize]),
            x: mask(p.x, [batch, emsize]),
            h: mask(p.hidden, [batch, nhid]),
            output: mask(p.output, [1, batch * nhid]),
        }
    }
}

impl<B: Backend> RnnMasks<B> {
    /// The masks of sequences `rows` of a batch of `batch` sequences (a data-parallel peer's
    /// shard of masks drawn for the global batch): the embedding mask is shared, the others
    /// keep those sequences' entries.
    pub fn rows(&self, rows: std::ops::Range<usize>, batch: usize) -> Self {
        let per_row = |m: &Option<Tensor<B, 2>>, dim: usize| {
            m.as_ref().map(|t| {
                let w = t.dims()[dim] / batch.max(1);
                t.clone().narrow(dim, rows.start * w, rows.len() * w)
            })
        };
        Self {
            embedding: self.embedding.clone(),
            input: per_row(&self.input, 1),
            x: per_row(&self.x, 0),
            h: per_row(&self.h, 0),
            output: per_row(&self.output, 1),
        }
    }
}

/// A window of token ids (time-major) with its targets, the hidden state it starts from and its
/// dropout masks.
#[derive(Clone, Debug)]
pub struct TokenBatch<B: Backend> {
    /// `[T, N]` input ids.
    pub input: Tensor<B, 2, Int>,
    /// `[T·N]` target ids (row-major over `[T, N]`).
    pub target: Tensor<B, 1, Int>,
    /// `[N, H]` hidden state at the start of the window.
    pub hidden: Tensor<B, 2>,
    /// Dropout masks, applied in training mode only ([`darts_ops::mode`]); evaluation ignores
    /// them.
    pub masks: RnnMasks<B>,
}

impl<B: Backend> TokenBatch<B> {
    /// From host ids, row-major `[seq_len, batch]` (as `darts_data::ptb::Batchified::window`
    /// returns them).
    pub fn from_host(
        input: &[u32],
        target: &[u32],
        batch: usize,
        hidden: Tensor<B, 2>,
        masks: RnnMasks<B>,
        device: &B::Device,
    ) -> Self {
        let t = input.len() / batch.max(1);
        let ids = |v: &[u32]| v.iter().map(|&x| x as i64).collect::<Vec<_>>();
        Self {
            input: Tensor::from_data(TensorData::new(ids(input), [t, batch]), device),
            target: Tensor::from_data(TensorData::new(ids(target), [target.len()]), device),
            hidden,
            masks,
        }
    }

    /// Number of target tokens.
    pub fn tokens(&self) -> usize {
        self.target.dims()[0]
    }
}

/// What a forward pass of a recurrent language model produced.
#[derive(Clone, Debug)]
pub struct RnnOutput<B: Backend> {
    /// `[T·N, vocab]` logits.
    pub logits: Tensor<B, 2>,
    /// `[T, N, H]` cell outputs before the output dropout (for activation regularisation).
    pub raw: Tensor<B, 3>,
    /// `[T, N, H]` cell outputs after it.
    pub dropped: Tensor<B, 3>,
    /// `[N, H]` the last hidden state.
    pub hidden: Tensor<B, 2>,
}
