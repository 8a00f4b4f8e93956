//! `Store`: the commit protocol over any [`Volumes`].
//!
//! Life of an update (see `docs/flash.md` for the diagram and the power-cut analysis):
//!
//! 1. [`Store::open`] reads and validates `sb.inventory` and garbage-collects what no
//!    inventory references (torn `sb.new.*` from an interrupted run, sets no longer current
//!    or previous); completely written `sb.new.*` artifacts are kept for the next `begin`
//!    to re-hash and adopt.
//! 2. [`Store::check`] computes, without writing, what a plan needs: which artifacts are
//!    already on flash, how many LEBs the rest take, whether the previous set must make
//!    room; it fails with a structured [`StoreError::NoSpace`] / [`StoreError::BadBlocks`].
//! 3. [`Store::begin`] opens a transaction; [`Store::start`], [`Store::write`] and
//!    [`Store::finish`] stream each missing artifact into its extent of one staging segment
//!    `sb.new.seg.*` (LEB by LEB, atomic LEB changes; size enforced, read back and re-hashed
//!    at the end). A torn artifact resumes after its written LEBs.
//! 4. [`Store::commit`] writes `sb.new.inventory`, reads it back, then renames the segment
//!    *and* the inventory in ONE `UBI_IOCRNVOL`. That rename is the commit point.
//!
//! This file holds open, garbage collection, the plan check and inventory writes; the
//! transaction (steps 3–4) is in [`super::stage`], boot counting and rollback in
//! [`super::boot`], errors in [`super::error`]. This module never decides what to install,
//! and never removes a volume that the committed inventory references.

use sha2::{Digest as _, Sha256};

use super::artifact::{ArtifactRef, Digest};
use super::error::Ctx;
pub use super::error::StoreError;
use super::inventory::{self, Inventory, InventoryError, SetRecord};
use super::layout::{self, VolumeClass};
use super::stage::Txn;
use super::volumes::{Geometry, Rename, VolumeId, VolumeInfo, VolumeWriter, Volumes};

/// Most volumes (segments and legacy one-artifact volumes) one set may reference. A commit
/// whose set would reference more copies the artifacts of its least-used ones (fewest
/// bytes in the set) into its new segment, from flash. With the current and the previous
/// set each within it, the store holds at most 2 × 32 = 64 such volumes, plus
/// `sb.inventory`, `sb.new.inventory` and one staging segment: 67 of UBI's 128, whatever
/// the number of artifacts or commits.
pub const MAX_SEGMENTS: usize = 32;

/// A compaction copy: an artifact copied on flash from `source` (volume, offset) into the
/// new segment at `offset`.
#[derive(Debug, Clone)]
pub(crate) struct Copy {
    pub(crate) artifact: ArtifactRef,
    pub(crate) offset: u64,
    pub(crate) source: (String, u64),
}

/// Where a plan's artifacts go: the set record with every location (new ones in the
/// staging segment), and the segment's extents.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub(crate) record: SetRecord,
    /// Artifacts to fetch (plan order) and their offsets in the segment.
    pub(crate) fetch: Vec<(ArtifactRef, u64)>,
    /// Artifacts copied from older volumes (after the fetched ones).
    pub(crate) copies: Vec<Copy>,
    /// LEBs of the segment (0: no segment is written).
    pub(crate) seg_lebs: u64,
    /// The staging segment's name.
    pub(crate) staging: String,
}

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
    /// What the store is called in log lines: `flash`, or e.g. `RAM store` for the
    /// test-mode store on tmpfs (so a console never says "flash" for RAM).
    pub label: &'static str,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            max_bad_pebs: 64,
            verify_readback: true,
            label: "flash",
        }
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
    /// Artifacts completely written by an interrupted transaction. From [`Store::check`]:
    /// candidates; from [`Store::begin`]: those whose re-hash matched (already staged, not
    /// to be fetched). A candidate that fails the re-hash moves to `fetch`.
    pub resumable: Vec<ArtifactRef>,
    /// Artifacts to fetch and stage, in plan order.
    pub fetch: Vec<ArtifactRef>,
    /// Artifacts of `fetch` of which an interrupted transaction of the same plan left a
    /// prefix on flash: (artifact, bytes held). Fetching resumes after them
    /// ([`Store::written`] after [`Store::start`]).
    pub partial: Vec<(ArtifactRef, u64)>,
    /// Artifacts already on flash in sparsely used old volumes that the commit copies into
    /// its new segment (from flash, not the network) to keep the volume count bounded.
    pub copies: Vec<ArtifactRef>,
    /// Bytes (whole LEBs) the staging needs, inventory included.
    pub needed: u64,
    /// Bytes free now, counting leftover staging volumes that will be removed.
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

