//! Cell diagrams: Graphviz DOT (the layout of the reference's `visualize.py`) and a
//! dependency-free SVG rendering, so a user without Graphviz still gets a picture. The SVG
//! layout ([`CellGraph::layout`]) bends edges around nodes they would cross and places each edge
//! label where it meets no node and no other label.

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
    /// A convolutional cell from its genes (two per node, or naming their nodes) and concat
    /// list. A node that no gene feeds is drawn without inputs.
    pub fn conv(genes: &[Gene], concat: &[usize]) -> Self {
        let targets = crate::gene_targets(genes);
        let last = targets.iter().chain(concat).copied().max().unwrap_or(1);
        let steps = last.saturating_sub(1);
        let mut edges = Vec::new();
        for (g, &to) in genes.iter().zip(&targets) {
            edges.push((g.input, to, g.op.clone()));
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

    /// The RGB fill of node `id` (Graphviz's darkseagreen2 for inputs, lightblue for
    /// intermediate nodes, palegoldenrod for the output, as the reference's `visualize.py`).
    pub fn fill(&self, id: usize) -> [u8; 3] {
        let ni = self.inputs.len();
        match id {
            id if id < ni => [0xb4, 0xee, 0xb4],
            id if id < ni + self.nodes => [0xad, 0xd8, 0xe6],
            _ => [0xee, 0xe8, 0xaa],
        }
    }

    /// The name drawn in node `id` (an input's name, an intermediate node's index, or the
    /// output's name).
    pub fn name(&self, id: usize) -> String {
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

    /// Where [`CellGraph::to_svg`] puts everything: node boxes, edge curves and label boxes,
    /// laid out so that no two labels overlap, no label covers a node, and no edge passes
    /// through a node other than its two ends.
    pub fn layout(&self) -> Layout {
        let ni = self.inputs.len();
        let total = ni + self.nodes + 1;
        let col_w = 190.0;
        let band = 70.0;
        let top_margin = 40.0;
        let half_w = |id: usize| (10.0 + 5.5 * self.name(id).chars().count() as f64).max(22.0);
        // Columns: inputs, one per intermediate node, output. Nodes alternate above and below
        // the middle line; inputs are spread over the band.
        let centre = |id: usize| -> (f64, f64) {
            if id < ni {
                let y = -band + 2.0 * band * (id as f64 + 0.5) / ni as f64;
                (0.0, y * 1.4)
            } else if id < ni + self.nodes {
                let k = id - ni;
                let y = if k.is_multiple_of(2) { -band } else { band };
                (col_w * (k as f64 + 1.0), y)
            } else {
                (col_w * (self.nodes as f64 + 1.0), 0.0)
            }
        };
        let nodes: Vec<Rect> = (0..total)
            .map(|id| {
                let (x, y) = centre(id);
                let hw = half_w(id);
                Rect {
                    x0: x - hw,
                    y0: y - 16.0,
                    x1: x + hw,
                    y1: y + 16.0,
                }
            })
            .collect();
        let curves = self.route(&nodes, &centre);
        let labels = self.place_labels(&nodes, &curves);
        let placed: Vec<Rect> = labels.iter().flatten().copied().collect();
        // Shift everything so that the picture starts at (20, top_margin).
        let mut all: Vec<Rect> = nodes.clone();
        all.extend(placed.iter().copied());
        for c in &curves {
            for p in c.samples(48) {
                all.push(Rect {
                    x0: p.0,
                    y0: p.1,
                    x1: p.0,
                    y1: p.1,
                });
            }
        }
        let min_x = all.iter().map(|r| r.x0).fold(f64::INFINITY, f64::min);
        let min_y = all.iter().map(|r| r.y0).fold(f64::INFINITY, f64::min);
        let max_x = all.iter().map(|r| r.x1).fold(f64::NEG_INFINITY, f64::max);
        let max_y = all.iter().map(|r| r.y1).fold(f64::NEG_INFINITY, f64::max);
        let (dx, dy) = (20.0 - min_x, top_margin - min_y);
        Layout {
            width: max_x - min_x + 40.0,
            height: max_y - min_y + top_margin + 20.0,
            nodes: nodes.iter().map(|r| r.shifted(dx, dy)).collect(),
            curves: curves.iter().map(|c| c.shifted(dx, dy)).collect(),
            labels: labels
                .iter()
                .map(|l| l.map(|r| r.shifted(dx, dy)))
                .collect(),
        }
    }

    /// Edge curves: a cubic from the right side of the source to the left side of the target.
    /// An edge that would pass through another node is bent away (up or down, whichever needs
    /// less) until it clears every box but its own two.
    fn route(&self, nodes: &[Rect], centre: &dyn Fn(usize) -> (f64, f64)) -> Vec<Cubic> {
        let mut curves = Vec::with_capacity(self.edges.len());
        for &(u, v, _) in &self.edges {
            let (_, y1) = centre(u);
            let (_, y2) = centre(v);
            let (sx, ex) = (nodes[u].x1, nodes[v].x0);
            let blocked = |c: &Cubic| {
                c.samples(48).iter().any(|&p| {
                    nodes
                        .iter()
                        .enumerate()
                        .any(|(k, r)| k != u && k != v && r.grown(6.0).contains(p))
                })
            };
            let straight = Cubic::new((sx, y1), (ex, y2), 0.0);
            let bent = (1..200)
                .flat_map(|step| [-1.0, 1.0].map(|sign| sign * 12.0 * step as f64))
                .map(|bend| Cubic::new((sx, y1), (ex, y2), bend));
            let chosen = std::iter::once(straight)
                .chain(bent)
                .find(|c| !blocked(c))
                .unwrap_or(straight);
            curves.push(chosen);
        }
        curves
    }

    /// Label boxes: the first point along each edge (from its middle outwards) where the box
    /// meets no node and no label placed before it; failing that, the box is moved up or down
    /// from the middle of the edge until it is free.
    fn place_labels(&self, nodes: &[Rect], curves: &[Cubic]) -> Vec<Option<Rect>> {
        let mut labels: Vec<Option<Rect>> = Vec::with_capacity(self.edges.len());
        let mut placed: Vec<Rect> = Vec::new();
        let free = |r: &Rect, placed: &[Rect]| {
            !nodes.iter().any(|n| n.grown(3.0).intersects(r))
                && !placed.iter().any(|p| p.grown(2.0).intersects(r))
        };
        for ((_, _, label), curve) in self.edges.iter().zip(curves) {
            if label.is_empty() {
                labels.push(None);
                continue;
            }
            let w = 7.0 * label.chars().count() as f64 + 8.0;
            let boxed = |(x, y): (f64, f64)| Rect {
                x0: x - w / 2.0,
                y0: y - 9.0,
                x1: x + w / 2.0,
                y1: y + 9.0,
            };
            let ts = [0.5, 0.6, 0.4, 0.7, 0.3, 0.8, 0.2, 0.65, 0.35, 0.75, 0.25];
            let mut spot = ts
                .iter()
                .map(|&t| boxed(curve.at(t)))
                .find(|r| free(r, &placed));
            if spot.is_none() {
                let (mx, my) = curve.at(0.5);
                spot = (1..400)
                    .flat_map(|k| [-1.0, 1.0].map(|s| boxed((mx, my + s * 4.0 * k as f64))))
                    .find(|r| free(r, &placed));
            }
            let r = spot.unwrap_or_else(|| boxed(curve.at(0.5)));
            placed.push(r);
            labels.push(Some(r));
        }
        labels
    }

    /// A standalone SVG picture: left to right, curved labelled edges, laid out by
    /// [`CellGraph::layout`].
    pub fn to_svg(&self) -> String {
        let l = self.layout();
        let (width, height) = (l.width, l.height);
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
        for c in &l.curves {
            let [(sx, sy), (c1x, c1y), (c2x, c2y), (ex, ey)] = c.points;
            let _ = writeln!(
                s,
                "<path d=\"M {sx:.1} {sy:.1} C {c1x:.1} {c1y:.1}, {c2x:.1} {c2y:.1}, {ex:.1} {ey:.1}\" fill=\"none\" stroke=\"#444\" stroke-width=\"1.6\" marker-end=\"url(#arrow)\"/>"
            );
        }
        for ((_, _, label), r) in self.edges.iter().zip(&l.labels) {
            if let Some(r) = r {
                let style = "rx=\"3\" fill=\"white\" fill-opacity=\"0.9\"";
                boxed_text(&mut s, r, style, 13, 5.0, label);
            }
        }
        for (id, r) in l.nodes.iter().enumerate() {
            let [r8, g8, b8] = self.fill(id);
            let style =
                format!("fill=\"#{r8:02x}{g8:02x}{b8:02x}\" stroke=\"black\" stroke-width=\"2\"");
            boxed_text(&mut s, r, &style, 17, 10.0, &self.name(id));
        }
        s.push_str("</svg>\n");
        s
    }
}

/// An axis-aligned box (SVG coordinates: y grows downwards).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rect {
    /// Left.
    pub x0: f64,
    /// Top.
    pub y0: f64,
    /// Right.
    pub x1: f64,
    /// Bottom.
    pub y1: f64,
}

impl Rect {
    /// Whether the two boxes share interior points.
    pub fn intersects(&self, o: &Rect) -> bool {
        self.x0 < o.x1 && o.x0 < self.x1 && self.y0 < o.y1 && o.y0 < self.y1
    }

    /// Whether `p` lies inside.
    pub fn contains(&self, p: (f64, f64)) -> bool {
        p.0 > self.x0 && p.0 < self.x1 && p.1 > self.y0 && p.1 < self.y1
    }

    /// The box grown by `m` on every side.
    pub fn grown(&self, m: f64) -> Rect {
        Rect {
            x0: self.x0 - m,
            y0: self.y0 - m,
            x1: self.x1 + m,
            y1: self.y1 + m,
        }
    }

    fn shifted(&self, dx: f64, dy: f64) -> Rect {
        Rect {
            x0: self.x0 + dx,
            y0: self.y0 + dy,
            x1: self.x1 + dx,
            y1: self.y1 + dy,
        }
    }
}

/// A cubic Bézier edge: start, two control points, end.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cubic {
    /// The four points.
    pub points: [(f64, f64); 4],
}

