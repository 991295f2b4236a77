//! Cell diagrams: Graphviz DOT (the layout of the reference's `visualize.py`) and a
//! dependency-free SVG rendering, so a user without Graphviz still gets a picture.

use crate::{Gene, RecurrentGenotype};
use std::fmt::Write;

/// A cell as a graph: input nodes, intermediate nodes, labelled edges and an output node.
#[derive(Clone, Debug)]
pub struct CellGraph {
    /// Names of the input nodes (e.g. `c_{k-2}`, `c_{k-1}`).
    pub inputs: Vec<String>,
    /// Number of intermediate nodes (named `0`, `1`, ...).
    pub nodes: usize,
    /// Edges `(from, to, label)`, with node ids: `0..inputs.len()` are inputs, then intermediate
    /// nodes, then the output.
    pub edges: Vec<(usize, usize, String)>,
    /// Name of the output node.
    pub output: String,
}

impl CellGraph {
    /// A convolutional cell from its genes (two per node) and concat list.
    pub fn conv(genes: &[Gene], concat: &[usize]) -> Self {
        let steps = genes.len() / 2;
        let mut edges = Vec::new();
        for (k, g) in genes.iter().enumerate() {
            edges.push((g.input, 2 + k / 2, g.op.clone()));
        }
        for &c in concat {
            edges.push((c, 2 + steps, String::new()));
        }
        CellGraph {
            inputs: vec!["c_{k-2}".into(), "c_{k-1}".into()],
            nodes: steps,
            edges,
            output: "c_{k}".into(),
        }
    }

    /// A recurrent cell: `x_{t}` and `h_{t-1}` feed node 0, node `i+1` reads its gene's input.
    pub fn recurrent(g: &RecurrentGenotype) -> Self {
        let steps = g.recurrent.len();
        // ids: 0 = x_t, 1 = h_{t-1}, 2.. = nodes 0..=steps, last = h_t
        let mut edges = vec![(0, 2, String::new()), (1, 2, String::new())];
        for (i, gene) in g.recurrent.iter().enumerate() {
            edges.push((2 + gene.input, 2 + i + 1, gene.op.clone()));
        }
        for &c in &g.concat {
            edges.push((2 + c, 2 + steps + 1, String::new()));
        }
        CellGraph {
            inputs: vec!["x_{t}".into(), "h_{t-1}".into()],
            nodes: steps + 1,
            edges,
            output: "h_{t}".into(),
        }
    }

    fn name(&self, id: usize) -> String {
        let ni = self.inputs.len();
        if id < ni {
            self.inputs[id].clone()
        } else if id < ni + self.nodes {
            (id - ni).to_string()
        } else {
            self.output.clone()
        }
    }

    /// Graphviz DOT text.
    pub fn to_dot(&self) -> String {
        let mut s = String::new();
        s.push_str("digraph {\n\trankdir=LR\n");
        s.push_str("\tedge [fontname=times fontsize=20]\n");
        s.push_str("\tnode [align=center fontname=times fontsize=20 height=0.5 penwidth=2 shape=rect style=filled width=0.5]\n");
        for i in &self.inputs {
            let _ = writeln!(s, "\t\"{i}\" [fillcolor=darkseagreen2]");
        }
        for n in 0..self.nodes {
            let _ = writeln!(s, "\t{n} [fillcolor=lightblue]");
        }
        let _ = writeln!(s, "\t\"{}\" [fillcolor=palegoldenrod]", self.output);
        for (u, v, label) in &self.edges {
            let (u, v) = (self.name(*u), self.name(*v));
            if label.is_empty() {
                let _ = writeln!(s, "\t\"{u}\" -> \"{v}\" [fillcolor=gray]");
            } else {
                let _ = writeln!(s, "\t\"{u}\" -> \"{v}\" [label={label} fillcolor=gray]");
            }
        }
        s.push_str("}\n");
        s
    }

