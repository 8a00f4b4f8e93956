//! `master serve`: the backplane service. An AF_PACKET endpoint (netio) on one interface
//! that answers Solicits with signed plans, runs transfer sessions, records what cards
//! report in the node database, and heartbeats with its epoch.
//!
//! ```text
//!   poll(backplane, control.sock) ≤ 20 ms
//!        │
//!   recv_batch ──> Service::handle_frame ──> replies (Plan, Join, Error)
//!        ^              │ queue Solicits (fair, one per card)
//!        │              v
//!        │         Service::tick ──> Plans (≤ budget per tick), Heartbeat
//!        │         Service::poll_data ──> data frames (xfer Senders, paced)
//!        │         send_batch  ·  every second: STATE/serve-stats.json
//!        └──────── control.sock readable: Daemon::poll_once(Service::master_mut)
//!                       └── fleet orders it returns: Service::command
//! ```
//!
//! While it serves, `master serve` also answers the operator CLI on `STATE/control.sock`
//! exactly as `master daemon` does (same [`crate::control::Daemon`], same `Master`), so
//! `master nodes`, `assign`, `test-mode` … work against a serving master. One request is
//! handled at a time inside the loop: a slow request (an import) pauses the backplane for
//! its duration; cards retry.
//!
//! Files in the state directory: `plan.key`/`plan.pub` (the plan-signing key, made on
//! first start unless `--key` names one), `plan.anchor` (the public key as a card trust
//! anchor: 32 raw bytes), `plan.cert` (optional: the plan key's certificate by the shelf
//! key, attached to every plan and command; `master cluster certify` writes it),
//! `serve.epoch` (bumped at every start), `serve-stats.json`
//! (counters, sessions and what each card is doing: what `master watch` shows).
//! See `docs/conversation.md`.
//!
//! With `metrics` set, the same counters (and the cards by state) are served to
//! Prometheus from a thread of their own ([`metrics`]); with `systemd` set, the loop tells
//! systemd when it is ready, feeds its watchdog and says when it stops ([`notify`]).
//!
//! This module does not resolve plans (the [`crate::state`] operations do) and does not
//! implement the transfer engine (`shelfboot-xfer` does).

pub mod cards;
pub mod cli;
pub mod config;
pub mod metrics;
pub mod notify;
pub mod presence;
pub mod service;
pub mod sessions;
pub mod stats;

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use shelfboot_netio::{PacketSocket, SocketConfig};
use shelfboot_proto::frame::MacAddr;
use shelfboot_proto::sign::{MasterSigner, SigningKey};

pub use cards::{CardStage, CardStats};
pub use config::ServiceConfig;
pub use service::Service;
pub use stats::{ServeStats, SessionStats};

use std::sync::Arc;

use crate::cluster::store::ReplicatedStore;
use crate::cluster::{Cluster, ClusterConfig};
use crate::control::{self, Backplane, Daemon, StateLock};
use crate::state::{Master, MasterError};
use crate::store::Store;
use crate::store::sqlite::SqliteStore;

/// Settings of `master serve`.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Backplane interface.
    pub iface: String,
    /// State directory.
    pub state: PathBuf,
    /// Plan-signing key file (default `STATE/plan.key`, generated if missing).
    pub key: Option<PathBuf>,
    /// EtherType.
    pub ethertype: u16,
    /// Solicits answered per loop iteration at most while a transfer runs (with none
    /// running, every queued Solicit is answered at once).
    pub solicit_budget: usize,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// A card recorded present and not heard for this long is recorded absent.
    pub absence: Duration,
    /// Join window of new sessions.
    pub join_window: Duration,
    /// Rate ceiling per session, bytes per second.
    pub max_rate: u64,
    /// Serve the operator control socket `STATE/control.sock` too.
    pub control: bool,
    /// Also allow this group on the control socket (mode 0660), as `master daemon --group`.
    pub control_group: Option<String>,
    /// Serve Prometheus metrics on this address (none: no endpoint).
    pub metrics: Option<SocketAddr>,
    /// Allow a metrics address that is not loopback.
    pub metrics_allow_remote: bool,
    /// Tell systemd about readiness, the watchdog and stopping (when `NOTIFY_SOCKET` is
    /// set); off for callers that run the service in-process.
    pub systemd: bool,
}

