//! `Store`: the commit protocol over any [`Volumes`].
//!
//! Life of an update (see `docs/flash.md` for the diagram and the power-cut analysis):
//!
//! 1. [`Store::open`] reads and validates `sb.inventory` and garbage-collects what no
//!    inventory references (`sb.new.*` from an interrupted run, sets no longer current or
//!    previous).
//! 2. [`Store::check`] computes, without writing, what a plan needs: which artifacts are
//!    already on flash, how many LEBs the rest take, whether the previous set must make
//!    room; it fails with a structured [`StoreError::NoSpace`] / [`StoreError::BadBlocks`].
//! 3. [`Store::begin`] opens a transaction; [`Store::start`], [`Store::write`] and
//!    [`Store::finish`] stream each missing artifact into its `sb.new.*` volume (sha256 while
//!    writing, size enforced, read back and re-hashed at the end).
//! 4. [`Store::commit`] writes `sb.new.inventory`, reads it back, then renames every staged
//!    volume *and* the inventory in ONE `UBI_IOCRNVOL`. That rename is the commit point.
//!
//! Boot counting and rollback live in [`super::boot`]. This module never decides what to
//! install, and never removes a volume that the committed inventory references.

use sha2::{Digest as _, Sha256};

use super::artifact::{ArtifactRef, Digest};
use super::inventory::{self, Inventory, InventoryError, SetRecord};
use super::layout::{self, VolumeClass};
use super::volumes::{
    Geometry, Rename, UBI_MAX_RNVOL, VolumeError, VolumeId, VolumeInfo, VolumeWriter, Volumes,
};

/// Store policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// K: boots of a set that may fail to reach Ready before it is rolled back.
    pub max_attempts: u32,
    /// Refuse to write when more PEBs than this are bad (in addition to refusing when UBI
    /// has no PEBs left in reserve for bad-block handling).
    pub max_bad_pebs: u64,
    /// Read every staged artifact back and re-hash it before it may be committed.
    pub verify_readback: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            max_bad_pebs: 64,
            verify_readback: true,
        }
    }
}

/// Everything that can go wrong in the store. Each variant says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A volume operation failed; `during` says which step.
    #[error("flash step failed while {during}")]
    Volume {
        /// The step (e.g. "staging artifact kernel 6.1").
        during: String,
        /// The failed operation.
        #[source]
        source: VolumeError,
    },
    /// The inventory volume cannot be used.
    #[error("inventory volume \"{volume}\" is unusable; reprovision the card (Store::wipe)")]
    Inventory {
        /// The volume name.
        volume: String,
        /// Why.
        #[source]
        source: InventoryError,
    },
    /// The plan's set cannot be described (bad names, duplicates).
    #[error("the plan's set cannot be stored")]
    Set(#[source] InventoryError),
    /// Not enough flash, even after dropping the previous set. Nothing was written.
    #[error(
        "not enough flash: the plan needs {needed} bytes, {available} are available even \
         without the previous set; shrink the plan or free the device"
    )]
    NoSpace {
        /// Bytes (whole LEBs) the plan needs.
        needed: u64,
        /// Bytes that can be made available without touching the committed set.
        available: u64,
    },
    /// Too many bad blocks to write safely. Nothing was written.
    #[error(
        "flash has {bad_pebs} bad eraseblocks and {reserved_for_bad} in reserve; not writing, \
         replace the card or its flash"
    )]
    BadBlocks {
        /// Bad PEBs.
        bad_pebs: u64,
        /// PEBs UBI still holds back for bad-block handling.
        reserved_for_bad: u64,
    },
    /// The volume table cannot hold the plan. Nothing was written.
    #[error("the plan needs {needed} volumes, the device holds {max}")]
    TooManyVolumes {
        /// Volumes needed at the peak (committed + staged).
        needed: u64,
        /// Volume-table size.
        max: u32,
    },
    /// A transaction is already open.
    #[error("a transaction is already open; commit or abort it first")]
    TransactionOpen,
    /// No transaction is open.
    #[error("no transaction is open; call begin first")]
    NoTransaction,
    /// The artifact is not one the transaction has to fetch.
    #[error("artifact {name} {version} is not to be fetched by this transaction")]
    NotInPlan {
        /// Name.
        name: String,
        /// Version.
        version: String,
    },
    /// `start` twice, or `write`/`finish` without `start`.
    #[error("artifact {name} is {state}")]
    WrongState {
        /// Name.
        name: String,
        /// Its state.
        state: &'static str,
    },
    /// More bytes than the artifact's size.
    #[error("artifact {name} is {size} bytes, refused byte {offset}")]
    TooLong {
        /// Name.
        name: String,
        /// Declared size.
        size: u64,
        /// First refused offset.
        offset: u64,
    },
    /// Fewer bytes than the artifact's size at finish.
    #[error("artifact {name} is {size} bytes, only {got} were written")]
    TooShort {
        /// Name.
        name: String,
        /// Declared size.
        size: u64,
        /// Bytes written.
        got: u64,
    },
    /// The bytes do not hash to the planned sha256; the staging volume was removed.
    #[error(
        "artifact {name} ({what}) has sha256 {actual}, the plan says {expected}; fetch it again"
    )]
    DigestMismatch {
        /// Name.
        name: String,
        /// "as written" or "as read back".
        what: &'static str,
        /// Planned, hex.
        expected: String,
        /// Actual, hex.
        actual: String,
    },
    /// Commit with artifacts not yet staged.
    #[error("cannot commit: artifacts not staged: {missing:?}")]
    Incomplete {
        /// Their names.
        missing: Vec<String>,
    },
    /// The new inventory did not read back as written; nothing was committed.
    #[error("inventory volume \"{volume}\" did not read back as written; nothing committed")]
    ReadBack {
        /// The volume.
        volume: String,
    },
    /// Boot or rollback asked of a pristine card.
    #[error("no set is committed on this card; provisioning from a master is required")]
    NothingCommitted,
    /// The committed set lacks volumes and there is no intact previous set.
    #[error(
        "the committed set is damaged (missing or incomplete: {missing:?}) and no previous set is intact"
    )]
    SetDamaged {
        /// Volumes missing or incomplete.
        missing: Vec<String>,
    },
    /// Rollback asked but no intact previous set exists.
    #[error("no intact previous set to roll back to")]
    NoPrevious,
}

