//! The kernel boundary as one coarse trait, with the real implementation and a recording
//! fake (the youki pattern: `Syscall` + `LinuxSyscall` + `TestHelperSyscall`).
//!
//! Each method is one *operation* of the boot flow (mount this, load that module, attach
//! that MTD device, kexec this image), not one syscall, so that the fake stays small and
//! the tests read like the boot log. [`Linux`] forwards to nix's safe wrappers and to
//! [`crate::sys`] (and to [`clean`] and [`exec`], the two last steps of a switch_root);
//! [`fake::Recorder`] records every call in order and can be told to fail a given one. Not here: UBI volume I/O (that is card's `Volumes` trait, implemented by
//! [`crate::flash::UbiVolumes`]) and the link (see [`crate::net`]).

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::mount::MsFlags;

use crate::sys::SysError;
use crate::sys::power::Leave;
pub use crate::sys::process::Forked;

pub mod clean;
pub mod exec;

/// Suffixes of modules the kernel decompresses itself (`MODULE_INIT_COMPRESSED_FILE`,
/// needs CONFIG_MODULE_DECOMPRESS).
pub const COMPRESSED: &[&str] = &[".ko.xz", ".ko.zst", ".ko.gz"];

/// One mount(2) call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Source (device or pseudo name).
    pub source: String,
    /// Mount point.
    pub target: PathBuf,
    /// Filesystem type; `None` for MS_MOVE / MS_BIND.
    pub fstype: Option<String>,
    /// Flags.
    pub flags: MsFlags,
    /// Filesystem data (`-o` options).
    pub data: Option<String>,
}

impl std::fmt::Display for Mount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "mount({:?}, {}, {:?}, {:?}, {:?})",
            self.source,
            self.target.display(),
            self.fstype.as_deref().unwrap_or(""),
            self.flags,
            self.data.as_deref().unwrap_or("")
        )
    }
}

/// What `finit_module` said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleLoad {
    /// Loaded now.
    Loaded,
    /// EEXIST: already loaded (or built in).
    AlreadyLoaded,
}

/// The first bytes of one MTD eraseblock, as far as formatting cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockState {
    /// Marked bad: never touched.
    Bad,
    /// Starts with a UBI erase-counter header (`UBI#`).
    Ubi,
    /// All 0xFF in the probed bytes.
    Erased,
    /// Anything else (zeros, another filesystem, garbage) or unreadable.
    Foreign,
}

/// Result of probing an MTD device block by block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MtdScan {
    /// Eraseblock size in bytes.
    pub erasesize: u32,
    /// One entry per eraseblock, in order.
    pub blocks: Vec<BlockState>,
}

