//! Published genotypes, by name, transcribed from the papers' official repositories
//! (quark0/darts `cnn/genotypes.py` and `rnn/genotypes.py`, yuhuixu1993/PC-DARTS,
//! chenxin061/pdarts). Stored in the Python notation and parsed on access, so the catalog also
//! exercises the parser.

use crate::{python, Genotype, RecurrentGenotype};

/// Convolutional genotypes: (name, Python text).
pub const CONV: &[(&str, &str)] = &[
    (
        "NASNet",
        "Genotype(normal=[('sep_conv_5x5', 1), ('sep_conv_3x3', 0), ('sep_conv_5x5', 0), ('sep_conv_3x3', 0), ('avg_pool_3x3', 1), ('skip_connect', 0), ('avg_pool_3x3', 0), ('avg_pool_3x3', 0), ('sep_conv_3x3', 1), ('skip_connect', 1)], normal_concat=[2, 3, 4, 5, 6], reduce=[('sep_conv_5x5', 1), ('sep_conv_7x7', 0), ('max_pool_3x3', 1), ('sep_conv_7x7', 0), ('avg_pool_3x3', 1), ('sep_conv_5x5', 0), ('skip_connect', 3), ('avg_pool_3x3', 2), ('sep_conv_3x3', 2), ('max_pool_3x3', 1)], reduce_concat=[4, 5, 6])",
    ),
    (
        "AmoebaNet",
        "Genotype(normal=[('avg_pool_3x3', 0), ('max_pool_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_5x5', 2), ('sep_conv_3x3', 0), ('avg_pool_3x3', 3), ('sep_conv_3x3', 1), ('skip_connect', 1), ('skip_connect', 0), ('avg_pool_3x3', 1)], normal_concat=[4, 5, 6], reduce=[('avg_pool_3x3', 0), ('sep_conv_3x3', 1), ('max_pool_3x3', 0), ('sep_conv_7x7', 2), ('sep_conv_7x7', 0), ('avg_pool_3x3', 1), ('max_pool_3x3', 0), ('max_pool_3x3', 1), ('conv_7x1_1x7', 0), ('sep_conv_3x3', 5)], reduce_concat=[3, 4, 6])",
    ),
    (
        "DARTS_V1",
        "Genotype(normal=[('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 0), ('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 0), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('avg_pool_3x3', 0)], reduce_concat=[2, 3, 4, 5])",
    ),
    (
        "DARTS_V2",
        "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])",
    ),
    (
        "PC_DARTS",
        "Genotype(normal=[('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 0), ('dil_conv_3x3', 1), ('sep_conv_5x5', 0), ('sep_conv_3x3', 1), ('avg_pool_3x3', 0), ('dil_conv_3x3', 1)], normal_concat=range(2, 6), reduce=[('sep_conv_5x5', 1), ('max_pool_3x3', 0), ('sep_conv_5x5', 1), ('sep_conv_5x5', 2), ('sep_conv_3x3', 0), ('sep_conv_3x3', 3), ('sep_conv_3x3', 1), ('sep_conv_3x3', 2)], reduce_concat=range(2, 6))",
    ),
    (
        "PDARTS",
        "Genotype(normal=[('skip_connect', 0), ('dil_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('sep_conv_3x3', 3), ('sep_conv_3x3', 0), ('dil_conv_5x5', 4)], normal_concat=range(2, 6), reduce=[('avg_pool_3x3', 0), ('sep_conv_5x5', 1), ('sep_conv_3x3', 0), ('dil_conv_5x5', 2), ('max_pool_3x3', 0), ('dil_conv_3x3', 1), ('dil_conv_3x3', 1), ('dil_conv_5x5', 3)], reduce_concat=range(2, 6))",
    ),
];

/// Alternative names accepted by [`conv`] (alias, canonical name).
pub const CONV_ALIASES: &[(&str, &str)] = &[
    ("DARTS", "DARTS_V2"),
    ("PC_DARTS_cifar", "PC_DARTS"),
    ("PC-DARTS", "PC_DARTS"),
    ("P-DARTS", "PDARTS"),
];

/// Recurrent genotypes: (name, Python text).
pub const RECURRENT: &[(&str, &str)] = &[
    (
        "DARTS_V1",
        "Genotype(recurrent=[('relu', 0), ('relu', 1), ('tanh', 2), ('relu', 3), ('relu', 4), ('identity', 1), ('relu', 5), ('relu', 1)], concat=range(1, 9))",
    ),
    (
        "DARTS_V2",
        "Genotype(recurrent=[('sigmoid', 0), ('relu', 1), ('relu', 1), ('identity', 1), ('tanh', 2), ('sigmoid', 5), ('tanh', 3), ('relu', 5)], concat=range(1, 9))",
    ),
];

fn canonical<'a>(name: &'a str, aliases: &[(&'a str, &'a str)]) -> &'a str {
    aliases
        .iter()
        .find(|(a, _)| a.eq_ignore_ascii_case(name))
        .map_or(name, |(_, c)| c)
}

/// Names of the convolutional genotypes.
pub fn conv_names() -> Vec<&'static str> {
    CONV.iter().map(|(n, _)| *n).collect()
}

/// Names of the recurrent genotypes.
pub fn recurrent_names() -> Vec<&'static str> {
    RECURRENT.iter().map(|(n, _)| *n).collect()
}

/// A published convolutional genotype by name (case-insensitive; `DARTS` = `DARTS_V2`).
pub fn conv(name: &str) -> Option<Genotype> {
    let name = canonical(name, CONV_ALIASES);
    CONV.iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, t)| python::parse_conv(t).expect("catalog entries parse"))
}

/// A published recurrent genotype by name (case-insensitive; `DARTS` = `DARTS_V2`).
pub fn recurrent(name: &str) -> Option<RecurrentGenotype> {
    let name = canonical(name, &[("DARTS", "DARTS_V2")]);
    RECURRENT
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, t)| python::parse_recurrent(t).expect("catalog entries parse"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_parses_and_validates() {
        for n in conv_names() {
            let g = conv(n).unwrap();
            g.validate().unwrap();
            assert_eq!(python::parse_conv(&python::to_python(&g)).unwrap(), g);
        }
        for n in recurrent_names() {
            let g = recurrent(n).unwrap();
            g.validate().unwrap();
            assert_eq!(g.recurrent.len(), 8);
        }
        assert_eq!(conv("darts"), conv("DARTS_V2"));
        assert_eq!(conv("pc_darts_cifar"), conv("PC_DARTS"));
        assert!(conv("nope").is_none());
        assert_eq!(conv("NASNet").unwrap().normal_steps(), 5);
        assert_eq!(conv("AmoebaNet").unwrap().reduce_concat, vec![3, 4, 6]);
    }
}
