//! p50 and p99 latency against offered load, one line pair per transport (and topology), on a
//! logarithmic latency axis — the paper's Fig. 7 — from the load generator's JSON lines.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

/// Why a plot could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// The input could not be read.
    #[error("read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// A line is not a load report.
    #[error("line {0}: {1}")]
    BadLine(usize, String),
    /// No report to plot.
    #[error("no results to plot")]
    Empty,
    /// No TrueType font for the text.
    #[error("no font found (pass --font FILE.ttf): {0}")]
    NoFont(String),
    /// plotters failed.
    #[error("drawing: {0}")]
    Draw(String),
}

/// One offered load of one series: the medians over its rounds.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// Offered load, requests per second.
    pub offered: f64,
    /// Median p50 latency, µs.
    pub p50_us: f64,
    /// Median p99 latency, µs.
    pub p99_us: f64,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Groups reports into series named `transport` (or `topology transport` when the lines carry
/// a `topology` field), one point per offered load with the median of its rounds.
pub fn series(text: &str) -> Result<BTreeMap<String, Vec<Point>>, PlotError> {
    type Rounds = (Vec<f64>, Vec<f64>);
    let mut by: BTreeMap<String, BTreeMap<u64, Rounds>> = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |m: &str| PlotError::BadLine(i + 1, m.to_string());
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(&e.to_string()))?;
        let transport = v["transport"].as_str().ok_or_else(|| bad("no transport"))?;
        let name = match v["topology"].as_str() {
            Some(t) if t != transport => format!("{t} {transport}"),
            _ => transport.to_string(),
        };
        let offered = v["offered_rps"]
            .as_u64()
            .ok_or_else(|| bad("no offered_rps"))?;
        let p50 = v["latency_us"]["p50"]
            .as_f64()
            .ok_or_else(|| bad("no latency_us.p50"))?;
        let p99 = v["latency_us"]["p99"]
            .as_f64()
            .ok_or_else(|| bad("no latency_us.p99"))?;
        let e = by.entry(name).or_default().entry(offered).or_default();
        e.0.push(p50);
        e.1.push(p99);
    }
    if by.is_empty() {
        return Err(PlotError::Empty);
    }
    Ok(by
        .into_iter()
        .map(|(name, points)| {
            let pts = points
                .into_iter()
                .map(|(offered, (mut p50, mut p99))| Point {
                    offered: offered as f64,
                    p50_us: median(&mut p50),
                    p99_us: median(&mut p99),
                })
                .collect();
            (name, pts)
        })
        .collect())
}

const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// Registers a TrueType font as plotters' "sans-serif" (plotters is built without system font
/// libraries; its ab_glyph backend needs the font's bytes).
fn register_font(font: Option<&Path>) -> Result<(), PlotError> {
    let candidates: Vec<PathBuf> = match font {
        Some(f) => vec![f.to_path_buf()],
        None => FONTS.iter().map(PathBuf::from).collect(),
    };
    let mut why = String::from("tried");
    for path in candidates {
        match std::fs::read(&path) {
            Ok(bytes) => {
                // plotters keeps registered fonts for the life of the process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                return plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                    .map_err(|_| {
                        PlotError::NoFont(format!(
                            "{} is not a usable TrueType font",
                            path.display()
                        ))
                    });
            }
            Err(e) => why.push_str(&format!(" {} ({e})", path.display())),
        }
    }
    Err(PlotError::NoFont(why))
}

/// Reads `input` (JSON lines) and draws the plot into `output` (.svg: SVG, else PNG).
pub fn plot_file(input: &Path, output: &Path, font: Option<&Path>) -> Result<(), PlotError> {
    let text =
        std::fs::read_to_string(input).map_err(|e| PlotError::Read(input.to_path_buf(), e))?;
    let series = series(&text)?;
    register_font(font)?;
    let size = (960, 600);
    if output
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("svg"))
    {
        draw(SVGBackend::new(output, size).into_drawing_area(), &series)
    } else {
        draw(
            BitMapBackend::new(output, size).into_drawing_area(),
            &series,
        )
    }
}

