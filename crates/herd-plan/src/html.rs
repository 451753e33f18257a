//! The report as one self-contained HTML page: tables and SVG charts drawn with `plotters`,
//! inlined (no script, no network).

use herd_api::units::human_bytes;
use plotters::prelude::*;

use crate::Report;

const W: u32 = 720;
const H: u32 = 320;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

type Series = (String, Vec<(f64, f64)>, RGBColor);

fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (W, H)).into_drawing_area();
        let _ = root.fill(&WHITE);
        let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0.0f64);
        for (_, pts, _) in series {
            for (x, y) in pts {
                x0 = x0.min(*x);
                x1 = x1.max(*x);
                y1 = y1.max(*y);
            }
        }
        if x0 >= x1 {
            x0 = 0.0;
            x1 = x1.max(1.0);
        }
        let y1 = if y1 <= 0.0 { 1.0 } else { y1 * 1.1 };
        let chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(x0..x1, 0.0..y1);
        let Ok(mut chart) = chart else {
            return String::new();
        };
        let _ = chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .draw();
        for (name, pts, color) in series {
            let c = *color;
            if let Ok(a) =
                chart.draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))
            {
                a.label(name.as_str())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c));
            }
        }
        let _ = chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw();
        let _ = root.present();
    }
    svg
}

const BLUE_: RGBColor = RGBColor(31, 119, 180);
const ORANGE_: RGBColor = RGBColor(255, 127, 14);
const GREEN_: RGBColor = RGBColor(44, 160, 44);

/// Cost per hour over Monday (hour 0..24) for the three options.
pub fn cost_per_hour_svg(r: &Report) -> String {
    let c = &r.costs;
    let flat = |v: f64| (0..=24).map(|h| (h as f64, v)).collect::<Vec<_>>();
    let auto: Vec<(f64, f64)> = (0..=24)
        .map(|h| {
            (
                h as f64,
                c.autoscaled_hourly[h.min(23)] as f64 * c.autoscaled.hourly_price,
            )
        })
        .collect();
    line_chart(
        "Cost per hour over a weekday",
        "hour of the day",
        "cost per hour",
        &[
            (
                c.baseline.name.clone(),
                flat(c.baseline.machines as f64 * c.baseline.hourly_price),
                ORANGE_,
            ),
            (
                c.shared.name.clone(),
                flat(c.shared.machines as f64 * c.shared.hourly_price),
                BLUE_,
            ),
            (c.autoscaled.name.clone(), auto, GREEN_),
        ],
    )
}

/// Machines in each hour of the week for herd + autoscaling.
pub fn machines_per_hour_svg(r: &Report) -> String {
    let pts: Vec<(f64, f64)> = r
        .costs
        .autoscaled_hourly
        .iter()
        .enumerate()
        .map(|(h, m)| (h as f64 / 24.0, *m as f64))
        .collect();
    line_chart(
        "Machines per hour over a week (herd + autoscaling)",
        "day of the week (0 = Monday)",
        "machines",
        &[("machines".into(), pts, GREEN_)],
    )
}

/// Hit ratio against budget (MiB), one line per policy.
pub fn hit_ratio_svg(r: &Report) -> String {
    let mut series: Vec<Series> = Vec::new();
    for (p, color) in [("gdsf", BLUE_), ("lru", ORANGE_)] {
        let pts: Vec<(f64, f64)> = r
            .simulation
            .iter()
            .filter(|s| s.policy == p)
            .map(|s| (s.budget as f64 / (1024.0 * 1024.0), s.hit_ratio))
            .collect();
        if !pts.is_empty() {
            series.push((p.to_uppercase(), pts, color));
        }
    }
    if series.is_empty() {
        return String::new();
    }
    line_chart(
        "Hit ratio against budget",
        "budget (MiB)",
        "hit ratio",
        &series,
    )
}

/// The whole page.
pub fn render(r: &Report) -> String {
    let mut h = String::new();
    let title = r.title.clone().unwrap_or_else(|| "herd plan".into());
    h.push_str(&format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{}</title><style>\
body{{font-family:sans-serif;max-width:800px;margin:2em auto;color:#222}}\
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}\
td:first-child,th:first-child{{text-align:left}}.note{{color:#666;font-size:90%}}</style></head><body>",
        esc(&title)
    ));
    h.push_str(&format!("<h1>{}</h1>", esc(&title)));
    h.push_str(&format!(
        "<p>{} models, {} in all; peak {:.1} req/s. One herd machine holds {} models in a budget of {}. <span class=\"note\">Prices as of {}.</span></p>",
        r.models,
        human_bytes(r.total_charge),
        r.requests_per_second_peak,
        r.costs.models_per_machine,
        human_bytes(r.costs.machine_budget),
        esc(&r.prices_as_of)
    ));
    h.push_str("<table><tr><th>option</th><th>instance type</th><th>machines (avg)</th><th>monthly cost</th><th>saving</th></tr>");
    for o in [&r.costs.baseline, &r.costs.shared, &r.costs.autoscaled] {
        h.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{} ({:.2})</td><td>{:.0}</td><td>{:.1}%</td></tr>",
            esc(&o.name),
            esc(&o.instance_type),
            o.machines,
            o.average_machines,
            o.monthly_cost,
            o.saving * 100.0
        ));
    }
    h.push_str("</table>");
    if let Some(t) = &r.tco {
        h.push_str(
            "<h2>Cost of ownership</h2><table><tr><th>option</th><th>upfront</th><th>monthly</th>",
        );
        for m in &t.months {
            h.push_str(&format!("<th>{m} months</th>"));
        }
        h.push_str("</tr>");
        for o in &t.options {
            h.push_str(&format!(
                "<tr><td>{}</td><td>{:.0}</td><td>{:.0}</td>",
                esc(&o.name),
                o.upfront,
                o.monthly
            ));
            for v in &o.totals {
                h.push_str(&format!("<td>{v:.0}</td>"));
            }
            h.push_str("</tr>");
        }
        h.push_str("</table>");
    }
    h.push_str("<h2>Charts</h2>");
    h.push_str(&cost_per_hour_svg(r));
    h.push_str(&machines_per_hour_svg(r));
    if !r.simulation.is_empty() {
        h.push_str(&hit_ratio_svg(r));
        h.push_str("<h2>Cache simulation</h2><table><tr><th>policy</th><th>budget</th><th>hit ratio</th><th>loads</th><th>loads/h</th><th>loading s</th><th>added p99 ms</th><th>timeouts</th></tr>");
        for s in &r.simulation {
            // As the text table: beyond the request timeout the p99 request never completes.
            let p99 = if s.p99_added_ms > crate::sim::default_timeout_secs() * 1e3 {
                "&gt; timeout".to_string()
            } else {
                format!("{:.1}", s.p99_added_ms)
            };
            h.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{:.4}</td><td>{}</td><td>{:.1}</td><td>{:.1}</td><td>{p99}</td><td>{}</td></tr>",
                s.policy,
                human_bytes(s.budget),
                s.hit_ratio,
                s.loads,
                s.loads_per_hour,
                s.load_seconds,
                s.timeouts
            ));
        }
        h.push_str("</table>");
    }
    if let Some(p) = &r.published {
        h.push_str(&format!("<p class=\"note\">Published: {}</p>", esc(p)));
    }
    if let Some(i) = &r.inputs {
        h.push_str(&format!("<p class=\"note\">Inputs: {}</p>", esc(i)));
    }
    h.push_str("</body></html>\n");
    h
}
