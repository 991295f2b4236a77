//! Checkpoints: [safetensors](https://github.com/huggingface/safetensors) files, written
//! atomically (temporary file, fsync, rename), so a crash never leaves a half-written checkpoint.
//!
//! - Module tensors (weights, α, BatchNorm running statistics) are named `model.` + their Burn
//!   module path (`model.cells.0.preprocess0.conv.weight`), collected and applied with
//!   `burn-store`'s [`ModuleSnapshot`]. Loading into a model of another configuration (other
//!   layers, channels or op set) is a [`CheckpointError::Mismatch`] that names the tensors that
//!   are missing, left over or of another shape.
//! - Optimiser state is stored from the optimisers' typed records ([`SgdState`], [`AdamState`]),
//!   keyed by parameter position: tensors `sgd.momentum.K`, `adam.m.K`, `adam.v.K`, and Adam's
//!   per-parameter step counts in the metadata.
//! - The safetensors metadata holds one entry, `darts`: a JSON object with the format name, the
//!   format [`VERSION`], the free-form run metadata (configuration, epoch, history, ...), the
//!   library's own records, the tensor order, and a CRC-32 of all of it and of every tensor's
//!   values, so a damaged file is an error instead of silently wrong weights.
//!
//! The files open with any safetensors reader (`safetensors.torch.load_file` in Python, or
//! `burn_store::SafetensorsStore` for the `model.` tensors).
//!
//! ```
//! use darts::checkpoint::Checkpoint;
//! let dir = std::env::temp_dir().join(format!("darts-doc-ckpt-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let mut c = Checkpoint::new(serde_json::json!({"epoch": 3}));
//! c.push("w", vec![2], vec![1.0, 2.0]);
//! c.write_atomic(dir.join("ckpt.safetensors")).unwrap();
//! let back = Checkpoint::read(dir.join("ckpt.safetensors")).unwrap();
//! assert_eq!(back.meta["epoch"], 3);
//! assert_eq!(back.get("w").unwrap().2, vec![1.0, 2.0]);
//! ```

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use burn_store::{ApplyError, ModuleSnapshot, TensorSnapshot};
use darts_bilevel::{AdamMoments, AdamState, ArchModel, Bilevel, OptimStateError, Sgd, SgdState};
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The checkpoint format's version, stored in every file. A file of a later version is an error
/// that says so; version 3 is the first safetensors layout (versions 1 and 2 were the
/// `DARTSCK1`/`DARTSCK2` files of earlier releases, which this one no longer reads).
pub const VERSION: u32 = 3;

/// The safetensors metadata key that holds the checkpoint's own header.
const KEY: &str = "darts";
const FORMAT: &str = "darts-checkpoint";

/// Errors reading or applying a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// I/O failure.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Not a checkpoint, or damaged.
    #[error("{path}: not a darts checkpoint or damaged ({what})")]
    Format {
        /// File.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// A checkpoint written by a later version of the format.
    #[error("{path}: checkpoint format version {found}, this build reads version {VERSION} (update darts to resume it)")]
    Version {
        /// File.
        path: PathBuf,
        /// The file's version.
        found: u32,
    },
    /// The checkpoint does not fit the model.
    #[error("checkpoint does not match the model: {0}")]
    Mismatch(String),
}

/// The `darts` metadata entry.
#[derive(Serialize, Deserialize)]
struct Header {
    format: String,
    version: u32,
    /// Hex CRC-32 of [`Body`]'s JSON and of every tensor's shape and values, in `order`.
    crc32: String,
    #[serde(flatten)]
    body: Body,
}

#[derive(Serialize, Deserialize)]
struct Body {
    order: Vec<String>,
    meta: serde_json::Value,
}

/// A checkpoint: free-form metadata plus named f32 tensors, kept in insertion order.
#[derive(Clone, Debug, Default)]
pub struct Checkpoint {
    /// Metadata (configuration, epoch, history, ...).
    pub meta: serde_json::Value,
    /// (name, shape, values).
    pub tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
}

impl Checkpoint {
    /// An empty checkpoint with metadata.
    pub fn new(meta: serde_json::Value) -> Self {
        Self {
            meta,
            tensors: Vec::new(),
        }
    }

