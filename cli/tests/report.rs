//! End-to-end tests of `kilotune train --report DIR` on the tiny fixtures: the files it
//! writes, and that the page's figures are the ones `train` printed, digit for digit.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tokenizers::models::wordlevel::WordLevel;
use tokenizers::pre_tokenizers::whitespace::Whitespace;
use tokenizers::Tokenizer;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn kilotune(args: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kilotune"))
        .args(args)
        .output()
        .expect("the built binary starts")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The words of the test texts; ids below both tiny models' vocabulary of 128.
const WORDS: [&str; 14] = [
    "[PAD]", "[UNK]", "the", "a", "cat", "dog", "sat", "on", "mat", "is", "here", "hello",
    "world", ".",
];

/// A word-level tokenizer.json over [`WORDS`]: the fixtures ship no tokenizer of their own.
fn write_tokenizer(dir: &Path) -> PathBuf {
    let vocab: serde_json::Map<String, serde_json::Value> = WORDS
        .iter()
        .enumerate()
        .map(|(i, w)| ((*w).to_owned(), i.into()))
        .collect();
    let vocab_path = dir.join("vocab.json");
    std::fs::write(&vocab_path, serde_json::Value::Object(vocab).to_string()).expect("write vocab");
    let model = WordLevel::from_file(vocab_path.to_str().expect("UTF-8 path"), "[UNK]".into())
        .expect("a word-level model");
    let mut tokenizer = Tokenizer::new(model);
    tokenizer.with_pre_tokenizer(Some(Whitespace {}));
    let path = dir.join("tokenizer.json");
    tokenizer.save(&path, false).expect("save tokenizer.json");
    path
}

/// `rows` JSON lines over a few texts, labelled `cat` or `dog` by what they name (no label
/// with `labels` false, for causal-lm).
fn write_rows(dir: &Path, name: &str, rows: usize, labels: bool) -> PathBuf {
    let texts = [
        ("the cat sat on the mat .", "cat"),
        ("a dog is here", "dog"),
        ("hello cat", "cat"),
        ("the dog sat here .", "dog"),
    ];
    let mut lines = String::new();
    for i in 0..rows {
        let (text, label) = texts[i % texts.len()];
        let row = if labels {
            serde_json::json!({"text": text, "label": label})
        } else {
            serde_json::json!({"text": text})
        };
        lines.push_str(&row.to_string());
        lines.push('\n');
    }
    let path = dir.join(name);
    std::fs::write(&path, lines).expect("write data");
    path
}

/// `train` arguments on fixture `model`, with `rest` after them.
fn train_args(model: &str, tokenizer: &Path, rest: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "train".into(),
        "--model".into(),
        fixtures().join(model).display().to_string(),
        "--tokenizer".into(),
        tokenizer.display().to_string(),
        "--threads".into(),
        "1".into(),
    ];
    a.extend(rest.iter().map(|s| (*s).to_owned()));
    a
}

/// The words after `key` up to the next `,` or `(`, in the first line of `text` that starts
/// with `prefix` (e.g. `loss` in `epoch 2: accuracy 0.5000 loss 0.6931 (12 rows)`).
fn printed(text: &str, prefix: &str, key: &str) -> String {
    let line = text
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting `{prefix}` in {text}"));
    let at = line
        .find(&format!("{key} "))
        .unwrap_or_else(|| panic!("no `{key}` in {line}"));
    line[at + key.len() + 1..]
        .split([',', ' ', '('])
        .next()
        .expect("split yields at least one piece")
        .to_owned()
}

/// The value cell beside the header cell `key` in the page's tables.
fn cell<'a>(html: &'a str, key: &str) -> &'a str {
    let open = format!("<tr><th>{key}</th><td>");
    let at = html
        .find(&open)
        .unwrap_or_else(|| panic!("no `{key}` row in the page:\n{html}"))
        + open.len();
    let len = html[at..].find("</td>").expect("the cell closes");
    &html[at..at + len]
}

