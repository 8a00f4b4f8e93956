//! Hand-off: leaving init for the committed software, by kexec or by switch_root.
//!
//! **kexec** ([`kexec`]): the boot-image container is streamed out of its UBI volume into
//! two regular files on tmpfs (kexec_file_load refuses character devices), each section's
//! sha256 checked; it is loaded with the set's command line plus `shelfboot.stored=1` (so
//! the next init knows it runs the stored image and only validates), then `sync` and
//! `reboot(RB_KEXEC)`.
//!
//! **switch_root** ([`switch_root`]): each package (a squashfs) becomes a read-only block
//! device — `/dev/ubiblockN_M` via UBI_IOCVOLCRBLK for flash, a loop device for test-mode
//! packages kept in tmpfs — mounted under `/run/shelfboot/layers/I`; overlayfs stacks them
//! (the first package at the bottom) under a tmpfs upper layer at `/newroot`; /dev, /proc,
//! /sys and /run are moved into it; the initramfs is emptied (best effort, same device
//! only); `/newroot` is moved over `/`, chrooted into, and `/sbin/init` is exec'd with a
//! scrubbed environment. The new init's presence is checked before anything irreversible.
//!
//! **Test mode** ([`kexec_test`]): a test set's boot image is a file in the RAM store; it
//! is staged the same way, the RAM store directory is appended to the initramfs as a cpio
//! member ([`carry`]) so the next kernel has the test set without a second download, and
//! the command line gets `shelfboot.test=1` instead of the stored marker: that init only
//! validates (with the carried RAM store), never kexecs again and never counts a boot.
//!
//! Not here: choosing between the two (see [`crate::flow`]), and writing flash.

pub mod bootimage;
pub mod carry;

use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

use crate::kernel::{Kernel, Mount};
use crate::sys::SysError;
use crate::sys::power::Leave;

/// The marker appended to a stored image's command line.
pub const STORED_MARKER: &str = "shelfboot.stored=1";
/// The marker appended to a RAM set's boot image command line (kexec'd from RAM: test
/// mode, RAM-first, a card without usable flash).
pub const TEST_MARKER: &str = "shelfboot.test=1";
/// The environment the next init gets.
pub const INIT_ENV: &[(&str, &str)] = &[
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("TERM", "linux"),
    ("HOME", "/"),
];

/// Where hand-off stages files and mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// tmpfs staging directory (`/run/shelfboot`).
    pub stage: PathBuf,
    /// Mount point of the assembled root (`/newroot`, on the initramfs: it must not be
    /// under /run, which is moved into it).
    pub new_root: PathBuf,
    /// The kernel filesystems moved into the new root, in order.
    pub moved: Vec<PathBuf>,
    /// The init to exec inside the new root.
    pub init: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            stage: PathBuf::from("/run/shelfboot"),
            new_root: PathBuf::from("/newroot"),
            moved: ["/dev", "/proc", "/sys", "/run"]
                .iter()
                .map(PathBuf::from)
                .collect(),
            init: PathBuf::from("/sbin/init"),
        }
    }
}

/// One read-only layer of the new root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layer {
    /// A committed package volume `/dev/ubiN_M`.
    Ubi {
        /// UBI device number.
        ubi: u32,
        /// Volume id.
        vol: u32,
        /// Volume name (for messages).
        name: String,
    },
    /// A package at `offset` (`size` bytes) of a segment volume `/dev/ubiN_M`: its
    /// ubiblock device, then a read-only loop device limited to the package.
    UbiExtent {
        /// UBI device number.
        ubi: u32,
        /// Volume id.
        vol: u32,
        /// Volume name (for messages).
        name: String,
        /// First byte of the package in the volume.
        offset: u64,
        /// Bytes of the package.
        size: u64,
    },
    /// A test-mode package: a squashfs file in tmpfs.
    File(PathBuf),
    /// A test-mode package at `offset` (`size` bytes) of a file in tmpfs (a RAM-store
    /// segment): a loop device limited to the package.
    FileExtent {
        /// The file.
        path: PathBuf,
        /// First byte of the package.
        offset: u64,
        /// Bytes of the package.
        size: u64,
    },
}

