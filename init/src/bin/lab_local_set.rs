//! `shelfboot-init-lab` (feature `lab`): a QEMU-lab build of init whose provisioner commits a set from files inside the initramfs
//! instead of asking a master. It exists to prove, on a real kernel, the real path from
//! flash to hand-off: UBI attach, card's Store over `UbiVolumes` (create, update, read,
//! one multi-volume rename), boot counting, kexec into the committed boot image and
//! switch_root into the committed packages. It is NOT the product's provisioner (that is
//! the card agent, [`shelfboot_init::provision::AgentProvisioner`]) and never talks to the network.
//!
//! `/lab/set/manifest`, one artifact per line, then the boot command line:
//!
//! ```text
//! boot kernel <sha256 hex> <size> [file]
//! pkg  base   <sha256 hex> <size> [file]
//! cmdline console=ttyS0 quiet
//! mode ram          (optional: test mode, boot the packages from RAM, flash untouched)
//! ```
//!
//! A file is only needed when the artifact is not on flash yet. Without a manifest (the
//! kexec'd stage-2 initramfs, which cannot contain the boot image that contains it) the
//! provisioner boots what flash holds.

use std::path::{Path, PathBuf};

use shelfboot_card::flash::Store;
use shelfboot_card::flash::artifact::{ArtifactKind, ArtifactRef, Digest};
use shelfboot_init::flash::UbiVolumes;
use shelfboot_init::flow::{ProvisionError, Provisioned, Provisioner, Session};

const MANIFEST: &str = "/lab/set/manifest";

#[derive(Debug)]
struct LocalSet;

fn perr(what: String, e: impl std::error::Error + Send + Sync + 'static) -> ProvisionError {
    ProvisionError {
        what,
        source: Some(Box::new(e)),
    }
}

fn plain(what: String) -> ProvisionError {
    ProvisionError { what, source: None }
}

type Entry = (ArtifactRef, Option<PathBuf>);

struct Manifest {
    arts: Vec<Entry>,
    cmdline: String,
    ram: bool,
}

fn parse(text: &str) -> Result<Manifest, ProvisionError> {
    let mut arts = Vec::new();
    let mut cmdline = String::new();
    let mut ram = false;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if line.trim() == "mode ram" {
            ram = true;
            continue;
        }
        if let Some(c) = line.strip_prefix("cmdline ") {
            cmdline = c.trim().to_string();
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        let (kind, name, hash, size) = match f.as_slice() {
            [k, n, h, s, ..] => (*k, *n, *h, *s),
            _ => return Err(plain(format!("bad manifest line {line:?}"))),
        };
        let kind = match kind {
            "boot" => ArtifactKind::BootImage,
            "pkg" => ArtifactKind::Package,
            _ => return Err(plain(format!("bad kind in {line:?}"))),
        };
        let sha256: Digest = hash
            .parse()
            .map_err(|e| perr(format!("bad sha256 in {line:?}"), e))?;
        let size = size
            .parse()
            .map_err(|e| perr(format!("bad size in {line:?}"), e))?;
        let r = ArtifactRef {
            kind,
            name: name.into(),
            version: "lab".into(),
            sha256,
            size,
        };
        arts.push((r, f.get(4).map(|p| Path::new("/lab/set").join(p))));
    }
    Ok(Manifest { arts, cmdline, ram })
}

impl Provisioner<UbiVolumes> for LocalSet {
    fn provision(
        &mut self,
        s: &mut Session<'_, UbiVolumes>,
    ) -> Result<Provisioned, ProvisionError> {
        let text = match std::fs::read_to_string(MANIFEST) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                log::info!("lab: no {MANIFEST}: booting what flash holds");
                return committed(s.store.as_ref());
            }
            Err(e) => return Err(perr(format!("cannot read {MANIFEST}"), e)),
        };
        let Manifest { arts, cmdline, ram } = parse(&text)?;
        if ram {
            // Test mode: the package files already live in RAM (the initramfs).
            let packages = arts
                .iter()
                .filter(|(r, _)| r.kind == ArtifactKind::Package)
                .map(|(r, f)| {
                    f.clone()
                        .ok_or_else(|| plain(format!("{} has no file", r.name)))
                })
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(Provisioned::RamSet {
                packages: packages
                    .into_iter()
                    .map(shelfboot_init::handoff::Layer::File)
                    .collect(),
                boot: None,
            });
        }
        let refs: Vec<ArtifactRef> = arts.iter().map(|(r, _)| r.clone()).collect();
        let store: &mut Store<UbiVolumes> = s
            .store
            .as_mut()
            .ok_or_else(|| plain("no flash store".into()))?;
        let check = store
            .check(&refs, &cmdline)
            .map_err(|e| perr("plan check".into(), e))?;
        if check.up_to_date {
            log::info!("lab: flash already holds the manifest's set: validate only");
            return committed(Some(store));
        }
        let check = store
            .begin(&refs, &cmdline)
            .map_err(|e| perr("begin".into(), e))?;
        for (r, file) in &arts {
            if !check.fetch.contains(r) {
                continue;
            }
            let path = file
                .as_ref()
                .ok_or_else(|| plain(format!("{} is not on flash and has no file", r.name)))?;
            let f = std::fs::File::open(path)
                .map_err(|e| perr(format!("open {}", path.display()), e))?;
            store
                .stage(r, f)
                .map_err(|e| perr(format!("stage {}", r.name), e))?;
            log::info!("lab: staged {} ({} bytes)", r.name, r.size);
        }
        let inv = store.commit().map_err(|e| perr("commit".into(), e))?;
        log::info!("lab: committed set generation {}", inv.generation);
        Ok(Provisioned::Committed { set: inv.set })
    }
}

/// Boot the set flash holds (as a master's Continue would); nothing committed is an error,
/// after which the flow finds nothing to boot.
fn committed(store: Option<&Store<UbiVolumes>>) -> Result<Provisioned, ProvisionError> {
    let inv = store
        .and_then(Store::inventory)
        .ok_or_else(|| plain("flash holds no committed set".into()))?;
    Ok(Provisioned::Committed {
        set: inv.set.clone(),
    })
}

fn main() -> std::process::ExitCode {
    if std::process::id() == 1 {
        shelfboot_init::pid1::main(&mut LocalSet)
    }
    // Not PID 1: behave like the product binary's check mode.
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::ExitCode::from(shelfboot_init::check::main(&args, &mut std::io::stdout()))
}
