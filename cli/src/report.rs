//! `kilotune train --report DIR`: the run's curves as SVG files and a page that shows them.
//!
//! The folder holds `loss.svg` (the loss of every step, with a smoothed line and the epoch
//! boundaries), with `--eval` also `eval-loss.svg` (held-out loss beside the epoch's mean
//! training loss) and `eval-metric.svg` (accuracy or perplexity), and `index.html`: the run's
//! settings, its final figures, a table per epoch and the pictures, with no script, style sheet
//! or font from outside the folder. Training rewrites the folder after every epoch, each file
//! atomically, so a run that is stopped still leaves a report of the epochs it finished.
//!
//! The charts are drawn by `plotters` into SVG without its font feature: the SVG backend writes
//! text as `<text>` elements that the browser sets in its own sans-serif, so no font library
//! (and no C code) is built.

use std::path::{Path, PathBuf};

use kilotune::train::trainer::Evaluation;
use plotters::prelude::*;

use crate::error::{CliError, Result};
use crate::{BitFitChoice, Method, PrecisionChoice, Task, TrainArgs};

/// The file name of the page.
pub const INDEX: &str = "index.html";
/// The per-step loss chart.
pub const LOSS_SVG: &str = "loss.svg";
/// Held-out loss per epoch (with `--eval`).
pub const EVAL_LOSS_SVG: &str = "eval-loss.svg";
/// Accuracy or perplexity per epoch (with `--eval`, for classification and causal LM).
pub const EVAL_METRIC_SVG: &str = "eval-metric.svg";

// Plotters writes a text's SVG font size as its style's size / 1.24 (the style's size is a line
// height): the sizes asked for below come out as 17.7 px titles and 12.9 px labels.

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

/// The settings of a run, as the page lists them.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// The model file, as given.
    pub model: String,
    /// The training data file, as given.
    pub data: String,
    /// The held-out data file, if any.
    pub eval_data: Option<String>,
    /// `classify`, `regress` or `causal-lm`.
    pub task: &'static str,
    /// The method and its settings, e.g. `LoRA r=8 alpha=16 on query,value`.
    pub method: String,
    /// Peak learning rate.
    pub lr: f32,
    /// Epochs asked for.
    pub epochs: u32,
    /// Rows per step.
    pub batch: u32,
    /// Training rows.
    pub rows: usize,
    /// Steps per epoch.
    pub steps_per_epoch: u64,
    /// Warm-up steps.
    pub warmup_steps: u64,
    /// Trainable parameters (delta and head).
    pub parameters: usize,
    /// The seed.
    pub seed: u64,
    /// The delta file, as given.
    pub out: String,
    /// The delta's storage precision.
    pub precision: &'static str,
}

impl RunConfig {
    /// The settings of `args`, with the figures only known once the data and model are loaded.
    pub fn new(
        args: &TrainArgs,
        rows: usize,
        steps_per_epoch: u64,
        warmup_steps: u64,
        parameters: usize,
    ) -> RunConfig {
        let method = match args.method {
            Method::Lora => format!(
                "LoRA r={} alpha={} dropout={} on {}",
                args.rank,
                args.alpha,
                args.lora_dropout,
                args.targets.join(",")
            ),
            Method::Bitfit => format!(
                "BitFit ({} biases{})",
                match args.bitfit_variant {
                    BitFitChoice::All => "all",
                    BitFitChoice::QueryMlp => "query and MLP",
                },
                if args.no_layernorm {
                    ", LayerNorm frozen"
                } else {
                    ", with LayerNorm"
                }
            ),
        };
        RunConfig {
            model: args.model.model.display().to_string(),
            data: args.data.display().to_string(),
            eval_data: args.eval.as_ref().map(|p| p.display().to_string()),
            task: match args.task {
                Task::Classify => "classify",
                Task::Regress => "regress",
                Task::CausalLm => "causal-lm",
            },
            method,
            lr: args.lr,
            epochs: args.epochs,
            batch: args.batch,
            rows,
            steps_per_epoch,
            warmup_steps,
            parameters,
            seed: args.seed,
            out: args.out.display().to_string(),
            precision: match args.precision {
                PrecisionChoice::F32 => "f32",
                PrecisionChoice::F16 => "f16",
                PrecisionChoice::Int8 => "int8",
            },
        }
    }
}

