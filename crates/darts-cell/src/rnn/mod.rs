//! Recurrent DARTS (paper §2.1, §3.3; reference `rnn/model.py`, `rnn/model_search.py`): the
//! recurrent search cell and language model (the supernet), and the derived model built from a
//! [`RecurrentGenotype`].
//!
//! The cell, with `x` the input, `h` the previous hidden state and `m_x`, `m_h` the variational
//! dropout masks of the sequence:
//!
//! * `[c0, h0] = [x·m_x, h·m_h] W0`, `s0 = h + sigmoid(c0) · (tanh(h0) − h)`;
//! * node `i`, predecessor `j`: `[c, h'] = (s_j·m_h) W_i` (one `W_i` per node, shared by its
//!   incoming edges), edge value `s_j + sigmoid(c) · (f(h') − s_j)` for an activation `f`;
//! * search: node `i` is `Σ_j Σ_f p_{j,f} · edge_{j,f}` with `p = softmax(α)` (`α` is
//!   `[Σ_i i, ops]` = `[36, 5]` for 8 nodes), and a non-affine BatchNorm normalises `s0` and every
//!   node (one layer, as in the reference);
//! * derived: node `i` has one edge (the genotype's op and predecessor); no BatchNorm;
//! * the output (and next hidden state) is the mean of the states in `concat` (1..8).
//!
//! The language model embeds words (embedding dropout drops whole words), applies locked
//! dropout to the embeddings and to the cell outputs, and decodes with the embedding matrix
//! (tied weights) plus a bias. The search cell evaluates every predecessor of a node in one
//! matrix product and applies each candidate once to the stacked pre-activations.
//!
//! Dropout masks are drawn on the host from a seed ([`RnnMasks::sample`]) and travel with the
//! batch, so every pass on the same batch (virtual step, finite differences) sees the same
//! masks, and a resumed run draws the same ones. They apply in training mode only
//! ([`darts_ops::mode`]: an autodiff backend), as BatchNorm's batch statistics and the CNN's
//! drop path do; an evaluation pass (`model.valid()`) ignores them.

use crate::cnn::batch::cross_entropy;
use crate::CellError;
use burn::module::{Module, Param};
use burn::tensor::activation::{sigmoid, tanh};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Distribution, Int, Tensor};
use darts_bilevel::BatchOutput;
use darts_genotype::RecurrentGenotype;
use darts_mixed_op::{EdgeSpec, OpSet, Relaxation, RnnSpace};
use darts_ops::BatchNorm2d;
use serde::{Deserialize, Serialize};

pub mod batch;
pub mod derived;
pub mod supernet;

pub use batch::{RnnMasks, RnnOutput, TokenBatch};
pub use derived::RnnEvalNetwork;
pub use supernet::RnnSearchNetwork;

/// Initial weights are drawn from `U(−0.04, 0.04)` (reference `INITRANGE`).
pub const INIT_RANGE: f64 = 0.04;

/// Dropout probabilities, named as in the reference scripts.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RnnDropout {
    /// `--dropout`: locked dropout on the cell output before the decoder.
    pub output: f64,
    /// `--dropouth`: variational dropout on the hidden state inside the cell.
    pub hidden: f64,
    /// `--dropoutx`: variational dropout on the cell input inside the cell.
    pub x: f64,
    /// `--dropouti`: locked dropout on the embeddings.
    pub input: f64,
    /// `--dropoute`: embedding dropout (whole words).
    pub embedding: f64,
}

impl RnnDropout {
    /// Search defaults (`train_search.py`): 0.75, 0.25, 0.75, 0.2, 0.
    pub fn search() -> Self {
        Self {
            output: 0.75,
            hidden: 0.25,
            x: 0.75,
            input: 0.2,
            embedding: 0.0,
        }
    }

    /// Evaluation-training defaults (`train.py`): 0.75, 0.25, 0.75, 0.2, 0.1.
    pub fn eval() -> Self {
        Self {
            embedding: 0.1,
            ..Self::search()
        }
    }

    /// No dropout at all.
    pub fn none() -> Self {
        Self {
            output: 0.0,
            hidden: 0.0,
            x: 0.0,
            input: 0.0,
            embedding: 0.0,
        }
    }

