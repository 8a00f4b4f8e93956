//! Whether a release's plans can go on the wire, checked where the operator acts
//! (`master import`, `master explain`) rather than when a card first asks.
//!
//! A plan travels as one signed Plan message: in one frame up to
//! [`MAX_CONTROL_BODY_LEN`] bytes, in fragments (protocol version 2) up to
//! [`shelfboot_proto::MAX_MESSAGE_LEN`], and not at all beyond. [`check_delivery`]
//! resolves, for every class of a release, the plan of a representative card of each
//! card type the class admits on each arch the release builds for (class defaults, no
//! card-requested features) and measures it. A plan over the limit makes the import
//! fail, naming the class, card type and arch; a plan in fragments is noted, because a
//! card whose initramfs speaks only version 1 cannot take it.
//!
//! Not here: a card's own features can add packages beyond the representative plan;
//! `master explain` and `master serve` measure each card's real plan.

use std::collections::{BTreeMap, BTreeSet};

use shelfboot_proto::MAX_CONTROL_BODY_LEN;
use shelfboot_proto::id::MacAddr;
use shelfboot_proto::msg::MsgError;

use super::{Catalog, ResolveError, resolve_node};
use crate::image::manifest::Manifest;
use crate::store::{Assignment, NodeIdentity, NodeRecord, NodeState, PackageRecord, Target};

/// A class whose representative plan goes in fragments (protocol version 2 only).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Fragmented {
    pub class: String,
    pub card_type: String,
    pub arch: shelfboot_proto::id::Arch,
    pub artifacts: usize,
    pub bytes: usize,
}

impl std::fmt::Display for Fragmented {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "class {} ({} on {}): a plan of {} artifacts is {} bytes, more than one frame ({MAX_CONTROL_BODY_LEN}); it goes in fragments, which cards whose initramfs speaks only protocol version 1 cannot take",
            self.class, self.card_type, self.arch, self.artifacts, self.bytes
        )
    }
}

/// Resolves and measures the representative plan of every class, card type and arch of
/// `m` (see the module docs). Fails on the first plan that cannot be delivered; returns
/// the plans that need fragments.
pub fn check_delivery(m: &Manifest) -> Result<Vec<Fragmented>, ResolveError> {
    let releases: BTreeMap<_, _> = [(m.release.clone(), m.clone())].into();
    let packages: Vec<PackageRecord> = m
        .packages
        .iter()
        .map(|p| PackageRecord {
            name: p.name.clone(),
            version: p.version.clone(),
            arch: p.arch,
            provides: p.provides.clone(),
            depends: p.depends.clone(),
            payload: p.payload,
            releases: vec![m.release.to_string()],
        })
        .collect();
    let assignments = [Assignment {
        target: Target::Default,
        release: Some(m.release.clone()),
        pins: BTreeMap::new(),
        set_at: 0,
    }];
    let cat = Catalog {
        releases: &releases,
        packages: &packages,
        assignments: &assignments,
    };
    let boot_types: BTreeSet<&str> = m.boot.iter().map(|b| b.card_type.as_str()).collect();
    let mut fragmented = Vec::new();
    for class in &m.classes {
        let types: Vec<&str> = if class.rule.card_types.is_empty() {
            boot_types.iter().copied().collect()
        } else {
            class.rule.card_types.iter().map(String::as_str).collect()
        };
        let slot = class.rule.slots.first().map_or(1, |r| r.first);
        for card_type in types {
            for arch in m
                .boot
                .iter()
                .filter(|b| b.card_type == card_type)
                .map(|b| b.arch)
            {
                let node = NodeRecord {
                    identity: NodeIdentity {
                        mac: MacAddr([0x02, 0, 0, 0, 0, 0]),
                        card_type: card_type.to_owned(),
                        arch,
                        shelf: 1,
                        slot,
                        hw_rev: String::new(),
                        features: Vec::new(),
                    },
                    class: Some(class.name.clone()),
                    present: false,
                    last_seen: None,
                    state: NodeState::Pristine,
                    state_reason: None,
                    inventory: None,
                    test_mode: None,
                    registered_at: 0,
                    health: None,
                };
                // A class need not resolve for every type and arch (check_release
                // reports what must): measure the plans that exist.
                let Ok(plan) = resolve_node(&cat, &node) else {
                    continue;
                };
                let artifacts = 1 + plan.packages.len();
                match plan.wire_len() {
                    Ok(bytes) if bytes > MAX_CONTROL_BODY_LEN => fragmented.push(Fragmented {
                        class: class.name.clone(),
                        card_type: card_type.to_owned(),
                        arch,
                        artifacts,
                        bytes,
                    }),
                    Ok(_) => {}
                    Err(MsgError::TooLarge { len, max, .. }) => {
                        return Err(ResolveError::PlanTooLarge {
                            class: class.name.clone(),
                            card_type: card_type.to_owned(),
                            arch,
                            artifacts,
                            len,
                            max,
                        });
                    }
                    Err(source) => {
                        return Err(ResolveError::PlanEncoding {
                            class: class.name.clone(),
                            source,
                        });
                    }
                }
            }
        }
    }
    Ok(fragmented)
}