/// The card's flash, over a [`Volumes`] implementation.
#[derive(Debug)]
pub struct Store<V: Volumes> {
    pub(crate) vols: V,
    pub(crate) cfg: StoreConfig,
    pub(crate) geo: Geometry,
    pub(crate) inventory: Option<Inventory>,
    pub(crate) txn: Option<Txn>,
}

pub(crate) const CHUNK: usize = 64 * 1024;

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

/// sha256 of `len` bytes at `offset` of volume `id` (named `name` in errors).
pub(crate) fn hash_extent<V: Volumes>(
    vols: &mut V,
    id: VolumeId,
    name: &str,
    offset: u64,
    len: u64,
) -> Result<Digest, StoreError> {
    let mut h = Sha256::new();
    hash_extent_into(vols, id, name, offset, len, &mut h)?;
    Ok(Digest(h.finalize().into()))
}

/// Feed `len` bytes at `offset` of volume `id` into `h`.
pub(crate) fn hash_extent_into<V: Volumes>(
    vols: &mut V,
    id: VolumeId,
    name: &str,
    offset: u64,
    len: u64,
    h: &mut Sha256,
) -> Result<(), StoreError> {
    let mut buf = vec![0u8; CHUNK];
    let mut off = 0u64;
    while off < len {
        let chunk = usize::try_from(len - off).unwrap_or(CHUNK).min(CHUNK);
        let n = vols
            .read(id, offset + off, &mut buf[..chunk])
            .during(|| format!("reading volume \"{name}\" to hash it"))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        off += n as u64;
    }
    Ok(())
}

/// Read and decode `sb.inventory`: (inventory or `None` if absent, damaged-copy note).
fn read_inventory<V: Volumes>(
    vols: &mut V,
    geo: &Geometry,
) -> Result<(Option<Inventory>, Option<String>), StoreError> {
    let list = vols.list().during(|| "listing volumes at open".into())?;
    let Some(info) = list.iter().find(|v| v.name == layout::INVENTORY) else {
        return Ok((None, None));
    };
    let limit = 2 * (inventory::MAX_PAYLOAD as u64 + 16 + geo.leb_size);
    let (bytes, read_errors) = read_per_leb(vols, info, limit, geo.leb_size);
    let note = |s: String| {
        if read_errors.is_empty() {
            s
        } else {
            format!("{s} (read errors: {})", read_errors.join("; "))
        }
    };
    let d = match inventory::decode(&bytes, geo.leb_size) {
        Ok(d) => d,
        Err(InventoryError::Corrupt { a, b }) => {
            return Err(StoreError::Inventory {
                volume: info.name.clone(),
                source: InventoryError::Corrupt { a: note(a), b },
            });
        }
        Err(source) => {
            return Err(StoreError::Inventory {
                volume: info.name.clone(),
                source,
            });
        }
    };
    let damaged = d.damaged.map(note);
    if let Some(what) = &damaged {
        log::warn!("flash: inventory copy damaged ({what}); using the other copy");
    }
    Ok((Some(d.inventory), damaged))
}

