//! Data parallelism: one peer per device, each with a replica of the model and a shard of every
//! batch, gradients summed before every optimiser update (see [`darts_bilevel::sync`] for what
//! is reduced where). Two engines:
//!
//! - **Threads of one process** ([`run_local`], `--devices cpu,cpu` or `--devices
//!   cuda:0,cuda:1`): one thread per device, the sums in Burn's `burn-collective` (its local
//!   server).
//! - **Processes and machines** (`mpi` module, feature `mpi`, launched with `mpirun`): one
//!   process per device, the sums through MPI (Open MPI). `burn-collective` 0.21's own
//!   multi-node path cannot be used: its global all-reduce completes one operation and hangs on
//!   the second (its `SyncService::sync` clears a copy of the list of synced peers, never the
//!   list; `tests/it/parallel.rs` shows it), and a search makes several per step.
//!
//! Every collective call is bounded: joining waits at most [`GroupConfig::join_timeout`], every
//! reduction at most [`GroupConfig::op_timeout`]. A peer that never joins or that dies gives a
//! [`ParallelError`] (or, mid-step, a failed [`GradSync`] that stops the epoch) instead of a hang.
//!
//! Reductions are exact and do not depend on arrival order: with two peers a sum is
//! commutative, so the group sums directly; with more, each peer's tensor is gathered and every
//! peer adds them in rank order (`world` times the bytes), so that a run is bit-reproducible and
//! resumes bit-exactly whatever the order the peers arrive in. Both engines give the same bits.

#[cfg(feature = "mpi")]
pub mod mpi;

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorData};
use burn_collective::{CollectiveConfig, PeerId, ReduceOperation};
use darts_bilevel::sync::{GradSync, SharedSync};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Errors of a data-parallel group.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParallelError {
    /// The configuration is inconsistent.
    #[error("data-parallel configuration: {0}")]
    Config(String),
    /// Not every peer joined in time.
    #[error("peer {rank} waited {waited:?} for the other peers of a {world}-peer group to join (--join-timeout): a peer did not start, crashed, or cannot be reached")]
    JoinTimeout {
        /// This peer's rank.
        rank: usize,
        /// Peers expected.
        world: usize,
        /// How long it waited.
        waited: Duration,
    },
    /// `burn-collective` reported an error.
    #[error("peer {rank}: burn-collective: {error}")]
    Collective {
        /// This peer's rank.
        rank: usize,
        /// Its error.
        error: String,
    },
    /// A reduction did not complete in time.
    #[error("peer {rank}: a reduction waited {waited:?} for the other peers (--op-timeout): a peer died, hangs, or is far slower")]
    OpTimeout {
        /// This peer's rank.
        rank: usize,
        /// How long it waited.
        waited: Duration,
    },
    /// A peer thread panicked.
    #[error("peer {rank} panicked: {message}")]
    Panic {
        /// Its rank.
        rank: usize,
        /// The panic message.
        message: String,
    },
}

/// How a group is formed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupConfig {
    /// Peers in this process (one per device).
    pub local_peers: usize,
    /// The longest a peer waits for the others to join.
    pub join_timeout: Duration,
    /// The longest one reduction waits for the other peers (a step's compute on the slowest
    /// peer included).
    pub op_timeout: Duration,
}

impl GroupConfig {
    /// `local_peers` threads of this process; a minute to join, ten to reduce.
    pub fn local(local_peers: usize) -> Self {
        Self {
            local_peers,
            join_timeout: Duration::from_secs(60),
            op_timeout: Duration::from_secs(600),
        }
    }

    /// Peers in the group.
    pub fn world(&self) -> usize {
        self.local_peers
    }

    fn check(&self) -> Result<(), ParallelError> {
        if self.local_peers == 0 {
            return Err(ParallelError::Config("at least one device".into()));
        }
        Ok(())
    }
}

/// A peer's first failure: kept, and reported by every later call.
#[derive(Debug, Default)]
struct Poison(Mutex<Option<String>>);

