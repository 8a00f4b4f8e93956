//! `FakeVolumes`: an in-memory UBI device for tests that records every operation and can
//! lose power at any chosen point.
//!
//! It enforces the same rules as the kernel (see [`super::volumes`]): LEB-rounded sizes
//! and `ENOSPC`, unique names, dynamic-volume lengths (`data_bytes` is the reserved size,
//! 0xFF past the written bytes), the update marker (cleared by the last announced byte), and
//! atomic multi-volume rename that removes a replaced volume, dynamic volumes whose LEBs
//! are changed atomically one at a time (a cut during a LEB change leaves the old LEB). A
//! power cut is modelled as
//! "operation N never happens, nor does anything after it": configure it with
//! [`FakeVolumes::cut_power_after`] or, to tear a write after some bytes,
//! [`FakeVolumes::cut_power_mid_write`]. [`FakeVolumes::power_cycle`] then gives the device
//! as it would attach after the reboot. Only mutating operations (create, update, write,
//! rename, remove, LEB change) count; reads, listings and mapping queries are free.
//!
//! Uncorrectable read errors can be injected per LEB ([`FakeVolumes::fail_reads`]), and a
//! silent program failure, a LEB that lands with a flipped bit while its change reports
//! success ([`FakeVolumes::flip_on_change`]). It does not model open/busy volumes or bad blocks appearing during a write.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::volumes::{
    Geometry, Rename, UBI_MAX_RNVOL, VolumeError, VolumeErrorKind as Kind, VolumeId, VolumeInfo,
    VolumeOp, VolumeTarget, VolumeWriter, Volumes, check_name,
};

/// A mutating operation, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FakeOp {
    /// `UBI_IOCMKVOL`.
    Create {
        /// Name.
        name: String,
        /// Requested bytes.
        bytes: u64,
        /// A dynamic volume (written with LEB changes).
        dynamic: bool,
    },
    /// `UBI_IOCEBCH` and its data.
    ChangeLeb {
        /// Volume.
        id: VolumeId,
        /// Logical eraseblock.
        lnum: u32,
        /// Bytes written into it.
        len: usize,
    },
    /// `UBI_IOCVOLUP`.
    Update {
        /// Volume.
        id: VolumeId,
        /// Announced bytes.
        bytes: u64,
    },
    /// A write during an update.
    Write {
        /// Volume.
        id: VolumeId,
        /// Bytes in this write.
        len: usize,
    },
    /// `UBI_IOCRNVOL`.
    Rename(Vec<Rename>),
    /// `UBI_IOCRMVOL`.
    Remove {
        /// Volume.
        id: VolumeId,
    },
}

#[derive(Debug, Clone)]
struct Vol {
    name: String,
    lebs: u64,
    /// Static: the bytes of the last update. Dynamic: the whole volume (0xFF where
    /// unmapped).
    data: Vec<u8>,
    update_marker: bool,
    /// `Some(mapped LEBs)` for a dynamic volume.
    mapped: Option<Vec<bool>>,
}

#[derive(Debug, Clone, Copy)]
enum Cut {
    After(u64),
    MidWrite { after: u64, bytes: usize },
}

#[derive(Debug)]
struct State {
    leb_size: u64,
    total_lebs: u64,
    bad_pebs: u64,
    reserved_for_bad: u64,
    max_volumes: u32,
    vols: BTreeMap<u32, Vol>,
    ops: Vec<FakeOp>,
    cut: Option<Cut>,
    dead: bool,
    /// (volume name, LEB) whose reads fail with an I/O error (ECC).
    bad_reads: Vec<(String, u64)>,
    /// (volume name, byte offset): the LEB change that writes this byte lands with one
    /// bit of it flipped and reports success (a silent program failure). Used once.
    flip_on_change: Option<(String, usize)>,
}

impl State {
    fn used_lebs(&self) -> u64 {
        self.vols.values().map(|v| v.lebs).sum()
    }

