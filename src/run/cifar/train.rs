//! Training a derived network from scratch on CIFAR-10 (reference `cnn/train.py`).

use super::{evaluate, load_train, to_batch, LAYERS_RULE};
use crate::checkpoint;
use crate::run::{
    append_timing, check, check_shared, genotype_ok, progress, seed_lock, start_run,
    write_checkpoint, write_metrics, RunConfig, RunError, RunOptions,
};
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ElementConversion;
use darts_bilevel::{weight_step, CosineLr, Sgd};
use darts_cell::{EvalNetwork, EvalNetworkConfig};
use darts_data::cifar::{Augment, Cifar10, Loader};
use darts_genotype::Genotype;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Configuration of training a genotype from scratch (reference `train.py` defaults).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Directory with `data_batch_N.bin` and `test_batch.bin`.
    pub data: PathBuf,
    /// The genotype.
    pub genotype: Genotype,
    /// Its name or source, for the record.
    pub genotype_source: String,
    /// Use only the first N training images.
    pub limit_images: Option<usize>,
    /// Use only the first N test images.
    pub limit_test: Option<usize>,
    /// Batch size.
    pub batch_size: usize,
    /// Initial learning rate (cosine to 0).
    pub lr: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// SGD weight decay.
    pub weight_decay: f64,
    /// Epochs.
    pub epochs: usize,
    /// Initial channels.
    pub init_channels: usize,
    /// Cells.
    pub layers: usize,
    /// Auxiliary head.
    pub auxiliary: bool,
    /// Weight of the auxiliary loss.
    pub auxiliary_weight: f64,
    /// Cutout side (None = off).
    pub cutout: Option<usize>,
    /// Maximum drop-path probability (ramped linearly over the epochs).
    pub drop_path_prob: f64,
    /// Global gradient-norm clip.
    pub grad_clip: f64,
    /// Seed.
    pub seed: u64,
}

/// One epoch of training from scratch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainEpoch {
    /// Epoch.
    pub epoch: usize,
    /// Learning rate.
    #[serde(with = "crate::nonfinite")]
    pub lr: f64,
    /// Drop-path probability used.
    #[serde(with = "crate::nonfinite")]
    pub drop_path_prob: f64,
    /// Training loss (including the auxiliary term).
    #[serde(with = "crate::nonfinite")]
    pub train_loss: f64,
    /// Training accuracy.
    #[serde(with = "crate::nonfinite")]
    pub train_acc: f64,
    /// Test loss.
    #[serde(with = "crate::nonfinite")]
    pub test_loss: f64,
    /// Test accuracy.
    #[serde(with = "crate::nonfinite")]
    pub test_acc: f64,
    /// Wall time of the epoch (s). Not written to `metrics.jsonl` or the checkpoint (it would
    /// make two identical runs' directories differ); `timing.jsonl` logs it. 0 for epochs
    /// read back from a checkpoint.
    #[serde(skip)]
    pub seconds: f64,
}

/// The result of [`run_train`].
#[derive(Clone, Debug)]
pub struct TrainSummary {
    /// Epochs so far.
    pub history: Vec<TrainEpoch>,
    /// Trainable weights without the auxiliary head.
    pub params: usize,
    /// Final test accuracy.
    pub test_acc: f64,
}

/// The training loader (crop, flip, optional cutout; shuffled) and the test loader.
fn train_loaders(cfg: &TrainConfig) -> Result<(Loader, Loader), RunError> {
    let data = load_train(&cfg.data, cfg.limit_images)?;
    let mut test = Cifar10::load_test(&cfg.data)?;
    if let Some(n) = cfg.limit_test {
        if n < test.len() {
            test = test.subset(&(0..n).collect::<Vec<_>>());
        }
    }
    let n = data.len();
    let mut train = Loader::new(data, (0..n).collect(), cfg.batch_size);
    train.shuffle = true;
    train.augment = Augment {
        crop_padding: 4,
        flip: true,
        cutout: cfg.cutout,
    };
    train.seed = cfg.seed;
    train.stream = 3;
    let nt = test.len();
    let test_loader = Loader::new(Arc::new(test), (0..nt).collect(), cfg.batch_size);
    Ok((train, test_loader))
}

/// What a training epoch runs with.
struct EpochPlan {
    epoch: usize,
    lr: f64,
    drop_prob: f64,
    show: bool,
}

