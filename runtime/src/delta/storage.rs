//! [`Storage`]: the few filesystem operations the delta store needs, so that tests can put a
//! recording, fault-injecting filesystem in place of the real one ([`FsStorage`]).

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;

/// The filesystem operations a save and a load need.
///
/// Each method is one step of the store's protocol (see `SPEC.md`, "Saving"), so a test
/// storage sees, and can fail or cut power at, every step a save takes.
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
    /// The names in the folder `dir`, in any order.
    ///
    /// Only the clean-up of temporary files left by a crash lists a folder. The default fails
    /// with [`io::ErrorKind::Unsupported`]: a storage that cannot list keeps working, and
    /// leftover temporary files stay where they are (they never affect a delta).
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        let _ = dir;
        Err(io::ErrorKind::Unsupported.into())
    }
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
        // A second handle is enough: fsync flushes the file, not the handle, and Linux (since
        // 4.16) reports a writeback error that no one has seen yet to the next fsync on any
        // handle of the still-cached file.
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

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        std::fs::read_dir(dir)?.map(|e| e.map(|e| e.file_name())).collect()
    }
}
