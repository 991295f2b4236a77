//! Weights to and from PyTorch: the reference's evaluation network (quark0/darts
//! `cnn/model.py` `NetworkCIFAR`) and this crate's [`EvalNetwork`] hold the same tensors under
//! other names. [`reference_key`] is the explicit map between the two; [`import_reference`]
//! reads a PyTorch state dict (`.pt`/`.pth` through `burn-store`'s PyTorch reader, or
//! `.safetensors`) into a network built for the same genotype and size, and
//! [`export_reference`] writes one as safetensors with the reference's names, so that
//!
//! ```python
//! model.load_state_dict(safetensors.torch.load_file("darts_v2.safetensors"))
//! ```
//!
//! works on the reference's class (`NetworkCIFAR(C, 10, layers, auxiliary, genotype)`).
//!
//! | ours | reference |
//! |---|---|
//! | `stem_conv`, `stem_bn` | `stem.0`, `stem.1` |
//! | `cells.i.preprocess0` (ReLU-conv-BN / factorized reduce) | `cells.i.preprocess0.op.{1,2}` / `cells.i.preprocess0.{conv_1,conv_2,bn}` |
//! | `cells.i.preprocess1.{conv,bn}` | `cells.i.preprocess1.op.{1,2}` |
//! | `cells.i.ops.k` sep conv `first.{depthwise,pointwise,bn}`, `second.{…}` | `cells.i._ops.k.op.{1,2,3}`, `op.{5,6,7}` |
//! | `cells.i.ops.k` dil conv `{depthwise,pointwise,bn}` | `cells.i._ops.k.op.{1,2,3}` |
//! | `cells.i.ops.k` factorized reduce `{conv_1,conv_2,bn}` | `cells.i._ops.k.{conv_1,conv_2,bn}` |
//! | `cells.i.ops.k` conv 7×1 1×7 `{conv_1x7,conv_7x1,bn}` | `cells.i._ops.k.op.{1,2,3}` |
//! | `auxiliary_head.{conv1,bn1,conv2,bn2}` | `auxiliary_head.features.{2,3,5,6}` |
//! | `auxiliary_head.classifier`, `classifier` (weight `[in, out]`) | the same names (weight `[out, in]`: transposed) |
//! | BatchNorm `gamma`, `beta`, `running_mean`, `running_var` | `weight`, `bias`, `running_mean`, `running_var` (+ `num_batches_tracked`, written as 0, ignored on import) |