impl ServeConfig {
    /// Defaults for `iface` and `state`.
    pub fn new(iface: &str, state: &Path) -> Self {
        Self {
            iface: iface.to_owned(),
            state: state.to_path_buf(),
            key: None,
            ethertype: shelfboot_proto::DEFAULT_ETHERTYPE,
            solicit_budget: 32,
            heartbeat: Duration::from_secs(1),
            absence: Duration::from_secs(cli::DEFAULT_ABSENCE_SECS),
            join_window: Duration::from_millis(300),
            max_rate: 125_000_000,
            control: true,
            control_group: None,
            metrics: None,
            metrics_allow_remote: false,
            systemd: false,
        }
    }
}

/// Failures of `master serve`.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("the master state in {path} is in use (a daemon or another serve owns it)")]
    Lock {
        path: PathBuf,
        #[source]
        source: crate::control::ControlError,
    },
    #[error("opening the master state in {path}")]
    State {
        path: PathBuf,
        #[source]
        source: MasterError,
    },
    #[error("plan-signing key {path}")]
    Key {
        path: PathBuf,
        #[source]
        source: crate::keys::KeyError,
    },
    #[error(
        "master certificate {path}: certify this master's plan.pub again (`master cluster certify`), or remove the file to serve with the plan key itself in the cards' anchor"
    )]
    Cert {
        path: PathBuf,
        #[source]
        source: crate::keys::KeyError,
    },
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("backplane interface {iface}: check it exists and that we run as root")]
    Socket {
        iface: String,
        #[source]
        source: shelfboot_netio::SocketError,
    },
    #[error("control socket in {path}")]
    Control {
        path: PathBuf,
        #[source]
        source: crate::control::ControlError,
    },
    #[error("waiting on {iface} and the control socket")]
    Poll {
        iface: String,
        #[source]
        source: nix::Error,
    },
    #[error("metrics endpoint")]
    Metrics(#[source] metrics::MetricsError),
    #[error("masters' cluster")]
    Cluster(#[source] Box<crate::cluster::ClusterError>),
    #[error(
        "{path} does not make this master a witness (witness = true); make it with `master cluster init --witness`, or run `master serve`"
    )]
    NotWitness { path: PathBuf },
    #[error("interface {iface} has MTU {mtu}, outside what the protocol supports")]
    Mtu {
        iface: String,
        mtu: u32,
        #[source]
        source: shelfboot_proto::data::DataError,
    },
}

/// Loads the plan-signing key (generating `STATE/plan.key` on first start), writes
/// `STATE/plan.anchor` (the public key in the card trust-anchor format), and attaches
/// `STATE/plan.cert` when present (refused unless it certifies this key).
pub fn load_key(cfg: &ServeConfig) -> Result<MasterSigner, ServeError> {
    let path = cfg
        .key
        .clone()
        .unwrap_or_else(|| cfg.state.join("plan.key"));
    if cfg.key.is_none() && !path.exists() {
        crate::keys::keygen(&cfg.state.join("plan")).map_err(|source| ServeError::Key {
            path: path.clone(),
            source,
        })?;
        log::info!("master: generated plan-signing key {}", path.display());
    }
    let k = crate::keys::read_signing_key(&path).map_err(|source| ServeError::Key {
        path: path.clone(),
        source,
    })?;
    let key = SigningKey::from_seed(&k.to_bytes());
    let anchor = cfg.state.join("plan.anchor");
    std::fs::write(&anchor, key.public_key().to_bytes()).map_err(|source| ServeError::Write {
        path: anchor,
        source,
    })?;
    let cert = cfg.state.join(CERT_FILE);
    let signer = crate::keys::attach_cert(key, &cert).map_err(|source| ServeError::Cert {
        path: cert.clone(),
        source,
    })?;
    if signer.cert().is_some() {
        log::info!(
            "master: plan key {} is certified by {}: cards trust it through the shelf key in their anchor",
            shelfboot_proto::sign::key_id(&signer.public_key().to_bytes()),
            cert.display()
        );
    }
    Ok(signer)
}

/// The master certificate file in the state directory.
pub const CERT_FILE: &str = "plan.cert";

/// Bumps and returns the epoch stored in `STATE/serve.epoch`.
pub fn next_epoch(state: &Path) -> Result<u64, ServeError> {
    let path = state.join("serve.epoch");
    let old = std::fs::read_to_string(&path)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let epoch = old + 1;
    std::fs::write(&path, format!("{epoch}\n")).map_err(|source| ServeError::Write {
        path: path.clone(),
        source,
    })?;
    Ok(epoch)
}

