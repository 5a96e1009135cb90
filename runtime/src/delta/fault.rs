//! A recording, fault-injecting, in-memory [`Storage`] for the store's tests: it logs every
//! operation, fails chosen operations with EIO or ENOSPC, and models what a power cut keeps.
//!
//! The model of the disk (the fault model `docs/robustness.md` states):
//!
//! - A file's bytes reach the disk only when it is flushed ([`Storage::sync`]). Until then a
//!   power cut keeps all of them, none (an empty file), a prefix of whole 512-byte sectors, or
//!   any subset of its sectors with the others reading as zeros.
//! - A folder's changes (a file created, renamed, removed) reach the disk only when the folder
//!   is flushed ([`Storage::sync_dir`]). Until then a power cut keeps any subset of them, each
//!   change whole (a rename is atomic), whatever their order.
//! - Operations after the cut do nothing and fail.
//!
//! A folder must be made with [`FaultFs::mkdir`] before files go in it; files are named by
//! their folder and name, and nothing is shared between folders.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

use super::storage::Storage;
use crate::train::rng::Rng;

/// The unit a torn write keeps or loses whole.
pub const SECTOR: usize = 512;

/// One call to the storage, as the log records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// [`Storage::list_dir`].
    ListDir(PathBuf),
    /// [`Storage::write_new`].
    Write(PathBuf),
    /// [`Storage::sync`].
    Sync(PathBuf),
    /// [`Storage::rename`].
    Rename(PathBuf, PathBuf),
    /// [`Storage::sync_dir`].
    SyncDir(PathBuf),
    /// [`Storage::read`].
    Read(PathBuf),
    /// [`Storage::remove`].
    Remove(PathBuf),
}

impl Op {
    /// A short name for tables: `list`, `write`, `fsync`, `rename`, `fsync(dir)`, `read`,
    /// `remove`.
    pub fn name(&self) -> &'static str {
        match self {
            Op::ListDir(_) => "list",
            Op::Write(_) => "write",
            Op::Sync(_) => "fsync",
            Op::Rename(..) => "rename",
            Op::SyncDir(_) => "fsync(dir)",
            Op::Read(_) => "read",
            Op::Remove(_) => "remove",
        }
    }
}

/// An error a disk reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Errno {
    /// An I/O error (EIO): the device failed.
    Eio,
    /// No space left on the device (ENOSPC).
    Enospc,
}

impl Errno {
    /// The code Linux and the BSDs use.
    pub fn code(self) -> i32 {
        match self {
            Errno::Eio => 5,
            Errno::Enospc => 28,
        }
    }

    /// The error as the operating system would report it.
    pub fn error(self) -> io::Error {
        io::Error::from_raw_os_error(self.code())
    }
}

/// An injected failure: operation `at` (counting from 0) fails with `errno`, and so does every
/// later one when `sticky` (a dead device, a disk that stays full).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The first operation that fails.
    pub at: usize,
    /// What it fails with.
    pub errno: Errno,
    /// Whether every later operation fails too.
    pub sticky: bool,
}

/// What a power cut does to file bytes that were written but not flushed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataLoss {
    /// There were none: every file written had been flushed.
    Nothing,
    /// All of them reached the disk.
    Keep,
    /// None did: the file is empty.
    Drop,
    /// Only the first `n` sectors did (`0 < n < sectors`).
    TearPrefix(usize),
    /// A random subset of the sectors did (drawn from this seed); the others read as zeros.
    TearSectors(u64),
}

impl DataLoss {
    /// The column of a result table: `all flushed`, `keep`, `drop`, `tear-prefix`,
    /// `tear-sectors`.
    pub fn name(self) -> &'static str {
        match self {
            DataLoss::Nothing => "all flushed",
            DataLoss::Keep => "keep",
            DataLoss::Drop => "drop",
            DataLoss::TearPrefix(_) => "tear-prefix",
            DataLoss::TearSectors(_) => "tear-sectors",
        }
    }
}

/// A folder change not yet flushed.
#[derive(Clone, Debug)]
enum DirOp {
    Create(OsString, usize),
    Rename(OsString, OsString, usize),
    Remove(OsString),
}

#[derive(Clone, Debug, Default)]
struct Dir {
    /// Names as the running system sees them: name → inode.
    live: BTreeMap<OsString, usize>,
    /// Names as the disk holds them.
    durable: BTreeMap<OsString, usize>,
    /// The changes from `durable` to `live`, in order.
    pending: Vec<DirOp>,
}

#[derive(Clone, Debug)]
struct Inode {
    data: Vec<u8>,
    /// Whether `data` is on the disk; an unflushed file is empty there.
    synced: bool,
}