/// The cells of epoch `n`'s row in the page's table of epochs.
fn epoch_row(html: &str, n: usize) -> Vec<String> {
    let open = format!("<tr><td class=\"n\">{n}</td>");
    let at = html
        .find(&open)
        .unwrap_or_else(|| panic!("no row for epoch {n}:\n{html}"));
    let row = &html[at..at + html[at..].find("</tr>").expect("the row closes")];
    row.split("<td class=\"n\">")
        .skip(1)
        .map(|c| c.trim_end_matches("</td>").to_owned())
        .collect()
}

#[test]
fn train_report_shows_what_train_printed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tok = write_tokenizer(dir.path());
    let train = write_rows(dir.path(), "train.jsonl", 40, true);
    let test = write_rows(dir.path(), "test.jsonl", 12, true);
    let ktd = dir.path().join("user.ktd");
    // A folder two levels down that does not exist yet: --report creates it.
    let report = dir.path().join("runs").join("first");
    let o = kilotune(&train_args(
        "tiny-bert.dynamo.onnx",
        &tok,
        &[
            "--data",
            &train.display().to_string(),
            "--eval",
            &test.display().to_string(),
            "--epochs",
            "2",
            "--batch",
            "8",
            "--lr",
            "1e-3",
            "--out",
            &ktd.display().to_string(),
            "--report",
            &report.display().to_string(),
        ],
    ));
    assert!(o.status.success(), "train: {}", stderr(&o));
    let (out, err) = (stdout(&o), stderr(&o));
    assert!(
        out.contains(&format!("report {}", report.join("index.html").display())),
        "{out}"
    );

    for file in ["index.html", "loss.svg", "eval-loss.svg", "eval-metric.svg"] {
        let text = read(&report.join(file));
        assert!(!text.is_empty(), "{file} is empty");
    }
    let leftovers: Vec<_> = std::fs::read_dir(&report)
        .expect("list the report folder")
        .map(|e| e.expect("a folder entry").file_name())
        .filter(|n| n.to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    for file in ["loss.svg", "eval-loss.svg", "eval-metric.svg"] {
        let svg = read(&report.join(file));
        assert!(
            svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
            "{file}: {svg}"
        );
    }
    // 40 rows in batches of 8, 2 epochs: 10 steps; one faint and one smoothed line of 10.
    let loss = read(&report.join("loss.svg"));
    assert!(loss.contains("training loss (10 steps)"), "{loss}");
    assert!(read(&report.join("eval-metric.svg")).contains("accuracy"));

    let html = read(&report.join("index.html"));
    for src in ["loss.svg", "eval-loss.svg", "eval-metric.svg"] {
        assert!(html.contains(&format!("<img src=\"{src}\"")), "{src} not shown");
    }
    assert!(html.contains("finished: 2 epochs, 10 steps"), "{html}");
    assert_eq!(cell(&html, "task"), "classify");
    assert_eq!(cell(&html, "method"), "LoRA r=8 alpha=16 dropout=0 on query,value");
    assert_eq!(cell(&html, "learning rate"), "0.001");
    assert_eq!(cell(&html, "epochs"), "2");
    assert_eq!(cell(&html, "batch"), "8");
    assert_eq!(
        cell(&html, "trainable parameters"),
        printed(&out, "training ", "training")
    );
    assert_eq!(cell(&html, "training rows"), "40");
    // `saved FILE (N bytes)`.
    let saved = out
        .lines()
        .find_map(|l| l.strip_prefix("saved ")?.rsplit_once(" (")?.1.strip_suffix(" bytes)"))
        .unwrap_or_else(|| panic!("no `saved` line in {out}"))
        .to_owned();
    assert_eq!(cell(&html, "delta size"), format!("{saved} bytes"));
    assert_eq!(
        saved.parse::<u64>().expect("a byte count"),
        std::fs::metadata(&ktd).expect("the delta").len()
    );
    assert_eq!(
        cell(&html, "wall time"),
        format!("{} s", printed(&out, "wall time", "time"))
    );

    for epoch in 1..=2 {
        let row = epoch_row(&html, epoch);
        let progress = format!("epoch {epoch}/2:");
        let evaluated = format!("epoch {epoch}: ");
        assert_eq!(row[1], "5", "steps of epoch {epoch}");
        assert_eq!(row[2], printed(&err, &progress, "loss"), "training loss");
        assert_eq!(format!("{} rows/s", row[3]), {
            let line = err.lines().find(|l| l.starts_with(&progress)).expect("epoch line");
            line.split(", ").nth(2).expect("rows/s part").to_owned()
        });
        assert_eq!(row[5], printed(&out, &evaluated, "loss"), "held-out loss");
        assert_eq!(row[6], printed(&out, &evaluated, "accuracy"), "accuracy");
    }
    assert_eq!(
        cell(&html, "held-out accuracy"),
        printed(&out, "epoch 2: ", "accuracy")
    );
    assert_eq!(cell(&html, "held-out loss"), printed(&out, "epoch 2: ", "loss"));
    assert_eq!(
        cell(&html, "training loss (last epoch)"),
        printed(&err, "epoch 2/2:", "loss")
    );

    // The same folder again without --eval: the held-out charts of the first run go.
    let o = kilotune(&train_args(
        "tiny-bert.dynamo.onnx",
        &tok,
        &[
            "--data",
            &train.display().to_string(),
            "--epochs",
            "1",
            "--batch",
            "8",
            "--out",
            &ktd.display().to_string(),
            "--report",
            &report.display().to_string(),
        ],
    ));
    assert!(o.status.success(), "train: {}", stderr(&o));
    assert!(!report.join("eval-loss.svg").exists());
    assert!(!report.join("eval-metric.svg").exists());
    let html = read(&report.join("index.html"));
    assert!(!html.contains("eval-loss.svg"), "{html}");
    assert!(html.contains("No held-out data"), "{html}");
    assert_eq!(cell(&html, "held-out data"), "none");
    assert!(read(&report.join("loss.svg")).contains("training loss (5 steps)"));
}