    fn validate(&self) -> Result<(), CellError> {
        for (name, p) in [
            ("output", self.output),
            ("hidden", self.hidden),
            ("x", self.x),
            ("input", self.input),
            ("embedding", self.embedding),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(CellError::Config(format!(
                    "{name} dropout {p} is not in [0, 1)"
                )));
            }
        }
        Ok(())
    }
}

/// Shape and regularisation of a recurrent language model.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RnnConfig {
    /// Vocabulary size.
    pub vocab: usize,
    /// Embedding size (`--emsize`; the reference's model calls it `ninp`, and so did this
    /// field); equal to `nhid` (tied weights).
    #[serde(alias = "ninp")]
    pub emsize: usize,
    /// Hidden units (`--nhid`).
    pub nhid: usize,
    /// Intermediate nodes (8).
    pub steps: usize,
    /// Dropout probabilities.
    pub dropout: RnnDropout,
    /// Temporal activation regularisation `β · mean((h_{t+1} − h_t)²)` (`--beta`, 1e-3).
    pub tar: f64,
    /// Activation regularisation `α · mean(dropped²)` (`--alpha`, 0).
    pub ar: f64,
}

impl RnnConfig {
    /// The search model of the reference: 300 units, 8 nodes, search dropouts.
    pub fn search(vocab: usize) -> Self {
        Self {
            vocab,
            emsize: 300,
            nhid: 300,
            steps: 8,
            dropout: RnnDropout::search(),
            tar: 1e-3,
            ar: 0.0,
        }
    }

    /// The evaluation model of the reference: 850 units, evaluation dropouts.
    pub fn eval(vocab: usize) -> Self {
        Self {
            emsize: 850,
            nhid: 850,
            dropout: RnnDropout::eval(),
            ..Self::search(vocab)
        }
    }

    fn validate(&self) -> Result<(), CellError> {
        if self.vocab == 0 || self.nhid == 0 || self.steps == 0 {
            return Err(CellError::Config(
                "vocabulary, hidden units and nodes must be positive".into(),
            ));
        }
        if self.emsize != self.nhid {
            return Err(CellError::Config(format!(
                "tied weights need emsize = nhid (got {} and {})",
                self.emsize, self.nhid
            )));
        }
        self.dropout.validate()
    }

    /// Draw dropout masks for a batch of `batch` sequences.
    pub fn masks<B: Backend>(&self, batch: usize, seed: u64, device: &B::Device) -> RnnMasks<B> {
        RnnMasks::sample(
            &self.dropout,
            self.vocab,
            batch,
            self.emsize,
            self.nhid,
            seed,
            device,
        )
    }

    /// Build the search supernet over `space` (the recurrent DARTS space is
    /// [`darts_mixed_op::RnnSpace`]).
    pub fn init_search<B: Backend, S: OpSet<B, 2>, R: Relaxation>(
        &self,
        space: &S,
        relaxation: R,
        device: &B::Device,
    ) -> Result<RnnSearchNetwork<B, S::Op, R>, CellError> {
        self.validate()?;
        let h = self.nhid;
        let edges: usize = (1..=self.steps).sum();
        let edge = EdgeSpec {
            channels: h,
            stride: 1,
        };
        let ops = (0..self.steps)
            .map(|_| {
                (0..space.len())
                    .map(|k| space.build(k, &edge, device))
                    .collect()
            })
            .collect();
        Ok(RnnSearchNetwork {
            core: RnnCore::new(self, device),
            ops,
            bn: BatchNorm2d::new(h, false, device),
            alphas: Param::from_tensor(
                Tensor::random([edges, space.len()], Distribution::Normal(0.0, 1.0), device) * 1e-3,
            ),
            relaxation,
            op_names: space.names(),
            none_index: space.none_index(),
        })
    }

    /// Build the derived model of `genotype` (its node count replaces `steps`), with the
    /// recurrent DARTS activations ([`darts_mixed_op::RnnSpace`]).
    pub fn init_eval<B: Backend>(
        &self,
        genotype: &RecurrentGenotype,
        device: &B::Device,
    ) -> Result<RnnEvalNetwork<B>, CellError> {
        self.init_eval_with(genotype, &RnnSpace::default(), device)
    }

