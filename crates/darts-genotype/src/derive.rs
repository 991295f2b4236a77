//! Discretisation: from architecture weights to a genotype (paper §2.4, reference
//! `Network.genotype()` in `cnn/model_search.py` and `rnn/model_search.py`).
//!
//! For each intermediate node, every incoming edge is scored by its strongest operation other
//! than `none`; the `k` best edges are kept (k = 2 for convolutional cells, k = 1 for recurrent
//! cells), and on each kept edge the strongest operation other than `none` is chosen.
//!
//! **Tie-breaking** (deterministic, and the same as the reference's stable Python `sorted` and
//! strict `>` argmax): among edges of equal score the one from the lower-numbered state wins;
//! among operations of equal weight the one listed first wins. NaN weights rank below every
//! number.
//!
//! The weights are the *relaxed* weights (e.g. softmax(alpha) per edge); since the rule only
//! compares values within a node, passing raw alphas gives the same argmax per edge but may rank
//! edges differently, exactly as in the reference.

#[cfg(test)]
use crate::GenotypeError;
use crate::{Gene, Genotype, RecurrentGenotype};

/// Errors from derivation.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeriveError {
    /// The number of weight rows does not match any number of nodes.
    #[error("{rows} weight rows cannot be split into nodes with {first} inputs for the first node, {first}+1 for the next, ...")]
    RowCount {
        /// Rows given.
        rows: usize,
        /// Inputs of the first node.
        first: usize,
    },
    /// A row has the wrong number of entries.
    #[error("weight row {row} has {got} entries, the op set has {expected}")]
    RowLength {
        /// Row index.
        row: usize,
        /// Entries found.
        got: usize,
        /// Number of operations.
        expected: usize,
    },
    /// Every operation is excluded.
    #[error("the op set has no operation other than `none`")]
    NoCandidate,
    /// The multiplier exceeds the number of steps.
    #[error("multiplier {multiplier} exceeds the number of nodes {steps}")]
    Multiplier {
        /// Requested multiplier.
        multiplier: usize,
        /// Number of nodes.
        steps: usize,
    },
}

fn key(x: f32) -> f32 {
    if x.is_nan() {
        f32::NEG_INFINITY
    } else {
        x
    }
}

/// Index of the strongest operation other than `none` (first one wins ties).
fn best_op(row: &[f32], none_index: Option<usize>) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (k, &w) in row.iter().enumerate() {
        if Some(k) == none_index {
            continue;
        }
        match best {
            None => best = Some(k),
            Some(b) if key(w) > key(row[b]) => best = Some(k),
            _ => {}
        }
    }
    best
}

/// Number of nodes for `rows` weight rows when node `i` has `first + i` inputs.
pub fn steps_for_rows(rows: usize, first: usize) -> Option<usize> {
    let (mut total, mut steps) = (0usize, 0usize);
    while total < rows {
        total += first + steps;
        steps += 1;
    }
    (total == rows && first > 0).then_some(steps)
}

/// Derive the genes of one cell.
///
/// `weights[e][o]` is the weight of operation `o` on edge `e`; edges are ordered node by node and,
/// within a node, by input state, exactly as the supernet lays them out. Node `i` has
/// `first + i` inputs. Returns `min(k, inputs)` genes per node, strongest edge first.
pub fn derive_cell(
    weights: &[Vec<f32>],
    first: usize,
    k: usize,
    op_names: &[&str],
    none_index: Option<usize>,
) -> Result<Vec<Gene>, DeriveError> {
    let steps = steps_for_rows(weights.len(), first).ok_or(DeriveError::RowCount {
        rows: weights.len(),
        first,
    })?;
    for (row, w) in weights.iter().enumerate() {
        if w.len() != op_names.len() {
            return Err(DeriveError::RowLength {
                row,
                got: w.len(),
                expected: op_names.len(),
            });
        }
    }
    let mut genes = Vec::with_capacity(steps * k);
    let mut start = 0;
    for i in 0..steps {
        let n = first + i;
        let rows = &weights[start..start + n];
        let mut scored = Vec::with_capacity(n);
        for (j, row) in rows.iter().enumerate() {
            let b = best_op(row, none_index).ok_or(DeriveError::NoCandidate)?;
            scored.push((j, b, key(row[b])));
        }
        // Stable sort: ties keep the lower input index first.
        scored.sort_by(|a, b| b.2.partial_cmp(&a.2).unwrap_or(std::cmp::Ordering::Equal));
        for &(j, b, _) in scored.iter().take(k) {
            genes.push(Gene::new(op_names[b], j));
        }
        start += n;
    }
    Ok(genes)
}

