//! Saving and loading delta files, atomically.
//!
//! A save never leaves a half-written delta where a good one was: the bytes go to a temporary
//! file in the target's folder, are flushed to the disk, and only then renamed over the target
//! (an atomic replacement on POSIX filesystems), after which the folder itself is flushed so
//! the rename survives a power loss. If anything fails before the rename, the temporary file
//! is removed and the old delta is untouched.
//!
//! A crash can still leave the temporary file behind (never the target half-written). Each
//! save first removes the leftovers of earlier saves to the same target, and [`recover`]
//! removes those of every delta in a folder.
//!
//! The filesystem is reached through [`Storage`], so tests can inject failures at each step.

use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::error::DeltaError;
use super::format::{from_bytes, to_bytes, Delta, LoadLimits};
use super::storage::{FsStorage, Storage};
use super::Precision;

/// Saves `delta` to `path` in `precision`, atomically (see the module's documentation).
///
/// The delta is converted and validated first; an invalid one is refused and nothing is
/// written. If only the final flush of the folder fails, the new delta is already in place
/// but might not survive a power loss; the error says so.
pub fn save(delta: &Delta, path: impl AsRef<Path>, precision: Precision) -> Result<(), DeltaError> {
    save_with(&FsStorage, delta, path.as_ref(), precision)
}

/// Loads the delta at `path`, refusing one trained on another base than `expected_base`
/// (when given) and anything larger than `limits` allow.
pub fn load(
    path: impl AsRef<Path>,
    expected_base: Option<&[u8; 32]>,
    limits: &LoadLimits,
) -> Result<Delta, DeltaError> {
    load_with(&FsStorage, path.as_ref(), expected_base, limits)
}

/// [`load`] through `storage`.
pub fn load_with<S: Storage + ?Sized>(
    storage: &S,
    path: &Path,
    expected_base: Option<&[u8; 32]>,
    limits: &LoadLimits,
) -> Result<Delta, DeltaError> {
    let bytes = storage.read(path, limits.max_bytes).map_err(io_err("read", path))?;
    from_bytes(&bytes, expected_base, limits)
}

/// How many names a save tries before giving up on finding an unused temporary one.
const TEMP_ATTEMPTS: u32 = 16;

/// [`save`] through `storage`.
///
/// The steps, each one call to `storage`: list the folder and remove the temporary files of
/// earlier saves to the same target (failures here are ignored: a leftover never affects a
/// delta), write a new temporary file, flush it, rename it over `path`, flush the folder.
pub fn save_with<S: Storage + ?Sized>(
    storage: &S,
    delta: &Delta,
    path: &Path,
    precision: Precision,
) -> Result<(), DeltaError> {
    let bytes = to_bytes(delta, precision)?;
    let (dir, name) = split(path)?;
    remove_temps(storage, dir, name);

    let mut attempt = 0;
    let temp = loop {
        let temp = dir.join(temp_name(name));
        match storage.write_new(&temp, &bytes) {
            Ok(()) => break temp,
            // A concurrent save's file: keep it and try another name.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt + 1 < TEMP_ATTEMPTS => attempt += 1,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(io_err("create a temporary file", &temp)(e))
            }
            Err(e) => return Err(discard(storage, &temp, io_err("write the temporary file", &temp)(e))),
        }
    };
    // A failed flush is never retried: after an fsync error Linux may have dropped the dirty
    // pages and would report the next fsync as a success.
    if let Err(e) = storage.sync(&temp) {
        return Err(discard(storage, &temp, io_err("flush the temporary file", &temp)(e)));
    }
    if let Err(e) = storage.rename(&temp, path) {
        return Err(discard(storage, &temp, io_err("rename the temporary file over", path)(e)));
    }
    storage.sync_dir(dir).map_err(io_err(AFTER_RENAME, dir))
}

/// The action of the error a save reports when only the final flush of the folder failed.
const AFTER_RENAME: &str = "flush, after putting the new delta in place, the folder";

/// Removes the temporary files that interrupted saves left in `dir` (a crash, a kill, or a
/// failure to remove one after an error) and returns how many it removed.
///
/// Only names of the form a save gives its temporary files (`.NAME.PID-N.tmp`) are touched.
/// Call it when no save into `dir` is running, for example when an app starts: a save running
/// at the same time would lose its temporary file and fail (its target stays intact). A save
/// also cleans up after earlier saves to its own target, so calling this is optional.
pub fn recover(dir: impl AsRef<Path>) -> Result<usize, DeltaError> {
    recover_with(&FsStorage, dir.as_ref())
}

