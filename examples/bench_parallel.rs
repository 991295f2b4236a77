//! Data-parallel search step (or, with `--train`, the derived network's training step): time
//! per step and all-reduce overhead for 1 vs N peers, on threads of one process (`--peers N`)
//! or on the processes of an MPI job (`--mpi`, feature `mpi`). The global batch is the same
//! whatever the number of peers; each peer takes its shard. Prints one JSON line (rank 0).
//!
//! ```text
//! cargo run --release --example bench_parallel -- --peers 1 --json
//! cargo run --release --example bench_parallel -- --peers 2 --json
//! cargo run --release --example bench_parallel -- --peers 2 --train --json
//! mpirun -np 2 target/release/examples/bench_parallel --mpi --json   # --features mpi
//! ```

use burn::tensor::{Distribution, Int, Tensor, TensorData};
use clap::Parser;
use darts::bilevel::{ArchitectConfig, Bilevel, CosineLr, GradSync, Order, WeightConfig};
use darts::cell::ImageBatch;
use darts::parallel::{run_local, shard_range, GroupConfig, Metered};
use darts::prelude::*;
use std::sync::Arc;
use std::time::Instant;

#[path = "support/bench.rs"]
#[allow(dead_code)]
mod bench;

type B = burn::backend::Autodiff<burn::backend::Flex>;
type Inner = burn::backend::Flex;

#[derive(Parser, Debug, Clone)]
#[command(about = "Time a data-parallel DARTS search step (cpu)")]
struct Args {
    /// Peers (threads of this process); 1 = a single device, no reductions.
    #[arg(long, default_value_t = 1)]
    peers: usize,
    /// One peer per process of an MPI job instead (needs `--features mpi`).
    #[arg(long)]
    mpi: bool,
    /// 1 = first order, 2 = second order.
    #[arg(long, default_value_t = 1)]
    order: u8,
    /// Time the derived network's training step instead (DARTS_V2 with --channels and
    /// --layers, auxiliary head, drop path 0.2 keyed by the sample's global row).
    #[arg(long)]
    train: bool,
    /// Global batch (split over the peers).
    #[arg(long, default_value_t = 16)]
    batch: usize,
    #[arg(long, default_value_t = 5)]
    layers: usize,
    #[arg(long, default_value_t = 8)]
    channels: usize,
    #[arg(long, default_value_t = 4)]
    nodes: usize,
    #[arg(long, default_value_t = 5)]
    steps: usize,
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    #[arg(long)]
    json: bool,
}

#[derive(serde::Serialize)]
struct Out {
    engine: &'static str,
    /// "search" or "train".
    step: &'static str,
    peers: usize,
    order: u8,
    global_batch: usize,
    params: usize,
    step_ms: f64,
    sync_ms_per_step: f64,
    sync_calls_per_step: f64,
    sync_mb_per_step: f64,
}

impl Out {
    /// One peer's result over `a.steps` timed steps: the step time and the synchronisation
    /// statistics per step (as [`timed`] returns them).
    fn per_step(
        a: &Args,
        step: &'static str,
        order: u8,
        peers: usize,
        params: usize,
        (step_ms, st): (f64, darts::parallel::SyncStats),
    ) -> Out {
        let n = a.steps as f64;
        Out {
            engine: "single",
            step,
            peers,
            order,
            global_batch: a.batch,
            params,
            step_ms,
            sync_ms_per_step: st.seconds * 1e3 / n,
            sync_calls_per_step: st.calls as f64 / n,
            sync_mb_per_step: st.bytes as f64 / n / 1e6,
        }
    }
}

/// This peer's rows of a seeded global batch (`shift` tells two batches apart).
fn shard_batch(a: &Args, rank: usize, world: usize, shift: f32) -> ImageBatch<B> {
    let dev = Default::default();
    let images =
        Tensor::<B, 4>::random([a.batch, 3, 32, 32], Distribution::Normal(0.0, 1.0), &dev) + shift;
    let t: Vec<i64> = (0..a.batch as i64).map(|i| i % 10).collect();
    let r = shard_range(a.batch, rank, world);
    ImageBatch {
        images: images.narrow(0, r.start, r.len()),
        targets: Tensor::<B, 1, Int>::from_data(TensorData::new(t, [a.batch]), &dev).narrow(
            0,
            r.start,
            r.len(),
        ),
    }
}

/// Time `steps` calls of `step` (after the warm-up), then the reductions' statistics.
fn timed(
    a: &Args,
    rank: usize,
    sync: &Option<Arc<Metered<Inner>>>,
    mut step: impl FnMut(),
) -> (f64, darts::parallel::SyncStats) {
    for _ in 0..a.warmup {
        step();
    }
    if let Some(m) = sync {
        m.take();
    }
    let mut ms = Vec::new();
    for i in 0..a.steps {
        let t0 = Instant::now();
        step();
        ms.push(t0.elapsed().as_secs_f64() * 1e3);
        if rank == 0 {
            eprintln!("step {}/{}: {:.1} ms", i + 1, a.steps, ms[i]);
        }
    }
    let st = sync.as_ref().map(|m| m.take()).unwrap_or_default();
    (bench::median(ms), st)
}