/// Derive a convolutional genotype (k = 2 per node) from the normal and reduction weights.
/// `concat` is the last `multiplier` states, as in the reference.
pub fn derive_conv(
    normal: &[Vec<f32>],
    reduce: &[Vec<f32>],
    multiplier: usize,
    op_names: &[&str],
    none_index: Option<usize>,
) -> Result<Genotype, DeriveError> {
    derive_conv_k(normal, reduce, 2, multiplier, op_names, none_index)
}

/// [`derive_conv`] with an explicit number `k` of edges kept per node.
pub fn derive_conv_k(
    normal: &[Vec<f32>],
    reduce: &[Vec<f32>],
    k: usize,
    multiplier: usize,
    op_names: &[&str],
    none_index: Option<usize>,
) -> Result<Genotype, DeriveError> {
    let normal_genes = derive_cell(normal, 2, k, op_names, none_index)?;
    let reduce_genes = derive_cell(reduce, 2, k, op_names, none_index)?;
    let concat = |rows: usize| -> Result<Vec<usize>, DeriveError> {
        let steps = steps_for_rows(rows, 2).unwrap_or(0);
        if multiplier > steps {
            return Err(DeriveError::Multiplier { multiplier, steps });
        }
        Ok((2 + steps - multiplier..2 + steps).collect())
    };
    Ok(Genotype {
        normal: normal_genes,
        normal_concat: concat(normal.len())?,
        reduce: reduce_genes,
        reduce_concat: concat(reduce.len())?,
    })
}

/// How a convolutional supernet's weights become a genotype.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Derivation {
    /// The DARTS rule ([`derive_conv`]): the two strongest edges per node, each with its
    /// strongest op.
    #[default]
    TopK,
    /// FairDARTS's `threshold_sparse` ([`derive_conv_threshold`]): the two strongest edges per
    /// node, each kept only if its strongest op's weight reaches `threshold` (0.85), so a node
    /// has 0–2 inputs and the genes name their nodes.
    Threshold {
        /// The weight an op must reach.
        threshold: f32,
    },
}

impl Derivation {
    /// Apply the rule (`multiplier` is used by [`Derivation::TopK`] only).
    pub fn derive(
        &self,
        normal: &[Vec<f32>],
        reduce: &[Vec<f32>],
        multiplier: usize,
        op_names: &[&str],
        none_index: Option<usize>,
    ) -> Result<Genotype, DeriveError> {
        match *self {
            Derivation::TopK => derive_conv(normal, reduce, multiplier, op_names, none_index),
            Derivation::Threshold { threshold } => {
                derive_conv_threshold(normal, reduce, threshold, op_names, none_index)
            }
        }
    }
}

/// FairDARTS's derivation (`parse_method='threshold_sparse'`, reference `fairdarts/utils.py:
/// parse`): per node the two strongest edges (by their strongest op other than `none`, ties as
/// in [`derive_cell`]), each kept, with its strongest op, only when that op's weight is at
/// least `threshold`. The genes name their nodes ([`Gene::to`]); the concat lists the nodes
/// that kept at least one gene (the reference's `DCOCell` concatenates exactly those). A cell
/// that keeps nothing has no genes and an empty concat.
pub fn derive_conv_threshold(
    normal: &[Vec<f32>],
    reduce: &[Vec<f32>],
    threshold: f32,
    op_names: &[&str],
    none_index: Option<usize>,
) -> Result<Genotype, DeriveError> {
    let cell = |weights: &[Vec<f32>]| -> Result<(Vec<Gene>, Vec<usize>), DeriveError> {
        let genes = derive_cell(weights, 2, 2, op_names, none_index)?;
        let steps = steps_for_rows(weights.len(), 2).unwrap_or(0);
        let mut kept = Vec::new();
        let mut start = 0;
        for (i, pair) in genes.chunks(2).enumerate().take(steps) {
            for g in pair {
                let row = &weights[start + g.input];
                let k = op_names.iter().position(|n| *n == g.op).unwrap_or(0);
                if key(row[k]) >= threshold {
                    kept.push(Gene::to(g.op.clone(), i + 2, g.input));
                }
            }
            start += 2 + i;
        }
        let mut concat: Vec<usize> = kept.iter().filter_map(|g| g.node).collect();
        concat.dedup();
        Ok((kept, concat))
    };
    let (normal, normal_concat) = cell(normal)?;
    let (reduce, reduce_concat) = cell(reduce)?;
    Ok(Genotype {
        normal,
        normal_concat,
        reduce,
        reduce_concat,
    })
}

