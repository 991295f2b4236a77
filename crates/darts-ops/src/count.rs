//! Counting trainable weights the way the DARTS papers report them: every float parameter except
//! BatchNorm running statistics (buffers in PyTorch) and any ids you exclude (architecture
//! parameters).

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::tensor::{backend::Backend, Tensor};

struct Counter<'a> {
    exclude: &'a [ParamId],
    path: Vec<String>,
    total: usize,
}

impl<B: Backend> ModuleVisitor<B> for Counter<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let is_buffer = matches!(
            self.path.last().map(String::as_str),
            Some("running_mean" | "running_var")
        );
        if !is_buffer && !self.exclude.contains(&param.id) {
            self.total += param.lazy_shape().num_elements();
        }
    }
}

/// Number of trainable weights of `module`, excluding BatchNorm running statistics and the
/// parameters whose ids are in `exclude`.
pub fn trainable_params<B: Backend, M: Module<B>>(module: &M, exclude: &[ParamId]) -> usize {
    let mut c = Counter {
        exclude,
        path: Vec::new(),
        total: 0,
    };
    module.visit(&mut c);
    c.total
}
