//! `master upgrade`: running cards move to their plan in service. Each card's resident
//! agent stages the plan while the card runs, commits it and kexecs into it (see
//! docs/service.md); this module only orders and watches, through the serving master's
//! control socket.
//!
//! Without `--wave` or `--class`, one order goes out (to the card named, or to every
//! card). With `--wave N` (and/or `--class C`: the cards whose plan uses class C; without
//! `--wave`, all of them as one wave), the cards that are present and not running their
//! plan are upgraded N at a time: a wave is ordered, then watched (the node database,
//! once a second) until the resident agent of every card of it reports its plan running
//! and healthy (or without a health command); the first card that fails, is unhealthy on
//! its plan, is silent for over a minute (a kexec is shorter; the master records a card
//! absent sooner) or misses the wave's deadline stops the run, and the cards of later
//! waves are not started.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::{CliError, run_request};
use crate::control::{Reply, Request};
use crate::state::{FleetAction, NodeView};
use crate::store::{Health, NodeRecord, NodeState};
use shelfboot_proto::id::Digest;
use shelfboot_proto::id::MacAddr;

/// What `master upgrade` was asked.
#[derive(Debug, Clone)]
pub struct UpgradeArgs {
    /// One card, or every card.
    pub node: Option<MacAddr>,
    /// Only the cards whose plan uses this class.
    pub class: Option<String>,
    /// Cards per wave; `None`: one order, no watching.
    pub wave: Option<u32>,
    /// Longest time one wave may take.
    pub wave_timeout: Duration,
}

fn order(state: &Path, target: Option<MacAddr>) -> Result<String, CliError> {
    let reply = run_request(
        state,
        Request::Fleet {
            action: FleetAction::Upgrade,
            target,
        },
    )?;
    Ok(match reply {
        Reply::Done(s) => s,
        other => format!("{other:?}"),
    })
}

fn nodes(state: &Path) -> Result<Vec<NodeView>, CliError> {
    match run_request(state, Request::Nodes)? {
        Reply::Nodes(v) => Ok(v),
        other => Err(CliError::Upgrade(format!(
            "the master answered the node list with {other:?}"
        ))),
    }
}

/// Where one card of a wave is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Judged {
    /// Its resident agent reports its plan running, healthy (or with no health command).
    Runs,
    /// It will not get there: why.
    Failed(String),
    /// Not yet.
    Waiting,
}

/// A card of a wave may be silent this long (a kexec, a slow boot) before it counts as
/// gone; the master records it absent sooner.
const ABSENT_GRACE_S: u64 = 60;

/// Judges a card from its node record, how long ago it was heard and its plan's digest.
fn judge(node: &NodeRecord, seen_ago: Option<u64>, plan: Option<Digest>) -> Judged {
    let Some(plan) = plan else {
        return Judged::Failed("has no plan".into());
    };
    if !node.present {
        return match seen_ago {
            Some(s) if s <= ABSENT_GRACE_S => Judged::Waiting,
            _ => Judged::Failed(format!("absent (not heard for over {ABSENT_GRACE_S} s)")),
        };
    }
    if let Some(h) = &node.health {
        if h.running == Some(plan) && matches!(h.health, Health::Healthy | Health::None) {
            return Judged::Runs;
        }
        if h.rolled_back_from == Some(plan)
            || (h.health == Health::Unhealthy && h.running == Some(plan))
        {
            return Judged::Failed(format!("is unhealthy on its plan: {}", h.detail));
        }
    }
    if node.state == NodeState::Failed {
        return Judged::Failed(format!(
            "failed: {}",
            node.state_reason.as_deref().unwrap_or("no reason recorded")
        ));
    }
    Judged::Waiting
}

