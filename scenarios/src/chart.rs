//! SVG charts of a swarm lab run (plotters, SVG backend only): every client's received
//! bytes over time above, the server's upload rate below, on one time axis, so a run can
//! be seen at a glance.

use plotters::prelude::*;

use crate::swarm_lab::LabReport;

/// Draws `report` as an SVG document.
pub fn swarm_svg(report: &LabReport) -> Result<String, String> {
    let mut svg = String::new();
    draw(report, &mut svg).map_err(|e| e.to_string())?;
    Ok(svg)
}

fn draw(report: &LabReport, out: &mut String) -> Result<(), Box<dyn std::error::Error>> {
    let s = report.shape;
    let t_min = s.t_min().as_secs_f64();
    let end = report
        .clients
        .iter()
        .flat_map(|c| c.curve.iter().map(|p| p.0))
        .fold(t_min, f64::max)
        * 1.05;
    let mib = report.game_bytes as f64 / 1048576.0;
    let root = SVGBackend::with_string(out, (1000, 760)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(480);
    let title = format!(
        "swarm lab: {} clients, {} MiB, {} Mbit/s links{}{} — slowest {:.2}, median {:.2} x T_min, server {:.2} F",
        s.clients,
        s.mib,
        s.mbit,
        if s.stagger_ms == 0 {
            String::new()
        } else {
            format!(", start every {} ms", s.stagger_ms)
        },
        report
            .killed_s
            .map_or(String::new(), |k| format!(", server killed at {k:.0} s")),
        report.slowest_ratio(),
        report.median_ratio(),
        report.server_copies(),
    );
    let mut received = ChartBuilder::on(&top)
        .caption(title, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..end, 0.0..mib * 1.05)?;
    received
        .configure_mesh()
        .x_desc("s since the first start")
        .y_desc("MiB received")
        .draw()?;
    for (i, c) in report.clients.iter().enumerate() {
        let colour = Palette99::pick(i).to_rgba();
        received.draw_series(LineSeries::new(
            c.curve.iter().map(|&(t, b)| (t, b as f64 / 1048576.0)),
            colour.stroke_width(1),
        ))?;
    }
    received.draw_series(LineSeries::new(
        [(t_min, 0.0), (t_min, mib * 1.05)],
        BLACK.mix(0.5).stroke_width(1),
    ))?;
    let top_rate = report
        .server_rate
        .iter()
        .map(|p| p.1)
        .fold(s.mbit as f64, f64::max)
        * 1.1;
    let mut rate = ChartBuilder::on(&bottom)
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..end, 0.0..top_rate)?;
    rate.configure_mesh()
        .x_desc("s (vertical line above: T_min)")
        .y_desc("server upload, Mbit/s")
        .draw()?;
    rate.draw_series(LineSeries::new(
        report.server_rate.iter().copied(),
        RED.stroke_width(2),
    ))?;
    drop(received);
    drop(rate);
    root.present()?;
    Ok(())
}
