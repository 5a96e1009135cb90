//! Allocation during load is bounded by the input, not by what the input claims: a counting
//! global allocator measures the peak heap of each load, which must stay within twice the
//! input's size plus 1 MiB, for real files and for hostile headers that claim huge sizes.
//!
//! The tests run one at a time (a lock held for the whole test, input preparation included),
//! since the allocator counts every thread.
//! `cargo test -p kilotune-tests --test alloc_bound -- --nocapture --test-threads 1` prints
//! the table in `docs/robustness.md`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use kilotune::delta::peft_interop::{export_peft_adapter, import_peft_adapter};
use kilotune::delta::{self, Delta, LoadLimits, NamedTensor, Precision, TrainingSummary};
use kilotune::import::gguf;
use kilotune::onnx::proto::ModelProto;
use kilotune::peft::{LoraConfig, PeftMethod};
use kilotune::{Base, LoadOptions};
use kilotune_tests::{fixtures, trained_tiny_bert_lora, TempDir};

/// The system allocator, counting the bytes live now and the most live since the last reset.
struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let now = CURRENT.fetch_add(n, Ordering::SeqCst) + n;
    PEAK.fetch_max(now, Ordering::SeqCst);
}

// SAFETY: every call is forwarded to `System` with the caller's arguments unchanged; the
// counters only observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is; the caller upholds `alloc`'s contract.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is; `ptr` came from this allocator with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::SeqCst);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as is; `ptr` came from this allocator with `layout`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if p.is_null() {
            return p;
        }
        if p == ptr {
            // Resized in place: only the difference.
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                CURRENT.fetch_sub(layout.size() - new_size, Ordering::SeqCst);
            }
        } else {
            // Moved: the old and the new block were both live while the bytes were copied.
            grew(new_size);
            CURRENT.fetch_sub(layout.size(), Ordering::SeqCst);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const MIB: usize = 1 << 20;

/// One measurement at a time: the counters are process-wide.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `f` and returns its result with the peak heap it added above what was live before.
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = CURRENT.load(Ordering::SeqCst);
    PEAK.store(before, Ordering::SeqCst);
    let out = f();
    (out, PEAK.load(Ordering::SeqCst).saturating_sub(before))
}

/// Checks and prints one row: peak ≤ 2 × input + 1 MiB.
fn bounded(what: &str, input: usize, peak: usize) {
    eprintln!("| {what} | {input} | {peak} | {:.2} |", peak as f64 / input.max(1) as f64);
    assert!(peak <= 2 * input + MIB, "{what}: peak {peak} bytes for {input} bytes of input");
}

/// A LoRA delta for the tiny BERT's query and value `Linear`s at rank `r`: large enough that
/// the 1 MiB allowance cannot hide an extra copy of its tensors.
fn big_lora(base: &Base, r: u32) -> Delta {
    let mut tensors = Vec::new();
    for l in base.linears() {
        if l.module.ends_with(".query") || l.module.ends_with(".value") {
            let (k, n) = (l.k as u32, l.n as u32);
            let fill = |len: u32| (0..len).map(|i| (i % 1000) as f32 * 1e-3).collect();
            tensors.push(NamedTensor::f32(format!("{}.lora_A", l.module), &[r, k], fill(r * k)));
            tensors.push(NamedTensor::f32(format!("{}.lora_B", l.module), &[n, r], fill(n * r)));
        }
    }
    assert_eq!(tensors.len(), 8, "two layers, query and value");
    Delta {
        base_fingerprint: base.fingerprint(),
        method: PeftMethod::Lora(LoraConfig { r, alpha: 1.0, ..Default::default() }),
        head: None,
        tensors,
        summary: TrainingSummary::default(),
    }
}

#[test]
fn delta_loads_within_twice_their_size() {
    // Whole tests run one at a time: preparing one test\'s input allocates too.
    let _guard = serial();
    let (base, trained) = trained_tiny_bert_lora();
    let big = big_lora(&base, 2048);
    let dir = TempDir::new("alloc-delta");
    for (name, d) in [("trained LoRA", &trained), ("rank-2048 LoRA", &big)] {
        let path = dir.path().join("user.ktd");
        delta::save(d, &path, Precision::F32).expect("saves");
        let len = std::fs::metadata(&path).expect("saved").len() as usize;
        let (loaded, peak) = peak_of(|| delta::load(&path, None, &LoadLimits::default()));
        assert_eq!(&loaded.expect("loads"), d);
        bounded(&format!("delta::load, {name}"), len, peak);
        let bytes = std::fs::read(&path).expect("saved");
        let (loaded, peak) = peak_of(|| delta::from_bytes(&bytes, None, &LoadLimits::default()));
        assert_eq!(&loaded.expect("decodes"), d);
        bounded(&format!("delta::from_bytes, {name}"), len, peak);
    }
}

