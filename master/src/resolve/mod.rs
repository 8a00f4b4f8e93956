//! Plan resolution: class → per-node override → requested features → dependency closure
//! (pubgrub) → processor arch, recording which rule chose each artifact.
//!
//! Order of decisions for one card:
//! 1. *Release*: the card's own assignment, else its class's assignment, else the default
//!    (the last activated import).
//! 2. *Class*: forced by the operator, else the release's per-node override, else the first
//!    class whose match rule fits (card type, slot, wanted features), else the release's
//!    default class.
//! 3. *Requirements*: release defaults, then the class, then the per-node override (each
//!    replaces an earlier entry of the same package name), then operator pins (class, then
//!    node), then test-mode packages.
//! 4. *Features*: defaults + class + override + the card's own; each feature not already
//!    provided by a required package adds its provider (the alphabetically first name if
//!    several provide it).
//! 5. *Closure*: pubgrub over the release's builds for the card's arch (plus pinned builds),
//!    newest version first.
//! 6. *Boot image*: the named (or only) boot image for the card's type and arch.
//!
//! Everything is a pure function of its inputs (no I/O, sorted maps), so the same inputs
//! always give the same plan and digest.

mod check;
mod delivery;
mod plan;
pub mod ranges;

pub use check::check_release;
pub use delivery::{Fragmented, check_delivery};
pub use plan::{Plan, PlannedArtifact, Reason};

use std::collections::{BTreeMap, BTreeSet};

use pubgrub::{DefaultStringReporter, OfflineDependencyProvider, PubGrubError, Reporter};
use semver::Version;

use crate::image::manifest::{BootImage, Manifest, Package, ReleaseId};
use crate::policy::{CardFacts, ClassSpec, OverrideSpec, PolicyError, parse_req};
use crate::store::{Assignment, NodeRecord, PackageRecord, Target};
use ranges::{UnsupportedReq, VersionRanges, req_to_ranges};
use shelfboot_proto::id::MacAddr;
use shelfboot_proto::id::{Arch, Digest};

/// Why a plan could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(
        "node {0} has no release: import one (it becomes the default) or `master assign --node`"
    )]
    NoRelease(MacAddr),
    #[error(
        "class {class} ({card_type} on {arch}): a plan of {artifacts} artifacts is {len} bytes, over the {max}-byte limit of a plan on the wire: split the class, or use fewer or shorter-named packages"
    )]
    PlanTooLarge {
        class: String,
        card_type: String,
        arch: Arch,
        artifacts: usize,
        len: usize,
        max: usize,
    },
    #[error("class {class}: its plan cannot be encoded")]
    PlanEncoding {
        class: String,
        #[source]
        source: shelfboot_proto::msg::MsgError,
    },
    #[error("{by} names release {release}, which is not imported")]
    UnknownRelease { release: String, by: String },
    #[error("{by} puts the card in class {class}, which release {release} does not define")]
    ClassNotInRelease {
        class: String,
        release: String,
        by: String,
    },
    #[error(
        "no class of release {release} matches node {node} (card type {card_type}, slot {slot}) and the release has no default class"
    )]
    NoClass {
        node: MacAddr,
        release: String,
        card_type: String,
        slot: u32,
    },
    #[error("package {package} ({rule}) has no build for arch {arch} in release {release}")]
    NoBuildForArch {
        package: String,
        arch: Arch,
        release: String,
        rule: String,
    },
    #[error("{by} pins {package} {version}, which is not imported for arch {arch}")]
    PinNotImported {
        package: String,
        version: Version,
        arch: Arch,
        by: String,
    },
    #[error(
        "feature {feature} ({by}) is provided by no package for arch {arch} in release {release}"
    )]
    NoFeatureProvider {
        feature: String,
        arch: Arch,
        release: String,
        by: String,
    },
    #[error(
        "unsatisfiable dependency for {subject}: no versions of {packages} satisfy all constraints:\n{report}"
    )]
    Conflict {
        subject: String,
        packages: String,
        report: String,
    },
    #[error("release {release} has no boot image{named} for card type {card_type} on arch {arch}")]
    NoBootImage {
        release: String,
        named: String,
        card_type: String,
        arch: Arch,
    },
    #[error(
        "release {release} has several boot images ({names}) for card type {card_type} on arch {arch}; name one with `boot =` in the class"
    )]
    AmbiguousBootImage {
        release: String,
        names: String,
        card_type: String,
        arch: Arch,
    },
    #[error("in {what}")]
    Requirement {
        what: String,
        #[source]
        source: PolicyError,
    },
    #[error("in {what}")]
    Unsupported {
        what: String,
        #[source]
        source: UnsupportedReq,
    },
}

