//! Loading the kernel modules mkinitramfs put in the image, in the order it wrote them.
//!
//! The list is `/lib/modules/load.list`, written by shelfboot-mkinitramfs
//! (`render_load_list`; format in `docs/init.md`): one module per line, its path relative
//! to `/lib/modules` (`<kver>/kernel/...`; a path starting with `lib/modules/` is taken as
//! relative to the image root), then after one space optional parameters exactly as for
//! `insmod` (`key=value ...`); `#` starts a comment line; blank lines are skipped. The
//! order is the load order: mkinitramfs resolves `modules.dep` (plus the known soft
//! dependencies, e.g. zstd before ubifs) and writes dependencies first. init does no
//! resolution of its own. A parameter value naming a device node (`/dev/...`, up to the
//! first comma) makes init wait for that node (bounded) before loading: block2mtd parses
//! `block2mtd=/dev/vda,128KiB` at load time and the disk appears asynchronously.
//! Compressed modules (`.ko.xz/.zst/.gz`) are passed with MODULE_INIT_COMPRESSED_FILE.
//! Not here: blacklists, modprobe.d, aliases.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use crate::kernel::COMPRESSED;
use crate::kernel::{Kernel, ModuleLoad};
use crate::sys::SysError;

/// Default location of the list inside the initramfs.
pub const LOAD_LIST: &str = "/lib/modules/load.list";
/// How long to wait for a device node named in a parameter.
pub const DEVICE_WAIT: Duration = Duration::from_secs(5);
/// Device-node poll interval (an `exists` check; the disk is usually there at once).
const POLL: Duration = Duration::from_millis(5);

/// One line of the load list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleEntry {
    /// 1-based line number in the list.
    pub line: usize,
    /// Module file, resolved against the list's directory.
    pub path: PathBuf,
    /// Parameters passed to finit_module.
    pub params: String,
}

/// Errors loading modules.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// The list itself could not be read.
    #[error("cannot read the module load list {path}; mkinitramfs writes it")]
    ReadList {
        /// The list file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A line is malformed.
    #[error("{path} line {line}: {reason}")]
    BadLine {
        /// The list file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// A listed module file is not in the image.
    #[error(
        "module {module} (load list line {line}) is missing from the initramfs; rebuild it with mkinitramfs"
    )]
    Missing {
        /// The module file.
        module: PathBuf,
        /// 1-based line number.
        line: usize,
    },
    /// The device node a parameter names never appeared.
    #[error("module {module} needs {device}, which did not appear within {waited:?}")]
    DeviceTimeout {
        /// The module file.
        module: PathBuf,
        /// The device node.
        device: PathBuf,
        /// How long init waited.
        waited: Duration,
    },
    /// The kernel refused the module.
    #[error("cannot load module {module} with parameters {params:?}")]
    Load {
        /// The module file.
        module: PathBuf,
        /// Its parameters.
        params: String,
        /// The failed call.
        #[source]
        source: SysError,
    },
}

/// Parses the list text; `base` is the image root module paths are relative to.
pub fn parse_list(
    text: &str,
    list_path: &Path,
    base: &Path,
) -> Result<Vec<ModuleEntry>, ModuleError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let bad = |reason| ModuleError::BadLine {
            path: list_path.to_path_buf(),
            line,
            reason,
        };
        let (rel, params) = match l.split_once(char::is_whitespace) {
            Some((p, rest)) => (p, rest.trim()),
            None => (l, ""),
        };
        if rel.starts_with('/')
            || rel
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(bad(
                "module path must be relative to the image root, without '..', '.' or empty components",
            ));
        }
        if !COMPRESSED
            .iter()
            .chain([&".ko"])
            .any(|ext| rel.ends_with(ext))
        {
            return Err(bad(
                "module path must end in .ko, .ko.xz, .ko.zst or .ko.gz",
            ));
        }
        out.push(ModuleEntry {
            line,
            // mkinitramfs writes paths relative to /lib/modules (`KVER/kernel/...`);
            // hand-written lists (init/lab) are relative to the image root.
            path: if rel.starts_with("lib/modules/") {
                base.join(rel)
            } else {
                base.join("lib/modules").join(rel)
            },
            params: params.to_string(),
        });
    }
    Ok(out)
}

/// Device nodes named by parameter values (`x=/dev/vda,128KiB` → `/dev/vda`).
pub fn devices_in_params(params: &str) -> Vec<PathBuf> {
    params
        .split_whitespace()
        .filter_map(|p| p.split_once('=').map(|(_, v)| v))
        .filter_map(|v| v.split(',').next())
        .filter(|v| v.starts_with("/dev/"))
        .map(PathBuf::from)
        .collect()
}

