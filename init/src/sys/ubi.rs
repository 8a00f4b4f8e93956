//! UBI ioctls (`include/uapi/mtd/ubi-user.h`) behind owning types.
//!
//! [`UbiCtrl`] owns `/dev/ubi_ctrl` (attach/detach), [`UbiDevice`] owns `/dev/ubiN`
//! (make, remove and atomically rename volumes), [`UbiVolume`] owns `/dev/ubiN_M` (whole
//! volume update, atomic LEB change and the LEB mapping query, reads, ubiblock creation).
//! Callers only see safe methods; the `#[repr(C)]` request structs are hand-written from
//! the UAPI header with compile-time size checks. Not here: resizing volumes, LEB erase /
//! map / unmap (EBER/EBMAP/EBUNMAP), fastmap options, volume properties. Policy (names,
//! sizes, what to remove) is the caller's.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::mem::size_of;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use super::SysError;

/// Longest volume name UBI accepts (bytes, without the NUL).
pub const UBI_MAX_VOLUME_NAME: usize = 127;
/// Most volumes one `UBI_IOCRNVOL` may rename (and so: commit atomically).
pub const UBI_MAX_RNVOL: usize = 32;
const UBI_VOL_NUM_AUTO: i32 = -1;
const UBI_DEV_NUM_AUTO: i32 = -1;

/// UBI volume type (`UBI_DYNAMIC_VOLUME` / `UBI_STATIC_VOLUME`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolType {
    /// Read/write volume, data size is the reserved size.
    Dynamic,
    /// Write-once volume, data size is what was written, CRC-checked by UBI.
    Static,
}

impl VolType {
    fn raw(self) -> i8 {
        match self {
            VolType::Dynamic => 3,
            VolType::Static => 4,
        }
    }
}

/// `struct ubi_attach_req`.
#[repr(C)]
#[derive(Debug, Default)]
struct AttachReq {
    ubi_num: i32,
    mtd_num: i32,
    vid_hdr_offset: i32,
    max_beb_per1024: i16,
    disable_fm: i8,
    need_resv_pool: i8,
    padding: [i8; 8],
}

/// `struct ubi_mkvol_req` (`__packed`, but naturally aligned: no holes).
#[repr(C)]
#[derive(Debug)]
struct MkvolReq {
    vol_id: i32,
    alignment: i32,
    bytes: i64,
    vol_type: i8,
    flags: u8,
    name_len: i16,
    padding2: [i8; 4],
    name: [u8; UBI_MAX_VOLUME_NAME + 1],
}

/// One entry of `struct ubi_rnvol_req`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct RnvolEnt {
    vol_id: i32,
    name_len: i16,
    padding2: [i8; 2],
    name: [u8; UBI_MAX_VOLUME_NAME + 1],
}

/// `struct ubi_rnvol_req`.
#[repr(C)]
#[derive(Debug)]
struct RnvolReq {
    count: i32,
    padding1: [i8; 12],
    ents: [RnvolEnt; UBI_MAX_RNVOL],
}

/// `struct ubi_leb_change_req` (`__packed`, naturally aligned).
#[repr(C)]
#[derive(Debug)]
struct LebChangeReq {
    lnum: i32,
    bytes: i32,
    dtype: i8,
    padding: [i8; 7],
}

/// `struct ubi_blkcreate_req`.
#[repr(C)]
#[derive(Debug)]
struct BlkcreateReq {
    padding: [i8; 128],
}

// The kernel copies exactly sizeof(struct ...) bytes: a layout slip would corrupt the
// request silently, so pin every size to the UAPI value.
const _: () = assert!(size_of::<AttachReq>() == 24);
const _: () = assert!(size_of::<MkvolReq>() == 152);
const _: () = assert!(size_of::<RnvolEnt>() == 136);
const _: () = assert!(size_of::<RnvolReq>() == 16 + 32 * 136);
const _: () = assert!(size_of::<BlkcreateReq>() == 128);
const _: () = assert!(size_of::<LebChangeReq>() == 16);
/// `UBI_LONGTERM`: the data type hint UBI passes to the flash for a LEB change.
const UBI_LONGTERM: i8 = 1;