impl Cubic {
    /// From `s` to `e`, its control points at 40% and 60% of the way, moved by `bend`
    /// vertically (negative: up).
    fn new(s: (f64, f64), e: (f64, f64), bend: f64) -> Self {
        let c1 = (s.0 + (e.0 - s.0) * 0.4, s.1 + bend);
        let c2 = (s.0 + (e.0 - s.0) * 0.6, e.1 + bend);
        Cubic {
            points: [s, c1, c2, e],
        }
    }

    /// The point at `t` in [0, 1].
    pub fn at(&self, t: f64) -> (f64, f64) {
        let [p0, p1, p2, p3] = self.points;
        let (a, b, c, d) = (
            (1.0 - t).powi(3),
            3.0 * (1.0 - t).powi(2) * t,
            3.0 * (1.0 - t) * t * t,
            t.powi(3),
        );
        (
            a * p0.0 + b * p1.0 + c * p2.0 + d * p3.0,
            a * p0.1 + b * p1.1 + c * p2.1 + d * p3.1,
        )
    }

    /// `n + 1` points along the curve, ends included.
    pub fn samples(&self, n: usize) -> Vec<(f64, f64)> {
        (0..=n).map(|i| self.at(i as f64 / n as f64)).collect()
    }

    fn shifted(&self, dx: f64, dy: f64) -> Cubic {
        Cubic {
            points: self.points.map(|(x, y)| (x + dx, y + dy)),
        }
    }
}