/// The training pass of one epoch: a weight step per batch (an error if one diverges). Returns
/// the model and (mean loss, accuracy).
fn train_pass<B: AutodiffBackend>(
    mut model: EvalNetwork<B>,
    sgd: &mut Sgd<B::InnerBackend>,
    (train, cfg): (&Loader, &TrainConfig),
    plan: &EpochPlan,
    device: &B::Device,
) -> Result<(EvalNetwork<B>, f64, f64), RunError> {
    let EpochPlan {
        epoch,
        lr,
        drop_prob,
        show,
    } = *plan;
    let pb = progress(
        train.batches_per_epoch(),
        format!("epoch {}/{}", epoch + 1, cfg.epochs),
        show,
    );
    let clip = (cfg.grad_clip > 0.0).then_some(cfg.grad_clip);
    let (mut loss_sum, mut ok, mut seen) = (0.0, 0.0, 0.0);
    for (step, h) in train.epoch(epoch, 0).enumerate() {
        let b = to_batch::<B>(&h, device);
        let (next, st) = weight_step(model, sgd, lr, clip, |m| {
            m.loss(&b, drop_prob, cfg.auxiliary_weight)
        });
        model = next;
        let l: f64 = st.loss.into_scalar().elem();
        if !l.is_finite() || !st.grad_norm.is_finite() {
            let what = if l.is_finite() {
                "gradient norm"
            } else {
                "training loss"
            };
            return Err(RunError::diverged(
                "training",
                epoch,
                step,
                what,
                "; lower --lr",
            ));
        }
        let m = h.len() as f64;
        let c: f64 = st.aux.into_scalar().elem();
        loss_sum += l * m;
        ok += c;
        seen += m;
        pb.inc(1);
        pb.set_message(format!(
            "loss {:.3} acc {:.1}%",
            loss_sum / seen,
            100.0 * ok / seen
        ));
    }
    pb.finish_and_clear();
    Ok((model, loss_sum / seen.max(1.0), ok / seen.max(1.0)))
}

/// Commit an epoch: metrics and plots first, then the checkpoint (see the search's commit).
fn commit_epoch<B: AutodiffBackend>(
    out: &Path,
    cfg: &TrainConfig,
    history: &[TrainEpoch],
    model: &EvalNetwork<B>,
    sgd: &Sgd<B::InnerBackend>,
) -> Result<(), RunError> {
    let last = history.last().expect("an epoch to commit");
    write_metrics(
        out,
        history,
        &[
            (
                "loss",
                "cross-entropy",
                &[("train", |e| e.train_loss), ("test", |e| e.test_loss)],
            ),
            (
                "accuracy",
                "top-1 accuracy",
                &[("train", |e| e.train_acc), ("test", |e| e.test_acc)],
            ),
        ],
    )?;
    append_timing(out, last.epoch, last.seconds)?;
    write_checkpoint(out, cfg, history, last.epoch, |c| {
        checkpoint::save_model_sgd(c, model, sgd)?;
        Ok(())
    })?;
    Ok(())
}

/// The derived network of `cfg` (seeded).
fn build_model<B: burn::tensor::backend::Backend>(
    cfg: &TrainConfig,
    device: &B::Device,
) -> Result<EvalNetwork<B>, RunError> {
    let _guard = seed_lock();
    B::seed(device, cfg.seed);
    let net = EvalNetworkConfig {
        channels: cfg.init_channels,
        layers: cfg.layers,
        auxiliary: cfg.auxiliary,
        ..Default::default()
    };
    Ok(net.init::<B>(&cfg.genotype, device)?)
}

fn print_epoch(rec: &TrainEpoch) {
    eprintln!(
        "epoch {:>3}  lr {:.5}  train loss {:.4} acc {:5.1}%  test loss {:.4} acc {:5.1}%  {:.0}s",
        rec.epoch + 1,
        rec.lr,
        rec.train_loss,
        100.0 * rec.train_acc,
        rec.test_loss,
        100.0 * rec.test_acc,
        rec.seconds
    );
}

impl RunConfig for TrainConfig {
    const KIND: &'static str = "cifar10_train";
    const MUTABLE: &'static [&'static str] = &["epochs"];
    fn validate(&self) -> Result<(), RunError> {
        genotype_ok(self.genotype.validate(), &self.genotype_source)?;
        check_shared(self, "must be at least 1 (nothing would be trained)")?;
        check(self.layers >= 3, "layers", LAYERS_RULE, self.layers)?;
        let p = self.drop_path_prob;
        let p_rule = "must be in [0, 1) (it is the probability of dropping a path)";
        check((0.0..1.0).contains(&p), "drop-path-prob", p_rule, p)
    }
}