mod ioctl {
    use super::{AttachReq, BlkcreateReq, LebChangeReq, MkvolReq, RnvolReq};
    const UBI_IOC_MAGIC: u8 = b'o';
    const UBI_VOL_IOC_MAGIC: u8 = b'O';
    // UBI_IOCATT and UBI_IOCMKVOL are declared _IOW but the kernel writes the chosen
    // device/volume number back into the first field: declare them read-write with the
    // _IOW number so the pointer we pass is `*mut`.
    nix::ioctl_readwrite_bad!(
        ubi_iocatt,
        nix::request_code_write!(UBI_IOC_MAGIC, 64, std::mem::size_of::<AttachReq>()),
        AttachReq
    );
    nix::ioctl_write_ptr!(ubi_iocdet, UBI_IOC_MAGIC, 65, i32);
    nix::ioctl_readwrite_bad!(
        ubi_iocmkvol,
        nix::request_code_write!(UBI_IOC_MAGIC, 0, std::mem::size_of::<MkvolReq>()),
        MkvolReq
    );
    nix::ioctl_write_ptr!(ubi_iocrmvol, UBI_IOC_MAGIC, 1, i32);
    nix::ioctl_write_ptr!(ubi_iocrnvol, UBI_IOC_MAGIC, 3, RnvolReq);
    nix::ioctl_write_ptr!(ubi_iocvolup, UBI_VOL_IOC_MAGIC, 0, i64);
    nix::ioctl_write_ptr!(ubi_iocvolcrblk, UBI_VOL_IOC_MAGIC, 7, BlkcreateReq);
    // UBI_IOCEBCH is declared _IOW('O', 2, __s32) but the kernel copies a whole
    // `struct ubi_leb_change_req` (16 bytes): keep the header's number, pass the struct.
    nix::ioctl_write_ptr_bad!(
        ubi_iocebch,
        nix::request_code_write!(UBI_VOL_IOC_MAGIC, 2, std::mem::size_of::<i32>()),
        LebChangeReq
    );
    // UBI_IOCEBISMAP is _IOR('O', 5, __s32), yet the kernel *reads* the LEB number from
    // the pointer and answers 0/1 in the return value.
    nix::ioctl_write_ptr_bad!(
        ubi_iocebismap,
        nix::request_code_read!(UBI_VOL_IOC_MAGIC, 5, std::mem::size_of::<i32>()),
        i32
    );
}

/// Copies a volume name into a fixed UAPI buffer; rejects empty, too long or NUL names.
fn name_buf(name: &str) -> Result<([u8; UBI_MAX_VOLUME_NAME + 1], i16), Errno> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.contains(&0) {
        return Err(Errno::EINVAL);
    }
    if bytes.len() > UBI_MAX_VOLUME_NAME {
        return Err(Errno::ENAMETOOLONG);
    }
    let mut buf = [0u8; UBI_MAX_VOLUME_NAME + 1];
    buf.get_mut(..bytes.len())
        .ok_or(Errno::ENAMETOOLONG)?
        .copy_from_slice(bytes);
    let len = i16::try_from(bytes.len()).map_err(|_| Errno::ENAMETOOLONG)?;
    Ok((buf, len))
}

fn open(path: &Path, write: bool) -> Result<File, SysError> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .open(path)
        .map_err(|e| {
            let mode = if write { "O_RDWR" } else { "O_RDONLY" };
            SysError::new(format!("open({}, {mode})", path.display()), e)
        })
}

/// The UBI control device, `/dev/ubi_ctrl`.
#[derive(Debug)]
pub struct UbiCtrl {
    file: File,
    path: PathBuf,
}

impl UbiCtrl {
    /// Opens the control device (usually `/dev/ubi_ctrl`).
    pub fn open(path: &Path) -> Result<Self, SysError> {
        Ok(UbiCtrl {
            file: open(path, true)?,
            path: path.to_path_buf(),
        })
    }

    /// `UBI_IOCATT`: attaches MTD device `mtd_num`, lets the kernel pick the UBI number and
    /// returns it. Default VID header offset and bad-block reserve.
    pub fn attach(&self, mtd_num: u32) -> Result<u32, SysError> {
        let call = || {
            format!(
                "ioctl({}, UBI_IOCATT, mtd_num={mtd_num})",
                self.path.display()
            )
        };
        let mtd = i32::try_from(mtd_num).map_err(|_| SysError::new(call(), Errno::EINVAL))?;
        let mut req = AttachReq {
            ubi_num: UBI_DEV_NUM_AUTO,
            mtd_num: mtd,
            ..AttachReq::default()
        };
        // SAFETY: the fd is an open /dev/ubi_ctrl owned by self; `req` is a live, fully
        // initialised `struct ubi_attach_req` (size checked above) that the kernel reads
        // and writes back only within its 24 bytes during the call.
        unsafe { ioctl::ubi_iocatt(self.file.as_raw_fd(), &mut req) }
            .map_err(|e| SysError::new(call(), e))?;
        u32::try_from(req.ubi_num).map_err(|_| SysError::new(call(), Errno::ERANGE))
    }