/// Reads the list at `list_path` and loads every module in order; module paths are
/// relative to `root` (the image root, `/`). Returns the number of modules newly loaded.
pub fn load_all(k: &mut dyn Kernel, list_path: &Path, root: &Path) -> Result<usize, ModuleError> {
    let text = fs::read_to_string(list_path).map_err(|source| ModuleError::ReadList {
        path: list_path.to_path_buf(),
        source,
    })?;
    let entries = parse_list(&text, list_path, root)?;
    load_entries(k, &entries)
}

/// Whether a module is only needed at the hand-off (switch_root), not before the first
/// Solicit: filesystems (`kernel/fs/...`: squashfs, overlay) and the loop driver
/// (test-mode packages in tmpfs).
pub fn handoff_only(e: &ModuleEntry) -> bool {
    let p = e.path.to_string_lossy();
    let file = p.rsplit('/').next().unwrap_or("");
    p.contains("/kernel/fs/")
        || file == "loop.ko"
        || COMPRESSED.iter().any(|c| file == format!("loop{c}"))
}

/// Splits the list into what the boot path needs now and what can wait for the
/// hand-off: the longest *suffix* of [`handoff_only`] modules. Only a suffix, because
/// the list is in dependency order: a later module may need an earlier one, never the
/// reverse, so loading a suffix later never breaks a dependency.
pub fn split_deferred(mut entries: Vec<ModuleEntry>) -> (Vec<ModuleEntry>, Vec<ModuleEntry>) {
    let keep = entries
        .iter()
        .rposition(|e| !handoff_only(e))
        .map_or(0, |i| i + 1);
    let deferred = entries.split_off(keep);
    (entries, deferred)
}

/// Loads already parsed entries in order.
pub fn load_entries(k: &mut dyn Kernel, entries: &[ModuleEntry]) -> Result<usize, ModuleError> {
    load_entries_then(k, entries, &mut || {})
}

/// Loads already parsed entries in order, calling `progress` before the first and after
/// each load (the flow starts the link there as soon as the NIC exists).
pub fn load_entries_then(
    k: &mut dyn Kernel,
    entries: &[ModuleEntry],
    progress: &mut dyn FnMut(),
) -> Result<usize, ModuleError> {
    let mut loaded = 0;
    progress();
    for e in entries {
        if !k.exists(&e.path) {
            return Err(ModuleError::Missing {
                module: e.path.clone(),
                line: e.line,
            });
        }
        let t = Instant::now();
        for dev in devices_in_params(&e.params) {
            wait_for(k, &dev, DEVICE_WAIT).map_err(|waited| ModuleError::DeviceTimeout {
                module: e.path.clone(),
                device: dev.clone(),
                waited,
            })?;
            log::info!("{} present after {:?}", dev.display(), t.elapsed());
        }
        let t = Instant::now();
        match k.load_module(&e.path, &e.params) {
            Ok(ModuleLoad::Loaded) => {
                loaded += 1;
                log::info!(
                    "loaded module {} {} ({} ms)",
                    e.path.display(),
                    e.params,
                    t.elapsed().as_millis()
                );
            }
            Ok(ModuleLoad::AlreadyLoaded) => {
                log::info!("module {} already loaded", e.path.display());
            }
            Err(source) => {
                return Err(ModuleError::Load {
                    module: e.path.clone(),
                    params: e.params.clone(),
                    source,
                });
            }
        }
        progress();
    }
    Ok(loaded)
}