impl Poison {
    fn get(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// `r`, keeping its error (if any) as the peer's failure.
    fn record<T>(&self, r: Result<T, ParallelError>) -> Result<T, ParallelError> {
        if let Err(e) = &r {
            *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
        }
        r
    }
}

/// [`GradSync::sum`] from a fallible sum: NaN everywhere when it failed.
fn sum_or_nan<B: Backend>(
    t: Tensor<B, 1>,
    try_sum: impl FnOnce(Tensor<B, 1>) -> Result<Tensor<B, 1>, ParallelError>,
) -> Tensor<B, 1> {
    let nan = t.zeros_like() + f64::NAN;
    try_sum(t).unwrap_or(nan)
}

type Job<B> = (
    FloatTensor<B>,
    Sender<Result<burn::tensor::TensorData, String>>,
);

/// One peer of a group: a [`GradSync`] over `burn-collective`.
///
/// Collective calls run on a helper thread so that the peer can stop waiting after the
/// timeout; the first failure poisons the peer (every later sum is NaN at once) and is kept in
/// [`GradSync::failure`].
pub struct Collective<B: Backend> {
    rank: usize,
    world: usize,
    timeout: Duration,
    jobs: Mutex<Sender<Job<B>>>,
    failed: Poison,
    /// Set (by [`run_local`]) when a peer of the group has stopped: waiting for it is pointless.
    left: Arc<Mutex<Option<String>>>,
}

impl<B: Backend> std::fmt::Debug for Collective<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collective")
            .field("rank", &self.rank)
            .field("world", &self.world)
            .finish()
    }
}

/// Serialises groups within one process: `burn-collective` keeps one server per backend per
/// process, so two groups of the same backend must not overlap.
static SESSION: Mutex<()> = Mutex::new(());

/// The lock [`run_local`] holds for the life of a group, taken with backend `B`'s collective
/// server reset (whatever an earlier group of this process left in it is forgotten). Code that
/// forms a group with [`Collective::join`] directly, next to other groups of the same backend in
/// one process, takes it too.
pub fn session<B: Backend>() -> std::sync::MutexGuard<'static, ()> {
    let guard = SESSION.lock().unwrap_or_else(|p| p.into_inner());
    burn_collective::reset_collective::<B>();
    guard
}

impl<B: Backend> Collective<B> {
    /// Join the group as local peer `local` (of [`GroupConfig::local_peers`]) on `device`:
    /// returns when every peer of the group has joined, or with an error after
    /// [`GroupConfig::join_timeout`].
    pub fn join(local: usize, device: B::Device, cfg: &GroupConfig) -> Result<Self, ParallelError> {
        cfg.check()?;
        let rank = local;
        let id = PeerId::from(rank);
        let config = CollectiveConfig::default().with_num_devices(cfg.local_peers);
        let (jobs, rx) = channel::<Job<B>>();
        let (joined_tx, joined_rx) = channel();
        std::thread::Builder::new()
            .name(format!("darts-collective-{rank}"))
            .spawn(move || {
                let r = burn_collective::register::<B>(id, device, config);
                let ok = r.is_ok();
                let _ = joined_tx.send(r.map_err(|e| format!("{e:?}")));
                if ok {
                    serve::<B>(id, rx);
                }
            })
            .map_err(|e| ParallelError::Config(format!("cannot start a thread: {e}")))?;
        match joined_rx.recv_timeout(cfg.join_timeout) {
            Ok(Ok(())) => Ok(Self {
                rank,
                world: cfg.world(),
                timeout: cfg.op_timeout,
                jobs: Mutex::new(jobs),
                failed: Poison::default(),
                left: Arc::new(Mutex::new(None)),
            }),
            Ok(Err(error)) => Err(ParallelError::Collective { rank, error }),
            Err(_) => Err(ParallelError::JoinTimeout {
                rank,
                world: cfg.world(),
                waited: cfg.join_timeout,
            }),
        }
    }