    /// `UBI_IOCDET`: detaches UBI device `ubi_num`.
    pub fn detach(&self, ubi_num: u32) -> Result<(), SysError> {
        let call = format!("ioctl({}, UBI_IOCDET, {ubi_num})", self.path.display());
        let num = i32::try_from(ubi_num).map_err(|_| SysError::new(&call, Errno::EINVAL))?;
        // SAFETY: valid owned fd; `num` is a live i32 the kernel only reads.
        unsafe { ioctl::ubi_iocdet(self.file.as_raw_fd(), &num) }
            .map_err(|e| SysError::new(&call, e))?;
        Ok(())
    }
}

/// An attached UBI device, `/dev/ubiN`.
#[derive(Debug)]
pub struct UbiDevice {
    file: File,
    path: PathBuf,
}

impl UbiDevice {
    /// Opens `/dev/ubiN`.
    pub fn open(path: &Path) -> Result<Self, SysError> {
        Ok(UbiDevice {
            file: open(path, true)?,
            path: path.to_path_buf(),
        })
    }

    /// `UBI_IOCMKVOL`: creates a volume of `bytes` bytes (rounded up to whole LEBs by
    /// UBI), lets UBI choose the id, and returns the id.
    pub fn mkvol(&self, name: &str, bytes: u64, kind: VolType) -> Result<u32, SysError> {
        let call = format!(
            "ioctl({}, UBI_IOCMKVOL, name={name:?}, bytes={bytes}, type={kind:?})",
            self.path.display()
        );
        let (buf, name_len) = name_buf(name).map_err(|e| SysError::new(&call, e))?;
        let bytes = i64::try_from(bytes).map_err(|_| SysError::new(&call, Errno::EFBIG))?;
        let mut req = MkvolReq {
            vol_id: UBI_VOL_NUM_AUTO,
            alignment: 1,
            bytes,
            vol_type: kind.raw(),
            flags: 0,
            name_len,
            padding2: [0; 4],
            name: buf,
        };
        // SAFETY: valid owned fd of a UBI device; `req` is a live, fully initialised
        // `struct ubi_mkvol_req` (152 bytes, NUL-terminated name) which the kernel reads and
        // into whose first field it writes the new volume id.
        unsafe { ioctl::ubi_iocmkvol(self.file.as_raw_fd(), &mut req) }
            .map_err(|e| SysError::new(&call, e))?;
        u32::try_from(req.vol_id).map_err(|_| SysError::new(&call, Errno::ERANGE))
    }

    /// `UBI_IOCRMVOL`: removes volume `vol_id` (fails with EBUSY while it is open).
    pub fn rmvol(&self, vol_id: u32) -> Result<(), SysError> {
        let call = format!("ioctl({}, UBI_IOCRMVOL, {vol_id})", self.path.display());
        let id = i32::try_from(vol_id).map_err(|_| SysError::new(&call, Errno::EINVAL))?;
        // SAFETY: valid owned fd; `id` is a live i32 the kernel only reads.
        unsafe { ioctl::ubi_iocrmvol(self.file.as_raw_fd(), &id) }
            .map_err(|e| SysError::new(&call, e))?;
        Ok(())
    }

