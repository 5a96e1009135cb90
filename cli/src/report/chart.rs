//! The report's charts: plotters line charts drawn into SVG strings.

use kilotune::train::trainer::Evaluation;
use plotters::prelude::*;

use super::EpochRecord;

// Plotters writes a text's SVG font size as its style's size / 1.24 (the style's size is a line
// height): the sizes asked for below come out as 17.7 px titles and 12.9 px labels.

/// The per-step chart's size in pixels, as the page shows it.
pub(super) const LOSS_SIZE: (u32, u32) = (760, 330);
/// The per-epoch charts' size.
pub(super) const EVAL_SIZE: (u32, u32) = (370, 280);

/// The colour of the per-step loss line (drawn faint, under the smoothed one).
const STEP_COLOR: RGBColor = RGBColor(31, 119, 180);
/// The smoothed loss, and the mean training loss of each epoch.
const SMOOTH_COLOR: RGBColor = RGBColor(8, 48, 107);
/// Held-out loss.
const EVAL_COLOR: RGBColor = RGBColor(230, 85, 13);
/// Accuracy or perplexity.
const METRIC_COLOR: RGBColor = RGBColor(44, 140, 44);
/// The epoch boundaries.
const MARK_COLOR: RGBColor = RGBColor(160, 160, 160);

/// An exponential moving average of the finite values of `losses`, corrected for its zero
/// start (as TensorBoard smooths): `None` where the loss is not finite. Its span is a twentieth
/// of the run, between 5 and 200 steps, so short and long runs both show a trend.
pub fn smooth(losses: &[f32]) -> Vec<Option<f64>> {
    let span = (losses.len() / 20).clamp(5, 200) as f64;
    let keep = 1.0 - 2.0 / (span + 1.0);
    let (mut avg, mut weight) = (0.0f64, 0.0f64);
    losses
        .iter()
        .map(|&l| {
            if !l.is_finite() {
                return None;
            }
            avg = keep * avg + (1.0 - keep) * f64::from(l);
            weight = keep * weight + (1.0 - keep);
            Some(avg / weight)
        })
        .collect()
}

/// One line of a chart.
struct Series {
    name: &'static str,
    points: Vec<(f64, f64)>,
    color: RGBAColor,
    width: u32,
    /// Circles at the points: for per-epoch lines, which may have a single point.
    markers: bool,
}

/// A line chart; x is a whole number (step or epoch).
struct Chart {
    title: String,
    x_desc: &'static str,
    y_desc: &'static str,
    size: (u32, u32),
    series: Vec<Series>,
    /// Grey vertical lines at these x (the epoch boundaries).
    marks: Vec<f64>,
}

/// `lo..hi` around `values` with `below` and `above` of their spread added on each side,
/// never empty: (0, 1) when there are none.
fn range(values: impl Iterator<Item = f64>, below: f64, above: f64) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if lo > hi {
        return (0.0, 1.0);
    }
    let spread = if hi > lo {
        hi - lo
    } else {
        (lo.abs() * 0.5).max(0.5)
    };
    (lo - spread * below, hi + spread * above)
}