/// A model `y = x + w` whose initializer `w` holds `n` floats: one large weight, as a real
/// model's embedding table is.
fn big_onnx(n: usize) -> Vec<u8> {
    onnx_add(n as u64, n)
}

/// `y = x + w` with `w` declared as `dim` floats and holding `n`.
fn onnx_add(dim: u64, n: usize) -> Vec<u8> {
    use kilotune_tests::pb::bytes_field as field;
    let int = |f: u32, v: u64, out: &mut Vec<u8>| kilotune_tests::pb::int_field(f, v as i64, out);
    let value_info = |name: &str| {
        let (mut dim, mut shape, mut tensor, mut ty, mut v) = (vec![], vec![], vec![], vec![], vec![]);
        int(1, n as u64, &mut dim);
        field(1, &dim, &mut shape);
        int(1, 1, &mut tensor);
        field(2, &shape, &mut tensor);
        field(1, &tensor, &mut ty);
        field(1, name.as_bytes(), &mut v);
        field(2, &ty, &mut v);
        v
    };
    let mut w = Vec::new();
    int(1, dim, &mut w);
    int(2, 1, &mut w);
    field(8, b"w", &mut w);
    let raw: Vec<u8> = (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect();
    field(9, &raw, &mut w);
    let mut node = Vec::new();
    for (f, s) in [(1, "x"), (1, "w"), (2, "y"), (4, "Add")] {
        field(f, s.as_bytes(), &mut node);
    }
    let mut g = Vec::new();
    field(1, &node, &mut g);
    field(5, &w, &mut g);
    field(11, &value_info("x"), &mut g);
    field(12, &value_info("y"), &mut g);
    let mut opset = Vec::new();
    int(2, 17, &mut opset);
    let mut m = Vec::new();
    int(1, 9, &mut m);
    field(7, &g, &mut m);
    field(8, &opset, &mut m);
    m
}

#[test]
fn onnx_parse_and_load_within_twice_their_size() {
    // Whole tests run one at a time: preparing one test\'s input allocates too.
    let _guard = serial();
    let dir = TempDir::new("alloc-onnx");
    let big = dir.path().join("big.onnx");
    std::fs::write(&big, big_onnx(4 << 20)).expect("writable"); // 16 MiB of weights
    for path in [fixtures().join("tiny-bert.dynamo.onnx"), fixtures().join("tiny-llama.legacy.onnx"), big] {
        let name = path.file_name().and_then(|n| n.to_str()).expect("a file name").to_owned();
        let bytes = std::fs::read(&path).expect("readable");
        // The protobuf parse alone, from bytes in memory.
        let (model, peak) = peak_of(|| ModelProto::decode(&bytes).map(|_| ()));
        model.expect("decodes");
        bounded(&format!("ModelProto::decode, {name}"), bytes.len(), peak);
        // The whole load from the file: read, parse, import, fold, fuse.
        let (base, peak) = peak_of(|| Base::load(&path, LoadOptions::default()));
        drop(base.expect("loads"));
        bounded(&format!("Base::load, {name}"), bytes.len(), peak);
    }
}

#[test]
fn peft_adapter_import_within_twice_its_size() {
    // Whole tests run one at a time: preparing one test\'s input allocates too.
    let _guard = serial();
    let (base, _) = trained_tiny_bert_lora();
    let big = big_lora(&base, 2048);
    let dir = TempDir::new("alloc-peft");
    let first = &big.tensors[0].name;
    export_peft_adapter(&big, dir.path(), &first[..first.find("encoder.").expect("a BERT module path")]).expect("exports");
    let len: u64 = ["adapter_model.safetensors", "adapter_config.json"]
        .iter()
        .map(|f| std::fs::metadata(dir.path().join(f)).expect("exported").len())
        .sum();
    let (delta, peak) = peak_of(|| import_peft_adapter(dir.path(), &base, [0; 32]));
    assert_eq!(delta.expect("imports").tensors.len(), 8);
    bounded("import_peft_adapter, rank-2048 LoRA", len as usize, peak);
}

#[test]
fn hostile_sizes_are_refused_before_allocating() {
    // Whole tests run one at a time: preparing one test\'s input allocates too.
    let _guard = serial();
    let (_, trained) = trained_tiny_bert_lora();
    let good = delta::to_bytes(&trained, Precision::F32).expect("encodes");
    let small = |what: &str, input: usize, peak: usize| {
        bounded(what, input, peak);
        // Not only within the bound: nowhere near what the header claims.
        assert!(peak < 2 * MIB, "{what}: {peak} bytes");
    };

    // A delta whose header declares a body of u64::MAX bytes.
    let mut b = good.clone();
    b[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
    let (r, peak) = peak_of(|| delta::from_bytes(&b, None, &LoadLimits::default()));
    assert!(r.is_err());
    small("delta, body length u64::MAX", b.len(), peak);

    // A checksummed delta body whose tensor count is 2^60.
    let mut body = vec![0u8; 32]; // fingerprint
    body.extend([1, 0, 0]); // BitFit All, no LayerNorm
    body.push(0); // no head
    body.extend([0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x10]); // 2^60 tensors
    body.extend([0u8; 64]);
    let mut framed = b"KTDELTA\0".to_vec();
    framed.extend(1u32.to_le_bytes());
    framed.extend((body.len() as u64).to_le_bytes());
    framed.extend(&body);
    framed.extend(crc32c::crc32c(&framed).to_le_bytes());
    let (r, peak) = peak_of(|| delta::from_bytes(&framed, None, &LoadLimits::default()));
    assert!(matches!(r, Err(delta::DeltaError::Malformed(_))), "{r:?}");
    small("delta, 2^60 tensors declared", framed.len(), peak);

    // ONNX: a graph field of u64::MAX bytes, and a tensor of 2^40 × 2^40 floats with no data.
    let mut m = vec![7 << 3 | 2];
    m.extend([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
    m.extend([0u8; 64]);
    let (r, peak) = peak_of(|| Base::from_bytes(&m, LoadOptions::default()).map(|_| ()));
    assert!(r.is_err());
    small("ONNX, field length u64::MAX", m.len(), peak);
    let huge = onnx_add(1 << 40, 4);
    let (r, peak) = peak_of(|| Base::from_bytes(&huge, LoadOptions::default()).map(|_| ()));
    assert!(r.is_err());
    small("ONNX, tensor dims claiming 2^40 elements", huge.len(), peak);

    // GGUF: u64::MAX tensors and metadata entries.
    let mut g = b"GGUF".to_vec();
    g.extend(3u32.to_le_bytes());
    g.extend(u64::MAX.to_le_bytes());
    g.extend(u64::MAX.to_le_bytes());
    let (r, peak) = peak_of(|| gguf::read_bytes(&g).map(|_| ()));
    assert!(r.is_err());
    small("GGUF, counts u64::MAX", g.len(), peak);

    // safetensors: a header claiming a tensor of 2^40 floats over 16 bytes of data.
    let header = r#"{"w":{"dtype":"F32","shape":[1099511627776],"data_offsets":[0,16]}}"#;
    let mut s = (header.len() as u64).to_le_bytes().to_vec();
    s.extend(header.as_bytes());
    s.extend([0u8; 16]);
    let (r, peak) = peak_of(|| kilotune::import::hf::read_safetensors(&s, None, &mut Default::default()));
    assert!(r.is_err());
    small("safetensors, shape claiming 2^40 floats", s.len(), peak);
}

/// The same bound on a real model: MiniLM-L6 (f32, and ONNX Runtime's int8 export) from
/// `../shared`. Run with `--features real-models`.
#[cfg(feature = "real-models")]
#[test]
fn real_model_loads_within_twice_their_size() {
    // Whole tests run one at a time: preparing one test\'s input allocates too.
    let _guard = serial();
    for name in ["model.onnx", "model.int8.onnx"] {
        let path = kilotune_tests::shared().join("models/minilm-l6").join(name);
        let len = std::fs::metadata(&path).expect("the real model is in ../shared").len() as usize;
        let bytes = std::fs::read(&path).expect("readable");
        let (model, peak) = peak_of(|| ModelProto::decode(&bytes).map(|_| ()));
        model.expect("decodes");
        bounded(&format!("ModelProto::decode, MiniLM-L6 {name}"), len, peak);
        drop(bytes);
        let (base, peak) = peak_of(|| Base::load(&path, LoadOptions::default()));
        drop(base.expect("loads"));
        bounded(&format!("Base::load, MiniLM-L6 {name}"), len, peak);
    }
}
