//! `FileVolumes`: a UBI device simulated in a directory, for simulated cards and test mode.
//!
//! ```text
//! DIR/table            volume table: CBOR + CRC-32 (geometry, every volume's name, size,
//!                      data length, update marker and blob file)
//! DIR/table.tmp        the next table while it is being written
//! DIR/blobs/v<id>-<n>  one file per volume holding exactly its data bytes (a dynamic
//!                      volume: LEB k at byte k × LEB size)
//! DIR/blobs/v<id>-<n>.map  dynamic volumes: one byte per LEB, 1 = mapped
//! ```
//!
//! Every operation that changes the table replaces it atomically: write `table.tmp`, fsync
//! it, rename it over `table`, fsync the directory. A multi-volume rename (with the
//! replaced volumes' removal) is therefore one atomic step, as `UBI_IOCRNVOL` is. An update
//! first records the update marker in the table, then truncates and writes the blob, then
//! (when the last announced byte is written) fsyncs the blob and records the data length
//! with the marker cleared: a crash in between leaves the marker set, as on UBI. Blob files
//! no table entry names (a crash after a removal's table write) are deleted at open.
//! A LEB change writes the LEB into the blob and fsyncs it, then sets its byte in the map
//! and fsyncs that: a crash in between leaves the LEB unmapped (reads 0xFF). That is
//! UBI's "old content" only for a LEB that was unmapped before; changing an already
//! mapped LEB here can lose it (UBI keeps the old one). The store only ever changes LEBs
//! of a segment it has not committed, so it never depends on the difference.
//! Capacity is `leb_size` × `total_lebs`, reserved per volume in whole LEBs, so "no space"
//! is real.
//!
//! On a tmpfs directory this is also the RAM store for test mode (persist = false): flash
//! is not touched, and [`FileVolumes::blob_path`] gives init a file per artifact to
//! loop-mount. It does not lock the directory: one process per directory.

use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use super::volumes::{
    Geometry, Rename, UBI_MAX_RNVOL, VolumeError, VolumeErrorKind as Kind, VolumeId, VolumeInfo,
    VolumeOp, VolumeTarget, VolumeWriter, Volumes, check_name,
};

const TABLE: &str = "table";
const TABLE_TMP: &str = "table.tmp";
const BLOBS: &str = "blobs";
const MAGIC: &[u8; 4] = b"SBVT";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    id: u32,
    name: String,
    lebs: u64,
    data_bytes: u64,
    update_marker: bool,
    blob: String,
    /// A dynamic volume (LEB changes; mapping kept in the blob's `.map` file).
    #[serde(default)]
    dynamic: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Table {
    leb_size: u64,
    total_lebs: u64,
    max_volumes: u32,
    next_blob: u64,
    volumes: Vec<Entry>,
}

impl Table {
    fn used_lebs(&self) -> u64 {
        self.volumes.iter().map(|v| v.lebs).sum()
    }
    fn get(&self, id: VolumeId) -> Option<&Entry> {
        self.volumes.iter().find(|v| v.id == id.0)
    }
    fn get_mut(&mut self, id: VolumeId) -> Option<&mut Entry> {
        self.volumes.iter_mut().find(|v| v.id == id.0)
    }
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    table: Table,
    /// Durable steps (table replacements, blob writes) done so far.
    steps: u64,
    /// Fault injection: steps from this one on fail, as if the process died there.
    crash_at: Option<u64>,
}

impl Inner {
    /// Account for one durable step, or fail if the injected crash point is reached.
    fn step(&mut self, op: VolumeOp, target: &dyn Fn() -> VolumeTarget) -> Result<(), VolumeError> {
        if self.crash_at.is_some_and(|c| self.steps >= c) {
            return Err(VolumeError::new(op, target(), Kind::PowerLoss));
        }
        self.steps += 1;
        Ok(())
    }

    /// Replace the table on disk atomically, then adopt it in memory.
    fn commit(
        &mut self,
        next: Table,
        op: VolumeOp,
        target: &dyn Fn() -> VolumeTarget,
    ) -> Result<(), VolumeError> {
        self.step(op, target)?;
        let io = |e| VolumeError::from_io(op, target(), e);
        let mut body = Vec::new();
        ciborium::into_writer(&next, &mut body).map_err(|e| {
            VolumeError::from_io(op, target(), std::io::Error::other(e.to_string()))
        })?;
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&body);
        bytes.extend_from_slice(&crc32fast::hash(&bytes).to_be_bytes());
        let tmp = self.dir.join(TABLE_TMP);
        let mut f = File::create(&tmp).map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        fs::rename(&tmp, self.dir.join(TABLE)).map_err(io)?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        self.table = next;
        Ok(())
    }

    fn blob(&self, e: &Entry) -> PathBuf {
        self.dir.join(BLOBS).join(&e.blob)
    }

    fn map(&self, e: &Entry) -> PathBuf {
        self.dir.join(BLOBS).join(format!("{}.map", e.blob))
    }

    /// Mapped-LEB flags of a dynamic volume (all unmapped if the map was never written).
    fn mapped(&self, e: &Entry) -> Vec<bool> {
        self.mapped_range(e, 0, usize::try_from(e.lebs).unwrap_or(0))
    }

    /// Mapped-LEB flags of LEBs `first..first + count` of a dynamic volume: only that
    /// part of the map is read (a read of a few LEBs does not read the whole map).
    fn mapped_range(&self, e: &Entry, first: usize, count: usize) -> Vec<bool> {
        use std::os::unix::fs::FileExt as _;
        let mut m = vec![0u8; count];
        if let Ok(f) = File::open(self.map(e)) {
            let mut done = 0;
            while done < count {
                match f.read_at(&mut m[done..], (first + done) as u64) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => done += n,
                }
            }
            m[done..].fill(0);
        }
        m.into_iter().map(|b| b == 1).collect()
    }
}