    /// Account for one mutating op. `Ok(None)`: proceed fully; `Ok(Some(n))`: a write may
    /// land `n` bytes then power dies; `Err`: power is (now) off.
    fn step(
        &mut self,
        op: FakeOp,
        target: VolumeTarget,
        vop: VolumeOp,
    ) -> Result<Option<usize>, VolumeError> {
        if self.dead {
            return Err(VolumeError::new(vop, target, Kind::PowerLoss));
        }
        let n = self.ops.len() as u64;
        match self.cut {
            Some(Cut::After(k)) if n >= k => {
                self.dead = true;
                return Err(VolumeError::new(vop, target, Kind::PowerLoss));
            }
            Some(Cut::MidWrite { after, bytes }) if n >= after => {
                self.dead = true;
                if n == after && matches!(op, FakeOp::Write { .. }) {
                    self.ops.push(op);
                    return Ok(Some(bytes));
                }
                return Err(VolumeError::new(vop, target, Kind::PowerLoss));
            }
            _ => {}
        }
        self.ops.push(op);
        Ok(None)
    }

    fn alive(&self, vop: VolumeOp, target: VolumeTarget) -> Result<(), VolumeError> {
        if self.dead {
            Err(VolumeError::new(vop, target, Kind::PowerLoss))
        } else {
            Ok(())
        }
    }
}

/// An in-memory UBI device with power-cut injection. Cloning shares the device.
#[derive(Debug, Clone)]
pub struct FakeVolumes {
    state: Arc<Mutex<State>>,
}

fn lock(s: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic in another test thread cannot leave State half-updated in a way that matters
    // more than the panic itself; keep going with the data.
    s.lock().unwrap_or_else(|p| p.into_inner())
}

impl FakeVolumes {
    /// An empty device of `total_lebs` LEBs of `leb_size` bytes, 128 volume slots.
    pub fn new(leb_size: u64, total_lebs: u64) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                leb_size,
                total_lebs,
                bad_pebs: 0,
                reserved_for_bad: 20,
                max_volumes: 128,
                vols: BTreeMap::new(),
                ops: Vec::new(),
                cut: None,
                dead: false,
                bad_reads: Vec::new(),
                flip_on_change: None,
            })),
        }
    }

    /// Lose power when the `n`-th mutating operation (0-based) is attempted: it and
    /// everything after it fail with [`Kind::PowerLoss`] and change nothing.
    pub fn cut_power_after(&self, n: u64) {
        lock(&self.state).cut = Some(Cut::After(n));
    }

    /// Like [`Self::cut_power_after`], but if operation `n` is a write, its first `bytes`
    /// bytes land before the power goes.
    pub fn cut_power_mid_write(&self, n: u64, bytes: usize) {
        lock(&self.state).cut = Some(Cut::MidWrite { after: n, bytes });
    }

    /// Set the bad-block counters reported by [`Volumes::geometry`].
    pub fn set_bad_blocks(&self, bad_pebs: u64, reserved_for_bad: u64) {
        let mut s = lock(&self.state);
        s.bad_pebs = bad_pebs;
        s.reserved_for_bad = reserved_for_bad;
    }

    /// Set the volume-table size reported by [`Volumes::geometry`].
    pub fn set_max_volumes(&self, n: u32) {
        lock(&self.state).max_volumes = n;
    }

    /// Mutating operations performed so far (since creation or the last power cycle).
    pub fn ops(&self) -> Vec<FakeOp> {
        lock(&self.state).ops.clone()
    }

    /// Whether the power has been cut.
    pub fn is_dead(&self) -> bool {
        lock(&self.state).dead
    }

    /// The device after a reboot: same volumes and data (interrupted updates keep their
    /// marker), power on, no cut armed, operation log empty, old writers disconnected.
    pub fn power_cycle(&self) -> Self {
        let s = lock(&self.state);
        Self {
            state: Arc::new(Mutex::new(State {
                leb_size: s.leb_size,
                total_lebs: s.total_lebs,
                bad_pebs: s.bad_pebs,
                reserved_for_bad: s.reserved_for_bad,
                max_volumes: s.max_volumes,
                vols: s.vols.clone(),
                ops: Vec::new(),
                cut: None,
                dead: false,
                bad_reads: Vec::new(),
                flip_on_change: None,
            })),
        }
    }

    /// Make reads of LEB `leb` of volume `name` fail with an I/O error (an uncorrectable
    /// ECC error), from now on and across power cycles.
    pub fn fail_reads(&self, name: &str, leb: u64) {
        lock(&self.state).bad_reads.push((name.to_owned(), leb));
    }

    fn make(&mut self, name: &str, bytes: u64, dynamic: bool) -> Result<VolumeId, VolumeError> {
        let mut s = lock(&self.state);
        let t = || VolumeTarget::name(name);
        let err = |k| VolumeError::new(VolumeOp::Create, t(), k);
        s.alive(VolumeOp::Create, t())?;
        check_name(name).map_err(err)?;
        if bytes == 0 {
            return Err(err(Kind::Invalid));
        }
        if s.vols.values().any(|v| v.name == name) {
            return Err(err(Kind::Exists));
        }
        let lebs = bytes.div_ceil(s.leb_size);
        if lebs > s.total_lebs.saturating_sub(s.used_lebs())
            || s.vols.len() >= s.max_volumes as usize
        {
            return Err(err(Kind::NoSpace));
        }
        s.step(
            FakeOp::Create {
                name: name.into(),
                bytes,
                dynamic,
            },
            t(),
            VolumeOp::Create,
        )?;
        let id = (0..).find(|i| !s.vols.contains_key(i)).unwrap_or(u32::MAX);
        let leb = s.leb_size;
        s.vols.insert(
            id,
            Vol {
                name: name.into(),
                lebs,
                data: if dynamic {
                    vec![0xFF; usize::try_from(lebs * leb).unwrap_or(0)]
                } else {
                    Vec::new()
                },
                update_marker: false,
                mapped: dynamic.then(|| vec![false; usize::try_from(lebs).unwrap_or(0)]),
            },
        );
        Ok(VolumeId(id))
    }

    /// The next LEB change that writes byte `offset` of volume `name` lands with one bit
    /// of that byte flipped and still reports success: a program failure the driver did
    /// not see, which only reading the LEB back can catch.
    pub fn flip_on_change(&self, name: &str, offset: usize) {
        lock(&self.state).flip_on_change = Some((name.to_owned(), offset));
    }

    /// Flip one bit of a volume's data (simulates media corruption).
    pub fn corrupt(&self, name: &str, offset: usize) -> bool {
        let mut s = lock(&self.state);
        match s.vols.values_mut().find(|v| v.name == name) {
            Some(v) if offset < v.data.len() => {
                v.data[offset] ^= 0x10;
                true
            }
            _ => false,
        }
    }
}

