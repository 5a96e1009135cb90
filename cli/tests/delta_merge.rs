//! End-to-end tests of `kilotune merge`, `kilotune run --delta` and `kilotune delta
//! inspect|export|import` on the repository's tiny BERT fixture, with deltas made here.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kilotune::delta::{self, Delta, NamedTensor, Precision, TrainingSummary};
use kilotune::peft::{BitFitConfig, LoraConfig, PeftMethod, Pooling, TaskHead};
use kilotune::{Base, LoadOptions, Session, SessionConfig};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn tiny_bert() -> PathBuf {
    fixtures().join("tiny-bert.dynamo.onnx")
}

fn kilotune<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kilotune")).args(args).output().expect("the built binary starts")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_ok(o: &Output) {
    assert!(o.status.success(), "failed: {}\n{}", stderr(o), stdout(o));
}

/// Asserts a clean failure: non-zero exit, an `error:` line naming `needle`, no panic.
fn assert_fails_with(o: &Output, needle: &str) {
    let err = stderr(o);
    assert!(!o.status.success(), "expected failure; stdout: {}", stdout(o));
    assert!(err.starts_with("error: ") && err.contains(needle), "stderr lacks `{needle}`: {err}");
    assert!(!err.contains("panicked"), "the binary panicked: {err}");
}

fn base() -> std::sync::Arc<Base> {
    Base::load(tiny_bert(), LoadOptions::default()).expect("the tiny BERT fixture loads")
}

fn values(n: usize, seed: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|i| (((i * 7919 + seed * 104_729) % 1009) as f32 / 1009.0 - 0.5) * 2.0 * scale).collect()
}

/// LoRA r=4 on query and value with non-zero A and B, optionally with a 2-class head.
fn lora_delta(base: &Base, head: bool) -> Delta {
    let mut tensors = Vec::new();
    for (i, l) in base.linears().iter().enumerate() {
        if l.module.ends_with(".query") || l.module.ends_with(".value") {
            tensors.push(NamedTensor::f32(format!("{}.lora_A", l.module), &[4, l.k as u32], values(4 * l.k, 2 * i, 0.3)));
            tensors.push(NamedTensor::f32(format!("{}.lora_B", l.module), &[l.n as u32, 4], values(4 * l.n, 2 * i + 1, 0.3)));
        }
    }
    let hidden = base.linears().last().map(|l| l.n).expect("tiny BERT has Linear layers");
    if head {
        tensors.push(NamedTensor::f32("head.weight", &[2, hidden as u32], values(2 * hidden, 99, 0.5)));
        tensors.push(NamedTensor::f32("head.bias", &[2], vec![0.1, -0.1]));
    }
    Delta {
        base_fingerprint: base.fingerprint(),
        method: PeftMethod::Lora(LoraConfig { r: 4, alpha: 8.0, ..Default::default() }),
        head: head.then_some(TaskHead::Classification { classes: 2, pooling: Pooling::Mean }),
        tensors,
        summary: TrainingSummary { steps: 12, epochs: 1, final_loss: Some(0.5), ..Default::default() },
    }
}

fn save(d: &Delta, dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    delta::save(d, &p, Precision::F32).expect("a valid delta saves");
    p
}

fn run_args(model: &Path, out: &Path) -> Vec<String> {
    let r = fixtures().join("tiny-bert.reference");
    let mut a = vec!["run".to_owned(), model.display().to_string()];
    for n in ["input_ids", "attention_mask", "token_type_ids"] {
        a.extend(["--input".to_owned(), format!("{n}={}", r.join(format!("{n}.npy")).display())]);
    }
    a.extend(["--out".to_owned(), out.display().to_string(), "--threads".to_owned(), "1".to_owned()]);
    a
}

fn npy(p: PathBuf) -> Vec<f32> {
    kilotune::npy::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).to_f32_vec()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn merge_help_explains_every_flag() {
    let o = kilotune(&["merge", "--help"]);
    assert_ok(&o);
    let h = stdout(&o);
    for needle in ["--model", "--delta", "--out", "--requantize", "--no-head", "--no-check", "--json", "fingerprint", "logits", "kilotune merge --model"] {
        assert!(h.contains(needle), "merge --help lacks `{needle}`:\n{h}");
    }
    for sub in ["inspect", "export", "import"] {
        let o = kilotune(&["delta", sub, "--help"]);
        assert_ok(&o);
        assert!(stdout(&o).contains(&format!("kilotune delta {sub}")), "delta {sub} --help has no example");
    }
}

