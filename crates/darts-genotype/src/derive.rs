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
}
