//! The card's flash as init sees it: attach UBI ([`attach`]) and implement
//! shelfboot-card's [`Volumes`] trait over the real UBI device ([`UbiVolumes`]).
//!
//! Every method is one kernel operation through [`crate::sys`] (ioctl or sysfs read), with
//! no retries and no policy: the commit protocol, the inventory and boot counting are
//! shelfboot-card's `flash` module, which init only calls. Errors are card's
//! [`VolumeError`], classified from the errno, with the failing call (and its arguments)
//! kept as the source.
//!
//! One deliberate difference from the trait's table: volumes are created **static**
//! (`UBI_STATIC_VOLUME`), not dynamic. For a dynamic volume real UBI reports `data_bytes`
//! = the reserved size (whole LEBs) and reads past the written bytes return erased flash
//! (0xFF), whereas the trait (and card's store, which hashes `data_bytes` bytes) expects
//! `data_bytes` = bytes of the last completed update and end-of-file after it. A static
//! volume gives exactly that, and UBI CRC-checks its data on every read as a bonus.
//! Every legacy artifact volume and inventory copy is written once and replaced by rename,
//! which is what static volumes are for. Segments (many artifacts, written LEB by LEB with
//! `UBI_IOCEBCH` so that a cut transfer resumes) are the one kind created **dynamic**
//! ([`Volumes::create_dynamic`]); the store takes their lengths from its inventory. Not
//! here: MTD formatting details (see [`attach`]).

pub mod attach;

use std::io::Write;
use std::path::PathBuf;

use shelfboot_card::flash::{
    Geometry, Rename, VolumeError, VolumeErrorKind, VolumeId, VolumeInfo, VolumeOp, VolumeTarget,
    VolumeWriter, Volumes,
};

use crate::sys::SysError;
use crate::sys::sysfs::Sysfs;
use crate::sys::ubi::{UbiDevice, UbiVolume, VolType, VolumeUpdate};

/// Maps a failed call to card's error, keeping the call as the source.
fn vol_err(op: VolumeOp, target: VolumeTarget, e: SysError) -> VolumeError {
    let kind = VolumeErrorKind::from_io(&e.source);
    VolumeError {
        op,
        target,
        kind,
        source: Some(std::io::Error::other(e)),
    }
}

fn sysfs_err(op: VolumeOp, e: crate::sys::sysfs::SysfsError) -> VolumeError {
    VolumeError {
        op,
        target: VolumeTarget::Device,
        kind: VolumeErrorKind::Io,
        source: Some(std::io::Error::other(e)),
    }
}

/// The attached UBI device `ubiN`, implementing card's [`Volumes`].
#[derive(Debug)]
pub struct UbiVolumes {
    ubi: u32,
    dev: PathBuf,
    sysfs: Sysfs,
    device: UbiDevice,
}

impl UbiVolumes {
    /// Opens `/dev/ubiN` under `dev`; geometry and volumes are read from `sysfs`.
    pub fn open(ubi: u32, dev: impl Into<PathBuf>, sysfs: Sysfs) -> Result<Self, SysError> {
        let dev = dev.into();
        let device = UbiDevice::open(&dev.join(format!("ubi{ubi}")))?;
        Ok(UbiVolumes {
            ubi,
            dev,
            sysfs,
            device,
        })
    }

    /// The UBI device number.
    pub fn ubi_num(&self) -> u32 {
        self.ubi
    }

    fn volume_path(&self, id: VolumeId) -> PathBuf {
        self.dev.join(format!("ubi{}_{}", self.ubi, id.0))
    }
}

impl Volumes for UbiVolumes {
    type Writer = UbiWriter;

    fn reopen(&self) -> Result<Self, VolumeError> {
        UbiVolumes::open(self.ubi, self.dev.clone(), self.sysfs.clone())
            .map_err(|e| vol_err(VolumeOp::Open, VolumeTarget::Device, e))
    }

    fn geometry(&mut self) -> Result<Geometry, VolumeError> {
        let d = self
            .sysfs
            .ubi_device(self.ubi)
            .map_err(|e| sysfs_err(VolumeOp::Geometry, e))?;
        Ok(Geometry {
            leb_size: d.leb_size,
            total_lebs: d.total_lebs,
            free_lebs: d.avail_lebs,
            bad_pebs: d.bad_pebs,
            reserved_for_bad: d.reserved_for_bad,
            max_volumes: d.max_vol_count,
        })
    }

    fn list(&mut self) -> Result<Vec<VolumeInfo>, VolumeError> {
        let vols = self
            .sysfs
            .ubi_volumes(self.ubi)
            .map_err(|e| sysfs_err(VolumeOp::List, e))?;
        Ok(vols
            .into_iter()
            .map(|v| VolumeInfo {
                id: VolumeId(v.vol_id),
                name: v.name,
                reserved_bytes: v.reserved_ebs.saturating_mul(v.usable_eb_size),
                data_bytes: v.data_bytes,
                update_marker: v.upd_marker,
            })
            .collect())
    }

    fn create(&mut self, name: &str, bytes: u64) -> Result<VolumeId, VolumeError> {
        let id = self
            .device
            .mkvol(name, bytes, VolType::Static)
            .map(VolumeId)
            .map_err(|e| vol_err(VolumeOp::Create, VolumeTarget::name(name), e))?;
        durable();
        Ok(id)
    }

    fn create_dynamic(&mut self, name: &str, bytes: u64) -> Result<VolumeId, VolumeError> {
        let id = self
            .device
            .mkvol(name, bytes, VolType::Dynamic)
            .map(VolumeId)
            .map_err(|e| vol_err(VolumeOp::Create, VolumeTarget::name(name), e))?;
        durable();
        Ok(id)
    }