    /// Build the derived model of `genotype`, each node's activation built by `space` from its
    /// name (an unknown name is an error listing the space's ops), as
    /// [`EvalNetworkConfig::init_with`](crate::EvalNetworkConfig::init_with) does for cells.
    pub fn init_eval_with<B: Backend, S: OpSet<B, 2>>(
        &self,
        genotype: &RecurrentGenotype,
        space: &S,
        device: &B::Device,
    ) -> Result<RnnEvalNetwork<B, S::Op>, CellError> {
        genotype.validate()?;
        let edge = EdgeSpec {
            channels: self.nhid,
            stride: 1,
        };
        let mut ops = Vec::new();
        for g in &genotype.recurrent {
            ops.push(space.build(crate::op_index(space, &g.op)?, &edge, device));
        }
        let cfg = RnnConfig {
            steps: genotype.recurrent.len(),
            ..*self
        };
        cfg.validate()?;
        Ok(RnnEvalNetwork {
            core: RnnCore::new(&cfg, device),
            ops,
            preds: genotype.recurrent.iter().map(|g| g.input).collect(),
            concat: genotype.concat.clone(),
        })
    }
}

pub(crate) fn uniform<B: Backend, const D: usize>(
    shape: [usize; D],
    device: &B::Device,
) -> Param<Tensor<B, D>> {
    Param::from_tensor(Tensor::random(
        shape,
        Distribution::Uniform(-INIT_RANGE, INIT_RANGE),
        device,
    ))
}

/// Weights shared by the search and derived models: embedding (tied decoder), decoder bias,
/// `W0` and one `W_i` per node.
#[derive(Module, Debug)]
pub struct RnnCore<B: Backend> {
    /// `[vocab, E]` embedding, also the decoder weight.
    pub embedding: Param<Tensor<B, 2>>,
    /// `[vocab]` decoder bias.
    pub decoder_bias: Param<Tensor<B, 1>>,
    /// `[E + H, 2H]`.
    pub w0: Param<Tensor<B, 2>>,
    /// `[H, 2H]` per node.
    pub ws: Vec<Param<Tensor<B, 2>>>,
    /// Configuration.
    #[module(skip)]
    pub config: RnnConfig,
}

impl<B: Backend> RnnCore<B> {
    fn new(c: &RnnConfig, device: &B::Device) -> Self {
        Self {
            embedding: uniform([c.vocab, c.emsize], device),
            decoder_bias: Param::from_tensor(Tensor::zeros([c.vocab], device)),
            w0: uniform([c.emsize + c.nhid, 2 * c.nhid], device),
            ws: (0..c.steps)
                .map(|_| uniform([c.nhid, 2 * c.nhid], device))
                .collect(),
            config: *c,
        }
    }

    /// Embeddings with embedding dropout and locked input dropout, times the cell's input mask,
    /// projected by the input rows of `W0`: `[T·N, 2H]` (one matrix product for all steps).
    fn input_projection(&self, input: Tensor<B, 2, Int>, masks: &RnnMasks<B>) -> Tensor<B, 2> {
        let [t, n] = input.dims();
        let e = self.config.emsize;
        let mut w = self.embedding.val();
        if let Some(m) = &masks.embedding {
            w = w * m.clone();
        }
        let mut x = w.select(0, input.reshape([t * n])).reshape([t, n * e]);
        if let Some(m) = &masks.input {
            x = x * m.clone();
        }
        if let Some(m) = &masks.x {
            x = x * m.clone().reshape([1, n * e]);
        }
        let w0x = self.w0.val().slice([0..e, 0..2 * self.config.nhid]);
        x.reshape([t * n, e]).matmul(w0x)
    }

    /// `s0` from the input projection of one step and the previous hidden state.
    fn init_state(
        &self,
        xw: Tensor<B, 2>,
        h_prev: Tensor<B, 2>,
        h_mask: Option<&Tensor<B, 2>>,
    ) -> Tensor<B, 2> {
        let (e, h) = (self.config.emsize, self.config.nhid);
        let w0h = self.w0.val().slice([e..e + h, 0..2 * h]);
        let hm = match h_mask {
            Some(m) => h_prev.clone() * m.clone(),
            None => h_prev.clone(),
        };
        let pre = xw + hm.matmul(w0h);
        let [n, _] = pre.dims();
        let c0 = sigmoid(pre.clone().slice([0..n, 0..h]));
        let h0 = tanh(pre.slice([0..n, h..2 * h]));
        h_prev.clone() + c0 * (h0 - h_prev)
    }

