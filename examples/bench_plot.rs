//! Draws one bench run (`scripts/bench`) into a PNG, each figure beside its
//! target: deliveries per second over time in the backlog drain, the accept
//! latency percentiles, the relay runs' share of their ideal rate, and the
//! list of targets met or not.
//!
//! ```text
//! bench_plot --summary target/bench/summary.json [--drain target/bench/drain-series.json]
//!            [--out target/bench/bench.png] [--font /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf]
//! ```
//!
//! Text is drawn with ab_glyph from the TTF file given by `--font`, read at
//! run time: no font library of the system is needed to build or run it.

use std::error::Error;
use std::process::ExitCode;

use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};
use serde_json::Value;

type Res<T> = Result<T, Box<dyn Error>>;

const USAGE: &str = "usage: bench_plot --summary SUMMARY.json [--drain DRAIN.json] [--out OUT.png] [--font FONT.ttf]";
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const MEASURED: RGBColor = RGBColor(31, 119, 180);
const OTHER: RGBColor = RGBColor(255, 127, 14);
const TARGET: RGBColor = RGBColor(214, 39, 40);
const MET: RGBColor = RGBColor(44, 160, 44);

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_plot: {e}\n{USAGE}");
            ExitCode::from(1)
        }
    }
}

fn arg(args: &[String], key: &str) -> Option<String> {
    args.iter()
        .position(|a| a == key)
        .and_then(|i| args.get(i + 1).cloned())
}

fn read_json(path: &str) -> Res<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    Ok(serde_json::from_str(&text).map_err(|e| format!("{path}: {e}"))?)
}

fn run() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let summary = read_json(&arg(&args, "--summary").ok_or("--summary is required")?)?;
    // A run without the drain phase has no series: its panel says so.
    let drain = arg(&args, "--drain")
        .filter(|p| std::path::Path::new(p).exists())
        .map(|p| read_json(&p))
        .transpose()?;
    let out = arg(&args, "--out").unwrap_or_else(|| "target/bench/bench.png".into());
    let font = arg(&args, "--font").unwrap_or_else(|| FONT.into());
    let bytes = std::fs::read(&font).map_err(|e| format!("--font {font}: {e}"))?;
    register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(bytes.into_boxed_slice()),
    )
    .map_err(|_| format!("--font {font}: not a font ab_glyph can read"))?;

    let root = BitMapBackend::new(&out, (1400, 1000)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "email-service bench, {}, {} cores, {}{}",
        summary["when"].as_str().unwrap_or("?"),
        summary["cores"],
        summary["commit"].as_str().unwrap_or("?"),
        if summary["quick"].as_bool() == Some(true) {
            " (--quick)"
        } else {
            ""
        }
    );
    let root = root.titled(&title, ("sans-serif", 24))?;
    let panels = root.split_evenly((2, 2));
    let figures = &summary["figures"];
    drain_panel(&panels[0], drain.as_ref(), &figures["drain"])?;
    accept_panel(&panels[1], figures)?;
    relay_panel(&panels[2], figures)?;
    targets_panel(&panels[3], &summary["rows"])?;
    root.present()?;
    println!("{out}");
    Ok(())
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

fn nothing(area: &Area, what: &str) -> Res<()> {
    area.draw(&Text::new(
        format!("{what}: not measured in this run"),
        (30, 40),
        ("sans-serif", 18).into_font(),
    ))?;
    Ok(())
}

/// Deliveries per second over the drain, each point over the second
/// before it, beside the target (half the sink's capacity).
fn drain_panel(area: &Area, series: Option<&Value>, figure: &Value) -> Res<()> {
    let (Some(series), Some(capacity)) = (series, figure["sink_capacity_per_s"].as_f64()) else {
        return nothing(area, "backlog drain");
    };
    let points: Vec<(f64, f64)> = series["series"]
        .as_array()
        .ok_or("drain series: no `series`")?
        .iter()
        .filter_map(|p| Some((p[0].as_f64()?, p[1].as_f64()?)))
        .collect();
    let mut rates = Vec::new();
    let mut j = 0;
    for &(t, c) in &points {
        while j + 1 < points.len() && points[j + 1].0 <= t - 1.0 {
            j += 1;
        }
        let (t0, c0) = points[j];
        if t - t0 >= 0.5 {
            rates.push((t, (c - c0) / (t - t0)));
        }
    }
    let target = capacity * 0.5;
    let mean = figure["deliveries_per_s"].as_f64().unwrap_or(0.0);
    let x_max = points.last().map_or(1.0, |p| p.0).max(1.0);
    let y_max = rates.iter().map(|r| r.1).fold(target, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!(
                "backlog drain of {}: deliveries/s",
                figure["backlog"].as_u64().unwrap_or(0)
            ),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the service was started")
        .y_desc("deliveries/s")
        .draw()?;
    chart
        .draw_series(LineSeries::new(rates, MEASURED.stroke_width(2)))?
        .label("over the last second")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], MEASURED));
    chart
        .draw_series(LineSeries::new(vec![(0.0, mean), (x_max, mean)], OTHER))?
        .label(format!("mean {mean:.0}/s"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], OTHER));
    chart
        .draw_series(LineSeries::new(
            vec![(0.0, target), (x_max, target)],
            TARGET.stroke_width(2),
        ))?
        .label(format!("target 0.5 × sink ({target:.0}/s)"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], TARGET));
    legend(&mut chart)
}