/// `steps` timed training steps of the derived network on one peer.
fn train_peer(a: &Args, sync: Option<Arc<Metered<Inner>>>) -> Out {
    let dev = Default::default();
    let (rank, world) = sync.as_ref().map_or((0, 1), |s| (s.rank(), s.world()));
    let (net, train) = {
        let _g = darts::run::seed_lock();
        <B as burn::tensor::backend::Backend>::seed(&dev, 2);
        let net = EvalNetworkConfig {
            channels: a.channels,
            layers: a.layers,
            auxiliary: true,
            ..Default::default()
        }
        .init::<B>(
            &catalog::conv("DARTS_V2").expect("a catalog genotype"),
            &dev,
        )
        .expect("a valid network");
        (net, shard_batch(a, rank, world, 0.0))
    };
    let params = net.num_weights();
    let first_row = shard_range(a.batch, rank, world).start as u64;
    let n = train.images.dims()[0];
    let mut sgd = darts::bilevel::Sgd::<Inner>::new(0.9, 3e-4);
    let mut model = Some(net);
    let mut k = 0u64;
    let measured = timed(a, rank, &sync, || {
        let drop = darts::cell::DropPath::keyed(
            0.2,
            darts::cell::DropKey {
                seed: 0,
                epoch: 0,
                step: k,
                first_row,
            },
        );
        k += 1;
        let m = model.take().expect("a model");
        let (next, _) = darts::bilevel::weight_step_sharded(
            m,
            &mut sgd,
            0.025,
            Some(5.0),
            &[],
            sync.as_deref().map(|s| s as &dyn GradSync<Inner>),
            |_| n,
            |m| m.loss(&train, drop, 0.4),
        );
        model = Some(next);
    });
    Out::per_step(a, "train", 0, world, params, measured)
}

/// `steps` timed steps of one peer (`sync` = None: single device); (step ms, sync stats per step).
fn peer(a: &Args, sync: Option<Arc<Metered<Inner>>>) -> Out {
    if a.train {
        return train_peer(a, sync);
    }
    let dev = Default::default();
    let (rank, world) = sync.as_ref().map_or((0, 1), |s| (s.rank(), s.world()));
    let (net, train, val) = {
        let _g = darts::run::seed_lock();
        <B as burn::tensor::backend::Backend>::seed(&dev, 2);
        let net = SearchNetworkConfig {
            channels: a.channels,
            layers: a.layers,
            steps: a.nodes,
            multiplier: a.nodes,
            ..Default::default()
        }
        .init::<B, _, _>(&DartsSpace::default(), Softmax, &dev)
        .expect("a valid supernet");
        (
            net,
            shard_batch(a, rank, world, 0.0),
            shard_batch(a, rank, world, 0.1),
        )
    };
    let params = net.num_weights();
    let mut s = Bilevel::new(
        net,
        WeightConfig {
            lr: CosineLr {
                max: 0.025,
                min: 0.001,
                epochs: 50,
            },
            momentum: 0.9,
            weight_decay: 3e-4,
            grad_clip: Some(5.0),
        },
        ArchitectConfig {
            order: if a.order == 2 {
                Order::Second
            } else {
                Order::First
            },
            ..Default::default()
        },
    );
    s.sync = sync.clone().map(|m| m as darts::bilevel::SharedSync<Inner>);
    let measured = timed(a, rank, &sync, || {
        s.step(&train, &val, 0.025);
    });
    Out::per_step(a, "search", a.order, world, params, measured)
}

#[cfg(feature = "mpi")]
fn mpi_run(a: &Args) -> Option<Out> {
    let m = darts::parallel::mpi::Mpi::<Inner>::join(
        std::time::Duration::from_secs(60),
        std::time::Duration::from_secs(600),
    )
    .expect("an MPI job");
    let m = Arc::new(m);
    let metered = Arc::new(Metered::new(m.clone()));
    let lead = metered.rank() == 0;
    let mut out = peer(a, Some(metered));
    m.leave();
    out.engine = "mpi";
    lead.then_some(out)
}

#[cfg(not(feature = "mpi"))]
fn mpi_run(_: &Args) -> Option<Out> {
    eprintln!("error: --mpi needs --features mpi");
    std::process::exit(2)
}

fn main() {
    // Reuse freed tensor memory instead of fresh pages (see `darts::alloc`).
    darts::alloc::tune_malloc();
    let a = Args::parse();
    let out = if a.mpi {
        mpi_run(&a)
    } else if a.peers <= 1 {
        Some(peer(&a, None))
    } else {
        let devs = vec![Default::default(); a.peers];
        let outs = run_local::<Inner, _, _>(&devs, &GroupConfig::local(a.peers), |_, _, s| {
            peer(&a, Some(Arc::new(Metered::new(s))))
        })
        .unwrap_or_else(|e| {
            eprintln!("error: {e}");
            std::process::exit(1)
        });
        outs.into_iter().next().map(|mut o| {
            o.engine = "threads";
            o
        })
    };
    if let Some(o) = out {
        let line = serde_json::to_string(&o).expect("serialises");
        if a.json {
            println!("{line}");
        } else {
            println!("{}", serde_json::to_string_pretty(&o).expect("serialises"));
        }
    }
}
