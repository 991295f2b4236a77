//! Charts of runs, drawn with [plotters](https://docs.rs/plotters): each figure as SVG and as PNG
//! (many viewers and terminals preview PNG only).
//!
//! - [`line_chart`]: metrics over epochs (1-based integer ticks, as the console counts), one
//!   line per series, axis labels and a legend;
//! - [`alpha_evolution`]: softmax(α) of each edge over the epochs, one panel per edge with its
//!   own autoscaled axis and tick labels, and a legend naming the ops;
//! - [`alpha_heatmap`]: the final softmax(α) of a cell type, edges × ops, each value printed in
//!   its cell (the figure of the DARTS-family papers).
//!
//! Text is laid out with DejaVu Sans, compiled in (`assets/fonts`), so the PNGs look the same
//! on every machine.

use darts_genotype::diagram::{CellGraph, Layout};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{register_font, FontStyle};

/// A drawn figure.
#[derive(Clone, Debug)]
pub struct Figure {
    /// The SVG document.
    pub svg: String,
    /// The PNG file's bytes.
    pub png: Vec<u8>,
}

/// A figure that could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("chart `{title}`: {what}")]
pub struct ReportError {
    title: String,
    what: String,
}

const FONT: &str = "sans-serif";

fn font_once() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let bytes: &'static [u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");
        // Only fails on a damaged font file, which the tests would show.
        let _ = register_font(FONT, FontStyle::Normal, bytes);
    });
}

/// Something drawn the same way on every plotters backend.
trait Picture {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String>;
}

/// Draw `pic` on a bitmap canvas of `size` pixels and encode it as PNG.
fn render_png(title: &str, size: (u32, u32), pic: &impl Picture) -> Result<Vec<u8>, ReportError> {
    font_once();
    let fail = |what: String| ReportError {
        title: title.to_string(),
        what,
    };
    let mut rgb = vec![0u8; size.0 as usize * size.1 as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, size).into_drawing_area();
        pic.draw(&root).map_err(fail)?;
        root.present().map_err(|e| fail(e.to_string()))?;
    }
    let mut png = Vec::new();
    image::ImageEncoder::write_image(
        image::codecs::png::PngEncoder::new(&mut png),
        &rgb,
        size.0,
        size.1,
        image::ColorType::Rgb8,
    )
    .map_err(|e| fail(e.to_string()))?;
    Ok(png)
}

/// Draw `pic` on an SVG and a bitmap canvas of `size` pixels.
fn render(title: &str, size: (u32, u32), pic: &impl Picture) -> Result<Figure, ReportError> {
    font_once();
    let fail = |what: String| ReportError {
        title: title.to_string(),
        what,
    };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        pic.draw(&root).map_err(fail)?;
        root.present().map_err(|e| fail(e.to_string()))?;
    }
    let png = render_png(title, size, pic)?;
    Ok(Figure { svg, png })
}

/// A plotters error as text.
fn text(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// The smallest and largest finite y of `series` (a unit range around a single value, and
/// 0..1 when there is none), with 5% padding.
fn y_range<'a>(series: impl Iterator<Item = &'a (i32, f64)>) -> std::ops::Range<f64> {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for &(_, y) in series {
        if y.is_finite() {
            lo = lo.min(y);
            hi = hi.max(y);
        }
    }
    if lo > hi {
        return 0.0..1.0;
    }
    if hi - lo < 1e-12 {
        lo -= 0.5;
        hi += 0.5;
    }
    let pad = 0.05 * (hi - lo);
    (lo - pad)..(hi + pad)
}

fn color(i: usize) -> RGBColor {
    const TABLEAU: [(u8, u8, u8); 10] = [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
        (188, 189, 34),
        (23, 190, 207),
    ];
    let (r, g, b) = TABLEAU[i % TABLEAU.len()];
    RGBColor(r, g, b)
}

/// Named series of (epoch, value) points, epochs 1-based.
pub type Series = [(String, Vec<(i32, f64)>)];

