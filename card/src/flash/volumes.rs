//! The volume-store contract: the few UBI operations the flash model needs, as a trait.
//!
//! [`Volumes`] is sized to what UBI itself offers through its character devices, one method
//! per ioctl (or sysfs read), so that the real implementation in `init/src/sys/` is a thin,
//! auditable wrapper and every fake behaves like the kernel:
//!
//! | method              | kernel interface                                                   |
//! |---------------------|--------------------------------------------------------------------|
//! | [`Volumes::geometry`] | sysfs `/sys/class/ubi/ubiN/{eraseblock_size,total_eraseblocks,avail_eraseblocks,bad_peb_count,reserved_for_bad,max_vol_count}` |
//! | [`Volumes::list`]   | sysfs `/sys/class/ubi/ubiN/ubiN_M/{name,reserved_ebs,data_bytes,upd_marker}` |
//! | [`Volumes::create`] | `UBI_IOCMKVOL` on `/dev/ubiN` (`UBI_VOL_NUM_AUTO`, alignment 1; init makes static volumes) |
//! | [`Volumes::create_dynamic`] | `UBI_IOCMKVOL` with `UBI_DYNAMIC_VOLUME` (a segment, written LEB by LEB) |
//! | [`Volumes::update`] | `UBI_IOCVOLUP` on `/dev/ubiN_M`, then plain `write(2)`s            |
//! | [`Volumes::change_leb`] | `UBI_IOCEBCH` on `/dev/ubiN_M` (`struct ubi_leb_change_req`), then `write(2)` of the LEB |
//! | [`Volumes::is_mapped`] | `UBI_IOCEBISMAP` on `/dev/ubiN_M`                               |
//! | [`Volumes::read`]   | `pread(2)` on `/dev/ubiN_M`                                        |
//! | [`Volumes::rename`] | ONE `UBI_IOCRNVOL` on `/dev/ubiN` (`struct ubi_rnvol_req`)          |
//! | [`Volumes::remove`] | `UBI_IOCRMVOL` on `/dev/ubiN`                                      |
//!
//! UBI semantics every implementation must reproduce (checked against `ubi-user.h` and
//! `drivers/mtd/ubi/cdev.c::rename_volumes`):
//!
//! - **Rename is atomic and may replace.** Up to [`UBI_MAX_RNVOL`] (32) renames go in one
//!   request and land in one volume-table write. If a new name belongs to an existing
//!   volume that is *not itself renamed in the same request*, that volume is **removed** in
//!   the same atomic step (this is how UBI supports "write `x.new`, rename onto `x`").
//!   Renaming a volume to its current name is a no-op. Two entries with the same new name,
//!   an unknown id, or an empty/over-long name is `EINVAL`. The replaced volume must not be
//!   open (it is opened `UBI_EXCLUSIVE`; otherwise `EBUSY`).
//! - **Names** are 1..=[`UBI_MAX_VOLUME_NAME`] (127) bytes and unique on the device.
//! - **Size.** `UBI_IOCMKVOL` reserves whole LEBs: `bytes` is rounded up to the LEB size;
//!   `bytes` must be > 0. [`VolumeInfo::reserved_bytes`] is the rounded size.
//! - **Dynamic volumes have no length.** `data_bytes` of a dynamic volume is its reserved
//!   size; bytes past the last update read as 0xFF. Lengths live in the inventory, so the
//!   store works with either volume type. init's `UbiVolumes` creates *static* volumes
//!   (exact `data_bytes`, data CRC-checked by UBI on every read); the fakes model the
//!   harder dynamic case.
//! - **Update marker.** `UBI_IOCVOLUP(n)` sets the volume's update marker and wipes it; the
//!   marker is cleared only when the n-th byte has been written. An update interrupted by a
//!   power cut (or a writer dropped early) leaves the marker set: the volume survives
//!   reattach but every read fails with `EBADF` ("damaged volume, update marker is set")
//!   until it is updated again or removed. [`VolumeInfo::update_marker`] reports it.
//! - **Atomic LEB change.** `UBI_IOCEBCH` on a *dynamic* volume replaces one LEB: UBI
//!   buffers the announced bytes, writes them to a fresh PEB, and only then switches the
//!   LEB over (`ubi_eba_atomic_leb_change`). A power cut leaves the old content (or the LEB
//!   unmapped, if it was) or the new content, never a mix. Bytes of the LEB past the
//!   announced length read as 0xFF. An unmapped LEB reads as 0xFF and `UBI_IOCEBISMAP`
//!   says 0; there is no update marker involved. A static volume refuses it.
//!
//! This module defines no policy (names, inventory, commit order): see [`super::store`].