fn read_table(dir: &Path) -> Result<Table, VolumeError> {
    let err = |k| VolumeError::new(VolumeOp::List, VolumeTarget::Device, k);
    let bytes = fs::read(dir.join(TABLE))
        .map_err(|e| VolumeError::from_io(VolumeOp::List, VolumeTarget::Device, e))?;
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        return Err(err(Kind::Io));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32fast::hash(body).to_be_bytes() != crc {
        return Err(err(Kind::Io));
    }
    ciborium::from_reader(&body[4..]).map_err(|_| err(Kind::Io))
}

/// Read a dynamic volume: mapped LEBs from the blob, 0xFF elsewhere, up to its end.
fn read_dynamic(g: &Inner, e: &Entry, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::os::unix::fs::FileExt as _;
    let leb = g.table.leb_size;
    let reserved = e.lebs * leb;
    if offset >= reserved {
        return Ok(0);
    }
    let want = usize::try_from(reserved - offset)
        .unwrap_or(usize::MAX)
        .min(buf.len());
    if want == 0 {
        return Ok(0);
    }
    let first = usize::try_from(offset / leb).unwrap_or(usize::MAX);
    let last = usize::try_from((offset + want as u64 - 1) / leb).unwrap_or(usize::MAX);
    let mapped = g.mapped_range(e, first, last - first + 1);
    let blob = File::open(g.blob(e)).ok();
    let mut done = 0;
    while done < want {
        let pos = offset + done as u64;
        let lnum = usize::try_from(pos / leb).unwrap_or(usize::MAX) - first;
        let n = usize::try_from(leb - pos % leb)
            .unwrap_or(usize::MAX)
            .min(want - done);
        let dst = &mut buf[done..done + n];
        match (&blob, mapped.get(lnum)) {
            (Some(f), Some(true)) => f.read_exact_at(dst, pos)?,
            _ => dst.fill(0xFF),
        }
        done += n;
    }
    Ok(want)
}

/// Opens (creating if absent) a blob or map file to write parts of it in place.
fn open_for_write(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
}

/// A directory-backed UBI device. Cloning shares it.
#[derive(Debug, Clone)]
pub struct FileVolumes {
    inner: Arc<Mutex<Inner>>,
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // The table in memory only changes after the disk copy did; a panicking holder cannot
    // leave it half-updated.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl FileVolumes {
    /// Format `dir` (created if needed, must hold no table yet) as an empty device of
    /// `total_lebs` LEBs of `leb_size` bytes.
    pub fn format(dir: &Path, leb_size: u64, total_lebs: u64) -> Result<Self, VolumeError> {
        let dev = VolumeTarget::Device;
        let io = |e| VolumeError::from_io(VolumeOp::Create, VolumeTarget::Device, e);
        if leb_size == 0 {
            return Err(VolumeError::new(VolumeOp::Create, dev, Kind::Invalid));
        }
        fs::create_dir_all(dir.join(BLOBS)).map_err(io)?;
        if dir.join(TABLE).exists() {
            return Err(VolumeError::new(VolumeOp::Create, dev, Kind::Exists));
        }
        let mut inner = Inner {
            steps: 0,
            crash_at: None,
            dir: dir.to_owned(),
            table: Table {
                leb_size,
                total_lebs,
                max_volumes: 128,
                next_blob: 0,
                volumes: Vec::new(),
            },
        };
        let t = inner.table.clone();
        inner.commit(t, VolumeOp::Create, &|| VolumeTarget::Device)?;
        Ok(Self {
            inner: Arc::new(Mutex::new(inner)),
        })
    }

    /// Open a formatted directory; deletes blob files the table does not name and a stale
    /// `table.tmp`.
    pub fn open(dir: &Path) -> Result<Self, VolumeError> {
        let table = read_table(dir)?;
        let io = |e| VolumeError::from_io(VolumeOp::List, VolumeTarget::Device, e);
        let _ = fs::remove_file(dir.join(TABLE_TMP));
        for f in fs::read_dir(dir.join(BLOBS)).map_err(io)? {
            let f = f.map_err(io)?;
            let name = f.file_name();
            let name = name.to_string_lossy();
            let base = name.strip_suffix(".map").unwrap_or(&name);
            if !table.volumes.iter().any(|v| v.blob == base) {
                fs::remove_file(f.path()).map_err(io)?;
            }
        }
        Ok(Self {
            inner: Arc::new(Mutex::new(Inner {
                dir: dir.to_owned(),
                table,
                steps: 0,
                crash_at: None,
            })),
        })
    }