/// The series of one panel.
type Panel = Vec<(String, Vec<(i32, f64)>)>;

fn epochs(series: &Series) -> i32 {
    series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.0))
        .max()
        .unwrap_or(1)
}

/// Lines of `series` in `area`: x the epoch (integer ticks), y autoscaled.
fn plot_lines<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    caption: &str,
    y_label: Option<&str>,
    series: &Series,
    legend: bool,
) -> Result<(), String> {
    let n = epochs(series);
    let y = y_range(series.iter().flat_map(|s| s.1.iter()));
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 15))
        .margin(8)
        .x_label_area_size(if y_label.is_some() { 36 } else { 24 })
        .y_label_area_size(if y_label.is_some() { 60 } else { 42 })
        .build_cartesian_2d(1..n.max(2), y)
        .map_err(text)?;
    let mut mesh = chart.configure_mesh();
    mesh.x_labels((n as usize).clamp(2, 10))
        .y_labels(5)
        .label_style((FONT, 11))
        .light_line_style(WHITE.mix(0.0));
    if let Some(y_label) = y_label {
        mesh.x_desc("epoch").y_desc(y_label);
    }
    mesh.draw().map_err(text)?;
    for (i, (name, points)) in series.iter().enumerate() {
        let c = color(i);
        let finite: Vec<(i32, f64)> = points.iter().copied().filter(|p| p.1.is_finite()).collect();
        chart
            .draw_series(LineSeries::new(finite.clone(), c.stroke_width(2)))
            .map_err(text)?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
        // Points too, so that a one-epoch run shows something.
        chart
            .draw_series(finite.iter().map(|&p| Circle::new(p, 2, c.filled())))
            .map_err(text)?;
    }
    if legend {
        chart
            .configure_series_labels()
            .label_font((FONT, 12))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(text)?;
    }
    Ok(())
}

/// Metrics over epochs: `series` of (epoch 1-based, value), `y_label` the quantity.
pub fn line_chart(title: &str, y_label: &str, series: &Series) -> Result<Figure, ReportError> {
    struct Lines<'a>(&'a str, &'a str, &'a Series);
    impl Picture for Lines<'_> {
        fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
            root.fill(&WHITE).map_err(text)?;
            plot_lines(root, self.0, Some(self.1), self.2, true)
        }
    }
    render(title, (720, 420), &Lines(title, y_label, series))
}

/// The first `edges` edge labels of a convolutional cell, in the order of α's rows: node i's
/// inputs are c_{k-2}, c_{k-1} and the nodes before it.
pub fn cnn_edge_labels(edges: usize) -> Vec<String> {
    let name = |j: usize| match j {
        0 => "c_{k-2}".to_string(),
        1 => "c_{k-1}".to_string(),
        j => format!("node {}", j - 2),
    };
    (0..)
        .flat_map(|i| (0..i + 2).map(move |j| format!("{} → node {i}", name(j))))
        .take(edges)
        .collect()
}

/// The first `edges` edge labels of a recurrent cell, in the order of α's rows: node i
/// (1-based) has the inputs 0..i.
pub fn rnn_edge_labels(edges: usize) -> Vec<String> {
    (1..)
        .flat_map(|i| (0..i).map(move |j| format!("{j} → {i}")))
        .take(edges)
        .collect()
}