/// Derive a recurrent genotype (k = 1 per node; node `i + 1` reads one of the states `0..=i`);
/// concat is every intermediate node, as in the reference.
pub fn derive_recurrent(
    weights: &[Vec<f32>],
    op_names: &[&str],
    none_index: Option<usize>,
) -> Result<RecurrentGenotype, DeriveError> {
    let recurrent = derive_cell(weights, 1, 1, op_names, none_index)?;
    let steps = recurrent.len();
    Ok(RecurrentGenotype {
        recurrent,
        concat: (1..=steps).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPS: [&str; 8] = [
        "none",
        "max_pool_3x3",
        "avg_pool_3x3",
        "skip_connect",
        "sep_conv_3x3",
        "sep_conv_5x5",
        "dil_conv_3x3",
        "dil_conv_5x5",
    ];

    fn uniform(rows: usize) -> Vec<Vec<f32>> {
        vec![vec![0.125; 8]; rows]
    }

    #[test]
    fn steps_from_rows() {
        assert_eq!(steps_for_rows(14, 2), Some(4));
        assert_eq!(steps_for_rows(5, 2), Some(2));
        assert_eq!(steps_for_rows(36, 1), Some(8));
        assert_eq!(steps_for_rows(13, 2), None);
        assert_eq!(steps_for_rows(0, 2), Some(0));
    }

    #[test]
    fn none_is_excluded_and_none_dominated_node_still_gets_edges() {
        let mut w = uniform(14);
        // Node 0 (rows 0, 1): edge 1 is dominated by `none` but its best real op (sep_conv_5x5,
        // 0.2) beats edge 0's best (0.15).
        w[0] = vec![0.1, 0.15, 0.1, 0.1, 0.1, 0.1, 0.1, 0.15];
        w[1] = vec![0.7, 0.01, 0.01, 0.01, 0.01, 0.2, 0.03, 0.03];
        let g = derive_cell(&w, 2, 2, &OPS, Some(0)).unwrap();
        assert_eq!(g.len(), 8);
        assert_eq!(g[0], Gene::new("sep_conv_5x5", 1));
        // Edge 0: max_pool_3x3 and dil_conv_5x5 tie at 0.15 -> first listed wins.
        assert_eq!(g[1], Gene::new("max_pool_3x3", 0));
        assert!(g.iter().all(|x| x.op != "none"));
    }

    #[test]
    fn node_picks_two_strongest_distinct_predecessors() {
        let mut w = uniform(14);
        // Node 3 has rows 9..14 (inputs 0..5). Make input 4 and input 2 strongest.
        w[9 + 4] = vec![0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.9, 0.1];
        w[9 + 2] = vec![0.0, 0.0, 0.0, 0.8, 0.0, 0.0, 0.1, 0.1];
        let g = derive_cell(&w, 2, 2, &OPS, Some(0)).unwrap();
        assert_eq!(g[6], Gene::new("dil_conv_3x3", 4));
        assert_eq!(g[7], Gene::new("skip_connect", 2));
        // Uniform nodes: ties broken toward the lower input and the first listed non-none op.
        assert_eq!(g[2], Gene::new("max_pool_3x3", 0));
        assert_eq!(g[3], Gene::new("max_pool_3x3", 1));
    }

    #[test]
    fn conv_concat_and_recurrent() {
        let g = derive_conv(&uniform(14), &uniform(14), 4, &OPS, Some(0)).unwrap();
        assert_eq!(g.normal_concat, vec![2, 3, 4, 5]);
        g.validate().unwrap();
        let rops = ["none", "tanh", "relu", "sigmoid", "identity"];
        let mut w = vec![vec![0.2f32; 5]; 36];
        w[0] = vec![0.9, 0.0, 0.1, 0.0, 0.0];
        let r = derive_recurrent(&w, &rops, Some(0)).unwrap();
        assert_eq!(r.recurrent.len(), 8);
        assert_eq!(r.recurrent[0], Gene::new("relu", 0));
        assert_eq!(r.concat, (1..=8).collect::<Vec<_>>());
        r.validate().unwrap();
    }

    #[test]
    fn bad_shapes_are_errors() {
        assert!(matches!(
            derive_cell(&uniform(13), 2, 2, &OPS, Some(0)),
            Err(DeriveError::RowCount { .. })
        ));
        let mut w = uniform(5);
        w[3] = vec![0.0; 7];
        assert_eq!(
            derive_cell(&w, 2, 2, &OPS, Some(0)),
            Err(DeriveError::RowLength {
                row: 3,
                got: 7,
                expected: 8
            })
        );
        assert_eq!(
            derive_cell(&[vec![1.0], vec![1.0]], 2, 2, &["none"], Some(0)),
            Err(DeriveError::NoCandidate)
        );
        assert!(matches!(
            derive_conv(&uniform(5), &uniform(5), 4, &OPS, Some(0)),
            Err(DeriveError::Multiplier { .. })
        ));
    }

    #[test]
    fn nan_ranks_lowest() {
        let mut w = uniform(2);
        w[0] = vec![0.0, f32::NAN, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0];
        let g = derive_cell(&w, 2, 2, &OPS, Some(0)).unwrap();
        assert_eq!(g[0], Gene::new("max_pool_3x3", 1));
        assert_eq!(g[1], Gene::new("avg_pool_3x3", 0));
    }

    /// FairDARTS: the two strongest edges per node, kept only at or above the threshold; the
    /// genes name their nodes, the concat lists the nodes that kept something.
    #[test]
    fn threshold_keeps_zero_one_or_two_inputs_per_node() {
        // Sigmoid weights of a 2-node cell (5 edges), ops without `none` (7 columns).
        let ops7 = &OPS[1..];
        let row = |k: usize, w: f32| {
            let mut r = vec![0.1f32; 7];
            r[k] = w;
            r
        };
        let w = vec![
            row(2, 0.90), // node 2, input 0: skip_connect 0.90 — kept
            row(3, 0.80), // node 2, input 1: sep_conv_3x3 0.80 — below 0.85
            row(0, 0.84), // node 3, input 0: max_pool 0.84 — below
            row(4, 0.86), // node 3, input 1: sep_conv_5x5 0.86 — kept
            row(5, 0.99), // node 3, input 2: dil_conv_3x3 0.99 — kept (strongest)
        ];
        let g = derive_conv_threshold(&w, &w, 0.85, ops7, None).unwrap();
        assert_eq!(
            g.normal,
            vec![
                Gene::to("skip_connect", 2, 0),
                Gene::to("dil_conv_3x3", 3, 2),
                Gene::to("sep_conv_5x5", 3, 1),
            ]
        );
        assert_eq!(g.normal_concat, vec![2, 3]);
        g.validate().unwrap();
        // Nothing reaches 0.95 except one edge of node 3: node 2 has no input.
        let g = derive_conv_threshold(&w, &w, 0.95, ops7, None).unwrap();
        assert_eq!(g.normal, vec![Gene::to("dil_conv_3x3", 3, 2)]);
        assert_eq!(g.normal_concat, vec![3]);
        g.validate().unwrap();
        // Nothing at all: an empty (valid, unbuildable) cell.
        let g = derive_conv_threshold(&w, &w, 1.5, ops7, None).unwrap();
        assert!(g.normal.is_empty() && g.normal_concat.is_empty());
        g.validate().unwrap();
        // The Python notation carries the nodes: `('op', to, from)`.
        let g = derive_conv_threshold(&w, &w, 0.85, ops7, None).unwrap();
        let text = crate::python::to_python(&g);
        assert!(text.contains("('dil_conv_3x3', 3, 2)"), "{text}");
        assert_eq!(crate::python::parse_conv(&text).unwrap(), g);
        let json = g.to_json();
        assert_eq!(crate::parse_conv_any(&json).unwrap(), g);
        assert_eq!(
            Derivation::Threshold { threshold: 0.85 }
                .derive(&w, &w, 2, ops7, None)
                .unwrap(),
            g
        );
    }

    #[test]
    fn named_cells_are_validated() {
        let base = |normal: Vec<Gene>, concat: Vec<usize>| Genotype {
            normal,
            normal_concat: concat,
            reduce: vec![Gene::new("skip_connect", 0), Gene::new("skip_connect", 1)],
            reduce_concat: vec![2],
        };
        let e = base(vec![Gene::to("a", 3, 0), Gene::to("b", 2, 0)], vec![2, 3]);
        assert!(matches!(e.validate(), Err(GenotypeError::NodeOrder { .. })));
        let e = base(vec![Gene::to("a", 2, 2)], vec![2]);
        assert!(matches!(e.validate(), Err(GenotypeError::BadInput { .. })));
        let e = base(vec![Gene::to("a", 2, 0), Gene::new("b", 1)], vec![2]);
        assert!(matches!(
            e.validate(),
            Err(GenotypeError::MixedLayout { .. })
        ));
        let e = base(vec![Gene::to("a", 3, 0)], vec![2]);
        assert!(matches!(e.validate(), Err(GenotypeError::BadConcat { .. })));
        base(vec![Gene::to("a", 3, 0), Gene::to("b", 3, 1)], vec![3])
            .validate()
            .unwrap();
    }
}