/// Attach step context to a volume error.
pub(crate) trait Ctx<T> {
    fn during(self, what: impl FnOnce() -> String) -> Result<T, StoreError>;
}

impl<T> Ctx<T> for Result<T, VolumeError> {
    fn during(self, what: impl FnOnce() -> String) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Volume {
            during: what(),
            source,
        })
    }
}

/// What [`Store::check`] found: the plan fits, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanCheck {
    /// The plan's set digest.
    pub digest: Digest,
    /// The plan equals the committed set: nothing to fetch or commit.
    pub up_to_date: bool,
    /// Artifacts already on flash (verified when they were committed).
    pub present: Vec<ArtifactRef>,
    /// Artifacts to fetch and stage.
    pub fetch: Vec<ArtifactRef>,
    /// Bytes (whole LEBs) the staging needs, inventory included.
    pub needed: u64,
    /// Bytes free now.
    pub free: u64,
    /// The previous set must be dropped to make room (no local rollback afterwards).
    pub drops_previous: bool,
}

/// What [`Store::open`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Volumes removed as garbage.
    pub removed: Vec<String>,
    /// One inventory copy was damaged (the other was used); the description.
    pub inventory_damaged: Option<String>,
}

#[derive(Debug)]
enum Entry<W> {
    Pending,
    Writing {
        id: VolumeId,
        writer: W,
        hasher: Sha256,
        written: u64,
    },
    Staged {
        id: VolumeId,
    },
}

impl<W> Entry<W> {
    fn state(&self) -> &'static str {
        match self {
            Self::Pending => "not started",
            Self::Writing { .. } => "being written",
            Self::Staged { .. } => "already staged",
        }
    }
}

#[derive(Debug)]
struct Txn<W> {
    record: SetRecord,
    /// (artifact, committed volume name, state), for artifacts to fetch.
    fetch: Vec<(ArtifactRef, String, Entry<W>)>,
}

/// The card's flash, over a [`Volumes`] implementation.
#[derive(Debug)]
pub struct Store<V: Volumes> {
    pub(crate) vols: V,
    pub(crate) cfg: StoreConfig,
    pub(crate) geo: Geometry,
    pub(crate) inventory: Option<Inventory>,
    txn: Option<Txn<V::Writer>>,
}

const CHUNK: usize = 64 * 1024;

