//! Errors of the flash store: one enum, one variant per failed step, each saying what to
//! do next. Volume failures carry the step as context and the [`VolumeError`] (which names
//! the ioctl and the volume) as source. Errors of the lower layers stay in their modules
//! ([`super::volumes::VolumeError`], [`super::inventory::InventoryError`]).

use super::artifact::Digest;
use super::inventory::InventoryError;
use super::volumes::VolumeError;

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
        /// Planned (boxed, like `actual`, to keep every `StoreError` small).
        expected: Box<Digest>,
        /// Actual.
        actual: Box<Digest>,
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
