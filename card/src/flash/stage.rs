//! Transactions: streaming artifacts into one staging segment, and the atomic commit.
//!
//! [`Store::begin`] opens a transaction for a set. Everything it writes goes into ONE new
//! *segment*: a dynamic volume `sb.new.seg.<16 hex>` in which each new artifact has its
//! own extent starting at a LEB boundary (the plan of extents is [`super::store::Layout`]).
//! Each artifact to fetch is then streamed with [`Store::start`], [`Store::write`]
//! (sequential, as bytes arrive; the declared size enforced) and [`Store::finish`] (size
//! checked, last LEB written, sha256 checked). Several artifacts may be open at once.
//!
//! Bytes are collected into a buffer of one LEB per open artifact and written with
//! `UBI_IOCEBCH`, which replaces a LEB atomically: a power cut loses at most the LEB being
//! changed. The staging segment survives restarts (and [`Store::suspend`]); `begin` of
//! the same plan finds the mapped LEBs (`UBI_IOCEBISMAP`) of each extent and resumes each
//! torn artifact after its written prefix ([`Store::written`] says where), re-hashes
//! complete ones and adopts them. sha256 is always checked over the whole artifact before
//! it may be committed.
//!
//! sha256 is computed once per artifact here, as the stream goes: with `verify_readback`
//! (the default) over the bytes read back from the segment, each LEB right after it was
//! changed, which covers both what arrived and what the flash holds; without it, over the
//! bytes as written. Either way a resumed prefix is re-read from flash into the hash
//! first, and [`Store::finish`] only writes the last LEB (read back too) and compares: the
//! read-back overlaps the transfer instead of following it.
//!
//! Compaction copies (artifacts of old, sparsely used segments, see
//! [`super::store::MAX_SEGMENTS`]) are copied from flash into the segment by `begin`.
//!
//! [`Store::commit`] renames the segment to `sb.seg.<generation>` and the new inventory onto
//! `sb.inventory` in ONE `UBI_IOCRNVOL` of two entries; [`Store::abort`] removes the staging
//! volumes. The transaction holds no borrow of the store, so a sans-IO agent can keep it
//! open across network events. Nothing here is durable until `commit`.

use sha2::{Digest as _, Sha256};

use super::artifact::{ArtifactRef, Digest};
use super::error::{Ctx, StoreError};
use super::inventory::{Inventory, SetRecord};
use super::layout;
use super::store::{CHUNK, PlanCheck, Store, hash_extent, hash_extent_into};
use super::volumes::{Rename, VolumeError, VolumeId, Volumes};

#[derive(Debug)]
pub(crate) enum Entry {
    /// Not being written; `held` bytes (whole LEBs) of it are on flash from an earlier
    /// attempt and writing resumes after them.
    Pending {
        held: u64,
    },
    Writing {
        /// Bytes received but not yet written (less than one LEB, or the tail).
        buf: Vec<u8>,
        /// Bytes received in all (on flash + in `buf`).
        written: u64,
        /// Hash of the bytes on flash so far (read back after each LEB change) or, without
        /// `verify_readback`, of the bytes as written.
        hasher: Sha256,
    },
    Staged,
}

impl Entry {
    fn state(&self) -> &'static str {
        match self {
            Self::Pending { .. } => "not started",
            Self::Writing { .. } => "being written",
            Self::Staged => "already staged",
        }
    }
}

#[derive(Debug)]
pub(crate) struct Item {
    pub(crate) artifact: ArtifactRef,
    /// Offset of its extent in the segment (LEB-aligned).
    pub(crate) offset: u64,
    pub(crate) entry: Entry,
}

#[derive(Debug)]
pub(crate) struct Txn {
    /// The set, new extents located in the staging segment (renamed at commit).
    record: SetRecord,
    /// The staging segment: (id, name), if anything is written.
    segment: Option<(VolumeId, String)>,
    /// Artifacts written into the segment (fetched or copied), in segment order.
    items: Vec<Item>,
}