/// Draws `chart` as an SVG document.
fn render(chart: &Chart) -> std::result::Result<String, String> {
    let err = |e: DrawingAreaErrorKind<std::io::Error>| e.to_string();
    let legend = chart.series.len() > 1;
    let (x0, x1) = range(
        chart
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.0)),
        0.0,
        0.0,
    );
    // Whole-number x from x0 to x1, with half a unit each side so end markers are not cut.
    let (x0, x1) = (x0 - 0.5, x1 + 0.5);
    let (y0, y1) = range(
        chart
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1)),
        0.06,
        // Head room for the legend, so it never hides the lines.
        if legend { 0.4 } else { 0.06 },
    );
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, chart.size).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut c = ChartBuilder::on(&root)
            .caption(&chart.title, ("sans-serif", 22))
            .margin(14)
            .x_label_area_size(48)
            .y_label_area_size(76)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(err)?;
        // Ticks may fall between whole numbers; those get no label.
        let whole = |x: &f64| {
            if (x - x.round()).abs() < 1e-6 {
                format!("{x:.0}")
            } else {
                String::new()
            }
        };
        c.configure_mesh()
            .x_desc(chart.x_desc)
            .y_desc(chart.y_desc)
            .x_labels(((x1 - x0) as usize).clamp(2, 10))
            .y_labels(8)
            .x_label_formatter(&whole)
            .max_light_lines(0)
            .bold_line_style(BLACK.mix(0.1))
            .label_style(("sans-serif", 16))
            .axis_desc_style(("sans-serif", 17))
            .draw()
            .map_err(err)?;
        for &m in &chart.marks {
            c.draw_series(std::iter::once(PathElement::new(
                vec![(m, y0), (m, y1)],
                MARK_COLOR.stroke_width(1),
            )))
            .map_err(err)?;
        }
        for s in &chart.series {
            let style = s.color.stroke_width(s.width);
            let line = LineSeries::new(s.points.iter().copied(), style).point_size(if s.markers {
                3
            } else {
                0
            });
            c.draw_series(line)
                .map_err(err)?
                .label(s.name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        }
        if legend {
            c.configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.3))
                .label_font(("sans-serif", 16))
                .draw()
                .map_err(err)?;
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// The loss of every step (numbered from 1) and its smoothed line, with the epoch boundaries
/// marked. Steps whose loss is not finite are left out of both lines.
pub fn loss_svg(losses: &[f32], steps_per_epoch: u64) -> std::result::Result<String, String> {
    let step = |i: usize| (i + 1) as f64;
    let raw = losses
        .iter()
        .enumerate()
        .filter(|(_, l)| l.is_finite())
        .map(|(i, &l)| (step(i), f64::from(l)))
        .collect();
    let smoothed = smooth(losses)
        .into_iter()
        .enumerate()
        .filter_map(|(i, s)| s.map(|s| (step(i), s)))
        .collect();
    let per_epoch = steps_per_epoch.max(1) as usize;
    let marks = (1..)
        .map(|e| (e * per_epoch) as f64 + 0.5)
        .take_while(|&x| x < losses.len() as f64)
        .collect();
    render(&Chart {
        title: format!("training loss ({} steps)", losses.len()),
        x_desc: "step",
        y_desc: "loss",
        size: LOSS_SIZE,
        series: vec![
            Series {
                name: "per step",
                points: raw,
                color: STEP_COLOR.mix(0.45),
                width: 1,
                markers: false,
            },
            Series {
                name: "smoothed",
                points: smoothed,
                color: SMOOTH_COLOR.to_rgba(),
                width: 2,
                markers: false,
            },
        ],
        marks,
    })
}

/// The per-epoch charts a run has: `None` for one it does not draw.
pub struct EvalCharts {
    /// Held-out and training loss per epoch; `None` without `--eval`.
    pub loss: Option<std::result::Result<String, String>>,
    /// Accuracy or perplexity per epoch; `None` without `--eval` and for regression, whose
    /// measure (MSE) is its loss.
    pub metric: Option<std::result::Result<String, String>>,
}

/// The task's own measure of an evaluation, other than the loss: its name and value.
pub(super) fn metric(e: &Evaluation) -> Option<(&'static str, f32)> {
    match (e.accuracy, e.perplexity) {
        (Some(acc), _) => Some(("accuracy", acc)),
        (_, Some(ppl)) => Some(("perplexity", ppl)),
        _ => None,
    }
}

