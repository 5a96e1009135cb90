//! End-to-end tests of `kilotune train` and `kilotune eval` on the tasks beyond classification:
//! causal language modelling on the tiny Llama, regression (and CLS-pooled classification) on
//! the tiny BERT. Each trains a few steps, then checks that `eval` reads the saved delta and
//! reports the same numbers the trainer reported for the same data.

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

/// The words of the test texts; ids 0..23, below both tiny models' vocabulary of 128.
const WORDS: [&str; 22] = [
    "[PAD]", "[UNK]", "the", "a", "cat", "dog", "sat", "on", "mat", "is", "here", "hello", "world",
    "runs", "fast", "slow", "very", "good", "bad", "day", "night", ".",
];

/// A word-level tokenizer.json over [`WORDS`] (split on whitespace and punctuation), built
/// with the tokenizers crate: the fixtures ship no tokenizer of their own.
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

/// `rows` JSON lines from a few sentences of different lengths (so batches pad); `label`
/// gives a row's label field, if any.
fn write_rows(
    dir: &Path,
    name: &str,
    rows: usize,
    label: impl Fn(usize) -> Option<serde_json::Value>,
) -> PathBuf {
    let texts = [
        "the cat sat on the mat .",
        "a dog runs fast",
        "hello world",
        "the very good day is here .",
        "a bad night",
        "the dog is slow .",
    ];
    let mut lines = String::new();
    for i in 0..rows {
        let mut row = serde_json::json!({"text": texts[i % texts.len()]});
        if let Some(l) = label(i) {
            row["label"] = l;
        }
        lines.push_str(&row.to_string());
        lines.push('\n');
    }
    let path = dir.join(name);
    std::fs::write(&path, lines).expect("write data");
    path
}

fn model_flags(model: &str, tokenizer: &Path) -> Vec<String> {
    vec![
        "--model".into(),
        fixtures().join(model).display().to_string(),
        "--tokenizer".into(),
        tokenizer.display().to_string(),
        "--threads".into(),
        "1".into(),
    ]
}

fn args(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| (*s).to_owned()).collect()
}

/// The number after `key` in the last line of `text` that holds `key` (e.g. `loss 4.8123`).
fn last_value(text: &str, key: &str) -> f64 {
    let line = text
        .lines()
        .rev()
        .find(|l| l.contains(key))
        .unwrap_or_else(|| panic!("no `{key}` in {text}"));
    let rest = &line[line.find(key).expect("the line holds the key") + key.len()..];
    rest.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no number after `{key}` in {line}"))
}