impl std::fmt::Display for Layer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Layer::Ubi { ubi, vol, name } => write!(f, "volume {name} (/dev/ubi{ubi}_{vol})"),
            Layer::UbiExtent {
                ubi,
                vol,
                name,
                offset,
                size,
            } => write!(
                f,
                "{size} bytes at {offset} of volume {name} (/dev/ubi{ubi}_{vol})"
            ),
            Layer::File(p) => write!(f, "RAM package {}", p.display()),
            Layer::FileExtent { path, offset, size } => write!(
                f,
                "RAM package: {size} bytes at {offset} of {}",
                path.display()
            ),
        }
    }
}

/// Why a hand-off did not happen. Every variant is returned only on failure: success never
/// returns.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    /// A staging directory or mount point could not be created.
    #[error("cannot prepare {path} for the hand-off")]
    Prepare {
        /// The directory.
        path: PathBuf,
        /// The failed call.
        #[source]
        source: SysError,
    },
    /// The boot image could not be copied out of flash.
    #[error("cannot stage the boot image for kexec")]
    Stage(#[source] bootimage::BootImageError),
    /// The test-mode boot image file in RAM could not be opened.
    #[error("cannot open the RAM set's boot image {path}")]
    OpenImage {
        /// The file in the RAM store.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The RAM store could not be appended to the initramfs of the next kernel.
    #[error("cannot carry the RAM store across kexec")]
    Carry(#[source] carry::CarryError),
    /// kexec_file_load refused the image.
    #[error("cannot load the boot image for kexec (kernel {kernel})")]
    KexecLoad {
        /// The staged kernel.
        kernel: PathBuf,
        /// The failed call.
        #[source]
        source: SysError,
    },
    /// There are no packages to assemble a root from.
    #[error("the committed set has no packages to switch_root into")]
    NoLayers,
    /// A layer could not be turned into a block device.
    #[error("cannot create a block device for {layer}")]
    BlockDevice {
        /// The layer.
        layer: Layer,
        /// The failed call.
        #[source]
        source: SysError,
    },
    /// A mount of the new root failed.
    #[error("cannot mount {what} on {target}")]
    Mount {
        /// What was mounted.
        what: String,
        /// Where.
        target: PathBuf,
        /// The failed call.
        #[source]
        source: SysError,
    },
    /// The assembled root has no init.
    #[error("the assembled root has no {init}; the packages do not form a bootable root")]
    NoInit {
        /// The init path inside the new root.
        init: PathBuf,
    },
    /// Moving over / or chroot failed (after the kernel filesystems were moved).
    #[error("cannot switch into the new root {root}")]
    EnterRoot {
        /// The new root.
        root: PathBuf,
        /// The failed call.
        #[source]
        source: SysError,
    },
    /// The final exec or reboot failed.
    #[error("the final step of the hand-off failed")]
    Final(#[source] SysError),
}

/// `base` with any `shelfboot.stored=` removed and [`STORED_MARKER`] appended.
pub fn stored_cmdline(base: &str) -> String {
    marked_cmdline(base, STORED_MARKER)
}

/// `base` with any `shelfboot.stored=` and `shelfboot.test=` removed and `marker`
/// appended.
pub fn marked_cmdline(base: &str, marker: &str) -> String {
    let mut parts: Vec<&str> = base
        .split_whitespace()
        .filter(|p| !p.starts_with("shelfboot.stored=") && !p.starts_with("shelfboot.test="))
        .collect();
    parts.push(marker);
    parts.join(" ")
}

fn mkdir(k: &mut dyn Kernel, path: &Path) -> Result<(), HandoffError> {
    k.mkdir_all(path).map_err(|source| HandoffError::Prepare {
        path: path.to_path_buf(),
        source,
    })
}

/// Stages the boot image read by `read_at` (volume `volume`), loads it with `cmdline`
/// (the set's; the container's own if empty) plus the stored marker, and reboots into it.
pub fn kexec<E>(
    k: &mut dyn Kernel,
    paths: &Paths,
    volume: &str,
    read_at: impl FnMut(u64, &mut [u8]) -> Result<usize, E>,
    cmdline: &str,
) -> HandoffError
where
    E: std::error::Error + Send + Sync + 'static,
{
    kexec_marked(k, paths, volume, read_at, cmdline, STORED_MARKER, None)
}

/// Test mode: stages the boot image file `image` (in the RAM store), appends the RAM
/// store directory `carry` to its initramfs (unpacked at [`crate::ram::CARRIED_DIR`]),
/// loads it with `cmdline` plus [`TEST_MARKER`] and reboots into it. Flash is not read.
pub fn kexec_test(
    k: &mut dyn Kernel,
    paths: &Paths,
    image: &Path,
    range: Option<(u64, u64)>,
    cmdline: &str,
    carry: &Path,
) -> HandoffError {
    use std::os::unix::fs::FileExt as _;
    let f = match std::fs::File::open(image) {
        Ok(f) => f,
        Err(source) => {
            return HandoffError::OpenImage {
                path: image.to_path_buf(),
                source,
            };
        }
    };
    let name = image.display().to_string();
    let read = |off: u64, buf: &mut [u8]| f.read_at(buf, off);
    match range {
        Some((offset, size)) => kexec_marked(
            k,
            paths,
            &name,
            extent_reader(offset, size, read),
            cmdline,
            TEST_MARKER,
            Some(carry),
        ),
        None => kexec_marked(k, paths, &name, read, cmdline, TEST_MARKER, Some(carry)),
    }
}

/// Reads of `size` bytes at `offset` through `read_at`, as if they were a file of their
/// own: end of file at `size`. How a boot image stored in a segment is read for kexec.
pub fn extent_reader<E>(
    offset: u64,
    size: u64,
    mut read_at: impl FnMut(u64, &mut [u8]) -> Result<usize, E>,
) -> impl FnMut(u64, &mut [u8]) -> Result<usize, E> {
    move |off: u64, buf: &mut [u8]| {
        if off >= size {
            return Ok(0);
        }
        let n = usize::try_from(size - off)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        read_at(offset + off, &mut buf[..n])
    }
}

fn kexec_marked<E>(
    k: &mut dyn Kernel,
    paths: &Paths,
    volume: &str,
    read_at: impl FnMut(u64, &mut [u8]) -> Result<usize, E>,
    cmdline: &str,
    marker: &str,
    carry: Option<&Path>,
) -> HandoffError
where
    E: std::error::Error + Send + Sync + 'static,
{
    let dir = paths.stage.join("kexec");
    if let Err(e) = mkdir(k, &dir) {
        return e;
    }
    let x = match bootimage::extract(volume, read_at, &dir) {
        Ok(x) => x,
        Err(e) => return HandoffError::Stage(e),
    };
    let base = if cmdline.trim().is_empty() {
        &x.cmdline
    } else {
        cmdline
    };
    let cmd = marked_cmdline(base, marker);
    if let Some(src) = carry {
        match carry::append_dir(&x.initramfs, src, crate::ram::CARRIED_DIR) {
            Ok(n) => log::info!(
                "kexec: RAM store {} carried in the initramfs ({n} bytes) to {}",
                src.display(),
                crate::ram::CARRIED_DIR
            ),
            Err(e) => return HandoffError::Carry(e),
        }
    }
    log::info!("kexec: loading {} with command line {cmd:?}", volume);
    if let Err(source) = k.kexec_load(&x.kernel, &x.initramfs, &cmd) {
        return HandoffError::KexecLoad {
            kernel: x.kernel,
            source,
        };
    }
    if carry.is_some() {
        log::info!("kexec: sync and reboot into the RAM set's image");
    } else {
        log::info!("kexec: sync and reboot into the stored image");
    }
    HandoffError::Final(k.leave(Leave::Kexec))
}

fn mount(k: &mut dyn Kernel, m: Mount, what: &str) -> Result<(), HandoffError> {
    k.mount(&m).map_err(|source| HandoffError::Mount {
        what: what.to_string(),
        target: m.target.clone(),
        source,
    })
}

/// Assembles the root from `layers` (bottom first) and switches into it. Only returns
/// on failure.
pub fn switch_root(
    k: &mut dyn Kernel,
    paths: &Paths,
    layers: &[Layer],
    before_exec: &mut dyn FnMut(&mut dyn Kernel),
) -> HandoffError {
    match assemble(k, paths, layers) {
        Ok(()) => {}
        Err(e) => return e,
    }
    for m in &paths.moved {
        let target = paths.new_root.join(m.strip_prefix("/").unwrap_or(m));
        let step = mkdir(k, &target).and_then(|()| {
            mount(
                k,
                Mount {
                    source: m.display().to_string(),
                    target: target.clone(),
                    fstype: None,
                    flags: MsFlags::MS_MOVE,
                    data: None,
                },
                &format!("moved {}", m.display()),
            )
        });
        if let Err(e) = step {
            return e;
        }
    }
    let left = k.clean_initramfs();
    if left > 0 {
        log::warn!("switch_root: {left} initramfs entries could not be removed");
    }
    if let Err(source) = k.enter_root(&paths.new_root) {
        return HandoffError::EnterRoot {
            root: paths.new_root.clone(),
            source,
        };
    }
    // In the new root, before its init: the resident agent is forked here.
    before_exec(k);
    log::info!("switch_root: exec {}", paths.init.display());
    HandoffError::Final(k.exec_init(&paths.init, INIT_ENV))
}

fn assemble(k: &mut dyn Kernel, paths: &Paths, layers: &[Layer]) -> Result<(), HandoffError> {
    if layers.is_empty() {
        return Err(HandoffError::NoLayers);
    }
    let mut lowers = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        let dev = match layer {
            Layer::Ubi { ubi, vol, .. } => k.ubiblock_create(*ubi, *vol),
            Layer::UbiExtent {
                ubi,
                vol,
                offset,
                size,
                ..
            } => k
                .ubiblock_create(*ubi, *vol)
                .and_then(|blk| k.loop_attach_range(&blk, *offset, *size)),
            Layer::File(p) => k.loop_attach(p),
            Layer::FileExtent { path, offset, size } => k.loop_attach_range(path, *offset, *size),
        }
        .map_err(|source| HandoffError::BlockDevice {
            layer: layer.clone(),
            source,
        })?;
        let dir = paths.stage.join(format!("layers/{i}"));
        mkdir(k, &dir)?;
        mount(
            k,
            Mount {
                source: dev.display().to_string(),
                target: dir.clone(),
                fstype: Some("squashfs".into()),
                flags: MsFlags::MS_RDONLY,
                data: None,
            },
            &layer.to_string(),
        )?;
        lowers.push(dir);
    }
    let rw = paths.stage.join("rw");
    mkdir(k, &rw)?;
    mount(
        k,
        Mount {
            source: "tmpfs".into(),
            target: rw.clone(),
            fstype: Some("tmpfs".into()),
            flags: MsFlags::empty(),
            data: Some("mode=0755".into()),
        },
        "the overlay's tmpfs upper layer",
    )?;
    let (upper, work) = (rw.join("upper"), rw.join("work"));
    mkdir(k, &upper)?;
    mkdir(k, &work)?;
    mkdir(k, &paths.new_root)?;
    // overlayfs: the leftmost lowerdir is the top layer.
    let lower: Vec<String> = lowers
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    mount(
        k,
        Mount {
            source: "overlay".into(),
            target: paths.new_root.clone(),
            fstype: Some("overlay".into()),
            flags: MsFlags::empty(),
            data: Some(format!(
                "lowerdir={},upperdir={},workdir={}",
                lower.join(":"),
                upper.display(),
                work.display()
            )),
        },
        "the overlay root",
    )?;
    let init = paths
        .new_root
        .join(paths.init.strip_prefix("/").unwrap_or(&paths.init));
    if !k.exists(&init) {
        return Err(HandoffError::NoInit {
            init: paths.init.clone(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::fake::{Call, Recorder};

    #[test]
    fn stored_marker_is_appended_once() {
        assert_eq!(
            stored_cmdline("console=ttyS0 quiet"),
            "console=ttyS0 quiet shelfboot.stored=1"
        );
        assert_eq!(
            stored_cmdline("a shelfboot.stored=0 b"),
            "a b shelfboot.stored=1"
        );
    }

    fn mounts(k: &Recorder) -> Vec<Mount> {
        k.calls
            .iter()
            .filter_map(|c| match c {
                Call::Mount(m) => Some(m.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn switch_root_assembles_overlay_moves_mounts_then_execs() {
        let layers = [
            Layer::Ubi {
                ubi: 0,
                vol: 4,
                name: "sb.p.base".into(),
            },
            Layer::Ubi {
                ubi: 0,
                vol: 7,
                name: "sb.p.app".into(),
            },
        ];
        let mut k = Recorder {
            existing: vec!["/newroot/sbin/init".into()],
            ..Recorder::default()
        };
        let err = switch_root(&mut k, &Paths::default(), &layers, &mut |_| {});
        assert!(
            matches!(err, HandoffError::Final(_)),
            "the fake's exec 'fails': {err}"
        );
        let m = mounts(&k);
        assert_eq!(m[0].source, "/dev/ubiblock0_4");
        assert_eq!(m[0].target, Path::new("/run/shelfboot/layers/0"));
        assert_eq!(
            (m[0].fstype.as_deref(), m[0].flags),
            (Some("squashfs"), MsFlags::MS_RDONLY)
        );
        assert_eq!(m[1].source, "/dev/ubiblock0_7");
        assert_eq!(m[2].fstype.as_deref(), Some("tmpfs"));
        assert_eq!(
            m[3].data.as_deref(),
            Some(
                "lowerdir=/run/shelfboot/layers/1:/run/shelfboot/layers/0,upperdir=/run/shelfboot/rw/upper,workdir=/run/shelfboot/rw/work"
            )
        );
        let moved: Vec<_> = m[4..]
            .iter()
            .map(|m| (m.source.as_str(), m.target.to_str().unwrap(), m.flags))
            .collect();
        assert_eq!(
            moved,
            [
                ("/dev", "/newroot/dev", MsFlags::MS_MOVE),
                ("/proc", "/newroot/proc", MsFlags::MS_MOVE),
                ("/sys", "/newroot/sys", MsFlags::MS_MOVE),
                ("/run", "/newroot/run", MsFlags::MS_MOVE),
            ]
        );
        let tail = &k.calls[k.calls.len() - 3..];
        assert_eq!(tail[0], Call::CleanInitramfs);
        assert_eq!(tail[1], Call::EnterRoot("/newroot".into()));
        let Call::ExecInit(init, env) = &tail[2] else {
            panic!("{tail:?}")
        };
        assert_eq!(init, Path::new("/sbin/init"));
        assert!(env.iter().any(|e| e.starts_with("PATH=")) && env.len() == INIT_ENV.len());
        assert!(
            k.calls
                .iter()
                .position(|c| *c == Call::UbiblockCreate(0, 4))
                < k.calls
                    .iter()
                    .position(|c| *c == Call::UbiblockCreate(0, 7))
        );
    }

    #[test]
    fn packages_in_segments_mount_through_a_loop_device_limited_to_their_extent() {
        let layers = [
            Layer::UbiExtent {
                ubi: 0,
                vol: 3,
                name: "sb.seg.9".into(),
                offset: 126_976 * 4,
                size: 70_000,
            },
            Layer::FileExtent {
                path: "/run/shelfboot/ram/blobs/v1-0".into(),
                offset: 4096,
                size: 500,
            },
        ];
        let mut k = Recorder {
            existing: vec!["/newroot/sbin/init".into()],
            ..Recorder::default()
        };
        let err = switch_root(&mut k, &Paths::default(), &layers, &mut |_| {});
        assert!(matches!(err, HandoffError::Final(_)), "{err}");
        let attach: Vec<&Call> = k
            .calls
            .iter()
            .filter(|c| matches!(c, Call::UbiblockCreate(..) | Call::LoopAttachRange(..)))
            .collect();
        assert_eq!(
            attach,
            [
                &Call::UbiblockCreate(0, 3),
                &Call::LoopAttachRange("/dev/ubiblock0_3".into(), 126_976 * 4, 70_000),
                &Call::LoopAttachRange("/run/shelfboot/ram/blobs/v1-0".into(), 4096, 500),
            ]
        );
        let m = mounts(&k);
        assert_eq!(m[0].source, "/dev/loop0");
        assert_eq!(m[0].fstype.as_deref(), Some("squashfs"));
    }

    #[test]
    fn an_extent_reads_as_a_file_of_its_own() {
        let volume: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        let mut read = extent_reader(1000, 300, |off: u64, buf: &mut [u8]| {
            let off = usize::try_from(off).unwrap();
            let n = buf.len().min(volume.len().saturating_sub(off));
            buf[..n].copy_from_slice(&volume[off..off + n]);
            Ok::<usize, std::io::Error>(n)
        });
        let mut buf = [0u8; 200];
        assert_eq!(read(0, &mut buf).unwrap(), 200);
        assert_eq!(&buf[..], &volume[1000..1200]);
        assert_eq!(
            read(200, &mut buf).unwrap(),
            100,
            "ends at the extent's size"
        );
        assert_eq!(&buf[..100], &volume[1200..1300]);
        assert_eq!(read(300, &mut buf).unwrap(), 0);
    }

    #[test]
    fn missing_init_stops_before_anything_irreversible() {
        let mut k = Recorder::default();
        let err = switch_root(
            &mut k,
            &Paths::default(),
            &[Layer::File("/run/shelfboot/test/p0".into())],
            &mut |_| {},
        );
        assert!(matches!(err, HandoffError::NoInit { .. }), "{err}");
        assert_eq!(
            k.calls.first(),
            Some(&Call::LoopAttach("/run/shelfboot/test/p0".into()))
        );
        assert!(!mounts(&k).iter().any(|m| m.flags == MsFlags::MS_MOVE));
        assert!(!k.calls.contains(&Call::CleanInitramfs));
        assert!(matches!(
            switch_root(
                &mut Recorder::default(),
                &Paths::default(),
                &[],
                &mut |_| {}
            ),
            HandoffError::NoLayers
        ));
    }

    #[test]
    fn kexec_stages_loads_with_marker_and_reboots() {
        let t = tempfile::tempdir().unwrap();
        let paths = Paths {
            stage: t.path().to_path_buf(),
            ..Paths::default()
        };
        let img =
            shelfboot_mkinitramfs::bootimage::build(b"bzImage", b"cpio", "console=ttyS0").unwrap();
        let read = |off: u64, buf: &mut [u8]| -> Result<usize, std::io::Error> {
            let a = img.get(usize::try_from(off).unwrap()..).unwrap_or(&[]);
            let n = a.len().min(buf.len());
            buf[..n].copy_from_slice(&a[..n]);
            Ok(n)
        };
        let dir = t.path().join("kexec");
        std::fs::create_dir_all(&dir).unwrap(); // the fake's mkdir records only
        let mut k = Recorder::default();
        let err = kexec(&mut k, &paths, "sb.boot", read, "");
        assert!(matches!(err, HandoffError::Final(_)), "{err}");
        assert_eq!(
            k.calls,
            vec![
                Call::Mkdir(dir.clone()),
                Call::KexecLoad(
                    dir.join("kernel"),
                    dir.join("initramfs"),
                    "console=ttyS0 shelfboot.stored=1".into()
                ),
                Call::Leave(Leave::Kexec),
            ]
        );
        assert_eq!(std::fs::read(dir.join("kernel")).unwrap(), b"bzImage");
    }
}
