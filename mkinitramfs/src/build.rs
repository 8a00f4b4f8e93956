//! Assembling an initramfs from a [`BuildSpec`]: /init, kernel modules and their
//! load.list, trust anchors, the default configuration and extra files.
//!
//! Image layout:
//!
//! ```text
//! /init                              the static init binary (mode 0755)
//! /lib/modules/KVER/kernel/...       resolved modules, paths as in modules.dep
//! /lib/modules/load.list             load order + parameters (see docs/lab.md)
//! /etc/shelfboot/trust/NAME.pub      trust anchors (file names kept)
//! /etc/shelfboot/config              default configuration
//! /dev /proc /sys /run /tmp          empty mount points
//! ```
//!
//! What it does not do: check that /init is static or that keys parse (init and the
//! master own those formats); device nodes (devtmpfs).

use std::path::{Path, PathBuf};

use crate::compress::{self, CompressError, Compression};
use crate::modules::{self, LoadEntry, ModuleIndex, ModulesError};
use crate::tree::{Tree, TreeError};

/// Where trust anchors go.
pub const TRUST_DIR: &str = "etc/shelfboot/trust";
/// Where the default configuration goes.
pub const CONFIG_PATH: &str = "etc/shelfboot/config";
/// Empty mount points every image has.
pub const MOUNT_POINTS: &[&str] = &["dev", "proc", "sys", "run", "tmp"];

/// Kernel modules to include.
#[derive(Debug, Clone)]
pub struct ModuleSpec {
    /// Root holding `lib/modules/KVER` (or the `lib/modules` directory itself).
    pub root: PathBuf,
    /// Kernel version.
    pub kver: String,
    /// Wanted modules with their parameters (possibly empty).
    pub wanted: Vec<(String, String)>,
}

/// Everything an image is made of.
#[derive(Debug, Clone, Default)]
pub struct BuildSpec {
    /// The init binary or script.
    pub init: Option<PathBuf>,
    /// Kernel modules.
    pub modules: Option<ModuleSpec>,
    /// Trust anchor files.
    pub trust: Vec<PathBuf>,
    /// Default configuration file.
    pub config: Option<PathBuf>,
    /// Extra (host source, image destination) pairs; directories recursively.
    pub add: Vec<(PathBuf, String)>,
    /// Timestamp for every entry (SOURCE_DATE_EPOCH or 0).
    pub mtime: u32,
    /// Compression.
    pub compression: Compression,
}

/// What a build produced.
#[derive(Debug, Clone)]
pub struct Built {
    /// The (compressed) archive.
    pub archive: Vec<u8>,
    /// Uncompressed archive length.
    pub raw_len: usize,
    /// Number of entries.
    pub entries: usize,
    /// The module load order written to load.list.
    pub modules: Vec<LoadEntry>,
}

/// Errors of a build.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Adding a file or directory failed.
    #[error("cannot add {what} to the image")]
    Tree {
        /// Which input.
        what: String,
        /// The cause.
        #[source]
        source: TreeError,
    },
    /// Module resolution failed.
    #[error("cannot resolve the kernel modules")]
    Modules(#[source] ModulesError),
    /// Compression failed.
    #[error("cannot compress the image")]
    Compress(#[source] CompressError),
    /// A trust anchor path has no file name.
    #[error("trust anchor {path} has no file name")]
    TrustName {
        /// The path.
        path: PathBuf,
    },
}

fn tree_err(what: impl Into<String>) -> impl FnOnce(TreeError) -> BuildError {
    let what = what.into();
    move |source| BuildError::Tree { what, source }
}

/// Fills a tree from the spec (no compression yet).
pub fn tree(spec: &BuildSpec) -> Result<(Tree, Vec<LoadEntry>), BuildError> {
    let mut t = Tree::new();
    for m in MOUNT_POINTS {
        t.add_dir(m)
            .map_err(tree_err(format!("mount point /{m}")))?;
    }
    if let Some(init) = &spec.init {
        let data = std::fs::read(init).map_err(|source| BuildError::Tree {
            what: format!("init {}", init.display()),
            source: TreeError::Read {
                path: init.clone(),
                source,
            },
        })?;
        t.add_file("init", data, true)
            .map_err(tree_err(format!("init {}", init.display())))?;
    }
    let mut loaded = Vec::new();
    if let Some(m) = &spec.modules {
        let index = ModuleIndex::open(&m.root, &m.kver).map_err(BuildError::Modules)?;
        loaded = index.resolve(&m.wanted).map_err(BuildError::Modules)?;
        for e in &loaded {
            if !e.rel_path.ends_with(".ko") {
                log::warn!(
                    "module {} is compressed ({}); the card's init loads only plain .ko files",
                    e.name,
                    e.rel_path
                );
            }
            let src = index.dir.join(&e.rel_path);
            let dst = format!("lib/modules/{}/{}", m.kver, e.rel_path);
            t.add_host_path(&src, &dst)
                .map_err(tree_err(format!("module {}", e.name)))?;
        }
        let list = modules::render_load_list(&m.kver, &loaded);
        t.add_file(modules::LOAD_LIST_PATH, list.into_bytes(), false)
            .map_err(tree_err("load.list"))?;
    }
    for key in &spec.trust {
        let name = key
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| BuildError::TrustName { path: key.clone() })?;
        t.add_host_path(key, &format!("{TRUST_DIR}/{name}"))
            .map_err(tree_err(format!("trust anchor {}", key.display())))?;
    }
    if let Some(config) = &spec.config {
        add_file_plain(&mut t, config, CONFIG_PATH)?;
    }
    for (src, dst) in &spec.add {
        t.add_host_path(src, dst)
            .map_err(tree_err(format!("{} as {dst}", src.display())))?;
    }
    Ok((t, loaded))
}