/// Trains with `extra` flags, then evaluates the saved delta on the training run's eval file
/// with `--json`: returns (train stdout, eval's JSON).
fn train_then_eval(
    model: &str,
    task: &str,
    data: &dyn Fn(&Path, &str, usize) -> PathBuf,
    extra: &[&str],
) -> (String, serde_json::Value) {
    let dir = tempfile::tempdir().expect("temp dir");
    let tok = write_tokenizer(dir.path());
    let train = data(dir.path(), "train.jsonl", 24);
    let test = data(dir.path(), "test.jsonl", 9);
    let ktd = dir.path().join("user.ktd");
    let mut a = vec!["train".to_owned()];
    a.extend(model_flags(model, &tok));
    a.extend(args(&[
        "--task", task, "--epochs", "2", "--batch", "4", "--lr", "1e-2",
    ]));
    a.extend(args(&[
        "--data",
        &train.display().to_string(),
        "--eval",
        &test.display().to_string(),
    ]));
    a.extend(args(&["--out", &ktd.display().to_string()]));
    a.extend(args(extra));
    let o = kilotune(&a);
    assert!(o.status.success(), "train {task}: {}", stderr(&o));
    let trained = stdout(&o);
    assert!(trained.contains("wall time"), "{trained}");

    let mut a = vec!["eval".to_owned()];
    a.extend(model_flags(model, &tok));
    a.extend(args(&[
        "--delta",
        &ktd.display().to_string(),
        "--data",
        &test.display().to_string(),
        "--batch",
        "3",
    ]));
    let text = kilotune(&a);
    assert!(text.status.success(), "eval {task}: {}", stderr(&text));
    a.push("--json".into());
    let o = kilotune(&a);
    assert!(o.status.success(), "eval {task} --json: {}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("one JSON object");
    // The text form prints the same first measure the JSON holds.
    let first = stdout(&text).lines().next().unwrap_or_default().to_owned();
    let (key, value) = first
        .split_once(": ")
        .unwrap_or_else(|| panic!("`key: value` expected, got {first}"));
    let value: f64 = value.parse().expect("a number");
    assert!(
        (value - v[key].as_f64().expect("the key is in the JSON")).abs() < 1e-4,
        "{first} vs {v}"
    );
    (trained, v)
}

#[test]
fn causal_lm_trains_on_the_tiny_llama_and_eval_reports_its_perplexity() {
    for model in ["tiny-llama.dynamo.onnx", "tiny-llama.legacy.onnx"] {
        let (trained, v) = train_then_eval(
            model,
            "causal-lm",
            &|dir, name, rows| write_rows(dir, name, rows, |_| None),
            &["--targets", "q_proj,v_proj"],
        );
        assert!(trained.contains("epoch 2: loss"), "{trained}");
        assert_eq!(v["task"], "causal-lm");
        assert_eq!(v["rows"], 9);
        let (loss, ppl) = (
            v["loss"].as_f64().expect("loss"),
            v["perplexity"].as_f64().expect("perplexity"),
        );
        assert!((ppl - loss.exp()).abs() <= 1e-5 * ppl, "{v}");
        // 9 texts cycling over sentences of 7, 4, 2, 7, 3 and 5 words: each predicts all but
        // its first token, and padding predicts nothing.
        assert_eq!(v["tokens"], 6 + 3 + 1 + 6 + 2 + 4 + 6 + 3 + 1);
        // The same data, the same delta: eval's loss is the trainer's last evaluation.
        let trained_loss = last_value(&trained, "epoch 2: loss");
        assert!(
            (loss - trained_loss).abs() < 1e-4,
            "eval {loss} vs training {trained_loss}"
        );
    }
}

#[test]
fn regression_trains_on_the_tiny_bert_and_eval_reports_its_mse() {
    let (trained, v) = train_then_eval(
        "tiny-bert.dynamo.onnx",
        "regress",
        &|dir, name, rows| {
            write_rows(dir, name, rows, |i| {
                Some(serde_json::json!((i % 6) as f64 * 0.5 - 1.0))
            })
        },
        &["--targets", "query,value"],
    );
    assert!(
        trained.contains("targets: 24 values in [-1, 1.5]"),
        "{trained}"
    );
    assert_eq!(v["task"], "regress");
    assert_eq!(
        (v["rows"].as_u64(), v["outputs"].as_u64()),
        (Some(9), Some(1))
    );
    let mse = v["mse"].as_f64().expect("mse");
    let trained_mse = last_value(&trained, "epoch 2: mse");
    assert!(
        (mse - trained_mse).abs() < 1e-4,
        "eval {mse} vs training {trained_mse}"
    );
}

#[test]
fn cls_pooled_classification_round_trips_through_eval() {
    let (trained, v) = train_then_eval(
        "tiny-bert.dynamo.onnx",
        "classify",
        &|dir, name, rows| {
            write_rows(dir, name, rows, |i| {
                Some(serde_json::json!(if i % 2 == 0 { "even" } else { "odd" }))
            })
        },
        &["--pooling", "cls"],
    );
    assert_eq!(v["task"], "classify");
    let trained_acc = last_value(&trained, "epoch 2: accuracy");
    assert!(
        (v["accuracy"].as_f64().expect("accuracy") - trained_acc).abs() < 1e-4,
        "{v} vs {trained}"
    );
}

fn fails_with(a: &[String], needle: &str) {
    let o = kilotune(a);
    let err = stderr(&o);
    assert!(!o.status.success(), "expected failure; stderr: {err}");
    assert!(
        err.starts_with("error: ") && err.contains(needle),
        "stderr lacks `{needle}`: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn task_mismatches_are_clear_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tok = write_tokenizer(dir.path());
    let texts = write_rows(dir.path(), "texts.jsonl", 4, |_| None);
    let out = dir.path().join("o.ktd").display().to_string();
    let train = |model: &str, extra: &[&str]| {
        let mut a = vec!["train".to_owned()];
        a.extend(model_flags(model, &tok));
        a.extend(args(&[
            "--data",
            &texts.display().to_string(),
            "--out",
            &out,
        ]));
        a.extend(args(extra));
        a
    };
    // The Llama has no bias anywhere: BitFit has nothing to train.
    fails_with(
        &train(
            "tiny-llama.dynamo.onnx",
            &["--task", "causal-lm", "--method", "bitfit"],
        ),
        "BitFit trains bias terms, and this base has none",
    );
    // Regression rows need a numeric label; CLS pooling is for classification only.
    fails_with(
        &train("tiny-bert.dynamo.onnx", &["--task", "regress"]),
        "line 1: no `label` field",
    );
    fails_with(
        &train(
            "tiny-llama.dynamo.onnx",
            &["--task", "causal-lm", "--pooling", "cls"],
        ),
        "--pooling cls is for --task classify",
    );
}