impl<V: Volumes> Store<V> {
    /// Open a transaction for the set `artifacts` + `cmdline`: [`Self::check`] it, drop the
    /// previous set if the check says so, remove leftover staging volumes of other plans,
    /// create (or find again) the staging segment, adopt complete artifacts of an
    /// interrupted run of the same plan (re-hashed), note how much of each torn one is on
    /// flash (`partial`), copy the compaction copies, and return what must be fetched.
    pub fn begin(
        &mut self,
        artifacts: &[ArtifactRef],
        cmdline: &str,
    ) -> Result<PlanCheck, StoreError> {
        if self.txn.is_some() {
            return Err(StoreError::TransactionOpen);
        }
        let (mut check, lay) = self.check_layout(artifacts, cmdline)?;
        if check.drops_previous {
            let keep: Vec<String> = lay
                .record
                .artifacts
                .iter()
                .map(|s| s.volume.clone())
                .chain(lay.copies.iter().map(|c| c.source.0.clone()))
                .collect();
            self.drop_previous(&keep)?;
        }
        let list = self
            .vols
            .list()
            .during(|| "listing leftover staging volumes".into())?;
        for v in &list {
            let ours = v.name == lay.staging;
            let staging = matches!(
                layout::classify(&v.name),
                layout::VolumeClass::Staging(_)
                    | layout::VolumeClass::StagingSegment
                    | layout::VolumeClass::StagingInventory
            );
            if staging && !ours {
                self.vols
                    .remove(v.id)
                    .during(|| format!("removing leftover staging volume \"{}\"", v.name))?;
            }
        }
        let leb = self.geo.leb_size;
        let segment = if lay.seg_lebs == 0 {
            None
        } else {
            let id = match list.iter().find(|v| v.name == lay.staging) {
                Some(v) => v.id,
                None => self
                    .vols
                    .create_dynamic(&lay.staging, lay.seg_lebs * leb)
                    .during(|| format!("creating the staging segment \"{}\"", lay.staging))?,
            };
            Some((id, lay.staging.clone()))
        };
        check.fetch.clear();
        check.resumable.clear();
        check.partial.clear();
        let mut items = Vec::new();
        for (a, offset) in &lay.fetch {
            let entry = match &segment {
                Some((id, name)) => {
                    let held = self.held_prefix(*id, *offset, a.size)?;
                    if held == a.size
                        && hash_extent(&mut self.vols, *id, name, *offset, a.size)? == a.sha256
                    {
                        log::info!(
                            "{}: resuming with {} {} already staged",
                            self.cfg.label,
                            a.name,
                            a.version
                        );
                        check.resumable.push(a.clone());
                        Entry::Staged
                    } else {
                        // A complete extent that does not hash right is written again.
                        let held = if held == a.size { 0 } else { held };
                        if held > 0 {
                            log::info!(
                                "{}: resuming {} {} after the {held} of {} bytes on flash",
                                self.cfg.label,
                                a.name,
                                a.version,
                                a.size
                            );
                            check.partial.push((a.clone(), held));
                        }
                        check.fetch.push(a.clone());
                        Entry::Pending { held }
                    }
                }
                None => Entry::Pending { held: 0 },
            };
            items.push(Item {
                artifact: a.clone(),
                offset: *offset,
                entry,
            });
        }
        if let Some((id, name)) = &segment {
            for c in &lay.copies {
                self.copy_into_segment(*id, name, c)?;
                items.push(Item {
                    artifact: c.artifact.clone(),
                    offset: c.offset,
                    entry: Entry::Staged,
                });
            }
        }
        self.txn = Some(Txn {
            record: lay.record,
            segment,
            items,
        });
        Ok(check)
    }