    /// Add a tensor.
    pub fn push(&mut self, name: impl Into<String>, shape: Vec<usize>, values: Vec<f32>) {
        self.tensors.push((name.into(), shape, values));
    }

    /// Look a tensor up by name.
    pub fn get(&self, name: &str) -> Option<&(String, Vec<usize>, Vec<f32>)> {
        self.tensors.iter().find(|t| t.0 == name)
    }

    /// Tensors whose names start with `prefix`, in order, as (rest of the name, shape, values).
    pub fn entries<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a [usize], &'a [f32])> + 'a {
        self.tensors.iter().filter_map(move |(name, shape, v)| {
            name.strip_prefix(prefix)
                .map(|rest| (rest, shape.as_slice(), v.as_slice()))
        })
    }

    /// The file's bytes (safetensors).
    pub fn to_bytes(&self) -> Result<Vec<u8>, CheckpointError> {
        let fail = |what: String| CheckpointError::Mismatch(what);
        let mut seen = std::collections::BTreeSet::new();
        for (name, shape, v) in &self.tensors {
            if !seen.insert(name.as_str()) {
                return Err(fail(format!("two tensors named `{name}`")));
            }
            if shape.iter().product::<usize>() != v.len() {
                return Err(fail(format!(
                    "tensor `{name}`: shape {shape:?} but {} values",
                    v.len()
                )));
            }
        }
        let body = Body {
            order: self.tensors.iter().map(|t| t.0.clone()).collect(),
            meta: self.meta.clone(),
        };
        let bytes: Vec<Vec<u8>> = self.tensors.iter().map(|t| le_bytes(&t.2)).collect();
        let crc = checksum(&body, self.tensors.iter().map(|t| t.1.as_slice()), &bytes);
        let header = Header {
            format: FORMAT.into(),
            version: VERSION,
            crc32: format!("{crc:08x}"),
            body,
        };
        let header = serde_json::to_string(&header).map_err(|e| fail(format!("metadata: {e}")))?;
        let views = self
            .tensors
            .iter()
            .zip(&bytes)
            .map(|((name, shape, _), b)| {
                safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), b)
                    .map(|v| (name.clone(), v))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| fail(e.to_string()))?;
        // One metadata entry: safetensors writes its metadata map in hash order, so a second
        // key would make two identical runs write different bytes.
        let metadata = HashMap::from([(KEY.to_string(), header)]);
        safetensors::serialize(views, Some(metadata)).map_err(|e| fail(e.to_string()))
    }

    /// Write to `path` atomically.
    pub fn write_atomic(&self, path: impl AsRef<Path>) -> Result<(), CheckpointError> {
        let path = path.as_ref();
        let err = |source| CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        };
        let bytes = self.to_bytes()?;
        let tmp = path.with_extension("tmp");
        {
            let mut f = std::fs::File::create(&tmp).map_err(err)?;
            f.write_all(&bytes).map_err(err)?;
            f.sync_all().map_err(err)?;
        }
        crate::run::failpoint("checkpoint_before_rename");
        std::fs::rename(&tmp, path).map_err(err)
    }

    /// Read from `path`.
    pub fn read(path: impl AsRef<Path>) -> Result<Self, CheckpointError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(&bytes).map_err(|e| match e {
            Parse::Bad(what) => CheckpointError::Format {
                path: path.to_path_buf(),
                what,
            },
            Parse::Version(found) => CheckpointError::Version {
                path: path.to_path_buf(),
                found,
            },
        })
    }

    /// A checkpoint from the bytes of [`Checkpoint::to_bytes`] (`what` names their origin in
    /// errors): how the data-parallel drivers receive rank 0's state.
    pub fn decode(bytes: &[u8], what: &str) -> Result<Self, CheckpointError> {
        Self::from_bytes(bytes).map_err(|e| match e {
            Parse::Bad(w) => CheckpointError::Format {
                path: PathBuf::from(what),
                what: w,
            },
            Parse::Version(found) => {
                CheckpointError::Mismatch(format!("{what}: checkpoint format version {found}"))
            }
        })
    }

    /// Parse a checkpoint file's bytes. Never panics: the safetensors reader checks every
    /// length and offset against the buffer, and every tensor is checked against the header.
    fn from_bytes(bytes: &[u8]) -> Result<Self, Parse> {
        let bad = |what: String| Parse::Bad(what);
        if bytes.starts_with(b"DARTSCK") {
            return Err(bad("a checkpoint of the first darts layout (DARTSCK1/2), which this version no longer reads: finish the run with the version that started it, or start it again".into()));
        }
        let st = SafeTensors::deserialize(bytes).map_err(|e| bad(format!("safetensors: {e}")))?;
        let (_, md) =
            SafeTensors::read_metadata(bytes).map_err(|e| bad(format!("safetensors: {e}")))?;
        let raw = md
            .metadata()
            .as_ref()
            .and_then(|m| m.get(KEY))
            .ok_or_else(|| {
                bad(format!(
                    "a safetensors file without the `{KEY}` metadata entry of a darts checkpoint"
                ))
            })?;
        #[derive(Deserialize)]
        struct Probe {
            format: String,
            version: u32,
        }
        let probe: Probe = serde_json::from_str(raw).map_err(|e| bad(format!("metadata: {e}")))?;
        if probe.format != FORMAT {
            return Err(bad(format!("format `{}`", probe.format)));
        }
        if probe.version > VERSION {
            return Err(Parse::Version(probe.version));
        }
        let header: Header =
            serde_json::from_str(raw).map_err(|e| bad(format!("metadata: {e}")))?;
        if st.len() != header.body.order.len() {
            return Err(bad(format!(
                "{} tensors in the file, {} listed in its metadata",
                st.len(),
                header.body.order.len()
            )));
        }
        let mut tensors = Vec::with_capacity(header.body.order.len());
        let mut raw_values = Vec::with_capacity(header.body.order.len());
        for name in &header.body.order {
            let view = st
                .tensor(name)
                .map_err(|_| bad(format!("tensor `{name}` is listed but absent")))?;
            if view.dtype() != Dtype::F32 {
                return Err(bad(format!(
                    "tensor `{name}` is {:?}, not F32",
                    view.dtype()
                )));
            }
            let data = view.data();
            let values = f32s_from_le(data);
            tensors.push((name.clone(), view.shape().to_vec(), values));
            raw_values.push(data);
        }
        let crc = checksum(
            &header.body,
            tensors.iter().map(|t| t.1.as_slice()),
            &raw_values,
        );
        if format!("{crc:08x}") != header.crc32 {
            return Err(bad(format!(
                "checksum mismatch (stored {}, computed {crc:08x}): the file was changed or damaged after it was written",
                header.crc32
            )));
        }
        Ok(Self {
            meta: header.body.meta,
            tensors,
        })
    }
}

