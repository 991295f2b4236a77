//! The recurrent search cell and language model (the supernet; reference `rnn/model_search.py`).

use super::{nll, output, regularised, split_gates, RnnCore, RnnMasks, RnnOutput, TokenBatch};
use burn::module::{Module, Param, ParamId};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor};
use darts_bilevel::{ArchModel, BatchOutput};
use darts_genotype::{derive::derive_recurrent, RecurrentGenotype};
use darts_mixed_op::{CandidateOp, Relaxation, Softmax};
use darts_ops::BatchNorm2d;

/// The recurrent search supernet: a language model whose cell mixes every candidate activation
/// on every edge. `alphas` (`[edges, ops]`) are the architecture parameters.
#[derive(Module, Debug)]
pub struct RnnSearchNetwork<B: Backend, O: Module<B>, R: Relaxation = Softmax> {
    /// Embedding, decoder bias, `W0`, `W_i`.
    pub core: RnnCore<B>,
    /// Candidate ops per node (built once per node; the recurrent candidates have no weights).
    pub ops: Vec<Vec<O>>,
    /// Non-affine BatchNorm applied to `s0` and to every node (one layer, as in the reference).
    pub bn: BatchNorm2d<B>,
    /// Architecture parameters `[Σ_i i, ops]`.
    pub alphas: Param<Tensor<B, 2>>,
    /// Relaxation (softmax by default).
    #[module(skip)]
    pub relaxation: R,
    /// Op names in α-column order.
    #[module(skip)]
    pub op_names: Vec<String>,
    /// Index of `none`, if any.
    #[module(skip)]
    pub none_index: Option<usize>,
}

impl<B: Backend, O: CandidateOp<B, 2>, R: Relaxation> RnnSearchNetwork<B, O, R> {
    /// One time step of the search cell with relaxed weights `probs` (`[edges, ops]`): the next
    /// hidden state from the projected input `xw` (`x·m_x` times the input rows of `W0`).
    pub fn cell_step(
        &self,
        xw: Tensor<B, 2>,
        h_prev: Tensor<B, 2>,
        h_mask: Option<&Tensor<B, 2>>,
        probs: &[Tensor<B, 2>],
    ) -> Tensor<B, 2> {
        let core = &self.core;
        let h = core.config.nhid;
        let [n, _] = h_prev.dims();
        let s0 = self.bn.forward_1d(core.init_state(xw, h_prev, h_mask));
        let mask = |s: &Tensor<B, 2>| match h_mask {
            Some(m) => s.clone() * m.clone(),
            None => s.clone(),
        };
        let mut masked = vec![mask(&s0)];
        let mut states = vec![s0];
        for (i, w) in core.ws.iter().enumerate() {
            let k = i + 1; // predecessors of node i
                           // All predecessors in one product: [k·N, H] × [H, 2H].
            let ch = Tensor::cat(masked.clone(), 0).matmul(w.val());
            let (c, pre) = split_gates(ch, h);
            let s_all = Tensor::cat(states.clone(), 0).reshape([k, n * h]);
            // Σ_f p_f f(pre) and P = Σ_f p_f per predecessor (rows of [k, N·H]).
            let p = &probs[i];
            let mut mixed: Option<Tensor<B, 2>> = None;
            let mut total: Option<Tensor<B, 2>> = None;
            for (f, op) in self.ops[i].iter().enumerate() {
                if op.is_zero() {
                    continue;
                }
                let pf = p.clone().slice([0..k, f..f + 1]);
                let y = op.forward(pre.clone()).reshape([k, n * h]) * pf.clone();
                mixed = Some(match mixed {
                    Some(a) => a + y,
                    None => y,
                });
                total = Some(match total {
                    Some(a) => a + pf,
                    None => pf,
                });
            }
            // Σ_f p_f (s + σ(c)(f(pre) − s)) = P·s + σ(c)(Σ_f p_f f(pre) − P·s)
            let s = match (mixed, total) {
                (Some(a), Some(pt)) => {
                    let ps = s_all * pt;
                    let c = c.reshape([k, n * h]);
                    (ps.clone() + c * (a - ps)).sum_dim(0).reshape([n, h])
                }
                _ => states[0].zeros_like(),
            };
            let s = self.bn.forward_1d(s);
            masked.push(mask(&s));
            states.push(s);
        }
        let last = states.len() - 1;
        let count = last.min(core.config.steps);
        Tensor::stack::<3>(states[states.len() - count..].to_vec(), 0)
            .mean_dim(0)
            .reshape([n, h])
    }

