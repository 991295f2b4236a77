//! Checkpoints: a JSON header and raw little-endian f32 tensors in one file, written atomically
//! (temporary file, fsync, rename), so a crash never leaves a half-written checkpoint, and closed
//! by a CRC-32 of everything before it, so a damaged file is an error instead of silently wrong
//! weights. Every length and shape in a file is checked before it is used.
//!
//! Layout: `DARTSCK2`, header length (u64 LE), JSON header, the tensors' f32 LE values in header
//! order, CRC-32 (u32 LE). Files of the first layout (`DARTSCK1`, no checksum) still load.
//!
//! Module tensors are stored in the module's visit order (weights, α, BN running statistics), so
//! a checkpoint loads into a freshly built module of the same configuration; optimiser state is
//! keyed by that same position.
//!
//! ```
//! use darts::checkpoint::Checkpoint;
//! let dir = std::env::temp_dir().join(format!("darts-doc-ckpt-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let mut c = Checkpoint::new(serde_json::json!({"epoch": 3}));
//! c.push("w", vec![2], vec![1.0, 2.0]);
//! c.write_atomic(dir.join("ckpt.bin")).unwrap();
//! let back = Checkpoint::read(dir.join("ckpt.bin")).unwrap();
//! assert_eq!(back.meta["epoch"], 3);
//! assert_eq!(back.get("w").unwrap().2, vec![1.0, 2.0]);
//! ```

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use darts_bilevel::{AdamMoments, AdamState, ArchModel, Bilevel, OptimStateError, Sgd, SgdState};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"DARTSCK2";
/// The first layout, without the trailing checksum (read only).
const MAGIC_V1: &[u8; 8] = b"DARTSCK1";

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
    /// The checkpoint does not fit the model.
    #[error("checkpoint does not match the model: {0}")]
    Mismatch(String),
}

#[derive(Serialize, Deserialize)]
struct Header {
    meta: serde_json::Value,
    tensors: Vec<(String, Vec<usize>)>,
}