    /// The sum over the peers of `t`, or why it failed.
    pub fn try_sum(&self, t: Tensor<B, 1>) -> Result<Tensor<B, 1>, ParallelError> {
        if let Some(why) = self.failure() {
            return Err(ParallelError::Collective {
                rank: self.rank,
                error: why,
            });
        }
        let r = if self.world <= 2 {
            self.raw_sum(t)
        } else {
            // Exact all-gather: own row of a world × len buffer, rows added in rank order.
            let len = t.dims()[0];
            let mut rows: Vec<Tensor<B, 1>> = (0..self.world)
                .map(|r| {
                    if r == self.rank {
                        t.clone()
                    } else {
                        t.zeros_like()
                    }
                })
                .collect();
            let all = self.raw_sum(Tensor::cat(std::mem::take(&mut rows), 0));
            all.map(|all| {
                (1..self.world).fold(all.clone().narrow(0, 0, len), |acc, r| {
                    acc + all.clone().narrow(0, r * len, len)
                })
            })
        };
        self.failed.record(r)
    }

    fn raw_sum(&self, t: Tensor<B, 1>) -> Result<Tensor<B, 1>, ParallelError> {
        let (tx, rx) = channel();
        let (device, dtype) = (t.device(), t.dtype());
        // Run this peer's queued operations before another thread takes the tensor: Burn
        // 0.21's fusion can lose a tensor's handle when a thread other than the one that queued
        // its operations uses it while they are pending (tracel-ai/burn#4947; seen here on
        // wgpu as "Should have handle for tensor" in the two-peer equivalence test).
        if let Err(e) = B::sync(&device) {
            return Err(ParallelError::Collective {
                rank: self.rank,
                error: format!("device synchronisation before a reduction: {e:?}"),
            });
        }
        let prim = t.into_primitive().tensor();
        let sent = self
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send((prim, tx));
        if sent.is_err() {
            return Err(ParallelError::Collective {
                rank: self.rank,
                error: "the collective thread has stopped".into(),
            });
        }
        // Wait in short slices, so that a peer that stopped ends the wait at once.
        let t0 = Instant::now();
        let slice = Duration::from_millis(100);
        let got = loop {
            match rx.recv_timeout(slice.min(self.timeout.saturating_sub(t0.elapsed()))) {
                Ok(r) => break Ok(r),
                Err(RecvTimeoutError::Disconnected) => break Err(None),
                Err(RecvTimeoutError::Timeout) => {
                    let left = self.left.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    if let Some(who) = left {
                        // A result sent just before that peer stopped is still taken.
                        match rx.recv_timeout(slice) {
                            Ok(r) => break Ok(r),
                            Err(_) => break Err(Some(who)),
                        }
                    }
                    if t0.elapsed() >= self.timeout {
                        break Err(None);
                    }
                }
            }
        };
        match got {
            Ok(Ok(data)) => Ok(Tensor::from_data(data, (&device, dtype))),
            Ok(Err(error)) => Err(ParallelError::Collective {
                rank: self.rank,
                error,
            }),
            Err(Some(who)) => Err(ParallelError::Collective {
                rank: self.rank,
                error: format!("{who} while this peer was waiting for it in a reduction"),
            }),
            Err(None) => Err(ParallelError::OpTimeout {
                rank: self.rank,
                waited: self.timeout,
            }),
        }
    }
}

/// The collective thread of one peer: runs its all-reduces one at a time. The result is read
/// back here, and the peer gets a tensor of its own: peers on one device receive clones of one
/// tensor from `burn-collective` (`float_to_device` to the same device is the identity), and
/// under Burn's fusion a peer's in-place operation on it can run before another peer's queued
/// read of it (seen on wgpu: one replica's BatchNorm statistics divided twice).
///
/// The peers' collective threads read their results one at a time (`READ`): the sum was
/// computed by `burn-collective`'s own thread, and two threads reading it at once through Burn
/// 0.21's fusion is the cross-thread race of tracel-ai/burn#4947 (seen on wgpu in CI as a
/// failed device call in this read, after the kernels got faster). While the results are read
/// the peers wait for them and the collective server is done, so with the lock one thread at a
/// time uses the device.
fn serve<B: Backend>(id: PeerId, rx: Receiver<Job<B>>) {
    static READ: Mutex<()> = Mutex::new(());
    while let Ok((t, reply)) = rx.recv() {
        let r = burn_collective::all_reduce::<B>(id, t, ReduceOperation::Sum)
            .map(|p| {
                let _one_reader = READ.lock().unwrap_or_else(|p| p.into_inner());
                Tensor::<B, 1>::from_primitive(burn::tensor::TensorPrimitive::Float(p)).into_data()
            })
            .map_err(|e| format!("{e:?}"));
        if reply.send(r).is_err() {
            // The peer stopped waiting (timeout): the group is broken.
            return;
        }
    }
}