/// The α-evolution figure.
struct Evolution<'a> {
    title: &'a str,
    cols: usize,
    rows: usize,
    width: u32,
    panels: Vec<Panel>,
    edge_labels: &'a [String],
    op_names: &'a [String],
}
impl Picture for Evolution<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        root.fill(&WHITE).map_err(text)?;
        let root = root.titled(self.title, (FONT, 18)).map_err(text)?;
        let (grid, legend) = root.split_horizontally(self.width);
        let areas = grid.split_evenly((self.rows, self.cols));
        for (e, (area, panel)) in areas.iter().zip(&self.panels).enumerate() {
            let label = self
                .edge_labels
                .get(e)
                .cloned()
                .unwrap_or_else(|| format!("edge {e}"));
            plot_lines(area, &label, None, panel, false)?;
        }
        for (k, name) in self.op_names.iter().enumerate() {
            let y = 30 + 20 * k as i32;
            let line = PathElement::new(vec![(10, y), (30, y)], color(k).stroke_width(3));
            legend.draw(&line).map_err(text)?;
            legend
                .draw(&Text::new(name.as_str(), (36, y - 7), (FONT, 13)))
                .map_err(text)?;
        }
        Ok(())
    }
}

/// softmax(α) of each edge over the epochs: `history[epoch][edge][op]` (epoch 0 first), one
/// panel per edge (`edge_labels`), one line per op, a legend naming the ops.
pub fn alpha_evolution(
    title: &str,
    history: &[Vec<Vec<f64>>],
    edge_labels: &[String],
    op_names: &[String],
) -> Result<Figure, ReportError> {
    let edges = history.first().map_or(0, Vec::len);
    let cols = 4usize;
    let rows = edges.div_ceil(cols).max(1);
    let (pw, ph, legend_w) = (230u32, 170u32, 170u32);
    let size = (cols as u32 * pw + legend_w, rows as u32 * ph + 40);
    let panels: Vec<Panel> = (0..edges)
        .map(|e| {
            op_names
                .iter()
                .enumerate()
                .map(|(k, name)| {
                    let points = history
                        .iter()
                        .enumerate()
                        .map(|(t, h)| (t as i32 + 1, h[e].get(k).copied().unwrap_or(f64::NAN)))
                        .collect();
                    (name.clone(), points)
                })
                .collect()
        })
        .collect();
    let pic = Evolution {
        title,
        cols,
        rows,
        width: cols as u32 * pw,
        panels,
        edge_labels,
        op_names,
    };
    render(title, size, &pic)
}

/// The heat-map figure.
struct Heat<'a> {
    title: &'a str,
    weights: &'a [Vec<f64>],
    edge_labels: &'a [String],
    op_names: &'a [String],
    min: f64,
    span: f64,
}
impl Picture for Heat<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let (left, top, cw, ch) = HEAT_GEOMETRY;
        root.fill(&WHITE).map_err(text)?;
        root.draw(&Text::new(self.title, (10, 10), (FONT, 18)))
            .map_err(text)?;
        for (k, name) in self.op_names.iter().enumerate() {
            let x = left + cw * k as i32 + 4;
            root.draw(&Text::new(name.as_str(), (x, top - 20), (FONT, 11)))
                .map_err(text)?;
        }
        for (e, row) in self.weights.iter().enumerate() {
            let y = top + ch * e as i32;
            let label = self
                .edge_labels
                .get(e)
                .cloned()
                .unwrap_or_else(|| format!("edge {e}"));
            root.draw(&Text::new(label, (8, y + 6), (FONT, 12)))
                .map_err(text)?;
            for (k, v) in row.iter().enumerate() {
                let x = left + cw * k as i32;
                let t = match v.is_finite() {
                    true => ((v - self.min) / self.span).clamp(0.0, 1.0),
                    false => 0.0,
                };
                let fill = RGBColor(
                    (255.0 - t * 222.0) as u8,
                    (255.0 - t * 143.0) as u8,
                    (255.0 - t * 75.0) as u8,
                );
                let cell = [(x, y), (x + cw, y + ch)];
                root.draw(&Rectangle::new(cell, fill.filled()))
                    .map_err(text)?;
                root.draw(&Rectangle::new(cell, WHITE.stroke_width(1)))
                    .map_err(text)?;
                let ink = if t > 0.6 { WHITE } else { BLACK };
                let value = match v.is_finite() {
                    true => format!("{v:.3}"),
                    false => "NaN".into(),
                };
                let style = (FONT, 12).into_font().color(&ink);
                root.draw(&Text::new(value, (x + 26, y + 6), style))
                    .map_err(text)?;
            }
        }
        Ok(())
    }
}