/// Read a whole volume (bounded by `limit` bytes).
pub(crate) fn read_all<V: Volumes>(
    vols: &mut V,
    info: &VolumeInfo,
    limit: u64,
) -> Result<Vec<u8>, StoreError> {
    let len = info.data_bytes.min(limit);
    let mut out = vec![0u8; usize::try_from(len).unwrap_or(0)];
    let mut off = 0;
    while off < out.len() {
        let n = vols
            .read(info.id, off as u64, &mut out[off..])
            .during(|| format!("reading volume \"{}\"", info.name))?;
        if n == 0 {
            break;
        }
        off += n;
    }
    out.truncate(off);
    Ok(out)
}

/// sha256 of a volume's data.
pub(crate) fn hash_volume<V: Volumes>(
    vols: &mut V,
    info: &VolumeInfo,
) -> Result<Digest, StoreError> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut off = 0u64;
    while off < info.data_bytes {
        let n = vols
            .read(info.id, off, &mut buf)
            .during(|| format!("reading volume \"{}\" to hash it", info.name))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        off += n as u64;
    }
    Ok(h.finalize().into())
}

impl<V: Volumes> Store<V> {
    /// Open the store: read and validate the inventory (falling back to its second copy),
    /// then remove every `sb.*` volume that no inventory references.
    pub fn open(mut vols: V, cfg: StoreConfig) -> Result<(Self, OpenReport), StoreError> {
        let geo = vols
            .geometry()
            .during(|| "reading the flash geometry".into())?;
        let list = vols.list().during(|| "listing volumes at open".into())?;
        let mut report = OpenReport::default();
        let inventory = match list.iter().find(|v| v.name == layout::INVENTORY) {
            None => None,
            Some(info) => {
                let limit = 2 * (inventory::MAX_PAYLOAD as u64 + 16 + geo.leb_size);
                let bytes = read_all(&mut vols, info, limit)?;
                let d = inventory::decode(&bytes).map_err(|source| StoreError::Inventory {
                    volume: info.name.clone(),
                    source,
                })?;
                if let Some(what) = &d.damaged {
                    log::warn!("flash: inventory copy damaged ({what}); using the other copy");
                }
                report.inventory_damaged = d.damaged;
                Some(d.inventory)
            }
        };
        let mut store = Self {
            vols,
            cfg,
            geo,
            inventory,
            txn: None,
        };
        report.removed = store.collect_garbage()?;
        Ok((store, report))
    }

    /// Remove every `sb.*` volume: the card becomes pristine. For a card whose inventory is
    /// corrupt beyond repair; the master then provisions it from scratch.
    pub fn wipe(mut vols: V, cfg: StoreConfig) -> Result<Self, StoreError> {
        let geo = vols
            .geometry()
            .during(|| "reading the flash geometry".into())?;
        let list = vols.list().during(|| "listing volumes to wipe".into())?;
        // Inventory first: from then on the card is pristine whatever else survives.
        let mut order: Vec<&VolumeInfo> = list
            .iter()
            .filter(|v| layout::classify(&v.name) != VolumeClass::Foreign)
            .collect();
        order.sort_by_key(|v| v.name != layout::INVENTORY);
        for v in order {
            vols.remove(v.id)
                .during(|| format!("removing volume \"{}\" to wipe the card", v.name))?;
        }
        Ok(Self {
            vols,
            cfg,
            geo,
            inventory: None,
            txn: None,
        })
    }

    /// Remove `sb.*` volumes that the committed inventory does not reference (staging
    /// volumes included). Returns their names.
    pub(crate) fn collect_garbage(&mut self) -> Result<Vec<String>, StoreError> {
        let list = self
            .vols
            .list()
            .during(|| "listing volumes for garbage collection".into())?;
        let mut removed = Vec::new();
        for v in list {
            let garbage = match layout::classify(&v.name) {
                VolumeClass::Inventory | VolumeClass::Foreign => false,
                VolumeClass::Artifact => !self
                    .inventory
                    .as_ref()
                    .is_some_and(|inv| inv.referenced().any(|r| r == v.name)),
                VolumeClass::StagingInventory | VolumeClass::Staging(_) | VolumeClass::Unknown => {
                    true
                }
            };
            if garbage {
                self.vols
                    .remove(v.id)
                    .during(|| format!("removing leftover volume \"{}\"", v.name))?;
                log::info!("flash: removed leftover volume \"{}\"", v.name);
                removed.push(v.name);
            }
        }
        Ok(removed)
    }