/// What resolution reads: every stored release, package build and assignment.
#[derive(Debug, Clone, Copy)]
pub struct Catalog<'a> {
    pub releases: &'a BTreeMap<ReleaseId, Manifest>,
    pub packages: &'a [PackageRecord],
    pub assignments: &'a [Assignment],
}

impl Catalog<'_> {
    fn assignment(&self, target: &Target) -> Option<&Assignment> {
        self.assignments.iter().find(|a| &a.target == target)
    }

    fn manifest(&self, id: &ReleaseId, by: &str) -> Result<&Manifest, ResolveError> {
        self.releases
            .get(id)
            .ok_or_else(|| ResolveError::UnknownRelease {
                release: id.to_string(),
                by: by.to_owned(),
            })
    }
}

/// One requirement on a package: the range, the text and the rule that set it.
#[derive(Debug, Clone)]
struct Req {
    range: VersionRanges,
    text: String,
    rule: String,
}

fn req(name: &str, text: &str, rule: String) -> Result<Req, ResolveError> {
    let parsed = parse_req(name, text).map_err(|source| ResolveError::Requirement {
        what: rule.clone(),
        source,
    })?;
    let range = req_to_ranges(&parsed).map_err(|source| ResolveError::Unsupported {
        what: rule.clone(),
        source,
    })?;
    Ok(Req {
        range,
        text: text.to_owned(),
        rule,
    })
}

fn pin(version: &Version, rule: String) -> Req {
    Req {
        range: VersionRanges::singleton(version.clone()),
        text: format!("={version}"),
        rule,
    }
}

/// Solves `reqs` over `universe` (all of one arch). Returns name → version.
fn solve(
    subject: &str,
    universe: &[Package],
    reqs: &BTreeMap<String, Req>,
) -> Result<BTreeMap<String, Version>, ResolveError> {
    let mut dp = OfflineDependencyProvider::<String, VersionRanges>::new();
    for p in universe {
        let mut deps = Vec::new();
        for (dep, text) in &p.depends {
            let r = req(dep, text, format!("dependency of {} {}", p.name, p.version))?;
            deps.push((dep.clone(), r.range));
        }
        dp.add_dependencies(p.name.clone(), p.version.clone(), deps);
    }
    let root = subject.to_owned();
    let root_version = Version::new(0, 0, 0);
    dp.add_dependencies(
        root.clone(),
        root_version.clone(),
        reqs.iter().map(|(n, r)| (n.clone(), r.range.clone())),
    );
    match pubgrub::resolve(&dp, root.clone(), root_version) {
        Ok(sel) => Ok(sel
            .into_iter()
            .filter(|(n, _)| n != &root)
            .collect::<BTreeMap<_, _>>()),
        Err(PubGrubError::NoSolution(mut tree)) => {
            tree.collapse_no_versions();
            let mut pkgs: Vec<String> = tree
                .packages()
                .into_iter()
                .filter(|p| **p != root)
                .cloned()
                .collect();
            pkgs.sort();
            let mut report = tidy_report(
                &DefaultStringReporter::report(&tree),
                &format!("{root} 0.0.0"),
                &root,
            );
            report.push_str("\nconstraints on these packages in this plan:");
            for (n, r) in reqs {
                if pkgs.contains(n) {
                    report.push_str(&format!("\n  {n} {}: {}", r.text, r.rule));
                }
            }
            Err(ResolveError::Conflict {
                subject: subject.to_owned(),
                packages: pkgs.join(", "),
                report,
            })
        }
        Err(other) => Err(ResolveError::Conflict {
            subject: subject.to_owned(),
            packages: String::new(),
            report: other.to_string(),
        }),
    }
}

