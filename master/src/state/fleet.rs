//! Fleet orders: what the operator asks `master serve` to send every card (or one) as a
//! signed Command, and the "prepare pending" mark a prepare leaves on the cards.
//!
//! Checking and recording an order is done here; sending it is not. The control request
//! that made the order returns it to its caller (see [`crate::control::execute`]); the
//! serve loop signs and sends it. Nothing is queued in the state.

use serde::{Deserialize, Serialize};

use super::{Master, MasterError};
use crate::store::Store;
use shelfboot_proto::id::MacAddr;

/// A fleet action the operator orders; `master serve` sends it as a signed Command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FleetAction {
    /// "Prepare now": every card (or one) fetches and commits its plan (Command BurnNow).
    Prepare,
    /// System-wide warm boot: cards reset and only validate (Command WarmBoot).
    WarmBoot,
    /// Reset: cards reset and solicit as after a master-ordered reset (Command Reset).
    Reset,
    /// Upgrade in service: running cards stage their plan while they run, commit and
    /// kexec into it (Command Upgrade); a card in init takes it as a reset.
    Upgrade,
}

impl std::fmt::Display for FleetAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FleetAction::Prepare => "prepare",
            FleetAction::WarmBoot => "warm-boot",
            FleetAction::Reset => "reset",
            FleetAction::Upgrade => "upgrade",
        })
    }
}

/// An ordered fleet action, waiting for the serve loop to send it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetOrder {
    /// What to do.
    pub action: FleetAction,
    /// One card, or every card on the backplane.
    pub target: Option<MacAddr>,
}

impl<S: Store> Master<S> {
    /// Checks a fleet order and records what it leaves behind: a target must be a known
    /// card, and a prepare marks the card (or every known card) "prepare pending" (the
    /// serve loop answers its next Solicit with a BurnNow before the plan, until it is
    /// Ready). Whether anything can send the order is the caller's business.
    pub fn order(&mut self, order: &FleetOrder) -> Result<(), MasterError> {
        if let Some(mac) = &order.target {
            // The plan lookup names an unknown card in its error.
            self.plan(mac)?;
        }
        let now = self.now();
        if order.action == FleetAction::Prepare {
            self.store.mark_prepare(order.target.as_ref(), now)?;
        }
        let whom = match &order.target {
            Some(mac) => format!("card {mac}"),
            None => "every card".to_owned(),
        };
        let detail = format!("{} ordered for {whom}", order.action);
        self.store
            .record_event(order.target.as_ref(), "fleet", &detail, now)?;
        Ok(())
    }

    /// True if the card is marked "prepare pending" (see [`Master::order`]).
    pub fn prepare_pending(&self, mac: &MacAddr) -> Result<bool, MasterError> {
        Ok(self.store.prepare_pending(mac)?)
    }

    /// A card reported Ready: if it was marked "prepare pending", the mark is cleared and
    /// the card recorded `ready` ("prepared, holding for warm boot"); returns true then.
    pub fn record_prepared(&mut self, mac: &MacAddr) -> Result<bool, MasterError> {
        Ok(self.store.record_prepared(mac, self.now())?)
    }
}
