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
}

impl Gene {
    /// Build a gene.
    pub fn new(op: impl Into<String>, input: usize) -> Self {
        Self {
            op: op.into(),
            input,
        }
    }
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

impl Genotype {
    /// Number of intermediate nodes of the normal cell.
    pub fn normal_steps(&self) -> usize {
        self.normal.len() / 2
    }

    /// Number of intermediate nodes of the reduction cell.
    pub fn reduce_steps(&self) -> usize {
        self.reduce.len() / 2
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