/// Every kernel operation init performs outside UBI volume I/O.
pub trait Kernel {
    /// `mkdir -p` with mode 0755.
    fn mkdir_all(&mut self, path: &Path) -> Result<(), SysError>;
    /// One mount(2).
    fn mount(&mut self, m: &Mount) -> Result<(), SysError>;
    /// umount2(path, MNT_DETACH).
    fn umount(&mut self, path: &Path) -> Result<(), SysError>;
    /// finit_module of the file at `path` with `params` (space-separated `k=v`).
    fn load_module(&mut self, path: &Path, params: &str) -> Result<ModuleLoad, SysError>;
    /// Whether `path` exists (device nodes appearing after a module load).
    fn exists(&mut self, path: &Path) -> bool;
    /// Sleep (fakes return at once).
    fn sleep(&mut self, d: Duration);
    /// UBI_IOCATT on the control device; returns the UBI device number.
    fn ubi_attach(&mut self, mtd: u32) -> Result<u32, SysError>;
    /// UBI_IOCDET.
    fn ubi_detach(&mut self, ubi: u32) -> Result<(), SysError>;
    /// MEMGETINFO + MEMGETBADBLOCK + a read of each block's first bytes.
    fn mtd_scan(&mut self, mtd: u32) -> Result<MtdScan, SysError>;
    /// MEMERASE64 of the eraseblocks with the given indices.
    fn mtd_erase(&mut self, mtd: u32, blocks: &[u64]) -> Result<(), SysError>;
    /// UBI_IOCVOLCRBLK on `/dev/ubiN_M`; returns `/dev/ubiblockN_M`.
    fn ubiblock_create(&mut self, ubi: u32, vol: u32) -> Result<PathBuf, SysError>;
    /// Read-only loop device over a file (test-mode packages in tmpfs); returns its path.
    fn loop_attach(&mut self, file: &Path) -> Result<PathBuf, SysError>;
    /// Read-only loop device over `size` bytes of `file` (or block device) from `offset`:
    /// a package stored in a segment; returns its path.
    fn loop_attach_range(
        &mut self,
        file: &Path,
        offset: u64,
        size: u64,
    ) -> Result<PathBuf, SysError>;
    /// kexec_file_load(kernel, initrd, cmdline).
    fn kexec_load(&mut self, kernel: &Path, initrd: &Path, cmdline: &str) -> Result<(), SysError>;
    /// Best-effort recursive removal of the initramfs contents (rootfs, `/`), not crossing
    /// into other filesystems; returns the number of entries that could not be removed.
    fn clean_initramfs(&mut self) -> usize;
    /// chdir(new_root), mount(new_root, "/", MS_MOVE), chroot("."), chdir("/").
    fn enter_root(&mut self, new_root: &Path) -> Result<(), SysError>;
    /// Close inherited fds, scrub the environment, reset SIGPIPE and the signal mask,
    /// execve(init). Only returns on failure.
    fn exec_init(&mut self, init: &Path, env: &[(&str, &str)]) -> SysError;
    /// sync() then reboot(how). Only returns on failure.
    fn leave(&mut self, how: Leave) -> SysError;
    /// fork(2), for the resident agent: [`Forked::Child`] in the new process.
    fn fork(&mut self) -> Result<Forked, SysError>;
}

/// The real kernel.
#[derive(Debug)]
pub struct Linux {
    /// Where device nodes live (`/dev`).
    pub dev: PathBuf,
    /// Loop devices kept open until exec (AUTOCLEAR would detach them once closed).
    loops: Vec<crate::sys::loopdev::LoopDevice>,
}

impl Default for Linux {
    fn default() -> Self {
        Linux {
            dev: PathBuf::from("/dev"),
            loops: Vec::new(),
        }
    }
}

const PROBE_BYTES: usize = 64;
const UBI_EC_MAGIC: &[u8; 4] = b"UBI#";

impl Kernel for Linux {
    fn mkdir_all(&mut self, path: &Path) -> Result<(), SysError> {
        std::fs::create_dir_all(path)
            .map_err(|e| SysError::new(format!("mkdir -p {}", path.display()), e))
    }

    fn mount(&mut self, m: &Mount) -> Result<(), SysError> {
        nix::mount::mount(
            Some(m.source.as_str()),
            &m.target,
            m.fstype.as_deref(),
            m.flags,
            m.data.as_deref(),
        )
        .map_err(|e| SysError::new(m, e))
    }