#[test]
fn train_report_of_a_causal_lm_draws_perplexity() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tok = write_tokenizer(dir.path());
    let train = write_rows(dir.path(), "train.jsonl", 12, false);
    let test = write_rows(dir.path(), "test.jsonl", 4, false);
    let report = dir.path().join("report");
    let o = kilotune(&train_args(
        "tiny-llama.dynamo.onnx",
        &tok,
        &[
            "--task",
            "causal-lm",
            "--targets",
            "q_proj,v_proj",
            "--data",
            &train.display().to_string(),
            "--eval",
            &test.display().to_string(),
            "--epochs",
            "1",
            "--batch",
            "4",
            "--out",
            &dir.path().join("lm.ktd").display().to_string(),
            "--report",
            &report.display().to_string(),
        ],
    ));
    assert!(o.status.success(), "train: {}", stderr(&o));
    let out = stdout(&o);
    let html = read(&report.join("index.html"));
    assert_eq!(cell(&html, "task"), "causal-lm");
    assert_eq!(
        cell(&html, "held-out perplexity"),
        printed(&out, "epoch 1: ", "perplexity")
    );
    assert!(read(&report.join("eval-metric.svg")).contains("perplexity"));
}

#[test]
fn train_report_folder_that_cannot_be_made_fails_before_training() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tok = write_tokenizer(dir.path());
    let train = write_rows(dir.path(), "train.jsonl", 8, true);
    // A folder inside a regular file cannot be created.
    let file = dir.path().join("a-file");
    std::fs::write(&file, "not a folder").expect("write");
    let ktd = dir.path().join("user.ktd");
    let o = kilotune(&train_args(
        "tiny-bert.dynamo.onnx",
        &tok,
        &[
            "--data",
            &train.display().to_string(),
            "--out",
            &ktd.display().to_string(),
            "--report",
            &file.join("report").display().to_string(),
        ],
    ));
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with("error: cannot create the report folder"),
        "{err}"
    );
    assert!(err.contains("a-file"), "the message names the folder: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        !stdout(&o).contains("training"),
        "it trained first: {}",
        stdout(&o)
    );
    assert!(!ktd.exists(), "a delta was written");
}
