//! Boot-path timing: how long each step between the kernel starting `/init` and the first
//! Solicit took, on the console, for operators and for the boot-path benchmark.
//!
//! Every stamp is CLOCK_MONOTONIC, which in a guest (and on a card) counts from kernel
//! start, so the numbers line up with the kernel's own `[   1.234]` stamps. Each step
//! that finishes logs one line, `boot step: NAME N ms (at +S ms)` (S: when it started,
//! after `/init` started), and the first Solicit logs one summary line that the benchmark
//! parses (`bench/src/lab.rs`, `parse_step_timings`; [`parse_summary`] here):
//!
//! ```text
//! boot timing: mounts 16 ms, config 9 ms, entropy 1869 ms (parallel), modules 1155 ms
//!   (parallel), link 228 ms (parallel), flash attach 236 ms (parallel), inventory 101 ms
//!   (parallel), socket 98 ms (parallel), agent store 285 ms (parallel); first Solicit at
//!   1948 ms after /init; kernel start to /init 3056 ms; init CPU user 150 ms, system 1650 ms
//! ```
//!
//! (one line on the console). `(parallel)` marks a step that started before an earlier
//! step ended (the entropy and link threads), so step times then add up to more than the
//! total. `init CPU` is PID 1's CPU time (all threads) from the mounts to the Solicit:
//! user = init's own code, system = the kernel working in init's calls. The recorder is a process
//! global (PID 1 is one process; the link thread and the agent record into it), written
//! a handful of times per boot. Not here: what the steps do ([`crate::flow`]), the
//! Solicit itself (the agent, [`crate::provision`]).

use std::sync::Mutex;
use std::time::Duration;

/// One finished step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Short name (`modules`, `link`, ...).
    pub name: &'static str,
    /// CLOCK_MONOTONIC when it started.
    pub start: Duration,
    /// CLOCK_MONOTONIC when it ended.
    pub end: Duration,
}

impl Step {
    /// How long it took.
    pub fn took(&self) -> Duration {
        self.end.saturating_sub(self.start)
    }
}

/// The steps of this boot, from `/init` starting.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootTimes {
    /// CLOCK_MONOTONIC when `/init` started (= kernel start to /init).
    pub init_start: Duration,
    /// Steps in the order they finished.
    pub steps: Vec<Step>,
    /// Whether the summary was already printed.
    pub summarized: bool,
    /// init's CPU times `(user, system)` right after the mounts ([`cpu_baseline`]).
    pub cpu_at_start: Option<(Duration, Duration)>,
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

impl BootTimes {
    /// A recorder whose `/init` started at `init_start`.
    pub fn new(init_start: Duration) -> Self {
        Self {
            init_start,
            ..Self::default()
        }
    }

    /// Records a finished step and returns its console line.
    pub fn record(&mut self, name: &'static str, start: Duration, end: Duration) -> String {
        let s = Step { name, start, end };
        let line = format!(
            "boot step: {name} {} ms (at +{} ms)",
            ms(s.took()),
            ms(start.saturating_sub(self.init_start))
        );
        self.steps.push(s);
        line
    }

    /// The summary line at `now` (the first Solicit): each step in the order it started,
    /// `(parallel)` on a step that started before the one listed before it ended; then,
    /// if known, init's CPU time since the mounts (all threads): user (init's own
    /// code) and system (the kernel working in init's system calls: module init
    /// functions, the UBI attach scan, the entropy wait's jitter loop).
    pub fn summary(&self, now: Duration, cpu: Option<(Duration, Duration)>) -> String {
        let mut steps: Vec<&Step> = self.steps.iter().collect();
        steps.sort_by_key(|s| s.start);
        let mut parts = Vec::with_capacity(steps.len());
        let mut prev_end: Option<Duration> = None;
        for s in steps {
            let parallel = prev_end.is_some_and(|e| s.start < e);
            parts.push(format!(
                "{} {} ms{}",
                s.name,
                ms(s.took()),
                if parallel { " (parallel)" } else { "" }
            ));
            prev_end = Some(prev_end.map_or(s.end, |e| e.max(s.end)));
        }
        let cpu = cpu.map_or(String::new(), |(user, system)| {
            format!("; init CPU user {} ms, system {} ms", ms(user), ms(system))
        });
        format!(
            "boot timing: {}; first Solicit at {} ms after /init; kernel start to /init {} ms{cpu}",
            parts.join(", "),
            ms(now.saturating_sub(self.init_start)),
            ms(self.init_start)
        )
    }
}

