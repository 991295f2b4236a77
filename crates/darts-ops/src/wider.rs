//! Widening layers by replicating channels, as DrNAS's progressive search does between its
//! stages (reference `DrNAS/net2wider.py` and the `wider` methods of
//! `DARTS-space/operations.py`).
//!
//! A layer of `c` channels grows to `c'` by appending copies of `c' − c` of its channels, drawn
//! uniformly at random with replacement (`torch.randint`). A convolution grows along its output
//! channels, or along its input channels with the index its producer used. Weights are copied,
//! not rescaled, as in the reference, so the widened network computes something close to, but
//! not exactly, the old function. Each grown parameter is logged as a [`Growth`], so that an
//! optimiser can grow its state the same way (the reference's `configure_optimizer`).

use crate::bn::BatchNorm2d;
use crate::cnn::{DartsOp, DilConv, FactorizedReduce, Pool, SepConv};
use crate::conv::Conv2d;
use burn::module::{Param, ParamId};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

/// How one parameter grew: along `dim` of its old `shape`, the entries `index` were appended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Growth {
    /// The parameter.
    pub id: ParamId,
    /// Its shape before.
    pub shape: Vec<usize>,
    /// The dimension that grew.
    pub dim: usize,
    /// The entries (along `dim`) copied to the end.
    pub index: Vec<usize>,
}

impl Growth {
    /// `t` (a parameter, or its optimiser state, of the old shape) grown the same way.
    pub fn apply<B: Backend, const D: usize>(&self, t: Tensor<B, D>) -> Tensor<B, D> {
        let device = t.device();
        let idx = Tensor::<B, 1, Int>::from_data(
            TensorData::new(
                self.index.iter().map(|&i| i as i64).collect::<Vec<_>>(),
                [self.index.len()],
            ),
            &device,
        );
        let extra = t.clone().select(self.dim, idx);
        Tensor::cat(vec![t, extra], self.dim)
    }

    /// A flattened tensor of the old shape (an optimiser's buffer), grown and flattened again.
    pub fn apply_flat<B: Backend>(&self, t: Tensor<B, 1>) -> Tensor<B, 1> {
        let grown = match self.shape.len() {
            1 => self.apply(t),
            4 => {
                let s = [self.shape[0], self.shape[1], self.shape[2], self.shape[3]];
                self.apply(t.reshape(s)).flatten(0, 3)
            }
            n => panic!("widening covers 1-D and 4-D parameters, not {n}-D"),
        };
        let n = grown.dims().iter().product::<usize>();
        grown.reshape([n])
    }
}

/// Draws the indices of the copied channels: `draw(c, count)` returns `count` indices in
/// `0..c`.
pub type Draw<'a> = dyn FnMut(usize, usize) -> Vec<usize> + 'a;

/// What a widening produced besides the layer: the growth of every parameter.
#[derive(Debug, Default)]
pub struct Widening {
    /// One entry per grown parameter, in the order they grew.
    pub growths: Vec<Growth>,
}

impl Widening {
    fn grow<B: Backend, const D: usize>(
        &mut self,
        p: Param<Tensor<B, D>>,
        dim: usize,
        index: &[usize],
    ) -> Param<Tensor<B, D>> {
        if index.is_empty() {
            return p;
        }
        let (id, old, mapper) = p.consume();
        let growth = Growth {
            id,
            shape: old.dims().to_vec(),
            dim,
            index: index.to_vec(),
        };
        let require_grad = old.is_require_grad();
        let mut t = growth.apply(old).detach();
        if require_grad {
            t = t.require_grad();
        }
        self.growths.push(growth);
        Param::from_mapped_value(id, t, mapper)
    }

    /// Output channels of a convolution to `c_new` (`index`: given, or drawn); returns the
    /// index. A depthwise convolution (groups = channels) keeps its groups equal to its
    /// channels.
    fn conv_out<B: Backend>(
        &mut self,
        mut conv: Conv2d<B>,
        c_new: usize,
        index: Option<Vec<usize>>,
        draw: &mut Draw<'_>,
    ) -> (Conv2d<B>, Vec<usize>) {
        let c = conv.weight.dims()[0];
        let index = index.unwrap_or_else(|| draw(c, c_new.saturating_sub(c)));
        let depthwise = conv.groups == c && conv.groups > 1;
        conv.weight = self.grow(conv.weight, 0, &index);
        if depthwise {
            conv.groups = c_new;
        }
        (conv, index)
    }