    /// Open `dir` if formatted, else format it.
    pub fn open_or_format(dir: &Path, leb_size: u64, total_lebs: u64) -> Result<Self, VolumeError> {
        if dir.join(TABLE).exists() {
            Self::open(dir)
        } else {
            Self::format(dir, leb_size, total_lebs)
        }
    }

    /// Fault injection for tests: durable step `n` (0-based, counted from open; a table
    /// replacement or a blob write) and every later one fail with
    /// [`Kind::PowerLoss`], leaving the directory as a crash at that point would.
    pub fn crash_at(&self, n: u64) {
        lock(&self.inner).crash_at = Some(n);
    }

    /// Durable steps done since open (see [`Self::crash_at`]).
    pub fn steps(&self) -> u64 {
        lock(&self.inner).steps
    }

    fn make(&mut self, name: &str, bytes: u64, dynamic: bool) -> Result<VolumeId, VolumeError> {
        let mut g = lock(&self.inner);
        let t = || VolumeTarget::name(name);
        let err = |k| VolumeError::new(VolumeOp::Create, t(), k);
        check_name(name).map_err(err)?;
        if bytes == 0 {
            return Err(err(Kind::Invalid));
        }
        if g.table.volumes.iter().any(|v| v.name == name) {
            return Err(err(Kind::Exists));
        }
        let lebs = bytes.div_ceil(g.table.leb_size);
        let free = g.table.total_lebs.saturating_sub(g.table.used_lebs());
        if lebs > free || g.table.volumes.len() >= g.table.max_volumes as usize {
            return Err(err(Kind::NoSpace));
        }
        let mut next = g.table.clone();
        let id = (0..)
            .find(|i| next.get(VolumeId(*i)).is_none())
            .unwrap_or(u32::MAX);
        next.volumes.push(Entry {
            id,
            name: name.into(),
            lebs,
            data_bytes: 0,
            update_marker: false,
            blob: format!("v{id}-{}", next.next_blob),
            dynamic,
        });
        next.next_blob += 1;
        g.commit(next, VolumeOp::Create, &t)?;
        Ok(VolumeId(id))
    }

    /// The file holding volume `id`'s data (exactly as many bytes as the last update), e.g.
    /// for init to loop-mount a package staged in RAM. `None` if there is no such volume.
    pub fn blob_path(&self, id: VolumeId) -> Option<PathBuf> {
        let g = lock(&self.inner);
        g.table.get(id).map(|e| g.blob(e))
    }

    /// LEB changes of `count` consecutive LEBs from `first` with `data` (at most `count`
    /// LEBs of it; each LEB reads 0xFF after its data): one write and one sync of the
    /// blob for the whole run, then one of the map. A crash in between leaves every LEB of
    /// the run unmapped (as before it); after the map's sync all are mapped.
    fn change_run(
        &mut self,
        id: VolumeId,
        first: u32,
        data: &[u8],
        count: u64,
    ) -> Result<(), VolumeError> {
        use std::os::unix::fs::FileExt as _;
        let mut g = lock(&self.inner);
        let t = || VolumeTarget::id(id);
        let err = |k| VolumeError::new(VolumeOp::ChangeLeb, t(), k);
        let e = g
            .table
            .get(id)
            .cloned()
            .ok_or_else(|| err(Kind::NotFound))?;
        let leb = g.table.leb_size;
        if !e.dynamic {
            return Err(err(Kind::ReadOnly));
        }
        if (data.len() as u64) > count * leb || u64::from(first) + count > e.lebs {
            return Err(err(Kind::Invalid));
        }
        let io = |x| VolumeError::from_io(VolumeOp::ChangeLeb, t(), x);
        g.step(VolumeOp::ChangeLeb, &t)?;
        let blob = open_for_write(&g.blob(&e)).map_err(io)?;
        let at = u64::from(first) * leb;
        blob.write_all_at(data, at).map_err(io)?;
        // The last LEB reads 0xFF after the data, as after a LEB change.
        let tail = usize::try_from(count * leb - data.len() as u64).unwrap_or(0);
        if tail > 0 {
            blob.write_all_at(&vec![0xFF; tail], at + data.len() as u64)
                .map_err(io)?;
        }
        blob.sync_data().map_err(io)?;
        g.step(VolumeOp::ChangeLeb, &t)?;
        let map = open_for_write(&g.map(&e)).map_err(io)?;
        let ones = vec![1u8; usize::try_from(count).unwrap_or(0)];
        map.write_all_at(&ones, u64::from(first)).map_err(io)?;
        map.sync_data().map_err(io)
    }
}

impl Volumes for FileVolumes {
    fn reopen(&self) -> Result<Self, VolumeError> {
        Ok(FileVolumes {
            inner: Arc::clone(&self.inner),
        })
    }