/// [`recover`] through `storage`. Stops at the first file it cannot remove.
pub fn recover_with<S: Storage + ?Sized>(storage: &S, dir: &Path) -> Result<usize, DeltaError> {
    let names = storage.list_dir(dir).map_err(io_err("list", dir))?;
    let mut removed = 0;
    for name in names.iter().filter(|n| temp_target(n).is_some()) {
        let path = dir.join(name);
        match storage.remove(&path) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove the leftover temporary file", &path)(e)),
        }
    }
    Ok(removed)
}

impl DeltaError {
    /// The kind of the filesystem error behind a [`DeltaError::Io`], `None` for any other
    /// error: [`io::ErrorKind::StorageFull`] for a full disk (ENOSPC), for example. A failed
    /// save is worth retrying after freeing space, while other I/O errors (EIO, whose kind is
    /// uncategorized; see [`io::Error::raw_os_error`]) point at the device.
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            DeltaError::Io { source, .. } => Some(source.kind()),
            _ => None,
        }
    }

    /// Whether this is the error of a save whose only failure was the final flush of the
    /// folder: the new delta is in place and loads, but a power loss may still bring back the
    /// old one.
    pub fn new_delta_in_place(&self) -> bool {
        matches!(self, DeltaError::Io { action, .. } if *action == AFTER_RENAME)
    }
}

/// The folder and the file name of `path`.
fn split(path: &Path) -> Result<(&Path, &OsStr), DeltaError> {
    let name = path.file_name().ok_or_else(|| DeltaError::Io {
        action: "save to",
        path: path.to_owned(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "the path does not name a file"),
    })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Ok((dir, name))
}

/// Removes the temporary files in `dir` of the target `name`, ignoring every failure: this is
/// housekeeping, and the save that follows reports whatever matters.
fn remove_temps<S: Storage + ?Sized>(storage: &S, dir: &Path, name: &OsStr) {
    let Ok(names) = storage.list_dir(dir) else { return };
    for found in names {
        if temp_target(&found) == Some(name.as_encoded_bytes()) {
            let _ = storage.remove(&dir.join(found));
        }
    }
}

/// Removes the temporary file after a failed save and returns the save's error. A failure to
/// remove is not reported: the error worth reporting is the one that stopped the save, and a
/// leftover temporary file does not touch the delta at the target path (the next save to it,
/// or [`recover`], removes it).
fn discard<S: Storage + ?Sized>(storage: &S, temp: &Path, err: DeltaError) -> DeltaError {
    let _ = storage.remove(temp);
    err
}

/// `.NAME.PID-N.tmp`: hidden, unique within this process, and unlikely to collide across
/// processes (collisions are retried anyway).
fn temp_name(name: &OsStr) -> OsString {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut temp = OsString::from(".");
    temp.push(name);
    temp.push(format!(".{}-{n}.tmp", std::process::id()));
    temp
}

