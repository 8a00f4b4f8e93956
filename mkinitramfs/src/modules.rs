//! Kernel module selection: from wanted module names to an ordered load list.
//!
//! What it does: reads `modules.dep`, `modules.softdep` (`pre:` entries only),
//! `modules.alias` (to resolve softdep aliases such as `crypto-crc32c`) and
//! `modules.builtin` from `ROOT/lib/modules/KVER`, takes the closure of the wanted modules,
//! adds the orderings the kernel does not declare ([`EXTRA_ORDERINGS`]), and returns a
//! dependency-first load order with cycle detection. Compressed modules (`.ko.xz`,
//! `.ko.zst`, `.ko.gz`) are resolved by name and shipped as they are. It writes and parses
//! `/lib/modules/load.list` (see docs/lab.md). What it does not do: load anything,
//! decompress modules, honour `post:` softdeps or modprobe.d configuration.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Where the load list lives inside the image.
pub const LOAD_LIST_PATH: &str = "lib/modules/load.list";

/// How an extra ordering applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extra {
    /// `before` is pulled in whenever `module` is, and loaded first.
    Requires,
    /// Only an ordering: if both are in the set, `before` loads first.
    After,
}

/// Orderings the kernel does not declare in modules.dep/softdep, measured in the lab
/// (shared/notes/qemu-lab.md §2): `(module, must come first, kind, why)`.
pub const EXTRA_ORDERINGS: &[(&str, &str, Extra, &str)] = &[
    (
        "ubifs",
        "zstd_compress",
        Extra::Requires,
        "ubifs fails with 'cannot initialize compressor zstd' without it",
    ),
    (
        "ubifs",
        "zstd",
        Extra::Requires,
        "crypto/zstd.ko registers the zstd compressor ubifs asks for",
    ),
    ("ubifs", "crc16", Extra::Requires, "ubifs uses crc16"),
    (
        "zstd",
        "zstd_compress",
        Extra::After,
        "crypto zstd needs the zstd library loaded",
    ),
    (
        "block2mtd",
        "virtio_blk",
        Extra::After,
        "block2mtd= opens its block device at insmod time",
    ),
    (
        "virtio_blk",
        "virtio_pci",
        Extra::Requires,
        "the lab's disks are virtio-pci; the transport is not a declared dependency",
    ),
    (
        "virtio_net",
        "virtio_pci",
        Extra::Requires,
        "the lab's NICs are virtio-pci; the transport is not a declared dependency",
    ),
];

/// Errors of module resolution.
#[derive(Debug, thiserror::Error)]
pub enum ModulesError {
    /// A module index file could not be read.
    #[error("cannot read {path}; run `depmod -b ROOT KVER` or check --kernel-modules/--kver")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// No module directory for that kernel version.
    #[error(
        "no module directory for kernel {kver} under {root} (tried {root}/lib/modules/{kver} and {root}/{kver})"
    )]
    NoModuleDir {
        /// The root given.
        root: PathBuf,
        /// The version given.
        kver: String,
    },
    /// A line of modules.dep is malformed.
    #[error("{path}:{line}: malformed modules.dep line (expected `path.ko: deps...`)")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
    },
    /// A wanted or depended-on module is not in modules.dep nor built in.
    #[error(
        "kernel module {name} (wanted by {wanted_by}) is not in {dep_file} nor built in; check the name or the kernel version"
    )]
    Missing {
        /// Module name.
        name: String,
        /// Who asked for it.
        wanted_by: String,
        /// modules.dep consulted.
        dep_file: PathBuf,
    },
    /// A module's file is listed but absent.
    #[error(
        "kernel module file {path} (module {name}) is listed in modules.dep but missing; the module tree is incomplete"
    )]
    MissingFile {
        /// Module name.
        name: String,
        /// The file.
        path: PathBuf,
    },
    /// The dependencies form a cycle.
    #[error("kernel module dependency cycle: {}; fix modules.dep or the extra orderings", chain.join(" -> "))]
    Cycle {
        /// The modules on the cycle, first repeated at the end.
        chain: Vec<String>,
    },
    /// A load.list line could not be parsed.
    #[error("load.list line {line}: {reason}")]
    LoadList {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: &'static str,
    },
}

