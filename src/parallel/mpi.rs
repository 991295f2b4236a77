//! Data parallelism across processes and machines through MPI (feature `mpi`, Open MPI or any
//! MPI library the `mpi` crate builds against): one peer per process, launched by `mpirun`,
//! which also places the processes on machines (`--host`, `--hostfile`).
//!
//! ```text
//! mpirun -np 2 target/release/examples/cifar10_search --mpi --data ... --out runs/dp
//! mpirun -np 4 --host a:2,b:2 target/release/examples/cifar10_search --mpi --device cuda ...
//! ```
//!
//! Every sum is an all-gather followed by the rows added in rank order on each process (the
//! same arithmetic as [`super::Collective`], so a run gives the same bits on threads and on
//! processes). MPI calls run on one helper thread per process (MPI initialised with
//! `MPI_THREAD_SERIALIZED`), so that a peer can stop waiting after the timeout.

use super::{sum_or_nan, ParallelError, Poison};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};
use darts_bilevel::sync::GradSync;
use mpi::traits::*;
use std::marker::PhantomData;
use std::sync::mpsc::{channel, Sender};
use std::sync::Mutex;
use std::time::Duration;

enum Payload {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

enum Job {
    Gather(Payload, Sender<Result<Payload, String>>),
    Leave(Sender<()>),
}

/// This process's peer of the MPI group (`MPI_COMM_WORLD`).
pub struct Mpi<B: Backend> {
    rank: usize,
    world: usize,
    timeout: Duration,
    jobs: Mutex<Sender<Job>>,
    failed: Poison,
    _b: PhantomData<fn() -> B>,
}

impl<B: Backend> std::fmt::Debug for Mpi<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mpi")
            .field("rank", &self.rank)
            .field("world", &self.world)
            .finish()
    }
}

impl<B: Backend> Mpi<B> {
    /// Initialise MPI (once per process) and wait until every process of the job has, at most
    /// `join_timeout`; reductions then wait at most `op_timeout`.
    pub fn join(join_timeout: Duration, op_timeout: Duration) -> Result<Self, ParallelError> {
        let (jobs, rx) = channel::<Job>();
        let (joined_tx, joined_rx) = channel();
        std::thread::Builder::new()
            .name("darts-mpi".into())
            .spawn(move || {
                let Some((universe, _)) =
                    mpi::initialize_with_threading(mpi::Threading::Serialized)
                else {
                    let _ =
                        joined_tx.send(Err("MPI is already initialised in this process".into()));
                    return;
                };
                let world = universe.world();
                world.barrier();
                let _ = joined_tx.send(Ok((world.rank() as usize, world.size() as usize)));
                while let Ok(job) = rx.recv() {
                    match job {
                        Job::Gather(p, reply) => {
                            if reply.send(gather(&world, p)).is_err() {
                                break;
                            }
                        }
                        Job::Leave(done) => {
                            drop(universe);
                            let _ = done.send(());
                            return;
                        }
                    }
                }
            })
            .map_err(|e| ParallelError::Config(format!("cannot start a thread: {e}")))?;
        match joined_rx.recv_timeout(join_timeout) {
            Ok(Ok((rank, world))) => Ok(Self {
                rank,
                world,
                timeout: op_timeout,
                jobs: Mutex::new(jobs),
                failed: Poison::default(),
                _b: PhantomData,
            }),
            Ok(Err(error)) => Err(ParallelError::Collective { rank: 0, error }),
            Err(_) => Err(ParallelError::JoinTimeout {
                rank: 0,
                world: 0,
                waited: join_timeout,
            }),
        }
    }

    /// The sum over the processes of `t`, or why it failed.
    pub fn try_sum(&self, t: Tensor<B, 1>) -> Result<Tensor<B, 1>, ParallelError> {
        let fail = |error: String| ParallelError::Collective {
            rank: self.rank,
            error,
        };
        if let Some(why) = self.failure() {
            return Err(fail(why));
        }
        let (device, dtype, len) = (t.device(), t.dtype(), t.dims()[0]);
        let data = t.into_data();
        let payload = if dtype == DType::F64 {
            Payload::F64(
                data.convert::<f64>()
                    .into_vec()
                    .map_err(|e| fail(format!("{e:?}")))?,
            )
        } else {
            Payload::F32(
                data.convert::<f32>()
                    .into_vec()
                    .map_err(|e| fail(format!("{e:?}")))?,
            )
        };
        let (tx, rx) = channel();
        let sent = self
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(Job::Gather(payload, tx));
        let r = match sent {
            Err(_) => Err(fail("the MPI thread has stopped".into())),
            Ok(()) => match rx.recv_timeout(self.timeout) {
                Ok(Ok(rows)) => Ok(rows),
                Ok(Err(e)) => Err(fail(e)),
                Err(_) => Err(ParallelError::OpTimeout {
                    rank: self.rank,
                    waited: self.timeout,
                }),
            },
        };
        let r = r.map(|rows| {
            // Rows added in rank order, in the tensor's precision.
            let data = match rows {
                Payload::F64(v) => TensorData::new(fold_rows(&v, len, |a, b| a + b), [len]),
                Payload::F32(v) => TensorData::new(fold_rows(&v, len, |a, b| a + b), [len]),
            };
            Tensor::<B, 1>::from_data(data, &device).cast(dtype)
        });
        self.failed.record(r)
    }

    /// Leave the group: MPI is finalised (every process of the job does so at its end).
    /// Bounded by the reduction timeout.
    pub fn leave(&self) {
        let (tx, rx) = channel();
        let sent = self
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(Job::Leave(tx));
        if sent.is_ok() {
            let _ = rx.recv_timeout(self.timeout);
        }
    }
}

fn fold_rows<T: Copy>(v: &[T], len: usize, add: impl Fn(T, T) -> T) -> Vec<T> {
    let mut acc = v[..len].to_vec();
    for row in v[len..].chunks(len) {
        for (a, b) in acc.iter_mut().zip(row) {
            *a = add(*a, *b);
        }
    }
    acc
}

/// All-gather of equal-length buffers (the lengths are compared first: MPI requires them equal).
fn gather<C: Communicator>(world: &C, p: Payload) -> Result<Payload, String> {
    let n = world.size() as usize;
    let len = match &p {
        Payload::F32(v) => v.len(),
        Payload::F64(v) => v.len(),
    } as u64;
    let mut lens = vec![0u64; n];
    world.all_gather_into(&len, &mut lens[..]);
    if lens.iter().any(|l| *l != len) {
        return Err(format!(
            "the processes reduce tensors of different lengths {lens:?} (different models?)"
        ));
    }
    Ok(match p {
        Payload::F32(v) => {
            let mut out = vec![0f32; v.len() * n];
            world.all_gather_into(&v[..], &mut out[..]);
            Payload::F32(out)
        }
        Payload::F64(v) => {
            let mut out = vec![0f64; v.len() * n];
            world.all_gather_into(&v[..], &mut out[..]);
            Payload::F64(out)
        }
    })
}

impl<B: Backend> GradSync<B> for Mpi<B> {
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