/// Runs `master upgrade`; lines of progress go to `out`.
pub fn run(
    state: &Path,
    args: &UpgradeArgs,
    out: &mut dyn Write,
    stop: &AtomicBool,
) -> Result<(), CliError> {
    let w = |out: &mut dyn Write, s: String| writeln!(out, "{s}").map_err(CliError::Output);
    if args.wave.is_none() && args.class.is_none() {
        return w(out, order(state, args.node)?);
    }
    let mut todo: Vec<NodeView> = nodes(state)?
        .into_iter()
        .filter(|v| args.node.is_none_or(|m| v.node.identity.mac == m))
        .filter(|v| {
            args.class
                .as_ref()
                .is_none_or(|c| v.plan.as_ref().is_some_and(|p| &p.class == c))
        })
        .filter(|v| v.node.present && v.in_sync == Some(false))
        .collect();
    // A class without --wave is one wave, watched.
    let size = args
        .wave
        .map_or(todo.len(), |n| usize::try_from(n).unwrap_or(usize::MAX))
        .max(1);
    todo.sort_by_key(|v| (v.node.identity.shelf, v.node.identity.slot));
    if todo.is_empty() {
        return w(
            out,
            "nothing to upgrade: every present card runs its plan".into(),
        );
    }
    let total = todo.len();
    w(out, format!("upgrading {total} card(s) in waves of {size}"))?;
    let mut done = 0usize;
    for (n, wave) in todo.chunks(size).enumerate() {
        let macs: Vec<MacAddr> = wave.iter().map(|v| v.node.identity.mac).collect();
        for m in &macs {
            order(state, Some(*m))?;
        }
        let names: Vec<String> = macs.iter().map(ToString::to_string).collect();
        w(out, format!("wave {}: ordered {}", n + 1, names.join(", ")))?;
        let started = Instant::now();
        let mut left = macs.clone();
        while !left.is_empty() {
            if stop.load(Ordering::Relaxed) {
                return Err(CliError::Upgrade(format!(
                    "interrupted during wave {}: {} card(s) not confirmed",
                    n + 1,
                    left.len()
                )));
            }
            std::thread::sleep(Duration::from_secs(1));
            let now = nodes(state)?;
            let mut still = Vec::new();
            for m in left {
                let Some(v) = now.iter().find(|v| v.node.identity.mac == m) else {
                    return Err(CliError::Upgrade(format!(
                        "card {m} left the node database"
                    )));
                };
                // Wait for the card to go through its upgrade before judging it.
                let seen = started.elapsed() > Duration::from_secs(3);
                let judged = judge(&v.node, v.seen_ago, v.plan.as_ref().map(|p| p.digest));
                if judged == Judged::Runs {
                    done += 1;
                    w(
                        out,
                        format!(
                            "  {m} runs its plan ({:.1} s); {done} of {total} done",
                            started.elapsed().as_secs_f64()
                        ),
                    )?;
                } else if let Judged::Failed(why) = judged
                    && seen
                {
                    return Err(CliError::Upgrade(format!(
                        "stopping: card {m} {why}; {} card(s) of later waves not started",
                        total.saturating_sub(n * size + wave.len())
                    )));
                } else {
                    still.push(m);
                }
            }
            left = still;
            if !left.is_empty() && started.elapsed() > args.wave_timeout {
                let names: Vec<String> = left.iter().map(ToString::to_string).collect();
                return Err(CliError::Upgrade(format!(
                    "stopping: wave {} not done within {:?} ({} still upgrading); {} card(s) of later waves not started",
                    n + 1,
                    args.wave_timeout,
                    names.join(", "),
                    total.saturating_sub(n * size + wave.len())
                )));
            }
        }
    }
    w(out, format!("upgraded {done} card(s)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NodeHealth;

    fn node(present: bool, state: NodeState, health: Option<NodeHealth>) -> NodeRecord {
        let mut n: NodeRecord = serde_json::from_value(serde_json::json!({
            "identity": {
                "mac": "02:00:00:00:00:01", "card_type": "lc100", "arch": "x86_64",
                "shelf": 0, "slot": 1, "hw_rev": "A", "features": []
            },
            "class": null, "present": true, "last_seen": null, "state": "ready",
            "state_reason": null, "inventory": null, "test_mode": null, "registered_at": 0
        }))
        .expect("a node record");
        n.present = present;
        n.state = state;
        n.health = health;
        n
    }

    fn report(health: Health, running: u8, rolled_back_from: Option<u8>) -> NodeHealth {
        NodeHealth {
            health,
            running: Some(Digest([running; 32])),
            rolled_back_from: rolled_back_from.map(|b| Digest([b; 32])),
            dropped: 0,
            detail: "why".into(),
        }
    }

    #[test]
    fn a_wave_card_runs_its_plan_only_when_its_agent_says_so_healthy() {
        let plan = Some(Digest([2; 32]));
        let ready = NodeState::Ready;
        // Still on the old set, or checking the new one: wait.
        for h in [
            report(Health::None, 1, None),
            report(Health::Checking, 2, None),
        ] {
            assert_eq!(
                judge(&node(true, ready, Some(h)), Some(1), plan),
                Judged::Waiting
            );
        }
        assert_eq!(
            judge(&node(true, ready, None), Some(1), plan),
            Judged::Waiting
        );
        // Silent for a kexec: recorded absent by the master, not yet gone for the wave.
        let kexec = node(false, ready, Some(report(Health::Healthy, 1, None)));
        assert_eq!(judge(&kexec, Some(12), plan), Judged::Waiting);
        for h in [Health::Healthy, Health::None] {
            assert_eq!(
                judge(&node(true, ready, Some(report(h, 2, None))), Some(0), plan),
                Judged::Runs
            );
        }
    }

    #[test]
    fn a_wave_stops_on_absence_failure_unhealth_or_rollback() {
        let plan = Some(Digest([2; 32]));
        let cases = [
            (
                node(
                    false,
                    NodeState::Ready,
                    Some(report(Health::Healthy, 1, None)),
                ),
                "absent",
            ),
            (node(true, NodeState::Failed, None), "failed"),
            (
                node(
                    true,
                    NodeState::Ready,
                    Some(report(Health::Unhealthy, 2, None)),
                ),
                "unhealthy",
            ),
            (
                node(
                    true,
                    NodeState::Ready,
                    Some(report(Health::None, 1, Some(2))),
                ),
                "unhealthy",
            ),
        ];
        for (n, word) in cases {
            match judge(&n, Some(61), plan) {
                Judged::Failed(why) => assert!(why.contains(word), "{why}"),
                other => panic!("{other:?} for {n:?}"),
            }
        }
        assert!(matches!(
            judge(&node(true, NodeState::Ready, None), Some(0), None),
            Judged::Failed(_)
        ));
        let never = node(false, NodeState::Ready, None);
        assert!(matches!(judge(&never, None, plan), Judged::Failed(_)));
    }
}