/// A checkpoint: free-form metadata plus named f32 tensors.
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

    /// Tensors whose names start with `prefix`, in order.
    pub fn with_prefix<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = &'a (String, Vec<usize>, Vec<f32>)> + 'a {
        self.tensors.iter().filter(move |t| t.0.starts_with(prefix))
    }

    /// Write to `path` atomically.
    pub fn write_atomic(&self, path: impl AsRef<Path>) -> Result<(), CheckpointError> {
        let path = path.as_ref();
        let err = |source| CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        };
        let header = Header {
            meta: self.meta.clone(),
            tensors: self
                .tensors
                .iter()
                .map(|t| (t.0.clone(), t.1.clone()))
                .collect(),
        };
        let h = serde_json::to_vec(&header).expect("header serialises");
        let tmp = path.with_extension("tmp");
        {
            let mut crc = crc32fast::Hasher::new();
            let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(err)?);
            let mut put = |bytes: &[u8]| {
                crc.update(bytes);
                f.write_all(bytes)
            };
            put(MAGIC).map_err(err)?;
            put(&(h.len() as u64).to_le_bytes()).map_err(err)?;
            put(&h).map_err(err)?;
            for (_, _, v) in &self.tensors {
                let mut bytes = Vec::with_capacity(v.len() * 4);
                for x in v {
                    bytes.extend_from_slice(&x.to_le_bytes());
                }
                put(&bytes).map_err(err)?;
            }
            f.write_all(&crc.finalize().to_le_bytes()).map_err(err)?;
            let f = f.into_inner().map_err(|e| err(e.into_error()))?;
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
        Self::parse(&bytes).map_err(|what| CheckpointError::Format {
            path: path.to_path_buf(),
            what,
        })
    }

    /// Parse a checkpoint file's bytes. Never panics: every length, shape and offset in the
    /// file is checked against the file's size first.
    fn parse(bytes: &[u8]) -> Result<Self, String> {
        let bad = |what: &str| what.to_string();
        let magic = bytes
            .get(..8)
            .ok_or_else(|| bad("shorter than its magic"))?;
        let body = if magic == MAGIC {
            let split = bytes
                .len()
                .checked_sub(4)
                .filter(|&n| n >= 16)
                .ok_or_else(|| bad("truncated"))?;
            let (body, tail) = bytes.split_at(split);
            let stored = u32::from_le_bytes(tail.try_into().map_err(|_| bad("truncated"))?);
            let actual = crc32fast::hash(body);
            if stored != actual {
                return Err(format!(
                    "checksum mismatch (stored {stored:08x}, computed {actual:08x}): the file was changed or damaged after it was written"
                ));
            }
            body
        } else if magic == MAGIC_V1 {
            bytes
        } else {
            return Err(bad("missing magic"));
        };
        let hl = body
            .get(8..16)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
            .ok_or_else(|| bad("truncated header length"))?;
        let end = usize::try_from(hl)
            .ok()
            .and_then(|hl| hl.checked_add(16))
            .filter(|&end| end <= body.len())
            .ok_or_else(|| bad("header length beyond the end of the file"))?;
        let header: Header =
            serde_json::from_slice(&body[16..end]).map_err(|e| format!("header: {e}"))?;
        let mut off = end;
        let mut tensors = Vec::with_capacity(header.tensors.len().min(1 << 16));
        for (name, shape) in header.tensors {
            let len = shape
                .iter()
                .try_fold(1usize, |n, &d| n.checked_mul(d))
                .and_then(|n| n.checked_mul(4))
                .filter(|&len| len <= body.len() - off)
                .ok_or_else(|| {
                    format!("tensor {name:?} of shape {shape:?} does not fit in the file")
                })?;
            let v = body[off..off + len]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect();
            off += len;
            tensors.push((name, shape, v));
        }
        if off != body.len() {
            return Err(bad("trailing bytes"));
        }
        Ok(Self {
            meta: header.meta,
            tensors,
        })
    }
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

/// Load tensors (visit order) into `module`, checking every shape.
pub fn load_module_tensors<B: Backend, M: Module<B>>(
    module: M,
    tensors: &[(Vec<usize>, Vec<f32>)],
) -> Result<M, CheckpointError> {
    struct L<'a> {
        t: &'a [(Vec<usize>, Vec<f32>)],
        i: usize,
        err: Option<String>,
    }
    impl<B: Backend> ModuleMapper<B> for L<'_> {
        fn map_float<const D: usize>(&mut self, p: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let i = self.i;
            self.i += 1;
            let Some((shape, v)) = self.t.get(i) else {
                self.err.get_or_insert(format!(
                    "checkpoint has {} tensors, model has more",
                    self.t.len()
                ));
                return p;
            };
            let (id, old, mapper) = p.consume();
            if old.dims().as_slice() != shape.as_slice() {
                self.err.get_or_insert(format!(
                    "tensor {i}: checkpoint shape {shape:?}, model shape {:?}",
                    old.dims()
                ));
                return Param::from_mapped_value(id, old, mapper);
            }
            let rg = old.is_require_grad();
            let mut t =
                Tensor::<B, D>::from_data(TensorData::new(v.clone(), shape.clone()), &old.device());
            if rg {
                t = t.require_grad();
            }
            Param::from_mapped_value(id, t, mapper)
        }
    }
    let mut l = L {
        t: tensors,
        i: 0,
        err: None,
    };
    let m = module.map(&mut l);
    if let Some(e) = l.err {
        return Err(CheckpointError::Mismatch(e));
    }
    if l.i != tensors.len() {
        return Err(CheckpointError::Mismatch(format!(
            "checkpoint has {} tensors, model has {}",
            tensors.len(),
            l.i
        )));
    }
    Ok(m)
}