use std::fmt;
use std::io;

/// `UBI_MAX_VOLUME_NAME` from `ubi-user.h`: longest volume name, in bytes (no NUL).
pub const UBI_MAX_VOLUME_NAME: usize = 127;
/// `UBI_MAX_RNVOL` from `ubi-user.h`: most renames in one `UBI_IOCRNVOL` request.
pub const UBI_MAX_RNVOL: usize = 32;

/// A UBI volume id (the `M` of `/dev/ubiN_M`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VolumeId(pub u32);

impl fmt::Display for VolumeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One volume as the device reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    /// Volume id.
    pub id: VolumeId,
    /// Volume name (unique on the device).
    pub name: String,
    /// Reserved size: whole LEBs × LEB size (`reserved_ebs` × `usable_eb_size`).
    pub reserved_bytes: u64,
    /// What sysfs `data_bytes` says. For a *dynamic* volume UBI reports the reserved size here, not the length of the last update, and
    /// reads past the written bytes return erased flash (0xFF), not end-of-file: the store
    /// takes artifact lengths from its inventory, never from this field.
    pub data_bytes: u64,
    /// The update marker is set: an update was started and never completed; reads fail.
    pub update_marker: bool,
}

/// Device geometry and health, read before any write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Usable bytes per logical eraseblock (LEB); volume sizes are multiples of it.
    pub leb_size: u64,
    /// LEBs usable for volumes in total (`total_eraseblocks`).
    pub total_lebs: u64,
    /// LEBs not reserved by any volume (`avail_eraseblocks`).
    pub free_lebs: u64,
    /// Physical eraseblocks marked bad (`bad_peb_count`).
    pub bad_pebs: u64,
    /// PEBs still held back to replace blocks that go bad (`reserved_for_bad`). Zero means
    /// the next bad block makes UBI read-only.
    pub reserved_for_bad: u64,
    /// Most volumes the device's volume table can hold (`max_vol_count`).
    pub max_volumes: u32,
}

impl Geometry {
    /// LEBs needed to hold `bytes` (at least one: UBI rejects empty volumes).
    pub fn lebs_for(&self, bytes: u64) -> u64 {
        if self.leb_size == 0 {
            return 0;
        }
        bytes.div_ceil(self.leb_size).max(1)
    }
}

/// One entry of an atomic [`Volumes::rename`] (`struct ubi_rnvol_req.ents[i]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rename {
    /// The volume to rename.
    pub id: VolumeId,
    /// Its new name. If another volume has this name and is not renamed in the same
    /// request, that volume is removed atomically.
    pub new_name: String,
}

/// A volume-store operation, named by the ioctl (or interface) it maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeOp {
    /// Read the device geometry (sysfs).
    Geometry,
    /// List the volumes (sysfs).
    List,
    /// `UBI_IOCMKVOL`.
    Create,
    /// `UBI_IOCVOLUP`.
    Update,
    /// `write(2)` during an update.
    Write,
    /// Completing an update (last byte written, data synced).
    Finish,
    /// `pread(2)` of a volume.
    Read,
    /// `UBI_IOCEBCH` + `write(2)`: atomic change of one LEB.
    ChangeLeb,
    /// `UBI_IOCEBISMAP`.
    IsMapped,
    /// `UBI_IOCRNVOL`.
    Rename,
    /// `UBI_IOCRMVOL`.
    Remove,
    /// Opening the device again (a second handle).
    Open,
}

impl fmt::Display for VolumeOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Geometry => "read geometry of",
            Self::Open => "open",
            Self::List => "list volumes of",
            Self::Create => "create (UBI_IOCMKVOL)",
            Self::Update => "start update (UBI_IOCVOLUP) of",
            Self::Write => "write to",
            Self::Finish => "finish update of",
            Self::Read => "read",
            Self::ChangeLeb => "change a LEB (UBI_IOCEBCH) of",
            Self::IsMapped => "query LEB mapping (UBI_IOCEBISMAP) of",
            Self::Rename => "rename (UBI_IOCRNVOL)",
            Self::Remove => "remove (UBI_IOCRMVOL)",
        })
    }
}

