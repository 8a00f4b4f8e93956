//! Boot counting and rollback.
//!
//! Every boot of the committed set goes through [`Store::begin_boot`] *before* the hand-off
//! (kexec or switch_root): it increments the set's attempt counter and persists it (one
//! inventory write: stage `sb.new.inventory`, rename onto `sb.inventory`). When the booted
//! system reaches Ready, [`Store::mark_ready`] resets the counter. A set whose counter
//! already shows K = [`super::StoreConfig::max_attempts`] boots without Ready is not booted
//! again: the store rolls back to the previous set (another single-rename inventory swap)
//! and boots that. A committed set with a missing volume is rolled back at once.
//!
//! Rollback keeps only the set rolled back to; the failed set's digest is kept in
//! `rolled_back_from` for the master, and its own volumes become garbage. With no intact
//! previous set, an exhausted set is booted anyway (there is nothing better) and the
//! decision says so.

use super::artifact::Digest;
use super::inventory::{Inventory, SetRecord};
use super::store::{Store, StoreError};
use super::volumes::Volumes;

/// What to boot, decided by [`Store::begin_boot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootDecision {
    /// Boot the committed set; this is attempt `attempt` (1 = first since Ready/commit).
    Boot {
        /// The set.
        set: SetRecord,
        /// Attempt number, persisted.
        attempt: u32,
    },
    /// The committed set failed (K boots without Ready, or damaged); rolled back to the
    /// previous set, which is now committed. Boot it.
    RolledBack {
        /// The set now committed.
        set: SetRecord,
        /// Digest of the abandoned set.
        from: Digest,
        /// Why.
        reason: RollbackReason,
    },
    /// The set used up its attempts but there is no intact previous set: booting it anyway.
    Exhausted {
        /// The set.
        set: SetRecord,
        /// Attempt number, persisted.
        attempt: u32,
    },
}

impl BootDecision {
    /// The set to hand off to.
    pub fn set(&self) -> &SetRecord {
        match self {
            Self::Boot { set, .. } | Self::RolledBack { set, .. } | Self::Exhausted { set, .. } => {
                set
            }
        }
    }
}

/// Why a set was rolled back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RollbackReason {
    /// It was booted K times without reaching Ready.
    Attempts(u32),
    /// Volumes of it are missing or incomplete.
    Damaged(Vec<String>),
    /// The master (or an operator) asked for it.
    Requested,
}

impl<V: Volumes> Store<V> {
    /// Decide what to boot and persist the attempt, before handing off.
    pub fn begin_boot(&mut self) -> Result<BootDecision, StoreError> {
        let inv = self.inventory.clone().ok_or(StoreError::NothingCommitted)?;
        let damaged = self.missing_volumes(&inv.set)?;
        let prev_ok = match &inv.previous {
            Some(p) => self.missing_volumes(p)?.is_empty(),
            None => false,
        };
        let reason = if !damaged.is_empty() {
            if !prev_ok {
                return Err(StoreError::SetDamaged { missing: damaged });
            }
            Some(RollbackReason::Damaged(damaged))
        } else if inv.attempts >= self.cfg.max_attempts && prev_ok {
            Some(RollbackReason::Attempts(inv.attempts))
        } else {
            None
        };
        if let Some(reason) = reason {
            let (set, from) = self.roll_back(&inv, 1)?;
            log::warn!(
                "flash: set {} rolled back to {} ({reason:?})",
                from,
                set.digest
            );
            return Ok(BootDecision::RolledBack { set, from, reason });
        }
        let mut next = inv.clone();
        next.attempts = inv.attempts.saturating_add(1);
        next.generation += 1;
        self.replace_inventory(&next)?;
        let attempt = next.attempts;
        if attempt > self.cfg.max_attempts {
            log::warn!(
                "flash: set used {attempt} attempts and there is no previous set; booting it anyway"
            );
            Ok(BootDecision::Exhausted {
                set: next.set,
                attempt,
            })
        } else {
            Ok(BootDecision::Boot {
                set: next.set,
                attempt,
            })
        }
    }

    /// The booted set reached Ready: reset its attempt counter (no write if already 0).
    pub fn mark_ready(&mut self) -> Result<(), StoreError> {
        let inv = self.inventory.clone().ok_or(StoreError::NothingCommitted)?;
        if inv.attempts == 0 {
            return Ok(());
        }
        let mut next = inv;
        next.attempts = 0;
        next.generation += 1;
        self.replace_inventory(&next)
    }

    /// Roll back to the previous set now (on the master's order). Its attempt counter
    /// starts at 0; call [`Self::begin_boot`] before booting it as usual.
    pub fn rollback(&mut self) -> Result<SetRecord, StoreError> {
        let inv = self.inventory.clone().ok_or(StoreError::NothingCommitted)?;
        match &inv.previous {
            Some(p) if self.missing_volumes(p)?.is_empty() => {}
            _ => return Err(StoreError::NoPrevious),
        }
        let (set, _) = self.roll_back(&inv, 0)?;
        Ok(set)
    }

    /// Make `inv.previous` the committed set with `attempts`, then drop the failed set's
    /// volumes. Caller checked that the previous set is intact.
    fn roll_back(
        &mut self,
        inv: &Inventory,
        attempts: u32,
    ) -> Result<(SetRecord, Digest), StoreError> {
        let set = inv.previous.clone().ok_or(StoreError::NoPrevious)?;
        let next = Inventory {
            generation: inv.generation + 1,
            set: set.clone(),
            attempts,
            previous: None,
            rolled_back_from: Some(inv.set.digest),
            last_command: inv.last_command,
        };
        self.replace_inventory(&next)?;
        self.collect_garbage(true)?;
        Ok((set, inv.set.digest))
    }

    /// Roll back to the previous set while the failed set still runs (its health check
    /// failed after the hand-off): the inventory swap only. The failed set's volumes are
    /// in use (mounted), so they are left for the garbage collection of the next
    /// [`Store::open`]. Refused without an intact previous set.
    pub fn rollback_running(&mut self) -> Result<SetRecord, StoreError> {
        let inv = self.inventory.clone().ok_or(StoreError::NothingCommitted)?;
        let set = match &inv.previous {
            Some(p) if self.missing_volumes(p)?.is_empty() => p.clone(),
            _ => return Err(StoreError::NoPrevious),
        };
        let next = Inventory {
            generation: inv.generation + 1,
            set: set.clone(),
            attempts: 0,
            previous: None,
            rolled_back_from: Some(inv.set.digest),
            last_command: inv.last_command,
        };
        self.replace_inventory(&next)?;
        Ok(set)
    }

    /// Remember the (epoch, serial) of a master command about to be executed, so that no
    /// copy or replay of it is executed again, even after the reset it causes. No write
    /// if the stamp is not newer than the one on flash.
    pub fn record_command(&mut self, stamp: (u64, u64)) -> Result<(), StoreError> {
        let inv = self.inventory.clone().ok_or(StoreError::NothingCommitted)?;
        if inv.last_command.is_some_and(|last| last >= stamp) {
            return Ok(());
        }
        let mut next = inv;
        next.last_command = Some(stamp);
        next.generation += 1;
        self.replace_inventory(&next)
    }

    /// The stamp written by [`Self::record_command`], if any.
    pub fn last_command(&self) -> Option<(u64, u64)> {
        self.inventory.as_ref().and_then(|i| i.last_command)
    }
}
