use burn::backend::{Autodiff, Flex};
use burn::tensor::{Distribution, Tensor};
use burn::tensor::module::{max_pool2d, avg_pool2d};
use darts::ops::{BatchNorm2d};
use darts::ops::conv::Conv2dConfig;
use std::time::Instant;
type B = Autodiff<Flex>;
fn time(name: &str, f: impl Fn() -> Tensor<B, 4>) {
    let t0 = Instant::now();
    for _ in 0..5 { let y = f(); let _g = y.sum().backward(); }
    let t1 = Instant::now();
    println!("{name:>24}: fwd+bwd {:7.2} ms", t1.duration_since(t0).as_secs_f64()*1e3/5.0);
}
fn main() {
    let dev = Default::default();
    let (c, hw) = (8usize, 32usize);
    let x = Tensor::<B, 4>::random([16, c, hw, hw], Distribution::Default, &dev).require_grad();
    let bn = BatchNorm2d::<B>::new(c, false, &dev);
    let dw = Conv2dConfig::new(c, c, 3, 1, 1).groups(c).init::<B>(&dev);
    let pw = Conv2dConfig::new(c, c, 1, 1, 0).init::<B>(&dev);
    time("identity*2", || x.clone() * 2.0);
    time("relu", || burn::tensor::activation::relu(x.clone()));
    time("mean_dims", || x.clone().mean_dims(&[0, 2, 3]) * x.clone());
    time("sub mean", || x.clone() - x.clone().mean_dims(&[0, 2, 3]));
    time("mean last then 0", || x.clone().reshape([16, c, hw * hw]).mean_dim(2).mean_dim(0).reshape([1, c, 1, 1]) * x.clone());
    time("mean via swap", || x.clone().swap_dims(0, 1).reshape([c, 16 * hw * hw]).mean_dim(1).reshape([1, c, 1, 1]) * x.clone());
    time("square", || x.clone().square());
    let cst = Tensor::<B, 4>::random([1, c, 1, 1], Distribution::Default, &dev);
    let full = Tensor::<B, 4>::random([16, c, hw, hw], Distribution::Default, &dev);
    time("bcast mul const", || x.clone() * cst.clone());
    time("full mul const", || x.clone() * full.clone());
    time("expand mul", || x.clone() * cst.clone().expand([16, c, hw, hw]));
    let col = Tensor::<B, 2>::random([16 * c, 1], Distribution::Default, &dev);
    time("row-bcast mul", || (x.clone().reshape([16 * c, hw * hw]) * col.clone()).reshape([16, c, hw, hw]));
    let col3 = Tensor::<B, 3>::random([1, c, 1], Distribution::Default, &dev);
    time("3d bcast mul", || (x.clone().reshape([16, c, hw * hw]) * col3.clone()).reshape([16, c, hw, hw]));
    time("bn", || bn.forward(x.clone()));
    time("maxpool", || max_pool2d(x.clone(), [3, 3], [1, 1], [1, 1], [1, 1], false));
    time("avgpool", || avg_pool2d(x.clone(), [3, 3], [1, 1], [1, 1], false, false));
    time("dwconv3", || dw.forward(x.clone()));
    time("pwconv", || pw.forward(x.clone()));
}