/// Canonical module name: file stem without `.ko[.xz|.zst|.gz]`, `-` as `_`.
pub fn module_name(path_or_name: &str) -> String {
    let base = path_or_name.rsplit('/').next().unwrap_or(path_or_name);
    let base = [".ko.xz", ".ko.zst", ".ko.gz", ".ko"]
        .iter()
        .find_map(|ext| base.strip_suffix(ext))
        .unwrap_or(base);
    base.replace('-', "_")
}

/// A module index of one kernel.
#[derive(Debug, Clone)]
pub struct ModuleIndex {
    /// `ROOT/lib/modules/KVER`.
    pub dir: PathBuf,
    /// Kernel version.
    pub kver: String,
    /// name -> (path relative to `dir`, dependency paths).
    deps: BTreeMap<String, (String, Vec<String>)>,
    /// name -> softdep `pre:` names.
    softdeps: BTreeMap<String, Vec<String>>,
    /// alias -> module names.
    aliases: BTreeMap<String, Vec<String>>,
    /// built-in module names.
    builtin: BTreeSet<String>,
}

/// One module to load, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadEntry {
    /// Module name.
    pub name: String,
    /// Path relative to `ROOT/lib/modules/KVER` (e.g. `kernel/drivers/mtd/mtd.ko`).
    pub rel_path: String,
    /// Parameters for insmod/finit_module, space separated (may be empty).
    pub params: String,
}

