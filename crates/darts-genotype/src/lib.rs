//! Genotypes: the discrete architectures that a DARTS search produces and that users share.
//!
//! * [`Genotype`] (convolutional: normal and reduction cells) and [`RecurrentGenotype`]
//!   (recurrent cell), both serde-serialisable to JSON;
//! * [`derive`](mod@derive): the reference discretisation rule (top-k strongest non-`none` edges per node);
//! * [`python`]: reading and writing the `Genotype(normal=[('sep_conv_3x3', 0), ...], ...)`
//!   notation used by the reference code and papers;
//! * [`catalog`]: published genotypes by name (NASNet, AmoebaNet, DARTS_V1/V2, PC_DARTS, PDARTS,
//!   recurrent DARTS_V1/V2);
//! * [`nb201`]: the NAS-Bench-201 architecture-string notation (`|op~0|+|op~0|op~1|+…`);
//! * [`diagram`]: Graphviz DOT and a dependency-free SVG rendering of a cell.
//!
//! ```
//! use darts_genotype::{catalog, python};
//! let g = catalog::conv("DARTS_V2").unwrap();
//! let text = python::to_python(&g);
//! assert_eq!(python::parse_conv(&text).unwrap(), g);
//! ```
#![warn(missing_docs)]

pub mod catalog;
pub mod derive;
pub mod diagram;
pub mod nb201;
pub mod python;

use serde::{Deserialize, Serialize};

/// One chosen edge of a cell: the operation and the index of the state it reads.
///
/// States are numbered as in the reference code: for convolutional cells 0 and 1 are the two cell
/// inputs (`c_{k-2}`, `c_{k-1}`) and 2.. are the intermediate nodes; for recurrent cells 0 is the
/// initial state `s0` and 1.. are the intermediate nodes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Gene {
    /// Operation name, e.g. `sep_conv_3x3`.
    pub op: String,
    /// Index of the input state.
    pub input: usize,
    /// The state (intermediate node, from 2) this gene feeds, when the cell names it: FairDARTS's
    /// `(op, to, from)` genes, for cells whose nodes have any number of inputs (0–2 after its
    /// threshold). `None` (the DARTS layout): two genes per node, node `i` gets genes `2i` and
    /// `2i + 1`. A cell uses one layout or the other, not both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<usize>,
}

impl Gene {
    /// A gene of the DARTS layout (its node implied by its position).
    pub fn new(op: impl Into<String>, input: usize) -> Self {
        Self {
            op: op.into(),
            input,
            node: None,
        }
    }

    /// A gene that names the state it feeds (`node` ≥ 2 for convolutional cells).
    pub fn to(op: impl Into<String>, node: usize, input: usize) -> Self {
        Self {
            op: op.into(),
            input,
            node: Some(node),
        }
    }
}

/// The state each gene of a convolutional cell feeds (`2 + g/2` in the DARTS layout, the named
/// node otherwise).
pub fn gene_targets(genes: &[Gene]) -> Vec<usize> {
    genes
        .iter()
        .enumerate()
        .map(|(g, gene)| gene.node.unwrap_or(2 + g / 2))
        .collect()
}

/// Whether a cell names its genes' nodes (FairDARTS's layout).
pub fn names_nodes(genes: &[Gene]) -> bool {
    genes.first().is_some_and(|g| g.node.is_some())
}

/// A convolutional genotype: a normal cell and a reduction cell.
///
/// Each cell lists two genes per intermediate node (node `i` uses genes `2i` and `2i+1`) and the
/// states concatenated into the cell output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Genotype {
    /// Genes of the normal cell.
    pub normal: Vec<Gene>,
    /// States concatenated to form the normal cell's output.
    pub normal_concat: Vec<usize>,
    /// Genes of the reduction cell.
    pub reduce: Vec<Gene>,
    /// States concatenated to form the reduction cell's output.
    pub reduce_concat: Vec<usize>,
}

/// A recurrent genotype: one gene (operation, predecessor) per intermediate node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecurrentGenotype {
    /// Gene of node `i + 1` at index `i`.
    pub recurrent: Vec<Gene>,
    /// States averaged to form the cell's output.
    pub concat: Vec<usize>,
}

