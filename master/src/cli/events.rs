//! `master events`: the node database's history (imports, assignments, fleet orders,
//! card states and errors), and with `--follow` the events as they are recorded.
//!
//! Each read is one control request (`Request::Events`: events after the last id
//! printed), sent to the state's owner (`master serve` or a daemon) or run in-process
//! as any CLI command is (see [`super::run_request`]); following polls every
//! `--interval-ms` and never holds the state between polls. Text: one line per event;
//! `--json`: one JSON object per line (the [`Event`] fields).
//!
//! This module prints; the events are written by the operations that make them
//! ([`crate::store`]).

use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use shelfboot_proto::id::MacAddr;

use super::{CliError, output};
use crate::control::{Reply, Request};
use crate::store::Event;

/// Events read per request at most (a follow that fell behind reads on at once).
pub const BATCH: u32 = 500;

/// `master events` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct EventsArgs {
    /// Keep printing events as they are recorded (until Ctrl-C).
    #[arg(short, long)]
    pub follow: bool,
    /// One card's events only.
    #[arg(long)]
    pub node: Option<MacAddr>,
    /// How many past events to print first.
    #[arg(long, default_value_t = 20)]
    pub last: u32,
    /// Time between two reads while following, in milliseconds (100-10000).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(100..=10_000))]
    pub interval_ms: u64,
}

/// One event as a text line: `2026-12-05 14:03:05  02:5c:00:00:00:01  state  fetching`.
pub fn line(e: &Event) -> String {
    format!(
        "{}  #{}  {}  {}  {}",
        output::utc(e.at),
        e.id,
        e.node
            .as_ref()
            .map_or_else(|| "-".to_owned(), ToString::to_string),
        e.kind,
        e.detail
    )
}

/// Reads events with `read(after, limit)` and prints them until `stop` (following) or
/// once. `read` is the control request in the CLI; tests pass the store.
pub fn run_with(
    args: &EventsArgs,
    json: bool,
    out: &mut dyn Write,
    stop: &AtomicBool,
    read: &mut dyn FnMut(i64, u32) -> Result<Vec<Event>, CliError>,
) -> Result<(), CliError> {
    // The last `--last` events: the newest id less that many is where reading starts.
    let newest = read_newest(read)?;
    let mut after = newest.saturating_sub(i64::from(args.last));
    let interval = Duration::from_millis(args.interval_ms.clamp(100, 10_000));
    loop {
        let started = Instant::now();
        loop {
            let batch = read(after, BATCH)?;
            let full = batch.len() == BATCH as usize;
            for e in &batch {
                let text = if json {
                    serde_json::to_string(e).map_err(|e| CliError::Output(io::Error::other(e)))?
                } else {
                    line(e)
                };
                match writeln!(out, "{text}") {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
                    Err(e) => return Err(CliError::Output(e)),
                }
                after = after.max(e.id);
            }
            if !full {
                break;
            }
        }
        match out.flush() {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(CliError::Output(e)),
        }
        if !args.follow {
            return Ok(());
        }
        while started.elapsed() < interval {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
    }
}

/// The id of the newest event (0 with none): event ids only grow.
fn read_newest(
    read: &mut dyn FnMut(i64, u32) -> Result<Vec<Event>, CliError>,
) -> Result<i64, CliError> {
    // Skip ahead in large steps: the history is read BATCH events at a time.
    let mut after = 0;
    loop {
        let batch = read(after, BATCH)?;
        match batch.last() {
            Some(e) if batch.len() == BATCH as usize => after = e.id,
            Some(e) => return Ok(e.id),
            None => return Ok(after),
        }
    }
}

/// `master events` against the state's owner (or in-process).
pub fn run(
    state: &Path,
    args: &EventsArgs,
    json: bool,
    out: &mut dyn Write,
    stop: &AtomicBool,
) -> Result<(), CliError> {
    let node = args.node;
    run_with(
        args,
        json,
        out,
        stop,
        &mut |after, limit| match super::run_request(state, Request::Events { node, after, limit })?
        {
            Reply::History(events) => Ok(events),
            other => Err(CliError::Output(io::Error::other(format!(
                "the master answered an events request with {other:?}"
            )))),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store as _;
    use crate::store::sqlite::SqliteStore;

    fn args(follow: bool, last: u32) -> EventsArgs {
        EventsArgs {
            follow,
            node: None,
            last,
            interval_ms: 100,
        }
    }

    #[test]
    fn prints_the_last_events_then_follows_new_ones() {
        let mut m = SqliteStore::open_in_memory().unwrap();
        let mac: MacAddr = "02:00:00:00:00:07".parse().unwrap();
        for i in 0..5 {
            m.record_event(Some(&mac), "state", &format!("step {i}"), 1_795_600_000)
                .unwrap();
        }
        let stop = AtomicBool::new(false);
        let mut out = Vec::new();
        let mut read = |after, limit| Ok(m.events_after(None, after, limit).unwrap());
        run_with(&args(false, 2), false, &mut out, &stop, &mut read).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "2026-11-25 09:46:40  #4  02:00:00:00:00:07  state  step 3\n\
             2026-11-25 09:46:40  #5  02:00:00:00:00:07  state  step 4\n"
        );
        // Following: the first read prints nothing new; an event recorded meanwhile
        // comes out on the next poll; the stop flag ends it.
        let store = std::sync::Mutex::new(m);
        let polls = std::sync::atomic::AtomicU32::new(0);
        let mut out = Vec::new();
        let mut read = |after, limit| {
            let mut m = store.lock().unwrap();
            let n = polls.fetch_add(1, Ordering::Relaxed);
            if n == 2 {
                m.record_event(None, "fleet", "reset ordered for every card", 1_795_600_001)
                    .unwrap();
            }
            if n >= 4 {
                stop.store(true, Ordering::Relaxed);
            }
            Ok(m.events_after(None, after, limit).unwrap())
        };
        run_with(&args(true, 0), true, &mut out, &stop, &mut read).unwrap();
        let lines: Vec<Event> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!((lines[0].id, lines[0].kind.as_str()), (6, "fleet"));
    }
}
