//! `kilotune train --gate-against OLD.ktd`: the new delta replaces the old one only if it does
//! no worse on the held-out data; otherwise the old file stays, the reason is printed, and the
//! exit status is 3. Also: the guard's line in every training report.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tokenizers::models::wordlevel::WordLevel;
use tokenizers::pre_tokenizers::whitespace::Whitespace;
use tokenizers::Tokenizer;

fn kilotune(args: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kilotune")).args(args).output().expect("the built binary starts")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A word-level tokenizer.json over a few words, all ids below the tiny BERT's 128.
fn write_tokenizer(dir: &Path) -> PathBuf {
    let words = ["[PAD]", "[UNK]", "the", "a", "cat", "dog", "sat", "runs", "on", "mat", "fast", "here"];
    let vocab: serde_json::Map<String, serde_json::Value> = words.iter().enumerate().map(|(i, w)| ((*w).to_owned(), i.into())).collect();
    let vocab_path = dir.join("vocab.json");
    std::fs::write(&vocab_path, serde_json::Value::Object(vocab).to_string()).expect("write vocab");
    let model = WordLevel::from_file(vocab_path.to_str().expect("UTF-8 path"), "[UNK]".into()).expect("a word-level model");
    let mut tokenizer = Tokenizer::new(model);
    tokenizer.with_pre_tokenizer(Some(Whitespace {}));
    let path = dir.join("tokenizer.json");
    tokenizer.save(&path, false).expect("save tokenizer.json");
    path
}

/// 24 rows: cat sentences are `cats`, dog sentences `dogs`.
fn write_data(dir: &Path) -> PathBuf {
    let rows = ["the cat sat on the mat", "a dog runs fast", "a cat sat here", "the dog runs on the mat"];
    let mut lines = String::new();
    for i in 0..24 {
        let label = if i % 2 == 0 { "cats" } else { "dogs" };
        lines.push_str(&serde_json::json!({"text": rows[i % 4], "label": label}).to_string());
        lines.push('\n');
    }
    let path = dir.join("data.jsonl");
    std::fs::write(&path, lines).expect("write data");
    path
}

/// `kilotune train` on the tiny BERT, held-out data = the training data (so a trained delta
/// surely beats an untrained one), with `extra` flags.
fn train(dir: &Path, out: &Path, extra: &[&str]) -> Output {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-bert.dynamo.onnx");
    let (tok, data) = (write_tokenizer(dir), write_data(dir));
    let mut a: Vec<String> = ["train", "--threads", "1", "--task", "classify", "--batch", "8"].iter().map(|s| (*s).to_owned()).collect();
    for (flag, path) in [("--model", &model), ("--tokenizer", &tok), ("--data", &data), ("--eval", &data), ("--out", &out.to_path_buf())] {
        a.extend([flag.to_owned(), path.display().to_string()]);
    }
    a.extend(extra.iter().map(|s| (*s).to_owned()));
    kilotune(&a)
}

/// A well-trained delta and one that has barely moved from its initialization.
const GOOD: [&str; 4] = ["--epochs", "4", "--lr", "1e-2"];
const POOR: [&str; 6] = ["--epochs", "1", "--lr", "1e-7", "--limit", "8"];

#[test]
fn gate_keeps_the_old_delta_when_the_new_one_is_worse() {
    let dir = tempfile::tempdir().expect("temp dir");
    let user = dir.path().join("user.ktd");
    let o = train(dir.path(), &user, &GOOD);
    assert!(o.status.success(), "{}", text(&o.stderr));
    // Every training report says what the guard did.
    assert!(text(&o.stdout).contains("guard: 0 steps skipped or undone"), "{}", text(&o.stdout));
    let before = std::fs::read(&user).expect("the first delta was saved");

    let mut worse = POOR.to_vec();
    worse.extend(["--gate-against", user.to_str().expect("UTF-8 path")]);
    let o = train(dir.path(), &user, &worse);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(err.contains("is worse than") && err.contains("kept") && err.contains("did not save"), "{err}");
    assert_eq!(std::fs::read(&user).expect("the old delta stays"), before);
}

#[test]
fn gate_saves_a_delta_that_is_no_worse() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (old, new) = (dir.path().join("old.ktd"), dir.path().join("new.ktd"));
    let o = train(dir.path(), &old, &POOR);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let mut better = GOOD.to_vec();
    better.extend(["--gate-against", old.to_str().expect("UTF-8 path")]);
    let o = train(dir.path(), &new, &better);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.contains("gate: held-out loss") && out.contains("is no worse than"), "{out}");
    assert!(new.is_file(), "{out}");

    // The gate needs held-out data to judge by.
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-bert.dynamo.onnx");
    let args: Vec<String> = ["train", "--model", model.to_str().expect("UTF-8"), "--tokenizer", "t.json", "--data", "d.jsonl", "--out", "o.ktd", "--gate-against", "old.ktd"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let o = kilotune(&args);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("--eval"), "{}", text(&o.stderr));
}