    /// Copy a compaction copy from its old location into the segment (unless an earlier
    /// run did already), then check its sha256 as read from the segment.
    fn copy_into_segment(
        &mut self,
        seg: VolumeId,
        seg_name: &str,
        c: &super::store::Copy,
    ) -> Result<(), StoreError> {
        let a = &c.artifact;
        if self.held_prefix(seg, c.offset, a.size)? == a.size
            && hash_extent(&mut self.vols, seg, seg_name, c.offset, a.size)? == a.sha256
        {
            return Ok(());
        }
        let (src_name, src_off) = &c.source;
        let during = || format!("copying {} from \"{src_name}\" into \"{seg_name}\"", a.name);
        let src = self
            .volume_id(src_name)?
            .ok_or_else(|| StoreError::SetDamaged {
                missing: vec![src_name.clone()],
            })?;
        let leb = self.geo.leb_size;
        let mut buf = vec![0u8; usize::try_from(leb).unwrap_or(CHUNK)];
        let mut done = 0u64;
        while done < a.size {
            let n = (a.size - done).min(leb);
            let part = &mut buf[..usize::try_from(n).unwrap_or(0)];
            let mut got = 0;
            while got < part.len() {
                let r = self
                    .vols
                    .read(src, src_off + done + got as u64, &mut part[got..])
                    .during(during)?;
                if r == 0 {
                    return Err(StoreError::SetDamaged {
                        missing: vec![src_name.clone()],
                    });
                }
                got += r;
            }
            let lnum = u32::try_from((c.offset + done) / leb).unwrap_or(u32::MAX);
            self.vols.change_leb(seg, lnum, part).during(during)?;
            done += n;
        }
        let actual = hash_extent(&mut self.vols, seg, seg_name, c.offset, a.size)?;
        if actual != a.sha256 {
            return Err(StoreError::DigestMismatch {
                name: a.name.clone(),
                what: "as copied on flash",
                expected: Box::new(a.sha256),
                actual: Box::new(actual),
            });
        }
        Ok(())
    }

    /// Free the volumes only the previous set uses (and `keep` does not name), then rewrite
    /// the inventory without `previous`. A cut in between leaves a `previous` with missing
    /// volumes, which [`Store::open`] drops.
    fn drop_previous(&mut self, keep: &[String]) -> Result<(), StoreError> {
        let Some(inv) = self.inventory.clone() else {
            return Ok(());
        };
        let Some(prev) = &inv.previous else {
            return Ok(());
        };
        log::warn!(
            "{}: dropping the previous set to make room; no local rollback",
            self.cfg.label
        );
        let mut gone: Vec<&str> = Vec::new();
        for s in &prev.artifacts {
            if inv.set.uses(&s.volume) || keep.contains(&s.volume) || gone.contains(&&*s.volume) {
                continue;
            }
            if let Some(id) = self.volume_id(&s.volume)? {
                self.vols
                    .remove(id)
                    .during(|| format!("removing \"{}\" of the previous set", s.volume))?;
            }
            gone.push(&s.volume);
        }
        let mut without = inv.clone();
        without.previous = None;
        without.generation += 1;
        self.replace_inventory(&without)
    }

    fn item(&mut self, a: &ArtifactRef) -> Result<(&mut Item, VolumeId, String), StoreError> {
        find_item(&mut self.txn, a)
    }

    /// Start (or resume) streaming artifact `a` into its extent of the staging segment.
    /// Afterwards [`Self::written`] is where the stream must continue: 0, or the bytes an
    /// earlier attempt left on flash.
    pub fn start(&mut self, a: &ArtifactRef) -> Result<(), StoreError> {
        let (item, seg, name) = self.item(a)?;
        let Entry::Pending { held } = item.entry else {
            return Err(StoreError::WrongState {
                name: a.name.clone(),
                state: item.entry.state(),
            });
        };
        let offset = item.offset;
        // The resumed prefix is re-read from flash into the hash.
        let mut hasher = Sha256::new();
        hash_extent_into(&mut self.vols, seg, &name, offset, held, &mut hasher)?;
        let (item, _, _) = self.item(a)?;
        item.entry = Entry::Writing {
            buf: Vec::new(),
            written: held,
            hasher,
        };
        Ok(())
    }

