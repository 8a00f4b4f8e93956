//! The Prometheus endpoint of `master serve --metrics ADDR:PORT`: `GET /metrics` in the
//! text exposition format 0.0.4, served by `tiny_http` on a thread of its own.
//!
//! The serve loop publishes a [`Snapshot`] (its [`ServeStats`] and the cards of the node
//! database) at the moment it writes `STATE/serve-stats.json`, about once a second, by
//! swapping one `Arc` under a mutex; the HTTP thread renders whatever snapshot it finds.
//! A slow or stuck scraper never holds up the backplane.
//!
//! Counters restart at every start of `master serve` (its epoch, `shelfboot_serve_epoch`),
//! which Prometheus treats as a counter reset. The exposition text is written here rather
//! than through a client library: the values already exist as a snapshot, and the format
//! is a few lines per family (checked by `promtool check metrics` in the tests).
//!
//! It refuses an address that is not loopback unless told otherwise: the metrics name
//! every card's MAC and slot.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use super::stats::ServeStats;
use crate::store::{NodeHealth, NodeRecord, NodeState};

/// The content type of the text exposition format 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the endpoint shows: the counters and the cards at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub stats: ServeStats,
    pub cards: Vec<NodeRecord>,
}

/// The snapshot the serve loop publishes and the HTTP thread reads.
#[derive(Debug, Clone, Default)]
pub struct Shared(Arc<Mutex<Arc<Snapshot>>>);

impl Shared {
    /// Replaces the snapshot (a pointer swap under the lock).
    pub fn publish(&self, snap: Snapshot) {
        let snap = Arc::new(snap);
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = snap;
    }

    /// The latest snapshot.
    pub fn get(&self) -> Arc<Snapshot> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Failures of the metrics endpoint.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error(
        "metrics address {addr} is not a loopback address: the metrics name every card, so \
         serving them beyond this host needs --metrics-allow-remote (or \
         metrics_allow_remote = true in the configuration file)"
    )]
    Remote { addr: SocketAddr },
    #[error("cannot listen for metrics scrapes on {addr}: is the port in use?")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot start the metrics thread")]
    Thread(#[source] std::io::Error),
}

/// Checks that `addr` may be served: loopback, or any address with `allow_remote`.
pub fn check_addr(addr: SocketAddr, allow_remote: bool) -> Result<(), MetricsError> {
    if allow_remote || addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(MetricsError::Remote { addr })
    }
}

/// The running endpoint; dropping it stops the thread.
pub struct Endpoint {
    server: Arc<tiny_http::Server>,
    addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl Endpoint {
    /// Listens on `addr` and serves `shared` from a new thread.
    pub fn start(
        addr: SocketAddr,
        allow_remote: bool,
        shared: Shared,
    ) -> Result<Endpoint, MetricsError> {
        check_addr(addr, allow_remote)?;
        let server =
            tiny_http::Server::http(addr).map_err(|source| MetricsError::Bind { addr, source })?;
        let bound = server.server_addr().to_ip().unwrap_or(addr);
        let server = Arc::new(server);
        let s = server.clone();
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || serve_requests(&s, &shared))
            .map_err(MetricsError::Thread)?;
        Ok(Endpoint {
            server,
            addr: bound,
            thread: Some(thread),
        })
    }

    /// The address it listens on (the real port when asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_requests(server: &tiny_http::Server, shared: &Shared) {
    for req in server.incoming_requests() {
        let (status, body, ctype) = match (req.method(), req.url()) {
            (tiny_http::Method::Get, "/metrics") => (200, render(&shared.get()), CONTENT_TYPE),
            (tiny_http::Method::Get, _) => (
                404,
                "not found: the metrics are at /metrics\n".to_owned(),
                "text/plain",
            ),
            _ => (
                405,
                "method not allowed: GET /metrics\n".to_owned(),
                "text/plain",
            ),
        };
        let mut resp = tiny_http::Response::from_string(body).with_status_code(status);
        if let Ok(h) = tiny_http::Header::from_bytes(&b"Content-Type"[..], ctype.as_bytes()) {
            resp.add_header(h);
        }
        if let Err(e) = req.respond(resp) {
            log::debug!("master: metrics: answering a scrape: {e}");
        }
    }
}

