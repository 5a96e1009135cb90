//! The report's page: the charts, the run's settings and figures, and a table of epochs, as
//! one HTML file that loads nothing from outside the folder.

use kilotune::train::trainer::Evaluation;

use super::chart::{metric, EVAL_SIZE, LOSS_SIZE};
use super::{EpochRecord, RunConfig, TrainLog, EVAL_LOSS_SVG, EVAL_METRIC_SVG, LOSS_SVG};

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

// Laid out for a 1200 px wide window: the step chart beside the final figures, the epoch
// charts beside the settings, so a 1200x900 screenshot holds every chart.
const STYLE: &str = "body{font-family:sans-serif;margin:20px 24px;color:#222}\
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:0 0 8px}\
.status{color:#555;margin:0 0 16px}table{border-collapse:collapse;font-size:14px}\
td,th{padding:2px 12px 2px 0;text-align:left;vertical-align:top;overflow-wrap:anywhere}\
th{color:#555;font-weight:normal;white-space:nowrap}td.n,th.n{text-align:right}\
.row{display:flex;gap:24px;align-items:flex-start;margin-bottom:20px}\
.row>div{min-width:0;max-width:400px}img{border:1px solid #ddd}";

/// A table row: a header cell and a value cell, both escaped.
fn row(key: &str, value: &str) -> String {
    format!(
        "<tr><th>{}</th><td>{}</td></tr>\n",
        escape(key),
        escape(value)
    )
}

/// The run's settings as table rows.
fn settings_rows(c: &RunConfig) -> String {
    [
        ("model", c.model.clone()),
        ("task", c.task.to_owned()),
        ("method", c.method.clone()),
        ("learning rate", c.lr.to_string()),
        ("epochs", c.epochs.to_string()),
        ("batch", c.batch.to_string()),
        ("training rows", c.rows.to_string()),
        ("steps per epoch", c.steps_per_epoch.to_string()),
        ("warm-up steps", c.warmup_steps.to_string()),
        ("trainable parameters", c.parameters.to_string()),
        ("seed", c.seed.to_string()),
        ("data", c.data.clone()),
        (
            "held-out data",
            c.eval_data.clone().unwrap_or_else(|| "none".into()),
        ),
    ]
    .iter()
    .map(|(k, v)| row(k, v))
    .collect()
}

/// The last epoch's figures and the saved delta as table rows.
fn figures_rows(log: &TrainLog) -> String {
    let c = &log.config;
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
    figures
}

/// The table of epochs, header included.
fn epochs_rows(log: &TrainLog) -> String {
    let n = |v: String| format!("<td class=\"n\">{v}</td>");
    let measure = log
        .epochs
        .iter()
        .find_map(|r| r.eval.map(|e| headline(&e).0))
        .filter(|&name| name != "loss");
    let mut header = vec!["epoch", "steps", "training loss", "rows/s", "seconds"];
    let held_out_measure = measure.map(|m| format!("held-out {m}"));
    if log.config.eval_data.is_some() {
        header.push("held-out loss");
        header.extend(held_out_measure.as_deref());
    }
    let mut rows = String::from("<tr>");
    for h in header {
        rows += &format!("<th class=\"n\">{h}</th>");
    }
    rows += "</tr>\n";
    for (i, r) in log.epochs.iter().enumerate() {
        rows += "<tr>";
        rows += &n((i + 1).to_string());
        rows += &n(r.steps.to_string());
        rows += &n(format!("{:.4}", r.train_loss));
        rows += &n(format!("{:.1}", r.rows_per_sec));
        rows += &n(format!("{:.2}", r.secs));
        if let Some(e) = r.eval {
            rows += &n(format!("{:.4}", e.loss));
            if measure.is_some() {
                rows += &n(headline(&e).1);
            }
        }
        rows += "</tr>\n";
    }
    rows
}

/// An `<img>` of chart `file`, shown at its drawn `size`.
fn img(file: &str, alt: &str, size: (u32, u32)) -> String {
    format!(
        "<img src=\"{file}\" alt=\"{alt}\" width=\"{}\" height=\"{}\"/>",
        size.0, size.1
    )
}

/// The page: the charts, the run's settings and final figures, and a table of the epochs.
/// Numbers are formatted as `train` prints them, so the page and the terminal agree digit for
/// digit.
pub fn html(log: &TrainLog) -> String {
    let c = &log.config;
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
    let skipped = log.step_losses.iter().filter(|l| !l.is_finite()).count();
    let skipped = if skipped > 0 {
        format!(
            "<p>{skipped} steps had a loss that is not a finite number; they are not drawn.</p>\n"
        )
    } else {
        String::new()
    };
    let (eval_loss, eval_metric) = eval_svgs_present(&log.epochs);
    let mut epoch_charts = String::new();
    if eval_loss {
        epoch_charts += &img(EVAL_LOSS_SVG, "loss per epoch", EVAL_SIZE);
    }
    if eval_metric {
        epoch_charts += &img(EVAL_METRIC_SVG, "held-out measure per epoch", EVAL_SIZE);
    }
    if c.eval_data.is_none() {
        epoch_charts +=
            "<p>No held-out data (<code>--eval</code>): no per-epoch evaluation curves.</p>";
    }
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\"/>\n\
         <title>kilotune training report</title>\n<style>{STYLE}</style>\n</head>\n<body>\n\
         <h1>kilotune training report</h1>\n<p class=\"status\">{}</p>\n\
         <div class=\"row\">{}\n<div><h2>Final figures</h2>\n<table>\n{}</table>{skipped}</div>\n</div>\n\
         <div class=\"row\">{epoch_charts}\n<div><h2>Run</h2>\n<table>\n{}</table></div>\n</div>\n\
         <h2>Epochs</h2>\n<table>\n{}</table>\n</body>\n</html>\n",
        escape(&status),
        img(LOSS_SVG, "training loss per step", LOSS_SIZE),
        figures_rows(log),
        settings_rows(c),
        epochs_rows(log),
    )
}

/// Whether the run draws the held-out loss chart and the measure chart.
fn eval_svgs_present(epochs: &[EpochRecord]) -> (bool, bool) {
    let first = epochs.iter().find_map(|r| r.eval);
    (first.is_some(), first.as_ref().and_then(metric).is_some())
}

#[cfg(test)]
mod tests {
    use super::super::testing::{config, epoch, evaluation, parse_xml};
    use super::super::Finished;
    use super::*;

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
}