impl Volumes for FakeVolumes {
    fn reopen(&self) -> Result<Self, VolumeError> {
        Ok(self.clone())
    }

    type Writer = FakeWriter;

    fn geometry(&mut self) -> Result<Geometry, VolumeError> {
        let s = lock(&self.state);
        s.alive(VolumeOp::Geometry, VolumeTarget::Device)?;
        Ok(Geometry {
            leb_size: s.leb_size,
            total_lebs: s.total_lebs,
            free_lebs: s.total_lebs.saturating_sub(s.used_lebs()),
            bad_pebs: s.bad_pebs,
            reserved_for_bad: s.reserved_for_bad,
            max_volumes: s.max_volumes,
        })
    }

    fn list(&mut self) -> Result<Vec<VolumeInfo>, VolumeError> {
        let s = lock(&self.state);
        s.alive(VolumeOp::List, VolumeTarget::Device)?;
        Ok(s.vols
            .iter()
            .map(|(&id, v)| VolumeInfo {
                id: VolumeId(id),
                name: v.name.clone(),
                reserved_bytes: v.lebs * s.leb_size,
                // Dynamic-volume semantics: sysfs reports the reserved size.
                data_bytes: v.lebs * s.leb_size,
                update_marker: v.update_marker,
            })
            .collect())
    }

    fn create(&mut self, name: &str, bytes: u64) -> Result<VolumeId, VolumeError> {
        self.make(name, bytes, false)
    }

    fn create_dynamic(&mut self, name: &str, bytes: u64) -> Result<VolumeId, VolumeError> {
        self.make(name, bytes, true)
    }

