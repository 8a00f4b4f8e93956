//! Import-time check of a release on its own, with the same solver as plan resolution:
//! every package's dependencies can be met within the release for its arch, and every
//! class and per-node override resolves on every arch the release has builds of all its
//! required packages for (a class need not run on every arch).

use std::collections::{BTreeMap, BTreeSet};

use shelfboot_proto::id::Arch;

use super::{ResolveError, add_features, check_arch, pin, req, solve, universe};
use crate::image::manifest::Manifest;

/// (subject, requirement maps with their rule, features) checked by [`check_release`].
type CheckGroup<'m> = (
    String,
    Vec<(&'m BTreeMap<String, String>, String)>,
    Vec<&'m String>,
);

/// Import-time check of a release on its own: every package's dependencies can be met
/// within the release for its arch, and every class (and override) resolves for every
/// arch the release builds all its required packages for.
pub fn check_release(m: &Manifest) -> Result<(), ResolveError> {
    let archs: BTreeSet<Arch> = m.packages.iter().map(|p| p.arch).collect();
    for p in &m.packages {
        let uni = universe(m, p.arch, &[]);
        let mut reqs = BTreeMap::new();
        reqs.insert(
            p.name.clone(),
            pin(&p.version, "the package itself".to_owned()),
        );
        solve(
            &format!("package {} {} ({})", p.name, p.version, p.arch),
            &uni,
            &reqs,
        )?;
    }
    let mut groups: Vec<CheckGroup<'_>> = Vec::new();
    for c in &m.classes {
        groups.push((
            format!("class {}", c.name),
            vec![
                (
                    &m.defaults.packages,
                    format!("defaults of release {}", m.release),
                ),
                (&c.packages, format!("class {}", c.name)),
            ],
            m.defaults.features.iter().chain(&c.features).collect(),
        ));
    }
    for o in &m.overrides {
        let class = o
            .class
            .as_ref()
            .and_then(|n| m.classes.iter().find(|c| &c.name == n));
        let mut srcs = vec![(
            &m.defaults.packages,
            format!("defaults of release {}", m.release),
        )];
        let mut feats: Vec<&String> = m.defaults.features.iter().chain(&o.features).collect();
        if let Some(c) = class {
            srcs.push((&c.packages, format!("class {}", c.name)));
            feats.extend(&c.features);
        }
        srcs.push((&o.packages, format!("override for {}", o.mac)));
        groups.push((format!("override for {}", o.mac), srcs, feats));
    }
    for (subject, srcs, feats) in groups {
        for &arch in &archs {
            let uni = universe(m, arch, &[]);
            let mut reqs = BTreeMap::new();
            for (map, rule) in &srcs {
                for (n, t) in *map {
                    reqs.insert(n.clone(), req(n, t, rule.clone())?);
                }
            }
            let features: BTreeMap<String, String> = feats
                .iter()
                .map(|f| ((*f).clone(), subject.clone()))
                .collect();
            // A class need not run on every arch: skip archs it has no builds for.
            if check_arch(&reqs, &uni, arch, &m.release).is_err()
                || add_features(&features, &uni, &mut reqs, arch, &m.release).is_err()
            {
                continue;
            }
            solve(&format!("{subject} on {arch}"), &uni, &reqs)?;
        }
    }
    Ok(())
}