fn legend<'a, CT: CoordTranslate>(chart: &mut ChartContext<'a, BitMapBackend<'a>, CT>) -> Res<()> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()?;
    Ok(())
}

const PERCENTILES: [(&str, &str); 5] = [
    ("p50", "p50_ms"),
    ("p90", "p90_ms"),
    ("p99", "p99_ms"),
    ("p99.9", "p999_ms"),
    ("max", "max_ms"),
];

/// The accept runs' latency percentiles (empty tables, and with the old
/// rows), beside the p99 target.
fn accept_panel(area: &Area, figures: &Value) -> Res<()> {
    let runs: Vec<(&str, &Value, RGBColor)> = [
        ("empty tables", &figures["accept"], MEASURED),
        ("with the old rows", &figures["accept_1m_rows"], OTHER),
    ]
    .into_iter()
    .filter(|r| r.1.is_object())
    .collect();
    if runs.is_empty() {
        return nothing(area, "accept latency");
    }
    let y_max = runs
        .iter()
        .flat_map(|r| PERCENTILES.iter().filter_map(|p| r.1[p.1].as_f64()))
        .fold(10.0, f64::max)
        * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption("accept latency (wrk, 32 connections)", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5f64..4.5f64, (0.1f64..y_max).log_scale())?;
    chart
        .configure_mesh()
        .x_labels(5)
        .x_label_formatter(&|x| {
            PERCENTILES
                .get(x.round() as usize)
                .map_or(String::new(), |p| p.0.to_owned())
        })
        .y_desc("ms (log scale)")
        .draw()?;
    for (name, run, color) in runs {
        let points: Vec<(f64, f64)> = PERCENTILES
            .iter()
            .enumerate()
            .filter_map(|(i, p)| Some((i as f64, run[p.1].as_f64()?)))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(format!(
                "{name}: {:.0} req/s",
                run["accepted_per_s"].as_f64().unwrap_or(0.0)
            ))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart.draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 4, color.filled())),
        )?;
    }
    chart
        .draw_series(LineSeries::new(
            vec![(-0.5, 10.0), (4.5, 10.0)],
            TARGET.stroke_width(2),
        ))?
        .label("target: p99 ≤ 10 ms")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], TARGET));
    legend(&mut chart)
}

/// Each delivery figure as a share of its reference (the relay runs of
/// workers ÷ delay, the drain and the end-to-end run of the sink's
/// capacity), beside its own target.
fn relay_panel(area: &Area, figures: &Value) -> Res<()> {
    let mut bars: Vec<(String, f64, f64)> = Vec::new();
    let mut relays: Vec<&Value> = figures
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, _)| k.starts_with("relay_"))
                .map(|(_, v)| v)
                .collect()
        })
        .unwrap_or_default();
    relays.sort_by_key(|v| v["workers"].as_u64());
    for r in relays {
        bars.push((
            format!("relay, {} mailers", r["workers"]),
            r["ratio_to_ideal"].as_f64().unwrap_or(0.0),
            0.9,
        ));
    }
    if let Some(d) = figures["drain"]["ratio_to_sink_capacity"].as_f64() {
        bars.push(("drain".into(), d, 0.5));
    }
    if let Some(e) = figures["end_to_end"]["ratio_to_sink_capacity"].as_f64() {
        bars.push(("end-to-end".into(), e, 0.5));
    }
    if bars.is_empty() {
        return nothing(area, "delivery");
    }
    let n = bars.len() as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(
            "delivery ÷ its reference (bar), target (red)",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5f64..n - 0.5, 0f64..1.1f64)?;
    let names: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
    chart
        .configure_mesh()
        .x_labels(bars.len())
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 0.01 && i >= 0.0 {
                names.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .disable_x_mesh()
        .y_desc("ratio")
        .draw()?;
    for (i, (_, value, target)) in bars.iter().enumerate() {
        let x = i as f64;
        let color = if value >= target { MET } else { MEASURED };
        chart.draw_series(std::iter::once(Rectangle::new(
            [(x - 0.3, 0.0), (x + 0.3, value.min(1.1))],
            color.filled(),
        )))?;
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(x - 0.4, *target), (x + 0.4, *target)],
            TARGET.stroke_width(3),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            format!("{value:.2}"),
            (x - 0.1, value.min(1.0) + 0.04),
            ("sans-serif", 16).into_font(),
        )))?;
    }
    Ok(())
}

/// The summary's targets, met in green, not met in red.
fn targets_panel(area: &Area, rows: &Value) -> Res<()> {
    area.draw(&Text::new(
        "targets",
        (20, 20),
        ("sans-serif", 20).into_font(),
    ))?;
    let mut y = 55;
    for row in rows.as_array().map(Vec::as_slice).unwrap_or_default() {
        let Some(met) = row["met"].as_bool() else {
            continue;
        };
        let color = if met { MET } else { TARGET };
        let text = format!(
            "{} {}: {} ({})",
            if met { "met" } else { "NOT met" },
            row["name"].as_str().unwrap_or("?"),
            row["value"]
                .as_str()
                .unwrap_or("?")
                .split(", lost")
                .next()
                .unwrap_or(""),
            row["target"].as_str().unwrap_or("")
        );
        area.draw(&Text::new(
            text,
            (20, y),
            ("sans-serif", 14).into_font().color(&color),
        ))?;
        y += 22;
    }
    Ok(())
}