/// Heat map layout: left margin, top margin, cell width, cell height (pixels).
const HEAT_GEOMETRY: (i32, i32, i32, i32) = (150, 80, 92, 24);

/// The final softmax(α) of a cell type as a heat map: one row per edge (`edge_labels`), one
/// column per op, the value printed in each cell.
pub fn alpha_heatmap(
    title: &str,
    weights: &[Vec<f64>],
    edge_labels: &[String],
    op_names: &[String],
) -> Result<Figure, ReportError> {
    let (left, top, cw, ch) = HEAT_GEOMETRY;
    let size = (
        (left + cw * op_names.len() as i32 + 20) as u32,
        (top + ch * weights.len() as i32 + 20) as u32,
    );
    let finite = || weights.iter().flatten().copied().filter(|v| v.is_finite());
    let max = finite().fold(f64::NEG_INFINITY, f64::max);
    let min = finite().fold(f64::INFINITY, f64::min);
    // Colours span the values present, so that small differences (early in a search all
    // weights are near 1/ops) show; the printed numbers carry the scale.
    let (min, span) = match max - min {
        d if d > 1e-12 => (min, d),
        _ => (min - 0.5, 1.0),
    };
    let title = format!(
        "{title} (colour: {:.3} light to {:.3} dark)",
        min.max(0.0),
        min + span
    );
    let title = title.as_str();
    let pic = Heat {
        title,
        weights,
        edge_labels,
        op_names,
        min,
        span,
    };
    render(title, size, &pic)
}