    /// Output dropout, tied decoder.
    fn decode(&self, raw: Tensor<B, 3>, masks: &RnnMasks<B>) -> (Tensor<B, 2>, Tensor<B, 3>) {
        let [t, n, h] = raw.dims();
        let mut d = raw.reshape([t, n * h]);
        if let Some(m) = &masks.output {
            d = d * m.clone();
        }
        let dropped = d.reshape([t, n, h]);
        let logits = dropped
            .clone()
            .reshape([t * n, h])
            .matmul(self.embedding.val().transpose())
            + self.decoder_bias.val().reshape([1, self.config.vocab]);
        (logits, dropped)
    }

    /// Run the cell over the window: `step(xw_t, h_prev, h_mask) → h_t`.
    fn run<F>(
        &self,
        batch_input: Tensor<B, 2, Int>,
        hidden: Tensor<B, 2>,
        masks: &RnnMasks<B>,
        mut step: F,
    ) -> RnnOutput<B>
    where
        F: FnMut(Tensor<B, 2>, Tensor<B, 2>, Option<&Tensor<B, 2>>) -> Tensor<B, 2>,
    {
        let [t, n] = batch_input.dims();
        let h2 = 2 * self.config.nhid;
        // Dropout only in training mode (darts_ops::mode): evaluation ignores the masks.
        let none = RnnMasks::none();
        let masks = match darts_ops::mode::is_training::<B>(&batch_input.device()) {
            true => masks,
            false => &none,
        };
        let xw = self.input_projection(batch_input, masks);
        let mut h = hidden;
        let mut outs = Vec::with_capacity(t);
        for i in 0..t {
            let x_i = xw.clone().slice([i * n..(i + 1) * n, 0..h2]);
            h = step(x_i, h, masks.h.as_ref());
            outs.push(h.clone());
        }
        let raw = Tensor::stack(outs, 0);
        let (logits, dropped) = self.decode(raw.clone(), masks);
        RnnOutput {
            logits,
            raw,
            dropped,
            hidden: h,
        }
    }

    /// Weights (everything here is a weight).
    pub fn num_weights(&self) -> usize {
        darts_ops::trainable_params(self, &[])
    }
}

/// `σ(c)`, `h` halves of `[rows, 2H]`.
pub(crate) fn split_gates<B: Backend>(ch: Tensor<B, 2>, h: usize) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let [r, _] = ch.dims();
    (
        sigmoid(ch.clone().slice([0..r, 0..h])),
        ch.slice([0..r, h..2 * h]),
    )
}

/// Mean next-word cross-entropy of `logits` against `[T·N]` targets.
pub fn nll<B: Backend>(logits: Tensor<B, 2>, target: Tensor<B, 1, Int>) -> Tensor<B, 1> {
    cross_entropy(logits, target)
}

/// `loss + TAR + AR` (the weight step's objective) and the plain cross-entropy.
pub(crate) fn regularised<B: Backend>(
    cfg: &RnnConfig,
    out: &RnnOutput<B>,
    target: Tensor<B, 1, Int>,
) -> (Tensor<B, 1>, Tensor<B, 1>) {
    let raw_loss = nll(out.logits.clone(), target);
    let mut loss = raw_loss.clone();
    let [t, n, h] = out.raw.dims();
    if cfg.tar > 0.0 && t > 1 {
        let r = out.raw.clone().reshape([t, n * h]);
        let d = r.clone().slice([1..t, 0..n * h]) - r.slice([0..t - 1, 0..n * h]);
        loss = loss + d.square().mean() * cfg.tar;
    }
    if cfg.ar > 0.0 {
        loss = loss + out.dropped.clone().square().mean() * cfg.ar;
    }
    (loss, raw_loss)
}

