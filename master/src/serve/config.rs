//! The tunables of the backplane service, read by the service and its transfer sessions.

use std::time::Duration;

/// Tunables of the service.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Our EtherType.
    pub ethertype: u16,
    /// Solicits answered per tick at most.
    pub solicit_budget: usize,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// MTU of the master's backplane port ([`shelfboot_proto::protocol_mtu`]). A card's
    /// fragments and sessions use the MTU both ports take
    /// ([`shelfboot_proto::common_mtu`]).
    pub link_mtu: u16,
    /// Join window of a new session.
    pub join_window: Duration,
    /// Rate ceiling of a session, frame bytes per second.
    pub max_rate: u64,
    /// A card recorded present and not heard for this long is recorded absent.
    pub absence: Duration,
}