    /// Write the whole LEBs of `a`'s buffer followed by `more` (with `all`, the tail too)
    /// into the segment, in one run; with `verify_readback`, read the run back into the
    /// artifact's hash. What is left (less than a LEB) stays buffered. With nothing
    /// buffered the run is written straight from `more`: the bytes are not copied.
    /// `written` already counts `more`.
    fn flush(&mut self, a: &ArtifactRef, all: bool, more: &[u8]) -> Result<(), StoreError> {
        let leb = self.geo.leb_size;
        let verify = self.cfg.verify_readback;
        let Self { vols, txn, .. } = self;
        let (item, seg, name) = find_item(txn, a)?;
        let offset = item.offset;
        let Entry::Writing {
            buf,
            written,
            hasher,
        } = &mut item.entry
        else {
            return Ok(());
        };
        let leb_bytes = usize::try_from(leb).unwrap_or(usize::MAX);
        let flushed = *written - buf.len() as u64 - more.len() as u64;
        let direct = buf.is_empty();
        if !direct {
            buf.extend_from_slice(more);
        }
        let src: &[u8] = if direct { more } else { buf };
        let n = if all {
            src.len()
        } else {
            src.len() - src.len() % leb_bytes
        };
        let mut result = Ok(());
        if n > 0 {
            let lnum = u32::try_from((offset + flushed) / leb).unwrap_or(u32::MAX);
            if let Err(e) = vols.change_lebs(seg, lnum, &src[..n]) {
                let during = format!(
                    "writing artifact {} into \"{name}\"; start it again",
                    a.name
                );
                result = Err((StoreError::Volume { during, source: e }, flushed));
            } else if verify
                && let Err(e) =
                    hash_extent_into(vols, seg, &name, offset + flushed, n as u64, hasher)
            {
                // The hash is whole only up to the run: write it again.
                result = Err((e, flushed));
            }
        }
        match result {
            Ok(()) => {
                if direct {
                    buf.extend_from_slice(&more[n..]);
                } else {
                    buf.drain(..n);
                }
                Ok(())
            }
            Err((e, held)) => {
                // Each LEB of the run holds its old content or the new one (atomic changes);
                // everything before the run is on flash. Resume after it.
                item.entry = Entry::Pending { held };
                Err(e)
            }
        }
    }

    /// Append the next bytes of artifact `a` (sequentially, as they arrive). If a LEB
    /// change fails, the artifact goes back to "not started": call [`Self::start`] again,
    /// which resumes after the LEBs already written.
    pub fn write(&mut self, a: &ArtifactRef, bytes: &[u8]) -> Result<(), StoreError> {
        let verify = self.cfg.verify_readback;
        let (item, _, _) = self.item(a)?;
        let size = item.artifact.size;
        let Entry::Writing {
            written, hasher, ..
        } = &mut item.entry
        else {
            return Err(StoreError::WrongState {
                name: a.name.clone(),
                state: item.entry.state(),
            });
        };
        if *written + bytes.len() as u64 > size {
            return Err(StoreError::TooLong {
                name: a.name.clone(),
                size,
                offset: size.max(*written),
            });
        }
        *written += bytes.len() as u64;
        if !verify {
            hasher.update(bytes);
        }
        self.flush(a, false, bytes)
    }

    /// Bytes of `a` held so far (the offset the next [`Self::write`] must start at).
    pub fn written(&mut self, a: &ArtifactRef) -> Result<u64, StoreError> {
        let (item, _, _) = self.item(a)?;
        Ok(match &item.entry {
            Entry::Pending { held } => *held,
            Entry::Writing { written, .. } => *written,
            Entry::Staged => item.artifact.size,
        })
    }

    /// sha256 of the bytes of `a` already held (see [`Self::written`]), read back from
    /// flash: what a receiver that resumes after them must start from.
    pub fn held_hasher(&mut self, a: &ArtifactRef) -> Result<Sha256, StoreError> {
        let held = self.written(a)?;
        let (item, seg, name) = self.item(a)?;
        let offset = item.offset;
        let mut h = Sha256::new();
        hash_extent_into(&mut self.vols, seg, &name, offset, held, &mut h)?;
        Ok(h)
    }

    /// Finish artifact `a`: check size, write its last LEB, then check sha256 of the
    /// extent read back (or, without `verify_readback`, of the bytes as written). On a
    /// digest mismatch the artifact goes back to "not started" from byte 0.
    pub fn finish(&mut self, a: &ArtifactRef) -> Result<(), StoreError> {
        let verify = self.cfg.verify_readback;
        let (item, _, _) = self.item(a)?;
        let art = item.artifact.clone();
        let Entry::Writing { written, .. } = &item.entry else {
            return Err(StoreError::WrongState {
                name: a.name.clone(),
                state: item.entry.state(),
            });
        };
        if *written != art.size {
            return Err(StoreError::TooShort {
                name: art.name,
                size: art.size,
                got: *written,
            });
        }
        self.flush(a, true, &[])?;
        let (item, _, _) = self.item(a)?;
        let Entry::Writing { hasher, .. } =
            std::mem::replace(&mut item.entry, Entry::Pending { held: 0 })
        else {
            return Ok(());
        };
        let actual = Digest(hasher.finalize().into());
        let what = if verify { "as read back" } else { "as written" };
        if actual != art.sha256 {
            return Err(StoreError::DigestMismatch {
                name: art.name,
                what,
                expected: Box::new(art.sha256),
                actual: Box::new(actual),
            });
        }
        let (item, _, _) = self.item(a)?;
        item.entry = Entry::Staged;
        Ok(())
    }

