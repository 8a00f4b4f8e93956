//! Which master commands a card executes: the one rule shared by the boot conversation
//! ([`crate::agent`]) and the resident agent after hand-off ([`crate::resident`]).
//!
//! A command is executed only if a key of the trust anchor (or a master key it
//! certifies) signed it, it names this card or no card, and its (epoch, serial) is
//! above the last command executed and its epoch is not below the epoch of the master the
//! card obeys. Broadcast commands cannot carry a card's nonce, so the stamp is the replay
//! defence; the resident agent persists it on flash before it acts
//! ([`crate::flash::Store::record_command`]), so a replay stays refused across the reset
//! it would cause.

use shelfboot_proto::frame::MacAddr;
use shelfboot_proto::msg::Command;
use shelfboot_proto::sign::{SignError, TrustAnchor};

/// Why a command was not executed.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// No trusted key signed it (or its certificate is not trusted).
    #[error("command not signed by a trusted key")]
    Forged(#[source] SignError),
    /// It names another card.
    #[error("command for card {0}")]
    NotForUs(MacAddr),
    /// Its stamp is not newer than the last executed one, or its epoch is older than the
    /// master's the card obeys.
    #[error(
        "command (epoch {epoch}, serial {serial}) is not newer than (epoch {floor_epoch}, serial {floor_serial:?})"
    )]
    Replayed {
        /// The command's epoch.
        epoch: u64,
        /// The command's serial.
        serial: u64,
        /// The lowest epoch accepted.
        floor_epoch: u64,
        /// The last executed serial of that epoch, if any.
        floor_serial: Option<u64>,
    },
}

/// Checks `cmd` for the card `mac`; on success returns its (epoch, serial) stamp, which
/// the caller records as the last executed command.
pub fn admit(
    anchor: &TrustAnchor,
    mac: MacAddr,
    epoch: u64,
    last: Option<(u64, u64)>,
    cmd: &Command,
) -> Result<(u64, u64), Refused> {
    anchor.verify_command(cmd).map_err(Refused::Forged)?;
    let b = &cmd.body;
    if let Some(t) = b.target
        && t != mac
    {
        return Err(Refused::NotForUs(t));
    }
    let stamp = (b.epoch, b.serial);
    if b.epoch < epoch || last.is_some_and(|l| stamp <= l) {
        return Err(Refused::Replayed {
            epoch: b.epoch,
            serial: b.serial,
            floor_epoch: epoch.max(last.map_or(0, |l| l.0)),
            floor_serial: last.map(|l| l.1),
        });
    }
    Ok(stamp)
}