/// Save `model` (visit order) and the SGD momentum buffers of `sgd` into `ckpt` (tensors
/// `model/K`, and `sgd/K` from [`Sgd::state`]). Returns the parameter ids in visit order (a
/// parameter's position is its index there).
pub fn save_model_sgd<B: AutodiffBackend, M: Module<B>>(
    ckpt: &mut Checkpoint,
    model: &M,
    sgd: &Sgd<B::InnerBackend>,
) -> Vec<ParamId> {
    let tensors = module_tensors(model);
    let ids: Vec<ParamId> = tensors.iter().map(|t| t.0).collect();
    for (i, (_, shape, v)) in tensors.into_iter().enumerate() {
        ckpt.push(format!("model/{i}"), shape, v);
    }
    for (pos, v) in sgd.state(&ids).buffers {
        ckpt.push(format!("sgd/{pos}"), vec![v.len()], v);
    }
    ids
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
    let tensors: Vec<(Vec<usize>, Vec<f32>)> = ckpt
        .with_prefix("model/")
        .map(|t| (t.1.clone(), t.2.clone()))
        .collect();
    let model = load_module_tensors(model, &tensors)?;
    let ids: Vec<ParamId> = darts_bilevel::params::all_ids(&model);
    let device = model.devices().into_iter().next().expect("a device");
    let mut record = SgdState::default();
    for (pos, _, v) in ckpt.entries("sgd/") {
        record.buffers.push((index(pos)?, v.to_vec()));
    }
    sgd.load_state(&ids, &record, &device).map_err(mismatch)?;
    Ok((model, ids))
}

fn index(s: &str) -> Result<usize, CheckpointError> {
    s.parse::<usize>()
        .map_err(|_| CheckpointError::Mismatch(format!("bad parameter index `{s}`")))
}

fn mismatch(e: OptimStateError) -> CheckpointError {
    CheckpointError::Mismatch(e.to_string())
}

/// Save a [`Bilevel`] (model, SGD momentum buffers, Adam state on α) into `ckpt` (tensors of
/// [`save_model_sgd`], and `adam_m/K/STEP`, `adam_v/K` from [`darts_bilevel::Adam::state`]).
pub fn save_bilevel<B: AutodiffBackend, M: ArchModel<B>>(ckpt: &mut Checkpoint, s: &Bilevel<B, M>) {
    let ids = save_model_sgd(ckpt, &s.model, &s.w_opt);
    for e in s.architect.adam.state(&ids).moments {
        let (pos, t) = (e.position, e.step);
        ckpt.push(format!("adam_m/{pos}/{t}"), vec![e.m.len()], e.m);
        ckpt.push(format!("adam_v/{pos}"), vec![e.v.len()], e.v);
    }
}

/// Restore what [`save_bilevel`] saved into `s` (built fresh with the same configuration).
pub fn load_bilevel<B: AutodiffBackend, M: ArchModel<B>>(
    ckpt: &Checkpoint,
    s: &mut Bilevel<B, M>,
) -> Result<(), CheckpointError> {
    let (model, ids) = load_model_sgd(ckpt, s.model.clone(), &mut s.w_opt)?;
    s.model = model;
    let device = s.model.devices().into_iter().next().expect("a device");
    let mut record = AdamState::default();
    for (rest, _, m) in ckpt.entries("adam_m/") {
        let bad = || CheckpointError::Mismatch(format!("bad adam entry `adam_m/{rest}`"));
        let (pos, t) = rest.split_once('/').ok_or_else(bad)?;
        let step: u64 = t.parse().map_err(|_| bad())?;
        let v = ckpt
            .get(&format!("adam_v/{pos}"))
            .ok_or_else(|| CheckpointError::Mismatch(format!("missing adam_v/{pos}")))?;
        record.moments.push(AdamMoments {
            position: index(pos)?,
            step,
            m: m.to_vec(),
            v: v.2.clone(),
        });
    }
    s.architect
        .adam
        .load_state(&ids, &record, &device)
        .map_err(mismatch)
}