    fn change_leb(&mut self, id: VolumeId, lnum: u32, data: &[u8]) -> Result<(), VolumeError> {
        let mut s = lock(&self.state);
        let t = || VolumeTarget::id(id);
        let err = |k| VolumeError::new(VolumeOp::ChangeLeb, t(), k);
        s.alive(VolumeOp::ChangeLeb, t())?;
        let leb = s.leb_size;
        let v = s.vols.get(&id.0).ok_or_else(|| err(Kind::NotFound))?;
        if v.mapped.is_none() {
            return Err(err(Kind::ReadOnly));
        }
        if u64::from(lnum) >= v.lebs || data.len() as u64 > leb {
            return Err(err(Kind::Invalid));
        }
        s.step(
            FakeOp::ChangeLeb {
                id,
                lnum,
                len: data.len(),
            },
            t(),
            VolumeOp::ChangeLeb,
        )?;
        if let Some(v) = s.vols.get_mut(&id.0) {
            let start = usize::try_from(u64::from(lnum) * leb).unwrap_or(usize::MAX);
            let end = start + usize::try_from(leb).unwrap_or(0);
            let dst = &mut v.data[start..end];
            dst.fill(0xFF);
            dst[..data.len()].copy_from_slice(data);
            if let Some(m) = v.mapped.as_mut() {
                m[lnum as usize] = true;
            }
            let name = v.name.clone();
            let st = &mut *s;
            if let Some((fname, off)) = &st.flip_on_change
                && *fname == name
                && (start..start + data.len()).contains(off)
                && let Some(v) = st.vols.get_mut(&id.0)
            {
                v.data[*off] ^= 0x10;
                st.flip_on_change = None;
            }
        }
        Ok(())
    }

    fn is_mapped(&mut self, id: VolumeId, lnum: u32) -> Result<bool, VolumeError> {
        let s = lock(&self.state);
        let t = || VolumeTarget::id(id);
        s.alive(VolumeOp::IsMapped, t())?;
        let v = s
            .vols
            .get(&id.0)
            .ok_or_else(|| VolumeError::new(VolumeOp::IsMapped, t(), Kind::NotFound))?;
        if u64::from(lnum) >= v.lebs {
            return Err(VolumeError::new(VolumeOp::IsMapped, t(), Kind::Invalid));
        }
        Ok(match &v.mapped {
            Some(m) => m[lnum as usize],
            None => (u64::from(lnum) * s.leb_size) < v.data.len() as u64,
        })
    }

    fn update(&mut self, id: VolumeId, bytes: u64) -> Result<FakeWriter, VolumeError> {
        let mut s = lock(&self.state);
        let t = || VolumeTarget::id(id);
        s.alive(VolumeOp::Update, t())?;
        let leb = s.leb_size;
        let v = s
            .vols
            .get(&id.0)
            .ok_or_else(|| VolumeError::new(VolumeOp::Update, t(), Kind::NotFound))?;
        if bytes > v.lebs * leb {
            return Err(VolumeError::new(VolumeOp::Update, t(), Kind::NoSpace));
        }
        s.step(FakeOp::Update { id, bytes }, t(), VolumeOp::Update)?;
        if let Some(v) = s.vols.get_mut(&id.0) {
            v.data.clear();
            v.mapped = None;
            v.update_marker = bytes > 0;
        }
        Ok(FakeWriter {
            state: Arc::clone(&self.state),
            id,
            announced: bytes,
            written: 0,
        })
    }
    fn read(&mut self, id: VolumeId, offset: u64, buf: &mut [u8]) -> Result<usize, VolumeError> {
        let s = lock(&self.state);
        let t = || VolumeTarget::id(id);
        s.alive(VolumeOp::Read, t())?;
        let v = s
            .vols
            .get(&id.0)
            .ok_or_else(|| VolumeError::new(VolumeOp::Read, t(), Kind::NotFound))?;
        if v.update_marker {
            return Err(VolumeError::new(VolumeOp::Read, t(), Kind::UpdateMarker));
        }
        let (first, last) = (
            offset / s.leb_size,
            (offset + buf.len() as u64).saturating_sub(1) / s.leb_size,
        );
        if s.bad_reads
            .iter()
            .any(|(n, l)| *n == v.name && (first..=last).contains(l))
        {
            return Err(VolumeError::new(VolumeOp::Read, t(), Kind::Io));
        }
        // Written bytes, then erased flash (0xFF) up to the reserved size, as on UBI.
        let reserved = usize::try_from(v.lebs * s.leb_size).unwrap_or(usize::MAX);
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(reserved);
        let n = buf.len().min(reserved - start);
        for (i, b) in buf[..n].iter_mut().enumerate() {
            *b = v.data.get(start + i).copied().unwrap_or(0xFF);
        }
        Ok(n)
    }

