//! PNG charts for the report: throughput over time, freshness over time, latency distribution.
//!
//! Text is drawn with DejaVu Sans, embedded in the binary (the `dejavu` crate) and registered
//! with plotters' `ab_glyph` renderer, so charts render the same on a machine with no fonts.

use std::path::Path;
use std::sync::Once;

use anyhow::anyhow;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use super::latency::Latencies;

const FONT: &str = "sans-serif";
const SIZE: (u32, u32) = (1100, 620);

fn register_fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // DejaVu Sans is a valid TrueType font: registration cannot fail.
        let _ = register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
        let _ = register_font(FONT, FontStyle::Bold, dejavu::sans::bold());
    });
}

fn error(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("cannot draw the chart: {e}")
}

/// A line chart of named series of `(x, y)` points.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(&str, &[(f64, f64)])],
) -> anyhow::Result<()> {
    draw_lines(path, title, x_label, y_label, series, None)
}

fn draw_lines(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(&str, &[(f64, f64)])],
    x_format: Option<&dyn Fn(&f64) -> String>,
) -> anyhow::Result<()> {
    register_fonts();
    let points = || series.iter().flat_map(|(_, p)| p.iter());
    let x_min = points().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let x_max = points().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
    let y_max = points().map(|p| p.1).fold(0.0, f64::max);
    let (x_min, x_max) = if x_min.is_finite() && x_max > x_min {
        (x_min, x_max)
    } else if x_min.is_finite() {
        (x_min, x_min + 1.0)
    } else {
        (0.0, 1.0)
    };
    let y_max = if y_max > 0.0 { y_max * 1.08 } else { 1.0 };

    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 26).into_font().style(FontStyle::Bold))
        .margin(18)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(x_min..x_max, 0.0..y_max)
        .map_err(error)?;
    let y_format = |y: &f64| compact_number(*y);
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(x_label)
        .y_desc(y_label)
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 17))
        .y_label_formatter(&y_format)
        .light_line_style(RGBColor(235, 235, 235));
    match x_format {
        // The x axis is in decades of the tail: one label per decade.
        Some(format) => mesh
            .x_label_formatter(format)
            .x_labels((x_max - x_min).ceil() as usize + 1),
        None => mesh.x_label_formatter(&y_format),
    };
    mesh.draw().map_err(error)?;
    for (i, (name, points)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(error)?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(3))
            });
    }
    if series.iter().any(|(name, _)| !name.is_empty()) {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .label_font((FONT, 15))
            .draw()
            .map_err(error)?;
    }
    root.present().map_err(error)?;
    Ok(())
}

/// 1234567 → "1.23M", 15300 → "15.3k", 0.25 → "0.25".
pub fn compact_number(value: f64) -> String {
    let abs = value.abs();
    let (scaled, suffix) = if abs >= 1e9 {
        (value / 1e9, "G")
    } else if abs >= 1e6 {
        (value / 1e6, "M")
    } else if abs >= 1e4 {
        (value / 1e3, "k")
    } else {
        (value, "")
    };
    let text = if scaled.fract().abs() < 1e-9 || scaled.abs() >= 100.0 {
        format!("{scaled:.0}")
    } else if scaled.abs() >= 10.0 {
        format!("{scaled:.1}")
    } else {
        format!("{scaled:.2}")
    };
    format!("{text}{suffix}")
}

/// Messages (or rows) per second over the run, one line per series (produced, ingested, ...).
pub fn throughput_chart(path: &Path, series: &[(&str, &[(f64, f64)])]) -> anyhow::Result<()> {
    line_chart(
        path,
        "Throughput over time",
        "seconds since start",
        "per second",
        series,
    )
}

/// Freshness samples (milliseconds from produce to visible, one line per where it was seen)
/// over the run.
pub fn freshness_chart(path: &Path, series: &[(&str, &[(f64, f64)])]) -> anyhow::Result<()> {
    line_chart(
        path,
        "Freshness over time (produced to seen)",
        "seconds since start",
        "milliseconds",
        series,
    )
}

/// Latency by percentile, one line per route; the x axis stretches the tail (50%, 90%, 99%,
/// 99.9%, ... are evenly spaced).
pub fn latency_chart(path: &Path, latencies: &Latencies) -> anyhow::Result<()> {
    let curves: Vec<(String, Vec<(f64, f64)>)> = latencies
        .routes()
        .filter(|(_, h)| !h.is_empty())
        .map(|(route, h)| {
            // x = -log10(1 - q), up to the last recorded value's quantile.
            let max_x = (h.len() as f64).log10().clamp(1.0, 5.0);
            let points = (0..=((max_x * 40.0) as usize))
                .map(|i| {
                    let x = i as f64 / 40.0;
                    let quantile = 1.0 - 10f64.powf(-x);
                    (x, h.value_at_quantile(quantile) as f64 / 1000.0)
                })
                .collect();
            (route.to_string(), points)
        })
        .collect();
    let series: Vec<(&str, &[(f64, f64)])> = curves
        .iter()
        .map(|(route, points)| (route.as_str(), points.as_slice()))
        .collect();
    let format = |x: &f64| {
        if (x - x.round()).abs() > 1e-6 {
            return String::new();
        }
        let percentile = 100.0 * (1.0 - 10f64.powf(-x.round()));
        let text = format!("{percentile:.4}");
        let text = text.trim_end_matches('0').trim_end_matches('.');
        format!("{text}%")
    };
    draw_lines(
        path,
        "Latency by percentile",
        "percentile",
        "milliseconds",
        &series,
        Some(&format),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_compact() {
        assert_eq!(compact_number(1_234_567.0), "1.23M");
        assert_eq!(compact_number(15_300.0), "15.3k");
        assert_eq!(compact_number(250.0), "250");
        assert_eq!(compact_number(0.25), "0.25");
    }
}