/// One finished epoch, in the figures `train` prints for it.
#[derive(Clone, Copy, Debug)]
pub struct EpochRecord {
    /// Steps taken.
    pub steps: usize,
    /// The mean training loss over the epoch's rows.
    pub train_loss: f64,
    /// Training rows per second.
    pub rows_per_sec: f64,
    /// The epoch's wall time in seconds.
    pub secs: f64,
    /// The held-out evaluation after the epoch, with `--eval`.
    pub eval: Option<Evaluation>,
}

/// The saved delta, once the run is over.
#[derive(Clone, Debug)]
pub struct Finished {
    /// The delta file's size in bytes.
    pub delta_bytes: u64,
    /// The whole command's wall time in seconds.
    pub wall_secs: f64,
}

/// What a run has recorded so far: everything the report draws.
#[derive(Clone, Debug)]
pub struct TrainLog {
    /// The run's settings.
    pub config: RunConfig,
    /// The loss of every step, in order.
    pub step_losses: Vec<f32>,
    /// The finished epochs, in order.
    pub epochs: Vec<EpochRecord>,
    /// Set when the delta has been saved.
    pub finished: Option<Finished>,
}

impl TrainLog {
    /// An empty log for a run with `config`.
    pub fn new(config: RunConfig) -> TrainLog {
        TrainLog {
            config,
            step_losses: Vec::new(),
            epochs: Vec::new(),
            finished: None,
        }
    }
}

/// A report folder that was created and shown to be writable.
#[derive(Debug)]
pub struct ReportDir {
    dir: PathBuf,
}

impl ReportDir {
    /// Creates `dir` (and its parents) and checks that a file can be written in it, so that a
    /// bad `--report` fails before training rather than after it.
    pub fn create(dir: &Path) -> Result<ReportDir> {
        std::fs::create_dir_all(dir).map_err(|source| CliError::Io {
            action: "cannot create the report folder",
            path: dir.to_owned(),
            source,
        })?;
        let probe = dir.join(format!(".write-check.{}.tmp", std::process::id()));
        std::fs::write(&probe, b"").map_err(|source| CliError::Io {
            action: "cannot write in the report folder",
            path: dir.to_owned(),
            source,
        })?;
        // Best effort: the folder was shown writable, which is all the probe was for.
        let _ = std::fs::remove_file(&probe);
        Ok(ReportDir {
            dir: dir.to_owned(),
        })
    }

    /// The page's path.
    pub fn index(&self) -> PathBuf {
        self.dir.join(INDEX)
    }

    /// Writes the charts and the page for `log`, each file atomically; the page last, so it
    /// never shows a chart older than itself.
    pub fn write(&self, log: &TrainLog) -> Result<()> {
        let plot = |file: &str| {
            let file = self.dir.join(file);
            move |reason| CliError::Plot { file, reason }
        };
        let loss =
            loss_svg(&log.step_losses, log.config.steps_per_epoch).map_err(plot(LOSS_SVG))?;
        crate::merge::write_atomic(&self.dir.join(LOSS_SVG), loss.as_bytes())?;
        let charts = eval_svgs(&log.epochs);
        for (file, svg) in [
            (EVAL_LOSS_SVG, charts.loss),
            (EVAL_METRIC_SVG, charts.metric),
        ] {
            let path = self.dir.join(file);
            match svg {
                Some(svg) => {
                    let svg = svg.map_err(plot(file))?;
                    crate::merge::write_atomic(&path, svg.as_bytes())?;
                }
                // A chart this run does not draw must not survive from an earlier run.
                None => match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(CliError::Io {
                            action: "cannot remove the stale chart",
                            path,
                            source: e,
                        })
                    }
                    _ => {}
                },
            }
        }
        crate::merge::write_atomic(&self.index(), html(log).as_bytes())
    }
}

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

/// `lo..hi` around `values` with a margin, never empty: (0, 1) when there are none.
fn range(values: impl Iterator<Item = f64>, margin: f64) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if lo > hi {
        return (0.0, 1.0);
    }
    let pad = if hi > lo {
        (hi - lo) * margin
    } else {
        (lo.abs() * 0.05).max(0.05)
    };
    (lo - pad, hi + pad)
}