    /// Input channels of a (dense) convolution to `c_new`.
    fn conv_in<B: Backend>(
        &mut self,
        mut conv: Conv2d<B>,
        c_new: usize,
        index: Option<Vec<usize>>,
        draw: &mut Draw<'_>,
    ) -> (Conv2d<B>, Vec<usize>) {
        let c = conv.weight.dims()[1];
        let index = index.unwrap_or_else(|| draw(c, c_new.saturating_sub(c)));
        conv.weight = self.grow(conv.weight, 1, &index);
        (conv, index)
    }

    /// A BatchNorm to `c_new` channels (statistics and affine parameters copied).
    fn bn<B: Backend>(
        &mut self,
        mut bn: BatchNorm2d<B>,
        c_new: usize,
        index: Option<Vec<usize>>,
        draw: &mut Draw<'_>,
    ) -> BatchNorm2d<B> {
        let c = bn.running_mean.dims()[0];
        let index = index.unwrap_or_else(|| draw(c, c_new.saturating_sub(c)));
        bn.running_mean = self.grow(bn.running_mean, 0, &index);
        bn.running_var = self.grow(bn.running_var, 0, &index);
        bn.gamma = bn.gamma.map(|g| self.grow(g, 0, &index));
        bn.beta = bn.beta.map(|b| self.grow(b, 0, &index));
        bn
    }

    /// A `DilConv` (or one half of a `SepConv`) to `c_new` channels in and out (reference
    /// `DilConv.wider`: the depthwise output index feeds the pointwise input; the pointwise
    /// output index the BatchNorm).
    fn dil<B: Backend>(&mut self, d: DilConv<B>, c_new: usize, draw: &mut Draw<'_>) -> DilConv<B> {
        let (depthwise, i1) = self.conv_out(d.depthwise, c_new, None, draw);
        let (pointwise, _) = self.conv_in(d.pointwise, c_new, Some(i1), draw);
        let (pointwise, i2) = self.conv_out(pointwise, c_new, None, draw);
        let bn = self.bn(d.bn, c_new, Some(i2), draw);
        DilConv {
            depthwise,
            pointwise,
            bn,
        }
    }

    /// One DARTS candidate to `c_new` channels (reference `operations.py: *.wider`).
    pub fn op<B: Backend>(
        &mut self,
        op: DartsOp<B>,
        c_new: usize,
        draw: &mut Draw<'_>,
    ) -> DartsOp<B> {
        match op {
            DartsOp::SepConv(s) => {
                let first = self.dil(s.first, c_new, draw);
                let second = self.dil(s.second, c_new, draw);
                DartsOp::SepConv(SepConv { first, second })
            }
            DartsOp::DilConv(d) => DartsOp::DilConv(self.dil(d, c_new, draw)),
            DartsOp::FactorizedReduce(f) => {
                DartsOp::FactorizedReduce(self.factorized_reduce(f, c_new, draw))
            }
            DartsOp::Pool(p) => {
                let bn = p.bn.map(|bn| self.bn(bn, c_new, None, draw));
                DartsOp::Pool(Pool { bn, ..p })
            }
            DartsOp::Conv7x1x1x7(_) => {
                panic!("conv_7x1_1x7 is not a search candidate; DrNAS widens the DARTS candidates")
            }
            other => other,
        }
    }

    /// `FactorizedReduce.wider`: both convolutions grow their inputs (each its own draw) and
    /// their outputs to `c_new/2`; the BatchNorm grows with the concatenation of the two output
    /// indices, taken as absolute channels (the reference's `torch.cat([index1, index2])`).
    fn factorized_reduce<B: Backend>(
        &mut self,
        f: FactorizedReduce<B>,
        c_new: usize,
        draw: &mut Draw<'_>,
    ) -> FactorizedReduce<B> {
        let (conv_1, _) = self.conv_in(f.conv_1, c_new, None, draw);
        let (conv_1, i1) = self.conv_out(conv_1, c_new / 2, None, draw);
        let (conv_2, _) = self.conv_in(f.conv_2, c_new, None, draw);
        let (conv_2, i2) = self.conv_out(conv_2, c_new / 2, None, draw);
        let index: Vec<usize> = i1.into_iter().chain(i2).collect();
        let bn = self.bn(f.bn, c_new, Some(index), draw);
        FactorizedReduce { conv_1, conv_2, bn }
    }
}