    /// The committed inventory, or `None` for a pristine card.
    pub fn inventory(&self) -> Option<&Inventory> {
        self.inventory.as_ref()
    }

    /// The committed set's digest (what the card reports in Solicit), `None` if pristine.
    pub fn digest(&self) -> Option<Digest> {
        self.inventory.as_ref().map(|i| i.set.digest)
    }

    /// The device geometry read at open.
    pub fn geometry(&self) -> Geometry {
        self.geo
    }

    /// The volume store (e.g. for init to find a volume's id and open `/dev/ubiN_M`).
    pub fn volumes_mut(&mut self) -> &mut V {
        &mut self.vols
    }

    /// Give the volume store back.
    pub fn into_volumes(self) -> V {
        self.vols
    }

    /// The id of volume `name`, if it exists.
    pub fn volume_id(&mut self, name: &str) -> Result<Option<VolumeId>, StoreError> {
        let list = self
            .vols
            .list()
            .during(|| format!("looking up volume \"{name}\""))?;
        Ok(list.into_iter().find(|v| v.name == name).map(|v| v.id))
    }

    /// Volumes of `set` that are missing, incomplete or of the wrong size.
    pub fn missing_volumes(&mut self, set: &SetRecord) -> Result<Vec<String>, StoreError> {
        let list = self
            .vols
            .list()
            .during(|| "listing volumes to check a set".into())?;
        Ok(set
            .artifacts
            .iter()
            .filter(|a| {
                !list.iter().any(|v| {
                    v.name == a.volume && !v.update_marker && v.data_bytes == a.artifact.size
                })
            })
            .map(|a| a.volume.clone())
            .collect())
    }

    /// Re-hash every volume of `set`; returns the volumes whose sha256 is wrong or that are
    /// missing. Reads every byte of the set.
    pub fn verify_set(&mut self, set: &SetRecord) -> Result<Vec<String>, StoreError> {
        let mut bad = self.missing_volumes(set)?;
        let list = self
            .vols
            .list()
            .during(|| "listing volumes to verify a set".into())?;
        for a in &set.artifacts {
            if let Some(info) = list
                .iter()
                .find(|v| v.name == a.volume && !bad.contains(&v.name))
                && hash_volume(&mut self.vols, info)? != a.artifact.sha256
            {
                bad.push(a.volume.clone());
            }
        }
        Ok(bad)
    }

    fn inventory_lebs(&self, inv: &Inventory) -> Result<u64, StoreError> {
        let bytes = inventory::encode(inv, self.geo.leb_size).map_err(StoreError::Set)?;
        Ok(self.geo.lebs_for(bytes.len() as u64))
    }

    /// The inventory a commit of `record` would write.
    fn next_inventory(&self, record: SetRecord) -> Inventory {
        let (generation, previous) = match &self.inventory {
            None => (1, None),
            Some(cur) if cur.set.digest == record.digest => {
                (cur.generation + 1, cur.previous.clone())
            }
            Some(cur) => (cur.generation + 1, Some(cur.set.clone())),
        };
        Inventory {
            generation,
            set: record,
            attempts: 0,
            previous,
            rolled_back_from: None,
        }
    }

