//! The recurrent DARTS primitives (paper §2.1; reference `rnn/genotypes.py`): the activation
//! `f` of a highway node `s = s_prev + sigmoid(c) · (f(h) − s_prev)`.

use crate::OpError;
use burn::module::Module;
use burn::tensor::{activation, backend::Backend, Tensor};
use serde::{Deserialize, Serialize};

/// A recurrent candidate: `none`, `tanh`, `relu`, `sigmoid` or `identity`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RnnPrimitive {
    /// The zero op (excluded from genotypes).
    None,
    /// `tanh`.
    Tanh,
    /// `relu`.
    Relu,
    /// `sigmoid`.
    Sigmoid,
    /// `identity`.
    Identity,
}

impl RnnPrimitive {
    /// The recurrent DARTS space, in the reference's order.
    pub const DARTS: [RnnPrimitive; 5] = [
        RnnPrimitive::None,
        RnnPrimitive::Tanh,
        RnnPrimitive::Relu,
        RnnPrimitive::Sigmoid,
        RnnPrimitive::Identity,
    ];

    /// The reference name.
    pub fn name(self) -> &'static str {
        match self {
            RnnPrimitive::None => "none",
            RnnPrimitive::Tanh => "tanh",
            RnnPrimitive::Relu => "relu",
            RnnPrimitive::Sigmoid => "sigmoid",
            RnnPrimitive::Identity => "identity",
        }
    }

    /// Look a primitive up by name.
    pub fn from_name(name: &str) -> Result<Self, OpError> {
        Self::DARTS
            .into_iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| OpError::UnknownOp {
                name: name.to_string(),
                known: Self::DARTS.map(|p| p.name()).join(", "),
            })
    }

    /// Apply the activation (`none` gives zeros).
    pub fn apply<B: Backend, const D: usize>(self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            RnnPrimitive::None => x.zeros_like(),
            RnnPrimitive::Tanh => activation::tanh(x),
            RnnPrimitive::Relu => activation::relu(x),
            RnnPrimitive::Sigmoid => activation::sigmoid(x),
            RnnPrimitive::Identity => x,
        }
    }
}

/// A recurrent candidate as a (parameter-free) Burn module.
#[derive(Module, Clone, Debug)]
pub struct RnnOp {
    /// Which activation.
    #[module(skip)]
    pub primitive: RnnPrimitive,
}

impl RnnOp {
    /// Wrap a primitive.
    pub fn new(primitive: RnnPrimitive) -> Self {
        Self { primitive }
    }

    /// Apply the activation.
    pub fn forward<B: Backend, const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        self.primitive.apply(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn activations_and_names() {
        let dev = Default::default();
        let x = Tensor::<Flex, 1>::from_floats([-1.0, 0.0, 2.0], &dev);
        let get =
            |p: RnnPrimitive| -> Vec<f32> { p.apply(x.clone()).into_data().to_vec().unwrap() };
        assert_eq!(get(RnnPrimitive::None), vec![0.0, 0.0, 0.0]);
        assert_eq!(get(RnnPrimitive::Relu), vec![0.0, 0.0, 2.0]);
        assert_eq!(get(RnnPrimitive::Identity), vec![-1.0, 0.0, 2.0]);
        assert!((get(RnnPrimitive::Tanh)[0] + 0.761_594_2).abs() < 1e-6);
        assert!((get(RnnPrimitive::Sigmoid)[2] - 0.880_797).abs() < 1e-6);
        for p in RnnPrimitive::DARTS {
            assert_eq!(RnnPrimitive::from_name(p.name()).unwrap(), p);
        }
        let e = RnnPrimitive::from_name("gelu").unwrap_err();
        assert!(e.to_string().contains("tanh"));
    }
}