    /// Relaxed weights per node (`[i+1, ops]` each), recomputed from α.
    fn node_probs(&self) -> Vec<Tensor<B, 2>> {
        let p = self.relaxation.weights(self.alphas.val());
        let ops = p.dims()[1];
        let mut out = Vec::new();
        let mut offset = 0;
        for i in 0..self.core.config.steps {
            out.push(p.clone().slice([offset..offset + i + 1, 0..ops]));
            offset += i + 1;
        }
        out
    }

    /// Forward over a window starting from `hidden`.
    pub fn forward(
        &self,
        input: Tensor<B, 2, Int>,
        hidden: Tensor<B, 2>,
        masks: &RnnMasks<B>,
    ) -> RnnOutput<B> {
        let probs = self.node_probs();
        self.core.run(input, hidden, masks, |xw, h, m| {
            self.cell_step(xw, h, m, &probs)
        })
    }

    /// Relaxed weights `[edges][ops]`.
    pub fn arch_weights(&self) -> Vec<Vec<f32>> {
        let a = self.alphas.val();
        let [_, n] = a.dims();
        let v = darts_ops::to_f32s(&self.relaxation.weights(a));
        v.chunks(n).map(|c| c.to_vec()).collect()
    }

    /// The derived genotype (per node the strongest non-`none` op of its strongest predecessor).
    pub fn genotype(&self) -> RecurrentGenotype {
        let names: Vec<&str> = self.op_names.iter().map(String::as_str).collect();
        derive_recurrent(&self.arch_weights(), &names, self.none_index)
            .expect("supernet alphas have the shape of its cell")
    }

    /// Number of weights (α and BN statistics excluded).
    pub fn num_weights(&self) -> usize {
        darts_ops::trainable_params(self, &[self.alphas.id])
    }
}

impl<B, O, R> ArchModel<B> for RnnSearchNetwork<B, O, R>
where
    B: AutodiffBackend,
    O: CandidateOp<B, 2> + burn::module::AutodiffModule<B>,
    O::InnerModule: Module<B::InnerBackend> + burn::module::ModuleDisplay,
    R: Relaxation,
{
    type Batch = TokenBatch<B>;

    /// Cross-entropy only (the reference architect's `_loss`).
    fn forward_batch(&self, b: &TokenBatch<B>) -> BatchOutput<B> {
        let out = self.forward(b.input.clone(), b.hidden.clone(), &b.masks);
        let loss = nll(out.logits.clone(), b.target.clone());
        output(&out, loss, None, b.tokens())
    }

    /// Cross-entropy plus temporal activation regularisation (and AR if set).
    fn forward_train(&self, b: &TokenBatch<B>) -> BatchOutput<B> {
        let out = self.forward(b.input.clone(), b.hidden.clone(), &b.masks);
        let (loss, raw) = regularised(&self.core.config, &out, b.target.clone());
        output(&out, loss, Some(raw), b.tokens())
    }

    fn arch_param_ids(&self) -> Vec<ParamId> {
        vec![self.alphas.id]
    }

    /// The embedding, which is also the decoder weight (the reference's `encoder.weight` and
    /// `decoder.weight`).
    fn tied_param_ids(&self) -> Vec<ParamId> {
        vec![self.core.embedding.id]
    }
}