/// Makes pubgrub's report read like our requirements: the synthetic root loses its
/// version, and upper bounds lose the `-0` that keeps pre-releases out (`<2.0.0-0` →
/// `<2.0.0`).
fn tidy_report(report: &str, root_with_version: &str, root: &str) -> String {
    let text = report.replace(root_with_version, root);
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(i) = rest.find("-0") {
        let mut after = rest[i + 2..].chars();
        let continues = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-');
        let is_bound = match after.next() {
            Some('.') => !continues(after.next()),
            c => !continues(c),
        };
        out.push_str(&rest[..i]);
        if !is_bound {
            out.push_str("-0");
        }
        rest = &rest[i + 2..];
    }
    out.push_str(rest);
    out
}

/// The builds a card of `arch` can use from `manifest`, plus pinned builds from `extra`.
fn universe(manifest: &Manifest, arch: Arch, extra: &[Package]) -> Vec<Package> {
    let mut seen = BTreeSet::new();
    manifest
        .packages
        .iter()
        .filter(|p| p.arch == arch)
        .chain(extra.iter())
        .filter(|p| seen.insert((p.name.clone(), p.version.clone())))
        .cloned()
        .collect()
}

/// Adds providers for features; returns (feature, provider) decisions.
fn add_features(
    features: &BTreeMap<String, String>,
    universe: &[Package],
    reqs: &mut BTreeMap<String, Req>,
    arch: Arch,
    release: &ReleaseId,
) -> Result<Vec<Reason>, ResolveError> {
    let mut out = Vec::new();
    for (feature, by) in features {
        let providers: BTreeSet<&str> = universe
            .iter()
            .filter(|p| p.provides.contains(feature))
            .map(|p| p.name.as_str())
            .collect();
        if let Some(already) = providers.iter().find(|n| reqs.contains_key(**n)) {
            out.push(Reason {
                subject: format!("feature {feature}"),
                rule: format!("{by}; provided by required package {already}"),
            });
            continue;
        }
        let Some(first) = providers.first() else {
            return Err(ResolveError::NoFeatureProvider {
                feature: feature.clone(),
                arch,
                release: release.to_string(),
                by: by.clone(),
            });
        };
        let others = if providers.len() > 1 {
            format!(
                " (first of {})",
                providers.iter().copied().collect::<Vec<_>>().join(", ")
            )
        } else {
            String::new()
        };
        let rule = format!("provides feature {feature} ({by}){others}");
        reqs.insert((*first).to_owned(), req(first, "*", rule.clone())?);
        out.push(Reason {
            subject: format!("feature {feature}"),
            rule: format!("{by}; provided by {first}{others}"),
        });
    }
    Ok(out)
}

/// Checks that every required package has some build for the arch.
fn check_arch(
    reqs: &BTreeMap<String, Req>,
    universe: &[Package],
    arch: Arch,
    release: &ReleaseId,
) -> Result<(), ResolveError> {
    for (name, r) in reqs {
        if !universe.iter().any(|p| &p.name == name) {
            return Err(ResolveError::NoBuildForArch {
                package: name.clone(),
                arch,
                release: release.to_string(),
                rule: format!("{} {}", r.text, r.rule),
            });
        }
    }
    Ok(())
}

fn choose_boot<'m>(
    m: &'m Manifest,
    named: Option<&str>,
    card_type: &str,
    arch: Arch,
) -> Result<&'m BootImage, ResolveError> {
    let cands: Vec<&BootImage> = m
        .boot
        .iter()
        .filter(|b| b.card_type == card_type && b.arch == arch)
        .filter(|b| named.is_none_or(|n| b.name == n))
        .collect();
    match cands.as_slice() {
        [one] => Ok(one),
        [] => Err(ResolveError::NoBootImage {
            release: m.release.to_string(),
            named: named.map(|n| format!(" named {n}")).unwrap_or_default(),
            card_type: card_type.to_owned(),
            arch,
        }),
        many => Err(ResolveError::AmbiguousBootImage {
            release: m.release.to_string(),
            names: many
                .iter()
                .map(|b| b.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            card_type: card_type.to_owned(),
            arch,
        }),
    }
}

