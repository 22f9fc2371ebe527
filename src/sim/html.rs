//! The HTML report: one self-contained file (inline SVG, no scripts, no network) with the
//! TTFT and E2E CDFs per policy, requests routed to each pool over time and mean latency
//! over time, so a report opens offline in any browser.

use super::report::Report;
use std::fmt::Write as _;

const PALETTE: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// One line of a chart: a name and its (x, y) points.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// An SVG line chart. With `log_x` the x axis is logarithmic (for latency CDFs).
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    log_x: bool,
) -> String {
    let (w, h, ml, mr, mt, mb) = (640.0, 320.0, 60.0, 150.0, 30.0, 45.0);
    let tx = |x: f64| if log_x { x.max(1e-3).log10() } else { x };
    let pts = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, 0.0f64, f64::MIN);
    for &(x, y) in pts {
        x0 = x0.min(tx(x));
        x1 = x1.max(tx(x));
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11"><text x="{}" y="18" font-size="13" font-weight="bold">{}</text>"#,
        ml,
        escape(title)
    );
    if x0 > x1 || y1 <= y0 {
        svg.push_str(r#"<text x="80" y="150">no data</text></svg>"#);
        return svg;
    }
    if x1 - x0 < 1e-9 {
        x1 = x0 + 1.0;
    }
    let pw = w - ml - mr;
    let ph = h - mt - mb;
    let sx = |x: f64| ml + (tx(x) - x0) / (x1 - x0) * pw;
    let sy = |y: f64| mt + ph - (y - y0) / (y1 - y0) * ph;
    let _ = write!(
        svg,
        r##"<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>"##
    );
    for i in 0..=4 {
        let f = f64::from(i) / 4.0;
        let xv = x0 + f * (x1 - x0);
        let label = if log_x { 10f64.powf(xv) } else { xv };
        let yv = y0 + f * (y1 - y0);
        let _ = write!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text><line x1="{ml}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#eee"/>"##,
            ml + f * pw,
            mt + ph + 14.0,
            short(label),
            ml - 4.0,
            sy(yv) + 4.0,
            short(yv),
            ml + pw,
            sy(yv),
            sy(yv)
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text><text x="14" y="{:.1}" transform="rotate(-90 14 {:.1})" text-anchor="middle">{}</text>"#,
        ml + pw / 2.0,
        h - 8.0,
        escape(x_label),
        mt + ph / 2.0,
        mt + ph / 2.0,
        escape(y_label)
    );
    for (i, s) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let path: Vec<String> = s
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{color}" stroke-width="1.8" points="{}"/><rect x="{:.1}" y="{:.1}" width="10" height="10" fill="{color}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            path.join(" "),
            ml + pw + 10.0,
            mt + 14.0 * i as f64,
            ml + pw + 24.0,
            mt + 9.0 + 14.0 * i as f64,
            escape(&s.name)
        );
    }
    svg.push_str("</svg>");
    svg
}