/// The held-out curves of `epochs`, numbered from 1.
pub fn eval_svgs(epochs: &[EpochRecord]) -> EvalCharts {
    let evals: Vec<(f64, Evaluation)> = epochs
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.eval.map(|e| ((i + 1) as f64, e)))
        .collect();
    if evals.is_empty() {
        return EvalCharts {
            loss: None,
            metric: None,
        };
    }
    let train = epochs
        .iter()
        .enumerate()
        .map(|(i, r)| ((i + 1) as f64, r.train_loss))
        .collect();
    let held_out = evals.iter().map(|(x, e)| (*x, f64::from(e.loss))).collect();
    let loss = render(&Chart {
        title: "loss per epoch".into(),
        x_desc: "epoch",
        y_desc: "loss",
        size: EVAL_SIZE,
        series: vec![
            Series {
                name: "training (epoch mean)",
                points: train,
                color: SMOOTH_COLOR.to_rgba(),
                width: 2,
                markers: true,
            },
            Series {
                name: "held-out",
                points: held_out,
                color: EVAL_COLOR.to_rgba(),
                width: 2,
                markers: true,
            },
        ],
        marks: Vec::new(),
    });
    let metric = evals.first().and_then(|(_, e)| metric(e)).map(|(name, _)| {
        let points = evals
            .iter()
            .filter_map(|(x, e)| metric(e).map(|(_, v)| (*x, f64::from(v))))
            .collect();
        render(&Chart {
            title: format!("held-out {name} per epoch"),
            x_desc: "epoch",
            y_desc: name,
            size: EVAL_SIZE,
            series: vec![Series {
                name,
                points,
                color: METRIC_COLOR.to_rgba(),
                width: 2,
                markers: true,
            }],
            marks: Vec::new(),
        })
    });
    EvalCharts {
        loss: Some(loss),
        metric,
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{epoch, evaluation, parse_xml, polylines, texts_of};
    use super::*;

    #[test]
    fn loss_svg_is_well_formed_with_one_point_per_step() {
        // 37 steps of 10 per epoch: boundaries after steps 10, 20 and 30.
        let losses: Vec<f32> = (0..37)
            .map(|i| 2.0 / (1.0 + i as f32) + 0.1 * (i % 3) as f32)
            .collect();
        let svg = loss_svg(&losses, 10).expect("drawn");
        let elements = parse_xml(&svg).unwrap_or_else(|e| panic!("{e}\n{svg}"));
        assert_eq!(elements[0].0, "svg");
        // The line and its legend sample (2 points) in each colour.
        assert_eq!(polylines(&elements, STEP_COLOR), [37, 2]);
        assert_eq!(polylines(&elements, SMOOTH_COLOR), [37, 2]);
        assert_eq!(
            polylines(&elements, MARK_COLOR),
            [2, 2, 2],
            "one line per epoch boundary"
        );
        let ticks = texts_of(&elements)
            .iter()
            .filter(|t| t.parse::<f64>().is_ok())
            .count();
        assert!(ticks >= 6, "{ticks} tick labels on the two axes:\n{svg}");
        for label in [
            "training loss (37 steps)",
            "step",
            "loss",
            "per step",
            "smoothed",
        ] {
            assert!(
                texts_of(&elements).contains(&label),
                "no text `{label}`:\n{svg}"
            );
        }
    }

    #[test]
    fn steps_with_a_loss_that_is_not_finite_are_left_out() {
        let losses = [1.0, f32::NAN, 0.8, f32::INFINITY, 0.6];
        let svg = loss_svg(&losses, 5).expect("drawn");
        let elements = parse_xml(&svg).unwrap_or_else(|e| panic!("{e}\n{svg}"));
        assert_eq!(polylines(&elements, STEP_COLOR), [3, 2]);
        assert_eq!(polylines(&elements, SMOOTH_COLOR), [3, 2]);
        // A single step still draws (a one-point line), and no steps an empty chart.
        for losses in [&[0.7f32][..], &[]] {
            let svg = loss_svg(losses, 1).expect("drawn");
            parse_xml(&svg).unwrap_or_else(|e| panic!("{e}\n{svg}"));
        }
    }

    #[test]
    fn smoothing_starts_at_the_first_loss_and_keeps_a_constant() {
        // Corrected for its zero start, the average's first value is the first loss, and the
        // average of a constant is that constant (to rounding).
        let s = smooth(&[3.0, 3.0, 3.0, 3.0]);
        assert!(
            s.iter().all(|v| v.is_some_and(|v| (v - 3.0).abs() < 1e-12)),
            "{s:?}"
        );
        // Span 5 (the least): each step keeps 2/3 of the average.
        let s = smooth(&[1.0, f32::NAN, 0.0]);
        assert_eq!(s[0], Some(1.0));
        assert_eq!(s[1], None);
        // (2/3 · 1/3 · 1 + 1/3 · 0) / (1 - (2/3)²) = (2/9) / (5/9) = 0.4
        let v = s[2].expect("finite");
        assert!((v - 0.4).abs() < 1e-12, "{v}");
    }

    #[test]
    fn eval_charts_follow_the_task() {
        assert!(eval_svgs(&[epoch(1.0, None)]).loss.is_none());
        let regression = Evaluation {
            mse: Some(0.5),
            ..evaluation(0.5, None, None)
        };
        let charts = eval_svgs(&[epoch(1.0, Some(regression))]);
        assert!(
            charts.loss.is_some() && charts.metric.is_none(),
            "MSE is the loss"
        );

        let epochs = [
            epoch(0.9, Some(evaluation(0.8, Some(0.5), None))),
            epoch(0.7, Some(evaluation(0.6, Some(0.75), None))),
            epoch(0.5, Some(evaluation(0.55, Some(0.875), None))),
        ];
        let charts = eval_svgs(&epochs);
        let loss = charts.loss.expect("a loss chart").expect("drawn");
        let elements = parse_xml(&loss).unwrap_or_else(|e| panic!("{e}\n{loss}"));
        assert_eq!(polylines(&elements, EVAL_COLOR), [3, 2]);
        assert_eq!(polylines(&elements, SMOOTH_COLOR), [3, 2]);
        let metric = charts.metric.expect("an accuracy chart").expect("drawn");
        let elements = parse_xml(&metric).unwrap_or_else(|e| panic!("{e}\n{metric}"));
        assert_eq!(
            polylines(&elements, METRIC_COLOR),
            [3],
            "one line, no legend"
        );
        assert!(
            texts_of(&elements).contains(&"held-out accuracy per epoch"),
            "{metric}"
        );
        // A marker per epoch on each line.
        assert_eq!(elements.iter().filter(|e| e.0 == "circle").count(), 3);

        let lm = [epoch(3.0, Some(evaluation(2.0, None, Some(7.389))))];
        let metric = eval_svgs(&lm)
            .metric
            .expect("a perplexity chart")
            .expect("drawn");
        let elements = parse_xml(&metric).unwrap_or_else(|e| panic!("{e}\n{metric}"));
        assert!(
            texts_of(&elements).contains(&"held-out perplexity per epoch"),
            "{metric}"
        );
    }
}