    type Writer = FileWriter;

    fn geometry(&mut self) -> Result<Geometry, VolumeError> {
        let g = lock(&self.inner);
        let t = &g.table;
        Ok(Geometry {
            leb_size: t.leb_size,
            total_lebs: t.total_lebs,
            free_lebs: t.total_lebs.saturating_sub(t.used_lebs()),
            bad_pebs: 0,
            reserved_for_bad: 0,
            max_volumes: t.max_volumes,
        })
    }

    fn list(&mut self) -> Result<Vec<VolumeInfo>, VolumeError> {
        let g = lock(&self.inner);
        let mut v: Vec<VolumeInfo> = g
            .table
            .volumes
            .iter()
            .map(|e| VolumeInfo {
                id: VolumeId(e.id),
                name: e.name.clone(),
                reserved_bytes: e.lebs * g.table.leb_size,
                // Dynamic-volume semantics, as UBI: the reserved size.
                data_bytes: e.lebs * g.table.leb_size,
                update_marker: e.update_marker,
            })
            .collect();
        v.sort_by_key(|i| i.id);
        Ok(v)
    }

    fn create(&mut self, name: &str, bytes: u64) -> Result<VolumeId, VolumeError> {
        self.make(name, bytes, false)
    }

    fn create_dynamic(&mut self, name: &str, bytes: u64) -> Result<VolumeId, VolumeError> {
        self.make(name, bytes, true)
    }

    fn change_leb(&mut self, id: VolumeId, lnum: u32, data: &[u8]) -> Result<(), VolumeError> {
        self.change_run(id, lnum, data, 1)
    }

    /// One write and one sync for the whole run ([`FileVolumes::change_run`]).
    fn change_lebs(&mut self, id: VolumeId, first: u32, data: &[u8]) -> Result<(), VolumeError> {
        let leb = lock(&self.inner).table.leb_size;
        self.change_run(id, first, data, (data.len() as u64).div_ceil(leb))
    }

    fn is_mapped(&mut self, id: VolumeId, lnum: u32) -> Result<bool, VolumeError> {
        let g = lock(&self.inner);
        let t = || VolumeTarget::id(id);
        let e = g
            .table
            .get(id)
            .ok_or_else(|| VolumeError::new(VolumeOp::IsMapped, t(), Kind::NotFound))?;
        if u64::from(lnum) >= e.lebs {
            return Err(VolumeError::new(VolumeOp::IsMapped, t(), Kind::Invalid));
        }
        Ok(if e.dynamic {
            g.mapped(e)[lnum as usize]
        } else {
            u64::from(lnum) * g.table.leb_size < e.data_bytes
        })
    }