enum Parse {
    Bad(String),
    Version(u32),
}

/// f32 values as little-endian bytes (the safetensors layout).
pub(crate) fn le_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Little-endian bytes as f32 values (a trailing partial value is ignored).
pub(crate) fn f32s_from_le(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// CRC-32 of the body's JSON, then of each tensor's shape (u64 LE) and values.
fn checksum<'a>(
    body: &Body,
    shapes: impl Iterator<Item = &'a [usize]>,
    values: &[impl AsRef<[u8]>],
) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&serde_json::to_vec(body).unwrap_or_default());
    for (shape, v) in shapes.zip(values) {
        for d in shape {
            crc.update(&(*d as u64).to_le_bytes());
        }
        crc.update(v.as_ref());
    }
    crc.finalize()
}

/// Every float parameter of `module`, in visit order: (id, shape, values).
pub fn module_tensors<B: Backend, M: Module<B>>(
    module: &M,
) -> Vec<(ParamId, Vec<usize>, Vec<f32>)> {
    struct V(Vec<(ParamId, Vec<usize>, Vec<f32>)>);
    impl<B: Backend> ModuleVisitor<B> for V {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
            let t = p.val();
            let shape = t.dims().to_vec();
            let v = darts_ops::to_f32s(&t);
            self.0.push((p.id, shape, v));
        }
    }
    let mut v = V(Vec::new());
    module.visit(&mut v);
    v.0
}

/// The prefix of module tensors in a checkpoint.
const MODEL: &str = "model.";