fn read_opt(path: &Path) -> Result<String, ModulesError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(source) => Err(ModulesError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

impl ModuleIndex {
    /// Finds `ROOT/lib/modules/KVER` (or `ROOT/KVER`) and loads its index files.
    pub fn open(root: &Path, kver: &str) -> Result<Self, ModulesError> {
        let dir = [root.join("lib/modules").join(kver), root.join(kver)]
            .into_iter()
            .find(|d| d.join("modules.dep").is_file())
            .ok_or_else(|| ModulesError::NoModuleDir {
                root: root.to_path_buf(),
                kver: kver.to_string(),
            })?;
        let dep_path = dir.join("modules.dep");
        let dep_text = fs::read_to_string(&dep_path).map_err(|source| ModulesError::Read {
            path: dep_path.clone(),
            source,
        })?;
        let mut deps = BTreeMap::new();
        for (i, line) in dep_text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let (module, rest) = line.split_once(':').ok_or(ModulesError::Malformed {
                path: dep_path.clone(),
                line: i + 1,
            })?;
            let module = module.trim();
            if module.is_empty() {
                return Err(ModulesError::Malformed {
                    path: dep_path.clone(),
                    line: i + 1,
                });
            }
            let list = rest.split_whitespace().map(str::to_string).collect();
            deps.insert(module_name(module), (module.to_string(), list));
        }
        let mut softdeps: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for line in read_opt(&dir.join("modules.softdep"))?.lines() {
            let mut words = line.split_whitespace();
            if words.next() != Some("softdep") {
                continue;
            }
            let Some(module) = words.next() else { continue };
            let mut in_pre = false;
            for w in words {
                match w {
                    "pre:" => in_pre = true,
                    "post:" => in_pre = false,
                    name if in_pre => softdeps
                        .entry(module_name(module))
                        .or_default()
                        .push(name.to_string()),
                    _ => {}
                }
            }
        }
        let mut aliases: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for line in read_opt(&dir.join("modules.alias"))?.lines() {
            let mut words = line.split_whitespace();
            if let (Some("alias"), Some(alias), Some(module)) =
                (words.next(), words.next(), words.next())
            {
                aliases
                    .entry(alias.to_string())
                    .or_default()
                    .push(module_name(module));
            }
        }
        let builtin = read_opt(&dir.join("modules.builtin"))?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(module_name)
            .collect();
        Ok(Self {
            dir,
            kver: kver.to_string(),
            deps,
            softdeps,
            aliases,
            builtin,
        })
    }

    /// True when the kernel has this module built in (nothing to load).
    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&module_name(name))
    }

    /// Resolves `wanted` (name, params) into a dependency-first load order. Built-in
    /// modules are skipped; a missing module or file is an error naming it.
    pub fn resolve(&self, wanted: &[(String, String)]) -> Result<Vec<LoadEntry>, ModulesError> {
        // Pass 1: the closure, with hard edges (deps, softdeps, Requires).
        let mut edges: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut todo: Vec<(String, String)> = wanted
            .iter()
            .map(|(n, _)| (module_name(n), "the command line".to_string()))
            .collect();
        while let Some((name, wanted_by)) = todo.pop() {
            if edges.contains_key(&name) {
                continue;
            }
            let Some((_, dep_paths)) = self.deps.get(&name) else {
                if self.builtin.contains(&name) {
                    continue;
                }
                return Err(ModulesError::Missing {
                    name,
                    wanted_by,
                    dep_file: self.dir.join("modules.dep"),
                });
            };
            let mut before: Vec<String> = Vec::new();
            for soft in self.softdeps.get(&name).into_iter().flatten() {
                // Soft dependencies are best effort, as in modprobe: an unknown name or
                // alias is skipped.
                let soft_name = module_name(soft);
                if self.deps.contains_key(&soft_name) {
                    before.push(soft_name);
                } else if let Some(targets) = self.aliases.get(soft) {
                    before.extend(
                        targets
                            .iter()
                            .filter(|t| self.deps.contains_key(*t))
                            .cloned(),
                    );
                } else {
                    log::debug!("softdep {soft} of {name} is built in or unknown; skipped");
                }
            }
            for (module, first, kind, _) in EXTRA_ORDERINGS {
                if *module == name && *kind == Extra::Requires && !self.builtin.contains(*first) {
                    before.push((*first).to_string());
                }
            }
            before.extend(dep_paths.iter().map(|p| module_name(p)));
            for b in &before {
                todo.push((b.clone(), name.clone()));
            }
            edges.insert(name, before);
        }
        // Ordering-only edges between modules that are both in the set.
        for (module, first, kind, _) in EXTRA_ORDERINGS {
            if *kind == Extra::After
                && edges.contains_key(*first)
                && let Some(list) = edges.get_mut(*module)
            {
                list.push((*first).to_string());
            }
        }
        // Pass 2: depth-first order, wanted modules in the order given.
        let mut order: Vec<String> = Vec::new();
        let mut done: BTreeSet<String> = BTreeSet::new();
        let mut stack: Vec<String> = Vec::new();
        for (n, _) in wanted {
            visit(&module_name(n), &edges, &mut done, &mut stack, &mut order)?;
        }
        let params: BTreeMap<String, &str> = wanted
            .iter()
            .map(|(n, p)| (module_name(n), p.as_str()))
            .collect();
        order
            .into_iter()
            .map(|name| {
                let Some((rel, _)) = self.deps.get(&name) else {
                    return Err(ModulesError::Missing {
                        dep_file: self.dir.join("modules.dep"),
                        wanted_by: "the load order".into(),
                        name,
                    });
                };
                let file = self.dir.join(rel);
                if !file.is_file() {
                    return Err(ModulesError::MissingFile { name, path: file });
                }
                Ok(LoadEntry {
                    params: params.get(&name).map(|p| p.to_string()).unwrap_or_default(),
                    rel_path: rel.clone(),
                    name,
                })
            })
            .collect()
    }
}

fn visit(
    name: &str,
    edges: &BTreeMap<String, Vec<String>>,
    done: &mut BTreeSet<String>,
    stack: &mut Vec<String>,
    order: &mut Vec<String>,
) -> Result<(), ModulesError> {
    if done.contains(name) {
        return Ok(());
    }
    // Built-in modules have no edges entry and nothing to load.
    let Some(before) = edges.get(name) else {
        return Ok(());
    };
    if let Some(pos) = stack.iter().position(|s| s == name) {
        let mut chain = stack[pos..].to_vec();
        chain.push(name.to_string());
        return Err(ModulesError::Cycle { chain });
    }
    stack.push(name.to_string());
    for b in before {
        visit(b, edges, done, stack, order)?;
    }
    stack.pop();
    done.insert(name.to_string());
    order.push(name.to_string());
    Ok(())
}