/// Text exposition, one family at a time.
struct Text(String);

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let v = v
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(self.0, "{k}=\"{v}\"");
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    /// A family with one unlabelled sample.
    fn one(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.one(name, "counter", help, value);
    }

    /// A counter family with one sample per label value.
    fn counters(&mut self, name: &str, help: &str, label: &str, values: &[(&str, u64)]) {
        self.family(name, "counter", help);
        for (l, v) in values {
            self.sample(name, &[(label, l)], v);
        }
    }
}

/// Every node state, in the order the metrics list them.
const STATES: [NodeState; 7] = [
    NodeState::Pristine,
    NodeState::Fetching,
    NodeState::Committing,
    NodeState::Ready,
    NodeState::Failed,
    NodeState::Test,
    NodeState::Ram,
];

/// The `health` label values of `shelfboot_cards_health`, in order.
const HEALTH_LABELS: [&str; 5] = ["none", "checking", "healthy", "unhealthy", "rolled_back"];

/// The `health` label of an agent's report.
fn health_label(h: &NodeHealth) -> &'static str {
    if h.rolled_back_from.is_some() {
        "rolled_back"
    } else {
        h.health.as_str()
    }
}

/// Seconds from milliseconds, as Prometheus wants durations.
fn seconds(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// The exposition text of `snap`. The names, types and units are listed in
/// `docs/master.md` (section "Metrics").
pub fn render(snap: &Snapshot) -> String {
    let st = &snap.stats;
    let mut t = Text(String::with_capacity(8192));
    t.family(
        "shelfboot_serve_epoch",
        "gauge",
        "Epoch of the running master serve (bumped at every start; counters restart with it).",
    );
    t.sample("shelfboot_serve_epoch", &[("iface", &st.iface)], st.epoch);

    // The fleet, from the node database.
    t.family(
        "shelfboot_cards",
        "gauge",
        "Cards in the node database by state.",
    );
    for s in STATES {
        let n = snap.cards.iter().filter(|c| c.state == s).count();
        t.sample("shelfboot_cards", &[("state", s.as_str())], n);
    }
    t.one(
        "shelfboot_cards_present",
        "gauge",
        "Cards the master considers present on the backplane.",
        snap.cards.iter().filter(|c| c.present).count(),
    );
    t.family(
        "shelfboot_cards_health",
        "gauge",
        "Present cards by what their resident agent last reported: health none, checking, \
         healthy, unhealthy, or rolled_back (the card left a set on its own).",
    );
    for h in HEALTH_LABELS {
        let n = snap
            .cards
            .iter()
            .filter(|c| c.present && c.health.as_ref().map(health_label) == Some(h))
            .count();
        t.sample("shelfboot_cards_health", &[("health", h)], n);
    }
    t.family(
        "shelfboot_card_last_seen_timestamp_seconds",
        "gauge",
        "When the master last heard from a card (Unix time).",
    );
    for c in &snap.cards {
        if let Some(seen) = c.last_seen {
            let id = &c.identity;
            t.sample(
                "shelfboot_card_last_seen_timestamp_seconds",
                &[
                    ("mac", &id.mac.to_string()),
                    ("shelf", &id.shelf.to_string()),
                    ("slot", &id.slot.to_string()),
                    ("card_type", &id.card_type),
                ],
                seen,
            );
        }
    }

    // Solicits and plans.
    t.counter(
        "shelfboot_solicits_received_total",
        "Solicits received (before de-duplication).",
        st.solicits,
    );
    t.counter(
        "shelfboot_solicits_answered_total",
        "Solicits answered with a Plan or an Error.",
        st.solicits_served,
    );
    t.counter(
        "shelfboot_solicits_repeated_total",
        "Solicits repeating one already answered (the answer is sent again).",
        st.solicits_repeated,
    );
    t.counter(
        "shelfboot_solicits_coalesced_total",
        "Solicits replaced in the queue by a newer one from the same card.",
        st.solicits_coalesced,
    );
    t.counter(
        "shelfboot_solicits_unknown_card_total",
        "Solicits answered with Error UnknownCard.",
        st.unknown_cards,
    );
    t.one(
        "shelfboot_solicit_queue_max",
        "gauge",
        "Longest the Solicit queue has been since serve started.",
        st.solicit_queue_high_water,
    );
    t.counters(
        "shelfboot_plans_total",
        "Plans sent, by verdict.",
        "verdict",
        &[("continue", st.plans_continue), ("fetch", st.plans_fetch)],
    );
    t.counter(
        "shelfboot_plans_digest_only_total",
        "Continue plans sent digest-only (the set would not fit one frame).",
        st.plans_digest_only,
    );
    t.counter(
        "shelfboot_plans_undeliverable_total",
        "Plans that could not be delivered (the card got an Error and is failed).",
        st.plans_undeliverable,
    );

    // What cards said.
    t.counter(
        "shelfboot_fetches_total",
        "Fetch requests received.",
        st.fetches,
    );
    t.counter(
        "shelfboot_fetches_refused_total",
        "Fetch requests refused (artifact not in the card's plan, or blob missing).",
        st.fetches_refused,
    );
    t.counter(
        "shelfboot_ready_total",
        "Ready messages received from cards.",
        st.ready,
    );
    t.counter(
        "shelfboot_card_errors_total",
        "Error messages received from cards.",
        st.card_errors,
    );
    t.counter(
        "shelfboot_inventories_total",
        "Inventories received from cards.",
        st.inventories,
    );
    t.counter(
        "shelfboot_alives_total",
        "Alive messages received from cards' resident agents.",
        st.alives,
    );
    t.counter(
        "shelfboot_health_reports_written_total",
        "Agents' reports written to the node database (only those that changed).",
        st.health_writes,
    );
    t.counters(
        "shelfboot_presence_changes_total",
        "Cards recorded absent (not heard for the absence interval), and absent cards heard again.",
        "change",
        &[("absent", st.cards_absent), ("returned", st.cards_returned)],
    );

    // Transfers.
    let sum = |f: fn(&super::stats::SessionStats) -> u64| st.sessions.iter().map(f).sum::<u64>();
    t.counters(
        "shelfboot_sessions_started_total",
        "Transfer sessions started, by kind.",
        "kind",
        &[
            ("first", sum(|s| u64::from(!s.catch_up))),
            ("catch_up", sum(|s| u64::from(s.catch_up))),
        ],
    );
    t.one(
        "shelfboot_sessions_active",
        "gauge",
        "Transfer sessions not yet finished.",
        st.sessions.iter().filter(|s| !s.finished).count(),
    );
    t.counters(
        "shelfboot_artifact_sent_bytes_total",
        "Artifact bytes sent by transfer sessions: first pass, and again as repairs.",
        "pass",
        &[
            ("first", sum(|s| s.data_bytes)),
            ("repair", sum(|s| s.retransmit_bytes)),
        ],
    );
    t.counters(
        "shelfboot_session_members_total",
        "Cards in transfer sessions: admitted, completed, dropped to catch-up.",
        "outcome",
        &[
            ("admitted", sum(|s| u64::from(s.members))),
            ("completed", sum(|s| u64::from(s.completed))),
            ("dropped", sum(|s| u64::from(s.dropped))),
        ],
    );
    t.counter("shelfboot_joins_total", "Join messages sent.", st.joins);
    t.counter(
        "shelfboot_nacks_total",
        "NACKs accepted by transfer sessions.",
        sum(|s| s.nacks),
    );
    t.counter(
        "shelfboot_flow_stops_total",
        "Times a first pass stopped because a member lacked receive window.",
        sum(|s| s.flow_stops),
    );
    t.one(
        "shelfboot_flow_blocked_seconds_total",
        "counter",
        "Time first passes spent stopped by flow control.",
        seconds(sum(|s| s.flow_blocked_ms)),
    );

    // Frames.
    t.counter(
        "shelfboot_frames_received_total",
        "Frames received on the backplane and handed to the service.",
        st.frames_in,
    );
    t.family(
        "shelfboot_frames_accepted_total",
        "counter",
        "Frames received for this master that passed the frame check, by message type.",
    );
    for (ty, n) in &st.frames_in_by_type {
        t.sample("shelfboot_frames_accepted_total", &[("type", ty)], n);
    }
    t.family(
        "shelfboot_frames_sent_total",
        "counter",
        "Frames sent (control and data), by message type.",
    );
    for (ty, n) in &st.frames_out_by_type {
        t.sample("shelfboot_frames_sent_total", &[("type", ty)], n);
    }
    t.counters(
        "shelfboot_frames_dropped_total",
        "Received frames dropped, by reason.",
        "reason",
        &[
            ("malformed", st.dropped_malformed),
            ("not_for_us", st.dropped_not_for_us),
            ("unexpected", st.dropped_unexpected),
        ],
    );
    t.counter(
        "shelfboot_messages_fragmented_total",
        "Messages sent in fragments (larger than one frame).",
        st.messages_fragmented,
    );
    let r = &st.reassembly;
    t.counter(
        "shelfboot_reassembly_fragments_total",
        "Fragments of card messages handed to reassembly.",
        r.fragments,
    );
    t.counters(
        "shelfboot_reassembly_fragments_ignored_total",
        "Fragments of card messages ignored or refused, by reason.",
        "reason",
        &[
            ("duplicate", r.duplicates),
            ("late_duplicate", r.late_duplicates),
            ("malformed", r.malformed),
            ("too_large", r.too_large),
        ],
    );
    t.counters(
        "shelfboot_reassembly_messages_total",
        "Card messages in reassembly: completed, or dropped (inconsistent, evicted, expired).",
        "outcome",
        &[
            ("completed", r.completed),
            ("inconsistent", r.inconsistent),
            ("evicted", r.evicted),
            ("expired", r.expired),
        ],
    );

    // The master itself.
    t.counter(
        "shelfboot_commands_sent_total",
        "Signed fleet Commands sent (every copy).",
        st.commands_sent,
    );
    t.counter(
        "shelfboot_heartbeats_total",
        "Heartbeats sent.",
        st.heartbeats,
    );
    t.counter(
        "shelfboot_control_requests_total",
        "Operator requests served on the control socket.",
        st.control_requests,
    );
    t.counter(
        "shelfboot_db_errors_total",
        "Node-database writes that failed (each is logged).",
        st.db_errors,
    );
    t.one(
        "shelfboot_serve_cpu_seconds_total",
        "counter",
        "CPU time of the serve loop's thread.",
        seconds(st.cpu_ms),
    );
    t.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::stats::SessionStats;
    use crate::store::NodeIdentity;
    use shelfboot_proto::id::{Arch, MacAddr};

    fn card(mac: u8, state: NodeState, last_seen: Option<i64>) -> NodeRecord {
        NodeRecord {
            identity: NodeIdentity {
                mac: MacAddr([2, 0, 0, 0, 0, mac]),
                card_type: "lc\"100".into(),
                arch: Arch::X86_64,
                shelf: 1,
                slot: u32::from(mac),
                hw_rev: String::new(),
                features: vec![],
            },
            class: None,
            present: last_seen.is_some(),
            last_seen,
            state,
            state_reason: None,
            inventory: None,
            test_mode: None,
            registered_at: 0,
            health: None,
        }
    }

    fn snapshot() -> Snapshot {
        let mut stats = ServeStats {
            epoch: 7,
            iface: "bp0".into(),
            solicits: 12,
            plans_fetch: 3,
            plans_continue: 2,
            dropped_malformed: 1,
            cpu_ms: 1234,
            alives: 40,
            cards_absent: 1,
            ..ServeStats::default()
        };
        stats.frames_in_by_type.insert("Solicit".into(), 12);
        stats.sessions = vec![
            SessionStats {
                data_bytes: 1000,
                retransmit_bytes: 50,
                members: 3,
                completed: 2,
                dropped: 1,
                finished: true,
                ..SessionStats::default()
            },
            SessionStats {
                catch_up: true,
                data_bytes: 500,
                members: 1,
                ..SessionStats::default()
            },
        ];
        let mut unhealthy = card(2, NodeState::Ready, Some(1_700_000_001));
        unhealthy.health = Some(crate::store::NodeHealth {
            health: crate::store::Health::Unhealthy,
            running: None,
            rolled_back_from: None,
            dropped: 0,
            detail: "health command exited 1".into(),
        });
        Snapshot {
            stats,
            cards: vec![
                card(1, NodeState::Ready, Some(1_700_000_000)),
                unhealthy,
                card(3, NodeState::Fetching, None),
            ],
        }
    }

    fn sample<'a>(text: &'a str, series: &str) -> Option<&'a str> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
    }

    #[test]
    fn the_exposition_carries_the_counters_with_help_and_type() {
        let text = render(&snapshot());
        let want = [
            ("shelfboot_serve_epoch{iface=\"bp0\"}", "7"),
            ("shelfboot_cards{state=\"ready\"}", "2"),
            ("shelfboot_cards{state=\"fetching\"}", "1"),
            ("shelfboot_cards{state=\"failed\"}", "0"),
            ("shelfboot_cards_present", "2"),
            ("shelfboot_cards_health{health=\"unhealthy\"}", "1"),
            ("shelfboot_cards_health{health=\"healthy\"}", "0"),
            ("shelfboot_alives_total", "40"),
            ("shelfboot_presence_changes_total{change=\"absent\"}", "1"),
            ("shelfboot_solicits_received_total", "12"),
            ("shelfboot_plans_total{verdict=\"fetch\"}", "3"),
            ("shelfboot_plans_total{verdict=\"continue\"}", "2"),
            (
                "shelfboot_artifact_sent_bytes_total{pass=\"first\"}",
                "1500",
            ),
            ("shelfboot_artifact_sent_bytes_total{pass=\"repair\"}", "50"),
            ("shelfboot_sessions_started_total{kind=\"first\"}", "1"),
            ("shelfboot_sessions_started_total{kind=\"catch_up\"}", "1"),
            ("shelfboot_sessions_active", "1"),
            ("shelfboot_session_members_total{outcome=\"dropped\"}", "1"),
            ("shelfboot_frames_dropped_total{reason=\"malformed\"}", "1"),
            ("shelfboot_frames_accepted_total{type=\"Solicit\"}", "12"),
            ("shelfboot_serve_cpu_seconds_total", "1.234"),
        ];
        for (series, value) in want {
            assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
        }
        // Label values are escaped; a card never seen has no last-seen sample.
        assert!(text.contains(
            "shelfboot_card_last_seen_timestamp_seconds{mac=\"02:00:00:00:00:01\",shelf=\"1\",\
             slot=\"1\",card_type=\"lc\\\"100\"} 1700000000\n"
        ));
        assert!(!text.contains("mac=\"02:00:00:00:00:03\""));
        // Every family has HELP and TYPE before its samples, counters end in _total.
        let mut declared = std::collections::BTreeMap::new();
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(
                    text.contains(&format!("# HELP {name} ")),
                    "{name} has no HELP"
                );
                assert!(
                    kind != "counter" || name.ends_with("_total"),
                    "{name} is a counter without _total"
                );
                assert!(
                    declared.insert(name.to_owned(), kind).is_none(),
                    "{name} twice"
                );
            } else if !l.starts_with('#') {
                let name = l.split(['{', ' ']).next().unwrap();
                assert!(
                    declared.contains_key(name),
                    "{name} sampled before its TYPE"
                );
            }
        }
    }

    #[test]
    fn only_loopback_unless_allowed() {
        let local: SocketAddr = "127.0.0.1:9464".parse().unwrap();
        let local6: SocketAddr = "[::1]:9464".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:9464".parse().unwrap();
        let lan: SocketAddr = "192.0.2.7:9464".parse().unwrap();
        assert!(check_addr(local, false).is_ok());
        assert!(check_addr(local6, false).is_ok());
        for a in [any, lan] {
            let e = check_addr(a, false).unwrap_err();
            assert!(e.to_string().contains("--metrics-allow-remote"), "{e}");
            assert!(check_addr(a, true).is_ok());
        }
        assert!(matches!(
            Endpoint::start(lan, false, Shared::default()),
            Err(MetricsError::Remote { .. })
        ));
    }

    #[test]
    fn the_endpoint_serves_the_latest_snapshot_over_http() {
        use std::io::{Read, Write};
        let shared = Shared::default();
        let ep = Endpoint::start("127.0.0.1:0".parse().unwrap(), false, shared.clone()).unwrap();
        let get = |path: &str| {
            let mut s = std::net::TcpStream::connect(ep.addr()).unwrap();
            s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
            let mut r = String::new();
            s.read_to_string(&mut r).unwrap();
            r
        };
        let r = get("/metrics");
        assert!(r.starts_with("HTTP/1.0 200"), "{r}");
        assert!(r.contains(CONTENT_TYPE), "{r}");
        assert!(r.contains("shelfboot_serve_epoch{iface=\"\"} 0\n"), "{r}");
        shared.publish(snapshot());
        let r = get("/metrics");
        assert!(
            r.contains("shelfboot_serve_epoch{iface=\"bp0\"} 7\n"),
            "{r}"
        );
        assert!(get("/").starts_with("HTTP/1.0 404"));
        // Dropping the endpoint stops its thread; tiny_http's accept thread closes the
        // listening socket a moment later.
        let addr = ep.addr();
        drop(ep);
        let t0 = std::time::Instant::now();
        while std::net::TcpStream::connect(addr).is_ok() {
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(5),
                "still listening"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}