    fn rename(&mut self, ops: &[Rename]) -> Result<(), VolumeError> {
        let mut s = lock(&self.state);
        let t = || VolumeTarget::Renames(ops.to_vec());
        let err = |k| VolumeError::new(VolumeOp::Rename, t(), k);
        s.alive(VolumeOp::Rename, t())?;
        if ops.is_empty() || ops.len() > UBI_MAX_RNVOL {
            return Err(err(Kind::Invalid));
        }
        for (i, r) in ops.iter().enumerate() {
            check_name(&r.new_name).map_err(err)?;
            if !s.vols.contains_key(&r.id.0) {
                return Err(err(Kind::NotFound));
            }
            if ops[..i]
                .iter()
                .any(|o| o.new_name == r.new_name || o.id == r.id)
            {
                return Err(err(Kind::Invalid));
            }
        }
        // As the kernel does: entries that keep their name are dropped, then any volume
        // holding a new name and not itself renamed is removed.
        let effective: Vec<&Rename> = ops
            .iter()
            .filter(|r| s.vols.get(&r.id.0).is_some_and(|v| v.name != r.new_name))
            .collect();
        if effective.is_empty() {
            return Ok(());
        }
        let doomed: Vec<u32> = s
            .vols
            .iter()
            .filter(|(id, v)| {
                effective.iter().any(|r| r.new_name == v.name)
                    && !effective.iter().any(|r| r.id.0 == **id)
            })
            .map(|(id, _)| *id)
            .collect();
        s.step(FakeOp::Rename(ops.to_vec()), t(), VolumeOp::Rename)?;
        for id in doomed {
            s.vols.remove(&id);
        }
        for r in effective {
            if let Some(v) = s.vols.get_mut(&r.id.0) {
                v.name.clone_from(&r.new_name);
            }
        }
        Ok(())
    }

    fn remove(&mut self, id: VolumeId) -> Result<(), VolumeError> {
        let mut s = lock(&self.state);
        let t = || VolumeTarget::id(id);
        s.alive(VolumeOp::Remove, t())?;
        if !s.vols.contains_key(&id.0) {
            return Err(VolumeError::new(VolumeOp::Remove, t(), Kind::NotFound));
        }
        s.step(FakeOp::Remove { id }, t(), VolumeOp::Remove)?;
        s.vols.remove(&id.0);
        Ok(())
    }
}

/// Writer of a [`FakeVolumes`] update.
#[derive(Debug)]
pub struct FakeWriter {
    state: Arc<Mutex<State>>,
    id: VolumeId,
    announced: u64,
    written: u64,
}

impl VolumeWriter for FakeWriter {
    fn write(&mut self, buf: &[u8]) -> Result<(), VolumeError> {
        let mut s = lock(&self.state);
        let t = || VolumeTarget::id(self.id);
        s.alive(VolumeOp::Write, t())?;
        if self.written + buf.len() as u64 > self.announced {
            return Err(VolumeError::new(VolumeOp::Write, t(), Kind::SizeMismatch));
        }
        if !s.vols.contains_key(&self.id.0) {
            return Err(VolumeError::new(VolumeOp::Write, t(), Kind::NotFound));
        }
        let torn = s.step(
            FakeOp::Write {
                id: self.id,
                len: buf.len(),
            },
            t(),
            VolumeOp::Write,
        )?;
        let land = torn.map_or(buf.len(), |n| n.min(buf.len()));
        if let Some(v) = s.vols.get_mut(&self.id.0) {
            v.data.extend_from_slice(&buf[..land]);
            self.written += land as u64;
            if torn.is_none() && self.written == self.announced {
                v.update_marker = false;
            }
        }
        match torn {
            Some(_) => Err(VolumeError::new(VolumeOp::Write, t(), Kind::PowerLoss)),
            None => Ok(()),
        }
    }