/// The target's name, as [`OsStr::as_encoded_bytes`], if `file` is named as [`temp_name`]
/// names a temporary file; else `None`.
fn temp_target(file: &OsStr) -> Option<&[u8]> {
    // Bytes rather than `str`: a target's name need not be UTF-8. The separators are ASCII,
    // which the platform's encoding of an `OsStr` keeps as single bytes.
    let inner = file.as_encoded_bytes().strip_prefix(b".")?.strip_suffix(b".tmp")?;
    let dot = inner.iter().rposition(|&b| b == b'.')?;
    let (target, tag) = (&inner[..dot], &inner[dot + 1..]);
    let dash = tag.iter().position(|&b| b == b'-')?;
    let digits = |x: &[u8]| !x.is_empty() && x.iter().all(u8::is_ascii_digit);
    (!target.is_empty() && digits(&tag[..dash]) && digits(&tag[dash + 1..])).then_some(target)
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> DeltaError {
    let path: PathBuf = path.to_owned();
    move |source| DeltaError::Io { action, path, source }
}

#[cfg(test)]
mod tests {
    //! The store's protocol against the fault model of `fault.rs`: the order of its steps, a
    //! power cut after each of them, and EIO or ENOSPC at each of them. The tables these tests
    //! print (`cargo test -p kilotune --lib delta::store -- --nocapture`) are the ones in
    //! `docs/robustness.md`.

    use std::collections::BTreeMap;
    use std::fmt::Write as _;

    use super::*;
    use crate::delta::fault::{DataLoss, Errno, Failure, FaultFs, Op};
    use crate::delta::{NamedTensor, TrainingSummary};
    use crate::peft::PeftMethod;

    const F32: Precision = Precision::F32;

    fn dir() -> PathBuf {
        PathBuf::from("files")
    }

    fn target() -> PathBuf {
        dir().join("user.ktd")
    }

    /// A stale temporary file of the target, as a crashed process (pid 1 is never a test's)
    /// leaves it.
    fn stale() -> PathBuf {
        dir().join(".user.ktd.1-0.tmp")
    }

    /// The delta of version `v`: 2,000 values, about 8 KB, so a file spans 16 sectors and
    /// tears in many ways.
    fn delta(v: u64) -> Delta {
        Delta {
            base_fingerprint: [9; 32],
            method: PeftMethod::default(),
            head: None,
            tensors: vec![NamedTensor::f32("w", &[2000], (0..2000).map(|i| (i as f32 + v as f32) * 1e-3).collect())],
            summary: TrainingSummary { steps: v, ..TrainingSummary::default() },
        }
    }

    /// Where a test starts from: the old delta (if any) and a stale temporary file (if any),
    /// both on the disk.
    #[derive(Clone, Copy, Debug)]
    struct Scenario {
        name: &'static str,
        old: bool,
        stale: bool,
    }

    const SCENARIOS: [Scenario; 3] = [
        Scenario { name: "first save (no old delta)", old: false, stale: false },
        Scenario { name: "replace the old delta", old: true, stale: false },
        Scenario { name: "replace, with a stale temporary file", old: true, stale: true },
    ];

    impl Scenario {
        fn fs(self) -> FaultFs {
            let fs = FaultFs::new(&[&dir()]);
            if self.old {
                fs.put(&target(), &to_bytes(&delta(1), F32).unwrap());
            }
            if self.stale {
                fs.put(&stale(), &[0xAB; 1000]);
            }
            fs
        }
    }

    /// What a load of the target finds.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Found {
        /// The old delta, or no file where there was none.
        Old,
        /// The delta being saved ([`delta`] 2).
        New,
        /// Anything else: an error, or another delta.
        Bad,
    }

    fn found(storage: &dyn Storage, scenario: Scenario) -> Found {
        match load_with(storage, &target(), None, &LoadLimits::default()) {
            Ok(d) if d == delta(2) => Found::New,
            Ok(d) if scenario.old && d == delta(1) => Found::Old,
            Err(DeltaError::Io { source, .. }) if !scenario.old && source.kind() == io::ErrorKind::NotFound => Found::Old,
            _ => Found::Bad,
        }
    }

    fn temps(fs: &FaultFs) -> usize {
        fs.names(&dir()).iter().filter(|n| temp_target(OsStr::new(n)).is_some()).count()
    }

    /// Passes every call to the fault filesystem, except that `skip` succeeds without doing
    /// anything: a save protocol with that step missing.
    struct Skipping<'a> {
        fs: &'a FaultFs,
        skip: &'static str,
    }

    impl Storage for Skipping<'_> {
        fn write_new(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
            self.fs.write_new(path, bytes)
        }
        fn sync(&self, path: &Path) -> io::Result<()> {
            if self.skip == "fsync" {
                return Ok(());
            }
            self.fs.sync(path)
        }
        fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
            self.fs.rename(from, to)
        }
        fn sync_dir(&self, dir: &Path) -> io::Result<()> {
            if self.skip == "fsync(dir)" {
                return Ok(());
            }
            self.fs.sync_dir(dir)
        }
        fn read(&self, path: &Path, max_bytes: u64) -> io::Result<Vec<u8>> {
            self.fs.read(path, max_bytes)
        }
        fn remove(&self, path: &Path) -> io::Result<()> {
            self.fs.remove(path)
        }
        fn list_dir(&self, dir: &Path) -> io::Result<Vec<OsString>> {
            self.fs.list_dir(dir)
        }
    }

    /// Random sector subsets tried per disk state of the folder.
    const TEAR_DRAWS: usize = 32;

    /// Counts of one cell of the crash table.
    #[derive(Clone, Copy, Debug, Default)]
    struct Cell {
        cases: usize,
        ok: usize,
        old: usize,
        new: usize,
    }

    /// The crash matrix of one scenario: for a power cut after each operation of the save
    /// (0 = before the first), every disk state the fault model allows, loaded. A state passes
    /// when the load finds the old or the new delta, and the new one if the save had returned
    /// `Ok`; after it, `recover` leaves no temporary file and a save works. Returns the
    /// operations, the cells by (cut, data loss), and the failures.
    /// A crash matrix: the operations, the cells by (cut, data loss), and the failures.
    type Matrix = (Vec<Op>, BTreeMap<(usize, &'static str), Cell>, Vec<String>);

    fn crash_matrix(scenario: Scenario, skip: &'static str) -> Matrix {
        let clean = scenario.fs();
        save_with(&Skipping { fs: &clean, skip }, &delta(2), &target(), F32).expect("a save without faults works");
        let ops = clean.log();
        let mut cells = BTreeMap::new();
        let mut failures = Vec::new();
        for cut in 0..=ops.len() {
            let fs = scenario.fs();
            fs.cut_after(cut);
            let saved = save_with(&Skipping { fs: &fs, skip }, &delta(2), &target(), F32).is_ok();
            assert_eq!(saved, cut == ops.len(), "a save returns Ok only when every operation ran");
            for (loss, image) in fs.crash_images(TEAR_DRAWS, cut as u64) {
                let got = found(&image, scenario);
                let good = match got {
                    Found::New => true,
                    Found::Old => !saved,
                    Found::Bad => false,
                };
                let cell: &mut Cell = cells.entry((cut, loss.name())).or_default();
                cell.cases += 1;
                cell.ok += usize::from(good);
                cell.old += usize::from(got == Found::Old);
                cell.new += usize::from(got == Found::New);
                if !good {
                    failures.push(format!("cut after {cut}, {loss:?}: {got:?}"));
                    continue;
                }
                // After the reboot: the leftovers go, and the next save works.
                if recover_with(&image, &dir()).is_err() || temps(&image) != 0 {
                    failures.push(format!("cut after {cut}, {loss:?}: recover left {:?}", image.names(&dir())));
                }
                let next = save_with(&image, &delta(3), &target(), F32);
                let loaded = load_with(&image, &target(), None, &LoadLimits::default());
                if next.is_err() || loaded.ok() != Some(delta(3)) || image.names(&dir()) != ["user.ktd"] {
                    failures.push(format!("cut after {cut}, {loss:?}: the next save failed"));
                }
            }
        }
        (ops, cells, failures)
    }

    /// The crash table of one scenario, as `docs/robustness.md` shows it.
    fn crash_table(scenario: Scenario, ops: &[Op], cells: &BTreeMap<(usize, &'static str), Cell>) -> String {
        let columns = ["all flushed", "keep", "drop", "tear-prefix", "tear-sectors"];
        let mut t = format!("{}\n\n| power cut after | {} | loads old / new |\n|---|", scenario.name, columns.join(" | "));
        t.push_str(&"---|".repeat(columns.len() + 1));
        for cut in 0..=ops.len() {
            let row = if cut == 0 { "0 (nothing ran)".to_owned() } else { format!("{cut} {}", ops[cut - 1].name()) };
            let _ = write!(t, "\n| {row} |");
            let (mut old, mut new) = (0, 0);
            for c in columns {
                match cells.get(&(cut, c)) {
                    Some(cell) => {
                        let _ = write!(t, " {}/{} |", cell.ok, cell.cases);
                        old += cell.old;
                        new += cell.new;
                    }
                    None => t.push_str(" – |"),
                }
            }
            let _ = write!(t, " {old} / {new} |");
        }
        t
    }

    #[test]
    fn delta_store_save_writes_flushes_renames_then_flushes_the_folder() {
        let fs = SCENARIOS[1].fs();
        save_with(&fs, &delta(2), &target(), F32).unwrap();
        let log = fs.log();
        let [Op::ListDir(listed), Op::Write(temp), Op::Sync(synced), Op::Rename(from, to), Op::SyncDir(flushed)] = log.as_slice() else {
            panic!("unexpected operations: {log:?}");
        };
        assert_eq!((listed, flushed), (&dir(), &dir()));
        assert_eq!(temp.parent(), Some(dir().as_path()), "the temporary file is beside the target");
        assert_eq!(temp.file_name().and_then(temp_target), Some(&b"user.ktd"[..]));
        assert_eq!((synced, from, to), (temp, temp, &target()));

        // A leftover of a crashed save is removed first; a load is one read.
        let fs = SCENARIOS[2].fs();
        save_with(&fs, &delta(2), &target(), F32).unwrap();
        let names: Vec<&str> = fs.log().iter().map(Op::name).collect();
        assert_eq!(names, ["list", "remove", "write", "fsync", "rename", "fsync(dir)"]);
        assert_eq!(fs.log()[1], Op::Remove(stale()));
        fs.clear_log();
        assert_eq!(load_with(&fs, &target(), None, &LoadLimits::default()).unwrap(), delta(2));
        assert_eq!(fs.log(), [Op::Read(target())]);
        assert_eq!(fs.names(&dir()), ["user.ktd"]);
    }

    #[test]
    fn delta_store_power_cut_after_any_operation_leaves_the_old_or_the_new_delta() {
        let mut total = (0, 0);
        for scenario in SCENARIOS {
            let (ops, cells, failures) = crash_matrix(scenario, "");
            println!("{}\n", crash_table(scenario, &ops, &cells));
            assert!(failures.is_empty(), "{}: {} failures, first: {:?}", scenario.name, failures.len(), &failures[..failures.len().min(5)]);
            let cases: usize = cells.values().map(|c| c.cases).sum();
            total = (total.0 + cases, total.1 + cells.values().map(|c| c.ok).sum::<usize>());
            // The model must produce both outcomes where both are possible: a cut between the
            // rename and the folder's flush keeps the rename in some states and not in others.
            let rename = ops.iter().position(|o| matches!(o, Op::Rename(..))).expect("a save renames") + 1;
            let (old, new) = cells.range((rename, "")..(rename + 1, "")).fold((0, 0), |(o, n), (_, c)| (o + c.old, n + c.new));
            assert!(old > 0 && new > 0, "{}: after the rename, old {old} / new {new}", scenario.name);
            // Before the write nothing new exists; once the save returned, only the new delta.
            assert!(cells.range((0, "")..(1, "")).all(|(_, c)| c.old == c.cases));
            assert!(cells.range((ops.len(), "")..).all(|(_, c)| c.new == c.cases));
            // Every way of losing unflushed bytes was tried (after the write).
            for loss in ["keep", "drop", "tear-prefix", "tear-sectors"] {
                assert!(cells.iter().any(|((_, l), c)| *l == loss && c.cases > 0), "{}: no {loss} state", scenario.name);
            }
        }
        println!("all scenarios: {} of {} disk states load the old or the new delta", total.1, total.0);
        assert_eq!(total.0, total.1);
        assert!(total.0 > 400, "only {} states", total.0);
    }

    #[test]
    fn delta_store_crash_matrix_catches_a_save_that_skips_a_flush() {
        // Without the file's flush, a cut after the rename can leave an empty or torn target.
        let (_, cells, failures) = crash_matrix(SCENARIOS[1], "fsync");
        assert!(!failures.is_empty());
        assert!(cells.iter().any(|((_, loss), c)| *loss == DataLoss::Drop.name() && c.ok < c.cases));
        // Without the folder's flush, a save can return Ok and a power cut still bring back
        // the old delta.
        let (ops, cells, failures) = crash_matrix(SCENARIOS[1], "fsync(dir)");
        assert!(!failures.is_empty());
        assert!(cells.range((ops.len(), "")..).any(|(_, c)| c.old > 0));
    }

    #[test]
    fn delta_store_eio_and_enospc_at_any_operation_leave_a_loadable_delta_and_no_leftover() {
        let columns = [(Errno::Eio, false), (Errno::Enospc, false), (Errno::Eio, true), (Errno::Enospc, true)];
        let mut cases = 0;
        for scenario in &SCENARIOS[1..] {
            let clean = scenario.fs();
            save_with(&clean, &delta(2), &target(), F32).unwrap();
            let ops = clean.log();
            let mut table = format!("{}\n\n| fails at | EIO | ENOSPC | EIO, sticky | ENOSPC, sticky |\n|---|---|---|---|---|", scenario.name);
            for (at, op) in ops.iter().enumerate() {
                let _ = write!(table, "\n| {at} {} |", op.name());
                for (errno, sticky) in columns {
                    let case = format!("{}: {errno:?} at {at} {}, sticky {sticky}", scenario.name, op.name());
                    let fs = scenario.fs();
                    fs.fail(Failure { at, errno, sticky });
                    let result = save_with(&fs, &delta(2), &target(), F32);
                    let left = temps(&fs);
                    // A power cut right after the failure still leaves the old or the new delta.
                    for (loss, image) in fs.crash_images(2, at as u64) {
                        let after = found(&image, *scenario);
                        assert!(after == Found::Old || after == Found::New, "{case}, then a power cut ({loss:?}): {after:?}");
                    }
                    fs.heal();
                    let got = found(&fs, *scenario);
                    let outcome = match &result {
                        Ok(()) => {
                            // Only the clean-up before the save may fail without failing it.
                            assert!(matches!(op, Op::ListDir(_) | Op::Remove(_)) && !sticky, "{case}: Ok");
                            assert_eq!(got, Found::New, "{case}");
                            "ok"
                        }
                        Err(e) => {
                            let DeltaError::Io { source, .. } = e else { panic!("{case}: {e:?}") };
                            assert_eq!(source.raw_os_error(), Some(errno.code()), "{case}: {e}");
                            assert_eq!(e.io_kind(), Some(errno.error().kind()), "{case}");
                            if errno == Errno::Enospc {
                                assert_eq!(e.io_kind(), Some(io::ErrorKind::StorageFull), "{case}");
                            }
                            // The old delta stays, unless only the folder's flush failed.
                            assert_eq!(e.new_delta_in_place(), matches!(op, Op::SyncDir(_)), "{case}: {e}");
                            let expect = if e.new_delta_in_place() { Found::New } else { Found::Old };
                            assert_eq!(got, expect, "{case}: {e}");
                            if errno == Errno::Eio { "EIO" } else { "ENOSPC" }
                        }
                    };
                    // The device recovers: the next save removes every leftover.
                    save_with(&fs, &delta(3), &target(), F32).unwrap_or_else(|e| panic!("{case}: the next save: {e}"));
                    assert_eq!(fs.names(&dir()), ["user.ktd"], "{case}: leftovers after the next save");
                    assert_eq!(load_with(&fs, &target(), None, &LoadLimits::default()).unwrap(), delta(3));
                    let target = if got == Found::New { "new" } else { "old" };
                    let _ = write!(table, " {outcome}, {target}, {left}→0 tmp |");
                    cases += 1;
                }
            }
            println!("{table}\n");
        }
        println!("{cases} injected failures: each a typed error or a harmless one, a loadable delta, no leftover after the next save");
        assert_eq!(cases, 4 * (5 + 6));
    }

    #[test]
    fn delta_store_temp_names_are_recognized_and_nothing_else() {
        let t = |s: &str| temp_target(OsStr::new(s)).map(|b| String::from_utf8_lossy(b).into_owned());
        assert_eq!(t(".user.ktd.123-4.tmp").as_deref(), Some("user.ktd"));
        assert_eq!(t(".a.b.c.1-0.tmp").as_deref(), Some("a.b.c"));
        for other in ["user.ktd", ".user.ktd.tmp", ".user.ktd.12-x.tmp", "notes.tmp", "..1-2.tmp", ".user.ktd.1-2.tmp~", ".x.-1.tmp"] {
            assert_eq!(t(other), None, "{other}");
        }
        // A save names its temporary files so that the clean-up finds them.
        let name = temp_name(OsStr::new("ü.ktd"));
        assert_eq!(temp_target(&name), Some("ü.ktd".as_bytes()));
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStrExt;
            let raw = OsStr::from_bytes(b".\xff.ktd.7-7.tmp");
            assert_eq!(temp_target(raw), Some(&b"\xff.ktd"[..]), "names need not be UTF-8");
        }
    }

    #[test]
    fn delta_store_recover_removes_only_leftovers_on_the_real_filesystem() {
        let dir = std::env::temp_dir().join(format!("kilotune-recover-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let keep = ["user.ktd", ".user.ktd.tmp", "notes.tmp", ".hidden"];
        for name in keep.iter().chain(&[".user.ktd.123-4.tmp", ".other.ktd.9-0.tmp"]) {
            std::fs::write(dir.join(name), b"x").unwrap();
        }
        let names = || {
            let mut n: Vec<String> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
            n.sort();
            n
        };
        // A save removes its own target's leftovers, not another delta's.
        save(&delta(2), dir.join("user.ktd"), F32).unwrap();
        assert_eq!(names(), [".hidden", ".other.ktd.9-0.tmp", ".user.ktd.tmp", "notes.tmp", "user.ktd"]);
        std::fs::write(dir.join(".user.ktd.5-5.tmp"), b"x").unwrap();
        assert_eq!(recover(&dir).unwrap(), 2);
        assert_eq!(names(), [".hidden", ".user.ktd.tmp", "notes.tmp", "user.ktd"]);
        assert_eq!(recover(&dir).unwrap(), 0);
        assert_eq!(load(dir.join("user.ktd"), None, &LoadLimits::default()).unwrap(), delta(2));
        assert!(matches!(recover(dir.join("missing")), Err(DeltaError::Io { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