    /// Check, without writing anything, whether `artifacts` + `cmdline` can be staged and
    /// committed while the committed set stays intact.
    pub fn check(
        &mut self,
        artifacts: &[ArtifactRef],
        cmdline: &str,
    ) -> Result<PlanCheck, StoreError> {
        let record = SetRecord::new(artifacts, cmdline).map_err(StoreError::Set)?;
        let geo = self
            .vols
            .geometry()
            .during(|| "reading the flash geometry".into())?;
        self.geo = geo;
        if geo.bad_pebs > self.cfg.max_bad_pebs || (geo.bad_pebs > 0 && geo.reserved_for_bad == 0) {
            return Err(StoreError::BadBlocks {
                bad_pebs: geo.bad_pebs,
                reserved_for_bad: geo.reserved_for_bad,
            });
        }
        let list = self
            .vols
            .list()
            .during(|| "listing volumes to check a plan".into())?;
        let cur = self.inventory.as_ref();
        let verified = |a: &ArtifactRef, vol: &str| {
            cur.is_some_and(|inv| {
                inv.set
                    .artifacts
                    .iter()
                    .chain(inv.previous.iter().flat_map(|p| p.artifacts.iter()))
                    .any(|s| {
                        s.volume == vol
                            && s.artifact.sha256 == a.sha256
                            && s.artifact.size == a.size
                    })
            }) && list
                .iter()
                .any(|v| v.name == vol && !v.update_marker && v.data_bytes == a.size)
        };
        let mut present = Vec::new();
        let mut fetch = Vec::new();
        let mut fetch_lebs = 0;
        for s in &record.artifacts {
            if verified(&s.artifact, &s.volume) {
                present.push(s.artifact.clone());
            } else {
                fetch_lebs += geo.lebs_for(s.artifact.size);
                fetch.push(s.artifact.clone());
            }
        }
        let up_to_date = cur.is_some_and(|c| c.set.digest == record.digest) && fetch.is_empty();
        let digest = record.digest;
        let inv_lebs = self.inventory_lebs(&self.next_inventory(record.clone()))?;
        // An up-to-date plan writes nothing; otherwise the new inventory is staged too.
        let needed_lebs = if up_to_date { 0 } else { fetch_lebs + inv_lebs };
        // Volumes only the previous set uses (and the plan does not reuse) may be dropped.
        let prev_only: Vec<&VolumeInfo> = list
            .iter()
            .filter(|v| {
                cur.is_some_and(|c| {
                    c.previous.as_ref().is_some_and(|p| p.uses(&v.name)) && !c.set.uses(&v.name)
                }) && !record.uses(&v.name)
            })
            .collect();
        let prev_lebs: u64 = prev_only
            .iter()
            .map(|v| geo.lebs_for(v.reserved_bytes))
            .sum();
        let drops_previous = needed_lebs > geo.free_lebs;
        if needed_lebs > geo.free_lebs + prev_lebs {
            return Err(StoreError::NoSpace {
                needed: needed_lebs * geo.leb_size,
                available: (geo.free_lebs + prev_lebs) * geo.leb_size,
            });
        }
        let peak = list.len() as u64 + fetch.len() as u64 + 1
            - if drops_previous {
                prev_only.len() as u64
            } else {
                0
            };
        if peak > u64::from(geo.max_volumes) {
            return Err(StoreError::TooManyVolumes {
                needed: peak,
                max: geo.max_volumes,
            });
        }
        Ok(PlanCheck {
            digest,
            up_to_date,
            present,
            fetch,
            needed: needed_lebs * geo.leb_size,
            free: geo.free_lebs * geo.leb_size,
            drops_previous,
        })
    }

    /// Open a transaction for the set `artifacts` + `cmdline`: [`Self::check`] it, drop the
    /// previous set if the check says so (the inventory is rewritten without it first), and
    /// return what must be fetched.
    pub fn begin(
        &mut self,
        artifacts: &[ArtifactRef],
        cmdline: &str,
    ) -> Result<PlanCheck, StoreError> {
        if self.txn.is_some() {
            return Err(StoreError::TransactionOpen);
        }
        let check = self.check(artifacts, cmdline)?;
        if check.drops_previous
            && let Some(mut inv) = self.inventory.clone()
        {
            log::warn!("flash: dropping the previous set to make room; no local rollback");
            inv.previous = None;
            inv.generation += 1;
            self.replace_inventory(&inv)?;
            self.collect_garbage()?;
        }
        let record = SetRecord::new(artifacts, cmdline).map_err(StoreError::Set)?;
        let fetch = check
            .fetch
            .iter()
            .map(|a| {
                let vol = layout::artifact_volume(a).map_err(|e| StoreError::Set(e.into()))?;
                Ok((a.clone(), vol, Entry::Pending))
            })
            .collect::<Result<_, StoreError>>()?;
        self.txn = Some(Txn { record, fetch });
        Ok(check)
    }

    fn entry(
        &mut self,
        a: &ArtifactRef,
    ) -> Result<&mut (ArtifactRef, String, Entry<V::Writer>), StoreError> {
        let txn = self.txn.as_mut().ok_or(StoreError::NoTransaction)?;
        txn.fetch
            .iter_mut()
            .find(|(x, _, _)| x == a)
            .ok_or_else(|| StoreError::NotInPlan {
                name: a.name.clone(),
                version: a.version.clone(),
            })
    }

