//! SVG charts of a `compare` run (plotters, SVG backend only): the throughput of every
//! case beside its references, and one download's received bytes over time per source.

use plotters::prelude::*;

/// One download's verified bytes over time: (seconds since `download-begin`, source,
/// bytes of that chunk), in the order they were verified.
pub type Curve = Vec<(f64, String, u64)>;

/// A bar per case: (label, MiB/s); `title` above.
pub fn throughput_svg(title: &str, cases: &[(String, f64)]) -> Result<String, String> {
    let mut svg = String::new();
    bars(title, cases, &mut svg).map_err(|e| e.to_string())?;
    Ok(svg)
}

fn bars(
    title: &str,
    cases: &[(String, f64)],
    out: &mut String,
) -> Result<(), Box<dyn std::error::Error>> {
    let top = cases.iter().map(|c| c.1).fold(1.0, f64::max) * 1.15;
    let root =
        SVGBackend::with_string(out, (900, 120 + 48 * cases.len() as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let n = cases.len().max(1) as i32;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(260)
        .build_cartesian_2d(0.0..top, 0..n)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_desc("MiB/s")
        .y_labels(cases.len().max(1))
        .y_label_formatter(&|i| {
            let i = usize::try_from(*i).unwrap_or(usize::MAX);
            cases.get(i).map(|c| c.0.clone()).unwrap_or_default()
        })
        .draw()?;
    chart.draw_series(cases.iter().enumerate().map(|(i, (label, v))| {
        let i = i as i32;
        let color = if label.starts_with("S37") {
            RGBColor(31, 119, 180)
        } else {
            RGBColor(150, 150, 150)
        };
        Rectangle::new([(0.0, i), (*v, i + 1)], color.filled())
    }))?;
    chart.draw_series(cases.iter().enumerate().map(|(i, (_, v))| {
        Text::new(
            format!("{v:.0}"),
            (*v + top * 0.01, i as i32),
            ("sans-serif", 14),
        )
    }))?;
    root.present()?;
    Ok(())
}

/// Received bytes over time, one line per source and one for the total.
pub fn download_svg(title: &str, curve: &Curve) -> Result<String, String> {
    let mut svg = String::new();
    lines(title, curve, &mut svg).map_err(|e| e.to_string())?;
    Ok(svg)
}

fn lines(title: &str, curve: &Curve, out: &mut String) -> Result<(), Box<dyn std::error::Error>> {
    let mut sources: Vec<&str> = curve.iter().map(|c| c.1.as_str()).collect();
    sources.sort_unstable();
    sources.dedup();
    let end = curve.iter().map(|c| c.0).fold(0.1, f64::max) * 1.05;
    let total: u64 = curve.iter().map(|c| c.2).sum();
    let mib = |b: u64| b as f64 / 1048576.0;
    let root = SVGBackend::with_string(out, (900, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..end, 0.0..(mib(total).max(1.0) * 1.05))?;
    chart
        .configure_mesh()
        .x_desc("seconds since download-begin")
        .y_desc("MiB received (verified)")
        .draw()?;
    let step = |pick: &dyn Fn(&str) -> bool| {
        let mut sum = 0u64;
        let mut points = vec![(0.0, 0.0)];
        for (t, src, len) in curve {
            if pick(src) {
                sum += len;
                points.push((*t, mib(sum)));
            }
        }
        points
    };
    chart
        .draw_series(LineSeries::new(step(&|_| true), BLACK.stroke_width(2)))?
        .label("all sources")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], BLACK));
    for (i, src) in sources.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let short: String = src.chars().take(8).collect();
        chart
            .draw_series(LineSeries::new(step(&|s| s == *src), color.stroke_width(2)))?
            .label(format!("source {short}"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_name_their_cases_and_sources() {
        let cases = vec![
            ("raw quinn".to_owned(), 700.0),
            ("S37 → tmpfs".to_owned(), 420.0),
        ];
        let svg = throughput_svg("compare", &cases).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("raw quinn") && svg.contains("S37 → tmpfs") && svg.contains("420"));
        let curve = vec![
            (0.5, "aaaaaaaaaaaa".to_owned(), 32 << 20),
            (0.9, "bbbbbbbbbbbb".to_owned(), 32 << 20),
        ];
        let svg = download_svg("S37", &curve).unwrap();
        assert!(svg.contains("source aaaaaaaa") && svg.contains("source bbbbbbbb"));
        assert!(svg.contains("all sources"));
    }
}
