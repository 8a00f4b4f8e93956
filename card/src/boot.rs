//! The boot choice: which committed set a card hands off to, whether this boot is counted,
//! and whether it is a kexec into the set's boot image or a switch_root into its packages.
//!
//! ```text
//! stored image (shelfboot.stored=1)      → the committed set, not counted again, switch_root
//! no master, set proven (Ready last boot) → the committed set, not counted
//! otherwise                               → Store::begin_boot: counted (may roll back)
//! then: a boot image and not stored       → kexec it; else switch_root into the packages
//! ```
//!
//! [`choose`] is the only place this is decided; init calls it right before its hand-off,
//! and the agent's [`crate::agent::Decision`] names the set's own way in with
//! [`handoff_of`] (what its Ready tells the master, and what `simcard` reports). The only
//! effect of [`choose`] is the store's boot counter (and a rollback it implies). Not here:
//! reading the volumes, kexec, switch_root (init does those with what [`BootChoice`] says).

use shelfboot_proto::msg::Handoff;

use crate::flash::{BootDecision, SetRecord, Store, StoreError, VolumeId, Volumes};

/// What the card knows about this boot when it chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootFacts {
    /// This image is the committed set's boot image, kexec'd by an earlier init
    /// (`shelfboot.stored=1`): its boot was counted before that kexec.
    pub stored: bool,
    /// No master validated the set (none answered within the autonomy timer, or the
    /// conversation could not run).
    pub autonomous: bool,
}

/// How this boot was counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Counting {
    /// A stored image: counted before the kexec that started it; validated only.
    Stored,
    /// No master, and the set's last boot reached Ready: not counted, because without a
    /// master nothing can mark Ready, and counting would roll a proven set back after
    /// `max_attempts` master-less power cycles.
    Proven,
    /// Counted now by [`Store::begin_boot`] (which may have rolled back).
    Counted(BootDecision),
}

/// Where one artifact's bytes are: `size` bytes at `offset` of volume `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// The volume's name.
    pub volume: String,
    /// Its id.
    pub id: VolumeId,
    /// First byte of the artifact in the volume.
    pub offset: u64,
    /// The artifact's size.
    pub size: u64,
    /// The volume is a segment holding other artifacts too: a package must be mounted
    /// through a loop device limited to `offset..offset + size`. Otherwise (a legacy
    /// one-artifact volume) its ubiblock device is the package.
    pub in_segment: bool,
}

/// Where the hand-off goes, with the volumes resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// kexec into the boot image at this place.
    Kexec {
        /// The boot image's volume name.
        volume: String,
        /// Its id.
        id: VolumeId,
        /// First byte of the image in the volume.
        offset: u64,
        /// Bytes of the image.
        size: u64,
    },
    /// switch_root into these packages, bottom layer first.
    SwitchRoot {
        /// Each package, in plan order.
        layers: Vec<Placed>,
    },
}

/// What [`choose`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootChoice {
    /// The set booted.
    pub set: SetRecord,
    /// How this boot was counted.
    pub counting: Counting,
    /// The hand-off.
    pub target: Target,
}

impl BootChoice {
    /// The hand-off kind.
    pub fn handoff(&self) -> Handoff {
        match self.target {
            Target::Kexec { .. } => Handoff::Kexec,
            Target::SwitchRoot { .. } => Handoff::SwitchRoot,
        }
    }
}

/// A set's own way in: kexec if it has a boot image, else switch_root into its packages.
pub fn handoff_of(set: &SetRecord) -> Handoff {
    if set.boot_image().is_some() {
        Handoff::Kexec
    } else {
        Handoff::SwitchRoot
    }
}

/// The committed set if its last boot reached Ready (attempt counter 0) and all its
/// volumes are there. A set committed and cut before its first `begin_boot` also shows 0:
/// a window of about a second in which a set that never booted is taken as proven.
fn proven_set<V: Volumes>(store: &mut Store<V>) -> Option<SetRecord> {
    let set = store.inventory().filter(|i| i.attempts == 0)?.set.clone();
    match store.missing_volumes(&set) {
        Ok(missing) if missing.is_empty() => Some(set),
        _ => None,
    }
}

/// Chooses what to boot from `store` (see the module docs). Nothing committed is
/// [`StoreError::NothingCommitted`]; a volume of the chosen set that is gone is
/// [`StoreError::SetDamaged`] naming it.
pub fn choose<V: Volumes>(
    store: &mut Store<V>,
    facts: BootFacts,
) -> Result<BootChoice, StoreError> {
    let (set, counting) = if facts.stored {
        let inv = store.inventory().ok_or(StoreError::NothingCommitted)?;
        (inv.set.clone(), Counting::Stored)
    } else if let Some(set) = facts.autonomous.then(|| proven_set(store)).flatten() {
        (set, Counting::Proven)
    } else {
        let d = store.begin_boot()?;
        (d.set().clone(), Counting::Counted(d))
    };
    let mut id_of = |name: &str| match store.volume_id(name) {
        Ok(Some(id)) => Ok(id),
        Ok(None) => Err(StoreError::SetDamaged {
            missing: vec![name.to_string()],
        }),
        Err(e) => Err(e),
    };
    let target = match set.boot_image() {
        Some(boot) if !facts.stored => Target::Kexec {
            volume: boot.volume.clone(),
            id: id_of(&boot.volume)?,
            offset: boot.offset,
            size: boot.artifact.size,
        },
        _ => Target::SwitchRoot {
            layers: set
                .packages()
                .map(|p| {
                    id_of(&p.volume).map(|id| Placed {
                        volume: p.volume.clone(),
                        id,
                        offset: p.offset,
                        size: p.artifact.size,
                        in_segment: crate::flash::layout::is_segment(&p.volume),
                    })
                })
                .collect::<Result<_, _>>()?,
        },
    };
    Ok(BootChoice {
        set,
        counting,
        target,
    })
}

#[cfg(test)]
#[path = "boot_tests.rs"]
mod tests;
