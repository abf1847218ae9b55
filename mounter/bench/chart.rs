//! An SVG bar chart of the ratios to kernel overlayfs (plotters, SVG backend).

use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;

use super::report::Row;
use super::workload::Workload;

/// Bars above this are drawn cut, their value written on top.
const CAP: f64 = 10.0;

pub fn write_svg(
    path: &Path,
    workloads: &[&Workload],
    targets: &[String],
    rows: &[Row],
) -> anyhow::Result<()> {
    let others: Vec<&String> = targets.iter().filter(|t| *t != "overlay").collect();
    let ratio = |w: &str, t: &str| {
        rows.iter()
            .find(|r| r.workload == w && r.target == t)
            .and_then(|r| r.ratio)
    };
    let top = workloads
        .iter()
        .flat_map(|w| others.iter().filter_map(|t| ratio(w.name, t)))
        .fold(1.0f64, f64::max)
        .min(CAP)
        * 1.1;
    let n = workloads.len();
    let root = SVGBackend::new(path, (1200, 640)).into_drawing_area();
    let e = |e: &dyn std::fmt::Display| anyhow!("drawing the chart: {e}");
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "unionmount bench: time relative to kernel overlayfs (1 = same, lower is faster)",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(150)
        .y_label_area_size(50)
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..top)
        .map_err(|x| e(&x))?;
    let label = |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 1e-6 && i >= 0.0 {
            workloads
                .get(i as usize)
                .map_or(String::new(), |w| w.name.to_string())
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&label)
        .x_label_style(
            ("sans-serif", 13)
                .into_font()
                .transform(FontTransform::Rotate90),
        )
        .y_desc("× kernel overlayfs")
        .draw()
        .map_err(|x| e(&x))?;
    let width = 0.8 / others.len().max(1) as f64;
    for (k, t) in others.iter().enumerate() {
        let color = Palette99::pick(k).to_rgba();
        let bars: Vec<Rectangle<(f64, f64)>> = workloads
            .iter()
            .enumerate()
            .filter_map(|(i, w)| {
                let v = ratio(w.name, t)?.min(CAP);
                let x0 = i as f64 - 0.4 + k as f64 * width;
                Some(Rectangle::new(
                    [(x0, 0.0), (x0 + width * 0.9, v)],
                    color.filled(),
                ))
            })
            .collect();
        chart
            .draw_series(bars)
            .map_err(|x| e(&x))?
            .label(t.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        let cut: Vec<Text<'_, (f64, f64), String>> = workloads
            .iter()
            .enumerate()
            .filter_map(|(i, w)| {
                let v = ratio(w.name, t).filter(|&v| v > CAP)?;
                let x0 = i as f64 - 0.4 + k as f64 * width;
                Some(Text::new(
                    format!("{v:.0}"),
                    (x0, CAP * 1.05),
                    ("sans-serif", 11).into_font(),
                ))
            })
            .collect();
        chart.draw_series(cut).map_err(|x| e(&x))?;
    }
    chart
        .draw_series(LineSeries::new([(-0.5, 1.0), (n as f64 - 0.5, 1.0)], BLACK))
        .map_err(|x| e(&x))?
        .label("kernel overlayfs = 1")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 12, y)], BLACK));
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))?;
    Ok(())
}
