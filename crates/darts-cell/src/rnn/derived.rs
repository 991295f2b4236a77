//! The derived recurrent model built from a genotype (reference `rnn/model.py`).

use super::{regularised, split_gates, RnnCore, RnnMasks, RnnOutput, TokenBatch};
use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};
use darts_mixed_op::CandidateOp;
use darts_ops::RnnOp;

/// The derived recurrent language model of a genotype (reference `rnn/model.py`), its node
/// activations built by an op set ([`RnnConfig::init_eval_with`](super::RnnConfig::init_eval_with)),
/// as the derived CNN's ops are.
#[derive(Module, Debug)]
pub struct RnnEvalNetwork<B: Backend, O: Module<B> = RnnOp> {
    /// Embedding, decoder bias, `W0`, `W_i`.
    pub core: RnnCore<B>,
    /// Activation of each node.
    pub ops: Vec<O>,
    /// Predecessor of each node.
    pub preds: Vec<usize>,
    /// States averaged into the output.
    pub concat: Vec<usize>,
}

impl<B: Backend, O: CandidateOp<B, 2>> RnnEvalNetwork<B, O> {
    /// One time step of the derived cell (see the module docs).
    pub fn cell_step(
        &self,
        xw: Tensor<B, 2>,
        h_prev: Tensor<B, 2>,
        h_mask: Option<&Tensor<B, 2>>,
    ) -> Tensor<B, 2> {
        let core = &self.core;
        let h = core.config.nhid;
        let [n, _] = h_prev.dims();
        let mut states = vec![core.init_state(xw, h_prev, h_mask)];
        for (i, w) in core.ws.iter().enumerate() {
            let sp = states[self.preds[i]].clone();
            let masked = match h_mask {
                Some(m) => sp.clone() * m.clone(),
                None => sp.clone(),
            };
            let (c, pre) = split_gates(masked.matmul(w.val()), h);
            let s = sp.clone() + c * (self.ops[i].forward(pre) - sp);
            states.push(s);
        }
        let chosen: Vec<Tensor<B, 2>> = self.concat.iter().map(|&i| states[i].clone()).collect();
        Tensor::stack::<3>(chosen, 0).mean_dim(0).reshape([n, h])
    }

    /// Forward over a window starting from `hidden`.
    pub fn forward(
        &self,
        input: Tensor<B, 2, Int>,
        hidden: Tensor<B, 2>,
        masks: &RnnMasks<B>,
    ) -> RnnOutput<B> {
        self.core
            .run(input, hidden, masks, |xw, h, m| self.cell_step(xw, h, m))
    }

    /// `(loss with regularisers, cross-entropy)` for a batch (with its dropout masks in training
    /// mode, see [`darts_ops::mode`]).
    pub fn losses(&self, b: &TokenBatch<B>) -> (Tensor<B, 1>, Tensor<B, 1>, Tensor<B, 2>) {
        let out = self.forward(b.input.clone(), b.hidden.clone(), &b.masks);
        let (loss, raw) = regularised(&self.core.config, &out, b.target.clone());
        (loss, raw, out.hidden)
    }

    /// Number of weights (22,960,000 at 850 units on PTB with tied weights).
    pub fn num_weights(&self) -> usize {
        self.core.num_weights()
    }
}
