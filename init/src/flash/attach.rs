//! Finding the card's MTD device and attaching UBI to it, formatting a pristine device.
//!
//! "Pristine" means: not one good eraseblock starts with a UBI erase-counter header. Such
//! a device (factory-fresh NAND, a zero-filled image, another filesystem) makes
//! UBI_IOCATT fail ("the layout volume was not found"); init then erases every good block
//! that is not already erased (MEMERASE64) and attaches again, and UBI formats the empty
//! device itself. A device on which *any* block carries a UBI header is never erased:
//! failing to attach it is reported (it holds the committed set, or its remains), so a
//! transient error can never wipe a card. What this costs compared with `ubiformat`: erase
//! counters of a foreign device are lost (UBI starts them at 0), which only matters for
//! wear-levelling accuracy on the first format. Not here: volume I/O ([`super::UbiVolumes`]).

use crate::config::MtdSelector;
use crate::kernel::{BlockState, Kernel};
use crate::sys::SysError;
use crate::sys::sysfs::{Sysfs, SysfsError};

/// Errors attaching the flash.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// sysfs could not be read.
    #[error("cannot read MTD/UBI state from sysfs")]
    Sysfs(#[source] SysfsError),
    /// No MTD device matches the configuration.
    #[error(
        "no {selector} (found: {found}); check shelfboot.mtd= and that the flash driver is in the module list"
    )]
    NoDevice {
        /// What was asked for.
        selector: MtdSelector,
        /// What exists.
        found: String,
    },
    /// Attach failed and the device holds UBI data, so it was not formatted.
    #[error(
        "cannot attach UBI to mtd{mtd}; it holds UBI data, so it was NOT formatted (see the kernel log for the UBI error)"
    )]
    AttachUbi {
        /// MTD number.
        mtd: u32,
        /// The failed call.
        #[source]
        source: SysError,
    },
    /// Attach failed and formatting is disabled.
    #[error("cannot attach UBI to mtd{mtd}; formatting is disabled (shelfboot.format=0)")]
    AttachNoFormat {
        /// MTD number.
        mtd: u32,
        /// The failed call.
        #[source]
        source: SysError,
    },
    /// Probing, erasing or the second attach failed.
    #[error("cannot format pristine mtd{mtd} for UBI")]
    Format {
        /// MTD number.
        mtd: u32,
        /// The failed call.
        #[source]
        source: SysError,
    },
}