/// Draws `chart` as an SVG document.
fn render(chart: &Chart) -> std::result::Result<String, String> {
    let err = |e: DrawingAreaErrorKind<std::io::Error>| e.to_string();
    let (x0, x1) = range(
        chart
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.0)),
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
            .light_line_style(BLACK.mix(0.05))
            .bold_line_style(BLACK.mix(0.12))
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
        c.configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .label_font(("sans-serif", 16))
            .draw()
            .map_err(err)?;
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
        size: (960, 400),
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
fn metric(e: &Evaluation) -> Option<(&'static str, f32)> {
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
        size: (470, 340),
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
            size: (470, 340),
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

/// `s` with the characters HTML gives a meaning escaped.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The task's measure of `e` for the page: name and value, formatted as `train` prints it.
fn headline(e: &Evaluation) -> (&'static str, String) {
    match (metric(e), e.mse) {
        (Some((name, v)), _) => (name, format!("{v:.4}")),
        (None, Some(mse)) => ("mse", format!("{mse:.4}")),
        (None, None) => ("loss", format!("{:.4}", e.loss)),
    }
}

const STYLE: &str = "body{font-family:sans-serif;margin:24px;color:#222;max-width:1000px}\
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:24px 0 8px}\
.status{color:#555;margin:0 0 12px}table{border-collapse:collapse;font-size:14px}\
td,th{padding:3px 12px 3px 0;text-align:left;vertical-align:top}\
th{color:#555;font-weight:normal}td.n,th.n{text-align:right}\
.cols{display:flex;gap:40px;flex-wrap:wrap}.charts{display:flex;gap:20px;flex-wrap:wrap}\
img{max-width:100%;border:1px solid #ddd}";

/// The page: settings, final figures, the charts and a table of the epochs. Numbers are
/// formatted as `train` prints them, so the page and the terminal agree digit for digit.
pub fn html(log: &TrainLog) -> String {
    let c = &log.config;
    let row = |k: &str, v: &str| format!("<tr><th>{}</th><td>{}</td></tr>\n", escape(k), escape(v));
    let status = match &log.finished {
        Some(f) => format!(
            "finished: {} epochs, {} steps, delta saved, wall time {:.2} s",
            log.epochs.len(),
            log.step_losses.len(),
            f.wall_secs
        ),
        None => format!(
            "in progress: {} of {} epochs finished, {} steps (the page is rewritten after each epoch)",
            log.epochs.len(),
            c.epochs,
            log.step_losses.len()
        ),
    };

    let mut settings = String::new();
    settings += &row("model", &c.model);
    settings += &row("task", c.task);
    settings += &row("method", &c.method);
    settings += &row("learning rate", &format!("{}", c.lr));
    settings += &row("epochs", &c.epochs.to_string());
    settings += &row("batch", &c.batch.to_string());
    settings += &row("training rows", &c.rows.to_string());
    settings += &row("steps per epoch", &c.steps_per_epoch.to_string());
    settings += &row("warm-up steps", &c.warmup_steps.to_string());
    settings += &row("trainable parameters", &c.parameters.to_string());
    settings += &row("seed", &c.seed.to_string());
    settings += &row("data", &c.data);
    settings += &row("held-out data", c.eval_data.as_deref().unwrap_or("none"));

    let mut figures = String::new();
    if let Some(last) = log.epochs.last() {
        figures += &row(
            "training loss (last epoch)",
            &format!("{:.4}", last.train_loss),
        );
        if let Some(e) = last.eval {
            figures += &row("held-out loss", &format!("{:.4}", e.loss));
            let (name, value) = headline(&e);
            if name != "loss" {
                figures += &row(&format!("held-out {name}"), &value);
            }
        }
    }
    match &log.finished {
        Some(f) => {
            figures += &row("delta", &format!("{} ({})", c.out, c.precision));
            figures += &row("delta size", &format!("{} bytes", f.delta_bytes));
            figures += &row("wall time", &format!("{:.2} s", f.wall_secs));
        }
        None => figures += &row("delta", "not saved yet"),
    }

    let skipped = log.step_losses.iter().filter(|l| !l.is_finite()).count();
    let mut charts = format!(
        "<div class=\"charts\"><img src=\"{LOSS_SVG}\" alt=\"training loss per step\" width=\"960\"/></div>\n"
    );
    if skipped > 0 {
        charts += &format!(
            "<p>{skipped} steps had a loss that is not a finite number; they are not drawn.</p>\n"
        );
    }
    let charts_eval = eval_svgs_present(&log.epochs);
    if charts_eval.0 || charts_eval.1 {
        charts += "<div class=\"charts\">";
        if charts_eval.0 {
            charts +=
                &format!("<img src=\"{EVAL_LOSS_SVG}\" alt=\"loss per epoch\" width=\"470\"/>");
        }
        if charts_eval.1 {
            charts += &format!(
                "<img src=\"{EVAL_METRIC_SVG}\" alt=\"held-out measure per epoch\" width=\"470\"/>"
            );
        }
        charts += "</div>\n";
    } else if c.eval_data.is_none() {
        charts +=
            "<p>No held-out data (<code>--eval</code>): no per-epoch evaluation curves.</p>\n";
    }

    let measure = log
        .epochs
        .iter()
        .find_map(|r| r.eval.map(|e| headline(&e).0))
        .filter(|&name| name != "loss");
    let mut epochs = String::from(
        "<tr><th class=\"n\">epoch</th><th class=\"n\">steps</th><th class=\"n\">training loss</th>\
         <th class=\"n\">rows/s</th><th class=\"n\">seconds</th>",
    );
    if c.eval_data.is_some() {
        epochs += "<th class=\"n\">held-out loss</th>";
        if let Some(name) = measure {
            epochs += &format!("<th class=\"n\">held-out {name}</th>");
        }
    }
    epochs += "</tr>\n";
    for (i, r) in log.epochs.iter().enumerate() {
        epochs += &format!(
            "<tr><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{:.4}</td>\
             <td class=\"n\">{:.1}</td><td class=\"n\">{:.2}</td>",
            i + 1,
            r.steps,
            r.train_loss,
            r.rows_per_sec,
            r.secs
        );
        if let Some(e) = r.eval {
            epochs += &format!("<td class=\"n\">{:.4}</td>", e.loss);
            if measure.is_some() {
                epochs += &format!("<td class=\"n\">{}</td>", headline(&e).1);
            }
        }
        epochs += "</tr>\n";
    }

    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\"/>\n\
         <title>kilotune training report</title>\n<style>{STYLE}</style>\n</head>\n<body>\n\
         <h1>kilotune training report</h1>\n<p class=\"status\">{}</p>\n\
         <div class=\"cols\">\n<div><h2>Run</h2>\n<table>\n{settings}</table></div>\n\
         <div><h2>Final figures</h2>\n<table>\n{figures}</table></div>\n</div>\n\
         <h2>Curves</h2>\n{charts}<h2>Epochs</h2>\n<table>\n{epochs}</table>\n</body>\n</html>\n",
        escape(&status)
    )
}