/// What an operation was applied to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeTarget {
    /// The UBI device as a whole.
    Device,
    /// One volume, by id and/or name (whatever the caller knew).
    Volume {
        /// Volume id, if known.
        id: Option<VolumeId>,
        /// Volume name, if known.
        name: Option<String>,
    },
    /// The entries of one rename request.
    Renames(Vec<Rename>),
}

impl VolumeTarget {
    /// A volume known by id only.
    pub fn id(id: VolumeId) -> Self {
        Self::Volume {
            id: Some(id),
            name: None,
        }
    }
    /// A volume known by name only.
    pub fn name(name: &str) -> Self {
        Self::Volume {
            id: None,
            name: Some(name.to_owned()),
        }
    }
    /// A volume known by id and name.
    pub fn both(id: VolumeId, name: &str) -> Self {
        Self::Volume {
            id: Some(id),
            name: Some(name.to_owned()),
        }
    }
}

impl fmt::Display for VolumeTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Device => f.write_str("the UBI device"),
            Self::Volume { id, name } => match (id, name) {
                (Some(id), Some(n)) => write!(f, "volume {id} \"{n}\""),
                (Some(id), None) => write!(f, "volume {id}"),
                (None, Some(n)) => write!(f, "volume \"{n}\""),
                (None, None) => f.write_str("an unnamed volume"),
            },
            Self::Renames(r) => {
                f.write_str("volumes [")?;
                for (i, e) in r.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{} -> \"{}\"", e.id, e.new_name)?;
                }
                f.write_str("]")
            }
        }
    }
}

/// Why a volume operation failed, classified so the store can react (report "no space" to
/// the master, treat a set update marker as an interrupted write, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeErrorKind {
    /// Not enough free LEBs or volume-table slots (`ENOSPC`).
    NoSpace,
    /// No such volume (`ENODEV`/`ENOENT`).
    NotFound,
    /// A volume with that name already exists (`EEXIST`).
    Exists,
    /// The volume is open elsewhere (`EBUSY`).
    Busy,
    /// UBI went read-only, e.g. after a failed bad-block marking (`EROFS`).
    ReadOnly,
    /// The volume's update marker is set: an update never completed (`EBADF` on read).
    UpdateMarker,
    /// The request itself is invalid: name length, rename count, sizes (`EINVAL`).
    Invalid,
    /// More (or fewer, at finish) bytes than announced to `UBI_IOCVOLUP`.
    SizeMismatch,
    /// Simulated power loss (fakes only): nothing after this point happened.
    PowerLoss,
    /// Any other I/O failure (`EIO`, ECC errors, …).
    Io,
}

impl VolumeErrorKind {
    /// Classify an `io::Error` from a UBI ioctl or volume read/write.
    pub fn from_io(e: &io::Error) -> Self {
        // Linux errno values (asm-generic/errno-base.h), identical on every Linux arch we build.
        match e.raw_os_error() {
            Some(28) => Self::NoSpace,            // ENOSPC
            Some(2) | Some(19) => Self::NotFound, // ENOENT, ENODEV
            Some(17) => Self::Exists,             // EEXIST
            Some(16) => Self::Busy,               // EBUSY
            Some(30) => Self::ReadOnly,           // EROFS
            Some(9) => Self::UpdateMarker,        // EBADF
            Some(22) => Self::Invalid,            // EINVAL
            _ => Self::Io,
        }
    }
}

impl fmt::Display for VolumeErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NoSpace => "no space on the UBI device",
            Self::NotFound => "no such volume",
            Self::Exists => "name already in use",
            Self::Busy => "volume busy",
            Self::ReadOnly => "UBI is read-only; check the kernel log for flash errors",
            Self::UpdateMarker => "update marker set: the volume was never completely written",
            Self::Invalid => "invalid request",
            Self::SizeMismatch => "byte count differs from the size given to UBI_IOCVOLUP",
            Self::PowerLoss => "simulated power loss",
            Self::Io => "I/O error",
        })
    }
}