/// Resolves the configured selector to an MTD number.
pub fn resolve_mtd(sysfs: &Sysfs, sel: &MtdSelector) -> Result<u32, AttachError> {
    let devices = sysfs.mtd_devices().map_err(AttachError::Sysfs)?;
    let hit = devices.iter().find(|(n, name)| match sel {
        MtdSelector::Number(want) => n == want,
        MtdSelector::Name(want) => name == want,
    });
    match hit {
        Some((n, _)) => Ok(*n),
        None => Err(AttachError::NoDevice {
            selector: sel.clone(),
            found: if devices.is_empty() {
                "no MTD devices".to_string()
            } else {
                devices
                    .iter()
                    .map(|(n, name)| format!("mtd{n} {name:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        }),
    }
}

/// Attaches UBI to `mtd` (or finds it already attached) and returns the UBI number.
pub fn attach(
    k: &mut dyn Kernel,
    sysfs: &Sysfs,
    mtd: u32,
    format_pristine: bool,
) -> Result<u32, AttachError> {
    if let Some(ubi) = sysfs.ubi_for_mtd(mtd).map_err(AttachError::Sysfs)? {
        log::info!("mtd{mtd} is already attached as ubi{ubi}");
        return Ok(ubi);
    }
    let first = match k.ubi_attach(mtd) {
        Ok(ubi) => {
            log::info!("attached mtd{mtd} as ubi{ubi}");
            return Ok(ubi);
        }
        Err(e) => e,
    };
    if !format_pristine {
        return Err(AttachError::AttachNoFormat { mtd, source: first });
    }
    let fmt = |source| AttachError::Format { mtd, source };
    let scan = k.mtd_scan(mtd).map_err(fmt)?;
    if scan.blocks.contains(&BlockState::Ubi) {
        return Err(AttachError::AttachUbi { mtd, source: first });
    }
    let dirty: Vec<u64> = scan
        .blocks
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == BlockState::Foreign)
        .map(|(i, _)| i as u64)
        .collect();
    let bad = scan
        .blocks
        .iter()
        .filter(|b| **b == BlockState::Bad)
        .count();
    log::warn!(
        "mtd{mtd} carries no UBI header ({}; {} blocks to erase, {bad} bad): formatting it as a pristine device",
        shelfboot_proto::report::error_chain(&first),
        dirty.len()
    );
    if !dirty.is_empty() {
        k.mtd_erase(mtd, &dirty).map_err(fmt)?;
    }
    let ubi = k.ubi_attach(mtd).map_err(fmt)?;
    log::info!("formatted and attached mtd{mtd} as ubi{ubi}");
    Ok(ubi)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::MtdScan;
    use crate::kernel::fake::{Call, Recorder};
    use nix::errno::Errno;

    fn failing_first_attach(blocks: Vec<BlockState>) -> Recorder {
        Recorder {
            ubi_num: 0,
            scan: Some(MtdScan {
                erasesize: 131072,
                blocks,
            }),
            fail: Some((|c| matches!(c, Call::UbiAttach(_)), Errno::EINVAL)),
            ..Recorder::default()
        }
    }

    #[test]
    fn plain_attach_when_ubi_is_there() {
        let t = tempfile::tempdir().unwrap();
        let mut k = Recorder {
            ubi_num: 1,
            ..Recorder::default()
        };
        assert_eq!(attach(&mut k, &Sysfs::new(t.path()), 0, true).unwrap(), 1);
        assert_eq!(k.calls, vec![Call::UbiAttach(0)]);
    }

    #[test]
    fn pristine_device_is_erased_where_needed_then_attached() {
        let t = tempfile::tempdir().unwrap();
        use BlockState::*;
        let mut k = failing_first_attach(vec![Erased, Foreign, Bad, Foreign, Erased]);
        assert_eq!(attach(&mut k, &Sysfs::new(t.path()), 2, true).unwrap(), 0);
        assert_eq!(
            k.calls,
            vec![
                Call::UbiAttach(2),
                Call::MtdScan(2),
                Call::MtdErase(2, vec![1, 3]),
                Call::UbiAttach(2)
            ]
        );
    }

    #[test]
    fn a_device_with_any_ubi_block_is_never_erased() {
        let t = tempfile::tempdir().unwrap();
        use BlockState::*;
        let mut k = failing_first_attach(vec![Foreign, Ubi, Erased]);
        let err = attach(&mut k, &Sysfs::new(t.path()), 0, true).unwrap_err();
        assert!(matches!(err, AttachError::AttachUbi { .. }), "{err}");
        assert!(!k.calls.iter().any(|c| matches!(c, Call::MtdErase(..))));
        let mut k = failing_first_attach(vec![Foreign]);
        assert!(matches!(
            attach(&mut k, &Sysfs::new(t.path()), 0, false),
            Err(AttachError::AttachNoFormat { .. })
        ));
        assert_eq!(k.calls, vec![Call::UbiAttach(0)]);
    }

    #[test]
    fn already_attached_device_is_reused_and_names_resolve() {
        let t = tempfile::tempdir().unwrap();
        crate::sys::sysfs::fake::ubi_device(t.path(), 3, 1, 129024, 10, 10);
        let mut k = Recorder::default();
        assert_eq!(attach(&mut k, &Sysfs::new(t.path()), 1, true).unwrap(), 3);
        assert!(k.calls.is_empty());
        for (n, name) in [(0, "boot"), (1, "flash")] {
            let d = t.path().join(format!("class/mtd/mtd{n}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("name"), format!("{name}\n")).unwrap();
        }
        let s = Sysfs::new(t.path());
        assert_eq!(
            resolve_mtd(&s, &MtdSelector::Name("flash".into())).unwrap(),
            1
        );
        let err = resolve_mtd(&s, &MtdSelector::Number(5))
            .unwrap_err()
            .to_string();
        assert!(err.contains("mtd0 \"boot\""), "{err}");
    }
}