    fn umount(&mut self, path: &Path) -> Result<(), SysError> {
        nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH)
            .map_err(|e| SysError::new(format!("umount2({}, MNT_DETACH)", path.display()), e))
    }

    fn load_module(&mut self, path: &Path, params: &str) -> Result<ModuleLoad, SysError> {
        let call = || format!("finit_module({}, {params:?}, 0)", path.display());
        let file = std::fs::File::open(path).map_err(|e| SysError::new(call(), e))?;
        let cparams =
            CString::new(params).map_err(|_| SysError::new(call(), nix::errno::Errno::EINVAL))?;
        // MODULE_INIT_COMPRESSED_FILE (4): the kernel decompresses .ko.xz/.zst/.gz itself.
        let name = path.to_string_lossy();
        let flags = if COMPRESSED.iter().any(|s| name.ends_with(s)) {
            nix::kmod::ModuleInitFlags::from_bits_retain(4)
        } else {
            nix::kmod::ModuleInitFlags::empty()
        };
        match nix::kmod::finit_module(&file, &cparams, flags) {
            Ok(()) => Ok(ModuleLoad::Loaded),
            Err(nix::errno::Errno::EEXIST) => Ok(ModuleLoad::AlreadyLoaded),
            Err(e) => Err(SysError::new(call(), e)),
        }
    }

    fn exists(&mut self, path: &Path) -> bool {
        path.exists()
    }

    fn sleep(&mut self, d: Duration) {
        std::thread::sleep(d);
    }

    fn ubi_attach(&mut self, mtd: u32) -> Result<u32, SysError> {
        crate::sys::ubi::UbiCtrl::open(&self.dev.join("ubi_ctrl"))?.attach(mtd)
    }

    fn ubi_detach(&mut self, ubi: u32) -> Result<(), SysError> {
        crate::sys::ubi::UbiCtrl::open(&self.dev.join("ubi_ctrl"))?.detach(ubi)
    }

    fn mtd_scan(&mut self, mtd: u32) -> Result<MtdScan, SysError> {
        let dev = crate::sys::mtd::MtdDevice::open(&self.dev.join(format!("mtd{mtd}")))?;
        let info = dev.info()?;
        let mut blocks = Vec::new();
        for b in 0..info.blocks() {
            let off = b * u64::from(info.erasesize);
            if dev.is_bad(off)? {
                blocks.push(BlockState::Bad);
                continue;
            }
            let mut head = [0u8; PROBE_BYTES];
            // An unreadable block (ECC error on garbage) is not UBI: it will be erased.
            let state = match dev.read_at(off, &mut head) {
                Ok(()) if head.starts_with(UBI_EC_MAGIC) => BlockState::Ubi,
                Ok(()) if head.iter().all(|&x| x == 0xFF) => BlockState::Erased,
                Ok(()) | Err(_) => BlockState::Foreign,
            };
            blocks.push(state);
        }
        Ok(MtdScan {
            erasesize: info.erasesize,
            blocks,
        })
    }

    fn mtd_erase(&mut self, mtd: u32, blocks: &[u64]) -> Result<(), SysError> {
        let dev = crate::sys::mtd::MtdDevice::open(&self.dev.join(format!("mtd{mtd}")))?;
        let size = u64::from(dev.info()?.erasesize);
        for b in blocks {
            dev.erase(b * size, size)?;
        }
        Ok(())
    }

    fn ubiblock_create(&mut self, ubi: u32, vol: u32) -> Result<PathBuf, SysError> {
        let v = crate::sys::ubi::UbiVolume::open_read(&self.dev.join(format!("ubi{ubi}_{vol}")))?;
        v.create_block()?;
        Ok(self.dev.join(format!("ubiblock{ubi}_{vol}")))
    }

    fn loop_attach(&mut self, file: &Path) -> Result<PathBuf, SysError> {
        let lo = crate::sys::loopdev::attach_read_only(&self.dev, file)?;
        let path = lo.path().to_path_buf();
        self.loops.push(lo);
        Ok(path)
    }

    fn loop_attach_range(
        &mut self,
        file: &Path,
        offset: u64,
        size: u64,
    ) -> Result<PathBuf, SysError> {
        let lo = crate::sys::loopdev::attach_range_read_only(&self.dev, file, offset, size)?;
        let path = lo.path().to_path_buf();
        self.loops.push(lo);
        Ok(path)
    }

    fn kexec_load(&mut self, kernel: &Path, initrd: &Path, cmdline: &str) -> Result<(), SysError> {
        let c = CString::new(cmdline).map_err(|_| {
            SysError::new(
                format!("kexec_file_load(cmdline={cmdline:?})"),
                nix::errno::Errno::EINVAL,
            )
        })?;
        crate::sys::power::kexec_file_load(kernel, Some(initrd), &c)
    }

    fn clean_initramfs(&mut self) -> usize {
        clean::remove_tree_same_dev(Path::new("/"))
    }

    fn enter_root(&mut self, new_root: &Path) -> Result<(), SysError> {
        nix::unistd::chdir(new_root)
            .map_err(|e| SysError::new(format!("chdir({})", new_root.display()), e))?;
        nix::mount::mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>).map_err(
            |e| {
                SysError::new(
                    format!("mount(., /, MS_MOVE) from {}", new_root.display()),
                    e,
                )
            },
        )?;
        nix::unistd::chroot(".").map_err(|e| SysError::new("chroot(.)", e))?;
        nix::unistd::chdir("/").map_err(|e| SysError::new("chdir(/)", e))
    }

    fn exec_init(&mut self, init: &Path, env: &[(&str, &str)]) -> SysError {
        exec::exec_clean(init, env)
    }

    fn leave(&mut self, how: Leave) -> SysError {
        crate::sys::power::sync_and_leave(how)
    }

    fn fork(&mut self) -> Result<Forked, SysError> {
        crate::sys::process::fork_process()
    }
}

