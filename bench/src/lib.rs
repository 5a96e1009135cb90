//! Shared plumbing for the benchmarks: the peer process, timing, and the result table.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The Python interpreter of the benchmark venv that `bench/setup.sh` creates.
pub fn venv_python() -> Result<PathBuf, String> {
    let p = repo_root().join("bench/.venv/bin/python");
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!("{} is missing: run `bash bench/setup.sh` first", p.display()))
    }
}

/// A peer running in its own process, driven line by line over stdin/stdout so its runs can
/// be interleaved with ours (A B A B ...), which keeps the ratio honest on a noisy machine.
pub struct Peer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Peer {
    /// Starts `python script` with extra arguments and waits for its `ready` line.
    pub fn spawn(script: &Path, args: &[&str]) -> Result<Peer, String> {
        let mut child = Command::new(venv_python()?)
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", script.display()))?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut p = Peer { child, stdin, stdout };
        let first = p.read_line()?;
        if first.trim() != "ready" {
            return Err(format!("peer said `{first}` instead of ready"));
        }
        Ok(p)
    }

    fn read_line(&mut self) -> Result<String, String> {
        let mut line = String::new();
        self.stdout.read_line(&mut line).map_err(|e| e.to_string())?;
        if line.is_empty() {
            return Err("the peer process exited".into());
        }
        Ok(line)
    }

    /// Sends one command line and returns the reply line.
    pub fn ask(&mut self, command: &str) -> Result<String, String> {
        writeln!(self.stdin, "{command}").map_err(|e| e.to_string())?;
        self.stdin.flush().map_err(|e| e.to_string())?;
        let reply = self.read_line()?;
        if let Some(err) = reply.strip_prefix("error ") {
            return Err(err.trim().to_owned());
        }
        Ok(reply.trim().to_owned())
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.child.wait();
    }
}

/// The folder of the benchmark models: `KILOTUNE_BENCH_MODELS`, else `../shared/models/minilm-l6`
/// beside the repository; an error names the first of `files` it lacks.
pub fn models_dir(files: &[&str]) -> Result<PathBuf, String> {
    let models = std::env::var_os("KILOTUNE_BENCH_MODELS").map(PathBuf::from).unwrap_or_else(|| repo_root().join("../shared/models/minilm-l6"));
    match files.iter().find(|f| !models.join(f).is_file()) {
        Some(f) => Err(format!("{} is missing (set KILOTUNE_BENCH_MODELS)", models.join(f).display())),
        None => Ok(models),
    }
}

/// The number in environment variable `key`, or `default`.
pub fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Seconds taken by `f`.
pub fn time<T>(f: impl FnOnce() -> T) -> (f64, T) {
    let t = Instant::now();
    let r = f();
    (t.elapsed().as_secs_f64(), r)
}

/// The median of a sample.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// This process's peak resident set size in bytes (`VmHWM`), where the OS reports it (Linux).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The allocator the `kilotune` command line ships with: large freed blocks are kept for the
/// next step (see `kilotune::alloc`).
#[global_allocator]
static ALLOC: kilotune::alloc::Global = kilotune::alloc::Global;