    /// `UBI_IOCRNVOL`: renames up to [`UBI_MAX_RNVOL`] volumes in one atomic volume-table
    /// update. A volume that already carries one of the new names and is not itself
    /// renamed is removed by the kernel in the same update.
    pub fn rename(&self, renames: &[(u32, &str)]) -> Result<(), SysError> {
        let call = format!(
            "ioctl({}, UBI_IOCRNVOL, {:?})",
            self.path.display(),
            renames
        );
        if renames.is_empty() || renames.len() > UBI_MAX_RNVOL {
            return Err(SysError::new(&call, Errno::EINVAL));
        }
        let empty = RnvolEnt {
            vol_id: 0,
            name_len: 0,
            padding2: [0; 2],
            name: [0; UBI_MAX_VOLUME_NAME + 1],
        };
        let mut req = RnvolReq {
            count: 0,
            padding1: [0; 12],
            ents: [empty; UBI_MAX_RNVOL],
        };
        for (slot, (id, name)) in req.ents.iter_mut().zip(renames) {
            let (buf, name_len) = name_buf(name).map_err(|e| SysError::new(&call, e))?;
            slot.vol_id = i32::try_from(*id).map_err(|_| SysError::new(&call, Errno::EINVAL))?;
            slot.name_len = name_len;
            slot.name = buf;
        }
        req.count =
            i32::try_from(renames.len()).map_err(|_| SysError::new(&call, Errno::EINVAL))?;
        // SAFETY: valid owned fd of a UBI device; `req` is a live, fully initialised
        // `struct ubi_rnvol_req` (4368 bytes, `count` entries filled) the kernel only reads.
        unsafe { ioctl::ubi_iocrnvol(self.file.as_raw_fd(), &req) }
            .map_err(|e| SysError::new(&call, e))?;
        Ok(())
    }
}

/// One UBI volume character device, `/dev/ubiN_M`.
#[derive(Debug)]
pub struct UbiVolume {
    file: File,
    path: PathBuf,
}

impl UbiVolume {
    /// Opens the volume for reading.
    pub fn open_read(path: &Path) -> Result<Self, SysError> {
        Ok(UbiVolume {
            file: open(path, false)?,
            path: path.to_path_buf(),
        })
    }

    /// Opens the volume for an update.
    pub fn open_write(path: &Path) -> Result<Self, SysError> {
        Ok(UbiVolume {
            file: open(path, true)?,
            path: path.to_path_buf(),
        })
    }

    /// The device path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `UBI_IOCVOLUP`: starts a whole-volume update of exactly `bytes` bytes; the returned
    /// writer must then receive exactly that many bytes. Until the last byte is written the
    /// volume is marked "update in progress" and reads fail: power loss leaves it marked
    /// corrupted, never half-new.
    pub fn start_update(self, bytes: u64) -> Result<VolumeUpdate, SysError> {
        let call = format!("ioctl({}, UBI_IOCVOLUP, {bytes})", self.path.display());
        let n = i64::try_from(bytes).map_err(|_| SysError::new(&call, Errno::EFBIG))?;
        // SAFETY: valid owned fd opened read-write; `n` is a live i64 the kernel only reads.
        unsafe { ioctl::ubi_iocvolup(self.file.as_raw_fd(), &n) }
            .map_err(|e| SysError::new(&call, e))?;
        Ok(VolumeUpdate {
            volume: self,
            remaining: bytes,
        })
    }

    /// `UBI_IOCEBCH` then `write(2)`: atomically replaces LEB `lnum` of this dynamic volume
    /// by `data` (at most one LEB). UBI buffers the bytes and switches the LEB over only
    /// once all arrived: after a power cut the LEB is old or new, never a mix. Needs the
    /// volume opened for writing.
    pub fn change_leb(&mut self, lnum: u32, data: &[u8]) -> Result<(), SysError> {
        let call = format!(
            "ioctl({}, UBI_IOCEBCH, lnum={lnum}, bytes={})",
            self.path.display(),
            data.len()
        );
        let req = LebChangeReq {
            lnum: i32::try_from(lnum).map_err(|_| SysError::new(&call, Errno::EINVAL))?,
            bytes: i32::try_from(data.len()).map_err(|_| SysError::new(&call, Errno::EINVAL))?,
            dtype: UBI_LONGTERM,
            padding: [0; 7],
        };
        // SAFETY: valid owned fd of a UBI volume opened read-write; `req` is a live, fully
        // initialised 16-byte `struct ubi_leb_change_req` the kernel only reads.
        unsafe { ioctl::ubi_iocebch(self.file.as_raw_fd(), &req) }
            .map_err(|e| SysError::new(&call, e))?;
        self.file.write_all(data).map_err(|e| {
            SysError::new(
                format!(
                    "write({}, {} bytes of LEB {lnum})",
                    self.path.display(),
                    data.len()
                ),
                e,
            )
        })
    }

    /// `UBI_IOCEBISMAP`: whether LEB `lnum` is mapped to a physical eraseblock.
    pub fn is_mapped(&self, lnum: u32) -> Result<bool, SysError> {
        let call = format!("ioctl({}, UBI_IOCEBISMAP, {lnum})", self.path.display());
        let n = i32::try_from(lnum).map_err(|_| SysError::new(&call, Errno::EINVAL))?;
        // SAFETY: valid owned fd; `n` is a live i32 the kernel only reads; the answer is
        // the ioctl's return value.
        let r = unsafe { ioctl::ubi_iocebismap(self.file.as_raw_fd(), &n) }
            .map_err(|e| SysError::new(&call, e))?;
        Ok(r == 1)
    }