fn add_file_plain(t: &mut Tree, src: &Path, dst: &str) -> Result<(), BuildError> {
    let what = || format!("{} as /{dst}", src.display());
    let data = std::fs::read(src).map_err(|source| BuildError::Tree {
        what: what(),
        source: TreeError::Read {
            path: src.to_path_buf(),
            source,
        },
    })?;
    t.add_file(dst, data, false).map_err(tree_err(what()))
}

/// Builds the image.
pub fn build(spec: &BuildSpec) -> Result<Built, BuildError> {
    let (t, modules) = tree(spec)?;
    let raw = t.to_cpio(spec.mtime).map_err(tree_err("the archive"))?;
    let archive = compress::compress(&raw, spec.compression).map_err(BuildError::Compress)?;
    Ok(Built {
        archive,
        raw_len: raw.len(),
        entries: t.len(),
        modules,
    })
}

/// Parses `SRC:DST` (the last `:` splits, so DST never contains one).
pub fn parse_add(arg: &str) -> Option<(PathBuf, String)> {
    let (src, dst) = arg.rsplit_once(':')?;
    (!src.is_empty() && dst.starts_with('/')).then(|| (PathBuf::from(src), dst.to_string()))
}

/// Parses `NAME[:PARAMS]`.
pub fn parse_module(arg: &str) -> (String, String) {
    match arg.split_once(':') {
        Some((n, p)) => (n.to_string(), p.trim().to_string()),
        None => (arg.to_string(), String::new()),
    }
}