static TIMES: Mutex<Option<BootTimes>> = Mutex::new(None);

/// CLOCK_MONOTONIC now (zero if the clock cannot be read, which Linux never does).
pub fn now() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(Duration::ZERO, |t| {
        Duration::new(
            u64::try_from(t.tv_sec()).unwrap_or(0),
            u32::try_from(t.tv_nsec()).unwrap_or(0),
        )
    })
}

/// Starts the recorder: `/init` started now. Returns the stamp.
pub fn start() -> Duration {
    let t = now();
    if let Ok(mut g) = TIMES.lock() {
        *g = Some(BootTimes::new(t));
    }
    t
}

/// Takes init's CPU-time baseline (call once /proc is mounted): PID 1 was the kernel's
/// own init thread before `/init`, and that thread's time (the built-in initcalls,
/// unpacking the initramfs) is not init's.
pub fn cpu_baseline() {
    let cpu = cpu_times();
    if let Ok(mut g) = TIMES.lock()
        && let Some(t) = g.as_mut()
    {
        t.cpu_at_start = cpu;
    }
}

/// Records step `name` that started at `start` (from [`now`]) and ends now; logs its line.
/// Does nothing if [`start`] was not called (tests, check mode, the lab binaries' own
/// flows log nothing extra then).
pub fn step(name: &'static str, start: Duration) {
    let end = now();
    let line = TIMES
        .lock()
        .ok()
        .and_then(|mut g| g.as_mut().map(|t| t.record(name, start, end)));
    if let Some(l) = line {
        log::info!("{l}");
    }
}

/// `(user, system)` CPU time from the text of `/proc/self/stat` (fields 14 and 15, in
/// clock ticks of `ticks_per_s`); the command name (field 2) may hold spaces and
/// parentheses, so fields are counted after its last `)`.
pub fn parse_stat(text: &str, ticks_per_s: u64) -> Option<(Duration, Duration)> {
    let rest = &text[text.rfind(')')? + 1..];
    // After the name: state is field 3, so utime (14) is the 12th field here.
    let mut f = rest.split_whitespace().skip(11);
    let user: u64 = f.next()?.parse().ok()?;
    let system: u64 = f.next()?.parse().ok()?;
    let tick = |t: u64| Duration::from_nanos(t.saturating_mul(1_000_000_000) / ticks_per_s.max(1));
    Some((tick(user), tick(system)))
}

/// init's CPU time so far (all threads), from `/proc/self/stat`.
fn cpu_times() -> Option<(Duration, Duration)> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())?;
    parse_stat(&text, hz)
}

/// Logs the summary line once, at the first Solicit (later calls do nothing).
pub fn first_solicit() {
    let at = now();
    let cpu = cpu_times();
    let line = TIMES.lock().ok().and_then(|mut g| {
        let t = g.as_mut()?;
        if t.summarized {
            return None;
        }
        t.summarized = true;
        let cpu = cpu
            .zip(t.cpu_at_start)
            .map(|((u, s), (u0, s0))| (u.saturating_sub(u0), s.saturating_sub(s0)));
        Some(t.summary(at, cpu))
    });
    if let Some(l) = line {
        log::info!("{l}");
    }
}