    /// Stream a whole artifact from `reader` (start, write in 64 KiB chunks, finish).
    /// A resumed artifact is read from `reader` after the bytes already held.
    pub fn stage(
        &mut self,
        a: &ArtifactRef,
        mut reader: impl std::io::Read,
    ) -> Result<(), StoreError> {
        self.start(a)?;
        let mut skip = self.written(a)?;
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
            let drop = usize::try_from(skip).unwrap_or(usize::MAX).min(n);
            skip -= drop as u64;
            if drop < n {
                self.write(a, &buf[drop..n])?;
            }
        }
        self.finish(a)
    }

    /// End the transaction but keep what it wrote: the staging segment stays on flash, and
    /// the next [`Self::begin`] of the same plan resumes it (another plan removes it). For
    /// a card that loses its master mid-transfer and will ask again.
    pub fn suspend(&mut self) {
        self.txn = None;
    }

    /// Drop the transaction and remove its staging volumes.
    pub fn abort(&mut self) -> Result<(), StoreError> {
        if let Some(txn) = self.txn.take() {
            drop(txn);
            self.collect_garbage(false)?;
        }
        Ok(())
    }

    /// Commit the transaction: the staging segment (renamed to `sb.seg.<generation>`) and
    /// the new inventory in one atomic rename of two entries. Returns the new inventory.
    pub fn commit(&mut self) -> Result<Inventory, StoreError> {
        let txn = self.txn.as_ref().ok_or(StoreError::NoTransaction)?;
        let missing: Vec<String> = txn
            .items
            .iter()
            .filter(|i| !matches!(i.entry, Entry::Staged))
            .map(|i| i.artifact.name.clone())
            .collect();
        if !missing.is_empty() {
            return Err(StoreError::Incomplete { missing });
        }
        if txn.segment.is_none()
            && let Some(cur) = &self.inventory
            && cur.set.digest == txn.record.digest
        {
            // The plan is the committed set: nothing to do, and in particular the boot
            // counter is not reset by re-committing a failing set.
            let cur = cur.clone();
            self.txn = None;
            return Ok(cur);
        }
        let mut inv = self.next_inventory(txn.record.clone());
        let mut renames = Vec::new();
        if let Some((id, staging)) = &txn.segment {
            let committed = layout::segment(inv.generation);
            for s in &mut inv.set.artifacts {
                if s.volume == *staging {
                    s.volume.clone_from(&committed);
                }
            }
            renames.push(Rename {
                id: *id,
                new_name: committed,
            });
        }
        let inv_id = self.stage_inventory(&inv)?;
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
            "{}: committed set {} (generation {}, {} artifacts)",
            self.cfg.label,
            inv.set.digest,
            inv.generation,
            inv.set.artifacts.len()
        );
        self.txn = None;
        self.inventory = Some(inv.clone());
        self.collect_garbage(false)?;
        Ok(inv)
    }
}

fn find_item<'t>(
    txn: &'t mut Option<Txn>,
    a: &ArtifactRef,
) -> Result<(&'t mut Item, VolumeId, String), StoreError> {
    let txn = txn.as_mut().ok_or(StoreError::NoTransaction)?;
    let not_in_plan = || StoreError::NotInPlan {
        name: a.name.clone(),
        version: a.version.clone(),
    };
    let (seg, name) = txn.segment.clone().ok_or_else(not_in_plan)?;
    let item = txn
        .items
        .iter_mut()
        .find(|x| x.artifact == *a)
        .ok_or_else(not_in_plan)?;
    Ok((item, seg, name))
}