    /// Start streaming artifact `a`: create its `sb.new.*` volume and begin the update.
    pub fn start(&mut self, a: &ArtifactRef) -> Result<(), StoreError> {
        let (_, vol, entry) = self.entry(a)?;
        if !matches!(entry, Entry::Pending) {
            return Err(StoreError::WrongState {
                name: a.name.clone(),
                state: entry.state(),
            });
        }
        let staging = layout::staging_of(vol);
        let during = || {
            format!(
                "staging artifact {} {} into \"{staging}\"",
                a.name, a.version
            )
        };
        if let Some(old) = self.volume_id(&staging)? {
            self.vols.remove(old).during(during)?;
        }
        let id = self.vols.create(&staging, a.size.max(1)).during(during)?;
        let writer = self.vols.update(id, a.size).during(during)?;
        let (_, _, entry) = self.entry(a)?;
        *entry = Entry::Writing {
            id,
            writer,
            hasher: Sha256::new(),
            written: 0,
        };
        Ok(())
    }

    /// Append the next bytes of artifact `a` (sequentially, as they arrive).
    pub fn write(&mut self, a: &ArtifactRef, buf: &[u8]) -> Result<(), StoreError> {
        let (art, vol, entry) = self.entry(a)?;
        let Entry::Writing {
            writer,
            hasher,
            written,
            ..
        } = entry
        else {
            return Err(StoreError::WrongState {
                name: a.name.clone(),
                state: entry.state(),
            });
        };
        if *written + buf.len() as u64 > art.size {
            return Err(StoreError::TooLong {
                name: art.name.clone(),
                size: art.size,
                offset: art.size.max(*written),
            });
        }
        writer.write(buf).during(|| {
            format!(
                "writing artifact {} into \"{}\"",
                a.name,
                layout::staging_of(vol)
            )
        })?;
        hasher.update(buf);
        *written += buf.len() as u64;
        Ok(())
    }

    /// Bytes of `a` written so far (the offset the next [`Self::write`] must start at).
    pub fn written(&mut self, a: &ArtifactRef) -> Result<u64, StoreError> {
        let (art, _, entry) = self.entry(a)?;
        Ok(match entry {
            Entry::Pending => 0,
            Entry::Writing { written, .. } => *written,
            Entry::Staged { .. } => art.size,
        })
    }

    /// Finish artifact `a`: check size and sha256, complete the update, read it back and
    /// re-hash it. On a digest mismatch the staging volume is removed and the artifact can
    /// be started again.
    pub fn finish(&mut self, a: &ArtifactRef) -> Result<(), StoreError> {
        let verify = self.cfg.verify_readback;
        let (art, vol, entry) = self.entry(a)?;
        let art = art.clone();
        let staging = layout::staging_of(vol);
        let Entry::Writing { written, .. } = entry else {
            return Err(StoreError::WrongState {
                name: a.name.clone(),
                state: entry.state(),
            });
        };
        if *written != art.size {
            return Err(StoreError::TooShort {
                name: art.name,
                size: art.size,
                got: *written,
            });
        }
        let Entry::Writing {
            id, writer, hasher, ..
        } = std::mem::replace(entry, Entry::Pending)
        else {
            return Ok(());
        };
        let during = || format!("finishing artifact {} in \"{staging}\"", art.name);
        writer.finish().during(during)?;
        let mut actual: Digest = hasher.finalize().into();
        let mut what = "as written";
        if actual == art.sha256 && verify {
            let info = VolumeInfo {
                id,
                name: staging.clone(),
                reserved_bytes: 0,
                data_bytes: art.size,
                update_marker: false,
            };
            actual = hash_volume(&mut self.vols, &info)?;
            what = "as read back";
        }
        if actual != art.sha256 {
            self.vols.remove(id).during(during)?;
            return Err(StoreError::DigestMismatch {
                name: art.name,
                what,
                expected: hex::encode(art.sha256),
                actual: hex::encode(actual),
            });
        }
        let (_, _, entry) = self.entry(a)?;
        *entry = Entry::Staged { id };
        Ok(())
    }