/// The file a finished training run writes its network to: safetensors with the reference's
/// names (`darts::interop`), loadable by the reference's `NetworkCIFAR` in PyTorch.
pub const WEIGHTS: &str = "weights.safetensors";

/// What [`evaluate_weights`] measured.
#[derive(Clone, Debug, PartialEq)]
pub struct WeightsEvaluation {
    /// Mean cross-entropy.
    pub test_loss: f64,
    /// Top-1 accuracy.
    pub test_acc: f64,
}

/// Evaluate given weights (a PyTorch state dict of the reference's `NetworkCIFAR` as `.pt` or
/// `.safetensors`, or a [`WEIGHTS`] file of a finished run) on the test split, in evaluation
/// mode. `cfg` gives the genotype, size, auxiliary head and data; nothing is trained or written.
pub fn evaluate_weights<B: burn::tensor::backend::Backend>(
    cfg: &TrainConfig,
    weights: &Path,
    device: &B::Device,
) -> Result<WeightsEvaluation, RunError> {
    cfg.validate()?;
    let (_, test) = train_loaders(cfg)?;
    let net = crate::interop::import_reference(build_model::<B>(cfg, device)?, weights)?;
    let (test_loss, test_acc) =
        evaluate::<B, _>(&test, device, None, |x| net.forward(x, 0.0).logits);
    Ok(WeightsEvaluation {
        test_loss,
        test_acc,
    })
}

/// Train (or resume training) a genotype from scratch and evaluate it on the test set.
pub fn run_train<B: AutodiffBackend>(
    config: &TrainConfig,
    opts: &RunOptions,
    device: &B::Device,
) -> Result<TrainSummary, RunError> {
    let out = &opts.out;
    let (cfg, mut history, ckpt, _lock) = start_run::<TrainConfig, TrainEpoch>(config, opts)?;
    let (train, test_loader) = train_loaders(&cfg)?;
    let mut model = build_model::<B>(&cfg, device)?;
    let params = model.num_weights();
    let mut sgd = Sgd::<B::InnerBackend>::new(cfg.momentum, cfg.weight_decay);
    if let Some(c) = &ckpt {
        model = checkpoint::load_model_sgd(c, model, &mut sgd)?.0;
    }
    if opts.progress {
        eprintln!(
            "{}: {:.3}M parameters (auxiliary head {:.3}M)",
            cfg.genotype_source,
            params as f64 / 1e6,
            model.auxiliary_weights() as f64 / 1e6
        );
    }
    let schedule = CosineLr {
        max: cfg.lr,
        min: 0.0,
        epochs: cfg.epochs,
    };
    let end = opts.stop_after.map_or(cfg.epochs, |n| n.min(cfg.epochs));
    for epoch in history.len()..end {
        let t0 = Instant::now();
        let lr = schedule.at(epoch);
        let dp = cfg.drop_path_prob * epoch as f64 / cfg.epochs as f64;
        let plan = EpochPlan {
            epoch,
            lr,
            drop_prob: dp,
            show: opts.progress,
        };
        let (next, train_loss, train_acc) =
            train_pass(model, &mut sgd, (&train, &cfg), &plan, device)?;
        model = next;
        let inner = model.valid();
        let (test_loss, test_acc) =
            evaluate::<B::InnerBackend, _>(&test_loader, device, None, |x| {
                inner.forward(x, 0.0).logits
            });
        let rec = TrainEpoch {
            epoch,
            lr,
            drop_path_prob: dp,
            train_loss,
            train_acc,
            test_loss,
            test_acc,
            seconds: t0.elapsed().as_secs_f64(),
        };
        if opts.progress {
            print_epoch(&rec);
        }
        history.push(rec);
        commit_epoch(out, &cfg, &history, &model, &sgd)?;
    }
    if history.len() == cfg.epochs {
        // The trained network in the reference's names and layouts, for PyTorch.
        crate::interop::export_reference(&model.valid(), &out.join(WEIGHTS))?;
    }
    let test_acc = history.last().map_or(0.0, |e| e.test_acc);
    Ok(TrainSummary {
        history,
        params,
        test_acc,
    })
}