/// Parses a summary line back: `(step, ms)` pairs, then `("first Solicit", ms)` and
/// `("kernel to /init", ms)`. For the benchmark and the tests; `None` if `line` holds no
/// summary.
pub fn parse_summary(line: &str) -> Option<Vec<(String, u64)>> {
    let rest = line.split("boot timing: ").nth(1)?;
    let (steps, tail) = rest.split_once("; first Solicit at ")?;
    let mut out = Vec::new();
    for part in steps.split(", ").filter(|p| !p.is_empty()) {
        let part = part.trim_end_matches(" (parallel)");
        let (name, n) = part.strip_suffix(" ms")?.rsplit_once(' ')?;
        out.push((name.to_string(), n.parse().ok()?));
    }
    let (first, kernel) = tail.split_once(" ms after /init; kernel start to /init ")?;
    out.push(("first Solicit".into(), first.parse().ok()?));
    let k = kernel.split_whitespace().next()?;
    out.push(("kernel to /init".into(), k.parse().ok()?));
    if let Some(cpu) = kernel.split("; init CPU user ").nth(1) {
        let (user, system) = cpu.split_once(" ms, system ")?;
        out.push(("init CPU user".into(), user.parse().ok()?));
        let system = system.split_whitespace().next()?;
        out.push(("init CPU system".into(), system.parse().ok()?));
    }
    Some(out)
}

/// CLOCK_MONOTONIC in seconds: in a guest it counts from kernel start, so the stamps
/// logged at start and at the first Solicit time the boot path (docs/benchmarks.md).
pub fn monotonic_secs() -> f64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map_or(0.0, |t| t.tv_sec() as f64 + t.tv_nsec() as f64 * 1e-9)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn step_lines_say_duration_and_offset_from_init() {
        let mut t = BootTimes::new(d(1300));
        assert_eq!(
            t.record("modules", d(1305), d(1915)),
            "boot step: modules 610 ms (at +5 ms)"
        );
        assert_eq!(t.steps[0].took(), d(610));
    }

    #[test]
    fn summary_lists_steps_in_start_order_and_marks_overlap() {
        let mut t = BootTimes::new(d(1000));
        t.record("mounts", d(1000), d(1002));
        t.record("modules", d(1002), d(1600));
        // The link thread started during the module loads and finished after them.
        t.record("flash attach", d(1600), d(1700));
        t.record("link", d(1100), d(1650));
        let s = t.summary(d(1750), Some((d(120), d(480))));
        assert_eq!(
            s,
            "boot timing: mounts 2 ms, modules 598 ms, link 550 ms (parallel), \
             flash attach 100 ms (parallel); first Solicit at 750 ms after /init; \
             kernel start to /init 1000 ms; init CPU user 120 ms, system 480 ms"
        );
        let p = parse_summary(&format!("shelfboot-init: INFO  {s}")).unwrap();
        assert_eq!(
            p,
            vec![
                ("mounts".to_string(), 2),
                ("modules".into(), 598),
                ("link".into(), 550),
                ("flash attach".into(), 100),
                ("first Solicit".into(), 750),
                ("kernel to /init".into(), 1000),
                ("init CPU user".into(), 120),
                ("init CPU system".into(), 480),
            ]
        );
    }

    #[test]
    fn cpu_times_come_from_proc_stat_after_the_command_name() {
        let stat = "1 (shelf boot) (x) S 0 1 1 0 -1 4194560 500 0 0 0 12 48 0 0 20 0 3 0";
        assert_eq!(parse_stat(stat, 100), Some((d(120), d(480))));
        assert_eq!(parse_stat("1 (init) S 0", 100), None);
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(parse_stat(&own, 100).is_some(), "{own}");
    }

    #[test]
    fn sequential_steps_are_not_parallel_and_garbage_does_not_parse() {
        let mut t = BootTimes::new(d(0));
        t.record("a", d(0), d(10));
        t.record("b", d(10), d(20));
        assert!(!t.summary(d(20), None).contains("parallel"));
        assert!(parse_summary("boot timing: a x ms; first Solicit at 1 ms").is_none());
        assert!(parse_summary("no summary here").is_none());
        // A summary without steps still parses (all built in, no flash).
        let empty = BootTimes::new(d(5)).summary(d(7), None);
        assert_eq!(
            parse_summary(&empty).unwrap(),
            vec![("first Solicit".into(), 2), ("kernel to /init".into(), 5)]
        );
    }
}
