//! Training a derived network from scratch on CIFAR-10 (reference `cnn/train.py`).

use super::search::shard_host;
use super::{evaluate, load_train, to_batch, LAYERS_RULE};
use crate::checkpoint;
use crate::parallel::{shard_range, GroupConfig};
use crate::run::peer::{group_ok, run_threads, share_state, start_peer, PeerStart};
use crate::run::{
    append_timing, check, check_shared, failpoint, genotype_ok, progress, seed_lock,
    write_checkpoint, write_metrics, RunConfig, RunError, RunOptions,
};
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ElementConversion;
use darts_bilevel::sync::{average_buffers, sum_host, GradSync, SharedSync};
use darts_bilevel::{weight_step_sharded, CosineLr, Sgd};
use darts_cell::{DropKey, DropPath, EvalNetwork, EvalNetworkConfig};
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
/// the model and (mean loss, accuracy), over the global batches when data-parallel (`sync`:
/// every peer takes its rows of each batch; a batch smaller than the group is left out by all).
fn train_pass<B: AutodiffBackend>(
    mut model: EvalNetwork<B>,
    sgd: &mut Sgd<B::InnerBackend>,
    (train, cfg): (&Loader, &TrainConfig),
    plan: &EpochPlan,
    sync: Option<&dyn GradSync<B::InnerBackend>>,
    device: &B::Device,
) -> Result<(EvalNetwork<B>, f64, f64), RunError> {
    let EpochPlan {
        epoch,
        lr,
        drop_prob,
        show,
    } = *plan;
    let (rank, world) = sync.map_or((0, 1), |s| (s.rank(), s.world()));
    let pb = progress(
        train.batches_per_epoch(),
        format!("epoch {}/{}", epoch + 1, cfg.epochs),
        show,
    );
    let clip = (cfg.grad_clip > 0.0).then_some(cfg.grad_clip);
    let (mut loss_sum, mut ok, mut seen) = (0.0, 0.0, 0.0);
    let step_point = format!("train_step_rank{rank}");
    for (step, h) in train.epoch(epoch, 0).enumerate() {
        if h.len() < world {
            continue;
        }
        let rows = shard_range(h.len(), rank, world);
        let b = to_batch::<B>(&shard_host(&h, rank, world), device);
        // Drop path keyed by the sample's place in the global batch: the same paths are
        // dropped on one device and on any number of peers, and after a resume.
        let drop = DropPath::keyed(
            drop_prob,
            DropKey {
                seed: cfg.seed,
                epoch: epoch as u64,
                step: step as u64,
                first_row: rows.start as u64,
            },
        );
        let n = rows.len();
        let (next, st) = weight_step_sharded(
            model,
            sgd,
            lr,
            clip,
            &[],
            sync,
            |_| n,
            |m| m.loss(&b, drop, cfg.auxiliary_weight),
        );
        model = next;
        failpoint(&step_point);
        let l: f64 = st.loss.into_scalar().elem();
        group_ok(sync)?;
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
        let m = n as f64;
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
    if let Some(s) = sync {
        let g = sum_host(s, &[loss_sum, ok, seen], device);
        (loss_sum, ok, seen) = (g[0], g[1], g[2]);
    }
    group_ok(sync)?;
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
    crate::threads::run_pooled_on::<B, _>(|| train_as::<B>(config, opts, device, None))
}

/// Train data-parallel on `devices` (one peer per device, threads of this process): every
/// peer takes its shard of each batch, the gradients of the global batch are applied on every
/// replica; rank 0 opens the output directory, writes the outputs and checkpoints, and sends
/// its state to the others before the first epoch. Returns rank 0's summary.
pub fn run_train_parallel<B: AutodiffBackend>(
    config: &TrainConfig,
    opts: &RunOptions,
    devices: &[B::Device],
    group: &GroupConfig,
) -> Result<TrainSummary, RunError> {
    run_threads::<B::InnerBackend, _>(devices, group, |device, sync| {
        train_as::<B>(config, opts, device, Some(sync))
    })
}

/// Train as one peer of a data-parallel group (`sync`): every peer calls it with the same
/// configuration and options, each on its own device (the processes of an MPI job,
/// [`crate::parallel`]); see [`run_train_parallel`] for the threads of one process.
pub fn run_train_peer<B: AutodiffBackend>(
    config: &TrainConfig,
    opts: &RunOptions,
    device: &B::Device,
    sync: SharedSync<B::InnerBackend>,
) -> Result<TrainSummary, RunError> {
    crate::threads::run_pooled_on::<B, _>(|| train_as::<B>(config, opts, device, Some(sync)))
}

/// One peer's (or the single device's) training.
fn train_as<B: AutodiffBackend>(
    config: &TrainConfig,
    opts: &RunOptions,
    device: &B::Device,
    sync: Option<SharedSync<B::InnerBackend>>,
) -> Result<TrainSummary, RunError> {
    let out = &opts.out;
    let lead = sync.as_ref().is_none_or(|s| s.rank() == 0);
    // Rank 0 opens (and locks) the directory; the others get its configuration and history.
    let (cfg, mut history, ckpt, _lock): PeerStart<TrainConfig, TrainEpoch> =
        start_peer(config, opts, sync.as_deref(), device)?;
    let (train, test_loader) = train_loaders(&cfg)?;
    let mut model = build_model::<B>(&cfg, device)?;
    let params = model.num_weights();
    let mut sgd = Sgd::<B::InnerBackend>::new(cfg.momentum, cfg.weight_decay);
    if let Some(c) = &ckpt {
        model = checkpoint::load_model_sgd(c, model, &mut sgd)?.0;
    }
    let save = |c: &mut checkpoint::Checkpoint| {
        checkpoint::save_model_sgd(c, &model, &sgd)?;
        Ok(())
    };
    let header = (&cfg, &history);
    if let Some(c) = share_state::<B::InnerBackend>(sync.as_deref(), &header, save, device)? {
        model = checkpoint::load_model_sgd(&c, model, &mut sgd)?.0;
    }
    let show = opts.progress && lead;
    if show {
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
            show,
        };
        let (next, train_loss, train_acc) = train_pass(
            model,
            &mut sgd,
            (&train, &cfg),
            &plan,
            sync.as_deref(),
            device,
        )?;
        model = next;
        if let Some(s) = &sync {
            // The replicas' running statistics followed their own shards: average them.
            model = average_buffers(model, s.as_ref());
        }
        let inner = model.valid();
        let (test_loss, test_acc) =
            evaluate::<B::InnerBackend, _>(&test_loader, device, sync.as_deref(), |x| {
                inner.forward(x, 0.0).logits
            });
        group_ok(sync.as_deref())?;
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
        if show {
            print_epoch(&rec);
        }
        history.push(rec);
        if lead {
            commit_epoch(out, &cfg, &history, &model, &sgd)?;
        }
    }
    if history.len() == cfg.epochs && lead {
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