/// The geometry of a drawn cell (see [`CellGraph::layout`]).
#[derive(Clone, Debug)]
pub struct Layout {
    /// Picture width.
    pub width: f64,
    /// Picture height.
    pub height: f64,
    /// Node boxes, by node id.
    pub nodes: Vec<Rect>,
    /// Edge curves, in edge order.
    pub curves: Vec<Cubic>,
    /// Label boxes, in edge order (`None` for an unlabelled edge).
    pub labels: Vec<Option<Rect>>,
}

/// A box with `style` and `text` centred in it, `font_size` high, its baseline `above_bottom`
/// over the box's bottom.
fn boxed_text(
    s: &mut String,
    r: &Rect,
    style: &str,
    font_size: u32,
    above_bottom: f64,
    text: &str,
) {
    let _ = writeln!(
        s,
        "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" {style}/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"{font_size}\" text-anchor=\"middle\">{}</text>",
        r.x0,
        r.y0,
        r.x1 - r.x0,
        r.y1 - r.y0,
        (r.x0 + r.x1) / 2.0,
        r.y1 - above_bottom,
        escape(text)
    );
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

    /// For every catalog genotype (both cells) and recurrent genotype: no two labels overlap,
    /// no label covers a node, no edge runs through a node other than its own ends.
    #[test]
    fn layouts_have_no_overlaps() {
        let mut graphs = Vec::new();
        for name in catalog::conv_names() {
            let g = catalog::conv(name).unwrap();
            graphs.push((
                format!("{name} normal"),
                CellGraph::conv(&g.normal, &g.normal_concat),
            ));
            graphs.push((
                format!("{name} reduce"),
                CellGraph::conv(&g.reduce, &g.reduce_concat),
            ));
        }
        for name in catalog::recurrent_names() {
            let g = catalog::recurrent(name).unwrap();
            graphs.push((format!("{name} recurrent"), CellGraph::recurrent(&g)));
        }
        for (what, g) in graphs {
            let l = g.layout();
            let labels: Vec<Rect> = l.labels.iter().flatten().copied().collect();
            assert_eq!(
                labels.len(),
                g.edges.iter().filter(|e| !e.2.is_empty()).count()
            );
            for (i, a) in labels.iter().enumerate() {
                for b in &labels[i + 1..] {
                    assert!(!a.intersects(b), "{what}: labels {a:?} and {b:?} overlap");
                }
                for n in &l.nodes {
                    assert!(!a.intersects(n), "{what}: label {a:?} on node {n:?}");
                }
                assert!(a.x0 >= 0.0 && a.y0 >= 0.0 && a.x1 <= l.width && a.y1 <= l.height);
            }
            for (e, (u, v, _)) in g.edges.iter().enumerate() {
                for p in l.curves[e].samples(200) {
                    for (k, n) in l.nodes.iter().enumerate() {
                        assert!(
                            k == *u || k == *v || !n.contains(p),
                            "{what}: edge {u}->{v} runs through node {k}"
                        );
                    }
                }
            }
        }
    }
}