#[test]
fn a_merged_file_runs_like_the_model_with_its_delta() {
    let dir = tempfile::tempdir().unwrap();
    let base = base();
    let d = lora_delta(&base, true);
    let ktd = save(&d, dir.path(), "user.ktd");
    let merged = dir.path().join("merged.onnx");
    let o = kilotune(&["merge", "--model", &tiny_bert().display().to_string(), "--delta", &ktd.display().to_string(), "--out", &merged.display().to_string(), "--threads", "1", "--json"]);
    assert_ok(&o);
    let report: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(report["layers_merged_f32"], 4);
    assert_eq!(report["head_output"], "logits");
    let check = report["check"]["max_abs_diff"].as_f64().unwrap();
    assert!(check <= 1e-5, "the merge's own check: {check}");
    assert_eq!(report["bytes"].as_u64().unwrap(), std::fs::metadata(&merged).unwrap().len());
    // No temporary file is left beside it.
    let names: Vec<String> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names.len(), 2, "{names:?}");

    // `run --delta` on the base vs `run` on the merged file.
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let mut with = run_args(&tiny_bert(), &a);
    with.extend(["--delta".to_owned(), ktd.display().to_string()]);
    assert_ok(&kilotune(&with));
    assert_ok(&kilotune(&run_args(&merged, &b)));
    let plain = dir.path().join("plain");
    assert_ok(&kilotune(&run_args(&tiny_bert(), &plain)));
    let (ha, hb) = (npy(a.join("last_hidden_state.npy")), npy(b.join("last_hidden_state.npy")));
    let diff = max_diff(&ha, &hb);
    assert!(diff <= 1e-5, "merged file vs run --delta: {diff}");
    assert!(max_diff(&ha, &npy(plain.join("last_hidden_state.npy"))) > 1e-2, "the delta must change the output");
    let logits = kilotune::npy::read(b.join("logits.npy")).unwrap();
    assert_eq!(logits.shape()[1], 2);

    // The same, in Rust: the written file loads and runs like the unmerged session.
    let reloaded = Base::load(&merged, LoadOptions::default()).unwrap();
    let r = fixtures().join("tiny-bert.reference");
    let feeds: Vec<(&str, kilotune::Tensor)> =
        ["input_ids", "attention_mask", "token_type_ids"].iter().map(|&n| (n, kilotune::npy::read(r.join(format!("{n}.npy"))).unwrap())).collect();
    let unmerged = Session::with_delta(base.clone(), &d, SessionConfig { threads: 1 }).unwrap().run(&feeds).unwrap();
    let written = Session::new(reloaded, SessionConfig { threads: 1 }).unwrap().run(&feeds).unwrap();
    let diff = max_diff(&unmerged.0[0].1.to_f32_vec(), &written.get("last_hidden_state").unwrap().to_f32_vec());
    assert!(diff <= 1e-5, "{diff}");
}

#[test]
fn merge_refuses_a_foreign_delta_and_the_base_as_output() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = lora_delta(&base(), false);
    d.base_fingerprint[0] ^= 0xff;
    let ktd = save(&d, dir.path(), "other.ktd");
    let out = dir.path().join("merged.onnx");
    let o = kilotune(&["merge", "--model", &tiny_bert().display().to_string(), "--delta", &ktd.display().to_string(), "--out", &out.display().to_string()]);
    assert_fails_with(&o, "delta belongs to base");
    assert!(!out.exists(), "nothing may be written for a foreign delta");

    // A delta trained on the model quantized at load (`train --int8`) gets its own message.
    let int8 = Base::load(tiny_bert(), LoadOptions { weights: kilotune::WeightFormat::Int8, ..Default::default() }).unwrap();
    let ktd8 = save(&lora_delta(&int8, false), dir.path(), "int8.ktd");
    let o = kilotune(&["merge", "--model", &tiny_bert().display().to_string(), "--delta", &ktd8.display().to_string(), "--out", &out.display().to_string()]);
    assert_fails_with(&o, "quantized at load (--int8)");
    assert!(!out.exists());

    let good = save(&lora_delta(&base(), false), dir.path(), "user.ktd");
    let copy = dir.path().join("model.onnx");
    std::fs::copy(tiny_bert(), &copy).unwrap();
    let o = kilotune(&["merge", "--model", &copy.display().to_string(), "--delta", &good.display().to_string(), "--out", &copy.display().to_string()]);
    assert_fails_with(&o, "is the base model itself");
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(tiny_bert()).unwrap());
}

#[test]
fn delta_inspect_lists_everything_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let base = base();
    let d = lora_delta(&base, true);
    let ktd = dir.path().join("user.ktd");
    delta::save(&d, &ktd, Precision::F16).unwrap();
    let o = kilotune(&["delta", "inspect", &ktd.display().to_string(), "--json"]);
    assert_ok(&o);
    let r: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(r["format_version"], 1);
    assert_eq!(r["file_bytes"].as_u64().unwrap(), std::fs::metadata(&ktd).unwrap().len());
    assert_eq!(r["base_fingerprint"], d.base_hex());
    assert_eq!(r["method"], "LoRA r=4 alpha=8");
    assert_eq!(r["config"]["target_modules"], serde_json::json!(["query", "value"]));
    assert_eq!(r["head"]["Classification"]["classes"], 2);
    assert_eq!(r["summary"]["steps"], 12);
    let tensors = r["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), d.tensors.len());
    let a = &tensors[0];
    assert_eq!(a["name"], d.tensors[0].name.as_str());
    assert_eq!(a["shape"], serde_json::json!([4, 32]));
    assert_eq!((a["precision"].as_str(), a["bytes"].as_u64()), (Some("f16"), Some(2 * 4 * 32)));

    let o = kilotune(&["delta", "inspect", &ktd.display().to_string()]);
    assert_ok(&o);
    let text = stdout(&o);
    for needle in ["version 1", &d.base_hex(), "LoRA r=4 alpha=8", "head.weight", "[2, 32]", "f16"] {
        assert!(text.contains(needle), "inspect lacks `{needle}`:\n{text}");
    }
    std::fs::write(dir.path().join("bad.ktd"), b"not a delta").unwrap();
    assert_fails_with(&kilotune(&["delta", "inspect", &dir.path().join("bad.ktd").display().to_string()]), "delta");
}