/// Add every tensor of `model` to `ckpt`, named `model.` + its module path.
pub fn save_module<B: Backend, M: Module<B>>(
    ckpt: &mut Checkpoint,
    model: &M,
) -> Result<(), CheckpointError> {
    for s in model.collect(None, None, false) {
        let name = format!("{MODEL}{}", s.full_path());
        let data = s
            .to_data()
            .map_err(|e| CheckpointError::Mismatch(format!("{name}: {e:?}")))?;
        let values = data
            .convert::<f32>()
            .to_vec::<f32>()
            .map_err(|e| CheckpointError::Mismatch(format!("{name}: {e:?}")))?;
        ckpt.push(name, s.shape.to_vec(), values);
    }
    Ok(())
}

/// Load the `model.` tensors of `ckpt` into `model` (built with the checkpoint's
/// configuration). Every tensor of the model must be in the checkpoint with its shape, and
/// every module tensor of the checkpoint must be used; otherwise the error names them.
pub fn load_module<B: Backend, M: Module<B>>(
    ckpt: &Checkpoint,
    mut model: M,
) -> Result<M, CheckpointError> {
    let snapshots = ckpt
        .entries(MODEL)
        .map(|(path, shape, v)| {
            TensorSnapshot::from_data(
                TensorData::new(v.to_vec(), shape.to_vec()),
                path.split('.').map(String::from).collect(),
                Vec::new(),
                ParamId::new(),
            )
        })
        .collect();
    let r = model.apply(snapshots, None, None, false);
    let mut problems = Vec::new();
    let shapes: Vec<String> = r
        .errors
        .iter()
        .map(|e| match e {
            ApplyError::ShapeMismatch {
                path,
                expected,
                found,
            } => format!(
                "{MODEL}{path} has shape {:?} in the checkpoint, {:?} in the model",
                found.as_slice(),
                expected.as_slice()
            ),
            other => other.to_string(),
        })
        .collect();
    list(&mut problems, "", &shapes);
    let missing: Vec<String> = r
        .missing
        .iter()
        .map(|m| format!("{MODEL}{}", m.0))
        .collect();
    list(&mut problems, "the checkpoint lacks ", &missing);
    let unused: Vec<String> = r.unused.iter().map(|u| format!("{MODEL}{u}")).collect();
    list(&mut problems, "the model has no ", &unused);
    if problems.is_empty() {
        Ok(model)
    } else {
        Err(CheckpointError::Mismatch(format!(
            "{} (a checkpoint of another configuration: layers, channels or op set)",
            problems.join("; ")
        )))
    }
}

/// Append "`lead`first, second, third and N more" for a non-empty list.
fn list(out: &mut Vec<String>, lead: &str, items: &[String]) {
    out.extend(first_of(lead, items, 3));
}

/// "`lead`a, b, … and N more", showing at most `shown` items; `None` for an empty list.
pub(crate) fn first_of(lead: &str, items: &[String], shown: usize) -> Option<String> {
    if items.is_empty() {
        return None;
    }
    let head = items
        .iter()
        .take(shown)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    let more = match items.len() {
        n if n > shown => format!(" and {} more", n - shown),
        _ => String::new(),
    };
    Some(format!("{lead}{head}{more}"))
}

/// Save `model` and the SGD momentum buffers of `sgd` into `ckpt` (tensors `model.PATH` and,
/// from [`Sgd::state`], `sgd.momentum.K`). Returns the parameter ids in visit order (a
/// parameter's position is its index there).
pub fn save_model_sgd<B: AutodiffBackend, M: Module<B>>(
    ckpt: &mut Checkpoint,
    model: &M,
    sgd: &Sgd<B::InnerBackend>,
) -> Result<Vec<ParamId>, CheckpointError> {
    save_module(ckpt, model)?;
    let ids = darts_bilevel::params::all_ids(model);
    for (pos, v) in sgd.state(&ids).buffers {
        ckpt.push(format!("sgd.momentum.{pos}"), vec![v.len()], v);
    }
    Ok(ids)
}