    fn change_leb(&mut self, id: VolumeId, lnum: u32, data: &[u8]) -> Result<(), VolumeError> {
        let target = || VolumeTarget::id(id);
        let mut vol = UbiVolume::open_write(&self.volume_path(id))
            .map_err(|e| vol_err(VolumeOp::ChangeLeb, target(), e))?;
        vol.change_leb(lnum, data)
            .map_err(|e| vol_err(VolumeOp::ChangeLeb, target(), e))?;
        durable();
        Ok(())
    }

    fn is_mapped(&mut self, id: VolumeId, lnum: u32) -> Result<bool, VolumeError> {
        let target = || VolumeTarget::id(id);
        let vol = UbiVolume::open_read(&self.volume_path(id))
            .map_err(|e| vol_err(VolumeOp::IsMapped, target(), e))?;
        vol.is_mapped(lnum)
            .map_err(|e| vol_err(VolumeOp::IsMapped, target(), e))
    }

    fn update(&mut self, id: VolumeId, bytes: u64) -> Result<UbiWriter, VolumeError> {
        let target = || VolumeTarget::id(id);
        let vol = UbiVolume::open_write(&self.volume_path(id))
            .map_err(|e| vol_err(VolumeOp::Update, target(), e))?;
        let update = vol
            .start_update(bytes)
            .map_err(|e| vol_err(VolumeOp::Update, target(), e))?;
        Ok(UbiWriter { id, update })
    }

    fn read(&mut self, id: VolumeId, offset: u64, buf: &mut [u8]) -> Result<usize, VolumeError> {
        let target = || VolumeTarget::id(id);
        let vol = UbiVolume::open_read(&self.volume_path(id))
            .map_err(|e| vol_err(VolumeOp::Read, target(), e))?;
        vol.read_at(offset, buf)
            .map_err(|e| vol_err(VolumeOp::Read, target(), e))
    }

    fn rename(&mut self, ops: &[Rename]) -> Result<(), VolumeError> {
        let pairs: Vec<(u32, &str)> = ops.iter().map(|r| (r.id.0, r.new_name.as_str())).collect();
        self.device
            .rename(&pairs)
            .map_err(|e| vol_err(VolumeOp::Rename, VolumeTarget::Renames(ops.to_vec()), e))?;
        durable();
        Ok(())
    }

    fn remove(&mut self, id: VolumeId) -> Result<(), VolumeError> {
        self.device
            .rmvol(id.0)
            .map_err(|e| vol_err(VolumeOp::Remove, VolumeTarget::id(id), e))?;
        durable();
        Ok(())
    }
}

/// Makes the UBI operation that just returned durable before the next one starts.
///
/// On raw NAND a UBI operation is on the chip when its ioctl returns, and UBI's own
/// ordering (new copy of a LEB or of the volume table written before the old one is
/// erased) keeps the device consistent across a power cut. An MTD emulated over a block
/// device (block2mtd, the lab's flash) keeps those writes and erases in the page cache and
/// writes them back in any order: a cut could keep an erase of the old volume-table copy
/// and lose the write of the new one, and UBI then no longer attaches ("the layout volume
/// was not found", seen in the lab's power-cut test). `sync(2)` after every volume-table
/// change and every LEB change keeps UBI's order on such devices; on NAND it finds
/// nothing to flush.
fn durable() {
    nix::unistd::sync();
}

/// A `UBI_IOCVOLUP` update in progress on a real volume.
#[derive(Debug)]
pub struct UbiWriter {
    id: VolumeId,
    update: VolumeUpdate,
}

impl VolumeWriter for UbiWriter {
    fn write(&mut self, buf: &[u8]) -> Result<(), VolumeError> {
        if buf.len() as u64 > self.update.remaining() {
            return Err(VolumeError::new(
                VolumeOp::Write,
                VolumeTarget::id(self.id),
                VolumeErrorKind::SizeMismatch,
            ));
        }
        let path = self.update.path().display().to_string();
        self.update.write_all(buf).map_err(|e| {
            vol_err(
                VolumeOp::Write,
                VolumeTarget::id(self.id),
                SysError::new(format!("write({path}, {} bytes)", buf.len()), e),
            )
        })
    }

    fn finish(self) -> Result<(), VolumeError> {
        if self.update.remaining() != 0 {
            return Err(VolumeError::new(
                VolumeOp::Finish,
                VolumeTarget::id(self.id),
                VolumeErrorKind::SizeMismatch,
            ));
        }
        self.update
            .sync()
            .map_err(|e| vol_err(VolumeOp::Finish, VolumeTarget::id(self.id), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_keep_the_call_and_classify_the_errno() {
        let e = vol_err(
            VolumeOp::Create,
            VolumeTarget::name("sb.new.p.base"),
            SysError::new(
                "ioctl(/dev/ubi0, UBI_IOCMKVOL, ...)",
                nix::errno::Errno::ENOSPC,
            ),
        );
        assert_eq!(e.kind, VolumeErrorKind::NoSpace);
        let chain = shelfboot_proto::report::error_chain(&e);
        assert!(
            chain.contains("UBI_IOCMKVOL") && chain.contains("sb.new.p.base"),
            "{chain}"
        );
    }

    #[test]
    fn open_fails_cleanly_without_a_device() {
        let t = tempfile::tempdir().unwrap();
        let err = UbiVolumes::open(0, t.path(), Sysfs::new(t.path())).unwrap_err();
        assert!(err.to_string().contains("ubi0"), "{err}");
    }
}