fn short(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Renders the whole report as one HTML page.
pub fn render(report: &Report) -> String {
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>dujiang {} report</title><style>body{{font-family:sans-serif;margin:24px;color:#222}}table{{border-collapse:collapse;font-size:12px}}td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}}td:first-child,th:first-child{{text-align:left}}.charts{{display:flex;flex-wrap:wrap;gap:12px}}</style></head><body>",
        escape(&report.source)
    );
    let _ = write!(
        html,
        "<h1>dujiang {}</h1><p>trace <b>{}</b>, fleet <b>{}</b>, seed {}; {:.1} s simulated in {:.2} s wall.</p>",
        escape(&report.source),
        escape(&report.trace),
        escape(&report.fleet),
        report.seed,
        report.simulated_seconds,
        report.wall_seconds
    );
    html.push_str("<table><tr><th>policy / pool</th><th>requests</th><th>completed</th><th>rejected</th><th>TTFT p50 ms</th><th>TTFT p99 ms</th><th>TPOT p99 ms</th><th>E2E p50 ms</th><th>E2E p99 ms</th><th>queue p99 ms</th><th>SLO attainment</th><th>goodput req/s</th><th>cost $</th><th>domestic tokens</th></tr>");
    for p in &report.policies {
        let rows =
            std::iter::once((p.policy.clone(), &p.stats)).chain(p.pools.iter().map(|pool| {
                (
                    format!(
                        "&nbsp;&nbsp;{} ({})",
                        escape(&pool.pool),
                        escape(&pool.chip)
                    ),
                    &pool.stats,
                )
            }));
        for (name, s) in rows {
            let _ = write!(
                html,
                "<tr><td>{name}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td><td>{:.0}</td><td>{:.0}</td><td>{:.1}</td><td>{:.1}%</td><td>{:.2}</td><td>{:.2}</td><td>{:.1}%</td></tr>",
                s.requests,
                s.completed,
                s.rejected,
                s.ttft_ms.p50,
                s.ttft_ms.p99,
                s.tpot_ms.p99,
                s.e2e_ms.p50,
                s.e2e_ms.p99,
                s.queue_ms.p99,
                s.slo_attainment * 100.0,
                s.goodput_rps,
                s.cost_usd,
                s.domestic_token_share * 100.0
            );
        }
    }
    html.push_str("</table><div class=\"charts\">");
    let cdf = |pick: fn(&super::report::PolicyReport) -> &Vec<(f64, f64)>| -> Vec<Series> {
        report
            .policies
            .iter()
            .map(|p| Series {
                name: p.policy.clone(),
                points: pick(p).clone(),
            })
            .collect()
    };
    html.push_str(&line_chart(
        "TTFT CDF",
        "TTFT (ms, log)",
        "fraction of requests",
        &cdf(|p| &p.ttft_cdf),
        true,
    ));
    html.push_str(&line_chart(
        "End-to-end latency CDF",
        "E2E (ms, log)",
        "fraction of requests",
        &cdf(|p| &p.e2e_cdf),
        true,
    ));
    let over_time = |f: fn(&super::report::TimelineBucket) -> f64| -> Vec<Series> {
        report
            .policies
            .iter()
            .map(|p| Series {
                name: p.policy.clone(),
                points: p
                    .timeline
                    .iter()
                    .filter(|b| b.completed > 0)
                    .map(|b| (b.start_s, f(b)))
                    .collect(),
            })
            .collect()
    };
    html.push_str(&line_chart(
        "Mean TTFT over time",
        "simulated time (s)",
        "TTFT (ms)",
        &over_time(|b| b.mean_ttft_ms),
        false,
    ));
    html.push_str(&line_chart(
        "Mean E2E over time",
        "simulated time (s)",
        "E2E (ms)",
        &over_time(|b| b.mean_e2e_ms),
        false,
    ));
    for p in &report.policies {
        let width = p.timeline_bucket_s.max(1e-9);
        let series: Vec<Series> = p
            .pools
            .iter()
            .enumerate()
            .map(|(i, pool)| Series {
                name: pool.pool.clone(),
                points: p
                    .timeline
                    .iter()
                    .map(|b| {
                        (
                            b.start_s,
                            b.routed_by_pool.get(i).copied().unwrap_or(0) as f64 / width,
                        )
                    })
                    .collect(),
            })
            .collect();
        html.push_str(&line_chart(
            &format!("Requests routed per pool ({})", p.policy),
            "simulated time (s)",
            "requests / s",
            &series,
            false,
        ));
    }
    html.push_str("</div></body></html>\n");
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_is_self_contained_svg_with_every_series() {
        let s = line_chart(
            "t<1>",
            "x",
            "y",
            &[
                Series {
                    name: "a".into(),
                    points: vec![(1.0, 0.0), (10.0, 1.0)],
                },
                Series {
                    name: "b&c".into(),
                    points: vec![(2.0, 0.5)],
                },
            ],
            true,
        );
        assert!(s.starts_with("<svg") && s.ends_with("</svg>"));
        assert_eq!(s.matches("<polyline").count(), 2);
        assert!(s.contains("t&lt;1&gt;") && s.contains("b&amp;c"));
        assert!(!s.contains("http://") || s.contains("xmlns=\"http://www.w3.org/2000/svg\""));
    }

    #[test]
    fn empty_chart_says_so() {
        assert!(line_chart("t", "x", "y", &[], false).contains("no data"));
    }
}