impl<B: Backend> GradSync<B> for Collective<B> {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.world
    }
    fn sum(&self, t: Tensor<B, 1>) -> Tensor<B, 1> {
        sum_or_nan(t, |t| self.try_sum(t))
    }
    fn failure(&self) -> Option<String> {
        self.failed.get()
    }
}

/// Run `f` on one thread per device of `devices`, each a peer of one group:
/// `f(rank, device, sync)`. Returns the results in rank order. Groups of one process run one
/// at a time.
pub fn run_local<B, T, F>(
    devices: &[B::Device],
    cfg: &GroupConfig,
    f: F,
) -> Result<Vec<T>, ParallelError>
where
    B: Backend,
    T: Send,
    F: Fn(usize, B::Device, SharedSync<B>) -> T + Sync,
{
    if devices.len() != cfg.local_peers {
        return Err(ParallelError::Config(format!(
            "{} devices for {} local peers",
            devices.len(),
            cfg.local_peers
        )));
    }
    cfg.check()?;
    // Forget whatever an earlier group of this process left in the server.
    let _session = session::<B>();
    // Set when a peer stops (returns, fails or panics): the others stop waiting for it.
    let left: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    struct Leaving(Arc<Mutex<Option<String>>>, usize);
    impl Drop for Leaving {
        fn drop(&mut self) {
            let mut l = self.0.lock().unwrap_or_else(|p| p.into_inner());
            let how = if std::thread::panicking() {
                "panicked"
            } else {
                "stopped (its run ended or failed)"
            };
            l.get_or_insert_with(|| format!("peer {} {how}", self.1));
        }
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = devices
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let f = &f;
                let d = d.clone();
                let left = left.clone();
                scope.spawn(move || -> Result<T, ParallelError> {
                    let _leaving = Leaving(left.clone(), i);
                    let mut peer = Collective::<B>::join(i, d.clone(), cfg)?;
                    peer.left = left;
                    let peer = Arc::new(peer);
                    // No `finish_collective` at the end: burn-collective would complete the
                    // others' next reductions without the peer that left (a peer whose work
                    // failed would leave the rest summing alone). A peer that stops makes the
                    // others' reductions time out instead; the next group resets the server.
                    Ok(f(i, d, peer))
                })
            })
            .collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(i, h)| match h.join() {
                Ok(r) => r,
                Err(p) => Err(ParallelError::Panic {
                    rank: i,
                    message: p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default(),
                }),
            })
            .collect()
    })
}

/// Rank 0's bytes on every peer (`bytes` is used on rank 0 only): a broadcast through the
/// all-reduce (every other peer adds zeros, which is exact), as neither engine's broadcast is
/// used (`burn-collective` 0.21 has none between nodes). The drivers send the run's state this way, so every replica starts
/// from rank 0's weights, optimiser state and history.
pub fn broadcast_bytes<B: Backend>(
    sync: &dyn GradSync<B>,
    bytes: &[u8],
    device: &B::Device,
) -> Result<Vec<u8>, ParallelError> {
    let root = sync.rank() == 0;
    let fail = |what: &str| ParallelError::Collective {
        rank: sync.rank(),
        error: sync
            .failure()
            .unwrap_or_else(|| format!("broadcast: {what}")),
    };
    // Length in four 16-bit digits (each exact in f32).
    let len = if root { bytes.len() as u64 } else { 0 };
    let digits: Vec<f32> = (0..4)
        .map(|i| ((len >> (16 * i)) & 0xffff) as f32)
        .collect();
    let got = sync.sum(Tensor::from_data(TensorData::new(digits, [4]), device));
    let got = darts_ops::to_f64s(&got);
    if got.iter().any(|x| !x.is_finite()) {
        return Err(fail("length"));
    }
    let len = got
        .iter()
        .enumerate()
        .fold(0u64, |acc, (i, d)| acc | ((*d as u64) << (16 * i))) as usize;
    if len == 0 {
        return Ok(Vec::new());
    }
    let payload: Vec<f32> = if root {
        bytes.iter().map(|b| *b as f32).collect()
    } else {
        vec![0.0; len]
    };
    let got = sync.sum(Tensor::from_data(TensorData::new(payload, [len]), device));
    let got = darts_ops::to_f64s(&got);
    if got.iter().any(|x| !x.is_finite()) {
        return Err(fail("payload"));
    }
    Ok(got.into_iter().map(|x| x as u8).collect())
}

