//! The one results table (Markdown, printed and written to a file) and the chart.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use crate::BoxError;

/// How a row compares with its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
    /// A figure with no target of its own, reported for context.
    Info,
}

impl Verdict {
    pub fn check(ok: bool) -> Verdict {
        if ok {
            Verdict::Pass
        } else {
            Verdict::Fail
        }
    }

    fn text(self) -> &'static str {
        match self {
            Verdict::Pass => "**pass**",
            Verdict::Fail => "**FAIL**",
            Verdict::Info => "info",
        }
    }
}

/// One line of the table.
pub struct Row {
    pub scenario: String,
    pub exagate: String,
    pub bare: String,
    pub nginx: String,
    pub vs_bare: String,
    pub vs_nginx: String,
    pub target: String,
    pub verdict: Verdict,
}

impl Row {
    /// A row comparing one figure across the three servers (exagate, bare, nginx), each
    /// shown with `show`, with both ratios against exagate's.
    pub fn compared(
        scenario: String,
        values: [Option<f64>; 3],
        show: fn(Option<f64>) -> String,
        target: &str,
        verdict: Verdict,
    ) -> Row {
        Row {
            scenario,
            exagate: show(values[0]),
            bare: show(values[1]),
            nginx: show(values[2]),
            vs_bare: ratio(values[0], values[1]),
            vs_nginx: ratio(values[0], values[2]),
            target: target.to_string(),
            verdict,
        }
    }
}

/// Renders the table.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    out.push_str(
        "| scenario | exagate | bare hyper | nginx | exagate/bare | exagate/nginx | target | result |\n",
    );
    out.push_str("|---|---:|---:|---:|---:|---:|---|---|\n");
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.scenario,
            r.exagate,
            r.bare,
            r.nginx,
            r.vs_bare,
            r.vs_nginx,
            r.target,
            r.verdict.text()
        );
    }
    out
}

/// A ratio `a / b` to two decimals with a trailing ×, or "—" when either is missing.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 && a.is_finite() && b.is_finite() => {
            format!("{:.2}×", a / b)
        }
        _ => "—".to_string(),
    }
}

/// Requests per second, rounded.
pub fn rps(v: Option<f64>) -> String {
    v.map_or_else(|| "—".to_string(), |v| format!("{v:.0} req/s"))
}

/// Microseconds as `µs` below 10 ms, else `ms`.
pub fn micros(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() && v < 10_000.0 => format!("{v:.0} µs"),
        Some(v) if v.is_finite() => format!("{:.1} ms", v / 1000.0),
        _ => "—".to_string(),
    }
}

/// One server's curve: (connections, requests per second, p99 in microseconds).
pub struct Curve {
    pub server: &'static str,
    pub points: Vec<(usize, f64, f64)>,
}

/// Draws throughput and p99 against connections, one line per server.
pub fn chart(file: &Path, curves: &[Curve], subtitle: &str) -> Result<(), BoxError> {
    let root = SVGBackend::new(file, (900, 820)).into_drawing_area();
    root.fill(&WHITE)?;
    let (title, body) = root.split_vertically(60);
    title.draw(&Text::new(
        "exagate hits vs a bare hyper server vs nginx proxy_cache",
        (20, 10),
        ("sans-serif", 18).into_font(),
    ))?;
    title.draw(&Text::new(
        subtitle.to_string(),
        (20, 36),
        ("sans-serif", 12).into_font(),
    ))?;
    let (top, bottom) = body.split_vertically(385);
    let max_conns = curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.0))
        .max()
        .unwrap_or(200) as f64;
    let colours = [
        RGBColor(200, 60, 30),
        RGBColor(40, 90, 200),
        RGBColor(30, 150, 70),
    ];
    for (area, title, pick, unit) in [
        (
            &top,
            "hit throughput",
            (|p: &(usize, f64, f64)| p.1) as fn(&(usize, f64, f64)) -> f64,
            "requests / s",
        ),
        (
            &bottom,
            "hit latency p99 (closed loop, wrk)",
            (|p: &(usize, f64, f64)| p.2 / 1000.0) as fn(&(usize, f64, f64)) -> f64,
            "p99 latency (ms)",
        ),
    ] {
        let max_y = curves
            .iter()
            .flat_map(|c| c.points.iter().map(pick))
            .filter(|v| v.is_finite())
            .fold(0.0_f64, f64::max)
            * 1.15;
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..max_conns * 1.05, 0.0..max_y.max(1.0))?;
        chart
            .configure_mesh()
            .x_desc("connections")
            .y_desc(unit)
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| {
                if max_y < 20.0 {
                    format!("{v:.1}")
                } else {
                    format!("{v:.0}")
                }
            })
            .draw()?;
        for (curve, colour) in curves.iter().zip(colours.iter()) {
            let points: Vec<(f64, f64)> = curve
                .points
                .iter()
                .map(|p| (p.0 as f64, pick(p)))
                .filter(|p| p.1.is_finite())
                .collect();
            let colour = *colour;
            chart
                .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))?
                .label(curve.server)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                });
            chart.draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 4, colour.filled())),
            )?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