    fn finish(self) -> Result<(), VolumeError> {
        let s = lock(&self.state);
        let t = || VolumeTarget::id(self.id);
        s.alive(VolumeOp::Finish, t())?;
        if self.written != self.announced {
            return Err(VolumeError::new(VolumeOp::Finish, t(), Kind::SizeMismatch));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_marker_until_last_byte_and_after_power_cut() {
        let mut f = FakeVolumes::new(100, 10);
        let id = f.create("a", 150).unwrap();
        assert_eq!(f.geometry().unwrap().free_lebs, 8);
        let mut w = f.update(id, 10).unwrap();
        w.write(b"hello").unwrap();
        let mut buf = [0u8; 10];
        assert_eq!(
            f.read(id, 0, &mut buf).unwrap_err().kind,
            Kind::UpdateMarker
        );
        w.write(b"world").unwrap();
        w.finish().unwrap();
        assert_eq!(f.read(id, 0, &mut buf).unwrap(), 10);
        assert_eq!(&buf, b"helloworld");
        assert_eq!(
            f.read(id, 195, &mut buf).unwrap(),
            5,
            "reads end at the reserved size"
        );
        assert_eq!(&buf[..5], &[0xFF; 5], "past the update: erased flash");

        f.cut_power_mid_write(f.ops().len() as u64 + 1, 3);
        let mut w = f.update(id, 10).unwrap();
        assert_eq!(w.write(b"0123456789").unwrap_err().kind, Kind::PowerLoss);
        assert!(f.is_dead());
        let mut g = f.power_cycle();
        let info = &g.list().unwrap()[0];
        assert!(info.update_marker);
        assert_eq!(info.data_bytes, 200, "dynamic volume: reserved size");
        assert_eq!(
            g.read(id, 0, &mut buf).unwrap_err().kind,
            Kind::UpdateMarker
        );
    }

    #[test]
    fn rename_replaces_and_swaps_atomically() {
        let mut f = FakeVolumes::new(100, 10);
        let a = f.create("a", 1).unwrap();
        let b = f.create("b", 1).unwrap();
        let c = f.create("c", 1).unwrap();
        // a -> b while b -> c: b survives (renamed), c is replaced (removed).
        f.rename(&[
            Rename {
                id: a,
                new_name: "b".into(),
            },
            Rename {
                id: b,
                new_name: "c".into(),
            },
        ])
        .unwrap();
        let names: Vec<_> = f
            .list()
            .unwrap()
            .into_iter()
            .map(|v| (v.id, v.name))
            .collect();
        assert_eq!(names, vec![(a, "b".into()), (b, "c".into())]);
        assert!(!names.iter().any(|(id, _)| *id == c));
        // Duplicate targets and too many entries are rejected whole.
        let e = f
            .rename(&[
                Rename {
                    id: a,
                    new_name: "x".into(),
                },
                Rename {
                    id: b,
                    new_name: "x".into(),
                },
            ])
            .unwrap_err();
        assert_eq!(e.kind, Kind::Invalid);
        let many: Vec<_> = (0..33)
            .map(|i| Rename {
                id: a,
                new_name: format!("n{i}"),
            })
            .collect();
        assert_eq!(f.rename(&many).unwrap_err().kind, Kind::Invalid);
    }

    #[test]
    fn no_space_is_enospc() {
        let mut f = FakeVolumes::new(100, 3);
        f.create("a", 150).unwrap();
        assert_eq!(f.create("b", 101).unwrap_err().kind, Kind::NoSpace);
        assert_eq!(f.create("a", 1).unwrap_err().kind, Kind::Exists);
        f.create("b", 100).unwrap();
    }
}