#[derive(Clone, Debug, Default)]
struct State {
    dirs: BTreeMap<PathBuf, Dir>,
    inodes: Vec<Inode>,
    log: Vec<Op>,
    cut_after: Option<usize>,
    failure: Option<Failure>,
}

/// The in-memory filesystem; see the module's documentation.
#[derive(Debug, Default)]
pub struct FaultFs {
    state: RefCell<State>,
}

/// How an operation goes.
enum Verdict {
    /// It runs.
    Run,
    /// The device reports an error (a write may have been partly done).
    Fail(io::Error),
    /// The power is off: nothing happens, and the call fails.
    Off,
}

impl Verdict {
    /// `Ok` for an operation that runs; the error for one that fails whole.
    fn run(self) -> io::Result<()> {
        match self {
            Verdict::Run => Ok(()),
            Verdict::Fail(e) => Err(e),
            Verdict::Off => Err(power_off()),
        }
    }
}

fn power_off() -> io::Error {
    io::Error::other("the power is off")
}

impl FaultFs {
    /// An empty filesystem with the folders `dirs`, all of it on the disk.
    pub fn new(dirs: &[&Path]) -> FaultFs {
        let fs = FaultFs::default();
        for d in dirs {
            fs.mkdir(d);
        }
        fs
    }

    /// Makes the folder `dir` (durably).
    pub fn mkdir(&self, dir: &Path) {
        self.state.borrow_mut().dirs.entry(dir.to_owned()).or_default();
    }

    /// Puts `bytes` at `path`, durably, without logging: the state a test starts from.
    pub fn put(&self, path: &Path, bytes: &[u8]) {
        let mut st = self.state.borrow_mut();
        let (dir, name) = parts(path);
        let ino = st.inodes.len();
        st.inodes.push(Inode { data: bytes.to_vec(), synced: true });
        let d = st.dirs.entry(dir).or_default();
        d.live.insert(name.clone(), ino);
        d.durable.insert(name, ino);
    }

    /// Cuts the power after `n` operations: operation `n` and every later one does nothing and
    /// fails.
    pub fn cut_after(&self, n: usize) {
        self.state.borrow_mut().cut_after = Some(n);
    }

    /// Injects `failure`.
    pub fn fail(&self, failure: Failure) {
        self.state.borrow_mut().failure = Some(failure);
    }

    /// Ends an injected failure: later operations run again.
    pub fn heal(&self) {
        self.state.borrow_mut().failure = None;
    }

    /// Every operation so far, in order, failed ones included.
    pub fn log(&self) -> Vec<Op> {
        self.state.borrow().log.clone()
    }

    /// Forgets the log (and the operation count the faults are placed by).
    pub fn clear_log(&self) {
        self.state.borrow_mut().log.clear();
    }

    /// The names in `dir` as the running system sees them, sorted.
    pub fn names(&self, dir: &Path) -> Vec<String> {
        let st = self.state.borrow();
        st.dirs.get(dir).map_or_else(Vec::new, |d| d.live.keys().map(|n| n.to_string_lossy().into_owned()).collect())
    }

    /// Every state the disk can be in after a power cut now, each as a new filesystem on which
    /// everything is durable, with the data loss that made it.
    ///
    /// Each subset of the unflushed folder changes is combined with each way of losing
    /// unflushed bytes: [`DataLoss::Keep`], [`DataLoss::Drop`], every [`DataLoss::TearPrefix`],
    /// and `tear_draws` [`DataLoss::TearSectors`] drawn from `seed`; or, when every file has
    /// been flushed, with [`DataLoss::Nothing`] alone.
    pub fn crash_images(&self, tear_draws: usize, seed: u64) -> Vec<(DataLoss, FaultFs)> {
        let st = self.state.borrow();
        let pending: Vec<(&PathBuf, &DirOp)> = st.dirs.iter().flat_map(|(p, d)| d.pending.iter().map(move |op| (p, op))).collect();
        let unflushed: Vec<usize> = st.inodes.iter().filter(|i| !i.synced).map(|i| i.data.len().div_ceil(SECTOR)).collect();
        let losses = if unflushed.is_empty() {
            vec![DataLoss::Nothing]
        } else {
            let max_sectors = unflushed.iter().copied().max().unwrap_or(0);
            let mut rng = Rng::new(seed);
            let mut losses = vec![DataLoss::Keep, DataLoss::Drop];
            losses.extend((1..max_sectors).map(DataLoss::TearPrefix));
            losses.extend((0..tear_draws).map(|_| DataLoss::TearSectors(rng.next_u64())));
            losses
        };

        let mut images = Vec::new();
        for mask in 0..1u64 << pending.len() {
            let mut dirs: BTreeMap<PathBuf, BTreeMap<OsString, usize>> = st.dirs.iter().map(|(p, d)| (p.clone(), d.durable.clone())).collect();
            for (i, (dir, op)) in pending.iter().enumerate() {
                if mask >> i & 1 == 0 {
                    continue;
                }
                let names = dirs.get_mut(*dir).expect("every pending change's folder exists");
                match op {
                    DirOp::Create(name, ino) => {
                        names.insert(name.clone(), *ino);
                    }
                    DirOp::Rename(from, to, ino) => {
                        names.remove(from);
                        names.insert(to.clone(), *ino);
                    }
                    DirOp::Remove(name) => {
                        names.remove(name);
                    }
                }
            }
            for &loss in &losses {
                let inodes = st.inodes.iter().enumerate().map(|(i, node)| Inode { data: surviving(node, loss, i as u64), synced: true }).collect();
                let dirs = dirs.iter().map(|(p, names)| (p.clone(), Dir { live: names.clone(), durable: names.clone(), pending: Vec::new() })).collect();
                let image = FaultFs { state: RefCell::new(State { dirs, inodes, ..State::default() }) };
                images.push((loss, image));
            }
        }
        images
    }