use crate::checkpoint::{self, Checkpoint, CheckpointError};
use burn::module::Module;
use burn::tensor::backend::Backend;
use burn_store::{ModuleSnapshot, ModuleStore, PytorchStore};
use darts_cell::EvalNetwork;
use darts_mixed_op::CandidateOp;
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Errors moving weights between PyTorch files and networks.
#[derive(Debug, thiserror::Error)]
pub enum InteropError {
    /// The file cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not a state dict this module can read.
    #[error("{path}: {what}")]
    Format {
        /// File.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The file's tensors do not fit the network (missing, unexpected or misshapen keys, named).
    #[error("{path}: the state dict does not fit this network: {what}")]
    Mismatch {
        /// File.
        path: PathBuf,
        /// Which keys.
        what: String,
    },
    /// A tensor of the network has no counterpart in the reference (a search-space-only op).
    #[error("`{0}` has no counterpart in the reference's evaluation network")]
    Unmapped(String),
    /// Loading into the network failed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
}

/// The reference's state-dict key of one of our tensor paths, and whether the values are
/// transposed between the two (linear layers: ours `[in, out]`, PyTorch's `[out, in]`).
/// `None` for a path the reference's evaluation network does not have.
pub fn reference_key(path: &str) -> Option<(String, bool)> {
    let (module, leaf) = path.rsplit_once('.')?;
    let leaf = match leaf {
        "gamma" => "weight",
        "beta" => "bias",
        other => other,
    };
    let segs: Vec<&str> = module.split('.').collect();
    let sequential = |base: &str, i: usize| format!("{base}.op.{i}");
    let module = match segs.as_slice() {
        ["stem_conv"] => "stem.0".to_string(),
        ["stem_bn"] => "stem.1".to_string(),
        ["classifier"] => "classifier".to_string(),
        ["auxiliary_head", part] => {
            let k = match *part {
                "conv1" => "features.2",
                "bn1" => "features.3",
                "conv2" => "features.5",
                "bn2" => "features.6",
                "classifier" => "classifier",
                _ => return None,
            };
            format!("auxiliary_head.{k}")
        }
        ["cells", i, pre @ ("preprocess0" | "preprocess1"), rest @ ..] => {
            let base = format!("cells.{i}.{pre}");
            match rest {
                ["Conv", "conv"] | ["conv"] => sequential(&base, 1),
                ["Conv", "bn"] | ["bn"] => sequential(&base, 2),
                ["Reduce", part @ ("conv_1" | "conv_2" | "bn")] => format!("{base}.{part}"),
                _ => return None,
            }
        }
        ["cells", i, "ops", k, op, rest @ ..] => {
            let base = format!("cells.{i}._ops.{k}");
            let index = match (*op, rest) {
                ("SepConv", [half, part]) => {
                    let first = match *half {
                        "first" => 1,
                        "second" => 5,
                        _ => return None,
                    };
                    first + conv_bn_index(part)?
                }
                ("DilConv", [part]) => 1 + conv_bn_index(part)?,
                ("Conv7x1x1x7", [part]) => match *part {
                    "conv_1x7" => 1,
                    "conv_7x1" => 2,
                    "bn" => 3,
                    _ => return None,
                },
                ("FactorizedReduce", [part @ ("conv_1" | "conv_2" | "bn")]) => {
                    return Some((format!("{base}.{part}.{leaf}"), false));
                }
                _ => return None,
            };
            sequential(&base, index)
        }
        _ => return None,
    };
    let transposed =
        leaf == "weight" && (module == "classifier" || module.ends_with(".classifier"));
    Some((format!("{module}.{leaf}"), transposed))
}

/// Offset of depthwise/pointwise/BN within a ReLU-conv-conv-BN sequence.
fn conv_bn_index(part: &str) -> Option<usize> {
    match part {
        "depthwise" => Some(0),
        "pointwise" => Some(1),
        "bn" => Some(2),
        _ => None,
    }
}

/// One tensor of a state dict: shape and f32 values.
type Entry = (Vec<usize>, Vec<f32>);

/// The float tensors of a PyTorch state dict: `.safetensors`, or anything else through
/// `burn-store`'s PyTorch reader (`.pt`, `.pth`). Integer entries (`num_batches_tracked`) are
/// kept with their values converted, so that they can be told apart from unknown keys.
pub fn read_state_dict(path: &Path) -> Result<BTreeMap<String, Entry>, InteropError> {
    let format = |what: String| InteropError::Format {
        path: path.to_path_buf(),
        what,
    };
    let mut out = BTreeMap::new();
    if path.extension().is_some_and(|e| e == "safetensors") {
        let bytes = std::fs::read(path).map_err(|source| InteropError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| format(e.to_string()))?;
        for (name, view) in st.tensors() {
            let values = match view.dtype() {
                Dtype::F32 => checkpoint::f32s_from_le(view.data()),
                Dtype::F64 => view
                    .data()
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
                    .collect(),
                Dtype::I64 => view
                    .data()
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
                    .collect(),
                other => return Err(format(format!("tensor `{name}` is {other:?}"))),
            };
            out.insert(name, (view.shape().to_vec(), values));
        }
    } else {
        if !path.is_file() {
            return Err(InteropError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            });
        }
        // Keep the file's own keys: burn-store renumbers `nn.Sequential` indices by default
        // (`op.1` → `op.0` where the ReLU at 0 has no tensors); the map below is explicit.
        let mut store = PytorchStore::from_file(path).map_indices_contiguous(false);
        let snapshots = store
            .get_all_snapshots()
            .map_err(|e| format(e.to_string()))?;
        for (name, s) in snapshots {
            let data = s
                .to_data()
                .map_err(|e| format(format!("tensor `{name}`: {e:?}")))?;
            let shape = data.shape.to_vec();
            let values = data
                .convert::<f32>()
                .to_vec::<f32>()
                .map_err(|e| format(format!("tensor `{name}`: {e:?}")))?;
            out.insert(name.clone(), (shape, values));
        }
    }
    Ok(out)
}

