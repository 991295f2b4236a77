//! The NAS-Bench-201 architecture-string notation, e.g.
//! `|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|skip_connect~1|avg_pool_3x3~2|`:
//! node `i` (1, 2, 3, …) lists one `op~input` per earlier node `0..i`, nodes separated by `+`.
//!
//! ```
//! use darts_genotype::nb201::{Nb201Arch, NB201_OPS};
//! let s = "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|skip_connect~1|avg_pool_3x3~2|";
//! let a = Nb201Arch::parse(s).unwrap();
//! assert_eq!(a.nodes[2][2], ("avg_pool_3x3".to_string(), 2));
//! assert_eq!(a.to_arch_string(), s);
//! a.validate_ops(&NB201_OPS).unwrap();
//! assert!(Nb201Arch::parse("|nor_conv_3x3~1|").is_err()); // node 1 can only read node 0
//! ```

use std::fmt;

/// The NAS-Bench-201 candidate operations, in the benchmark's order.
pub const NB201_OPS: [&str; 5] = [
    "none",
    "skip_connect",
    "nor_conv_1x1",
    "nor_conv_3x3",
    "avg_pool_3x3",
];

/// A cell in NAS-Bench-201 notation: `nodes[i − 1]` holds the `(op, input)` pairs of node `i`,
/// one per input `0..i`, in input order.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Nb201Arch {
    /// Edges into each node.
    pub nodes: Vec<Vec<(String, usize)>>,
}

/// A malformed architecture string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("architecture string: {0}")]
pub struct Nb201Error(pub String);

impl Nb201Arch {
    /// The strongest op of every edge (argmax of its weights, `none` included, as the benchmark's
    /// DARTS baseline derives it). `weights` are per edge, node by node, input by input
    /// (`[1 + 2 + … + nodes][ops]`).
    pub fn from_weights(weights: &[Vec<f32>], op_names: &[&str]) -> Result<Self, Nb201Error> {
        let mut nodes = Vec::new();
        let mut e = 0;
        let mut i = 1;
        while e < weights.len() {
            let mut edges = Vec::new();
            for j in 0..i {
                let row = weights.get(e).ok_or_else(|| {
                    Nb201Error(format!(
                        "{} edges do not fill whole nodes (node {i} needs {i})",
                        weights.len()
                    ))
                })?;
                if row.len() != op_names.len() {
                    return Err(Nb201Error(format!(
                        "edge {e} has {} weights for {} ops",
                        row.len(),
                        op_names.len()
                    )));
                }
                let best = row
                    .iter()
                    .enumerate()
                    .fold(0, |b, (k, w)| if *w > row[b] { k } else { b });
                edges.push((op_names[best].to_string(), j));
                e += 1;
            }
            nodes.push(edges);
            i += 1;
        }
        Ok(Self { nodes })
    }

    /// Parse the notation (checks the structure: node `i` reads `0..i`, in order).
    pub fn parse(s: &str) -> Result<Self, Nb201Error> {
        let s = s.trim();
        let mut nodes = Vec::new();
        for (n, part) in s.split('+').enumerate() {
            let i = n + 1;
            let inner = part
                .strip_prefix('|')
                .and_then(|p| p.strip_suffix('|'))
                .ok_or_else(|| Nb201Error(format!("node {i} `{part}` is not enclosed in `|`")))?;
            let mut edges = Vec::new();
            for (j, edge) in inner.split('|').enumerate() {
                let (op, input) = edge
                    .split_once('~')
                    .ok_or_else(|| Nb201Error(format!("node {i}: `{edge}` is not `op~input`")))?;
                let input: usize = input
                    .parse()
                    .map_err(|_| Nb201Error(format!("node {i}: bad input index in `{edge}`")))?;
                if input != j || op.is_empty() {
                    return Err(Nb201Error(format!(
                        "node {i}: edge {j} must be `op~{j}`, found `{edge}`"
                    )));
                }
                edges.push((op.to_string(), input));
            }
            if edges.len() != i {
                return Err(Nb201Error(format!(
                    "node {i} has {} edges; it must read every earlier node (0..{i})",
                    edges.len()
                )));
            }
            nodes.push(edges);
        }
        Ok(Self { nodes })
    }

    /// Check every op against `known`.
    pub fn validate_ops(&self, known: &[&str]) -> Result<(), Nb201Error> {
        for (i, edges) in self.nodes.iter().enumerate() {
            for (op, j) in edges {
                if !known.contains(&op.as_str()) {
                    return Err(Nb201Error(format!(
                        "node {}, input {j}: unknown op `{op}` (known: {})",
                        i + 1,
                        known.join(", ")
                    )));
                }
            }
        }
        Ok(())
    }

    /// The notation.
    pub fn to_arch_string(&self) -> String {
        self.nodes
            .iter()
            .map(|edges| {
                let inner: Vec<String> = edges.iter().map(|(op, j)| format!("{op}~{j}")).collect();
                format!("|{}|", inner.join("|"))
            })
            .collect::<Vec<_>>()
            .join("+")
    }
}

impl fmt::Display for Nb201Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_arch_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_derivation_and_errors() {
        let w = vec![
            vec![0.1, 0.2, 0.3, 0.9, 0.0],
            vec![0.9, 0.0, 0.0, 0.0, 0.0],
            vec![0.0, 0.0, 0.0, 0.2, 0.1],
        ];
        let a = Nb201Arch::from_weights(&w, &NB201_OPS).unwrap();
        assert_eq!(
            a.to_arch_string(),
            "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|"
        );
        assert!(Nb201Arch::from_weights(&w[..2], &NB201_OPS).is_err());
        assert!(Nb201Arch::from_weights(&[vec![1.0]], &NB201_OPS).is_err());
        for bad in [
            "nor_conv_3x3~0",
            "|x~0|+|y~0|",
            "|a~0|+|b~1|c~0|",
            "|a~z|",
            "|~0|",
        ] {
            assert!(Nb201Arch::parse(bad).is_err(), "{bad}");
        }
        let odd = Nb201Arch::parse("|conv~0|").unwrap();
        assert!(odd.validate_ops(&NB201_OPS).is_err());
    }
}
