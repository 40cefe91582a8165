//! SVG figures for the report: one line per proxy over a few x categories
//! (Service counts), drawn with plotters' SVG backend.

use plotters::prelude::*;

use super::*;

/// One line of a figure: a value (or none, if not measured) per category.
pub(crate) struct Series {
    pub(crate) label: String,
    /// The proxy it shows: each proxy keeps its colour in every figure.
    pub(crate) proxy: Proxy,
    pub(crate) values: Vec<Option<f64>>,
}

pub(crate) struct Figure<'a> {
    pub(crate) title: &'a str,
    pub(crate) x_desc: &'a str,
    pub(crate) y_desc: &'a str,
    pub(crate) categories: Vec<String>,
    /// Plot log10 of the values (for quantities spanning decades).
    pub(crate) log_y: bool,
    pub(crate) series: Vec<Series>,
}

/// One colour per proxy, in `Proxy::ALL` order.
const COLORS: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
];

/// A value as the axis shows it: no more digits than it needs.
fn axis_number(v: f64) -> String {
    if v.abs() >= 100.0 || v == v.round() {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Writes `figure` to `path` as SVG.
pub(crate) fn draw(path: &Path, figure: &Figure) -> anyhow::Result<()> {
    let transform = |v: f64| if figure.log_y { v.log10() } else { v };
    let points: Vec<f64> = figure
        .series
        .iter()
        .flat_map(|s| s.values.iter().flatten().copied())
        .filter(|v| !figure.log_y || *v > 0.0)
        .map(transform)
        .collect();
    ensure!(
        !points.is_empty(),
        "figure {:?} has no values",
        figure.title
    );
    let Summary {
        min: low,
        max: high,
        ..
    } = summarize(&points);
    // Head room above the data for the legend: a decade, or half again.
    let (y_from, y_to) = if figure.log_y {
        (low.floor(), high.ceil().max(low.floor() + 1.0) + 1.0)
    } else {
        (0.0, high * 1.5)
    };
    let last = figure.categories.len().saturating_sub(1) as f64;
    let root = SVGBackend::new(path, (760, 440)).into_drawing_area();
    let draw_error = |e: &dyn std::fmt::Display| anyhow::anyhow!("drawing {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| draw_error(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(figure.title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.25..last + 0.25, y_from..y_to)
        .map_err(|e| draw_error(&e))?;
    let categories = &figure.categories;
    chart
        .configure_mesh()
        .x_labels(categories.len())
        // Log scale: a label per decade.
        .y_labels(if figure.log_y {
            (y_to - y_from) as usize + 1
        } else {
            10
        })
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 0.01 && i >= 0.0 {
                categories.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|y| {
            if figure.log_y {
                axis_number(10f64.powf(*y))
            } else {
                axis_number(*y)
            }
        })
        .x_desc(figure.x_desc)
        .y_desc(figure.y_desc)
        .draw()
        .map_err(|e| draw_error(&e))?;
    for series in &figure.series {
        let index = Proxy::ALL
            .iter()
            .position(|p| *p == series.proxy)
            .unwrap_or(0);
        let color = &COLORS[index % COLORS.len()];
        let line: Vec<(f64, f64)> = series
            .values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| {
                v.filter(|v| !figure.log_y || *v > 0.0)
                    .map(|v| (i as f64, transform(v)))
            })
            .collect();
        let style = color.stroke_width(2);
        chart
            .draw_series(LineSeries::new(line.clone(), style))
            .map_err(|e| draw_error(&e))?
            .label(series.label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
        chart
            .draw_series(line.iter().map(|p| Circle::new(*p, 3, color.filled())))
            .map_err(|e| draw_error(&e))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| draw_error(&e))?;
    root.present().map_err(|e| draw_error(&e))?;
    Ok(())
}

pub(crate) const CONN_RATE_SVG: &str = "conn-rate.svg";
pub(crate) const CONN_P99_SVG: &str = "conn-p99.svg";
pub(crate) const CONTROL_FULL_SVG: &str = "control-full.svg";
pub(crate) const CONTROL_CHANGE_SVG: &str = "control-change.svg";

/// Draws the report's figures into `dir`; their file names and captions.
pub(crate) fn write_figures(
    dir: &Path,
    conns: Option<&ConnReport>,
    control: Option<&[ControlRow]>,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut figures = Vec::new();
    let mut emit = |file: &str, figure: Figure| -> anyhow::Result<()> {
        draw(&dir.join(file), &figure)?;
        figures.push((file.to_string(), figure.title.to_string()));
        Ok(())
    };
    if let Some(conns) = conns {
        let categories: Vec<String> = conns.rows.iter().map(|r| r.others.to_string()).collect();
        let per_proxy = |value: fn(&ConnRow) -> f64| -> Vec<Series> {
            Proxy::ALL
                .iter()
                .map(|proxy| Series {
                    label: proxy.label().to_string(),
                    proxy: *proxy,
                    values: conns
                        .rows
                        .iter()
                        .map(|r| r.get(*proxy).map(value))
                        .collect(),
                })
                .collect()
        };
        emit(
            CONN_RATE_SVG,
            Figure {
                title: "Short TCP connections per second through a ClusterIP",
                x_desc: "other Services",
                y_desc: "connections/s (median)",
                categories: categories.clone(),
                log_y: false,
                series: per_proxy(|r| r.rate.median),
            },
        )?;
        emit(
            CONN_P99_SVG,
            Figure {
                title: "Connection latency p99 through a ClusterIP",
                x_desc: "other Services",
                y_desc: "p99 µs (median of rounds)",
                categories,
                log_y: false,
                series: per_proxy(|r| r.p99_us.median),
            },
        )?;
    }
    if let Some(control) = control {
        let categories: Vec<String> = control
            .iter()
            .map(|r| r.sync.services.to_string())
            .collect();
        let series = |kxdp: fn(&ControlRow) -> f64, tool: fn(&KpTimes) -> f64| -> Vec<Series> {
            let mut all = vec![Series {
                label: "kxdp".into(),
                proxy: Proxy::Kxdp,
                values: control.iter().map(|r| Some(kxdp(r))).collect(),
            }];
            all.extend(Proxy::KUBE_PROXY.iter().map(|proxy| {
                Series {
                    label: proxy.label().to_string(),
                    proxy: *proxy,
                    values: control
                        .iter()
                        .map(|r| {
                            let found = r.kube_proxy.iter().find(|k| k.proxy == *proxy)?;
                            found.outcome.as_ref().ok().map(tool)
                        })
                        .collect(),
                }
            }));
            all
        };
        emit(
            CONTROL_FULL_SVG,
            Figure {
                title: "Programming N Services × 10 endpoints from empty",
                x_desc: "Services",
                y_desc: "ms (median, log scale)",
                categories: categories.clone(),
                log_y: true,
                series: series(|r| r.sync.full_ms.median, |k| k.full_ms.median),
            },
        )?;
        emit(
            CONTROL_CHANGE_SVG,
            Figure {
                title: "One endpoint change, p99",
                x_desc: "Services",
                y_desc: "ms (log scale)",
                categories,
                log_y: true,
                series: series(|r| r.sync.change_p99_us / 1e3, |k| k.change_p99_ms),
            },
        )?;
    }
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_an_svg_with_every_series_and_category() {
        let path = std::env::temp_dir().join(format!("kxdp-plot-test-{}.svg", std::process::id()));
        let figure = Figure {
            title: "connections",
            x_desc: "other Services",
            y_desc: "conn/s",
            categories: vec!["1".into(), "1000".into(), "30000".into()],
            log_y: true,
            series: vec![
                Series {
                    label: "kxdp".into(),
                    proxy: Proxy::Kxdp,
                    values: vec![Some(7000.0), Some(6900.0), Some(7100.0)],
                },
                Series {
                    label: "iptables".into(),
                    proxy: Proxy::IptablesNft,
                    values: vec![Some(6000.0), None, Some(900.0)],
                },
            ],
        };
        draw(&path, &figure).expect("drawn");
        let svg = std::fs::read_to_string(&path).expect("written");
        let _ = std::fs::remove_file(&path);
        assert!(svg.starts_with("<svg"));
        for text in ["connections", "kxdp", "iptables", "30000", "conn/s"] {
            assert!(svg.contains(text), "{text} missing from the SVG");
        }
        // One marker per measured value; the missing one is left out.
        assert_eq!(svg.matches("<circle").count(), 5);
    }

    #[test]
    fn a_figure_without_values_is_an_error() {
        let figure = Figure {
            title: "empty",
            x_desc: "",
            y_desc: "",
            categories: vec!["1".into()],
            log_y: false,
            series: vec![Series {
                label: "none".into(),
                proxy: Proxy::None,
                values: vec![None],
            }],
        };
        assert!(draw(Path::new("/nonexistent/x.svg"), &figure).is_err());
    }
}