pub(crate) fn output<B: AutodiffBackend>(
    out: &RnnOutput<B>,
    loss: Tensor<B, 1>,
    raw: Option<Tensor<B, 1>>,
    tokens: usize,
) -> BatchOutput<B> {
    let mut o = BatchOutput::new(loss, None, tokens);
    o.raw_loss = raw;
    o.state = vec![out.hidden.clone().detach().inner()];
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use darts_bilevel::ArchModel;
    use darts_genotype::catalog;
    use darts_mixed_op::{RnnSpace, Softmax};
    type B = Autodiff<Flex>;

    #[test]
    fn parameter_counts() {
        let dev = Default::default();
        let g = catalog::recurrent("DARTS_V2").unwrap();
        let m = RnnConfig::eval(10_000).init_eval::<Flex>(&g, &dev).unwrap();
        assert_eq!(m.num_weights(), 22_960_000);
        let s = RnnConfig {
            emsize: 16,
            nhid: 16,
            ..RnnConfig::search(50)
        }
        .init_search::<Flex, _, _>(&RnnSpace::default(), Softmax, &dev)
        .unwrap();
        assert_eq!(s.alphas.dims(), [36, 5]);
        // embedding 50·16 + bias 50 + W0 32·32 + 8 · 16·32 (BN has no weights)
        assert_eq!(s.num_weights(), 800 + 50 + 1024 + 8 * 512);
    }

    #[test]
    fn bad_configurations_are_errors() {
        let dev = Default::default();
        let g = catalog::recurrent("DARTS_V1").unwrap();
        let e = RnnConfig {
            emsize: 10,
            ..RnnConfig::eval(100)
        }
        .init_eval::<Flex>(&g, &dev)
        .unwrap_err();
        assert!(e.to_string().contains("emsize"), "{e}");
        let mut bad = RnnConfig::search(100);
        bad.dropout.hidden = 1.0;
        assert!(bad
            .init_search::<Flex, _, _>(&RnnSpace::default(), Softmax, &dev)
            .is_err());
    }

    #[test]
    fn search_forward_shapes_and_genotype() {
        let dev = Default::default();
        let cfg = RnnConfig {
            emsize: 6,
            nhid: 6,
            ..RnnConfig::search(20)
        };
        let m = cfg
            .init_search::<B, _, _>(&RnnSpace::default(), Softmax, &dev)
            .unwrap();
        let ids: Vec<u32> = (0..12).map(|i| i % 20).collect();
        let b = TokenBatch::from_host(
            &ids,
            &ids,
            3,
            Tensor::zeros([3, 6], &dev),
            cfg.masks(3, 7, &dev),
            &dev,
        );
        let out = m.forward(b.input.clone(), b.hidden.clone(), &b.masks);
        assert_eq!(out.logits.dims(), [12, 20]);
        assert_eq!(out.raw.dims(), [4, 3, 6]);
        assert_eq!(out.hidden.dims(), [3, 6]);
        let o = m.forward_train(&b);
        assert!(o.raw_loss.is_some() && o.state.len() == 1);
        let g = m.genotype();
        assert_eq!(g.recurrent.len(), 8);
        assert_eq!(g.concat, (1..=8).collect::<Vec<_>>());
        g.validate().unwrap();
    }

    #[test]
    fn derived_model_builds_its_activations_through_the_op_set() {
        let dev = Default::default();
        let cfg = RnnConfig {
            emsize: 6,
            nhid: 6,
            ..RnnConfig::eval(20)
        };
        let g = darts_genotype::catalog::recurrent("DARTS_V2").unwrap();
        let m = cfg.init_eval::<B>(&g, &dev).unwrap();
        let names: Vec<&str> = m.ops.iter().map(|o| o.primitive.name()).collect();
        let want: Vec<&str> = g.recurrent.iter().map(|gene| gene.op.as_str()).collect();
        assert_eq!(names, want);
        // A space without one of the genotype's activations: an error naming it and the space.
        let space = RnnSpace {
            primitives: vec![darts_ops::RnnPrimitive::Tanh],
        };
        let e = cfg
            .init_eval_with::<B, _>(&g, &space, &dev)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown operation `sigmoid`; known: tanh"),
            "{e}"
        );
    }
}