    /// A standalone SVG picture (left-to-right layered layout, curved labelled edges).
    pub fn to_svg(&self) -> String {
        let ni = self.inputs.len();
        let total = ni + self.nodes + 1;
        let col_w = 170.0;
        let height = 160.0 + 80.0 * ni.max(3) as f64;
        let width = col_w * (self.nodes as f64 + 2.0) + 40.0;
        let mid = height / 2.0;
        let pos = |id: usize| -> (f64, f64) {
            if id < ni {
                let span = height - 120.0;
                let y = 60.0 + span * (id as f64 + 0.5) / ni as f64;
                (60.0, y)
            } else if id < ni + self.nodes {
                let k = id - ni;
                let off = if k.is_multiple_of(2) { -70.0 } else { 70.0 };
                (60.0 + col_w * (k as f64 + 1.0), mid + off)
            } else {
                (60.0 + col_w * (self.nodes as f64 + 1.0), mid)
            }
        };
        let mut s = String::new();
        let _ = writeln!(
            s,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" viewBox=\"0 0 {width:.0} {height:.0}\" font-family=\"Times New Roman, serif\">"
        );
        s.push_str("<defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto-start-reverse\"><path d=\"M 0 0 L 10 5 L 0 10 z\" fill=\"#444\"/></marker></defs>\n");
        let _ = writeln!(
            s,
            "<rect width=\"{width:.0}\" height=\"{height:.0}\" fill=\"white\"/>"
        );
        let half_w = |id: usize| -> f64 {
            let n = self.name(id);
            (10.0 + 5.5 * n.chars().count() as f64).max(22.0)
        };
        let mut labels = String::new();
        for (e, (u, v, label)) in self.edges.iter().enumerate() {
            let (x1, y1) = pos(*u);
            let (x2, y2) = pos(*v);
            let (sx, ex) = (x1 + half_w(*u), x2 - half_w(*v));
            // Edges that skip columns bow away from the straight line to stay readable.
            let span = ((x2 - x1) / col_w).round().max(1.0);
            let bow = if span > 1.0 {
                (if e % 2 == 0 { -1.0 } else { 1.0 }) * 25.0 * (span - 1.0)
            } else {
                0.0
            };
            let (c1x, c1y) = (sx + (ex - sx) * 0.4, y1 + bow);
            let (c2x, c2y) = (sx + (ex - sx) * 0.6, y2 + bow);
            let _ = writeln!(
                s,
                "<path d=\"M {sx:.1} {y1:.1} C {c1x:.1} {c1y:.1}, {c2x:.1} {c2y:.1}, {ex:.1} {y2:.1}\" fill=\"none\" stroke=\"#444\" stroke-width=\"1.6\" marker-end=\"url(#arrow)\"/>"
            );
            if !label.is_empty() {
                // Point of the cubic at t = 0.6 (closer to the target, where edges fan in from
                // different directions, so labels collide less).
                let t: f64 = 0.6;
                let (a, b, c, d) = (
                    (1.0 - t).powi(3),
                    3.0 * (1.0 - t).powi(2) * t,
                    3.0 * (1.0 - t) * t * t,
                    t.powi(3),
                );
                let lx = a * sx + b * c1x + c * c2x + d * ex;
                let ly = a * y1 + b * c1y + c * c2y + d * y2;
                let w = 7.0 * label.chars().count() as f64 + 8.0;
                let _ = writeln!(
                    labels,
                    "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"16\" rx=\"3\" fill=\"white\" fill-opacity=\"0.85\"/><text x=\"{lx:.1}\" y=\"{:.1}\" font-size=\"13\" text-anchor=\"middle\">{}</text>",
                    lx - w / 2.0,
                    ly - 11.0,
                    ly + 1.0,
                    escape(label)
                );
            }
        }
        s.push_str(&labels);
        for id in 0..total {
            let (x, y) = pos(id);
            let fill = if id < ni {
                "#b4eeb4"
            } else if id < ni + self.nodes {
                "#add8e6"
            } else {
                "#eee8aa"
            };
            let hw = half_w(id);
            let _ = writeln!(
                s,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"32\" fill=\"{fill}\" stroke=\"black\" stroke-width=\"2\"/><text x=\"{x:.1}\" y=\"{:.1}\" font-size=\"17\" text-anchor=\"middle\">{}</text>",
                x - hw,
                y - 16.0,
                2.0 * hw,
                y + 6.0,
                escape(&self.name(id))
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog;

    #[test]
    fn dot_matches_reference_layout() {
        let g = catalog::conv("DARTS_V2").unwrap();
        let dot = CellGraph::conv(&g.normal, &g.normal_concat).to_dot();
        assert!(dot.contains("rankdir=LR"));
        assert!(dot.contains("\"c_{k-2}\" -> \"0\" [label=sep_conv_3x3 fillcolor=gray]"));
        assert!(dot.contains("\"0\" -> \"3\" [label=dil_conv_3x3 fillcolor=gray]"));
        assert!(dot.contains("\"3\" -> \"c_{k}\""));
        assert_eq!(dot.matches(" -> ").count(), 8 + 4);
    }

    #[test]
    fn svg_is_well_formed_and_labelled() {
        let g = catalog::conv("NASNet").unwrap();
        let svg = CellGraph::conv(&g.reduce, &g.reduce_concat).to_svg();
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("marker-end=").count(), 10 + 3);
        assert_eq!(svg.matches(">sep_conv_7x7<").count(), 2);
        assert_eq!(svg.matches("<svg").count(), svg.matches("</svg>").count());
        let r = catalog::recurrent("DARTS_V2").unwrap();
        let svg = CellGraph::recurrent(&r).to_svg();
        assert!(svg.contains(">h_{t-1}<"));
        assert_eq!(svg.matches(">relu<").count(), 3);
    }
}
