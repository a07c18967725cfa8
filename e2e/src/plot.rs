//! Benchmark pictures: line charts of traces over time as SVG (plotters' SVG backend; the text is left to
//! the viewer's fonts, so nothing here reads a font file). `bench offload --plot` draws pods Ready over time
//! (direct vs offloaded, the median pair), `bench tunnel --plot` throughput per second (ferry vs plain
//! WireGuard, the median run).

use anyhow::{Result, anyhow};
use plotters::prelude::*;

/// One line: its legend and its points `(x, y)`, x ascending.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// Legend.
    pub name: String,
    /// Points, x ascending.
    pub points: Vec<(f64, f64)>,
}

/// What one chart shows.
#[derive(Clone, Debug)]
pub struct Chart {
    /// Caption.
    pub title: String,
    /// The x axis' description.
    pub x_label: String,
    /// The y axis' description.
    pub y_label: String,
    /// The lines, drawn in this order.
    pub series: Vec<Series>,
}

/// A step trace `(t, value)` as drawn points: the value holds until the next sample, so each change is a
/// vertical step (a count of Ready pods does not move between two observations).
pub fn steps(trace: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(trace.len() * 2);
    for (i, &(t, v)) in trace.iter().enumerate() {
        if i > 0 {
            out.push((t, trace[i - 1].1));
        }
        out.push((t, v));
    }
    out
}

/// The axes' ranges that hold every point: from 0, with 5 % headroom (at least 1 unit when empty or flat).
fn ranges(series: &[Series]) -> (f64, f64) {
    let (mut x, mut y) = (0.0f64, 0.0f64);
    for (px, py) in series.iter().flat_map(|s| s.points.iter()) {
        x = x.max(*px);
        y = y.max(*py);
    }
    let pad = |m: f64| if m > 0.0 { m * 1.05 } else { 1.0 };
    (pad(x), pad(y))
}

const COLORS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

/// The chart as an SVG document (800 × 450).
pub fn svg(chart: &Chart) -> Result<String> {
    let (x_max, y_max) = ranges(&chart.series);
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (800, 450)).into_drawing_area();
        let e = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", chart.title);
        root.fill(&WHITE).map_err(|x| e(&x))?;
        let mut c = ChartBuilder::on(&root)
            .caption(&chart.title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)
            .map_err(|x| e(&x))?;
        c.configure_mesh()
            .x_desc(chart.x_label.as_str())
            .y_desc(chart.y_label.as_str())
            .draw()
            .map_err(|x| e(&x))?;
        for (i, s) in chart.series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            c.draw_series(LineSeries::new(s.points.iter().copied(), color.stroke_width(2)))
                .map_err(|x| e(&x))?
                .label(s.name.as_str())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        }
        c.configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|x| e(&x))?;
        root.present().map_err(|x| e(&x))?;
    }
    Ok(out)
}

/// Writes the chart to `path` (an `.svg` file).
pub fn write(path: &std::path::Path, chart: &Chart) -> Result<()> {
    std::fs::write(path, svg(chart)?).map_err(|e| anyhow!("writing the plot {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart(series: Vec<Series>) -> Chart {
        Chart {
            title: "pods Ready".into(),
            x_label: "seconds".into(),
            y_label: "pods".into(),
            series,
        }
    }

    #[test]
    fn steps_hold_each_value_until_the_next_sample() {
        assert_eq!(
            steps(&[(0.0, 0.0), (1.0, 5.0), (2.5, 9.0)]),
            vec![(0.0, 0.0), (1.0, 0.0), (1.0, 5.0), (2.5, 5.0), (2.5, 9.0)]
        );
        assert!(steps(&[]).is_empty());
    }

    #[test]
    fn ranges_hold_every_point_and_never_collapse() {
        let s = |p: Vec<(f64, f64)>| Series {
            name: "a".into(),
            points: p,
        };
        assert_eq!(ranges(&[]), (1.0, 1.0));
        let (x, y) = ranges(&[s(vec![(0.0, 0.0), (10.0, 100.0)]), s(vec![(20.0, 50.0)])]);
        assert!((x - 21.0).abs() < 1e-9 && (y - 105.0).abs() < 1e-9, "{x} {y}");
    }

    #[test]
    fn the_svg_has_one_line_per_series_and_the_labels() {
        let doc = svg(&chart(vec![
            Series {
                name: "direct".into(),
                points: vec![(0.0, 0.0), (5.0, 1000.0)],
            },
            Series {
                name: "offloaded".into(),
                points: vec![(0.0, 0.0), (7.0, 1000.0)],
            },
        ]))
        .unwrap();
        assert!(doc.starts_with("<svg"), "{}", &doc[..doc.len().min(200)]);
        for text in ["pods Ready", "seconds", "direct", "offloaded"] {
            assert!(doc.contains(text), "no {text:?} in the SVG");
        }
        // the two data lines, each in its own colour
        assert!(
            doc.contains("rgb(31,119,180)") || doc.contains("#1F77B4"),
            "first colour missing"
        );
        assert!(
            doc.contains("rgb(214,39,40)") || doc.contains("#D62728"),
            "second colour missing"
        );
        assert!(doc.matches("<polyline").count() >= 2, "{doc}");
    }

    #[test]
    fn an_empty_chart_still_draws() {
        assert!(svg(&chart(vec![])).unwrap().contains("pods Ready"));
    }
}