/// A failed volume operation: which operation, on what, and why.
#[derive(Debug, thiserror::Error)]
#[error("cannot {op} {target}: {kind}")]
pub struct VolumeError {
    /// The operation (names the ioctl).
    pub op: VolumeOp,
    /// The volume(s) or device it was applied to.
    pub target: VolumeTarget,
    /// Classification the store acts on.
    pub kind: VolumeErrorKind,
    /// The OS error, when there is one.
    #[source]
    pub source: Option<io::Error>,
}

impl VolumeError {
    /// An error without an OS cause (fakes, validation).
    pub fn new(op: VolumeOp, target: VolumeTarget, kind: VolumeErrorKind) -> Self {
        Self {
            op,
            target,
            kind,
            source: None,
        }
    }

    /// An error from an OS call, classified by its errno.
    pub fn from_io(op: VolumeOp, target: VolumeTarget, source: io::Error) -> Self {
        Self {
            op,
            target,
            kind: VolumeErrorKind::from_io(&source),
            source: Some(source),
        }
    }
}

/// Check a volume name against UBI's rules (1..=127 bytes, no NUL).
pub fn check_name(name: &str) -> Result<(), VolumeErrorKind> {
    if name.is_empty() || name.len() > UBI_MAX_VOLUME_NAME || name.contains('\0') {
        Err(VolumeErrorKind::Invalid)
    } else {
        Ok(())
    }
}

/// A UBI device's volumes. Every method maps to one kernel operation (see the module
/// header); none of them retries or hides an error.
pub trait Volumes {
    /// The writer returned by [`Volumes::update`]. It owns what it needs (for UBI, the
    /// volume's file descriptor), so a caller can keep it across network events.
    type Writer: VolumeWriter;

    /// Device geometry and health (sysfs of `/sys/class/ubi/ubiN`).
    fn geometry(&mut self) -> Result<Geometry, VolumeError>;

    /// A second handle on the same device with descriptors of its own, for a process
    /// that outlives the borrow of the first (the resident agent stages a new set while
    /// the package root runs).
    fn reopen(&self) -> Result<Self, VolumeError>
    where
        Self: Sized;

    /// All volumes on the device, in id order (sysfs).
    fn list(&mut self) -> Result<Vec<VolumeInfo>, VolumeError>;

    /// `UBI_IOCMKVOL`: create an empty volume `name` (static or dynamic: the store relies
    /// on neither) reserving `bytes` (rounded up to
    /// whole LEBs; `bytes` > 0), with an automatically chosen id. Fails with
    /// [`VolumeErrorKind::Exists`] if the name is taken, [`VolumeErrorKind::NoSpace`] if not
    /// enough LEBs or table slots are free.
    fn create(&mut self, name: &str, bytes: u64) -> Result<VolumeId, VolumeError>;

    /// `UBI_IOCMKVOL` with `UBI_DYNAMIC_VOLUME`: create a volume `name` of `bytes` (rounded
    /// up to whole LEBs) whose LEBs are all unmapped (read as 0xFF) and are written one by
    /// one with [`Volumes::change_leb`]. Same errors as [`Volumes::create`].
    fn create_dynamic(&mut self, name: &str, bytes: u64) -> Result<VolumeId, VolumeError>;

    /// `UBI_IOCEBCH` then `write(2)` of `data`: atomically replace LEB `lnum` of the dynamic
    /// volume `id` by `data` (at most one LEB; the rest of the LEB reads 0xFF). After a
    /// power cut the LEB holds its old content or `data`, never a mix. A LEB past the
    /// volume's end or more than a LEB of data is [`VolumeErrorKind::Invalid`].
    fn change_leb(&mut self, id: VolumeId, lnum: u32, data: &[u8]) -> Result<(), VolumeError>;

    /// [`Volumes::change_leb`] of consecutive LEBs `first`, `first + 1`, ... with `data`
    /// cut into LEBs (the last one may be short). Each LEB is changed atomically as by
    /// `change_leb`; after an error or a power cut any of them may hold its old content or
    /// its new one. UBI has no call for several LEBs, so by default this is one
    /// `change_leb` after the other; a file-backed device makes them durable together
    /// (one sync for the run instead of one per LEB).
    fn change_lebs(&mut self, id: VolumeId, first: u32, data: &[u8]) -> Result<(), VolumeError> {
        let leb = usize::try_from(self.geometry()?.leb_size).unwrap_or(usize::MAX);
        for (i, chunk) in data.chunks(leb.max(1)).enumerate() {
            let lnum = u32::try_from(i)
                .ok()
                .and_then(|i| first.checked_add(i))
                .ok_or_else(|| {
                    VolumeError::new(
                        VolumeOp::ChangeLeb,
                        VolumeTarget::id(id),
                        VolumeErrorKind::Invalid,
                    )
                })?;
            self.change_leb(id, lnum, chunk)?;
        }
        Ok(())
    }

