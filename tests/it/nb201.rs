//! The NAS-Bench-201 example (a search space defined outside the library, through its public
//! traits) searched with the library's architect on the shipped CIFAR-10 sample.

#[allow(dead_code)]
#[path = "../../examples/custom_space_nb201.rs"]
mod example;

use crate::common::*;
use darts::bilevel::Order;
use darts::genotype::nb201::{Nb201Arch, NB201_OPS};
use example::{search, Nb201Net, Nb201Search};

/// The successor methods that apply to the NAS-Bench-201 space run on it through the library's
/// pieces and yield valid architecture strings; the two that do not are refused.
#[test]
fn nb201_runs_the_applicable_methods() {
    use darts::methods::Method;
    let dev = Default::default();
    for method in [
        Method::Gdas,
        Method::DartsMinus,
        Method::SdartsRs,
        Method::SdartsAdv,
        Method::BetaDarts,
        Method::Drnas,
    ] {
        let s = Nb201Search {
            method,
            epochs: 2,
            max_steps: Some(1),
            ..settings(Order::First)
        };
        let arch = search::<B>(&s, &dev, |_, st, _| {
            assert!(st.train_loss.is_finite(), "{method}");
        })
        .unwrap_or_else(|e| panic!("{method}: {e}"));
        let text = arch.to_string();
        assert_eq!(Nb201Arch::parse(&text).unwrap(), arch, "{method}");
    }
    for method in [Method::PcDarts, Method::FairDarts] {
        let s = Nb201Search {
            method,
            ..settings(Order::First)
        };
        let e = search::<B>(&s, &dev, |_, _, _| {}).unwrap_err();
        assert!(e.to_string().contains("does not apply"), "{e}");
    }
}

fn settings(order: Order) -> Nb201Search {
    Nb201Search {
        data: std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/cifar10-sample"),
        limit_images: 64,
        channels: 4,
        cells: 1,
        batch_size: 8,
        epochs: 2,
        max_steps: Some(2),
        order,
        seed: 1,
        method: darts::methods::Method::Darts,
        select_pt: None,
    }
}

/// DARTS-PT on the NAS-Bench-201 cell: one op decision per edge (the cell keeps all six edges),
/// each the removal with the lowest accuracy, and the architecture is the decisions.
#[test]
fn nb201_darts_pt_decides_every_edge() {
    let dev = Default::default();
    let s = Nb201Search {
        epochs: 1,
        max_steps: Some(1),
        select_pt: Some(1),
        ..settings(Order::First)
    };
    let (arch, decisions) = example::search_with_decisions::<B>(&s, &dev, |_, _, _| {}).unwrap();
    assert_eq!(decisions.len(), 6);
    let mut edges: Vec<usize> = decisions.iter().map(|d| d.target).collect();
    edges.sort();
    assert_eq!(edges, (0..6).collect::<Vec<_>>());
    for d in &decisions {
        assert_eq!(d.kind, "op");
        assert_eq!(d.accuracies.len(), NB201_OPS.len());
        let min = d.accuracies.iter().map(|a| a.1).fold(f64::MAX, f64::min);
        assert_eq!(d.accuracies[d.chosen[0]].1, min);
    }
    // Edges in order: node 1 ← 0, node 2 ← 0, 1, node 3 ← 0, 1, 2; each carries its decision.
    let flat: Vec<&str> = arch
        .nodes
        .iter()
        .flat_map(|n| n.iter().map(|(op, _)| op.as_str()))
        .collect();
    for d in &decisions {
        assert_eq!(flat[d.target], NB201_OPS[d.chosen[0]], "{arch}");
    }
}

#[test]
fn nb201_search_steps_yield_a_valid_architecture_string() {
    let dev = Default::default();
    let mut seen = Vec::new();
    let arch = search::<B>(&settings(Order::First), &dev, |epoch, stats, arch| {
        assert!(stats.train_loss.is_finite() && stats.val_loss.is_finite());
        assert_eq!(stats.steps, 2);
        seen.push((epoch, arch.to_arch_string()));
    })
    .unwrap();
    assert_eq!(seen.len(), 2);
    let text = arch.to_arch_string();
    println!("{text}");
    let parsed = Nb201Arch::parse(&text).unwrap();
    parsed.validate_ops(&NB201_OPS).unwrap();
    assert_eq!(parsed.nodes.len(), 3);
    assert_eq!(parsed, arch);
}

#[test]
fn nb201_second_order_step_runs_and_moves_alpha() {
    let dev = Default::default();
    let s = Nb201Search {
        epochs: 1,
        max_steps: Some(1),
        ..settings(Order::Second)
    };
    let arch = search::<B>(&s, &dev, |_, stats, _| assert_eq!(stats.steps, 1)).unwrap();
    Nb201Arch::parse(&arch.to_arch_string()).unwrap();
    // The supernet's shapes: α [6, 5]; the output is 10 logits.
    let net = seeded(3, || Nb201Net::<B>::new(4, 1, 10, &dev));
    assert_eq!(net.alphas.dims(), [6, 5]);
    let logits = net.forward(burn::tensor::Tensor::zeros([2, 3, 32, 32], &dev));
    assert_eq!(logits.dims(), [2, 10]);
}
