//! The CIFAR-10 protocol of the paper (§3.1–3.2), as library functions that the examples
//! `cifar10_search` and `cifar10_train` wrap: architecture search on a train/val split of the
//! training set, and training a derived network from scratch.
//!
//! Both write into an output directory: `metrics.jsonl` (one JSON object per epoch), plots
//! (SVG), an atomic `checkpoint.bin` after every epoch (resumable), and for the search the
//! genotype of every epoch (`genotypes/epoch_NNN.{json,py}`), the final genotype and its cell
//! diagrams.

use crate::checkpoint::{self, Checkpoint, CheckpointError};
use crate::report;
use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ElementConversion;
use darts_bilevel::params::{gradients, set_values, values};
use darts_bilevel::{
    clip_grad_norm, ArchitectConfig, Bilevel, CosineLr, Order, SearchEvent, Sgd, WeightConfig,
};
use darts_cell::batch::{correct, cross_entropy};
use darts_cell::{EvalNetworkConfig, ImageBatch, SearchNetwork, SearchNetworkConfig};
use darts_data::cifar::{search_split, Augment, Cifar10, CifarError, HostBatch, Loader};
use darts_genotype::diagram::CellGraph;
use darts_genotype::{python, Genotype};
use darts_mixed_op::{DartsSpace, Softmax};
use darts_ops::{record_bn_updates, DartsOp};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Errors of a run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Data loading failed.
    #[error(transparent)]
    Data(#[from] CifarError),
    /// Penn Treebank loading failed.
    #[error(transparent)]
    Ptb(#[from] darts_data::ptb::PtbError),
    /// Checkpoint I/O failed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The genotype could not be read.
    #[error("genotype {source_name}: {error}")]
    Genotype {
        /// Where it came from.
        source_name: String,
        /// What is wrong.
        error: String,
    },
    /// Building the network failed.
    #[error(transparent)]
    Cell(#[from] darts_cell::CellError),
    /// Writing an output failed.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Invalid configuration.
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// Seeding a backend sets a process-wide generator (on CPU), so seeding and initialising happen
/// under this lock: runs in parallel threads of one process cannot interleave their draws.
pub(crate) static SEED_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub(crate) fn write(path: &Path, text: &str) -> Result<(), RunError> {
    let io = |source| RunError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("part");
    std::fs::write(&tmp, text).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Create the output directory and, when resuming, read the checkpoint with the configuration
/// and history stored in it (which then replace `config`).
pub(crate) fn open_run<C, H>(
    config: &C,
    opts: &RunOptions,
) -> Result<(C, Vec<H>, Option<Checkpoint>), RunError>
where
    C: Clone + serde::de::DeserializeOwned,
    H: serde::de::DeserializeOwned,
{
    std::fs::create_dir_all(&opts.out).map_err(|source| RunError::Io {
        path: opts.out.clone(),
        source,
    })?;
    if !opts.resume {
        return Ok((config.clone(), Vec::new(), None));
    }
    let c = Checkpoint::read(opts.out.join("checkpoint.bin"))?;
    let cfg = serde_json::from_value(c.meta["config"].clone())
        .map_err(|e| RunError::Config(format!("checkpoint config: {e}")))?;
    let history = serde_json::from_value(c.meta["history"].clone())
        .map_err(|e| RunError::Config(format!("checkpoint history: {e}")))?;
    Ok((cfg, history, Some(c)))
}

/// Write one JSON object per line, atomically.
pub(crate) fn write_jsonl<T: Serialize>(path: &Path, rows: &[T]) -> Result<(), RunError> {
    let mut jsonl = String::new();
    for r in rows {
        jsonl.push_str(&serde_json::to_string(r).expect("serialisable"));
        jsonl.push('\n');
    }
    write(path, &jsonl)
}

pub(crate) fn progress(len: usize, prefix: String, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len as u64);
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix} [{bar:30.cyan/blue}] {pos}/{len} {msg} ({per_sec}, eta {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_prefix(prefix);
    pb
}

fn load_train(data: &Path, limit: Option<usize>) -> Result<Arc<Cifar10>, RunError> {
    let mut d = Cifar10::load_train(data)?;
    if let Some(n) = limit {
        if n < d.len() {
            d = d.subset(&(0..n).collect::<Vec<_>>());
        }
    }
    Ok(Arc::new(d))
}

/// Configuration of an architecture search (reference `train_search.py` defaults).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchConfig {
    /// Directory with `data_batch_N.bin`.
    pub data: PathBuf,
    /// Use only the first N training images (None = all).
    pub limit_images: Option<usize>,
    /// Batch size.
    pub batch_size: usize,
    /// Initial weight learning rate.
    pub lr: f64,
    /// Final weight learning rate.
    pub lr_min: f64,
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
    /// Intermediate nodes per cell.
    pub nodes: usize,
    /// Fraction of the training set that trains the weights (the rest drives α).
    pub train_portion: f64,
    /// Second-order (unrolled) architecture gradient.
    pub unrolled: bool,
    /// Adam learning rate for α.
    pub arch_lr: f64,
    /// Adam weight decay for α.
    pub arch_weight_decay: f64,
    /// Global gradient-norm clip.
    pub grad_clip: f64,
    /// Seed (initialisation, data order, augmentation).
    pub seed: u64,
}

impl Default for SearchConfig {
    fn default() -> Self {
        Self {
            data: PathBuf::from("data/cifar10-sample"),
            limit_images: None,
            batch_size: 64,
            lr: 0.025,
            lr_min: 0.001,
            momentum: 0.9,
            weight_decay: 3e-4,
            epochs: 50,
            init_channels: 16,
            layers: 8,
            nodes: 4,
            train_portion: 0.5,
            unrolled: false,
            arch_lr: 3e-4,
            arch_weight_decay: 1e-3,
            grad_clip: 5.0,
            seed: 2,
        }
    }
}

/// One epoch of a search, as written to `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchEpoch {
    /// Epoch (0-based).
    pub epoch: usize,
    /// Weight learning rate.
    pub lr: f64,
    /// Mean training loss.
    pub train_loss: f64,
    /// Training accuracy.
    pub train_acc: f64,
    /// Mean validation loss seen by the architecture steps (training-mode BN).
    pub arch_val_loss: f64,
    /// Validation loss in evaluation mode (running BN statistics).
    pub val_loss: f64,
    /// Validation accuracy in evaluation mode.
    pub val_acc: f64,
    /// Steps taken.
    pub steps: usize,
    /// Wall time of the epoch (s).
    pub seconds: f64,
    /// Derived genotype.
    pub genotype: Genotype,
    /// The same, in Python notation.
    pub genotype_python: String,
    /// softmax(α) of the normal cell, `[edge][op]`.
    pub alphas_normal: Vec<Vec<f64>>,
    /// softmax(α) of the reduction cell.
    pub alphas_reduce: Vec<Vec<f64>>,
}

/// The result of [`run_search`].
#[derive(Clone, Debug)]
pub struct SearchSummary {
    /// All epochs so far (including those before a resume).
    pub history: Vec<SearchEpoch>,
    /// Final genotype.
    pub genotype: Genotype,
    /// Raw α values (normal then reduce), for exact comparisons.
    pub alphas: Vec<f32>,
    /// Number of supernet weights.
    pub params: usize,
    /// Whether the run stopped early (`stop_after`).
    pub stopped_early: bool,
}

/// Options of a run that are not part of its configuration.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Output directory.
    pub out: PathBuf,
    /// Continue from `out/checkpoint.bin` (the configuration stored there is used).
    pub resume: bool,
    /// Stop after this many epochs in total (simulates an interruption; the checkpoint stays).
    pub stop_after: Option<usize>,
    /// Show progress bars.
    pub progress: bool,
}

type Net<B> = SearchNetwork<B, DartsOp<B>>;

fn to_batch<B: Backend>(h: &HostBatch, device: &B::Device) -> ImageBatch<B> {
    ImageBatch::from_host(h.images.clone(), h.dims(), &h.labels, device)
}

fn f64s(rows: Vec<Vec<f32>>) -> Vec<Vec<f64>> {
    rows.into_iter()
        .map(|r| r.into_iter().map(f64::from).collect())
        .collect()
}

/// Loss and accuracy in evaluation mode (inner backend: running BN statistics, no graph).
fn evaluate<B: Backend, F>(loader: &Loader, device: &B::Device, forward: F) -> (f64, f64)
where
    F: Fn(burn::tensor::Tensor<B, 4>) -> burn::tensor::Tensor<B, 2>,
{
    let (mut loss, mut ok, mut n) = (0.0, 0.0, 0.0);
    for h in loader.epoch(0, 0) {
        let b = to_batch::<B>(&h, device);
        let logits = forward(b.images.clone());
        let m = h.len() as f64;
        let l: f64 = cross_entropy(logits.clone(), b.targets.clone())
            .into_scalar()
            .elem();
        let c: f64 = correct(logits, b.targets).into_scalar().elem();
        loss += l * m;
        ok += c;
        n += m;
    }
    (loss / n.max(1.0), ok / n.max(1.0))
}

fn write_search_outputs(
    out: &Path,
    history: &[SearchEpoch],
    op_names: &[String],
) -> Result<(), RunError> {
    write_jsonl(&out.join("metrics.jsonl"), history)?;
    let series = |f: &dyn Fn(&SearchEpoch) -> f64| -> Vec<(f64, f64)> {
        history.iter().map(|e| (e.epoch as f64, f(e))).collect()
    };
    write(
        &out.join("loss.svg"),
        &report::line_chart(
            "loss",
            "epoch",
            &[
                ("train".into(), series(&|e| e.train_loss)),
                ("val (arch steps)".into(), series(&|e| e.arch_val_loss)),
                ("val (eval mode)".into(), series(&|e| e.val_loss)),
            ],
        ),
    )?;
    write(
        &out.join("accuracy.svg"),
        &report::line_chart(
            "accuracy",
            "epoch",
            &[
                ("train".into(), series(&|e| e.train_acc)),
                ("val (eval mode)".into(), series(&|e| e.val_acc)),
            ],
        ),
    )?;
    let hn: Vec<_> = history.iter().map(|e| e.alphas_normal.clone()).collect();
    let hr: Vec<_> = history.iter().map(|e| e.alphas_reduce.clone()).collect();
    write(
        &out.join("alphas_normal.svg"),
        &report::alpha_evolution("softmax(α), normal cell", &hn, op_names),
    )?;
    write(
        &out.join("alphas_reduce.svg"),
        &report::alpha_evolution("softmax(α), reduction cell", &hr, op_names),
    )?;
    if let Some(last) = history.last() {
        let g = &last.genotype;
        let e = last.epoch;
        write(
            &out.join(format!("genotypes/epoch_{e:03}.json")),
            &g.to_json(),
        )?;
        write(
            &out.join(format!("genotypes/epoch_{e:03}.py")),
            &format!("{}\n", last.genotype_python),
        )?;
    }
    Ok(())
}

fn write_genotype_files(out: &Path, g: &Genotype) -> Result<(), RunError> {
    write(&out.join("genotype.json"), &g.to_json())?;
    write(
        &out.join("genotype.py"),
        &format!("{}\n", python::to_python(g)),
    )?;
    let n = CellGraph::conv(&g.normal, &g.normal_concat);
    let r = CellGraph::conv(&g.reduce, &g.reduce_concat);
    write(&out.join("normal.svg"), &n.to_svg())?;
    write(&out.join("reduce.svg"), &r.to_svg())?;
    write(&out.join("normal.dot"), &n.to_dot())?;
    write(&out.join("reduce.dot"), &r.to_dot())
}

/// Run (or resume) an architecture search on `device`.
pub fn run_search<B: AutodiffBackend>(
    config: &SearchConfig,
    opts: &RunOptions,
    device: &B::Device,
) -> Result<SearchSummary, RunError> {
    let out = &opts.out;
    let ckpt_path = out.join("checkpoint.bin");
    let (cfg, mut history, ckpt) = open_run::<SearchConfig, SearchEpoch>(config, opts)?;
    if cfg.batch_size == 0 || cfg.layers < 3 || cfg.nodes == 0 || cfg.init_channels == 0 {
        return Err(RunError::Config(
            "batch size, nodes and channels must be positive and layers at least 3".into(),
        ));
    }
    write(
        &out.join("config.json"),
        &serde_json::to_string_pretty(&cfg).expect("serialisable"),
    )?;
    let data = load_train(&cfg.data, cfg.limit_images)?;
    let (train_idx, val_idx) = search_split(data.len(), cfg.train_portion)?;
    let mut train = Loader::new(data.clone(), train_idx, cfg.batch_size);
    train.shuffle = true;
    train.augment = Augment::SEARCH;
    train.seed = cfg.seed;
    train.stream = 1;
    let mut val = Loader::new(data.clone(), val_idx.clone(), cfg.batch_size);
    val.shuffle = true;
    val.augment = Augment::SEARCH;
    val.seed = cfg.seed;
    val.stream = 2;
    let infer = Loader::new(data, val_idx, cfg.batch_size);

    let net: Net<B> = {
        let _guard = SEED_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        B::seed(device, cfg.seed);
        SearchNetworkConfig {
            channels: cfg.init_channels,
            layers: cfg.layers,
            steps: cfg.nodes,
            multiplier: cfg.nodes,
            ..Default::default()
        }
        .init::<B, _, _>(&DartsSpace::default(), Softmax, device)
    };
    let params = net.num_weights();
    let op_names = net.op_names.clone();
    let mut search = Bilevel::new(
        net,
        WeightConfig {
            lr: CosineLr {
                max: cfg.lr,
                min: cfg.lr_min,
                epochs: cfg.epochs,
            },
            momentum: cfg.momentum,
            weight_decay: cfg.weight_decay,
            grad_clip: (cfg.grad_clip > 0.0).then_some(cfg.grad_clip),
        },
        ArchitectConfig {
            order: if cfg.unrolled {
                Order::Second
            } else {
                Order::First
            },
            arch_lr: cfg.arch_lr,
            arch_weight_decay: cfg.arch_weight_decay,
            ..Default::default()
        },
    );
    if let Some(c) = &ckpt {
        checkpoint::load_bilevel(c, &mut search)?;
    }
    let start = history.len();
    let mut stopped_early = false;
    for epoch in start..cfg.epochs {
        if opts.stop_after.is_some_and(|n| epoch >= n) {
            stopped_early = true;
            break;
        }
        let t0 = Instant::now();
        let pb = progress(
            train.batches_per_epoch(),
            format!("epoch {}/{}", epoch + 1, cfg.epochs),
            opts.progress,
        );
        let train_batches = train.epoch(epoch, 0).map(|h| to_batch::<B>(&h, device));
        // The validation stream cycles through reshuffled passes of the val split.
        let mut val_stream = (0..)
            .flat_map(|k| val.epoch(epoch * 1000 + k, 0))
            .map(|h| to_batch::<B>(&h, device));
        let stats = search.run_epoch(epoch, train_batches, &mut val_stream, |ev| {
            let SearchEvent::Step { stats, .. } = ev;
            pb.inc(1);
            pb.set_message(format!(
                "loss {:.3} acc {:.1}% val {:.3}",
                stats.train_loss,
                100.0 * stats.train_correct.unwrap_or(0.0) / stats.train_size.max(1) as f64,
                stats.val_loss
            ));
        });
        pb.finish_and_clear();
        let model = search.model.valid();
        let (val_loss, val_acc) =
            evaluate::<B::InnerBackend, _>(&infer, device, |x| model.forward(x));
        let (an, ar) = search.model.arch_weights();
        let genotype = search.model.genotype();
        let rec = SearchEpoch {
            epoch,
            lr: stats.lr,
            train_loss: stats.train_loss,
            train_acc: stats.train_acc.unwrap_or(0.0),
            arch_val_loss: stats.val_loss,
            val_loss,
            val_acc,
            steps: stats.steps,
            seconds: t0.elapsed().as_secs_f64(),
            genotype_python: python::to_python(&genotype),
            genotype,
            alphas_normal: f64s(an),
            alphas_reduce: f64s(ar),
        };
        if opts.progress {
            eprintln!(
                "epoch {:>3}  lr {:.5}  train loss {:.4} acc {:5.1}%  val loss {:.4} acc {:5.1}%  {:.0}s\n  {}",
                epoch + 1,
                rec.lr,
                rec.train_loss,
                100.0 * rec.train_acc,
                rec.val_loss,
                100.0 * rec.val_acc,
                rec.seconds,
                rec.genotype_python
            );
        }
        history.push(rec);
        let mut c = Checkpoint::new(serde_json::json!({
            "kind": "cifar10_search",
            "epoch": epoch,
            "config": cfg,
            "history": history,
        }));
        checkpoint::save_bilevel(&mut c, &search);
        c.write_atomic(&ckpt_path)?;
        write_search_outputs(out, &history, &op_names)?;
    }
    let genotype = search.model.genotype();
    if !stopped_early {
        write_genotype_files(out, &genotype)?;
    }
    let ids = search.model.alpha_ids();
    let alphas = values(&search.model, &ids);
    let alphas = ids
        .iter()
        .flat_map(|id| {
            alphas[id]
                .clone()
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .expect("f32")
        })
        .collect();
    Ok(SearchSummary {
        history,
        genotype,
        alphas,
        params,
        stopped_early,
    })
}

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
    pub lr: f64,
    /// Drop-path probability used.
    pub drop_path_prob: f64,
    /// Training loss (including the auxiliary term).
    pub train_loss: f64,
    /// Training accuracy.
    pub train_acc: f64,
    /// Test loss.
    pub test_loss: f64,
    /// Test accuracy.
    pub test_acc: f64,
    /// Wall time (s).
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

/// Train (or resume training) a genotype from scratch and evaluate it on the test set.
pub fn run_train<B: AutodiffBackend>(
    config: &TrainConfig,
    opts: &RunOptions,
    device: &B::Device,
) -> Result<TrainSummary, RunError> {
    let out = &opts.out;
    let ckpt_path = out.join("checkpoint.bin");
    let (cfg, mut history, ckpt) = open_run::<TrainConfig, TrainEpoch>(config, opts)?;
    write(
        &out.join("config.json"),
        &serde_json::to_string_pretty(&cfg).expect("serialisable"),
    )?;
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

    let mut model = {
        let _guard = SEED_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        B::seed(device, cfg.seed);
        EvalNetworkConfig {
            channels: cfg.init_channels,
            layers: cfg.layers,
            auxiliary: cfg.auxiliary,
            ..Default::default()
        }
        .init::<B>(&cfg.genotype, device)?
    };
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
    let start = history.len();
    for epoch in start..cfg.epochs {
        if opts.stop_after.is_some_and(|n| epoch >= n) {
            break;
        }
        let t0 = Instant::now();
        let lr = schedule.at(epoch);
        let dp = cfg.drop_path_prob * epoch as f64 / cfg.epochs as f64;
        let pb = progress(
            train.batches_per_epoch(),
            format!("epoch {}/{}", epoch + 1, cfg.epochs),
            opts.progress,
        );
        let (mut loss_sum, mut ok, mut seen) = (0.0, 0.0, 0.0);
        for h in train.epoch(epoch, 0) {
            let b = to_batch::<B>(&h, device);
            let ((loss, c, grads), bn) = record_bn_updates(|| {
                darts_bilevel::join_parameter_graphs(&model);
                let (loss, c) = model.loss(&b, dp, cfg.auxiliary_weight);
                let l = loss.clone().detach();
                (l, c, loss.backward())
            });
            let mut g = gradients(&model, &grads);
            if cfg.grad_clip > 0.0 {
                clip_grad_norm(&mut g, cfg.grad_clip);
            }
            let ids: Vec<_> = g.keys().copied().collect();
            let w = values(&model, &ids);
            let new = sgd.step(lr, &w, &g);
            model = bn.apply(set_values(model, &new));
            let m = h.len() as f64;
            let l: f64 = loss.into_scalar().elem();
            let c: f64 = c.into_scalar().elem();
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
        let inner = model.valid();
        let (test_loss, test_acc) = evaluate::<B::InnerBackend, _>(&test_loader, device, |x| {
            inner.forward(x, false, 0.0).logits
        });
        let rec = TrainEpoch {
            epoch,
            lr,
            drop_path_prob: dp,
            train_loss: loss_sum / seen.max(1.0),
            train_acc: ok / seen.max(1.0),
            test_loss,
            test_acc,
            seconds: t0.elapsed().as_secs_f64(),
        };
        if opts.progress {
            eprintln!(
                "epoch {:>3}  lr {:.5}  train loss {:.4} acc {:5.1}%  test loss {:.4} acc {:5.1}%  {:.0}s",
                epoch + 1,
                lr,
                rec.train_loss,
                100.0 * rec.train_acc,
                rec.test_loss,
                100.0 * rec.test_acc,
                rec.seconds
            );
        }
        history.push(rec);
        let mut c = Checkpoint::new(serde_json::json!({
            "kind": "cifar10_train",
            "epoch": epoch,
            "config": cfg,
            "history": history,
        }));
        checkpoint::save_model_sgd(&mut c, &model, &sgd);
        c.write_atomic(&ckpt_path)?;
        write_jsonl(&out.join("metrics.jsonl"), &history)?;
        let series = |f: &dyn Fn(&TrainEpoch) -> f64| -> Vec<(f64, f64)> {
            history.iter().map(|e| (e.epoch as f64, f(e))).collect()
        };
        write(
            &out.join("loss.svg"),
            &report::line_chart(
                "loss",
                "epoch",
                &[
                    ("train".into(), series(&|e| e.train_loss)),
                    ("test".into(), series(&|e| e.test_loss)),
                ],
            ),
        )?;
        write(
            &out.join("accuracy.svg"),
            &report::line_chart(
                "accuracy",
                "epoch",
                &[
                    ("train".into(), series(&|e| e.train_acc)),
                    ("test".into(), series(&|e| e.test_acc)),
                ],
            ),
        )?;
    }
    let test_acc = history.last().map_or(0.0, |e| e.test_acc);
    Ok(TrainSummary {
        history,
        params,
        test_acc,
    })
}
