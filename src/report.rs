//! Dependency-free SVG charts for search results: line charts (loss/accuracy curves) and the
//! evolution of softmax(α) per edge over epochs (one small panel per edge).

use std::fmt::Write;

const COLORS: [&str; 10] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn bounds(series: &[(String, Vec<(f64, f64)>)]) -> (f64, f64, f64, f64) {
    let pts = series
        .iter()
        .flat_map(|s| s.1.iter())
        .filter(|p| p.0.is_finite() && p.1.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        return (0.0, 1.0, 0.0, 1.0);
    }
    if x1 - x0 < 1e-12 {
        x1 = x0 + 1.0;
    }
    if y1 - y0 < 1e-12 {
        y0 -= 0.5;
        y1 += 0.5;
    }
    let pad = 0.05 * (y1 - y0);
    (x0, x1, y0 - pad, y1 + pad)
}

/// Draw `series` into the rectangle (x, y, w, h) of `out`.
#[allow(clippy::too_many_arguments)]
fn plot_into(
    out: &mut String,
    series: &[(String, Vec<(f64, f64)>)],
    x: f64,
    y: f64,
    w: f64,
    h: f64,
    title: &str,
    axes_labels: bool,
    fixed_y: Option<(f64, f64)>,
) {
    let (x0, x1, mut y0, mut y1) = bounds(series);
    if let Some((a, b)) = fixed_y {
        y0 = a;
        y1 = b;
    }
    let sx = |v: f64| x + (v - x0) / (x1 - x0) * w;
    let sy = |v: f64| y + h - (v - y0) / (y1 - y0) * h;
    let _ = writeln!(out, "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{h:.1}\" fill=\"white\" stroke=\"#999\"/>");
    let _ = writeln!(
        out,
        "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\" text-anchor=\"middle\">{}</text>",
        x + w / 2.0,
        y - 5.0,
        esc(title)
    );
    if axes_labels {
        for k in 0..=4 {
            let v = y0 + (y1 - y0) * k as f64 / 4.0;
            let yy = sy(v);
            let _ = writeln!(out, "<line x1=\"{x:.1}\" y1=\"{yy:.1}\" x2=\"{:.1}\" y2=\"{yy:.1}\" stroke=\"#eee\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"end\">{v:.3}</text>", x + w, x - 4.0, yy + 3.0);
            let xv = x0 + (x1 - x0) * k as f64 / 4.0;
            let _ = writeln!(out, "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"middle\">{xv:.0}</text>", sx(xv), y + h + 13.0);
        }
    }
    for (i, (_, pts)) in series.iter().enumerate() {
        let pts: Vec<String> = pts
            .iter()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .map(|&(a, b)| format!("{:.1},{:.1}", sx(a), sy(b)))
            .collect();
        if pts.is_empty() {
            continue;
        }
        let _ = writeln!(
            out,
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.6\" points=\"{}\"/>",
            COLORS[i % COLORS.len()],
            pts.join(" ")
        );
    }
}

fn legend(out: &mut String, names: &[String], x: f64, y: f64) {
    for (i, n) in names.iter().enumerate() {
        let yy = y + 16.0 * i as f64;
        let _ = writeln!(out, "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"12\" height=\"3\" fill=\"{}\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\">{}</text>", yy - 4.0, COLORS[i % COLORS.len()], x + 16.0, yy, esc(n));
    }
}

/// A line chart of named series of (x, y) points.
pub fn line_chart(title: &str, x_label: &str, series: &[(String, Vec<(f64, f64)>)]) -> String {
    let (w, h) = (640.0, 360.0);
    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\">\n<rect width=\"{w}\" height=\"{h}\" fill=\"white\"/>\n");
    plot_into(&mut s, series, 60.0, 30.0, 420.0, 290.0, title, true, None);
    let _ = writeln!(
        s,
        "<text x=\"270\" y=\"352\" font-size=\"11\" text-anchor=\"middle\">{}</text>",
        esc(x_label)
    );
    let names: Vec<String> = series.iter().map(|x| x.0.clone()).collect();
    legend(&mut s, &names, 500.0, 50.0);
    s.push_str("</svg>\n");
    s
}

/// softmax(α) per edge over epochs: `history[epoch][edge][op]`, one panel per edge, one line per
/// op. All panels share one y range (printed in the title) so edges can be compared.
pub fn alpha_evolution(title: &str, history: &[Vec<Vec<f64>>], op_names: &[String]) -> String {
    let edges = history.first().map_or(0, |h| h.len());
    let cols = 4usize;
    let rows = edges.div_ceil(cols).max(1);
    let (pw, ph) = (170.0, 110.0);
    let (w, h) = (
        40.0 + cols as f64 * (pw + 30.0) + 150.0,
        50.0 + rows as f64 * (ph + 35.0),
    );
    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w:.0}\" height=\"{h:.0}\" font-family=\"sans-serif\">\n<rect width=\"{w:.0}\" height=\"{h:.0}\" fill=\"white\"/>\n");
    let _ = writeln!(
        s,
        "<text x=\"20\" y=\"22\" font-size=\"15\">{}</text>",
        esc(title)
    );
    // Edge labels in the reference layout: node i, input j.
    let mut labels = Vec::new();
    let mut n_in = 2;
    while labels.len() < edges {
        for j in 0..n_in {
            labels.push(format!("node {} ← {}", n_in - 2, j));
        }
        n_in += 1;
    }
    for e in 0..edges {
        let series: Vec<(String, Vec<(f64, f64)>)> = op_names
            .iter()
            .enumerate()
            .map(|(k, n)| {
                (
                    n.clone(),
                    history
                        .iter()
                        .enumerate()
                        .map(|(ep, h)| (ep as f64, h[e][k]))
                        .collect(),
                )
            })
            .collect();
        let (cx, cy) = (
            40.0 + (e % cols) as f64 * (pw + 30.0),
            55.0 + (e / cols) as f64 * (ph + 35.0),
        );
        plot_into(
            &mut s,
            &series,
            cx,
            cy,
            pw,
            ph,
            &labels[e],
            false,
            Some((0.0, 1.0)),
        );
    }
    legend(&mut s, op_names, w - 140.0, 60.0);
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_well_formed() {
        let s = line_chart(
            "loss",
            "epoch",
            &[
                ("train".into(), vec![(0.0, 2.3), (1.0, 2.0)]),
                ("val".into(), vec![(0.0, 2.4)]),
            ],
        );
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert_eq!(s.matches("<polyline").count(), 2);
        let h = vec![vec![vec![0.5, 0.5]; 5]; 3];
        let a = alpha_evolution("normal", &h, &["a".into(), "b".into()]);
        assert_eq!(a.matches("<polyline").count(), 10);
        assert!(a.contains("node 2 ← 3") || a.contains("node 1 ← 2"));
    }
}