    fn update(&mut self, id: VolumeId, bytes: u64) -> Result<FileWriter, VolumeError> {
        let mut g = lock(&self.inner);
        let t = || VolumeTarget::id(id);
        let e = g
            .table
            .get(id)
            .ok_or_else(|| VolumeError::new(VolumeOp::Update, t(), Kind::NotFound))?;
        if bytes > e.lebs * g.table.leb_size {
            return Err(VolumeError::new(VolumeOp::Update, t(), Kind::NoSpace));
        }
        let mut next = g.table.clone();
        if let Some(e) = next.get_mut(id) {
            e.update_marker = true;
            e.data_bytes = 0;
            e.dynamic = false;
        }
        g.commit(next, VolumeOp::Update, &t)?;
        let path = g.table.get(id).map(|e| g.blob(e)).unwrap_or_default();
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| VolumeError::from_io(VolumeOp::Update, t(), e))?;
        let mut w = FileWriter {
            inner: Arc::clone(&self.inner),
            id,
            file,
            announced: bytes,
            written: 0,
        };
        if bytes == 0 {
            drop(g);
            w.complete()?;
        }
        Ok(w)
    }

    fn read(&mut self, id: VolumeId, offset: u64, buf: &mut [u8]) -> Result<usize, VolumeError> {
        let g = lock(&self.inner);
        let t = || VolumeTarget::id(id);
        let e = g
            .table
            .get(id)
            .ok_or_else(|| VolumeError::new(VolumeOp::Read, t(), Kind::NotFound))?;
        if e.update_marker {
            return Err(VolumeError::new(VolumeOp::Read, t(), Kind::UpdateMarker));
        }
        let reserved = e.lebs * g.table.leb_size;
        if e.dynamic {
            return read_dynamic(&g, e, offset, buf)
                .map_err(|x| VolumeError::from_io(VolumeOp::Read, t(), x));
        }
        // Written bytes from the blob, then erased flash (0xFF) up to the reserved size.
        if offset >= reserved {
            return Ok(0);
        }
        let want = usize::try_from(reserved - offset)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let from_blob = usize::try_from(e.data_bytes.saturating_sub(offset))
            .unwrap_or(usize::MAX)
            .min(want);
        let io = |err| VolumeError::from_io(VolumeOp::Read, t(), err);
        if from_blob > 0 {
            let mut f = File::open(g.blob(e)).map_err(io)?;
            f.seek(SeekFrom::Start(offset)).map_err(io)?;
            let mut done = 0;
            while done < from_blob {
                match f.read(&mut buf[done..from_blob]).map_err(io)? {
                    0 => return Err(VolumeError::new(VolumeOp::Read, t(), Kind::Io)),
                    n => done += n,
                }
            }
        }
        buf[from_blob..want].fill(0xFF);
        Ok(want)
    }

    fn rename(&mut self, ops: &[Rename]) -> Result<(), VolumeError> {
        let mut g = lock(&self.inner);
        let t = || VolumeTarget::Renames(ops.to_vec());
        let err = |k| VolumeError::new(VolumeOp::Rename, t(), k);
        if ops.is_empty() || ops.len() > UBI_MAX_RNVOL {
            return Err(err(Kind::Invalid));
        }
        for (i, r) in ops.iter().enumerate() {
            check_name(&r.new_name).map_err(err)?;
            if g.table.get(r.id).is_none() {
                return Err(err(Kind::NotFound));
            }
            if ops[..i]
                .iter()
                .any(|o| o.new_name == r.new_name || o.id == r.id)
            {
                return Err(err(Kind::Invalid));
            }
        }
        let effective: Vec<&Rename> = ops
            .iter()
            .filter(|r| g.table.get(r.id).is_some_and(|v| v.name != r.new_name))
            .collect();
        if effective.is_empty() {
            return Ok(());
        }
        let mut next = g.table.clone();
        let doomed: Vec<Entry> = next
            .volumes
            .iter()
            .filter(|v| {
                effective.iter().any(|r| r.new_name == v.name)
                    && !effective.iter().any(|r| r.id.0 == v.id)
            })
            .cloned()
            .collect();
        next.volumes
            .retain(|v| !doomed.iter().any(|d| d.id == v.id));
        for r in effective {
            if let Some(v) = next.get_mut(r.id) {
                v.name.clone_from(&r.new_name);
            }
        }
        g.commit(next, VolumeOp::Rename, &t)?;
        for d in doomed {
            // Best effort: an orphan blob is deleted at the next open.
            let _ = fs::remove_file(g.blob(&d));
            let _ = fs::remove_file(g.map(&d));
        }
        Ok(())
    }

    fn remove(&mut self, id: VolumeId) -> Result<(), VolumeError> {
        let mut g = lock(&self.inner);
        let t = || VolumeTarget::id(id);
        let e = g
            .table
            .get(id)
            .cloned()
            .ok_or_else(|| VolumeError::new(VolumeOp::Remove, t(), Kind::NotFound))?;
        let mut next = g.table.clone();
        next.volumes.retain(|v| v.id != id.0);
        g.commit(next, VolumeOp::Remove, &t)?;
        // Best effort: an orphan blob is deleted at the next open.
        let _ = fs::remove_file(g.blob(&e));
        let _ = fs::remove_file(g.map(&e));
        Ok(())
    }
}

/// Writer of a [`FileVolumes`] update.
#[derive(Debug)]
pub struct FileWriter {
    inner: Arc<Mutex<Inner>>,
    id: VolumeId,
    file: File,
    announced: u64,
    written: u64,
}

impl FileWriter {
    /// All bytes are in: fsync the blob, then record the length and clear the marker.
    fn complete(&mut self) -> Result<(), VolumeError> {
        let t = || VolumeTarget::id(self.id);
        self.file
            .sync_all()
            .map_err(|e| VolumeError::from_io(VolumeOp::Finish, t(), e))?;
        let mut g = lock(&self.inner);
        let mut next = g.table.clone();
        let e = next
            .get_mut(self.id)
            .ok_or_else(|| VolumeError::new(VolumeOp::Finish, t(), Kind::NotFound))?;
        e.update_marker = false;
        e.data_bytes = self.written;
        g.commit(next, VolumeOp::Finish, &t)
    }
}

impl VolumeWriter for FileWriter {
    fn write(&mut self, buf: &[u8]) -> Result<(), VolumeError> {
        let t = || VolumeTarget::id(self.id);
        if self.written + buf.len() as u64 > self.announced {
            return Err(VolumeError::new(VolumeOp::Write, t(), Kind::SizeMismatch));
        }
        lock(&self.inner).step(VolumeOp::Write, &t)?;
        self.file
            .write_all(buf)
            .map_err(|e| VolumeError::from_io(VolumeOp::Write, t(), e))?;
        self.written += buf.len() as u64;
        if self.written == self.announced && !buf.is_empty() {
            self.complete()?;
        }
        Ok(())
    }