/// Picks the card's class in `m`.
fn choose_class<'m>(
    m: &'m Manifest,
    node: &NodeRecord,
    ovr: Option<&OverrideSpec>,
) -> Result<(&'m ClassSpec, String), ResolveError> {
    let id = &node.identity;
    let named = |name: &str, by: String| {
        m.classes
            .iter()
            .find(|c| c.name == name)
            .map(|c| (c, by.clone()))
            .ok_or_else(|| ResolveError::ClassNotInRelease {
                class: name.to_owned(),
                release: m.release.to_string(),
                by,
            })
    };
    if let Some(c) = &node.class {
        return named(c, "forced by the operator for this node".into());
    }
    if let Some(c) = ovr.and_then(|o| o.class.as_deref()) {
        return named(c, format!("per-node override in release {}", m.release));
    }
    let facts = CardFacts {
        card_type: &id.card_type,
        slot: id.slot,
        features: &id.features,
    };
    for c in &m.classes {
        if let Some(why) = c.rule.matches(facts) {
            return Ok((c, format!("first matching class: {why}")));
        }
    }
    if let Some(c) = &m.defaults.class {
        return named(
            c,
            format!("no class matches; default class of release {}", m.release),
        );
    }
    Err(ResolveError::NoClass {
        node: id.mac,
        release: m.release.to_string(),
        card_type: id.card_type.clone(),
        slot: id.slot,
    })
}

fn pinned_build(
    cat: &Catalog<'_>,
    name: &str,
    version: &Version,
    arch: Arch,
    by: &str,
) -> Result<Package, ResolveError> {
    cat.packages
        .iter()
        .find(|p| p.name == name && &p.version == version && p.arch == arch)
        .map(|p| Package {
            name: p.name.clone(),
            version: p.version.clone(),
            arch: p.arch,
            provides: p.provides.clone(),
            depends: p.depends.clone(),
            payload: p.payload,
        })
        .ok_or_else(|| ResolveError::PinNotImported {
            package: name.to_owned(),
            version: version.clone(),
            arch,
            by: by.to_owned(),
        })
}

/// Resolves one card's plan.
pub fn resolve_node(cat: &Catalog<'_>, node: &NodeRecord) -> Result<Plan, ResolveError> {
    resolve_node_with(cat, node, None)
}

/// Resolves one card's plan like [`resolve_node`], taking the solved part from `cache`
/// when a card with the same release, class, arch, card type and features was resolved
/// against the same catalog (and neither card has a per-node override, assignment or
/// test mode). The release and class decisions are always this card's own.
pub fn resolve_node_cached(
    cat: &Catalog<'_>,
    node: &NodeRecord,
    cache: &PlanCache,
) -> Result<Plan, ResolveError> {
    resolve_node_with(cat, node, Some(cache))
}

/// What the solved part of a plan depends on besides the catalog, when nothing about the
/// card's MAC does (see [`resolve_node_cached`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct PlanKey {
    release: ReleaseId,
    class: String,
    arch: Arch,
    card_type: String,
    features: Vec<String>,
}

/// Plans already resolved against one catalog snapshot, by [`PlanKey`]. A warm boot of a
/// shelf resolves each (class, card type, arch, features) once, not once per card. It is
/// valid only as long as the catalog it was filled from: keep it beside that catalog.
#[derive(Debug, Clone, Default)]
pub struct PlanCache(std::cell::RefCell<BTreeMap<PlanKey, Plan>>);

impl PlanCache {
    /// Entries at most: feature lists come from the cards, so the key space is theirs.
    pub const MAX_ENTRIES: usize = 1024;

    /// Plans held.
    pub fn len(&self) -> usize {
        self.0.borrow().len()
    }