/// A cell diagram drawn from [`CellGraph::layout`] on a bitmap: the PNG beside the SVG of
/// [`CellGraph::to_svg`].
pub fn cell_diagram_png(graph: &CellGraph) -> Result<Vec<u8>, ReportError> {
    struct Diagram<'a>(&'a CellGraph, Layout);
    impl Picture for Diagram<'_> {
        fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
            let (g, l) = (self.0, &self.1);
            let ink = RGBColor(68, 68, 68);
            let at = |p: (f64, f64)| (p.0.round() as i32, p.1.round() as i32);
            root.fill(&WHITE).map_err(text)?;
            for c in &l.curves {
                let points = c.samples(40);
                let path: Vec<(i32, i32)> = points.iter().map(|&p| at(p)).collect();
                root.draw(&PathElement::new(path, ink.stroke_width(2)))
                    .map_err(text)?;
                // Arrowhead along the curve's last segment.
                let (e, b) = (points[40], points[38]);
                let (dx, dy) = (e.0 - b.0, e.1 - b.1);
                let n = (dx * dx + dy * dy).sqrt().max(1e-9);
                let (ux, uy) = (dx / n, dy / n);
                let head = vec![
                    at(e),
                    at((e.0 - 9.0 * ux - 4.5 * uy, e.1 - 9.0 * uy + 4.5 * ux)),
                    at((e.0 - 9.0 * ux + 4.5 * uy, e.1 - 9.0 * uy - 4.5 * ux)),
                ];
                root.draw(&Polygon::new(head, ink.filled())).map_err(text)?;
            }
            let centred = |size: u32| {
                (FONT, size)
                    .into_font()
                    .into_text_style(root)
                    .pos(Pos::new(HPos::Center, VPos::Center))
            };
            let boxes = l
                .labels
                .iter()
                .zip(&g.edges)
                .filter_map(|(r, e)| r.map(|r| (r, e)));
            for (r, (_, _, label)) in boxes {
                let rect = [at((r.x0, r.y0)), at((r.x1, r.y1))];
                root.draw(&Rectangle::new(rect, WHITE.mix(0.9).filled()))
                    .map_err(text)?;
                let mid = at(((r.x0 + r.x1) / 2.0, (r.y0 + r.y1) / 2.0));
                root.draw(&Text::new(label.as_str(), mid, centred(13)))
                    .map_err(text)?;
            }
            for (id, r) in l.nodes.iter().enumerate() {
                let [red, green, blue] = g.fill(id);
                let fill = RGBColor(red, green, blue);
                let rect = [at((r.x0, r.y0)), at((r.x1, r.y1))];
                root.draw(&Rectangle::new(rect, fill.filled()))
                    .map_err(text)?;
                root.draw(&Rectangle::new(rect, BLACK.stroke_width(2)))
                    .map_err(text)?;
                let name = g.name(id);
                let mid = at(((r.x0 + r.x1) / 2.0, (r.y0 + r.y1) / 2.0));
                root.draw(&Text::new(name, mid, centred(16)))
                    .map_err(text)?;
            }
            Ok(())
        }
    }
    let layout = graph.layout();
    let size = (layout.width.ceil() as u32, layout.height.ceil() as u32);
    render_png("cell diagram", size, &Diagram(graph, layout))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text elements' contents.
    fn texts(svg: &str) -> Vec<&str> {
        svg.split("</text>")
            .filter_map(|chunk| chunk.rsplit_once('>').map(|(_, t)| t.trim()))
            .collect()
    }

    fn well_formed(f: &Figure, labels: &[&str]) {
        assert!(
            f.svg.starts_with("<svg"),
            "{}",
            &f.svg[..80.min(f.svg.len())]
        );
        assert!(f.svg.trim_end().ends_with("</svg>"));
        for l in labels {
            assert!(f.svg.contains(l), "missing label {l:?}");
        }
        assert!(f.png.starts_with(b"\x89PNG\r\n\x1a\n"));
        let img = image::load_from_memory(&f.png).expect("a PNG that decodes");
        assert!(img.width() > 100 && img.height() > 100);
    }

    #[test]
    fn line_charts_have_integer_epoch_ticks_axis_labels_and_a_legend() {
        let f = line_chart(
            "loss",
            "cross-entropy",
            &[
                ("train".into(), vec![(1, 2.3), (2, 2.0)]),
                ("val".into(), vec![(1, 2.4), (2, f64::NAN)]),
            ],
        )
        .unwrap();
        well_formed(&f, &["loss", "epoch", "cross-entropy", "train", "val"]);
        // The x ticks of a 2-epoch run are 1 and 2, nothing in between.
        let texts = texts(&f.svg);
        assert!(texts.contains(&"1") && texts.contains(&"2"), "{texts:?}");
        assert!(
            !texts.contains(&"1.5") && !texts.contains(&"0"),
            "{texts:?}"
        );
    }

    #[test]
    fn alpha_figures_name_edges_and_ops_and_print_values() {
        let ops: Vec<String> = ["none", "max_pool_3x3", "sep_conv_3x3"]
            .map(String::from)
            .to_vec();
        let labels = cnn_edge_labels(5);
        assert_eq!(labels.len(), 5);
        assert_eq!(labels[0], "c_{k-2} → node 0");
        assert_eq!(labels[4], "node 0 → node 1");
        let history = vec![vec![vec![0.2, 0.3, 0.5]; 5], vec![vec![0.1, 0.2, 0.7]; 5]];
        let f = alpha_evolution("softmax(α), normal cell", &history, &labels, &ops).unwrap();
        well_formed(
            &f,
            &[
                "normal cell",
                "c_{k-2} → node 0",
                "node 0 → node 1",
                "sep_conv_3x3",
            ],
        );
        let h = alpha_heatmap("final softmax(α)", &history[1], &labels, &ops).unwrap();
        well_formed(
            &h,
            &[
                "final softmax(α)",
                "max_pool_3x3",
                "0.700",
                "c_{k-1} → node 1",
            ],
        );
        assert_eq!(
            rnn_edge_labels(6),
            ["0 → 1", "0 → 2", "1 → 2", "0 → 3", "1 → 3", "2 → 3"]
        );
    }
}
