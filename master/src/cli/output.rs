//! Human-readable rendering of replies: aligned tables and explanations. `--json` skips
//! this and prints the reply as JSON.

use std::fmt::Write as _;

use crate::control::Reply;
use crate::resolve::Plan;
use crate::state::NodeView;

/// Formats rows as left-aligned columns separated by two spaces.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{c:<w$}  ", w = widths[i]);
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut out, header.to_vec());
    for r in rows {
        line(&mut out, r.iter().map(String::as_str).collect());
    }
    out
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) from seconds since the epoch.
pub(crate) fn utc(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (H. Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// An age for a listing: `3s ago`, `5m ago`, `2h ago`, `4d ago` (whole units, rounded
/// down).
pub(crate) fn ago(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86_400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

fn node_row(v: &NodeView) -> Vec<String> {
    let id = &v.node.identity;
    let installed = v
        .node
        .inventory
        .as_ref()
        .and_then(|i| i.digest)
        .map(|d| d.short())
        .unwrap_or_else(|| "-".into());
    let (class, planned) = match (&v.plan, &v.plan_error) {
        (Some(p), _) => (
            p.class.clone(),
            format!(
                "{} {}{}",
                p.release,
                p.digest.short(),
                match (p.persist, p.test) {
                    (true, _) => "",
                    (false, true) => " (test, RAM)",
                    (false, false) => " (RAM)",
                }
            ),
        ),
        (None, Some(e)) => ("-".into(), format!("no plan: {e}")),
        (None, None) => ("-".into(), "-".into()),
    };
    let sync = match v.in_sync {
        Some(true) => "yes",
        Some(false) => "no",
        None => "-",
    };
    let state = match &v.node.state_reason {
        Some(r) => format!("{} ({r})", v.node.state),
        None => v.node.state.to_string(),
    };
    vec![
        format!("{}/{}", id.shelf, id.slot),
        id.mac.to_string(),
        id.card_type.clone(),
        id.arch.to_string(),
        class,
        state,
        if v.node.present { "yes" } else { "no" }.into(),
        v.seen_ago.map_or_else(|| "-".into(), ago),
        v.node.health.as_ref().map_or("-", |h| h.summary()).into(),
        installed,
        planned,
        sync.into(),
    ]
}

fn plan_text(p: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "plan for {} ({}): release {}, class {}, digest {}{}",
        p.node,
        p.arch,
        p.release,
        p.class,
        p.digest,
        match (p.persist, p.test) {
            (true, _) => "",
            (false, true) => ", TEST MODE (RAM only)",
            (false, false) => ", RAM-first (runs from RAM, flash not written)",
        }
    );
    let rows: Vec<Vec<String>> = p
        .explain
        .iter()
        .map(|r| vec![r.subject.clone(), r.rule.clone()])
        .collect();
    out.push_str(&table(&["DECISION", "RULE"], &rows));
    out.push_str(&wire_line(p));
    out
}

/// How the plan travels: one frame, fragments, or not at all (and why).
fn wire_line(p: &Plan) -> String {
    use shelfboot_proto::MAX_CONTROL_BODY_LEN;
    use shelfboot_proto::frag::{FRAGMENT_DATA_LEN, JUMBO_FRAGMENT_DATA_LEN};
    match p.wire_len() {
        Ok(n) if n <= MAX_CONTROL_BODY_LEN => format!("on the wire: {n} bytes, one frame\n"),
        Ok(n) => format!(
            "on the wire: {n} bytes in {} fragments at a 1500-byte MTU, {} at 9000 (cards speaking protocol version 1 cannot take it)\n",
            n.div_ceil(FRAGMENT_DATA_LEN),
            n.div_ceil(JUMBO_FRAGMENT_DATA_LEN)
        ),
        Err(e) => format!(
            "on the wire: CANNOT BE DELIVERED: {}\n",
            shelfboot_proto::report::error_chain(&e)
        ),
    }
}

fn plans_text(plans: &[Plan]) -> String {
    if plans.is_empty() {
        return "done; no registered card is affected\n".into();
    }
    let rows: Vec<Vec<String>> = plans
        .iter()
        .map(|p| {
            let pkgs: Vec<String> = p
                .packages
                .iter()
                .map(|a| format!("{}={}", a.name, a.version))
                .collect();
            vec![
                p.node.to_string(),
                p.class.clone(),
                p.release.to_string(),
                p.digest.short(),
                pkgs.join(" "),
            ]
        })
        .collect();
    format!(
        "done; plans of affected cards:\n{}",
        table(&["NODE", "CLASS", "RELEASE", "DIGEST", "PACKAGES"], &rows)
    )
}

/// Renders a reply for a terminal.
pub fn render(reply: &Reply) -> String {
    match reply {
        Reply::Pong => "master is up\n".into(),
        Reply::Cluster(c) => cluster_text(c),
        Reply::Done(msg) => format!("{msg}\n"),
        Reply::Nodes(nodes) => {
            let rows: Vec<Vec<String>> = nodes.iter().map(node_row).collect();
            table(
                &[
                    "SLOT",
                    "MAC",
                    "TYPE",
                    "ARCH",
                    "CLASS",
                    "STATE",
                    "PRESENT",
                    "LAST-SEEN",
                    "HEALTH",
                    "INSTALLED",
                    "PLANNED",
                    "IN-SYNC",
                ],
                &rows,
            )
        }
        Reply::Packages {
            packages,
            boot_images,
        } => {
            let rows: Vec<Vec<String>> = packages
                .iter()
                .map(|p| {
                    let deps: Vec<String> =
                        p.depends.iter().map(|(n, r)| format!("{n} {r}")).collect();
                    vec![
                        p.name.clone(),
                        p.version.to_string(),
                        p.arch.to_string(),
                        p.provides.join(","),
                        deps.join(", "),
                        p.payload.size.to_string(),
                        p.releases.join(" "),
                    ]
                })
                .collect();
            let boots: Vec<Vec<String>> = boot_images
                .iter()
                .map(|b| {
                    vec![
                        b.name.clone(),
                        b.version.to_string(),
                        b.card_type.clone(),
                        b.arch.to_string(),
                        b.image.size.to_string(),
                        b.releases.join(" "),
                    ]
                })
                .collect();
            format!(
                "{}\n{}",
                table(
                    &[
                        "PACKAGE", "VERSION", "ARCH", "PROVIDES", "DEPENDS", "BYTES", "RELEASES"
                    ],
                    &rows
                ),
                table(
                    &[
                        "BOOT IMAGE",
                        "VERSION",
                        "CARD TYPE",
                        "ARCH",
                        "BYTES",
                        "RELEASES"
                    ],
                    &boots
                )
            )
        }
        Reply::Releases(rels) => {
            let rows: Vec<Vec<String>> = rels
                .iter()
                .map(|r| {
                    vec![
                        r.release.to_string(),
                        utc(r.imported_at),
                        r.signer.clone(),
                        r.boot_images.to_string(),
                        r.packages.to_string(),
                        r.classes.join(","),
                    ]
                })
                .collect();
            table(
                &[
                    "RELEASE",
                    "IMPORTED (UTC)",
                    "SIGNER",
                    "BOOT",
                    "PACKAGES",
                    "CLASSES",
                ],
                &rows,
            )
        }
        Reply::Classes(classes) => {
            let rows: Vec<Vec<String>> = classes
                .iter()
                .map(|c| {
                    let r = &c.class.rule;
                    let mut rule = Vec::new();
                    if !r.card_types.is_empty() {
                        rule.push(format!("type {}", r.card_types.join("|")));
                    }
                    if !r.slots.is_empty() {
                        let s: Vec<String> = r.slots.iter().map(ToString::to_string).collect();
                        rule.push(format!("slot {}", s.join(",")));
                    }
                    if !r.features.is_empty() {
                        rule.push(format!("wants {}", r.features.join(",")));
                    }
                    let pkgs: Vec<String> = c
                        .class
                        .packages
                        .iter()
                        .map(|(n, v)| format!("{n} {v}"))
                        .collect();
                    let release = match c.assignment.as_ref().and_then(|a| a.release.as_ref()) {
                        Some(r) => format!("{r} (assigned)"),
                        None => c.release.to_string(),
                    };
                    let nodes: Vec<String> = c.nodes.iter().map(ToString::to_string).collect();
                    vec![
                        c.class.name.clone(),
                        if rule.is_empty() {
                            "any".into()
                        } else {
                            rule.join(", ")
                        },
                        c.class.boot.clone().unwrap_or_else(|| "-".into()),
                        pkgs.join(", "),
                        c.class.features.join(","),
                        release,
                        nodes.join(" "),
                    ]
                })
                .collect();
            table(
                &[
                    "CLASS", "MATCH", "BOOT", "PACKAGES", "FEATURES", "RELEASE", "NODES",
                ],
                &rows,
            )
        }
        Reply::Assignments(list) => {
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|a| {
                    let pins: Vec<String> =
                        a.pins.iter().map(|(n, v)| format!("{n}={v}")).collect();
                    vec![
                        a.target.to_string(),
                        a.release
                            .as_ref()
                            .map(ToString::to_string)
                            .unwrap_or_else(|| "-".into()),
                        pins.join(" "),
                        utc(a.set_at),
                    ]
                })
                .collect();
            table(&["TARGET", "RELEASE", "PINS", "SET (UTC)"], &rows)
        }
        Reply::NodeAdded { mac, new } => {
            if *new {
                format!("registered node {mac}\n")
            } else {
                format!("updated node {mac}\n")
            }
        }
        Reply::Plans(plans) => plans_text(plans),
        Reply::TestMode(Some(p)) => plan_text(p),
        Reply::TestMode(None) => "test mode off; the card gets its persistent plan\n".into(),
        Reply::History(events) => {
            let rows: Vec<Vec<String>> = events
                .iter()
                .map(|e| {
                    vec![
                        utc(e.at),
                        e.node
                            .as_ref()
                            .map(ToString::to_string)
                            .unwrap_or_else(|| "-".into()),
                        e.kind.clone(),
                        e.detail.clone(),
                    ]
                })
                .collect();
            table(&["TIME (UTC)", "NODE", "EVENT", "DETAIL"], &rows)
        }
        Reply::Explain(p) => plan_text(p),
        Reply::Trusted(k) => format!("trusted key {} ({})\n", k.key_id, k.comment),
        Reply::Keys(keys) => {
            let rows: Vec<Vec<String>> = keys
                .iter()
                .map(|k| vec![k.key_id.clone(), utc(k.added_at), k.comment.clone()])
                .collect();
            table(&["KEY ID", "ADDED (UTC)", "COMMENT"], &rows)
        }
        Reply::Imported(r) => {
            let mut text = match r.outcome {
                crate::store::ImportOutcome::Imported => format!(
                    "imported {} signed by {}: {} blobs stored, {} already present, {} bytes verified\n",
                    r.release, r.signer, r.blobs_stored, r.blobs_present, r.bytes
                ),
                crate::store::ImportOutcome::AlreadyPresent => format!(
                    "{} is already imported ({} bytes verified); nothing changed\n",
                    r.release, r.bytes
                ),
            };
            for f in &r.fragmented {
                text.push_str(&format!("note: {f}\n"));
            }
            text
        }
        Reply::Gc(g) => {
            let del: Vec<String> = g.deleted_releases.iter().map(ToString::to_string).collect();
            let kept: Vec<String> = g.kept_releases.iter().map(ToString::to_string).collect();
            format!(
                "deleted releases: {}\nkept releases: {}\nremoved {} unreferenced blobs, {} temp files\n",
                if del.is_empty() {
                    "none".into()
                } else {
                    del.join(" ")
                },
                kept.join(" "),
                g.removed_blobs,
                g.removed_temp_files
            )
        }
    }
}

/// `master cluster status`: this member's view, then a row per member.
fn cluster_text(c: &crate::cluster::ClusterStatus) -> String {
    let leader = c
        .leader
        .map(|l| format!("master {l}"))
        .unwrap_or_else(|| "none (election under way, or no quorum)".into());
    let mut text = format!(
        "this master: {} ({}), term {}, epoch {}, {}\nleader: {leader}\nlog: last index {}, applied {}\n",
        c.id,
        c.role,
        c.term,
        c.epoch,
        if c.serving {
            "serving the backplane"
        } else {
            "not serving"
        },
        c.last_log_index.map_or("-".into(), |i| i.to_string()),
        c.applied_index.map_or("-".into(), |i| i.to_string()),
    );
    let rows: Vec<Vec<String>> = c
        .members
        .iter()
        .map(|m| {
            let role = if Some(m.id) == c.leader {
                "leader"
            } else if m.reported.as_ref().is_some_and(|r| r.witness) {
                "witness"
            } else if m.voter {
                "voter"
            } else {
                "learner"
            };
            let (applied, blobs) = match &m.reported {
                None => ("no answer".to_owned(), "-".to_owned()),
                Some(r) => (
                    r.applied_index.map_or("-".into(), |i| i.to_string()),
                    if r.witness {
                        "none (witness)".into()
                    } else if r.missing_blobs == 0 {
                        "complete".into()
                    } else {
                        format!("{} missing", r.missing_blobs)
                    },
                ),
            };
            vec![
                m.id.to_string(),
                m.addr.clone(),
                role.into(),
                m.matched.map_or("-".into(), |i| i.to_string()),
                applied,
                blobs,
            ]
        })
        .collect();
    if c.succession.is_empty() {
        text.push_str("order of succession: none set (any complete member may take over)\n");
    } else {
        let order: Vec<String> = c.succession.iter().map(ToString::to_string).collect();
        text.push_str(&format!(
            "order of succession: {}; next: {}\n",
            order.join(", "),
            c.next.map_or("-".into(), |n| format!("master {n}"))
        ));
    }
    if c.missing_blobs > 0 {
        text.push_str(&format!(
            "this master lacks {} blobs (fetching): it cannot serve until it has them\n",
            c.missing_blobs
        ));
    }
    text.push_str(&table(
        &["ID", "ADDRESS", "ROLE", "MATCHED", "APPLIED", "BLOBS"],
        &rows,
    ));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(utc(1_795_600_000), "2026-11-25 09:46:40");
    }

    #[test]
    fn explain_says_how_the_plan_travels() {
        use crate::resolve::PlannedArtifact;
        use shelfboot_proto::id::{Arch, Digest};
        let art = |kind: &str, name: String| PlannedArtifact {
            kind: kind.into(),
            name,
            version: semver::Version::new(1, 0, 0),
            arch: Arch::X86_64,
            blob: crate::image::manifest::BlobRef {
                sha256: Digest([7; 32]),
                size: 4096,
            },
            rule: String::new(),
        };
        let plan = |n: usize| Plan {
            node: "02:00:00:00:00:01".parse().unwrap(),
            release: crate::state::parse_release("shelf-os@1.0.0").unwrap(),
            class: "linecards".into(),
            arch: Arch::X86_64,
            boot: art("boot", "lc-kernel".into()),
            cmdline: "console=ttyS0".into(),
            packages: (0..n)
                .map(|i| art("package", format!("pkg-{}-{i:03}", "x".repeat(56))))
                .collect(),
            persist: true,
            test: false,
            digest: Digest([1; 32]),
            explain: Vec::new(),
        };
        assert!(wire_line(&plan(3)).ends_with("bytes, one frame\n"));
        let two = wire_line(&plan(30));
        assert!(
            two.contains(
                " fragments at a 1500-byte MTU, 1 at 9000 (cards speaking protocol version 1"
            ),
            "{two}"
        );
        let none = wire_line(&plan(600));
        assert!(
            none.starts_with("on the wire: CANNOT BE DELIVERED: "),
            "{none}"
        );
        assert!(none.contains("65536"), "{none}");
    }

    #[test]
    fn ages_are_in_whole_units() {
        assert_eq!(ago(0), "0s ago");
        assert_eq!(ago(59), "59s ago");
        assert_eq!(ago(60), "1m ago");
        assert_eq!(ago(7199), "1h ago");
        assert_eq!(ago(3 * 86_400 + 5), "3d ago");
    }

    #[test]
    fn tables_align() {
        let t = table(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "A    BB\nxxx  y\n");
    }
}
