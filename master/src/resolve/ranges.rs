//! Semver requirements (`^1.2`, `~0.3`, `>=1, <2`, `=1.2.3`, `1.*`) as pubgrub ranges.
//!
//! Each comparator becomes an interval of [`semver::Version`] (ordered by semver
//! precedence) and a requirement is their intersection. Upper bounds written `<X.Y.Z` (and
//! the implicit ones of `^`, `~`, `*`) stop before `X.Y.Z-0`, so they exclude the
//! pre-releases of `X.Y.Z` as Cargo does. Unlike Cargo, a lower bound does not exclude
//! pre-releases of *later* versions: `>=1.0` admits `1.5.0-rc1`. Vendors should not ship
//! pre-release packages they do not want chosen (see docs/master.md).

use pubgrub::Ranges;
use semver::{Comparator, Op, Prerelease, Version, VersionReq};

/// Ranges of semver versions.
pub type VersionRanges = Ranges<Version>;

/// A requirement this converter does not know (semver's `Op` is non-exhaustive).
#[derive(Debug, thiserror::Error)]
#[error("version requirement '{0}' uses an operator this master does not support")]
pub struct UnsupportedReq(pub String);

fn version(major: u64, minor: u64, patch: u64, pre: Prerelease) -> Version {
    Version {
        major,
        minor,
        patch,
        pre,
        build: semver::BuildMetadata::EMPTY,
    }
}

/// The lowest version at or above `major.minor.patch`, pre-releases included (`X.Y.Z-0`).
fn lowest(major: u64, minor: u64, patch: u64) -> Version {
    let zero = Prerelease::new("0").unwrap_or(Prerelease::EMPTY);
    version(major, minor, patch, zero)
}

/// The comparator's version with missing parts as 0.
fn floor(c: &Comparator) -> Version {
    version(
        c.major,
        c.minor.unwrap_or(0),
        c.patch.unwrap_or(0),
        c.pre.clone(),
    )
}

/// The first version past what the comparator's precision names (`1` → `2.0.0-0`,
/// `1.2` → `1.3.0-0`, `1.2.3` → `1.2.4-0`).
fn past_precision(c: &Comparator) -> Version {
    match (c.minor, c.patch) {
        (None, _) => lowest(c.major.saturating_add(1), 0, 0),
        (Some(m), None) => lowest(c.major, m.saturating_add(1), 0),
        (Some(m), Some(p)) => lowest(c.major, m, p.saturating_add(1)),
    }
}

fn comparator(c: &Comparator, req: &VersionReq) -> Result<VersionRanges, UnsupportedReq> {
    Ok(match c.op {
        Op::Exact if c.patch.is_some() => Ranges::singleton(floor(c)),
        Op::Exact | Op::Wildcard => Ranges::between(floor(c), past_precision(c)),
        Op::Greater if c.patch.is_some() => Ranges::strictly_higher_than(floor(c)),
        Op::Greater => Ranges::higher_than(past_precision(c)),
        Op::GreaterEq => Ranges::higher_than(floor(c)),
        Op::Less if c.pre.is_empty() => {
            Ranges::strictly_lower_than(lowest(c.major, c.minor.unwrap_or(0), c.patch.unwrap_or(0)))
        }
        Op::Less => Ranges::strictly_lower_than(floor(c)),
        Op::LessEq if c.patch.is_some() => Ranges::lower_than(floor(c)),
        Op::LessEq => Ranges::strictly_lower_than(past_precision(c)),
        Op::Tilde => {
            let upper = match c.minor {
                Some(m) => lowest(c.major, m.saturating_add(1), 0),
                None => lowest(c.major.saturating_add(1), 0, 0),
            };
            Ranges::between(floor(c), upper)
        }
        Op::Caret => {
            let upper = match (c.major, c.minor, c.patch) {
                (0, Some(0), Some(p)) => lowest(0, 0, p.saturating_add(1)),
                (0, Some(m), _) => lowest(0, m.saturating_add(1), 0),
                (major, _, _) => lowest(major.saturating_add(1), 0, 0),
            };
            Ranges::between(floor(c), upper)
        }
        _ => return Err(UnsupportedReq(req.to_string())),
    })
}

/// Converts a requirement to the set of versions it admits.
pub fn req_to_ranges(req: &VersionReq) -> Result<VersionRanges, UnsupportedReq> {
    let mut out = Ranges::full();
    for c in &req.comparators {
        out = out.intersection(&comparator(c, req)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admits(req: &str, v: &str) -> bool {
        let r = req_to_ranges(&VersionReq::parse(req).unwrap()).unwrap();
        r.contains(&Version::parse(v).unwrap())
    }

    #[test]
    fn table_agrees_with_semver_on_releases() {
        let reqs = [
            "*",
            "^1.2.3",
            "^1.2",
            "^1",
            "^0.2.3",
            "^0.2",
            "^0.0.3",
            "^0.0",
            "^0",
            "~1.2.3",
            "~1.2",
            "~1",
            "=1.2.3",
            "=1.2",
            "=1",
            ">1.2.3",
            ">1.2",
            ">1",
            ">=1.2.3",
            ">=1.2",
            "<1.2.3",
            "<1.2",
            "<1",
            "<=1.2.3",
            "<=1.2",
            "<=1",
            "1.*",
            "1.2.*",
            ">=1.0, <2.0",
            ">=0.5, <0.6, !=0.5.2",
        ];
        let versions = [
            "0.0.0", "0.0.3", "0.0.4", "0.2.0", "0.2.3", "0.2.9", "0.3.0", "0.5.1", "0.5.2",
            "1.0.0", "1.1.9", "1.2.0", "1.2.2", "1.2.3", "1.2.4", "1.3.0", "1.9.9", "2.0.0",
            "3.1.4",
        ];
        for req in reqs {
            let Ok(parsed) = VersionReq::parse(req) else {
                continue;
            };
            for v in versions {
                let expected = parsed.matches(&Version::parse(v).unwrap());
                assert_eq!(admits(req, v), expected, "{req} vs {v}");
            }
        }
    }

    #[test]
    fn upper_bounds_exclude_prereleases_of_the_bound() {
        assert!(!admits("^1.2", "2.0.0-rc1"));
        assert!(!admits("<2.0.0", "2.0.0-alpha"));
        assert!(admits("=2.0.0-alpha", "2.0.0-alpha"));
        assert!(admits(">=2.0.0-alpha", "2.0.0-beta"));
    }
}
