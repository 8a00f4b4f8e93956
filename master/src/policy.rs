//! Release policy: classes with match rules, per-node overrides and defaults, as written in
//! `system.toml` and carried verbatim in the signed manifest.
//!
//! This module only describes and validates the policy and decides whether a card matches
//! a class; the plan itself is computed in [`crate::resolve`].

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use shelfboot_proto::id::MacAddr;

/// Errors in policy text (slot ranges, requirements, names).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("slot range '{0}' is not 'N' or 'N-M' with N <= M")]
    SlotRange(String),
    #[error("version requirement '{req}' for {name} is not a semver requirement")]
    Requirement { name: String, req: String },
    #[error("name '{0}' must be 1-64 characters of [A-Za-z0-9._+-]")]
    Name(String),
}

/// Checks a package, class, card-type or feature name.
pub fn check_name(name: &str) -> Result<(), PolicyError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-'));
    if ok {
        Ok(())
    } else {
        Err(PolicyError::Name(name.to_owned()))
    }
}

/// Parses a semver requirement, naming the package it belongs to on error.
pub fn parse_req(name: &str, req: &str) -> Result<semver::VersionReq, PolicyError> {
    semver::VersionReq::parse(req).map_err(|_| PolicyError::Requirement {
        name: name.to_owned(),
        req: req.to_owned(),
    })
}

/// An inclusive slot range, written `"3"` or `"1-8"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SlotRange {
    pub first: u32,
    pub last: u32,
}

impl SlotRange {
    /// Whether `slot` lies in the range.
    pub fn contains(&self, slot: u32) -> bool {
        (self.first..=self.last).contains(&slot)
    }
}

impl FromStr for SlotRange {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, PolicyError> {
        let bad = || PolicyError::SlotRange(s.to_owned());
        let (a, b) = match s.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (s.trim(), s.trim()),
        };
        let first: u32 = a.parse().map_err(|_| bad())?;
        let last: u32 = b.parse().map_err(|_| bad())?;
        if first > last {
            return Err(bad());
        }
        Ok(Self { first, last })
    }
}

impl TryFrom<String> for SlotRange {
    type Error = PolicyError;
    fn try_from(s: String) -> Result<Self, PolicyError> {
        s.parse()
    }
}

impl From<SlotRange> for String {
    fn from(r: SlotRange) -> String {
        r.to_string()
    }
}

impl fmt::Display for SlotRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// Which cards a class applies to. Every non-empty list must match; empty lists match all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchRule {
    /// Card types (any of).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub card_types: Vec<String>,
    /// Slot ranges (any of).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slots: Vec<SlotRange>,
    /// Features the card asks for (all of).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
}

/// The facts about a card that match rules look at.
#[derive(Debug, Clone, Copy)]
pub struct CardFacts<'a> {
    pub card_type: &'a str,
    pub slot: u32,
    pub features: &'a [String],
}

impl MatchRule {
    /// Why the card matches, or `None` if it does not.
    pub fn matches(&self, card: CardFacts<'_>) -> Option<String> {
        let mut why = Vec::new();
        if !self.card_types.is_empty() {
            if !self.card_types.iter().any(|t| t == card.card_type) {
                return None;
            }
            why.push(format!(
                "card type {} in [{}]",
                card.card_type,
                self.card_types.join(", ")
            ));
        }
        if !self.slots.is_empty() {
            let hit = self.slots.iter().find(|r| r.contains(card.slot))?;
            why.push(format!("slot {} in {hit}", card.slot));
        }
        if !self.features.is_empty() {
            if !self.features.iter().all(|f| card.features.contains(f)) {
                return None;
            }
            why.push(format!("card wants [{}]", self.features.join(", ")));
        }
        if why.is_empty() {
            why.push("matches every card".to_owned());
        }
        Some(why.join(", "))
    }
}

/// A class: a named group of cards and what they run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassSpec {
    pub name: String,
    #[serde(rename = "match", default)]
    pub rule: MatchRule,
    /// Boot image name (the build for the card's type and arch is chosen).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<String>,
    /// Package name → semver requirement.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub packages: BTreeMap<String, String>,
    /// Features every card of the class gets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
    /// RAM-first: the cards run their boot image and packages from RAM, fetched on every
    /// boot and never burned into flash (their plans say `persist = false`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ram: bool,
}

/// A per-node override inside a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverrideSpec {
    pub mac: MacAddr,
    /// Put the card in this class instead of the first matching one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<String>,
    /// Added to (or replacing, by name) the class's packages.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub packages: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
    /// RAM-first for this card (see [`ClassSpec::ram`]); `false` leaves the class's choice.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ram: bool,
}

/// Release-wide defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    /// Class for cards no class matches (otherwise they have no plan).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<String>,
    /// Packages every card gets (a class entry of the same name wins).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub packages: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_ranges_and_macs() {
        assert_eq!("1-8".parse::<SlotRange>().unwrap().to_string(), "1-8");
        assert_eq!("4".parse::<SlotRange>().unwrap().to_string(), "4");
        assert!("8-1".parse::<SlotRange>().is_err());
        assert!("x".parse::<SlotRange>().is_err());
        assert_eq!(
            "02-AA-00-00-00-01".parse::<MacAddr>().unwrap().to_string(),
            "02:aa:00:00:00:01"
        );
        assert!("02:aa:00:00:00".parse::<MacAddr>().is_err());
        assert!(check_name("bgp-d_1.0").is_ok());
        assert!(check_name("a b").is_err());
    }

    #[test]
    fn match_rule_explains() {
        let rule = MatchRule {
            card_types: vec!["lc100".into()],
            slots: vec!["1-4".parse().unwrap()],
            features: vec!["bgp".into()],
        };
        let feats = vec!["bgp".to_owned()];
        let card = CardFacts {
            card_type: "lc100",
            slot: 3,
            features: &feats,
        };
        assert_eq!(
            rule.matches(card).unwrap(),
            "card type lc100 in [lc100], slot 3 in 1-4, card wants [bgp]"
        );
        assert!(rule.matches(CardFacts { slot: 5, ..card }).is_none());
        assert!(
            rule.matches(CardFacts {
                features: &[],
                ..card
            })
            .is_none()
        );
        assert_eq!(
            MatchRule::default().matches(card).unwrap(),
            "matches every card"
        );
    }
}