/// Errors raised when a genotype is inconsistent.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GenotypeError {
    /// A cell's gene list does not have two genes per node.
    #[error("{cell} cell has {genes} genes; a convolutional cell needs an even, non-zero number (two per node)")]
    OddGeneCount {
        /// Which cell.
        cell: &'static str,
        /// Number of genes found.
        genes: usize,
    },
    /// A gene reads a state that does not exist yet.
    #[error("{cell} cell, gene {gene}: input {input} is not an earlier state (node {node} may read states 0..{max})")]
    BadInput {
        /// Which cell.
        cell: &'static str,
        /// Index of the gene.
        gene: usize,
        /// Node the gene belongs to.
        node: usize,
        /// Input index found.
        input: usize,
        /// Exclusive upper bound on valid inputs.
        max: usize,
    },
    /// A concat index is out of range.
    #[error("{cell} cell: concat index {index} is out of range (states 0..{states})")]
    BadConcat {
        /// Which cell.
        cell: &'static str,
        /// Index found.
        index: usize,
        /// Number of states.
        states: usize,
    },
    /// The cell concatenates no state, so it would have no output.
    #[error("{cell} cell: the concat list is empty (the cell's output is the concatenation of the states it lists)")]
    EmptyConcat {
        /// Which cell.
        cell: &'static str,
    },
    /// Some genes name their node and others do not.
    #[error("{cell} cell, gene {gene}: genes either all name their node, ('op', node, input), or none does, ('op', input)")]
    MixedLayout {
        /// Which cell.
        cell: &'static str,
        /// Index of the first gene that differs.
        gene: usize,
    },
    /// Genes that name their nodes are out of node order.
    #[error("{cell} cell, gene {gene}: node {node} comes after a later node (genes must be in node order, nodes from 2)")]
    NodeOrder {
        /// Which cell.
        cell: &'static str,
        /// Index of the gene.
        gene: usize,
        /// Its node.
        node: usize,
    },
    /// An operation name is not known to the search space.
    #[error("{cell} cell, gene {gene}: unknown operation `{op}` (known: {known})")]
    UnknownOp {
        /// Which cell.
        cell: &'static str,
        /// Index of the gene.
        gene: usize,
        /// The unknown name.
        op: String,
        /// Comma-separated list of known names.
        known: String,
    },
}

fn validate_conv_cell(
    cell: &'static str,
    genes: &[Gene],
    concat: &[usize],
) -> Result<(), GenotypeError> {
    if genes.is_empty() && concat.is_empty() {
        // A cell of which a threshold derivation (FairDARTS) kept nothing: a valid record of
        // the search, not a buildable cell (the derived network refuses it).
        return Ok(());
    }
    if names_nodes(genes) {
        return validate_named_cell(cell, genes, concat);
    }
    if let Some(gene) = genes.iter().position(|g| g.node.is_some()) {
        return Err(GenotypeError::MixedLayout { cell, gene });
    }
    if genes.is_empty() || !genes.len().is_multiple_of(2) {
        return Err(GenotypeError::OddGeneCount {
            cell,
            genes: genes.len(),
        });
    }
    for (g, gene) in genes.iter().enumerate() {
        let node = g / 2;
        if gene.input >= node + 2 {
            return Err(GenotypeError::BadInput {
                cell,
                gene: g,
                node,
                input: gene.input,
                max: node + 2,
            });
        }
    }
    if concat.is_empty() {
        return Err(GenotypeError::EmptyConcat { cell });
    }
    let states = genes.len() / 2 + 2;
    for &index in concat {
        if index >= states {
            return Err(GenotypeError::BadConcat {
                cell,
                index,
                states,
            });
        }
    }
    Ok(())
}

/// A cell whose genes name their nodes: nodes from 2 in non-decreasing order, inputs earlier
/// states, concat a non-empty list of nodes that genes feed.
fn validate_named_cell(
    cell: &'static str,
    genes: &[Gene],
    concat: &[usize],
) -> Result<(), GenotypeError> {
    let mut last = 2;
    for (g, gene) in genes.iter().enumerate() {
        let Some(node) = gene.node else {
            return Err(GenotypeError::MixedLayout { cell, gene: g });
        };
        if node < last {
            return Err(GenotypeError::NodeOrder {
                cell,
                gene: g,
                node,
            });
        }
        last = node;
        if gene.input >= node {
            return Err(GenotypeError::BadInput {
                cell,
                gene: g,
                node: node - 2,
                input: gene.input,
                max: node,
            });
        }
    }
    if concat.is_empty() {
        return Err(GenotypeError::EmptyConcat { cell });
    }
    let states = concat.iter().copied().chain([last]).max().unwrap_or(2) + 1;
    let fed: Vec<usize> = gene_targets(genes);
    for &index in concat {
        if index < 2 || !fed.contains(&index) {
            return Err(GenotypeError::BadConcat {
                cell,
                index,
                states,
            });
        }
    }
    Ok(())
}