#[test]
fn delta_export_and_import_round_trip_through_peft() {
    let dir = tempfile::tempdir().unwrap();
    let base = base();
    let d = lora_delta(&base, true);
    let ktd = save(&d, dir.path(), "user.ktd");
    let adapter = dir.path().join("adapter");
    let (ktd_s, adapter_s, model_s) = (ktd.display().to_string(), adapter.display().to_string(), tiny_bert().display().to_string());

    // A head needs --without-head: PEFT's adapter files do not hold it.
    let o = kilotune(&["delta", "export", &ktd_s, "--out", &adapter_s]);
    assert_fails_with(&o, "--without-head");
    assert_eq!(o.status.code(), Some(2));
    assert_ok(&kilotune(&["delta", "export", &ktd_s, "--out", &adapter_s, "--strip-prefix", "m.", "--without-head"]));
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!((config["peft_type"].as_str(), config["r"].as_u64()), (Some("LORA"), Some(4)));
    let st = std::fs::read(adapter.join("adapter_model.safetensors")).unwrap();
    let header = String::from_utf8_lossy(&st[8..200]).into_owned();
    assert!(header.contains("base_model.model.encoder.layer."), "the prefix is stripped: {header}");

    let back = dir.path().join("back.ktd");
    let o = kilotune(&["delta", "import", &adapter_s, "--model", &model_s, "--out", &back.display().to_string()]);
    assert_ok(&o);
    assert!(stdout(&o).contains("4 modules"), "{}", stdout(&o));
    let imported = delta::load(&back, Some(&base.fingerprint()), &Default::default()).unwrap();
    let lora: Vec<&NamedTensor> = d.tensors.iter().filter(|t| !t.name.starts_with("head.")).collect();
    assert_eq!(imported.tensors.len(), lora.len());
    for (a, b) in lora.iter().zip(&imported.tensors) {
        assert_eq!((&a.name, &a.shape), (&b.name, &b.shape));
        assert_eq!(a.to_f32().unwrap(), b.to_f32().unwrap(), "{}", a.name);
    }
    // Precision is the importer's choice.
    let small = dir.path().join("small.ktd");
    assert_ok(&kilotune(&["delta", "import", &adapter_s, "--model", &model_s, "--out", &small.display().to_string(), "--precision", "int8"]));
    assert!(std::fs::metadata(&small).unwrap().len() < std::fs::metadata(&back).unwrap().len() / 2);

    // BitFit has no PEFT LoRA form: a typed refusal.
    let bitfit = Delta {
        method: PeftMethod::BitFit(BitFitConfig::default()),
        head: None,
        tensors: vec![NamedTensor::f32("m.encoder.layer.0.attention.self.query.bias", &[32], vec![0.1; 32])],
        ..d.clone()
    };
    let bf = save(&bitfit, dir.path(), "bitfit.ktd");
    let o = kilotune(&["delta", "export", &bf.display().to_string(), "--out", &dir.path().join("bf").display().to_string()]);
    assert_fails_with(&o, "unsupported PEFT adapter: method");
}

#[test]
fn delta_convert_changes_only_the_storage_precision() {
    let dir = tempfile::tempdir().unwrap();
    let base = base();
    let d = lora_delta(&base, true);
    let (f32_path, int8_path) = (dir.path().join("user.ktd"), dir.path().join("user.int8.ktd"));
    delta::save(&d, &f32_path, Precision::F32).unwrap();
    let o = kilotune(&["delta", "convert", &f32_path.display().to_string(), "--precision", "int8", "--out", &int8_path.display().to_string()]);
    assert_ok(&o);
    let (a, b) = (std::fs::metadata(&f32_path).unwrap().len(), std::fs::metadata(&int8_path).unwrap().len());
    assert!(b * 2 < a, "int8 {b} bytes vs f32 {a}");
    let back = delta::load(&int8_path, Some(&base.fingerprint()), &kilotune::delta::LoadLimits::default()).unwrap();
    assert_eq!((back.method.clone(), back.head.clone(), back.summary.steps), (d.method.clone(), d.head.clone(), d.summary.steps));
    for (x, y) in d.tensors.iter().zip(&back.tensors) {
        assert_eq!(y.precision(), Precision::Int8, "{}", y.name);
        let (x, y) = (x.to_f32().unwrap(), y.to_f32().unwrap());
        // int8 with one scale per row (vectors: one per tensor): error ≤ half a step of the
        // largest magnitude / 127.
        let max = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(x.iter().zip(&y).all(|(p, q)| (p - q).abs() <= max / 127.0), "int8 error too large");
    }
}