pub mod fake {
    //! A recording [`Kernel`](super::Kernel) for unit tests: every call is appended to
    //! `calls` as a [`Call`]; `fail_on` makes the first call matching a predicate fail with
    //! the given errno.

    use super::*;

    /// One recorded kernel operation.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Call {
        /// mkdir -p.
        Mkdir(PathBuf),
        /// mount(2).
        Mount(Mount),
        /// umount2.
        Umount(PathBuf),
        /// finit_module(path, params).
        LoadModule(PathBuf, String),
        /// UBI_IOCATT(mtd).
        UbiAttach(u32),
        /// UBI_IOCDET(ubi).
        UbiDetach(u32),
        /// MTD probe.
        MtdScan(u32),
        /// MEMERASE64 of these blocks.
        MtdErase(u32, Vec<u64>),
        /// UBI_IOCVOLCRBLK(ubi, vol).
        UbiblockCreate(u32, u32),
        /// Loop device over a file.
        LoopAttach(PathBuf),
        LoopAttachRange(PathBuf, u64, u64),
        /// kexec_file_load(kernel, initrd, cmdline).
        KexecLoad(PathBuf, PathBuf, String),
        /// Remove initramfs contents.
        CleanInitramfs,
        /// Move a new root over / and chroot.
        EnterRoot(PathBuf),
        /// execve(init, env).
        ExecInit(PathBuf, Vec<String>),
        /// sync + reboot(how).
        Leave(Leave),
        /// fork (the fake stays the parent).
        Fork,
    }

    /// Selects the call a [`Recorder`] should fail.
    pub type CallMatcher = fn(&Call) -> bool;

    /// The recording fake.
    #[derive(Debug, Default)]
    pub struct Recorder {
        /// Calls in order.
        pub calls: Vec<Call>,
        /// Paths that "exist".
        pub existing: Vec<PathBuf>,
        /// Modules reported as already loaded.
        pub builtin: Vec<PathBuf>,
        /// UBI number returned by attach.
        pub ubi_num: u32,
        /// What `mtd_scan` returns.
        pub scan: Option<MtdScan>,
        /// Fail the first call matching the predicate with this errno (then clear it).
        pub fail: Option<(CallMatcher, nix::errno::Errno)>,
        /// Sum of all requested sleeps.
        pub total_sleep: Duration,
    }

    impl Recorder {
        fn record(&mut self, c: Call) -> Result<(), SysError> {
            let failing = matches!(&self.fail, Some((pred, _)) if pred(&c));
            let text = format!("{c:?}");
            self.calls.push(c);
            if failing && let Some((_, errno)) = self.fail.take() {
                return Err(SysError::new(text, errno));
            }
            Ok(())
        }
    }

    impl Kernel for Recorder {
        fn mkdir_all(&mut self, path: &Path) -> Result<(), SysError> {
            self.record(Call::Mkdir(path.to_path_buf()))
        }
        fn mount(&mut self, m: &Mount) -> Result<(), SysError> {
            self.record(Call::Mount(m.clone()))
        }
        fn umount(&mut self, path: &Path) -> Result<(), SysError> {
            self.record(Call::Umount(path.to_path_buf()))
        }
        fn load_module(&mut self, path: &Path, params: &str) -> Result<ModuleLoad, SysError> {
            self.record(Call::LoadModule(path.to_path_buf(), params.to_string()))?;
            if self.builtin.iter().any(|p| p == path) {
                Ok(ModuleLoad::AlreadyLoaded)
            } else {
                Ok(ModuleLoad::Loaded)
            }
        }
        fn exists(&mut self, path: &Path) -> bool {
            self.existing.iter().any(|p| p == path)
        }
        fn sleep(&mut self, d: Duration) {
            self.total_sleep += d;
        }
        fn ubi_attach(&mut self, mtd: u32) -> Result<u32, SysError> {
            self.record(Call::UbiAttach(mtd))?;
            Ok(self.ubi_num)
        }
        fn ubi_detach(&mut self, ubi: u32) -> Result<(), SysError> {
            self.record(Call::UbiDetach(ubi))
        }
        fn mtd_scan(&mut self, mtd: u32) -> Result<MtdScan, SysError> {
            self.record(Call::MtdScan(mtd))?;
            self.scan
                .clone()
                .ok_or_else(|| SysError::new("MtdScan", nix::errno::Errno::ENODEV))
        }
        fn mtd_erase(&mut self, mtd: u32, blocks: &[u64]) -> Result<(), SysError> {
            self.record(Call::MtdErase(mtd, blocks.to_vec()))
        }
        fn ubiblock_create(&mut self, ubi: u32, vol: u32) -> Result<PathBuf, SysError> {
            self.record(Call::UbiblockCreate(ubi, vol))?;
            Ok(PathBuf::from(format!("/dev/ubiblock{ubi}_{vol}")))
        }
        fn loop_attach(&mut self, file: &Path) -> Result<PathBuf, SysError> {
            self.record(Call::LoopAttach(file.to_path_buf()))?;
            Ok(PathBuf::from("/dev/loop0"))
        }
        fn loop_attach_range(
            &mut self,
            file: &Path,
            offset: u64,
            size: u64,
        ) -> Result<PathBuf, SysError> {
            self.record(Call::LoopAttachRange(file.to_path_buf(), offset, size))?;
            Ok(PathBuf::from("/dev/loop0"))
        }
        fn kexec_load(
            &mut self,
            kernel: &Path,
            initrd: &Path,
            cmdline: &str,
        ) -> Result<(), SysError> {
            self.record(Call::KexecLoad(
                kernel.to_path_buf(),
                initrd.to_path_buf(),
                cmdline.to_string(),
            ))
        }
        fn clean_initramfs(&mut self) -> usize {
            self.calls.push(Call::CleanInitramfs);
            0
        }
        fn enter_root(&mut self, new_root: &Path) -> Result<(), SysError> {
            self.record(Call::EnterRoot(new_root.to_path_buf()))
        }
        fn exec_init(&mut self, init: &Path, env: &[(&str, &str)]) -> SysError {
            let env = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
            self.calls.push(Call::ExecInit(init.to_path_buf(), env));
            SysError::new("execve (fake)", nix::errno::Errno::ENOSYS)
        }
        fn leave(&mut self, how: Leave) -> SysError {
            self.calls.push(Call::Leave(how));
            SysError::new("reboot (fake)", nix::errno::Errno::ENOSYS)
        }

        fn fork(&mut self) -> Result<Forked, SysError> {
            self.record(Call::Fork)?;
            Ok(Forked::Parent(nix::unistd::Pid::from_raw(0)))
        }
    }
}