/// The mtime for SOURCE_DATE_EPOCH: unset → 0; a value that is not u32 seconds → error.
pub fn mtime_from_epoch(value: Option<&str>) -> Result<u32, String> {
    match value {
        None => Ok(0),
        Some(v) => v.trim().parse::<u32>().map_err(|_| {
            format!("SOURCE_DATE_EPOCH={v:?} is not seconds since 1970 fitting 32 bits")
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::newc;
    use std::fs;

    fn fixture() -> (tempfile::TempDir, BuildSpec) {
        let t = tempfile::tempdir().unwrap();
        let p = t.path();
        fs::write(p.join("init"), b"#!/bin/sh\necho hi\n").unwrap();
        fs::write(p.join("master.pub"), b"KEY").unwrap();
        fs::write(p.join("config"), b"ethertype = 0x88b5\n").unwrap();
        fs::create_dir_all(p.join("extra/sub")).unwrap();
        fs::write(p.join("extra/sub/x"), b"x").unwrap();
        let md = p.join("mods/lib/modules/9.9");
        fs::create_dir_all(md.join("kernel/fs")).unwrap();
        fs::write(
            md.join("modules.dep"),
            "kernel/fs/a.ko: kernel/fs/b.ko\nkernel/fs/b.ko:\n",
        )
        .unwrap();
        fs::write(md.join("kernel/fs/a.ko"), b"A").unwrap();
        fs::write(md.join("kernel/fs/b.ko"), b"B").unwrap();
        let spec = BuildSpec {
            init: Some(p.join("init")),
            modules: Some(ModuleSpec {
                root: p.join("mods"),
                kver: "9.9".into(),
                wanted: vec![("a".into(), "x=1".into())],
            }),
            trust: vec![p.join("master.pub")],
            config: Some(p.join("config")),
            add: vec![(p.join("extra"), "/opt/extra".into())],
            mtime: 0,
            compression: Compression::Gzip,
        };
        (t, spec)
    }

    #[test]
    fn two_builds_are_byte_identical() {
        let (t, spec) = fixture();
        let a = build(&spec).unwrap();
        // Touch a source's mtime: the archive must not change.
        let f = fs::File::options()
            .append(true)
            .open(t.path().join("init"))
            .unwrap();
        f.set_modified(std::time::SystemTime::now()).unwrap();
        let b = build(&spec).unwrap();
        assert_eq!(a.archive, b.archive);
        let mut z = spec.clone();
        z.compression = Compression::Zstd;
        assert_eq!(build(&z).unwrap().archive, build(&z).unwrap().archive);
    }

    #[test]
    fn contents_are_where_documented() {
        let (_t, spec) = fixture();
        let built = build(&spec).unwrap();
        let raw = compress::decompress_auto(&built.archive).unwrap();
        assert_eq!(raw.len(), built.raw_len);
        let entries = newc::read(&raw).unwrap();
        let get = |n: &str| {
            entries
                .iter()
                .find(|e| e.name == n)
                .unwrap_or_else(|| panic!("{n}"))
        };
        assert_eq!(get("init").header.mode, newc::S_IFREG | 0o755);
        assert_eq!(get("etc/shelfboot/trust/master.pub").body, b"KEY");
        assert_eq!(get("etc/shelfboot/config").body, b"ethertype = 0x88b5\n");
        assert_eq!(get("opt/extra/sub/x").body, b"x");
        assert_eq!(get("lib/modules/9.9/kernel/fs/b.ko").body, b"B");
        let list = String::from_utf8(get("lib/modules/load.list").body.clone()).unwrap();
        let lines: Vec<_> = list.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(lines, ["9.9/kernel/fs/b.ko", "9.9/kernel/fs/a.ko x=1"]);
        for m in MOUNT_POINTS {
            assert_eq!(get(m).header.mode, newc::S_IFDIR | 0o755);
        }
        assert_eq!(entries.len(), built.entries);
    }

    #[test]
    fn missing_inputs_are_named() {
        let (t, mut spec) = fixture();
        spec.trust.push(t.path().join("nokey.pub"));
        let err = build(&spec).unwrap_err();
        assert!(format!("{err}").contains("nokey.pub"), "{err}");
        let (_t, mut spec) = fixture();
        if let Some(m) = spec.modules.as_mut() {
            m.wanted.push(("zz_missing".into(), String::new()));
        }
        let err = build(&spec).unwrap_err();
        let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(chain.contains("zz_missing"), "{chain}");
    }

    #[test]
    fn cpio_tool_lists_the_archive() {
        let Ok(out) = std::process::Command::new("cpio").arg("--version").output() else {
            eprintln!("skipped: the `cpio` tool is not installed (apt-get install cpio)");
            return;
        };
        assert!(out.status.success());
        let (t, mut spec) = fixture();
        spec.compression = Compression::None;
        let built = build(&spec).unwrap();
        let path = t.path().join("x.cpio");
        fs::write(&path, &built.archive).unwrap();
        let out = std::process::Command::new("cpio")
            .args(["-t", "--quiet", "-F"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listed: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        let ours: Vec<String> = newc::read(&built.archive)
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(listed, ours);
        assert!(listed.contains(&"lib/modules/load.list".to_string()));
    }

    #[test]
    fn argument_parsers() {
        assert_eq!(
            parse_add("a/b:/x"),
            Some((PathBuf::from("a/b"), "/x".into()))
        );
        assert_eq!(parse_add("a:b"), None);
        assert_eq!(parse_add(":/x"), None);
        assert_eq!(
            parse_module("nandsim:id_bytes=0x20,0xf1 overridesize=7"),
            ("nandsim".into(), "id_bytes=0x20,0xf1 overridesize=7".into())
        );
        assert_eq!(parse_module("ubi"), ("ubi".into(), String::new()));
        assert_eq!(mtime_from_epoch(None), Ok(0));
        assert_eq!(mtime_from_epoch(Some("1700000000")), Ok(1_700_000_000));
        assert!(mtime_from_epoch(Some("soon")).is_err());
    }
}