/// Runs the service on `cfg.iface` until `stop` is set. Writes the stats file about once
/// a second and at exit.
///
/// It owns the state while it runs: it takes the state lock first (waiting up to
/// [`control::OWNER_WAIT`] for a CLI command running in-process, or a master stopping),
/// binds the control socket last, removes the socket before it closes the database, and
/// lets go of the lock last. A CLI command issued meanwhile waits for it (see
/// [`crate::control`]).
///
/// A state directory with `cluster.toml` is a member of a masters' cluster
/// ([`crate::cluster`]): the databases are replicated, and the backplane is served only
/// while this member leads the cluster, with the cluster's epoch. Otherwise the epoch is
/// bumped in `serve.epoch` and the master serves from the start.
pub fn run(cfg: &ServeConfig, stop: &AtomicBool) -> Result<ServeStats, ServeError> {
    let _owner = StateLock::acquire_waiting(&cfg.state, control::OWNER_WAIT).map_err(|source| {
        ServeError::Lock {
            path: cfg.state.clone(),
            source,
        }
    })?;
    let state_err = |source| ServeError::State {
        path: cfg.state.clone(),
        source,
    };
    let membership =
        ClusterConfig::load(&cfg.state).map_err(|e| ServeError::Cluster(Box::new(e)))?;
    let Some(membership) = membership else {
        let master = Master::open(&cfg.state).map_err(state_err)?;
        let key = load_key(cfg)?;
        let epoch = next_epoch(&cfg.state)?;
        let mut port = Port::open(cfg)?;
        let now = Instant::now();
        let mut svc = Service::new(port.service_config(cfg), master, key, port.mac, epoch, now);
        port.started(cfg, epoch)?;
        port.pump(cfg, &mut svc, stop, &|| true)?;
        return Ok(port.finish(cfg, &svc));
    };
    let cluster = Arc::new(
        Cluster::start(&cfg.state, membership).map_err(|e| ServeError::Cluster(Box::new(e)))?,
    );
    let local = SqliteStore::open(&cfg.state.join("master.db"))
        .map_err(|e| state_err(MasterError::Store(e)))?;
    let blobs = crate::blobs::BlobDir::open(&cfg.state.join("blobs"))
        .map_err(|e| state_err(MasterError::Blob(e)))?;
    let mut master = Some(Master::with_store(
        ReplicatedStore::new(local, cluster.clone(), blobs.clone()),
        blobs,
    ));
    // Made (or checked) now, so that a bad key stops the start, not the takeover.
    load_key(cfg)?;
    let mut port = Port::open(cfg)?;
    port.started(cfg, 0)?;
    let mut last = None;
    while !stop.load(Ordering::Relaxed) {
        let Some(epoch) = cluster.serving() else {
            if let Some(m) = master.as_mut() {
                port.idle(cfg, m)?;
            }
            continue;
        };
        let Some(m) = master.take() else { break };
        log::info!(
            "master: leading the cluster as master {}: serving {} with epoch {epoch}",
            cluster.config().id,
            cfg.iface
        );
        let key = load_key(cfg)?;
        let mut svc = Service::new(
            port.service_config(cfg),
            m,
            key,
            port.mac,
            epoch,
            Instant::now(),
        );
        port.notifier
            .status(&format!("serving {} epoch {epoch}", cfg.iface));
        let keep = || cluster.serving() == Some(epoch);
        port.pump(cfg, &mut svc, stop, &keep)?;
        if !stop.load(Ordering::Relaxed) {
            log::warn!(
                "master: no longer leading the cluster (epoch {epoch} over): stopped serving {}",
                cfg.iface
            );
            port.notifier
                .status("standing by: another master leads the cluster");
        }
        last = Some(write_stats(cfg, &svc, port.shared.as_ref(), true));
        master = Some(svc.into_master());
    }
    port.notifier.stopping();
    drop(port.control.take());
    cluster.shutdown();
    Ok(last.unwrap_or_default())
}