/// Polls for `path` until `limit`; `Err(waited)` on timeout.
pub fn wait_for(k: &mut dyn Kernel, path: &Path, limit: Duration) -> Result<(), Duration> {
    let mut waited = Duration::ZERO;
    while !k.exists(path) {
        if waited >= limit {
            return Err(waited);
        }
        k.sleep(POLL);
        waited += POLL;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::fake::{Call, Recorder};

    const LIST: &str = "\
# shelfboot load.list v1: IMAGE-PATH [PARAMS...], load in this order
lib/modules/6.1.0-56-amd64/kernel/drivers/mtd/mtd.ko

lib/modules/6.1.0-56-amd64/kernel/drivers/mtd/nand/raw/nandsim.ko id_bytes=0x20,0xf1,0x80,0x15 overridesize=7
lib/modules/6.1.0-56-amd64/kernel/drivers/mtd/devices/block2mtd.ko block2mtd=/dev/vda,128KiB
";

    fn entries() -> Vec<ModuleEntry> {
        parse_list(LIST, Path::new("/lib/modules/load.list"), Path::new("/")).unwrap()
    }

    #[test]
    fn parses_paths_params_and_line_numbers() {
        let e = entries();
        assert_eq!(e.len(), 3);
        assert_eq!(
            e[0].path,
            Path::new("/lib/modules/6.1.0-56-amd64/kernel/drivers/mtd/mtd.ko")
        );
        assert_eq!(e[0].params, "");
        assert_eq!(e[1].line, 4);
        assert_eq!(e[1].params, "id_bytes=0x20,0xf1,0x80,0x15 overridesize=7");
        assert_eq!(devices_in_params(&e[2].params), [PathBuf::from("/dev/vda")]);
        assert!(devices_in_params(&e[1].params).is_empty());
    }

    #[test]
    fn rejects_escaping_or_compressed_paths() {
        assert!(parse_list("a/x.ko.zst p=1", Path::new("L"), Path::new("/")).is_ok());
        let mk = parse_list("6.1/kernel/a.ko", Path::new("L"), Path::new("/r")).unwrap();
        assert_eq!(mk[0].path, Path::new("/r/lib/modules/6.1/kernel/a.ko"));
        for bad in ["../x.ko", "/abs/x.ko", "a/./b.ko", "a//b.ko", "x.o"] {
            let err = parse_list(bad, Path::new("L"), Path::new("/")).unwrap_err();
            assert!(err.to_string().starts_with("L line 1:"), "{err}");
        }
    }

    #[test]
    fn loads_in_order_with_params_and_waits_for_the_disk() {
        let e = entries();
        let mut k = Recorder {
            existing: e
                .iter()
                .map(|e| e.path.clone())
                .chain([PathBuf::from("/dev/vda")])
                .collect(),
            builtin: vec![e[0].path.clone()],
            ..Recorder::default()
        };
        assert_eq!(load_entries(&mut k, &e).unwrap(), 2);
        assert_eq!(
            k.calls,
            vec![
                Call::LoadModule(e[0].path.clone(), String::new()),
                Call::LoadModule(e[1].path.clone(), e[1].params.clone()),
                Call::LoadModule(e[2].path.clone(), "block2mtd=/dev/vda,128KiB".into()),
            ]
        );
    }

    fn entry(rel: &str) -> ModuleEntry {
        ModuleEntry {
            line: 1,
            path: Path::new("/lib/modules/6.1.0-56-amd64").join(rel),
            params: String::new(),
        }
    }

    #[test]
    fn only_a_suffix_of_filesystems_and_loop_waits_for_the_hand_off() {
        let list: Vec<ModuleEntry> = [
            "kernel/drivers/net/virtio_net.ko",
            "kernel/fs/mbcache.ko",
            "kernel/drivers/mtd/ubi/ubi.ko",
            "kernel/fs/squashfs/squashfs.ko",
            "kernel/fs/overlayfs/overlay.ko",
            "kernel/drivers/block/loop.ko",
        ]
        .iter()
        .map(|r| entry(r))
        .collect();
        let (now, later) = split_deferred(list.clone());
        assert_eq!(now, list[..3], "a filesystem before ubi stays where it is");
        assert_eq!(later, list[3..]);
        let (now, later) = split_deferred(list[..3].to_vec());
        assert_eq!((now.len(), later.len()), (3, 0));
        let (now, later) = split_deferred(vec![entry("kernel/drivers/block/loop.ko.xz")]);
        assert_eq!((now.len(), later.len()), (0, 1));
        assert!(!handoff_only(&entry("kernel/drivers/block/loopback_x.ko")));
    }

    #[test]
    fn progress_runs_before_the_first_and_after_each_load() {
        let e = entries();
        let mut k = Recorder {
            existing: e
                .iter()
                .map(|e| e.path.clone())
                .chain([PathBuf::from("/dev/vda")])
                .collect(),
            ..Recorder::default()
        };
        let mut progress = 0;
        load_entries_then(&mut k, &e, &mut || progress += 1).unwrap();
        assert_eq!(progress, e.len() + 1);
    }

    #[test]
    fn missing_module_names_the_file_and_stops() {
        let e = entries();
        let mut k = Recorder {
            existing: vec![e[0].path.clone()],
            ..Recorder::default()
        };
        let err = load_entries(&mut k, &e).unwrap_err();
        assert!(err.to_string().contains("nandsim.ko"), "{err}");
        assert_eq!(k.calls.len(), 1, "nothing loaded after the missing one");
    }

    #[test]
    fn device_wait_is_bounded() {
        let e = entries();
        let mut k = Recorder {
            existing: e.iter().map(|e| e.path.clone()).collect(),
            ..Recorder::default()
        };
        let err = load_entries(&mut k, &e).unwrap_err();
        assert!(matches!(err, ModuleError::DeviceTimeout { .. }), "{err}");
        assert!(
            k.total_sleep >= DEVICE_WAIT && k.total_sleep < DEVICE_WAIT + Duration::from_secs(1)
        );
    }

    #[test]
    fn kernel_refusal_carries_the_call() {
        let e = entries();
        let mut k = Recorder {
            existing: e.iter().map(|e| e.path.clone()).collect(),
            fail: Some((
                |c| matches!(c, Call::LoadModule(..)),
                nix::errno::Errno::ENOEXEC,
            )),
            ..Recorder::default()
        };
        let err = load_entries(&mut k, &e).unwrap_err();
        assert!(std::error::Error::source(&err).is_some());
        assert!(err.to_string().contains("mtd.ko"));
    }
}