/// The entries of a map keyed by parameter id, in the parameters' visit order. Parameter ids
/// are random per process, so a map's own order would make two identical runs write their
/// checkpoints in different orders.
pub fn by_position<'a, T>(ids: &[ParamId], map: &'a BTreeMap<ParamId, T>) -> Vec<(usize, &'a T)> {
    let index: BTreeMap<ParamId, usize> = ids.iter().enumerate().map(|(k, id)| (*id, k)).collect();
    let mut v: Vec<(usize, &T)> = map.iter().map(|(id, t)| (index[id], t)).collect();
    v.sort_by_key(|e| e.0);
    v
}

/// Restore what [`save_model_sgd`] saved; returns the model and the parameter ids by position.
pub fn load_model_sgd<B: AutodiffBackend, M: Module<B>>(
    ckpt: &Checkpoint,
    model: M,
    sgd: &mut Sgd<B::InnerBackend>,
) -> Result<(M, Vec<ParamId>), CheckpointError> {
    let model = load_module(ckpt, model)?;
    let ids: Vec<ParamId> = darts_bilevel::params::all_ids(&model);
    let device = model.devices().into_iter().next().expect("a device");
    let mut record = SgdState::default();
    for (pos, _, v) in ckpt.entries("sgd.momentum.") {
        record.buffers.push((position(pos)?, v.to_vec()));
    }
    sgd.load_state(&ids, &record, &device).map_err(mismatch)?;
    Ok((model, ids))
}

/// A parameter position in a tensor name.
pub fn position(s: &str) -> Result<usize, CheckpointError> {
    s.parse::<usize>()
        .map_err(|_| CheckpointError::Mismatch(format!("bad parameter position `{s}`")))
}

fn mismatch(e: OptimStateError) -> CheckpointError {
    CheckpointError::Mismatch(e.to_string())
}

/// Save a [`Bilevel`] (model, SGD momentum buffers, Adam state on α) into `ckpt`: the tensors
/// of [`save_model_sgd`], `adam.m.K` and `adam.v.K` from [`darts_bilevel::Adam::state`], and
/// each parameter's Adam step count in the metadata (`adam_steps`, position → steps).
pub fn save_bilevel<B: AutodiffBackend, M: ArchModel<B>>(
    ckpt: &mut Checkpoint,
    s: &Bilevel<B, M>,
) -> Result<(), CheckpointError> {
    let ids = save_model_sgd(ckpt, &s.model, &s.w_opt)?;
    let mut steps = serde_json::Map::new();
    for e in s.architect.adam.state(&ids).moments {
        let pos = e.position;
        steps.insert(pos.to_string(), e.step.into());
        ckpt.push(format!("adam.m.{pos}"), vec![e.m.len()], e.m);
        ckpt.push(format!("adam.v.{pos}"), vec![e.v.len()], e.v);
    }
    ckpt.meta["adam_steps"] = steps.into();
    Ok(())
}

/// Restore what [`save_bilevel`] saved into `s` (built fresh with the same configuration).
pub fn load_bilevel<B: AutodiffBackend, M: ArchModel<B>>(
    ckpt: &Checkpoint,
    s: &mut Bilevel<B, M>,
) -> Result<(), CheckpointError> {
    let (model, ids) = load_model_sgd(ckpt, s.model.clone(), &mut s.w_opt)?;
    s.model = model;
    let device = s.model.devices().into_iter().next().expect("a device");
    let steps: BTreeMap<String, u64> = serde_json::from_value(ckpt.meta["adam_steps"].clone())
        .map_err(|e| CheckpointError::Mismatch(format!("adam_steps: {e}")))?;
    let mut record = AdamState::default();
    for (pos, _, m) in ckpt.entries("adam.m.") {
        let v = ckpt.get(&format!("adam.v.{pos}")).ok_or_else(|| {
            CheckpointError::Mismatch(format!("adam.m.{pos} without adam.v.{pos}"))
        })?;
        let step = *steps.get(pos).ok_or_else(|| {
            CheckpointError::Mismatch(format!("adam.m.{pos} without its step count"))
        })?;
        record.moments.push(AdamMoments {
            position: position(pos)?,
            step,
            m: m.to_vec(),
            v: v.2.clone(),
        });
    }
    record.moments.sort_by_key(|e| e.position);
    s.architect
        .adam
        .load_state(&ids, &record, &device)
        .map_err(mismatch)
}
