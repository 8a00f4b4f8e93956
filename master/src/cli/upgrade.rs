//! `master upgrade`: running cards move to their plan in service. Each card's resident
//! agent stages the plan while the card runs, commits it and kexecs into it (see
//! docs/service.md); this module only orders and watches, through the serving master's
//! control socket.
//!
//! Without `--wave`, one order goes out (to the card named, or to every card). With
//! `--wave N`, the cards that are present and not running their plan are upgraded N at a
//! time: a wave is ordered, then watched (the node database, once a second) until the
//! resident agent of every card of it reports its plan running and healthy (or without
//! a health command); the first card that fails, is unhealthy on its plan, goes absent or
//! misses the wave's deadline stops the run, and the cards of later waves are not
//! started.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::{CliError, run_request};
use crate::control::{Reply, Request};
use crate::state::{FleetAction, NodeView};
use crate::store::{Health, NodeState};
use shelfboot_proto::id::MacAddr;

/// What `master upgrade` was asked.
#[derive(Debug, Clone)]
pub struct UpgradeArgs {
    /// One card, or every card.
    pub node: Option<MacAddr>,
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

/// True once the card's resident agent reports it runs its plan, healthy (or with no
/// health command to pass).
fn runs_plan(v: &NodeView) -> bool {
    let Some(plan) = v.plan.as_ref().map(|p| p.digest) else {
        return false;
    };
    v.node.present
        && v.node.health.as_ref().is_some_and(|h| {
            h.running == Some(plan) && matches!(h.health, Health::Healthy | Health::None)
        })
}

/// Why a card of a wave did not make it.
fn failure(v: &NodeView) -> Option<String> {
    if !v.node.present {
        return Some("absent (no frame within the absence interval)".into());
    }
    if let Some(h) = &v.node.health
        && let Some(plan) = v.plan.as_ref().map(|p| p.digest)
        && (h.rolled_back_from == Some(plan)
            || (h.health == Health::Unhealthy && h.running == Some(plan)))
    {
        return Some(format!("is unhealthy on its plan: {}", h.detail));
    }
    if v.node.state == NodeState::Failed {
        return Some(format!(
            "failed: {}",
            v.node
                .state_reason
                .as_deref()
                .unwrap_or("no reason recorded")
        ));
    }
    None
}

/// Runs `master upgrade`; lines of progress go to `out`.
pub fn run(
    state: &Path,
    args: &UpgradeArgs,
    out: &mut dyn Write,
    stop: &AtomicBool,
) -> Result<(), CliError> {
    let w = |out: &mut dyn Write, s: String| writeln!(out, "{s}").map_err(CliError::Output);
    let Some(size) = args.wave else {
        return w(out, order(state, args.node)?);
    };
    let size = usize::try_from(size.max(1)).unwrap_or(1);
    let mut todo: Vec<NodeView> = nodes(state)?
        .into_iter()
        .filter(|v| args.node.is_none_or(|m| v.node.identity.mac == m))
        .filter(|v| v.node.present && v.in_sync == Some(false))
        .collect();
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
                if runs_plan(v) {
                    done += 1;
                    w(
                        out,
                        format!(
                            "  {m} runs its plan ({:.1} s); {done} of {total} done",
                            started.elapsed().as_secs_f64()
                        ),
                    )?;
                } else if let Some(why) = failure(v).filter(|_| seen) {
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