/// `master witness`: a cluster member that votes and keeps the log and the databases,
/// but holds no blobs, never stands for election and never serves; it answers the control
/// socket (`master cluster status`, reads) until `stop` is set.
pub fn run_witness(state: &Path, group: Option<&str>, stop: &AtomicBool) -> Result<(), ServeError> {
    let _owner = StateLock::acquire_waiting(state, control::OWNER_WAIT).map_err(|source| {
        ServeError::Lock {
            path: state.to_path_buf(),
            source,
        }
    })?;
    let state_err = |source| ServeError::State {
        path: state.to_path_buf(),
        source,
    };
    let membership = ClusterConfig::load(state)
        .map_err(|e| ServeError::Cluster(Box::new(e)))?
        .ok_or_else(|| state_err(MasterError::NotClustered))?;
    if !membership.witness {
        return Err(ServeError::NotWitness {
            path: state.join(crate::cluster::CONFIG_FILE),
        });
    }
    let cluster =
        Arc::new(Cluster::start(state, membership).map_err(|e| ServeError::Cluster(Box::new(e)))?);
    let local = SqliteStore::open(&state.join("master.db"))
        .map_err(|e| state_err(MasterError::Store(e)))?;
    let blobs = crate::blobs::BlobDir::open(&state.join("blobs"))
        .map_err(|e| state_err(MasterError::Blob(e)))?;
    let mut master = Master::with_store(
        ReplicatedStore::new(local, cluster.clone(), blobs.clone()),
        blobs,
    );
    let ctl_err = |source| ServeError::Control {
        path: state.to_path_buf(),
        source,
    };
    let d = Daemon::bind(state, group).map_err(ctl_err)?;
    d.set_nonblocking().map_err(ctl_err)?;
    log::info!(
        "master: witness {} of the cluster; control socket {}",
        cluster.config().id,
        d.path().display()
    );
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [PollFd::new(d.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(200u16)) {
            Ok(n) if n > 0 => {
                if let Err(e) = d.poll_once(&mut master, Backplane::Unserved) {
                    log::warn!(
                        "master: control socket: {}",
                        shelfboot_proto::report::error_chain(&e)
                    );
                }
            }
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(source) => {
                return Err(ServeError::Poll {
                    iface: "the control socket".into(),
                    source,
                });
            }
        }
    }
    drop(d);
    cluster.shutdown();
    Ok(())
}

/// The backplane port and what serves around it: the control socket, the metrics
/// endpoint, systemd's notifications.
struct Port {
    sock: PacketSocket,
    mac: MacAddr,
    link_mtu: u16,
    control: Option<Daemon>,
    shared: Option<metrics::Shared>,
    endpoint: Option<metrics::Endpoint>,
    notifier: notify::Notifier,
}

impl Port {
    fn open(cfg: &ServeConfig) -> Result<Self, ServeError> {
        let sock_cfg = SocketConfig {
            ethertype: cfg.ethertype,
            ..SocketConfig::default()
        };
        let sock =
            PacketSocket::open(&cfg.iface, sock_cfg).map_err(|source| ServeError::Socket {
                iface: cfg.iface.clone(),
                source,
            })?;
        let mtu = sock.mtu();
        let link_mtu = shelfboot_proto::protocol_mtu(mtu);
        let block_size = shelfboot_proto::data::block_size_for_mtu(link_mtu).map_err(|source| {
            ServeError::Mtu {
                iface: cfg.iface.clone(),
                mtu,
                source,
            }
        })?;
        let mac = MacAddr(sock.mac().0);
        log::info!(
            "master: {} ({mac}, MTU {mtu}, blocks of up to {block_size} bytes)",
            cfg.iface
        );
        Ok(Self {
            sock,
            mac,
            link_mtu,
            control: None,
            shared: None,
            endpoint: None,
            notifier: notify::Notifier::new(cfg.systemd, Instant::now()),
        })
    }

    fn service_config(&self, cfg: &ServeConfig) -> ServiceConfig {
        ServiceConfig {
            ethertype: cfg.ethertype,
            solicit_budget: cfg.solicit_budget,
            heartbeat: cfg.heartbeat,
            link_mtu: self.link_mtu,
            join_window: cfg.join_window,
            max_rate: cfg.max_rate,
            absence: cfg.absence,
        }
    }