    /// Stream a whole artifact from `reader` (start, write in 64 KiB chunks, finish).
    pub fn stage(
        &mut self,
        a: &ArtifactRef,
        mut reader: impl std::io::Read,
    ) -> Result<(), StoreError> {
        self.start(a)?;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(StoreError::Volume {
                        during: format!("reading the source of artifact {}", a.name),
                        source: VolumeError::from_io(
                            super::volumes::VolumeOp::Write,
                            super::volumes::VolumeTarget::name(&a.name),
                            e,
                        ),
                    });
                }
            };
            self.write(a, &buf[..n])?;
        }
        self.finish(a)
    }

    /// Drop the transaction and remove its staging volumes.
    pub fn abort(&mut self) -> Result<(), StoreError> {
        if let Some(txn) = self.txn.take() {
            drop(txn);
            self.collect_garbage()?;
        }
        Ok(())
    }

    /// Write `inv` into a fresh `sb.new.inventory` and read it back. Returns its id.
    fn stage_inventory(&mut self, inv: &Inventory) -> Result<VolumeId, StoreError> {
        let name = layout::STAGING_INVENTORY;
        let during = || format!("writing the new inventory (generation {})", inv.generation);
        if let Some(old) = self.volume_id(name)? {
            self.vols.remove(old).during(during)?;
        }
        let bytes = inventory::encode(inv, self.geo.leb_size).map_err(StoreError::Set)?;
        let len = bytes.len() as u64;
        let id = self.vols.create(name, len).during(during)?;
        let mut w = self.vols.update(id, len).during(during)?;
        for chunk in bytes.chunks(CHUNK) {
            w.write(chunk).during(during)?;
        }
        w.finish().during(during)?;
        let info = VolumeInfo {
            id,
            name: name.into(),
            reserved_bytes: 0,
            data_bytes: len,
            update_marker: false,
        };
        let back = read_all(&mut self.vols, &info, len)?;
        match inventory::decode(&back) {
            Ok(d) if d.damaged.is_none() && d.inventory == *inv => Ok(id),
            _ => Err(StoreError::ReadBack {
                volume: name.into(),
            }),
        }
    }

    /// Replace the committed inventory by `inv` (stage + one rename onto `sb.inventory`).
    pub(crate) fn replace_inventory(&mut self, inv: &Inventory) -> Result<(), StoreError> {
        let id = self.stage_inventory(inv)?;
        let ops = [Rename {
            id,
            new_name: layout::INVENTORY.into(),
        }];
        self.vols
            .rename(&ops)
            .during(|| format!("committing inventory generation {}", inv.generation))?;
        self.inventory = Some(inv.clone());
        Ok(())
    }

    /// Commit the transaction: all staged volumes and the new inventory in one atomic
    /// rename (more than 31 artifacts: the excess is renamed to committed names first,
    /// where, unreferenced, it stays garbage until the final rename). Returns the new
    /// inventory.
    pub fn commit(&mut self) -> Result<Inventory, StoreError> {
        let txn = self.txn.as_ref().ok_or(StoreError::NoTransaction)?;
        let missing: Vec<String> = txn
            .fetch
            .iter()
            .filter(|(_, _, e)| !matches!(e, Entry::Staged { .. }))
            .map(|(a, _, _)| a.name.clone())
            .collect();
        if !missing.is_empty() {
            return Err(StoreError::Incomplete { missing });
        }
        let mut renames: Vec<Rename> = txn
            .fetch
            .iter()
            .filter_map(|(_, vol, e)| match e {
                Entry::Staged { id } => Some(Rename {
                    id: *id,
                    new_name: vol.clone(),
                }),
                _ => None,
            })
            .collect();
        let inv = self.next_inventory(txn.record.clone());
        let inv_id = self.stage_inventory(&inv)?;
        while renames.len() + 1 > UBI_MAX_RNVOL {
            let batch: Vec<Rename> = renames
                .drain(..UBI_MAX_RNVOL.min(renames.len() + 1 - UBI_MAX_RNVOL))
                .collect();
            self.vols
                .rename(&batch)
                .during(|| "renaming staged artifacts ahead of the commit".into())?;
        }
        renames.push(Rename {
            id: inv_id,
            new_name: layout::INVENTORY.into(),
        });
        self.vols.rename(&renames).during(|| {
            format!(
                "committing set generation {} (atomic rename)",
                inv.generation
            )
        })?;
        log::info!(
            "flash: committed set {} (generation {}, {} artifacts)",
            hex::encode(inv.set.digest),
            inv.generation,
            inv.set.artifacts.len()
        );
        self.txn = None;
        self.inventory = Some(inv.clone());
        self.collect_garbage()?;
        Ok(inv)
    }
}
