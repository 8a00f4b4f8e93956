//! Transactions: streaming artifacts into staging volumes and the atomic commit.
//!
//! [`Store::begin`] opens a transaction for a set; each artifact to fetch is then streamed
//! with [`Store::start`], [`Store::write`] (sequential, as bytes arrive; the declared size
//! enforced) and [`Store::finish`] (size checked, update completed, sha256 checked). Several
//! artifacts may be open at once.
//!
//! sha256 is computed once per artifact here: with `verify_readback` (the default) over
//! the bytes read back from the volume after the update, which covers both what arrived
//! and what the flash holds, so nothing is hashed while writing (the receiver that feeds
//! the store already hashed the stream once); without it, over the bytes as written.
//!
//! [`Store::commit`] renames all staged volumes and the new inventory in one
//! `UBI_IOCRNVOL`; [`Store::abort`] removes the staging volumes.
//!
//! The transaction holds writers (for UBI, open file descriptors) but no borrow of the
//! store, so a sans-IO agent can keep it open across network events. Nothing here is
//! durable until `commit`; an interrupted transaction is garbage at the next open.

use sha2::{Digest as _, Sha256};

use super::artifact::{ArtifactRef, Digest};
use super::error::{Ctx, StoreError};
use super::inventory::{Inventory, SetRecord};
use super::layout;
use super::store::{CHUNK, PlanCheck, Store, hash_volume};
use super::volumes::{Rename, UBI_MAX_RNVOL, VolumeError, VolumeId, VolumeWriter, Volumes};

#[derive(Debug)]
pub(crate) enum Entry<W> {
    Pending,
    Writing {
        id: VolumeId,
        writer: W,
        /// Hash of the bytes as written; only without read-back (which hashes instead).
        hasher: Option<Sha256>,
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
pub(crate) struct Txn<W> {
    record: SetRecord,
    /// (artifact, committed volume name, state), for artifacts to fetch.
    fetch: Vec<(ArtifactRef, String, Entry<W>)>,
}

impl<V: Volumes> Store<V> {
    /// Open a transaction for the set `artifacts` + `cmdline`: [`Self::check`] it, drop the
    /// previous set if the check says so, adopt or remove leftover staging volumes, and
    /// return what must be fetched (`fetch`) and what was resumed (`resumable`).
    pub fn begin(
        &mut self,
        artifacts: &[ArtifactRef],
        cmdline: &str,
    ) -> Result<PlanCheck, StoreError> {
        if self.txn.is_some() {
            return Err(StoreError::TransactionOpen);
        }
        let mut check = self.check(artifacts, cmdline)?;
        let record = SetRecord::new(artifacts, cmdline).map_err(StoreError::Set)?;
        if check.drops_previous {
            self.drop_previous(&record)?;
        }
        // Leftover staging volumes: adopt the resumable ones whose bytes hash right,
        // remove all others.
        let list = self
            .vols
            .list()
            .during(|| "listing leftover staging volumes".into())?;
        let mut adopted: Vec<(ArtifactRef, VolumeId)> = Vec::new();
        for v in list {
            if !matches!(layout::classify(&v.name), layout::VolumeClass::Staging(_)) {
                continue;
            }
            let candidate = check.resumable.iter().find(|a| {
                layout::artifact_volume(a).is_ok_and(|n| layout::staging_of(&n) == v.name)
            });
            let keep = match candidate {
                Some(a) if !v.update_marker => {
                    hash_volume(&mut self.vols, v.id, &v.name, a.size)? == a.sha256
                }
                _ => false,
            };
            match candidate {
                Some(a) if keep => {
                    log::info!(
                        "{}: resuming with {} {} already staged",
                        self.cfg.label,
                        a.name,
                        a.version
                    );
                    adopted.push((a.clone(), v.id));
                }
                _ => self
                    .vols
                    .remove(v.id)
                    .during(|| format!("removing leftover staging volume \"{}\"", v.name))?,
            }
        }
        let mut fetch = Vec::new();
        check.fetch.clear();
        check.resumable.clear();
        for s in &record.artifacts {
            if check.present.contains(&s.artifact) {
                continue;
            }
            let entry = match adopted.iter().find(|(a, _)| *a == s.artifact) {
                Some((a, id)) => {
                    check.resumable.push(a.clone());
                    Entry::Staged { id: *id }
                }
                None => {
                    check.fetch.push(s.artifact.clone());
                    Entry::Pending
                }
            };
            fetch.push((s.artifact.clone(), s.volume.clone(), entry));
        }
        self.txn = Some(Txn { record, fetch });
        Ok(check)
    }

    /// Free the volumes only the previous set uses (and `next` does not), then rewrite the
    /// inventory without `previous`. A cut in between leaves a `previous` with missing
    /// volumes, which [`Store::open`] drops.
    fn drop_previous(&mut self, next: &SetRecord) -> Result<(), StoreError> {
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
        for s in &prev.artifacts {
            if inv.set.uses(&s.volume) || next.uses(&s.volume) {
                continue;
            }
            if let Some(id) = self.volume_id(&s.volume)? {
                self.vols
                    .remove(id)
                    .during(|| format!("removing \"{}\" of the previous set", s.volume))?;
            }
        }
        let mut without = inv.clone();
        without.previous = None;
        without.generation += 1;
        self.replace_inventory(&without)
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
        let hasher = (!self.cfg.verify_readback).then(Sha256::new);
        let (_, _, entry) = self.entry(a)?;
        *entry = Entry::Writing {
            id,
            writer,
            hasher,
            written: 0,
        };
        Ok(())
    }

    /// Append the next bytes of artifact `a` (sequentially, as they arrive). If the volume
    /// write fails, the artifact goes back to "not started": call [`Self::start`] again.
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
        if let Err(e) = writer.write(buf) {
            // The volume may hold part of `buf`: this stream cannot continue. Drop the
            // writer; `start` removes the partial volume and begins again.
            let during = format!(
                "writing artifact {} into \"{}\"; start it again",
                a.name,
                layout::staging_of(vol)
            );
            *entry = Entry::Pending;
            return Err(StoreError::Volume { during, source: e });
        }
        if let Some(h) = hasher {
            h.update(buf);
        }
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

    /// Finish artifact `a`: check size, complete the update, then check sha256 of the
    /// volume read back (or, without `verify_readback`, of the bytes as written). On any
    /// failure after the size check (digest mismatch, flash error) the
    /// artifact goes back to "not started" and can be started again.
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
        let (actual, what): (Digest, _) = match hasher {
            Some(h) if !verify => (Digest(h.finalize().into()), "as written"),
            _ => (
                hash_volume(&mut self.vols, id, &staging, art.size)?,
                "as read back",
            ),
        };
        if actual != art.sha256 {
            self.vols.remove(id).during(during)?;
            return Err(StoreError::DigestMismatch {
                name: art.name,
                what,
                expected: Box::new(art.sha256),
                actual: Box::new(actual),
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
            self.collect_garbage(false)?;
        }
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
        if renames.is_empty()
            && let Some(cur) = &self.inventory
            && cur.set.digest == txn.record.digest
        {
            // The plan is the committed set: nothing to do, and in particular the boot
            // counter is not reset by re-committing a failing set.
            let cur = cur.clone();
            self.txn = None;
            return Ok(cur);
        }
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