impl Genotype {
    /// Number of intermediate nodes of the normal cell (for cells that name their nodes: the
    /// highest node fed, minus the two inputs).
    pub fn normal_steps(&self) -> usize {
        cell_steps(&self.normal)
    }

    /// Number of intermediate nodes of the reduction cell.
    pub fn reduce_steps(&self) -> usize {
        cell_steps(&self.reduce)
    }

    /// Check the structure: two genes per node, inputs from earlier states, concat in range.
    pub fn validate(&self) -> Result<(), GenotypeError> {
        validate_conv_cell("normal", &self.normal, &self.normal_concat)?;
        validate_conv_cell("reduce", &self.reduce, &self.reduce_concat)
    }

    /// Check the structure and that every operation is one of `known`.
    pub fn validate_ops(&self, known: &[&str]) -> Result<(), GenotypeError> {
        self.validate()?;
        for (cell, genes) in [("normal", &self.normal), ("reduce", &self.reduce)] {
            for (gene, g) in genes.iter().enumerate() {
                if !known.contains(&g.op.as_str()) {
                    return Err(GenotypeError::UnknownOp {
                        cell,
                        gene,
                        op: g.op.clone(),
                        known: known.join(", "),
                    });
                }
            }
        }
        Ok(())
    }

    /// Serialize to pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("genotype serialises")
    }
}

impl RecurrentGenotype {
    /// Check the structure: node `i + 1` reads a state in `0..=i`, concat in range.
    pub fn validate(&self) -> Result<(), GenotypeError> {
        for (g, gene) in self.recurrent.iter().enumerate() {
            if gene.input > g {
                return Err(GenotypeError::BadInput {
                    cell: "recurrent",
                    gene: g,
                    node: g + 1,
                    input: gene.input,
                    max: g + 1,
                });
            }
        }
        if self.concat.is_empty() {
            return Err(GenotypeError::EmptyConcat { cell: "recurrent" });
        }
        let states = self.recurrent.len() + 1;
        for &index in &self.concat {
            if index >= states {
                return Err(GenotypeError::BadConcat {
                    cell: "recurrent",
                    index,
                    states,
                });
            }
        }
        Ok(())
    }

    /// Serialize to pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("genotype serialises")
    }
}

fn cell_steps(genes: &[Gene]) -> usize {
    if names_nodes(genes) {
        gene_targets(genes).into_iter().max().map_or(0, |n| n - 1)
    } else {
        genes.len() / 2
    }
}

fn parse_json_or<T: serde::de::DeserializeOwned>(
    text: &str,
    python: fn(&str) -> Result<T, python::ParseError>,
) -> Result<T, python::ParseError> {
    if !text.trim_start().starts_with('{') {
        return python(text);
    }
    serde_json::from_str(text).map_err(|e| python::ParseError {
        line: e.line(),
        column: e.column(),
        offset: 0,
        message: format!("invalid genotype JSON: {e}"),
    })
}

/// Read a convolutional genotype from JSON or Python notation (detected from the first
/// non-blank character).
pub fn parse_conv_any(text: &str) -> Result<Genotype, python::ParseError> {
    let g: Genotype = parse_json_or(text, python::parse_conv)?;
    g.validate().map_err(|e| python::ParseError {
        line: 1,
        column: 1,
        offset: 0,
        message: format!("invalid genotype: {e}"),
    })?;
    Ok(g)
}

/// Read a recurrent genotype from JSON or Python notation.
pub fn parse_recurrent_any(text: &str) -> Result<RecurrentGenotype, python::ParseError> {
    let g: RecurrentGenotype = parse_json_or(text, python::parse_recurrent)?;
    g.validate().map_err(|e| python::ParseError {
        line: 1,
        column: 1,
        offset: 0,
        message: format!("invalid genotype: {e}"),
    })?;
    Ok(g)
}