    /// Logs `op` and decides whether it runs.
    fn begin(&self, op: Op) -> Verdict {
        let mut st = self.state.borrow_mut();
        let i = st.log.len();
        st.log.push(op);
        if st.cut_after.is_some_and(|n| i >= n) {
            return Verdict::Off;
        }
        match st.failure {
            Some(f) if i == f.at || (f.sticky && i > f.at) => Verdict::Fail(f.errno.error()),
            _ => Verdict::Run,
        }
    }
}

/// What survives of `node`'s bytes under `loss`; `salt` makes each file's sector draw its own.
fn surviving(node: &Inode, loss: DataLoss, salt: u64) -> Vec<u8> {
    if node.synced {
        return node.data.clone();
    }
    let data = &node.data;
    match loss {
        DataLoss::Nothing | DataLoss::Keep => data.clone(),
        DataLoss::Drop => Vec::new(),
        DataLoss::TearPrefix(n) => data[..(n * SECTOR).min(data.len())].to_vec(),
        DataLoss::TearSectors(seed) => {
            let mut rng = Rng::new(seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut out = data.clone();
            for sector in out.chunks_mut(SECTOR) {
                if rng.next_u64() & 1 == 0 {
                    sector.fill(0);
                }
            }
            out
        }
    }
}

/// The folder and the name of `path`.
fn parts(path: &Path) -> (PathBuf, OsString) {
    let dir = path.parent().map_or_else(PathBuf::new, Path::to_path_buf);
    (dir, path.file_name().map(OsString::from).unwrap_or_default())
}

fn not_found() -> io::Error {
    io::ErrorKind::NotFound.into()
}

impl Storage for FaultFs {
    fn write_new(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let verdict = self.begin(Op::Write(path.to_owned()));
        if let Verdict::Off = verdict {
            return Err(power_off());
        }
        let mut st = self.state.borrow_mut();
        let (dir, name) = parts(path);
        let ino = st.inodes.len();
        let d = st.dirs.get_mut(&dir).ok_or_else(not_found)?;
        if d.live.contains_key(&name) {
            return Err(io::ErrorKind::AlreadyExists.into());
        }
        d.live.insert(name.clone(), ino);
        d.pending.push(DirOp::Create(name, ino));
        match verdict {
            Verdict::Run => {
                st.inodes.push(Inode { data: bytes.to_vec(), synced: false });
                Ok(())
            }
            // The file was created and part of the bytes written before the device gave up,
            // as a real write that fails halfway leaves it.
            Verdict::Fail(e) => {
                st.inodes.push(Inode { data: bytes[..bytes.len() / 2].to_vec(), synced: false });
                Err(e)
            }
            Verdict::Off => Err(power_off()),
        }
    }

    fn sync(&self, path: &Path) -> io::Result<()> {
        self.begin(Op::Sync(path.to_owned())).run()?;
        let mut st = self.state.borrow_mut();
        let (dir, name) = parts(path);
        let ino = *st.dirs.get(&dir).and_then(|d| d.live.get(&name)).ok_or_else(not_found)?;
        st.inodes[ino].synced = true;
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.begin(Op::Rename(from.to_owned(), to.to_owned())).run()?;
        let mut st = self.state.borrow_mut();
        let ((dir, name), (to_dir, to_name)) = (parts(from), parts(to));
        if dir != to_dir {
            return Err(io::Error::new(io::ErrorKind::CrossesDevices, "the model renames within a folder only"));
        }
        let d = st.dirs.get_mut(&dir).ok_or_else(not_found)?;
        let ino = d.live.remove(&name).ok_or_else(not_found)?;
        d.live.insert(to_name.clone(), ino);
        d.pending.push(DirOp::Rename(name, to_name, ino));
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.begin(Op::SyncDir(dir.to_owned())).run()?;
        let mut st = self.state.borrow_mut();
        let d = st.dirs.get_mut(dir).ok_or_else(not_found)?;
        d.durable = d.live.clone();
        d.pending.clear();
        Ok(())
    }

    fn read(&self, path: &Path, max_bytes: u64) -> io::Result<Vec<u8>> {
        self.begin(Op::Read(path.to_owned())).run()?;
        let st = self.state.borrow();
        let (dir, name) = parts(path);
        let ino = *st.dirs.get(&dir).and_then(|d| d.live.get(&name)).ok_or_else(not_found)?;
        let data = &st.inodes[ino].data;
        let cap = usize::try_from(max_bytes.saturating_add(1)).unwrap_or(usize::MAX);
        Ok(data[..data.len().min(cap)].to_vec())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.begin(Op::Remove(path.to_owned())).run()?;
        let mut st = self.state.borrow_mut();
        let (dir, name) = parts(path);
        let d = st.dirs.get_mut(&dir).ok_or_else(not_found)?;
        d.live.remove(&name).ok_or_else(not_found)?;
        d.pending.push(DirOp::Remove(name));
        Ok(())
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        self.begin(Op::ListDir(dir.to_owned())).run()?;
        let st = self.state.borrow();
        Ok(st.dirs.get(dir).ok_or_else(not_found)?.live.keys().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn fault_fs_unflushed_files_and_renames_can_be_lost() {
        let fs = FaultFs::new(&[&p("d")]);
        fs.put(&p("d/old"), b"old");
        fs.write_new(&p("d/t"), &[7; 3 * SECTOR]).unwrap();
        fs.rename(&p("d/t"), &p("d/old")).unwrap();
        assert_eq!(fs.read(&p("d/old"), 1 << 20).unwrap(), [7; 3 * SECTOR]);

        let images = fs.crash_images(4, 1);
        // 2 pending changes (create, rename) → 4 subsets; keep, drop, 2 prefixes, 4 draws.
        assert_eq!(images.len(), 4 * 8);
        let mut seen = std::collections::BTreeSet::new();
        for (loss, img) in &images {
            let got = img.read(&p("d/old"), 1 << 20).unwrap();
            seen.insert(match got.as_slice() {
                b"old" => "old",
                [] => "empty",
                x if x == [7; 3 * SECTOR] => "new",
                x if x.len() < 3 * SECTOR => "prefix",
                _ => "holes",
            });
            if *loss == DataLoss::Drop && got != b"old" {
                assert!(got.is_empty(), "{loss:?}: an unflushed file is empty when its bytes are dropped");
            }
        }
        // Without flushes, every bad outcome the store must guard against occurs.
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["empty", "holes", "new", "old", "prefix"]);
    }

    #[test]
    fn fault_fs_flushed_state_survives_every_cut() {
        let fs = FaultFs::new(&[&p("d")]);
        fs.write_new(&p("d/t"), &[1; 1000]).unwrap();
        fs.sync(&p("d/t")).unwrap();
        fs.rename(&p("d/t"), &p("d/f")).unwrap();
        fs.sync_dir(&p("d")).unwrap();
        let images = fs.crash_images(4, 2);
        assert_eq!(images.len(), 1, "one state: nothing is pending");
        for (loss, img) in images {
            assert_eq!(loss, DataLoss::Nothing);
            assert_eq!(img.read(&p("d/f"), 1 << 20).unwrap(), [1; 1000], "{loss:?}");
            assert_eq!(img.names(&p("d")), ["f"]);
        }
    }

    #[test]
    fn fault_fs_cut_and_failures_stop_operations() {
        let fs = FaultFs::new(&[&p("d")]);
        fs.fail(Failure { at: 1, errno: Errno::Enospc, sticky: false });
        fs.write_new(&p("d/a"), b"x").unwrap();
        let err = fs.write_new(&p("d/b"), &[1, 2, 3, 4]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(28));
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        // The failed write left a partial file, as a real one does.
        assert_eq!(fs.read(&p("d/b"), 100).unwrap(), [1, 2]);
        fs.cut_after(3);
        assert!(fs.remove(&p("d/b")).is_err());
        assert_eq!(fs.names(&p("d")), ["a", "b"]);
        assert_eq!(fs.log().iter().map(Op::name).collect::<Vec<_>>(), ["write", "write", "read", "remove"]);
    }
}