    /// `UBI_IOCVOLCRBLK`: creates the read-only block device `/dev/ubiblockN_M`.
    pub fn create_block(&self) -> Result<(), SysError> {
        let call = format!("ioctl({}, UBI_IOCVOLCRBLK)", self.path.display());
        let req = BlkcreateReq { padding: [0; 128] };
        // SAFETY: valid owned fd; `req` is a live zeroed 128-byte request the kernel reads.
        match unsafe { ioctl::ubi_iocvolcrblk(self.file.as_raw_fd(), &req) } {
            Ok(_) | Err(Errno::EEXIST) => Ok(()),
            Err(e) => Err(SysError::new(&call, e)),
        }
    }

    /// `pread` at `offset`; returns the bytes read (0 at the end of the volume).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize, SysError> {
        use std::os::unix::fs::FileExt;
        self.file.read_at(buf, offset).map_err(|e| {
            SysError::new(
                format!("pread({}, {}, {offset})", self.path.display(), buf.len()),
                e,
            )
        })
    }
}

/// An update in progress; owns the volume's fd. See [`UbiVolume::start_update`].
#[derive(Debug)]
pub struct VolumeUpdate {
    volume: UbiVolume,
    remaining: u64,
}

impl VolumeUpdate {
    /// Bytes still expected before UBI finishes the update.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// The volume device path.
    pub fn path(&self) -> &Path {
        &self.volume.path
    }

    /// fsync(2) on the volume (UBI flushes its write-back of the volume).
    pub fn sync(&self) -> Result<(), SysError> {
        self.volume
            .file
            .sync_all()
            .map_err(|e| SysError::new(format!("fsync({})", self.volume.path.display()), e))
    }
}

impl Write for VolumeUpdate {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let allowed = usize::try_from(self.remaining).unwrap_or(usize::MAX);
        if buf.len() > allowed {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "write of {} bytes past the announced update size of {}",
                    buf.len(),
                    self.volume.path.display()
                ),
            ));
        }
        let n = self.volume.file.write(buf)?;
        self.remaining = self.remaining.saturating_sub(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.volume.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_any_ioctl() {
        assert!(name_buf("kernel.new").is_ok());
        assert_eq!(name_buf("").err(), Some(Errno::EINVAL));
        assert_eq!(name_buf("a\0b").err(), Some(Errno::EINVAL));
        assert_eq!(name_buf(&"x".repeat(128)).err(), Some(Errno::ENAMETOOLONG));
        let (buf, len) = name_buf(&"x".repeat(127)).unwrap();
        assert_eq!(len, 127);
        assert_eq!(buf[127], 0, "name stays NUL-terminated");
    }

    #[test]
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    fn ioctl_numbers_match_the_uapi_header() {
        // _IOW('o', 64, 24 bytes) etc., computed by hand from ioctl.h's encoding:
        // dir(1=write)<<30 | size<<16 | type<<8 | nr.
        let w =
            |ty: u8, nr: u32, size: u32| (1u32 << 30) | (size << 16) | (u32::from(ty) << 8) | nr;
        assert_eq!(
            nix::request_code_write!(b'o', 64, 24) as u32,
            w(b'o', 64, 24)
        );
        assert_eq!(w(b'o', 64, 24), 0x4018_6f40, "UBI_IOCATT");
        assert_eq!(w(b'o', 0, 152), 0x4098_6f00, "UBI_IOCMKVOL");
        assert_eq!(w(b'o', 3, 4368), 0x5110_6f03, "UBI_IOCRNVOL");
        assert_eq!(w(b'O', 0, 8), 0x4008_4f00, "UBI_IOCVOLUP");
        assert_eq!(w(b'O', 2, 4), 0x4004_4f02, "UBI_IOCEBCH");
        assert_eq!(
            nix::request_code_write!(b'O', 2, 4) as u32,
            w(b'O', 2, 4),
            "UBI_IOCEBCH"
        );
        // _IOR: dir 2.
        assert_eq!(
            nix::request_code_read!(b'O', 5, 4) as u32,
            0x8004_4f05,
            "UBI_IOCEBISMAP"
        );
    }
}