/// Load the reference's state dict in `path` into `net` (built with the same genotype, size and
/// auxiliary head). Every tensor of `net` must be in the file with its shape, and every float
/// tensor of the file must be used; otherwise the error names the keys.
pub fn import_reference<B: Backend, O: CandidateOp<B, 4>>(
    net: EvalNetwork<B, O>,
    path: &Path,
) -> Result<EvalNetwork<B, O>, InteropError> {
    let mut file = read_state_dict(path)?;
    let mut ckpt = Checkpoint::new(serde_json::Value::Null);
    let (mut missing, mut shapes) = (Vec::new(), Vec::new());
    for s in net.collect(None, None, false) {
        let ours = s.full_path();
        let (key, transposed) =
            reference_key(&ours).ok_or_else(|| InteropError::Unmapped(ours.clone()))?;
        let Some((shape, values)) = file.remove(&key) else {
            missing.push(key);
            continue;
        };
        let (shape, values) = match transposed {
            true => transpose(&shape, &values),
            false => (shape, values),
        };
        if shape.as_slice() != s.shape.as_slice() {
            shapes.push(format!(
                "`{key}` is {shape:?} in the file, the network needs {:?}",
                s.shape.to_vec()
            ));
            continue;
        }
        ckpt.push(format!("model.{ours}"), shape, values);
    }
    let unexpected: Vec<String> = file
        .into_keys()
        .filter(|k| !k.ends_with("num_batches_tracked"))
        .collect();
    let mut what = Vec::new();
    if !shapes.is_empty() {
        what.push(shapes.join("; "));
    }
    what.extend(checkpoint::first_of("missing keys: ", &missing, 5));
    what.extend(checkpoint::first_of("unexpected keys: ", &unexpected, 5));
    if !what.is_empty() {
        return Err(InteropError::Mismatch {
            path: path.to_path_buf(),
            what: format!(
                "{} (is it the same genotype, channels, layers and auxiliary head?)",
                what.join("; ")
            ),
        });
    }
    Ok(checkpoint::load_module(&ckpt, net)?)
}

/// Write `net` to `path` as safetensors with the reference's names and layouts (BatchNorm's
/// `num_batches_tracked` as 0), atomically.
pub fn export_reference<B: Backend, M: Module<B>>(
    net: &M,
    path: &Path,
) -> Result<(), InteropError> {
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for s in net.collect(None, None, false) {
        let ours = s.full_path();
        let (key, transposed) =
            reference_key(&ours).ok_or_else(|| InteropError::Unmapped(ours.clone()))?;
        let values = snapshot_values(&s).ok_or_else(|| InteropError::Format {
            path: path.to_path_buf(),
            what: format!("`{ours}` cannot be read as f32"),
        })?;
        let (shape, values) = match transposed {
            true => transpose(&s.shape, &values),
            false => (s.shape.to_vec(), values),
        };
        if let Some(bn) = key.strip_suffix(".running_var") {
            tensors.push((
                format!("{bn}.num_batches_tracked"),
                Dtype::I64,
                Vec::new(),
                0i64.to_le_bytes().to_vec(),
            ));
        }
        let bytes = checkpoint::le_bytes(&values);
        tensors.push((key, Dtype::F32, shape, bytes));
    }
    let views = tensors
        .iter()
        .map(|(k, dtype, shape, bytes)| {
            safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (k.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| InteropError::Format {
            path: path.to_path_buf(),
            what: e.to_string(),
        })?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes =
        safetensors::serialize(views, Some(metadata)).map_err(|e| InteropError::Format {
            path: path.to_path_buf(),
            what: e.to_string(),
        })?;
    let io = |source| InteropError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// A snapshot's values as f32.
fn snapshot_values(s: &burn_store::TensorSnapshot) -> Option<Vec<f32>> {
    s.to_data()
        .ok()
        .and_then(|d| d.convert::<f32>().to_vec::<f32>().ok())
}

/// A 2-D tensor transposed (other ranks unchanged).
fn transpose(shape: &[usize], values: &[f32]) -> (Vec<usize>, Vec<f32>) {
    let [r, c] = shape else {
        return (shape.to_vec(), values.to_vec());
    };
    let (r, c) = (*r, *c);
    let mut out = vec![0.0; values.len()];
    for i in 0..r {
        for j in 0..c {
            out[j * r + i] = values[i * c + j];
        }
    }
    (vec![c, r], out)
}