    /// `UBI_IOCEBISMAP`: whether LEB `lnum` of volume `id` is mapped (has been written
    /// since the volume was created).
    fn is_mapped(&mut self, id: VolumeId, lnum: u32) -> Result<bool, VolumeError>;

    /// `UBI_IOCVOLUP`: start replacing the whole content of volume `id` with exactly `bytes`
    /// bytes (≤ its reserved size). From this call on the update marker is set; it is
    /// cleared when the writer has received all `bytes` and [`VolumeWriter::finish`]
    /// returns. Dropping the writer early leaves the marker set (as a power cut would).
    fn update(&mut self, id: VolumeId, bytes: u64) -> Result<Self::Writer, VolumeError>;

    /// `pread(2)`: read from `offset` into `buf`; returns the bytes read, 0 at or past
    /// `data_bytes`. A volume with its update marker set fails with
    /// [`VolumeErrorKind::UpdateMarker`].
    fn read(&mut self, id: VolumeId, offset: u64, buf: &mut [u8]) -> Result<usize, VolumeError>;

    /// ONE `UBI_IOCRNVOL`: apply all `ops` (at most [`UBI_MAX_RNVOL`]) atomically, removing
    /// any volume whose name is taken by an entry and which is not itself renamed (see the
    /// module header). Either every rename happens or none does.
    fn rename(&mut self, ops: &[Rename]) -> Result<(), VolumeError>;

    /// `UBI_IOCRMVOL`: remove volume `id` and free its LEBs.
    fn remove(&mut self, id: VolumeId) -> Result<(), VolumeError>;
}

/// The data phase of a `UBI_IOCVOLUP` update: sequential writes, then finish.
pub trait VolumeWriter {
    /// Append `buf` (`write(2)` on the volume's character device). Writing past the size
    /// given to [`Volumes::update`] fails with [`VolumeErrorKind::SizeMismatch`].
    fn write(&mut self, buf: &[u8]) -> Result<(), VolumeError>;

    /// Complete the update: all announced bytes must have been written (else
    /// [`VolumeErrorKind::SizeMismatch`], marker stays set); data is durable on return.
    fn finish(self) -> Result<(), VolumeError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_ubi_limits() {
        assert!(check_name("sb.boot").is_ok());
        assert_eq!(check_name(""), Err(VolumeErrorKind::Invalid));
        assert!(check_name(&"x".repeat(UBI_MAX_VOLUME_NAME)).is_ok());
        assert_eq!(
            check_name(&"x".repeat(UBI_MAX_VOLUME_NAME + 1)),
            Err(VolumeErrorKind::Invalid)
        );
        assert_eq!(check_name("a\0b"), Err(VolumeErrorKind::Invalid));
    }

    #[test]
    fn errno_classification() {
        let k = |n| VolumeErrorKind::from_io(&io::Error::from_raw_os_error(n));
        assert_eq!(k(28), VolumeErrorKind::NoSpace);
        assert_eq!(k(19), VolumeErrorKind::NotFound);
        assert_eq!(k(9), VolumeErrorKind::UpdateMarker);
        assert_eq!(k(30), VolumeErrorKind::ReadOnly);
        assert_eq!(k(5), VolumeErrorKind::Io);
    }

    #[test]
    fn error_message_names_op_and_volume() {
        let e = VolumeError::from_io(
            VolumeOp::Update,
            VolumeTarget::both(VolumeId(3), "sb.new.boot"),
            io::Error::from_raw_os_error(28),
        );
        let s = e.to_string();
        assert!(
            s.contains("UBI_IOCVOLUP") && s.contains("\"sb.new.boot\""),
            "{s}"
        );
        assert!(std::error::Error::source(&e).is_some());
        assert_eq!(
            Geometry {
                leb_size: 10,
                total_lebs: 0,
                free_lebs: 0,
                bad_pebs: 0,
                reserved_for_bad: 0,
                max_volumes: 0
            }
            .lebs_for(0),
            1
        );
    }
}
