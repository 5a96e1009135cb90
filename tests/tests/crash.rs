//! `kill -9` during saves: a child process (this test, re-run with `KILOTUNE_CRASH_CHILD` set)
//! saves deltas in a loop and reports each save that returned; the parent kills it at a
//! random moment, 1,000 times. After every kill the delta at the target loads, and is the last
//! save the child reported or the one it had in flight; at most one temporary file is left,
//! and the next save removes it.
//!
//! A process kill, unlike a power cut, keeps what the kernel already holds, so this checks the
//! store's protocol (write aside, rename over) against real `kill` timing, not the disk's
//! ordering; the in-memory fault model of `runtime/src/delta/fault.rs` covers power cuts.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kilotune::delta::{self, Delta, LoadLimits, NamedTensor, Precision, TrainingSummary};
use kilotune::peft::PeftMethod;
use kilotune::train::rng::Rng;

/// Kills of the child.
const KILLS: usize = 1000;
/// Set in the child's environment to the folder it saves into.
const CHILD: &str = "KILOTUNE_CRASH_CHILD";
/// How long the parent waits for a line from the child before it calls the child hung: far
/// beyond a save, so it bounds only a broken test, never a slow machine.
const HANG: Duration = Duration::from_secs(120);
/// This test's name, for the child's command line.
const NAME: &str = "crash_sigkill_during_saves_never_leaves_a_bad_delta";

/// Delta `v`: 16,384 values (64 KiB, so that a save takes long enough to be interrupted in
/// the middle), all derived from `v`, with `v` as its step count.
fn delta(v: u64) -> Delta {
    Delta {
        base_fingerprint: [3; 32],
        method: PeftMethod::default(),
        head: None,
        tensors: vec![NamedTensor::f32("w", &[128, 128], (0..128 * 128).map(|i| (v as f32) + i as f32 * 1e-4).collect())],
        summary: TrainingSummary { steps: v, ..TrainingSummary::default() },
    }
}

/// The child: continue from the delta on disk, save the next one, report it, forever. The
/// reports go straight to the standard output (the test harness captures only `print!`).
fn child(dir: &Path) -> ! {
    let path = dir.join("user.ktd");
    let mut out = std::io::stdout();
    let mut v = delta::load(&path, None, &LoadLimits::default()).expect("the parent checked it").summary.steps;
    writeln!(out, "ready {v}").and_then(|()| out.flush()).expect("the parent reads");
    loop {
        v += 1;
        delta::save(&delta(v), &path, Precision::F32).expect("a save works");
        writeln!(out, "saved {v}").and_then(|()| out.flush()).expect("the parent reads");
    }
}

/// Kills the child when the parent's test ends, passed or not.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn temps(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect()
}

/// `N` if `line` ends with `word N`. (The child's first report follows the test harness's
/// `test NAME ... ` on the same line.)
fn report(line: &str, word: &str) -> Option<u64> {
    let (before, n) = line.trim_end().rsplit_once(' ')?;
    if before.ends_with(word) { n.parse().ok() } else { None }
}

#[test]
fn crash_sigkill_during_saves_never_leaves_a_bad_delta() {
    if let Some(dir) = std::env::var_os(CHILD) {
        child(Path::new(&dir));
    }
    let dir: PathBuf = std::env::temp_dir().join(format!("kilotune-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("user.ktd");
    delta::save(&delta(0), &path, Precision::F32).unwrap();
    let exe = std::env::current_exe().unwrap();

    let mut rng = Rng::new(0x6b696c6c);
    let (mut last_reported, mut in_flight, mut leftovers) = (0u64, 0usize, 0usize);
    for kill in 0..KILLS {
        let mut c = Killed(
            Command::new(&exe)
                .args([NAME, "--exact", "--test-threads=1"])
                .env(CHILD, &dir)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        // Lines arrive through a thread, so that a child that never reports fails the test
        // instead of hanging it.
        let stdout = c.0.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut next = || Some(rx.recv_timeout(HANG).unwrap_or_else(|e| panic!("kill {kill}: no word from the child: {e}")));
        // The child starts from what the last kill left.
        let start = std::iter::from_fn(&mut next).find_map(|l| report(&l, "ready")).expect("the child starts");
        assert_eq!(start, last_reported, "kill {kill}: the child found another delta than the parent");
        // Let it finish 0 to 2 saves, then kill it 0 to 3 ms later: mostly in the middle of a save.
        for _ in 0..rng.next_u64() % 3 {
            last_reported = std::iter::from_fn(&mut next).find_map(|l| report(&l, "saved")).expect("the child saves");
        }
        std::thread::sleep(Duration::from_micros(rng.next_u64() % 3000));
        c.0.kill().unwrap();
        c.0.wait().unwrap();
        // Whatever it reported before dying returned from `save`.
        reader.join().unwrap();
        for line in rx.try_iter() {
            if let Some(v) = report(&line, "saved") {
                last_reported = v;
            }
        }

        let found = delta::load(&path, None, &LoadLimits::default()).unwrap_or_else(|e| panic!("kill {kill}: {e}"));
        let v = found.summary.steps;
        assert!(v == last_reported || v == last_reported + 1, "kill {kill}: found {v}, last reported {last_reported}");
        assert_eq!(found, delta(v), "kill {kill}: the delta is not the one the child wrote");
        in_flight += usize::from(v > last_reported);
        last_reported = v;
        let left = temps(&dir);
        assert!(left.len() <= 1, "kill {kill}: {left:?}");
        leftovers += left.len();
    }
    let removed = delta::recover(&dir).unwrap();
    assert!(temps(&dir).is_empty());
    println!(
        "{KILLS} kills: {KILLS} loads, 0 failures; {in_flight} found the save in flight; {leftovers} left a temporary file (each removed by the next save; recover removed the last {removed}); {last_reported} saves in all"
    );
    // The kills landed in the middle of saves, or the test checked nothing.
    assert!(leftovers > 0, "no kill interrupted a save");
    std::fs::remove_dir_all(&dir).unwrap();
}