const COLORS: [RGBColor; 6] = [
    RGBColor(200, 40, 40),
    RGBColor(30, 90, 200),
    RGBColor(20, 140, 60),
    RGBColor(200, 120, 0),
    RGBColor(120, 50, 160),
    RGBColor(90, 90, 90),
];

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    series: &BTreeMap<String, Vec<Point>>,
) -> Result<(), PlotError> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| PlotError::Draw(e.to_string());
    root.fill(&WHITE).map_err(err)?;
    let pts = series.values().flatten();
    let x_max = pts.clone().map(|p| p.offered).fold(1.0, f64::max) / 1e3 * 1.05;
    let y_min = pts
        .clone()
        .map(|p| p.p50_us)
        .fold(f64::INFINITY, f64::min)
        .max(1.0)
        / 1.5;
    let y_max = pts.map(|p| p.p99_us).fold(1.0, f64::max) * 1.5;
    let mut chart = ChartBuilder::on(&root)
        .caption("HTTP/1.1 latency against offered load", ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(0.0..x_max, (y_min..y_max).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("offered load (k requests/s)")
        .y_desc("latency (µs, log)")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(err)?;
    for (i, (name, points)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        for (q, dashed) in [("p99", false), ("p50", true)] {
            let value = |p: &Point| if q == "p99" { p.p99_us } else { p.p50_us };
            let line: Vec<(f64, f64)> =
                points.iter().map(|p| (p.offered / 1e3, value(p))).collect();
            let style = ShapeStyle {
                color: color.to_rgba(),
                filled: false,
                stroke_width: if dashed { 1 } else { 2 },
            };
            chart
                .draw_series(LineSeries::new(line.clone(), style))
                .map_err(err)?
                .label(format!("{name} {q}"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            let marker =
                line.into_iter()
                    .map(move |(x, y)| -> DynElement<'static, DB, (f64, f64)> {
                        if dashed {
                            Cross::new((x, y), 4, style).into_dyn()
                        } else {
                            Circle::new((x, y), 3, style.filled()).into_dyn()
                        }
                    });
            chart.draw_series(marker).map_err(err)?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(topology: Option<&str>, transport: &str, offered: u64, p50: f64, p99: f64) -> String {
        let mut v = serde_json::json!({"transport": transport, "offered_rps": offered,
            "latency_us": {"p50": p50, "p99": p99}});
        if let Some(t) = topology {
            v["topology"] = t.into();
        }
        v.to_string()
    }

    #[test]
    fn series_take_the_median_of_the_rounds_per_offered_load() {
        let text = [
            line(None, "tcp", 10_000, 50.0, 300.0),
            line(None, "tcp", 10_000, 70.0, 100.0),
            line(None, "tcp", 10_000, 60.0, 200.0),
            line(None, "tcp", 5_000, 40.0, 90.0),
            line(Some("same-host"), "machnet", 5_000, 20.0, 30.0),
            String::new(),
        ]
        .join("\n");
        let s = series(&text).unwrap();
        assert_eq!(s.keys().collect::<Vec<_>>(), ["same-host machnet", "tcp"]);
        assert_eq!(
            s["tcp"],
            [
                Point {
                    offered: 5_000.0,
                    p50_us: 40.0,
                    p99_us: 90.0
                },
                Point {
                    offered: 10_000.0,
                    p50_us: 60.0,
                    p99_us: 200.0
                },
            ]
        );
        assert!(matches!(
            series("{\"transport\": \"tcp\"}"),
            Err(PlotError::BadLine(1, _))
        ));
        assert!(matches!(series("\n"), Err(PlotError::Empty)));
    }

    #[test]
    fn draws_a_png() {
        let Some(font) = FONTS.iter().map(Path::new).find(|p| p.exists()) else {
            // CI installs fonts-dejavu-core (.ci/run): there the drawing must be tested.
            assert!(
                std::env::var_os("CI").is_none(),
                "no system font: install fonts-dejavu-core"
            );
            eprintln!("no system font on this machine: PNG drawing not tested");
            return;
        };
        let dir = std::env::temp_dir().join(format!("machnet-http-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let input = dir.join("r.jsonl");
        let text = [
            line(None, "tcp", 5_000, 40.0, 90.0),
            line(None, "tcp", 10_000, 60.0, 900.0),
            line(None, "machnet", 5_000, 20.0, 30.0),
        ]
        .join("\n");
        std::fs::write(&input, text).unwrap();
        let out = dir.join("fig.png");
        plot_file(&input, &out, Some(font)).unwrap();
        let png = std::fs::read(&out).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
