//! Saving and loading delta files, atomically.
//!
//! A save never leaves a half-written delta where a good one was: the bytes go to a temporary
//! file in the target's folder, are flushed to the disk, and only then renamed over the target
//! (an atomic replacement on POSIX filesystems), after which the folder itself is flushed so
//! the rename survives a power loss. If anything fails before the rename, the temporary file
//! is removed and the old delta is untouched.
//!
//! The filesystem is reached through [`Storage`], so tests can inject failures at each step.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::error::DeltaError;
use super::format::{from_bytes, to_bytes, Delta, LoadLimits};
use super::Precision;

/// The filesystem operations a save and a load need.
pub trait Storage {
    /// Creates `path`, failing with [`io::ErrorKind::AlreadyExists`] if it exists, and writes
    /// all of `bytes` to it.
    fn write_new(&self, path: &Path, bytes: &[u8]) -> io::Result<()>;
    /// Flushes the file at `path` to the disk.
    fn sync(&self, path: &Path) -> io::Result<()>;
    /// Renames `from` to `to`, atomically replacing `to` if it exists.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Flushes the folder `dir` (its list of names) to the disk.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Reads the file at `path`, or only its first `max_bytes + 1` bytes if it is longer, so
    /// the caller can tell it is too large without reading it all.
    fn read(&self, path: &Path, max_bytes: u64) -> io::Result<Vec<u8>>;
    /// Removes the file at `path`.
    fn remove(&self, path: &Path) -> io::Result<()>;
}

/// The real filesystem.
#[derive(Clone, Copy, Debug, Default)]
pub struct FsStorage;

impl Storage for FsStorage {
    fn write_new(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            // A delta is what a model learned about one person: readable by its owner only.
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        options.open(path)?.write_all(bytes)
    }

    fn sync(&self, path: &Path) -> io::Result<()> {
        // Opened for writing because some platforms (Windows) refuse to flush a read-only handle.
        OpenOptions::new().write(true).open(path)?.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        #[cfg(unix)]
        {
            File::open(dir)?.sync_all()
        }
        #[cfg(not(unix))]
        {
            // Elsewhere a folder cannot be opened for flushing; NTFS journals the rename itself.
            let _ = dir;
            Ok(())
        }
    }

    fn read(&self, path: &Path, max_bytes: u64) -> io::Result<Vec<u8>> {
        let file = File::open(path)?;
        let cap = max_bytes.saturating_add(1);
        let hint = file.metadata().map_or(0, |m| m.len()).min(cap);
        let mut bytes = Vec::with_capacity(usize::try_from(hint).unwrap_or(0));
        file.take(cap).read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
}

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
pub fn save_with<S: Storage + ?Sized>(
    storage: &S,
    delta: &Delta,
    path: &Path,
    precision: Precision,
) -> Result<(), DeltaError> {
    let bytes = to_bytes(delta, precision)?;
    let name = path.file_name().ok_or_else(|| DeltaError::Io {
        action: "save to",
        path: path.to_owned(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "the path does not name a file"),
    })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };

    let mut attempt = 0;
    let temp = loop {
        let temp = dir.join(temp_name(name));
        match storage.write_new(&temp, &bytes) {
            Ok(()) => break temp,
            // Someone else's file (a concurrent save, or a stale one left by a crash): keep it
            // and try another name.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt + 1 < TEMP_ATTEMPTS => attempt += 1,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(io_err("create a temporary file", &temp)(e))
            }
            Err(e) => return Err(discard(storage, &temp, io_err("write the temporary file", &temp)(e))),
        }
    };
    if let Err(e) = storage.sync(&temp) {
        return Err(discard(storage, &temp, io_err("flush the temporary file", &temp)(e)));
    }
    if let Err(e) = storage.rename(&temp, path) {
        return Err(discard(storage, &temp, io_err("rename the temporary file over", path)(e)));
    }
    storage.sync_dir(dir).map_err(io_err("flush, after putting the new delta in place, the folder", dir))
}

/// Removes the temporary file after a failed save and returns the save's error. A failure to
/// remove is not reported: the error worth reporting is the one that stopped the save, and a
/// leftover temporary file does not touch the delta at the target path.
fn discard<S: Storage + ?Sized>(storage: &S, temp: &Path, err: DeltaError) -> DeltaError {
    let _ = storage.remove(temp);
    err
}

/// `.NAME.PID-N.tmp`: hidden, unique within this process, and unlikely to collide across
/// processes (collisions are retried anyway).
fn temp_name(name: &std::ffi::OsStr) -> OsString {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut temp = OsString::from(".");
    temp.push(name);
    temp.push(format!(".{}-{n}.tmp", std::process::id()));
    temp
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> DeltaError {
    let path: PathBuf = path.to_owned();
    move |source| DeltaError::Io { action, path, source }
}