/// Renders `/lib/modules/load.list`: one module per line, its path relative to the
/// list's own directory (`/lib/modules`, so `KVER/kernel/...`, which is what the card's
/// init resolves), then, after one space, its parameters.
pub fn render_load_list(kver: &str, entries: &[LoadEntry]) -> String {
    let mut out = String::from(
        "# shelfboot load.list v1: PATH-RELATIVE-TO-/lib/modules [PARAMS...], in load order\n",
    );
    for e in entries {
        out.push_str(&format!("{kver}/{}", e.rel_path));
        if !e.params.is_empty() {
            out.push(' ');
            out.push_str(&e.params);
        }
        out.push('\n');
    }
    out
}

/// One parsed load.list line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadLine<'a> {
    /// Path relative to the list's directory (`/lib/modules`).
    pub path: &'a str,
    /// Parameters, possibly empty, exactly as written after the first space.
    pub params: &'a str,
}

/// Parses load.list (pure; the card's init can use or mirror it). Blank lines and lines
/// starting with `#` are skipped.
pub fn parse_load_list(text: &str) -> Result<Vec<LoadLine<'_>>, ModulesError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_end();
        if line.trim_start().is_empty() || line.starts_with('#') {
            continue;
        }
        let (path, params) = line.split_once(' ').unwrap_or((line, ""));
        if path.starts_with('/') || path.split('/').any(|c| c == ".." || c.is_empty()) {
            return Err(ModulesError::LoadList {
                line: i + 1,
                reason: "the path must be relative to /lib/modules, without `..` or empty components",
            });
        }
        if module_name(path) == path.rsplit('/').next().unwrap_or(path) {
            return Err(ModulesError::LoadList {
                line: i + 1,
                reason: "the path must end in .ko, .ko.xz, .ko.zst or .ko.gz",
            });
        }
        out.push(LoadLine {
            path,
            params: params.trim(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a synthetic module tree under `root/lib/modules/1.0`.
    fn tree(dep: &str, softdep: &str, builtin: &str, alias: &str) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("lib/modules/1.0");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("modules.dep"), dep).unwrap();
        fs::write(dir.join("modules.softdep"), softdep).unwrap();
        fs::write(dir.join("modules.builtin"), builtin).unwrap();
        fs::write(dir.join("modules.alias"), alias).unwrap();
        for line in dep.lines() {
            let m = line.split(':').next().unwrap();
            fs::create_dir_all(dir.join(m).parent().unwrap()).unwrap();
            fs::write(dir.join(m), b"\x7fELF").unwrap();
        }
        t
    }

    fn want(names: &[&str]) -> Vec<(String, String)> {
        names
            .iter()
            .map(|n| (n.to_string(), String::new()))
            .collect()
    }

    fn names(entries: &[LoadEntry]) -> Vec<&str> {
        entries.iter().map(|e| e.name.as_str()).collect()
    }

    const LAB: &str = "\
kernel/drivers/mtd/mtd.ko:
kernel/lib/bch.ko:
kernel/drivers/mtd/nand/nandcore.ko: kernel/drivers/mtd/mtd.ko
kernel/drivers/mtd/nand/raw/nand.ko: kernel/drivers/mtd/nand/nandcore.ko kernel/lib/bch.ko kernel/drivers/mtd/mtd.ko
kernel/drivers/mtd/nand/raw/nandsim.ko: kernel/drivers/mtd/nand/raw/nand.ko kernel/drivers/mtd/nand/nandcore.ko kernel/lib/bch.ko kernel/drivers/mtd/mtd.ko
kernel/drivers/mtd/ubi/ubi.ko: kernel/drivers/mtd/mtd.ko
kernel/lib/crc16.ko:
kernel/lib/zstd/zstd_compress.ko.xz:
kernel/crypto/zstd.ko.zst: kernel/lib/zstd/zstd_compress.ko.xz
kernel/fs/ubifs/ubifs.ko: kernel/drivers/mtd/ubi/ubi.ko kernel/drivers/mtd/mtd.ko kernel/lib/crc16.ko
kernel/drivers/mtd/devices/block2mtd.ko: kernel/drivers/mtd/mtd.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/crypto/crc32c_generic.ko:
kernel/fs/ext4/ext4.ko:
";

    #[test]
    fn nandsim_and_ubifs_order() {
        let t = tree(LAB, "", "kernel/fs/squashfs/squashfs.ko\n", "");
        let idx = ModuleIndex::open(t.path(), "1.0").unwrap();
        let mut w = want(&["nandsim", "ubifs", "squashfs"]);
        w[0].1 = "id_bytes=0x20,0xf1,0x80,0x15".into();
        let order = idx.resolve(&w).unwrap();
        assert_eq!(
            names(&order),
            [
                "mtd",
                "nandcore",
                "bch",
                "nand",
                "nandsim",
                "zstd_compress",
                "zstd",
                "crc16",
                "ubi",
                "ubifs"
            ]
        );
        assert_eq!(order[4].params, "id_bytes=0x20,0xf1,0x80,0x15");
        assert_eq!(order[5].rel_path, "kernel/lib/zstd/zstd_compress.ko.xz");
        let list = render_load_list("1.0", &order);
        let parsed = parse_load_list(&list).unwrap();
        assert_eq!(parsed.len(), 10);
        assert_eq!(parsed[4].path, "1.0/kernel/drivers/mtd/nand/raw/nandsim.ko");
        assert_eq!(parsed[4].params, "id_bytes=0x20,0xf1,0x80,0x15");
        assert_eq!(parsed[0].params, "");
    }

    #[test]
    fn block2mtd_after_virtio_blk_even_if_asked_first() {
        let t = tree(LAB, "", "", "");
        let idx = ModuleIndex::open(t.path(), "1.0").unwrap();
        let order = idx.resolve(&want(&["block2mtd", "virtio_blk"])).unwrap();
        assert_eq!(
            names(&order),
            [
                "mtd",
                "virtio_ring",
                "virtio",
                "virtio_pci",
                "virtio_blk",
                "block2mtd"
            ]
        );
        // Without virtio_blk, block2mtd does not pull it in.
        let order = idx.resolve(&want(&["block2mtd"])).unwrap();
        assert_eq!(names(&order), ["mtd", "block2mtd"]);
    }

    #[test]
    fn softdep_pre_by_name_and_alias() {
        let t = tree(
            LAB,
            "# comment\nsoftdep ext4 pre: crypto-crc32c post: bch\nsoftdep ubi pre: nosuch\n",
            "",
            "alias crypto-crc32c crc32c_generic\n",
        );
        let idx = ModuleIndex::open(t.path(), "1.0").unwrap();
        assert_eq!(
            names(&idx.resolve(&want(&["ext4"])).unwrap()),
            ["crc32c_generic", "ext4"]
        );
        // An unknown soft dependency is skipped, as modprobe does.
        assert_eq!(
            names(&idx.resolve(&want(&["ubi"])).unwrap()),
            ["mtd", "ubi"]
        );
    }

    #[test]
    fn cycle_is_reported_with_chain() {
        let t = tree(
            "kernel/a.ko: kernel/b.ko\nkernel/b.ko: kernel/c.ko\nkernel/c.ko: kernel/a.ko\n",
            "",
            "",
            "",
        );
        let idx = ModuleIndex::open(t.path(), "1.0").unwrap();
        let err = idx.resolve(&want(&["a"])).unwrap_err();
        match &err {
            ModulesError::Cycle { chain } => assert_eq!(chain, &["a", "b", "c", "a"]),
            other => panic!("unexpected {other}"),
        }
        assert!(err.to_string().contains("a -> b -> c -> a"));
    }

    #[test]
    fn missing_module_and_file_are_named() {
        let t = tree(LAB, "", "", "");
        let idx = ModuleIndex::open(t.path(), "1.0").unwrap();
        let err = idx.resolve(&want(&["nosuchmod"])).unwrap_err();
        assert!(err.to_string().contains("nosuchmod"), "{err}");
        let err = idx.resolve(&want(&["ubifs"]));
        // zstd_compress etc. exist here; now remove a file.
        assert!(err.is_ok());
        fs::remove_file(t.path().join("lib/modules/1.0/kernel/lib/crc16.ko")).unwrap();
        let err = idx.resolve(&want(&["ubifs"])).unwrap_err();
        assert!(err.to_string().contains("crc16.ko"), "{err}");
        let err = ModuleIndex::open(t.path(), "2.0").unwrap_err();
        assert!(err.to_string().contains("2.0"), "{err}");
        // A dependency missing from modules.dep names who wanted it.
        let t = tree("kernel/a.ko: kernel/gone.ko\n", "", "", "");
        let idx = ModuleIndex::open(t.path(), "1.0").unwrap();
        let err = idx.resolve(&want(&["a"])).unwrap_err().to_string();
        assert!(err.contains("gone") && err.contains("wanted by a"), "{err}");
    }

    proptest::proptest! {
        // Each case writes a small module tree to disk: 64 cases keep this under a second.
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// On random dependency graphs the resolver either returns every module of the
        /// closure exactly once with dependencies first, or reports a cycle exactly when
        /// the closure has one.
        #[test]
        fn random_graphs_order_or_cycle(
            n in 2usize..10,
            raw_edges in proptest::collection::vec((0usize..10, 0usize..10), 0..25),
        ) {
            let edges: Vec<(usize, usize)> =
                raw_edges.into_iter().filter(|(a, b)| *a < n && *b < n && a != b).collect();
            let mut dep = String::new();
            for i in 0..n {
                dep.push_str(&format!("kernel/m{i}.ko:"));
                for (a, b) in &edges {
                    if *a == i {
                        dep.push_str(&format!(" kernel/m{b}.ko"));
                    }
                }
                dep.push('\n');
            }
            let t = tree(&dep, "", "", "");
            let idx = ModuleIndex::open(t.path(), "1.0").unwrap();
            // Closure of m0 and whether it has a cycle (Kahn's algorithm on it).
            let mut closure = BTreeSet::from([0usize]);
            let mut todo = vec![0usize];
            while let Some(x) = todo.pop() {
                for (a, b) in &edges {
                    if *a == x && closure.insert(*b) {
                        todo.push(*b);
                    }
                }
            }
            let inner: Vec<&(usize, usize)> =
                edges.iter().filter(|(a, _)| closure.contains(a)).collect();
            let mut indeg: BTreeMap<usize, usize> = closure.iter().map(|c| (*c, 0)).collect();
            for (a, _) in &inner {
                *indeg.get_mut(a).unwrap() += 1;
            }
            let mut ready: Vec<usize> = indeg.iter().filter(|(_, d)| **d == 0).map(|(c, _)| *c).collect();
            let mut seen = 0;
            while let Some(x) = ready.pop() {
                seen += 1;
                for (a, b) in &inner {
                    if *b == x {
                        let d = indeg.get_mut(a).unwrap();
                        *d -= 1;
                        if *d == 0 {
                            ready.push(*a);
                        }
                    }
                }
            }
            let acyclic = seen == closure.len();
            match idx.resolve(&want(&["m0"])) {
                Ok(order) => {
                    proptest::prop_assert!(acyclic);
                    let pos: BTreeMap<String, usize> =
                        order.iter().enumerate().map(|(i, e)| (e.name.clone(), i)).collect();
                    proptest::prop_assert_eq!(pos.len(), closure.len());
                    proptest::prop_assert_eq!(order.len(), closure.len());
                    for (a, b) in inner {
                        let (dep_pos, user_pos) = (pos[&format!("m{b}")], pos[&format!("m{a}")]);
                        proptest::prop_assert!(dep_pos < user_pos);
                    }
                }
                Err(ModulesError::Cycle { chain }) => {
                    proptest::prop_assert!(!acyclic);
                    proptest::prop_assert_eq!(chain.first(), chain.last());
                }
                Err(other) => proptest::prop_assert!(false, "unexpected {}", other),
            }
        }
    }

    #[test]
    fn names_normalise() {
        assert_eq!(module_name("kernel/crypto/zstd.ko.zst"), "zstd");
        assert_eq!(module_name("virtio-net"), "virtio_net");
        assert_eq!(module_name("a/b/nand.ko"), "nand");
    }

    #[test]
    fn load_list_parser_rejects_bad_lines() {
        assert!(parse_load_list("/abs/x.ko\n").is_err());
        assert!(parse_load_list("a/../x.ko\n").is_err());
        assert!(parse_load_list("lib/modules/x\n").is_err());
        let ok = parse_load_list("# c\n\nlib/m/x.ko.zst a=1 b=2\n").unwrap();
        assert_eq!(
            ok,
            [LoadLine {
                path: "lib/m/x.ko.zst",
                params: "a=1 b=2"
            }]
        );
    }
}