    /// Binds the control socket, starts the metrics endpoint and tells systemd we are
    /// ready (`epoch` 0: a cluster member, standing by until it leads).
    fn started(&mut self, cfg: &ServeConfig, epoch: u64) -> Result<(), ServeError> {
        if cfg.control {
            let ctl_err = |source| ServeError::Control {
                path: cfg.state.clone(),
                source,
            };
            let d = Daemon::bind(&cfg.state, cfg.control_group.as_deref()).map_err(ctl_err)?;
            d.set_nonblocking().map_err(ctl_err)?;
            log::info!("master: control socket {}", d.path().display());
            self.control = Some(d);
        }
        self.shared = cfg.metrics.map(|_| metrics::Shared::default());
        if let (Some(addr), Some(sh)) = (cfg.metrics, &self.shared) {
            let ep = metrics::Endpoint::start(addr, cfg.metrics_allow_remote, sh.clone())
                .map_err(ServeError::Metrics)?;
            log::info!("master: metrics on http://{}/metrics", ep.addr());
            self.endpoint = Some(ep);
        }
        if epoch == 0 {
            log::info!("master: cluster member, standing by until it leads the cluster");
            self.notifier
                .ready("standing by: a cluster member that does not lead");
        } else {
            log::info!("master: serving {} epoch {epoch}", cfg.iface);
            self.notifier
                .ready(&format!("serving {} epoch {epoch}", cfg.iface));
        }
        Ok(())
    }