/// The rows of a batch of `n` that peer `rank` of `world` takes: contiguous, in rank order,
/// sizes differing by at most one (the first `n mod world` peers take one more). Every peer
/// computes the same split from the same global batch, so the shards of a step are the global
/// batch, in order.
pub fn shard_range(n: usize, rank: usize, world: usize) -> std::ops::Range<usize> {
    let (base, extra) = (n / world, n % world);
    let start = rank * base + rank.min(extra);
    start..start + base + usize::from(rank < extra)
}

/// What a [`Metered`] group handle measured.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct SyncStats {
    /// Reductions.
    pub calls: u64,
    /// Bytes this peer contributed (tensor elements × element size).
    pub bytes: u64,
    /// Wall time inside the reductions: the transfer, and waiting for the slowest peer.
    pub seconds: f64,
}

/// A [`GradSync`] that counts the reductions through it (calls, bytes, time), for benchmarks
/// and logs: the all-reduce overhead of a data-parallel step.
#[derive(Debug)]
pub struct Metered<B: Backend> {
    inner: SharedSync<B>,
    stats: Mutex<SyncStats>,
}

impl<B: Backend> Metered<B> {
    /// Measure `inner`.
    pub fn new(inner: SharedSync<B>) -> Self {
        Self {
            inner,
            stats: Mutex::new(SyncStats::default()),
        }
    }

    /// What was measured since the last [`Metered::take`].
    pub fn take(&self) -> SyncStats {
        std::mem::take(&mut *self.stats.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl<B: Backend> GradSync<B> for Metered<B> {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn world(&self) -> usize {
        self.inner.world()
    }
    fn sum(&self, t: Tensor<B, 1>) -> Tensor<B, 1> {
        let bytes = (t.dims()[0] * t.dtype().size()) as u64;
        let t0 = std::time::Instant::now();
        let out = self.inner.sum(t);
        // Reading one value waits for the result on an asynchronous device.
        if out.dims()[0] > 0 {
            let _ = out.clone().narrow(0, 0, 1).into_data();
        }
        let mut s = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        s.calls += 1;
        s.bytes += bytes;
        s.seconds += t0.elapsed().as_secs_f64();
        out
    }
    fn failure(&self) -> Option<String> {
        self.inner.failure()
    }
}

struct Fresh;

impl<B: burn::tensor::backend::AutodiffBackend> burn::module::ModuleMapper<B> for Fresh {
    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<Tensor<B, D>>,
    ) -> burn::module::Param<Tensor<B, D>> {
        let (id, t, mapper) = param.consume();
        let trainable = t.is_require_grad();
        let mut fresh = Tensor::<B, D>::from_inner(t.inner());
        if trainable {
            fresh = fresh.require_grad();
        }
        burn::module::Param::from_mapped_value(id, fresh, mapper)
    }
}

/// A replica of `model` for another peer thread: the same values in fresh autodiff leaves.
/// A plain `clone` shares the parameters' autodiff leaves, and peers running forward and
/// backward passes at the same time on shared leaves merge their graphs across threads, which
/// Burn 0.21's autodiff can deadlock on. The drivers build each peer's model itself; code that
/// hands one model to several peers passes each a `replica`.
pub fn replica<B: burn::tensor::backend::AutodiffBackend, M: burn::module::Module<B>>(
    model: &M,
) -> M {
    model.clone().map(&mut Fresh)
}
