//! Inspect genotypes: list the catalog, print one in Python notation / JSON / DOT, or draw its
//! cells as SVG.
//!
//! ```text
//! cargo run --example genotype -- list
//! cargo run --example genotype -- show DARTS_V2 --svg out.svg
//! cargo run --example genotype -- show runs/cifar10_search/genotype.json --json
//! ```

use clap::{Parser, Subcommand};
use darts::genotype::diagram::CellGraph;
use darts::genotype::{
    catalog, parse_conv_any, parse_recurrent_any, python, Genotype, RecurrentGenotype,
};
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "Inspect DARTS genotypes")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// List the published genotypes.
    List,
    /// Show a genotype (catalog name or file with JSON / Python notation).
    Show {
        /// Name (e.g. DARTS_V2) or path.
        genotype: String,
        /// The recurrent catalog / a recurrent genotype.
        #[arg(long)]
        recurrent: bool,
        /// Print JSON instead of Python notation.
        #[arg(long)]
        json: bool,
        /// Print Graphviz DOT of the cells.
        #[arg(long)]
        dot: bool,
        /// Write an SVG: FILE for the normal cell, FILE with `_reduce` for the reduction cell.
        #[arg(long)]
        svg: Option<PathBuf>,
    },
}

enum G {
    Conv(Genotype),
    Rec(RecurrentGenotype),
}

fn load(name: &str, recurrent: bool) -> Result<G, String> {
    if recurrent {
        if let Some(g) = catalog::recurrent(name) {
            return Ok(G::Rec(g));
        }
    } else if let Some(g) = catalog::conv(name) {
        return Ok(G::Conv(g));
    }
    let text = std::fs::read_to_string(name).map_err(|e| {
        format!(
            "`{name}` is neither a catalog name nor a readable file ({e}); known: {}",
            if recurrent {
                catalog::recurrent_names()
            } else {
                catalog::conv_names()
            }
            .join(", ")
        )
    })?;
    // The structure is checked by the parsers; the operation names against what this library
    // can build (a genotype naming an unknown op could be shown but not trained).
    if recurrent {
        let g = parse_recurrent_any(&text).map_err(|e| format!("{name}: {e}"))?;
        let known: Vec<&str> = darts::ops::RnnPrimitive::DARTS.map(|p| p.name()).to_vec();
        if let Some((i, gene)) = g
            .recurrent
            .iter()
            .enumerate()
            .find(|(_, gene)| !known.contains(&gene.op.as_str()))
        {
            return Err(format!(
                "{name}: gene {i}: unknown operation `{}` (known: {})",
                gene.op,
                known.join(", ")
            ));
        }
        Ok(G::Rec(g))
    } else {
        let g = parse_conv_any(&text).map_err(|e| format!("{name}: {e}"))?;
        let known = darts::ops::Primitive::ALL.map(|p| p.name());
        g.validate_ops(&known).map_err(|e| format!("{name}: {e}"))?;
        Ok(G::Conv(g))
    }
}

fn write(path: &PathBuf, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

fn run() -> Result<(), String> {
    match Cli::parse().cmd {
        Cmd::List => {
            println!("convolutional: {}", catalog::conv_names().join(", "));
            println!("recurrent:     {}", catalog::recurrent_names().join(", "));
        }
        Cmd::Show {
            genotype,
            recurrent,
            json,
            dot,
            svg,
        } => match load(&genotype, recurrent)? {
            G::Conv(g) => {
                println!(
                    "{}",
                    if json {
                        g.to_json()
                    } else {
                        python::to_python(&g)
                    }
                );
                let n = CellGraph::conv(&g.normal, &g.normal_concat);
                let r = CellGraph::conv(&g.reduce, &g.reduce_concat);
                if dot {
                    println!("// normal\n{}// reduce\n{}", n.to_dot(), r.to_dot());
                }
                if let Some(p) = svg {
                    let stem = p
                        .file_stem()
                        .map(|s| s.to_string_lossy().to_string())
                        .unwrap_or_default();
                    let reduce = p.with_file_name(format!("{stem}_reduce.svg"));
                    write(&p, &n.to_svg())?;
                    write(&reduce, &r.to_svg())?;
                }
            }
            G::Rec(g) => {
                println!(
                    "{}",
                    if json {
                        g.to_json()
                    } else {
                        python::recurrent_to_python(&g)
                    }
                );
                let c = CellGraph::recurrent(&g);
                if dot {
                    println!("{}", c.to_dot());
                }
                if let Some(p) = svg {
                    write(&p, &c.to_svg())?;
                }
            }
        },
    }
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
}