    /// Whether it holds no plan.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn resolve_node_with(
    cat: &Catalog<'_>,
    node: &NodeRecord,
    cache: Option<&PlanCache>,
) -> Result<Plan, ResolveError> {
    let id = &node.identity;
    let mac = &id.mac;
    let mut explain = Vec::new();
    let node_asg = cat.assignment(&Target::Node(*mac));

    // 1 + 2: release and class.
    let (mut release, mut release_rule) = match node_asg.and_then(|a| a.release.clone()) {
        Some(r) => (r, "assigned to this node by the operator".to_owned()),
        None => match cat
            .assignment(&Target::Default)
            .and_then(|a| a.release.clone())
        {
            Some(r) => (r, "default release".to_owned()),
            None => return Err(ResolveError::NoRelease(*mac)),
        },
    };
    let mut m = cat.manifest(&release, &release_rule)?;
    let mut ovr = m.overrides.iter().find(|o| &o.mac == mac);
    let (mut class, mut class_rule) = choose_class(m, node, ovr)?;
    let class_release = cat
        .assignment(&Target::Class(class.name.clone()))
        .and_then(|a| a.release.clone());
    if node_asg.and_then(|a| a.release.as_ref()).is_none()
        && let Some(r) = class_release
        && r != release
    {
        release_rule = format!("assigned to class {} by the operator", class.name);
        release = r;
        m = cat.manifest(&release, &release_rule)?;
        ovr = m.overrides.iter().find(|o| &o.mac == mac);
        let name = class.name.clone();
        (class, class_rule) = match m.classes.iter().find(|c| c.name == name) {
            Some(c) => (c, format!("{class_rule} (kept in release {release})")),
            None => choose_class(m, node, ovr)?,
        };
    }
    explain.push(Reason {
        subject: format!("release {release}"),
        rule: release_rule,
    });
    explain.push(Reason {
        subject: format!("class {}", class.name),
        rule: class_rule,
    });
    let key = (ovr.is_none() && node_asg.is_none() && node.test_mode.is_none()).then(|| {
        let mut features = id.features.clone();
        features.sort();
        PlanKey {
            release: release.clone(),
            class: class.name.clone(),
            arch: id.arch,
            card_type: id.card_type.clone(),
            features,
        }
    });
    if let (Some(cache), Some(k)) = (cache, &key)
        && let Some(hit) = cache.0.borrow().get(k)
    {
        let mut plan = hit.clone();
        plan.node = *mac;
        plan.explain.splice(0..2, explain);
        return Ok(plan);
    }

    // 3: requirements, later sources replacing earlier ones by name.
    let mut reqs: BTreeMap<String, Req> = BTreeMap::new();
    for (n, t) in &m.defaults.packages {
        reqs.insert(
            n.clone(),
            req(n, t, format!("defaults of release {release}"))?,
        );
    }
    for (n, t) in &class.packages {
        reqs.insert(n.clone(), req(n, t, format!("class {}", class.name))?);
    }
    if let Some(o) = ovr {
        for (n, t) in &o.packages {
            reqs.insert(
                n.clone(),
                req(n, t, format!("per-node override in release {release}"))?,
            );
        }
    }
    let mut extra = Vec::new();
    let arch = id.arch;
    let mut pins: Vec<(&BTreeMap<String, Version>, String)> = Vec::new();
    if let Some(a) = cat.assignment(&Target::Class(class.name.clone())) {
        pins.push((
            &a.pins,
            format!("pinned for class {} by the operator", class.name),
        ));
    }
    if let Some(a) = node_asg {
        pins.push((&a.pins, "pinned for this node by the operator".to_owned()));
    }
    let test = node.test_mode.as_ref();
    if let Some(t) = test {
        pins.push((&t.packages, "test mode (RAM only)".to_owned()));
    }
    for (map, rule) in pins {
        for (n, v) in map {
            extra.push(pinned_build(cat, n, v, arch, &rule)?);
            reqs.insert(n.clone(), pin(v, rule.clone()));
        }
    }
    let universe = universe(m, arch, &extra);

    // 4: features.
    let mut features: BTreeMap<String, String> = BTreeMap::new();
    let sources: [(&[String], String); 4] = [
        (
            &m.defaults.features,
            format!("defaults of release {release}"),
        ),
        (&class.features, format!("class {}", class.name)),
        (
            ovr.map(|o| o.features.as_slice()).unwrap_or(&[]),
            "per-node override".to_owned(),
        ),
        (&id.features, "requested by the card".to_owned()),
    ];
    for (list, by) in sources {
        for f in list {
            features.entry(f.clone()).or_insert_with(|| by.clone());
        }
    }
    explain.extend(add_features(
        &features, &universe, &mut reqs, arch, &release,
    )?);

    // 5: closure for the card's arch.
    check_arch(&reqs, &universe, arch, &release)?;
    let selected = solve(&format!("node {mac}"), &universe, &reqs)?;
    let mut packages = Vec::new();
    for (name, version) in &selected {
        let Some(p) = universe
            .iter()
            .find(|p| &p.name == name && &p.version == version)
        else {
            continue;
        };
        let rule = match reqs.get(name) {
            Some(r) => format!("{} {}", r.text, r.rule),
            None => dependency_rule(name, &selected, &universe),
        };
        packages.push(PlannedArtifact {
            kind: "package".into(),
            name: name.clone(),
            version: version.clone(),
            arch,
            blob: p.payload,
            rule,
        });
    }

    // 6: boot image.
    let named = ovr
        .and_then(|o| o.boot.as_deref())
        .map(|b| (b, "per-node override"))
        .or(class.boot.as_deref().map(|b| (b, "class")))
        .or(m.defaults.boot.as_deref().map(|b| (b, "release defaults")));
    let b = choose_boot(m, named.map(|n| n.0), &id.card_type, arch)?;
    let boot_rule = match named {
        Some((n, by)) => format!(
            "{by} names boot image {n}; build for {}/{arch}",
            id.card_type
        ),
        None => format!("the only boot image for {}/{arch}", id.card_type),
    };
    let boot = PlannedArtifact {
        kind: "boot".into(),
        name: b.name.clone(),
        version: b.version.clone(),
        arch,
        blob: b.image,
        rule: boot_rule,
    };
    for a in std::iter::once(&boot).chain(&packages) {
        explain.push(Reason {
            subject: format!("{} {} {} ({arch})", a.kind, a.name, a.version),
            rule: a.rule.clone(),
        });
    }
    // 7: where the set runs.
    let ram = ovr
        .filter(|o| o.ram)
        .map(|_| format!("per-node override in release {release}"))
        .or_else(|| class.ram.then(|| format!("class {}", class.name)));
    if let Some(by) = &ram {
        explain.push(Reason {
            subject: "RAM-first: boot image and packages run from RAM, flash not written".into(),
            rule: by.clone(),
        });
    }
    let mut plan = Plan {
        node: *mac,
        release: release.clone(),
        class: class.name.clone(),
        arch,
        boot,
        cmdline: b.cmdline.clone(),
        packages,
        persist: test.is_none() && ram.is_none(),
        test: test.is_some(),
        digest: Digest([0; 32]),
        explain,
    };
    plan.digest = plan.compute_digest();
    if let (Some(cache), Some(k)) = (cache, key) {
        let mut c = cache.0.borrow_mut();
        if c.len() < PlanCache::MAX_ENTRIES {
            c.insert(k, plan.clone());
        }
    }
    Ok(plan)
}

fn dependency_rule(
    name: &str,
    selected: &BTreeMap<String, Version>,
    universe: &[Package],
) -> String {
    for (pn, pv) in selected {
        if let Some(p) = universe.iter().find(|p| &p.name == pn && &p.version == pv)
            && let Some(r) = p.depends.get(name)
        {
            return format!("dependency of {pn} {pv} (requires {r})");
        }
    }
    "dependency".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_is_tidied() {
        let r =
            "Because root 0.0.0 depends on a >=1.0.0, <2.0.0-0 and b 1.0.0-0.1 needs c <3.0.0-0.";
        assert_eq!(
            tidy_report(r, "root 0.0.0", "root"),
            "Because root depends on a >=1.0.0, <2.0.0 and b 1.0.0-0.1 needs c <3.0.0."
        );
    }
}