/// Whether the run draws the held-out loss chart and the measure chart.
fn eval_svgs_present(epochs: &[EpochRecord]) -> (bool, bool) {
    let first = epochs.iter().find_map(|r| r.eval);
    (first.is_some(), first.as_ref().and_then(metric).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An element of a parsed document: its name, attributes and text (trimmed, without
    /// that of its children).
    type Element = (String, Vec<(String, String)>, String);

    /// Checks that `doc` is well-formed XML, as far as our charts use it: one root element,
    /// every tag closed in order, attribute values quoted, `&` only in entities and no `<` in
    /// text or attributes. Returns the elements in document order.
    fn parse_xml(doc: &str) -> std::result::Result<Vec<Element>, String> {
        fn entity_ok(s: &str) -> bool {
            s.split('&').skip(1).all(|rest| {
                let name = rest.split(';').next().unwrap_or("");
                rest.contains(';')
                    && !name.is_empty()
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '#')
            })
        }
        let mut elements: Vec<Element> = Vec::new();
        // The open elements, as indices into `elements`.
        let mut open: Vec<usize> = Vec::new();
        let mut roots = 0;
        let mut rest = doc.trim();
        while !rest.is_empty() {
            let Some(lt) = rest.find('<') else {
                if !open.is_empty() || !rest.trim().is_empty() {
                    return Err(format!("text outside the root: {rest:?}"));
                }
                break;
            };
            let text = &rest[..lt];
            if !entity_ok(text) || open.is_empty() && !text.trim().is_empty() {
                return Err(format!("bad text {text:?}"));
            }
            if let Some(&i) = open.last() {
                elements[i].2.push_str(text.trim());
            }
            rest = &rest[lt..];
            for (start, end) in [("<?", "?>"), ("<!--", "-->"), ("<!", ">")] {
                if rest.starts_with(start) {
                    let at = rest.find(end).ok_or("an unclosed declaration")?;
                    rest = &rest[at + end.len()..];
                }
            }
            if !rest.starts_with('<') {
                continue;
            }
            let gt = rest.find('>').ok_or("an unclosed tag")?;
            let tag = &rest[1..gt];
            rest = &rest[gt + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                match open.pop() {
                    Some(i) if elements[i].0 == name.trim() => continue,
                    o => return Err(format!("</{name}> closes {:?}", o.map(|i| &elements[i].0))),
                }
            }
            let (tag, closed) = match tag.strip_suffix('/') {
                Some(t) => (t, true),
                None => (tag, false),
            };
            let name_end = tag.find(char::is_whitespace).unwrap_or(tag.len());
            let name = tag[..name_end].to_owned();
            if name.is_empty() || tag.contains('<') {
                return Err(format!("bad tag <{tag}>"));
            }
            let mut attrs = Vec::new();
            let mut a = tag[name_end..].trim_start();
            while !a.is_empty() {
                let eq = a
                    .find('=')
                    .ok_or(format!("attribute without value in <{tag}>"))?;
                let key = a[..eq].trim().to_owned();
                let quoted = a[eq + 1..].trim_start();
                let q = quoted.chars().next().filter(|&c| c == '"' || c == '\'');
                let q = q.ok_or(format!("unquoted attribute in <{tag}>"))?;
                let close = quoted[1..]
                    .find(q)
                    .ok_or(format!("unclosed value in <{tag}>"))?;
                let value = &quoted[1..1 + close];
                if !entity_ok(value) {
                    return Err(format!("bad value {value:?}"));
                }
                attrs.push((key, value.to_owned()));
                a = quoted[close + 2..].trim_start();
            }
            if open.is_empty() {
                roots += 1;
            }
            if !closed {
                open.push(elements.len());
            }
            elements.push((name, attrs, String::new()));
        }
        match (open.is_empty(), roots) {
            (true, 1) => Ok(elements),
            _ => Err(format!("{roots} root elements, unclosed {open:?}")),
        }
    }

    fn attr<'a>(e: &'a Element, key: &str) -> Option<&'a str> {
        e.1.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The texts of the `<text>` elements.
    fn texts_of(elements: &[Element]) -> Vec<&str> {
        elements
            .iter()
            .filter(|e| e.0 == "text")
            .map(|e| e.2.as_str())
            .collect()
    }

    /// The number of points of each polyline drawn in `color` (`#RRGGBB`), in order.
    fn polylines(elements: &[Element], color: RGBColor) -> Vec<usize> {
        let hex = format!("#{:02X}{:02X}{:02X}", color.0, color.1, color.2);
        elements
            .iter()
            .filter(|e| {
                e.0 == "polyline" && attr(e, "stroke").is_some_and(|s| s.eq_ignore_ascii_case(&hex))
            })
            .map(|e| attr(e, "points").unwrap_or("").split_whitespace().count())
            .collect()
    }

    fn evaluation(loss: f32, accuracy: Option<f32>, perplexity: Option<f32>) -> Evaluation {
        Evaluation {
            loss,
            rows: 10,
            accuracy,
            perplexity,
            tokens: None,
            mse: None,
        }
    }

    fn epoch(train_loss: f64, eval: Option<Evaluation>) -> EpochRecord {
        EpochRecord {
            steps: 4,
            train_loss,
            rows_per_sec: 123.456,
            secs: 0.25,
            eval,
        }
    }

    fn config() -> RunConfig {
        RunConfig {
            model: "models/<a & b>.onnx".into(),
            data: "train.jsonl".into(),
            eval_data: Some("test.jsonl".into()),
            task: "classify",
            method: "LoRA r=8 alpha=16 dropout=0 on query,value".into(),
            lr: 5e-4,
            epochs: 3,
            batch: 16,
            rows: 64,
            steps_per_epoch: 4,
            warmup_steps: 1,
            parameters: 1234,
            seed: 0,
            out: "user.ktd".into(),
            precision: "f32",
        }
    }

    #[test]
    fn the_xml_check_rejects_what_it_should() {
        assert!(parse_xml("<svg><g></g></svg>").is_ok());
        assert!(parse_xml("<?xml version=\"1.0\"?>\n<svg a=\"1\"><p/></svg>").is_ok());
        for bad in [
            "<svg><g></svg>",
            "<svg></svg><svg></svg>",
            "<svg a=1></svg>",
            "<svg>a & b</svg>",
            "<svg a=\"x<y\"></svg>",
            "<svg>",
        ] {
            assert!(parse_xml(bad).is_err(), "accepted {bad}");
        }
    }

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
        assert_eq!(polylines(&elements, METRIC_COLOR), [3, 2]);
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

    #[test]
    fn the_page_shows_the_run_and_escapes_it() {
        let mut log = TrainLog::new(config());
        log.step_losses = vec![1.0, 0.9, 0.8, 0.7];
        log.epochs = vec![epoch(0.85, Some(evaluation(0.61234, Some(0.66666), None)))];
        let page = html(&log);
        // Void elements are closed XHTML-style, so the page is well-formed XML too.
        parse_xml(&page).unwrap_or_else(|e| panic!("{e}\n{page}"));
        assert!(
            page.contains("<td>models/&lt;a &amp; b&gt;.onnx</td>"),
            "{page}"
        );
        assert!(
            page.contains("in progress: 1 of 3 epochs finished, 4 steps"),
            "{page}"
        );
        assert!(
            page.contains("<tr><th>delta</th><td>not saved yet</td></tr>"),
            "{page}"
        );
        assert!(
            page.contains("<tr><th>held-out accuracy</th><td>0.6667</td></tr>"),
            "{page}"
        );
        assert!(
            page.contains("<tr><th>held-out loss</th><td>0.6123</td></tr>"),
            "{page}"
        );
        assert!(
            page.contains("<td class=\"n\">123.5</td><td class=\"n\">0.25</td>"),
            "{page}"
        );
        for src in [LOSS_SVG, EVAL_LOSS_SVG, EVAL_METRIC_SVG] {
            assert!(page.contains(&format!("<img src=\"{src}\"")), "{src}");
        }

        log.finished = Some(Finished {
            delta_bytes: 4096,
            wall_secs: 12.345,
        });
        let page = html(&log);
        assert!(
            page.contains("<tr><th>delta size</th><td>4096 bytes</td></tr>"),
            "{page}"
        );
        assert!(
            page.contains("<tr><th>wall time</th><td>12.35 s</td></tr>"),
            "{page}"
        );
        assert!(page.contains("finished: 1 epochs, 4 steps"), "{page}");
    }

    #[test]
    fn a_report_folder_inside_a_file_is_an_io_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("f");
        std::fs::write(&file, "x").expect("write");
        match ReportDir::create(&file.join("report")) {
            Err(CliError::Io { action, path, .. }) => {
                assert_eq!(action, "cannot create the report folder");
                assert_eq!(path, file.join("report"));
            }
            other => panic!("expected an I/O error, got {other:?}"),
        }
    }

    #[test]
    fn writing_leaves_no_temporary_files_and_removes_stale_charts() {
        let dir = tempfile::tempdir().expect("temp dir");
        let report = ReportDir::create(dir.path()).expect("a writable folder");
        let mut log = TrainLog::new(config());
        log.step_losses = vec![1.0, 0.5];
        log.epochs = vec![epoch(0.75, Some(evaluation(0.6, Some(0.5), None)))];
        report.write(&log).expect("written");
        let names = |d: &Path| {
            let mut n: Vec<String> = std::fs::read_dir(d)
                .expect("list")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect();
            n.sort();
            n
        };
        assert_eq!(
            names(dir.path()),
            [EVAL_LOSS_SVG, EVAL_METRIC_SVG, INDEX, LOSS_SVG]
        );
        log.epochs = vec![epoch(0.75, None)];
        log.config.eval_data = None;
        report.write(&log).expect("written");
        assert_eq!(names(dir.path()), [INDEX, LOSS_SVG]);
    }
}