/// Read a volume LEB by LEB (bounded by `limit`); a LEB that cannot be read (ECC error)
/// reads as zeros and is reported, so that one bad LEB cannot hide the other copy.
fn read_per_leb<V: Volumes>(
    vols: &mut V,
    info: &VolumeInfo,
    limit: u64,
    leb_size: u64,
) -> (Vec<u8>, Vec<String>) {
    let len = usize::try_from(info.data_bytes.min(limit)).unwrap_or(0);
    let leb = usize::try_from(leb_size.max(1)).unwrap_or(usize::MAX);
    let mut out = vec![0u8; len];
    let mut errors = Vec::new();
    let mut end = len;
    for (i, chunk) in out.chunks_mut(leb).enumerate() {
        let base = i * leb;
        let mut off = 0;
        while off < chunk.len() {
            match vols.read(info.id, (base + off) as u64, &mut chunk[off..]) {
                Ok(0) => {
                    end = end.min(base + off);
                    break;
                }
                Ok(n) => off += n,
                Err(e) => {
                    chunk.fill(0);
                    errors.push(format!("LEB {i}: {e}"));
                    break;
                }
            }
        }
    }
    out.truncate(end);
    (out, errors)
}

impl<V: Volumes> Store<V> {
    /// Open the store: read and validate the inventory (falling back to its second copy,
    /// and then rewriting both), forget a previous set whose volumes are gone, then remove
    /// what no inventory references.
    pub fn open(mut vols: V, cfg: StoreConfig) -> Result<(Self, OpenReport), StoreError> {
        let geo = vols
            .geometry()
            .during(|| "reading the flash geometry".into())?;
        let (inventory, inventory_damaged) = read_inventory(&mut vols, &geo)?;
        let mut store = Self {
            vols,
            cfg,
            geo,
            inventory,
            txn: None,
        };
        // Repairs, each one inventory rewrite: a damaged copy (rewrite both), a previous
        // set whose volumes are gone (a cut while dropping it: forget it).
        if let Some(inv) = store.inventory.clone() {
            let mut healed = inv.clone();
            if let Some(prev) = &inv.previous {
                let missing = store.missing_volumes(prev)?;
                if !missing.is_empty() {
                    log::warn!(
                        "{}: previous set incomplete ({missing:?}); dropping it",
                        store.cfg.label
                    );
                    healed.previous = None;
                }
            }
            if healed != inv || inventory_damaged.is_some() {
                healed.generation += 1;
                store.replace_inventory(&healed)?;
            }
        }
        let removed = store.collect_garbage(true)?;
        Ok((
            store,
            OpenReport {
                removed,
                inventory_damaged,
            },
        ))
    }