    fn finish(self) -> Result<(), VolumeError> {
        if self.written != self.announced {
            return Err(VolumeError::new(
                VolumeOp::Finish,
                VolumeTarget::id(self.id),
                Kind::SizeMismatch,
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flash::artifact::ArtifactKind::{BootImage, Package};
    use crate::flash::artifact::ArtifactRef;
    use crate::flash::{Store, StoreConfig, StoreError};
    use shelfboot_proto::samples::artifact_of;

    /// An artifact's bytes read from its volume's file at its offset (what init's loop
    /// device with offset and size limit shows).
    fn extent(dev: &FileVolumes, r: &(crate::flash::StoredArtifact, VolumeId)) -> Vec<u8> {
        let all = fs::read(dev.blob_path(r.1).unwrap()).unwrap();
        let at = usize::try_from(r.0.offset).unwrap();
        all[at..at + usize::try_from(r.0.artifact.size).unwrap()].to_vec()
    }

    #[test]
    fn volume_semantics_persist_across_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let mut v = FileVolumes::format(tmp.path(), 100, 5).unwrap();
        assert!(FileVolumes::format(tmp.path(), 100, 5).is_err());
        let a = v.create("a", 150).unwrap();
        assert_eq!(v.create("b", 301).unwrap_err().kind, Kind::NoSpace);
        let b = v.create("b", 1).unwrap();
        let mut w = v.update(a, 6).unwrap();
        w.write(b"abc").unwrap();
        drop(w); // interrupted: marker stays set, across a reopen too
        let mut v = FileVolumes::open(tmp.path()).unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(v.read(a, 0, &mut buf).unwrap_err().kind, Kind::UpdateMarker);
        let mut w = v.update(a, 6).unwrap();
        w.write(b"abc").unwrap();
        w.write(b"def").unwrap();
        w.finish().unwrap();
        v.rename(&[Rename {
            id: a,
            new_name: "b".into(),
        }])
        .unwrap();
        let mut v = FileVolumes::open(tmp.path()).unwrap();
        let l = v.list().unwrap();
        assert_eq!(l.len(), 1, "b was replaced: {l:?}");
        assert_eq!(
            (l[0].id, l[0].name.as_str(), l[0].data_bytes),
            (a, "b", 200)
        );
        assert_eq!(v.read(a, 2, &mut buf).unwrap(), 8);
        assert_eq!(&buf, b"cdef\xff\xff\xff\xff");
        assert_eq!(v.read(a, 199, &mut buf).unwrap(), 1);
        assert_eq!(v.read(a, 200, &mut buf).unwrap(), 0);
        assert!(v.read(b, 0, &mut buf).is_err());
        assert_eq!(fs::read(v.blob_path(a).unwrap()).unwrap(), b"abcdef");
        assert_eq!(fs::read_dir(tmp.path().join(BLOBS)).unwrap().count(), 1);
    }

    /// The store hashes each artifact once, over what it reads back from the volume (the
    /// receiver hashed the stream). A block of a torn artifact that changed on "flash"
    /// while the card was down is read back into the hash when the artifact resumes, so
    /// it is caught before the artifact can be committed, and the next attempt starts
    /// from byte 0.
    #[test]
    fn a_resumed_prefix_that_went_bad_is_caught_by_the_single_hash() {
        let tmp = tempfile::tempdir().unwrap();
        let k: Vec<u8> = (0..300_000u32)
            .map(|i| u8::try_from(i % 251).unwrap())
            .collect();
        let set = [artifact_of(BootImage, "kernel", "1", &k)];
        {
            let dev = FileVolumes::format(tmp.path(), 4096, 256).unwrap();
            let (mut s, _) = Store::open(dev, StoreConfig::default()).unwrap();
            s.begin(&set, "quiet").unwrap();
            s.start(&set[0]).unwrap();
            s.write(&set[0], &k[..131_072]).unwrap();
            // The card goes down here; the prefix stays on flash.
        }
        // A stored block goes bad (media error) while the card is down.
        let blob = fs::read_dir(tmp.path().join(BLOBS))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_none())
            .unwrap();
        let mut on_flash = fs::read(&blob).unwrap();
        assert_eq!(on_flash.len(), 131_072);
        on_flash[70_000] ^= 0x40;
        fs::write(&blob, &on_flash).unwrap();
        let dev = FileVolumes::open(tmp.path()).unwrap();
        let (mut s, _) = Store::open(dev, StoreConfig::default()).unwrap();
        s.begin(&set, "quiet").unwrap();
        s.start(&set[0]).unwrap();
        let held = s.written(&set[0]).unwrap();
        assert_eq!(held, 131_072, "the torn artifact resumes after its LEBs");
        s.write(&set[0], &k[131_072..]).unwrap();
        match s.finish(&set[0]) {
            Err(StoreError::DigestMismatch { what, .. }) => assert_eq!(what, "as read back"),
            other => panic!("a corrupted stored block went unnoticed: {other:?}"),
        }
        assert!(matches!(s.commit(), Err(StoreError::Incomplete { .. })));
        // Streamed again from byte 0, intact: staged and committed.
        s.stage(&set[0], &k[..]).unwrap();
        let inv = s.commit().unwrap();
        assert!(s.verify_set(&inv.set).unwrap().is_empty());
    }

    /// Without read-back the store hashes the bytes as written instead: a wrong stream is
    /// refused either way.
    #[test]
    fn without_readback_the_stream_is_hashed() {
        let tmp = tempfile::tempdir().unwrap();
        let k = vec![7u8; 5000];
        let set = [artifact_of(BootImage, "kernel", "1", &k)];
        let dev = FileVolumes::format(tmp.path(), 1024, 32).unwrap();
        let cfg = StoreConfig {
            verify_readback: false,
            ..StoreConfig::default()
        };
        let (mut s, _) = Store::open(dev, cfg).unwrap();
        s.begin(&set, "quiet").unwrap();
        let mut wrong = k.clone();
        wrong[4999] ^= 1;
        match s.stage(&set[0], &wrong[..]) {
            Err(StoreError::DigestMismatch { what, .. }) => assert_eq!(what, "as written"),
            other => panic!("a wrong stream was staged: {other:?}"),
        }
        s.stage(&set[0], &k[..]).unwrap();
        s.commit().unwrap();
    }

    #[test]
    fn store_commits_and_survives_a_crash_mid_stream() {
        let tmp = tempfile::tempdir().unwrap();
        let k1 = vec![1u8; 3000];
        let p1 = vec![2u8; 500];
        let set1 = [
            artifact_of(BootImage, "kernel", "1", &k1),
            artifact_of(Package, "base", "1", &p1),
        ];
        let dev = FileVolumes::format(tmp.path(), 1024, 32).unwrap();
        let (mut s, _) = Store::open(dev, StoreConfig::default()).unwrap();
        s.begin(&set1, "quiet").unwrap();
        s.stage(&set1[0], &k1[..]).unwrap();
        s.stage(&set1[1], &p1[..]).unwrap();
        let inv = s.commit().unwrap();
        // A second plan, interrupted mid-stream (the process dies: the store is dropped).
        let k2 = vec![3u8; 2000];
        let set2 = [
            artifact_of(BootImage, "kernel", "2", &k2),
            artifact_of(Package, "base", "1", &p1),
        ];
        s.begin(&set2, "quiet").unwrap();
        s.start(&set2[0]).unwrap();
        s.write(&set2[0], &k2[..100]).unwrap();
        drop(s);
        let dev = FileVolumes::open(tmp.path()).unwrap();
        let (mut s, report) = Store::open(dev.clone(), StoreConfig::default()).unwrap();
        assert_eq!(s.inventory(), Some(&inv));
        assert!(
            report.removed.is_empty(),
            "the staging segment is kept for resumption: {report:?}"
        );
        assert!(s.verify_set(&inv.set).unwrap().is_empty());
        // What init does in test mode: resolve the set, read each artifact from its file.
        let resolved = s.resolve(&inv.set).unwrap();
        assert_eq!(resolved.len(), 2);
        assert_eq!(extent(&dev, &resolved[0]), k1);
        assert_eq!(extent(&dev, &resolved[1]), p1);
        s.begin(&set2, "quiet").unwrap();
        s.stage(&set2[0], &k2[..]).unwrap();
        let inv2 = s.commit().unwrap();
        assert_eq!(
            inv2.previous.as_ref().map(|p| p.digest),
            Some(inv.set.digest)
        );
    }

    #[test]
    fn test_mode_stages_into_ram_and_leaves_flash_untouched() {
        use crate::flash::{FakeVolumes, Volumes as _};
        // The card's flash holds a committed set and a leftover of an interrupted run.
        let flash = FakeVolumes::new(1024, 64);
        let k1 = vec![1u8; 1500];
        let set1 = [artifact_of(BootImage, "kernel", "1", &k1)];
        let (mut s, _) = Store::open(flash.clone(), StoreConfig::default()).unwrap();
        s.begin(&set1, "").unwrap();
        s.stage(&set1[0], &k1[..]).unwrap();
        s.commit().unwrap();
        flash.clone().create("sb.new.inventory", 10).unwrap();
        let flash = flash.power_cycle();
        // Test mode: read the flash digest without writing, stage the plan into "RAM".
        let on_flash = Store::inspect(&mut flash.clone()).unwrap().unwrap();
        let ram_dir = tempfile::tempdir().unwrap();
        let ram = FileVolumes::open_or_format(ram_dir.path(), 1024, 16).unwrap();
        let (mut r, _) = Store::open(ram.clone(), StoreConfig::default()).unwrap();
        let k2 = vec![2u8; 3000];
        let p2 = vec![3u8; 700];
        let set2 = [
            artifact_of(BootImage, "kernel", "2", &k2),
            artifact_of(Package, "base", "2", &p2),
        ];
        let check = r.begin(&set2, "quiet").unwrap();
        assert_eq!(
            check.fetch.len(),
            2,
            "RAM starts empty: everything is fetched"
        );
        r.stage(&set2[0], &k2[..]).unwrap();
        r.stage(&set2[1], &p2[..]).unwrap();
        let inv = r.commit().unwrap();
        let files: Vec<Vec<u8>> = r
            .resolve(&inv.set)
            .unwrap()
            .into_iter()
            .map(|r| extent(&ram, &r))
            .collect();
        assert_eq!(files, vec![k2, p2]);
        assert!(
            flash.ops().is_empty(),
            "test mode wrote to flash: {:?}",
            flash.ops()
        );
        assert_eq!(
            Store::inspect(&mut flash.clone()).unwrap().unwrap(),
            on_flash
        );
        // Too big for RAM: the same structured error as on flash.
        let huge = [artifact_of(BootImage, "kernel", "3", &vec![0u8; 20 * 1024])];
        r.abort().unwrap();
        assert!(matches!(
            r.begin(&huge, ""),
            Err(crate::flash::StoreError::NoSpace { .. })
        ));
    }

    fn copy_dir(from: &Path, to: &Path) {
        fs::create_dir_all(to).unwrap();
        for e in fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                copy_dir(&e.path(), &to.join(e.file_name()));
            } else {
                fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }

    #[test]
    fn simulated_card_survives_a_crash_at_every_durable_step() {
        let k1 = vec![1u8; 3000];
        let p1 = vec![2u8; 1500];
        let k2 = vec![3u8; 2500];
        let set1 = [
            artifact_of(BootImage, "kernel", "1", &k1),
            artifact_of(Package, "base", "1", &p1),
        ];
        let set2 = [
            artifact_of(BootImage, "kernel", "2", &k2),
            artifact_of(Package, "base", "1", &p1),
        ];
        let install = |dev: FileVolumes, set: &[ArtifactRef], data: &[&[u8]]| {
            let (mut s, _) = Store::open(dev, StoreConfig::default())?;
            let check = s.begin(set, "")?;
            for (a, d) in set.iter().zip(data) {
                if check.fetch.contains(a) {
                    s.stage(a, *d)?;
                }
            }
            s.commit()
        };
        let base = tempfile::tempdir().unwrap();
        let dev = FileVolumes::format(base.path(), 1024, 32).unwrap();
        let old = install(dev, &set1, &[&k1, &p1]).unwrap().set.digest;
        let probe = tempfile::tempdir().unwrap();
        copy_dir(base.path(), probe.path());
        let dev = FileVolumes::open(probe.path()).unwrap();
        let new = install(dev.clone(), &set2, &[&k2, &p1]).unwrap().set.digest;
        let total = dev.steps();
        assert!(total > 5, "{total}");
        for n in 0..=total {
            let run = tempfile::tempdir().unwrap();
            copy_dir(base.path(), run.path());
            let dev = FileVolumes::open(run.path()).unwrap();
            dev.crash_at(n);
            let _ = install(dev, &set2, &[&k2, &p1]);
            let (mut s, _) = Store::open(
                FileVolumes::open(run.path()).unwrap(),
                StoreConfig::default(),
            )
            .unwrap_or_else(|e| panic!("crash at step {n}: reopen: {e}"));
            let inv = s
                .inventory()
                .cloned()
                .unwrap_or_else(|| panic!("crash at step {n}: the card became pristine"));
            assert!(
                inv.set.digest == old || inv.set.digest == new,
                "crash at {n}"
            );
            if n == total {
                assert_eq!(inv.set.digest, new);
            }
            assert!(s.verify_set(&inv.set).unwrap().is_empty(), "crash at {n}");
            drop(s);
            let again =
                install(FileVolumes::open(run.path()).unwrap(), &set2, &[&k2, &p1]).unwrap();
            assert_eq!(again.set.digest, new, "crash at {n}: redo");
        }
    }

    /// A run of LEB changes is durable as a whole: a crash after the data's sync but
    /// before the map's leaves every LEB of the run unmapped (0xFF, as before it); after
    /// the run all read back, the short last LEB padded with 0xFF.
    #[test]
    fn a_run_of_leb_changes_lands_whole_or_leaves_the_lebs_unmapped() {
        let tmp = tempfile::tempdir().unwrap();
        let mut dev = FileVolumes::format(tmp.path(), 1024, 16).unwrap();
        let id = dev.create_dynamic("seg", 8 * 1024).unwrap();
        let data: Vec<u8> = (0..2500u32).map(|i| (i % 251) as u8).collect();
        // Crash at the run's second step (the map), after its data was synced.
        let at = dev.steps();
        dev.crash_at(at + 1);
        assert!(dev.change_lebs(id, 2, &data).is_err());
        let mut dev = FileVolumes::open(tmp.path()).unwrap();
        for l in 2..5 {
            assert!(!dev.is_mapped(id, l).unwrap(), "LEB {l}");
        }
        let mut buf = vec![0u8; 3 * 1024];
        dev.read(id, 2 * 1024, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 0xFF));
        // Without a crash: three LEBs mapped, the data back, 0xFF after it.
        dev.change_lebs(id, 2, &data).unwrap();
        for l in 2..5 {
            assert!(dev.is_mapped(id, l).unwrap(), "LEB {l}");
        }
        assert!(!dev.is_mapped(id, 5).unwrap());
        dev.read(id, 2 * 1024, &mut buf).unwrap();
        assert_eq!(&buf[..2500], &data[..]);
        assert!(buf[2500..].iter().all(|&b| b == 0xFF));
        // A run past the volume's end changes nothing.
        assert!(dev.change_lebs(id, 7, &data).is_err());
        assert!(!dev.is_mapped(id, 7).unwrap());
    }
}