    /// Serves the backplane with `svc` while `keep()` holds and `stop` is not set.
    fn pump<S: Store>(
        &mut self,
        cfg: &ServeConfig,
        svc: &mut Service<S>,
        stop: &AtomicBool,
        keep: &dyn Fn() -> bool,
    ) -> Result<(), ServeError> {
        let mut next_stats = Instant::now();
        let mut out: Vec<Vec<u8>> = Vec::new();
        while !stop.load(Ordering::Relaxed) && keep() {
            let now = Instant::now();
            self.notifier.tick(now);
            if svc.master().store().changed_elsewhere() {
                // Another master's operator changed assignments, nodes or releases: what
                // the service cached of them goes.
                svc.master_mut();
            }
            svc.begin_batch();
            out.extend(svc.tick(now));
            let wake = svc.poll_data(now, 256, &mut out);
            svc.commit();
            send_all(&mut self.sock, &out);
            out.clear();
            if now >= next_stats {
                next_stats = now + Duration::from_secs(1);
                write_stats(cfg, svc, self.shared.as_ref(), false);
            }
            let wait = wake
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(20));
            let control_ready = wait_ready(&self.sock, self.control.as_ref(), wait, cfg)?;
            // Received frames are taken whatever the poll said: a ring block may be
            // waiting already (recv_batch knows without a syscall); with none this is one
            // poll(0).
            svc.begin_batch();
            let r = self.sock.recv_batch(
                &mut |frame: &[u8], _src| {
                    let replies = svc.handle_frame(Instant::now(), frame);
                    out.extend(replies);
                },
                Duration::ZERO,
            );
            if let Err(e) = r {
                log::error!(
                    "master: receive on {}: {}",
                    cfg.iface,
                    shelfboot_proto::report::error_chain(&e)
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            svc.commit();
            send_all(&mut self.sock, &out);
            out.clear();
            if control_ready && let Some(d) = &self.control {
                // Errors of one client are logged by the daemon; an accept failure is
                // logged here and the loop goes on serving cards.
                match d.poll_once(svc.master_mut(), Backplane::Served) {
                    Ok(polled) => {
                        svc.count_control_requests(polled.executed);
                        // Fleet orders of those requests go out now (the first copy at
                        // once).
                        for order in &polled.orders {
                            svc.command(Instant::now(), order);
                        }
                    }
                    Err(e) => log::warn!(
                        "master: control socket: {}",
                        shelfboot_proto::report::error_chain(&e)
                    ),
                }
                out.extend(svc.tick(Instant::now()));
                send_all(&mut self.sock, &out);
                out.clear();
            }
        }
        Ok(())
    }

    /// A cluster member that does not serve: answers the control socket (reads here,
    /// writes through the cluster), and takes and drops what the backplane brings, for up
    /// to 20 ms.
    fn idle<S: Store>(
        &mut self,
        cfg: &ServeConfig,
        master: &mut Master<S>,
    ) -> Result<(), ServeError> {
        self.notifier.tick(Instant::now());
        let control_ready = wait_ready(
            &self.sock,
            self.control.as_ref(),
            Duration::from_millis(20),
            cfg,
        )?;
        if let Err(e) = self
            .sock
            .recv_batch(&mut |_frame: &[u8], _src| {}, Duration::ZERO)
        {
            log::warn!(
                "master: receive on {}: {}",
                cfg.iface,
                shelfboot_proto::report::error_chain(&e)
            );
        }
        if control_ready
            && let Some(d) = &self.control
            && let Err(e) = d.poll_once(master, Backplane::Unserved)
        {
            log::warn!(
                "master: control socket: {}",
                shelfboot_proto::report::error_chain(&e)
            );
        }
        Ok(())
    }

    /// Stops: tells systemd, removes the control socket, writes the last stats.
    fn finish<S: Store>(mut self, cfg: &ServeConfig, svc: &Service<S>) -> ServeStats {
        // The state is consistent here: every batch of node-database writes was committed
        // before its replies went out, and no request is half-handled.
        self.notifier.stopping();
        drop(self.control.take());
        let last = write_stats(cfg, svc, self.shared.as_ref(), true);
        drop(self.endpoint.take());
        last
    }
}

/// Waits up to `wait` for a frame on the backplane or a client on the control socket.
/// Returns whether a control client is waiting.
fn wait_ready(
    sock: &PacketSocket,
    control: Option<&Daemon>,
    wait: Duration,
    cfg: &ServeConfig,
) -> Result<bool, ServeError> {
    // Rounded up: a wait of less than a millisecond (the pacer asks for one batch at a
    // time) must sleep, not spin with poll(0) and send one frame per iteration.
    let ms = u16::try_from(wait.as_micros().div_ceil(1000)).unwrap_or(u16::MAX);
    let mut fds = vec![PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
    if let Some(d) = control {
        fds.push(PollFd::new(d.as_fd(), PollFlags::POLLIN));
    }
    match poll(&mut fds, PollTimeout::from(ms)) {
        Ok(_) => {}
        Err(nix::Error::EINTR) => return Ok(false),
        Err(source) => {
            return Err(ServeError::Poll {
                iface: cfg.iface.clone(),
                source,
            });
        }
    }
    let ready = |fd: &PollFd<'_>| fd.revents().is_some_and(|r| !r.is_empty());
    Ok(fds.get(1).is_some_and(ready))
}

fn send_all(sock: &mut PacketSocket, frames: &[Vec<u8>]) {
    if frames.is_empty() {
        return;
    }
    let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
    match sock.send_batch(&refs) {
        Ok(n) if n < refs.len() => {
            log::warn!(
                "master: {} of {} frames not sent (link busy)",
                refs.len() - n,
                refs.len()
            );
        }
        Ok(_) => {}
        Err(e) => log::error!("master: send: {}", shelfboot_proto::report::error_chain(&e)),
    }
}

/// The counters with the interface name and this thread's CPU time filled in.
fn stats_now<S: Store>(cfg: &ServeConfig, svc: &Service<S>) -> ServeStats {
    let mut st = svc.stats();
    st.iface = cfg.iface.clone();
    if let Ok(t) = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID) {
        let ms = i128::from(t.tv_sec()) * 1000 + i128::from(t.tv_nsec()) / 1_000_000;
        st.cpu_ms = u64::try_from(ms).unwrap_or(0);
    }
    st
}

/// Writes the stats file and, with metrics on, publishes the same counters and the cards
/// of the node database to the metrics endpoint.
fn write_stats<S: Store>(
    cfg: &ServeConfig,
    svc: &Service<S>,
    shared: Option<&metrics::Shared>,
    stopped: bool,
) -> ServeStats {
    let mut st = stats_now(cfg, svc);
    st.stopped = stopped;
    if let Err(e) = stats::write(&cfg.state, &st) {
        log::warn!("master: writing stats to {}: {e}", cfg.state.display());
    }
    if let Some(sh) = shared {
        let cards = match svc.master().store().nodes() {
            Ok(mut c) => {
                // The database's `last_seen` is written when something about a card
                // changes; the service knows when it last heard each one.
                let now = svc.master().now();
                let heard: std::collections::HashMap<_, _> = svc.heard_ago().collect();
                for n in &mut c {
                    if let Some(&ago) = heard.get(&n.identity.mac) {
                        crate::state::note_heard(n, now, ago);
                    }
                }
                c
            }
            Err(e) => {
                log::warn!(
                    "master: metrics: reading the node database: {}",
                    shelfboot_proto::report::error_chain(&e)
                );
                sh.get().cards.clone()
            }
        };
        sh.publish(metrics::Snapshot {
            stats: st.clone(),
            cards,
        });
    }
    st
}

#[cfg(test)]
mod tests;