    /// Read and validate the committed inventory without writing anything (no garbage
    /// collection): for test mode, where flash must stay untouched, and for diagnostics.
    /// `None` for a pristine card.
    pub fn inspect(vols: &mut V) -> Result<Option<Inventory>, StoreError> {
        let geo = vols
            .geometry()
            .during(|| "reading the flash geometry".into())?;
        Ok(read_inventory(vols, &geo)?.0)
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

    /// Remove `sb.*` volumes that the committed inventory does not reference, and staging
    /// volumes — except, with `keep_resumable`, the staging segment, whose written LEBs
    /// the next [`Self::begin`] of the same plan resumes from.
    /// Returns the removed names.
    pub(crate) fn collect_garbage(
        &mut self,
        keep_resumable: bool,
    ) -> Result<Vec<String>, StoreError> {
        let list = self
            .vols
            .list()
            .during(|| "listing volumes for garbage collection".into())?;
        let mut removed = Vec::new();
        for v in list {
            let referenced = |name: &str| {
                self.inventory
                    .as_ref()
                    .is_some_and(|inv| inv.referenced().any(|r| r == name))
            };
            let garbage = match layout::classify(&v.name) {
                VolumeClass::Inventory | VolumeClass::Foreign => false,
                VolumeClass::Artifact | VolumeClass::Segment => !referenced(&v.name),
                // The segment of an interrupted transaction: the next begin of the same
                // plan resumes it (another plan removes it).
                VolumeClass::StagingSegment => !keep_resumable,
                VolumeClass::Staging(_) | VolumeClass::StagingInventory | VolumeClass::Unknown => {
                    true
                }
            };
            if garbage {
                self.vols
                    .remove(v.id)
                    .during(|| format!("removing leftover volume \"{}\"", v.name))?;
                log::info!("{}: removed leftover volume \"{}\"", self.cfg.label, v.name);
                removed.push(v.name);
            }
        }
        Ok(removed)
    }

    /// A store of its own over a second handle on the same flash ([`Volumes::reopen`]),
    /// opened as [`Store::open`] opens one (garbage collection included): for the
    /// resident agent, which stages a new set while the package root runs.
    pub fn reopen(&self) -> Result<(Self, OpenReport), StoreError> {
        let vols = self
            .vols
            .reopen()
            .during(|| "opening the flash a second time".to_string())?;
        Store::open(vols, self.cfg.clone())
    }

    /// The committed inventory, or `None` for a pristine card.
    pub fn inventory(&self) -> Option<&Inventory> {
        self.inventory.as_ref()
    }

    /// The committed set's digest (what the card reports in Solicit), `None` if pristine.
    pub fn digest(&self) -> Option<Digest> {
        self.inventory.as_ref().map(|i| i.set.digest)
    }

    /// Does [`Store::finish`] hash each artifact as read back from the volume (and so
    /// check the stream too)? Then whoever feeds the store need not hash the stream.
    pub fn verifies_readback(&self) -> bool {
        self.cfg.verify_readback
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

    /// Each artifact of `set` with the id of the volume holding it, in plan order: what
    /// init needs to hand off (`/dev/ubiN_<id>` for the boot image; ubiblock or, in test
    /// mode, [`super::FileVolumes::blob_path`] for the packages). Fails with
    /// [`StoreError::SetDamaged`] if a volume is missing or incomplete.
    pub fn resolve(
        &mut self,
        set: &SetRecord,
    ) -> Result<Vec<(super::StoredArtifact, VolumeId)>, StoreError> {
        let list = self
            .vols
            .list()
            .during(|| "listing volumes to resolve a set".into())?;
        let mut out = Vec::with_capacity(set.artifacts.len());
        let mut missing = Vec::new();
        for a in &set.artifacts {
            match list.iter().find(|v| {
                v.name == a.volume
                    && !v.update_marker
                    && v.reserved_bytes >= a.offset + a.artifact.size
            }) {
                Some(v) => out.push((a.clone(), v.id)),
                None => missing.push(a.volume.clone()),
            }
        }
        if missing.is_empty() {
            Ok(out)
        } else {
            Err(StoreError::SetDamaged { missing })
        }
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
                    v.name == a.volume
                        && !v.update_marker
                        && v.reserved_bytes >= a.offset + a.artifact.size
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
                && hash_extent(
                    &mut self.vols,
                    info.id,
                    &info.name,
                    a.offset,
                    a.artifact.size,
                )? != a.artifact.sha256
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
    pub(crate) fn next_inventory(&self, record: SetRecord) -> Inventory {
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
            last_command: self.inventory.as_ref().and_then(|i| i.last_command),
        }
    }

    /// Check, without writing anything, whether `artifacts` + `cmdline` can be staged and
    /// committed while the committed set stays intact.
    pub fn check(
        &mut self,
        artifacts: &[ArtifactRef],
        cmdline: &str,
    ) -> Result<PlanCheck, StoreError> {
        Ok(self.check_layout(artifacts, cmdline)?.0)
    }

    /// Bytes of the extent at `offset` (of `size` bytes) of volume `id` that are on flash:
    /// its consecutive mapped LEBs from the first, capped at `size`.
    pub(crate) fn held_prefix(
        &mut self,
        id: VolumeId,
        offset: u64,
        size: u64,
    ) -> Result<u64, StoreError> {
        let leb = self.geo.leb_size;
        let first = offset / leb;
        let mut held = 0;
        for l in first..first + self.geo.lebs_for(size) {
            let lnum = u32::try_from(l).unwrap_or(u32::MAX);
            if !self
                .vols
                .is_mapped(id, lnum)
                .during(|| format!("checking LEB {lnum} of the staging segment"))?
            {
                break;
            }
            held = (held + leb).min(size);
        }
        Ok(held)
    }

    /// [`Self::check`], also returning the layout `begin` follows.
    pub(crate) fn check_layout(
        &mut self,
        artifacts: &[ArtifactRef],
        cmdline: &str,
    ) -> Result<(PlanCheck, Layout), StoreError> {
        let mut record = SetRecord::new(artifacts, cmdline).map_err(StoreError::Set)?;
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
        let cur_inv = self.inventory.clone();
        let cur = cur_inv.as_ref();
        let intact = |vol: &str, end: u64| {
            list.iter()
                .any(|v| v.name == vol && !v.update_marker && v.reserved_bytes >= end)
        };
        // Where each artifact of the plan already is (current or previous set): same bytes
        // (sha256 and size) in a segment, or in its own legacy volume.
        let mut located: Vec<Option<(String, u64)>> = record
            .artifacts
            .iter()
            .map(|s| {
                cur.and_then(|inv| {
                    inv.set
                        .artifacts
                        .iter()
                        .chain(inv.previous.iter().flat_map(|p| p.artifacts.iter()))
                        .find(|o| {
                            o.artifact.sha256 == s.artifact.sha256
                                && o.artifact.size == s.artifact.size
                                && (layout::is_segment(&o.volume) || o.volume == s.volume)
                                && intact(&o.volume, o.offset + o.artifact.size)
                        })
                        .map(|o| (o.volume.clone(), o.offset))
                })
            })
            .collect();
        // Compaction: keep the volumes this set references within MAX_SEGMENTS.
        let mut copy_src: Vec<Option<(String, u64)>> = vec![None; located.len()];
        let mut seg_needed = located.iter().any(Option::is_none);
        let mut containers: std::collections::BTreeMap<String, u64> = Default::default();
        for (l, s) in located.iter().zip(&record.artifacts) {
            if let Some((v, _)) = l {
                *containers.entry(v.clone()).or_default() += s.artifact.size;
            }
        }
        while containers.len() + usize::from(seg_needed) > MAX_SEGMENTS {
            let Some(victim) = containers
                .iter()
                .min_by_key(|(n, b)| (**b, (*n).clone()))
                .map(|(n, _)| n.clone())
            else {
                break;
            };
            containers.remove(&victim);
            for (l, c) in located.iter_mut().zip(copy_src.iter_mut()) {
                if l.as_ref().is_some_and(|(v, _)| *v == victim) {
                    *c = l.take();
                }
            }
            seg_needed = true;
        }
        // Extents of the segment: fetched artifacts in plan order, then copies; each at a
        // LEB boundary.
        let mut next = 0u64;
        let mut fetch_ext = Vec::new();
        let mut copies = Vec::new();
        let mut offsets = vec![0u64; located.len()];
        for (i, s) in record.artifacts.iter().enumerate() {
            if located[i].is_none() && copy_src[i].is_none() {
                offsets[i] = next * geo.leb_size;
                fetch_ext.push((s.artifact.clone(), offsets[i]));
                next += geo.lebs_for(s.artifact.size);
            }
        }
        for (i, s) in record.artifacts.iter().enumerate() {
            if let Some(src) = &copy_src[i] {
                offsets[i] = next * geo.leb_size;
                copies.push(Copy {
                    artifact: s.artifact.clone(),
                    offset: offsets[i],
                    source: src.clone(),
                });
                next += geo.lebs_for(s.artifact.size);
            }
        }
        let seg_lebs = if seg_needed { next.max(1) } else { 0 };
        // The staging segment is named by what it will hold, so that a restarted card
        // finds its own partial segment again and never resumes into another layout.
        let mut id = Sha256::new();
        id.update(b"shelfboot segment\0");
        id.update(record.digest.as_bytes());
        id.update(geo.leb_size.to_be_bytes());
        for (a, off) in &fetch_ext {
            id.update(a.sha256.as_bytes());
            id.update(a.size.to_be_bytes());
            id.update(off.to_be_bytes());
        }
        for c in &copies {
            id.update(b"copy");
            id.update(c.artifact.sha256.as_bytes());
            id.update(c.offset.to_be_bytes());
        }
        let staging = layout::staging_segment(&id.finalize().into());
        for (i, s) in record.artifacts.iter_mut().enumerate() {
            match &located[i] {
                Some((v, o)) => {
                    s.volume.clone_from(v);
                    s.offset = *o;
                }
                None => {
                    s.volume.clone_from(&staging);
                    s.offset = offsets[i];
                }
            }
        }
        let existing = list.iter().find(|v| v.name == staging).cloned();
        let mut present = Vec::new();
        let mut resumable = Vec::new();
        let mut partial = Vec::new();
        let mut fetch = Vec::new();
        for (i, s) in record.artifacts.iter().enumerate() {
            if located[i].is_some() {
                present.push(s.artifact.clone());
            }
        }
        for (a, off) in &fetch_ext {
            let held = match &existing {
                Some(v) if seg_needed => self.held_prefix(v.id, *off, a.size)?,
                _ => 0,
            };
            if held == a.size {
                resumable.push(a.clone());
            } else {
                if held > 0 {
                    partial.push((a.clone(), held));
                }
                fetch.push(a.clone());
            }
        }
        // Staging volumes of other plans (or of older versions) that begin will remove.
        let reclaim: Vec<&VolumeInfo> = list
            .iter()
            .filter(|v| {
                v.name != staging
                    && matches!(
                        layout::classify(&v.name),
                        VolumeClass::Staging(_)
                            | VolumeClass::StagingSegment
                            | VolumeClass::StagingInventory
                    )
            })
            .collect();
        let reclaim_lebs: u64 = reclaim.iter().map(|v| geo.lebs_for(v.reserved_bytes)).sum();
        let free_lebs = geo.free_lebs + reclaim_lebs;
        let up_to_date = cur.is_some_and(|c| c.set.digest == record.digest) && !seg_needed;
        let digest = record.digest;
        // Room for the new inventory, and afterwards for rewriting it (boot counting)
        // while the current one still exists: the larger of the two.
        let cur_inv_lebs = list
            .iter()
            .find(|v| v.name == layout::INVENTORY)
            .map_or(0, |v| geo.lebs_for(v.reserved_bytes));
        let mut probe = record.clone();
        for s in &mut probe.artifacts {
            if s.volume == staging {
                s.volume = layout::segment(u64::MAX);
            }
        }
        let inv_lebs = self
            .inventory_lebs(&self.next_inventory(probe))?
            .max(cur_inv_lebs);
        let seg_new = seg_needed && existing.is_none();
        let seg_cost = if seg_new { seg_lebs } else { 0 };
        // An up-to-date plan writes nothing; otherwise the new inventory is staged too.
        let needed_lebs = if up_to_date { 0 } else { seg_cost + inv_lebs };
        // Volumes only the previous set uses (and the plan does not reuse or copy from)
        // may be dropped.
        let prev_only: Vec<&VolumeInfo> = list
            .iter()
            .filter(|v| {
                cur.is_some_and(|c| {
                    c.previous.as_ref().is_some_and(|p| p.uses(&v.name)) && !c.set.uses(&v.name)
                }) && !record.uses(&v.name)
                    && !copies.iter().any(|c| c.source.0 == v.name)
            })
            .collect();
        let prev_lebs: u64 = prev_only
            .iter()
            .map(|v| geo.lebs_for(v.reserved_bytes))
            .sum();
        let drops_previous = needed_lebs > free_lebs;
        if needed_lebs > free_lebs + prev_lebs {
            return Err(StoreError::NoSpace {
                needed: needed_lebs * geo.leb_size,
                available: (free_lebs + prev_lebs) * geo.leb_size,
            });
        }
        let peak = (list.len() - reclaim.len()) as u64 + u64::from(seg_new) + 1
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
        let check = PlanCheck {
            digest,
            up_to_date,
            present,
            resumable,
            fetch,
            partial,
            copies: copies.iter().map(|c| c.artifact.clone()).collect(),
            needed: needed_lebs * geo.leb_size,
            free: free_lebs * geo.leb_size,
            drops_previous,
        };
        let lay = Layout {
            record,
            fetch: fetch_ext,
            copies,
            seg_lebs,
            staging,
        };
        Ok((check, lay))
    }

    /// Write `inv` into a fresh `sb.new.inventory` and read it back. Returns its id.
    pub(crate) fn stage_inventory(&mut self, inv: &Inventory) -> Result<VolumeId, StoreError> {
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
        match inventory::decode(&back, self.geo.leb_size) {
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
}
