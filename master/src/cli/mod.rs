//! The `master` command line: clap definitions, dispatch to the daemon or in-process,
//! progress display. Output formatting is in [`output`].
//!
//! Exit codes: 0 success, 1 the operation failed (the error chain is printed), 2 usage
//! error (from clap).

pub mod decode;
pub mod events;
pub mod manual;
pub(crate) mod output;
pub mod upgrade;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use nix::sys::signal::{SigSet, Signal};

use crate::control::{self, Access, Backplane, ControlError, Daemon, Reply, Request, StateLock};
use crate::image::pack;
use crate::keys;
use crate::state::{FleetAction, Master, MasterError};
use crate::store::NodeIdentity;
use shelfboot_proto::id::{Arch, MacAddr};

/// shelfboot master: package and node databases, composite images, plans.
#[derive(Debug, Parser)]
#[command(name = "master", version, about, max_term_width = 100)]
pub struct Cli {
    /// State directory (database, blobs, lock, control socket).
    #[arg(
        long,
        global = true,
        env = "SHELFBOOT_STATE",
        default_value = "/var/lib/shelfboot/master"
    )]
    pub state: PathBuf,
    /// Whether `--state` or SHELFBOOT_STATE chose the state directory (otherwise the
    /// configuration file's `state` does, if it has one). Only [`Cli::parse_args`] can
    /// tell; a `Cli` parsed otherwise counts it as given.
    #[arg(skip = true)]
    pub state_given: bool,
    /// Configuration file [default: /etc/shelfboot/master.toml, if it exists]; flags
    /// override it (docs/master.md).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// More log output (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Parses the process's arguments (exits on a usage error, as `Cli::parse` does) and
    /// records whether the state directory was given.
    pub fn parse_args() -> Cli {
        use clap::{CommandFactory, FromArgMatches, parser::ValueSource};
        let matches = Cli::command().get_matches();
        match Cli::from_arg_matches(&matches) {
            Ok(mut cli) => {
                cli.state_given = matches!(
                    matches.value_source("state"),
                    Some(ValueSource::CommandLine | ValueSource::EnvVariable)
                );
                cli
            }
            Err(e) => e.exit(),
        }
    }
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate a vendor signing key pair: PREFIX.key (mode 0600) and PREFIX.pub.
    Keygen {
        #[arg(short = 'o', long = "out")]
        prefix: PathBuf,
    },
    /// Build a signed composite image from system.toml.
    Pack {
        spec: PathBuf,
        #[arg(long)]
        key: PathBuf,
        #[arg(short = 'o', long = "out")]
        out: PathBuf,
    },
    /// Manage trusted vendor keys.
    Trust {
        #[command(subcommand)]
        action: TrustCmd,
    },
    /// Verify and install a composite image (all or nothing).
    Import {
        image: PathBuf,
        /// Do not make it the default release.
        #[arg(long)]
        no_activate: bool,
    },
    /// List imported releases.
    Releases,
    /// List package and boot image builds.
    Packages,
    /// List the classes of a release (default: the default release) and their cards.
    Classes {
        #[arg(long)]
        release: Option<String>,
    },
    /// List cards: slot, MAC, type, class, state, installed vs planned.
    Nodes,
    /// Register or change cards by hand.
    Node {
        #[command(subcommand)]
        action: NodeCmd,
    },
    /// Point a class, node or `default` at a release and/or exact package versions.
    Assign {
        /// `default`, a class name or a node MAC.
        target: String,
        /// NAME@VERSION.
        #[arg(long)]
        release: Option<String>,
        /// NAME=VERSION (repeatable).
        #[arg(long = "package")]
        packages: Vec<String>,
        /// Remove the assignment instead.
        #[arg(long, conflicts_with_all = ["release", "packages"])]
        clear: bool,
    },
    /// List assignments.
    Assignments,
    /// Run exact package versions RAM-only on one card (the copy lives in its RAM only;
    /// test mode stays on until `--off`), or stop.
    TestMode {
        node: MacAddr,
        /// NAME=VERSION (repeatable).
        #[arg(long = "package", required_unless_present = "off")]
        packages: Vec<String>,
        #[arg(long, conflicts_with = "packages")]
        off: bool,
    },
    /// Point a class or node back at an older release.
    Rollback {
        /// A class name or a node MAC.
        target: String,
        /// NAME@VERSION.
        #[arg(long)]
        to: String,
    },
    /// Show the event history.
    History {
        #[arg(long)]
        node: Option<MacAddr>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Show a card's plan and which rule chose each part of it.
    Explain { node: MacAddr },
    /// Delete releases beyond the N newest that nothing references, and unused blobs.
    Gc {
        #[arg(long)]
        keep: u32,
    },
    /// Prepare now: every card (or one) fetches and commits its plan (needs `master serve`).
    Prepare { node: Option<MacAddr> },
    /// System-wide warm boot: every card (or one) resets and only validates (needs `master serve`).
    WarmBoot { node: Option<MacAddr> },
    /// Reset a card (or every card): it solicits again and burns what its plan lacks (needs `master serve`).
    Reset { node: Option<MacAddr> },
    /// Upgrade running cards in service: each stages its plan while it runs, commits it and
    /// kexecs into it, no firmware reset (needs `master serve`). Without --wave, one order
    /// to the card (or every card).
    Upgrade {
        /// One card; absent: every card.
        node: Option<MacAddr>,
        /// Only the cards whose plan uses this class (one watched wave without --wave).
        #[arg(long, value_name = "CLASS")]
        class: Option<String>,
        /// Upgrade the present cards that do not run their plan N at a time, waiting for
        /// each wave to run it; stop at the first card that fails, is silent for over 60 s or misses
        /// the deadline.
        #[arg(long, value_name = "N")]
        wave: Option<u32>,
        /// Longest time one wave may take, in seconds.
        #[arg(long, default_value_t = 300, value_name = "SECONDS")]
        wave_timeout: u64,
    },
    /// Run the daemon: hold the state and answer the control socket.
    Daemon {
        /// Also allow this group on the control socket (mode 0660).
        #[arg(long)]
        group: Option<String>,
    },
    /// Serve the backplane: signed plans, transfers, node states (docs/conversation.md).
    Serve(crate::serve::cli::ServeArgs),
    /// Run a witness of a masters' cluster: a third voter (on a shelf manager or a
    /// management host) that holds the log but no blobs and never serves.
    Witness {
        /// Also allow this group on the control socket (mode 0660).
        #[arg(long)]
        group: Option<String>,
    },
    /// Backup masters: make this master a member of a masters' cluster, or show the
    /// cluster (docs/master.md, "Backup masters").
    Cluster {
        #[command(subcommand)]
        action: ClusterCmd,
    },
    /// Counters of the running (or last) `master serve`.
    Stats,
    /// Live view of the shelf from the running `master serve`: a row per card (stage,
    /// bytes, rate, time in stage, last error) and per transfer session. Redrawn in place
    /// on a terminal, changed records as lines into a pipe, JSON lines with --json.
    Watch(crate::watch::WatchArgs),
    /// The node database's history (imports, assignments, fleet orders, card states and
    /// errors); --follow prints new events as they are recorded.
    Events(events::EventsArgs),
    /// Dump shelfboot frames given as hex (one frame per argument; whitespace and colons
    /// between bytes are allowed): Ethernet, header, data header or message and its CBOR
    /// body. Signatures are not checked. Exits 1 if a frame does not decode.
    Decode {
        /// The frame's bytes, Ethernet header first, as hex.
        #[arg(required = true, value_name = "HEX")]
        frames: Vec<String>,
    },
    /// Print the shell completion script for SHELL on stdout (e.g.
    /// `master completions bash > /etc/bash_completion.d/master`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (master.1, master-SUBCOMMAND.1, ...) into DIR.
    #[command(hide = true)]
    Man { dir: PathBuf },
}

/// `master cluster ...`
#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// Make this state directory a cluster member: writes STATE/cluster.toml. Run it on
    /// every master with the same --member list (and the same --epoch-base); the member
    /// with the lowest id makes the cluster when its `master serve` starts.
    Init {
        /// This master's id (1 or more).
        #[arg(long)]
        id: u64,
        /// ADDR:PORT the other masters reach this one at.
        #[arg(long)]
        listen: String,
        /// An initial member, ID=ADDR:PORT (repeatable; include this master).
        #[arg(long = "member", value_name = "ID=ADDR:PORT", required = true)]
        members: Vec<String>,
        /// Added to the Raft term to give the cards' epoch (default: this state's last
        /// `serve.epoch`, so cards that knew this master go on upward). Give every member
        /// the same value.
        #[arg(long)]
        epoch_base: Option<u64>,
        /// This member is a witness (run it with `master witness`).
        #[arg(long)]
        witness: bool,
    },
    /// Members, roles, term and epoch, log indexes, who leads and who serves.
    Status,
    /// A planned switchover: member ID takes over serving (refused unless it is complete:
    /// every blob, the whole log).
    Switchover { id: u64 },
    /// Add a member: ID at ADDR:PORT (run `master cluster init --id ID --listen ADDR:PORT
    /// --member ...` and `master serve` there first); it catches up, then votes.
    Add {
        id: u64,
        #[arg(value_name = "ADDR:PORT")]
        addr: String,
    },
    /// Remove member ID from the cluster.
    Remove { id: u64 },
    /// Set the order of succession: the members that should serve, most preferred first
    /// (e.g. `2,1,3`). The first complete one serves; after a takeover the service goes
    /// back to a more preferred member as soon as it is complete.
    Order {
        #[arg(value_delimiter = ',', required = true)]
        ids: Vec<u64>,
    },
    /// Certify a master's plan key with the shelf key: writes the certificate that
    /// `master serve` attaches to every plan and command (from STATE/plan.cert), so that
    /// cards whose initramfs trusts the shelf key obey this master. Run it where the shelf
    /// key is kept; copy plan.pub there and plan.cert back.
    Certify {
        /// The shelf secret key (`master keygen --out shelf` makes shelf.key and shelf.pub;
        /// shelf.pub goes into the initramfs with `mkinitramfs --trust`).
        #[arg(long)]
        shelf_key: PathBuf,
        /// The master's plan public key [default: STATE/plan.pub].
        #[arg(long)]
        plan_pub: Option<PathBuf>,
        /// The certificate to write (never over an existing file) [default:
        /// STATE/plan.cert].
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// `master trust ...`
#[derive(Debug, Subcommand)]
pub enum TrustCmd {
    /// Trust a vendor public key file.
    Add {
        key: PathBuf,
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// List trusted keys.
    List,
    /// Stop trusting a key (by key id).
    Remove { key_id: String },
}

/// `master node ...`
#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// Register a card (the backplane does this from Solicits).
    Add(NodeAddArgs),
    /// Force a card into a class, or `--auto` to use the match rules again.
    Class {
        node: MacAddr,
        #[arg(required_unless_present = "auto")]
        class: Option<String>,
        #[arg(long, conflicts_with = "class")]
        auto: bool,
    },
}

/// Arguments of `master node add`.
#[derive(Debug, Args)]
pub struct NodeAddArgs {
    #[arg(long)]
    pub mac: MacAddr,
    #[arg(long = "type")]
    pub card_type: String,
    #[arg(long)]
    pub arch: Arch,
    #[arg(long, default_value_t = 1)]
    pub shelf: u32,
    #[arg(long)]
    pub slot: u32,
    #[arg(long, default_value = "")]
    pub hw_rev: String,
    /// Feature the card asks for (repeatable).
    #[arg(long = "feature")]
    pub features: Vec<String>,
    /// Force this class.
    #[arg(long)]
    pub class: Option<String>,
}

/// Errors of the CLI itself (the operations' errors come through [`MasterError`]).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    Master(#[from] MasterError),
    #[error("key generation failed")]
    Key(#[from] keys::KeyError),
    #[error("packing failed")]
    Pack(#[from] pack::PackError),
    #[error("the release described by {path} would not import")]
    PackCheck {
        path: PathBuf,
        #[source]
        source: Box<crate::resolve::ResolveError>,
    },
    #[error("cannot resolve path {path}")]
    Path {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write output")]
    Output(#[source] std::io::Error),
    #[error("backplane service")]
    Serve(#[from] crate::serve::cli::ServeCliError),
    #[error(transparent)]
    Decode(#[from] decode::DecodeError),
    #[error("master watch")]
    Watch(#[from] crate::watch::WatchError),
    #[error("blocking SIGINT/SIGTERM to stop cleanly")]
    Signals(#[source] nix::Error),
    #[error(transparent)]
    Manual(#[from] manual::ManualError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("master cluster: {0}")]
    Cluster(String),
    #[error("master upgrade: {0}")]
    Upgrade(String),
    #[error(transparent)]
    ClusterState(#[from] crate::cluster::ClusterError),
}

fn absolute(p: &Path) -> Result<PathBuf, CliError> {
    std::path::absolute(p).map_err(|source| CliError::Path {
        path: p.to_path_buf(),
        source,
    })
}

/// A terminal progress bar, created on first use; nothing when stderr is not a TTY.
struct Progress {
    bar: Option<ProgressBar>,
    tty: bool,
}

impl Progress {
    fn new() -> Self {
        Self {
            bar: None,
            tty: std::io::stderr().is_terminal(),
        }
    }

    fn update(&mut self, done: u64, total: u64) {
        if !self.tty {
            return;
        }
        let bar = self.bar.get_or_insert_with(|| {
            let b = ProgressBar::new(total);
            if let Ok(style) = ProgressStyle::with_template(
                "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            ) {
                b.set_style(style.progress_chars("=> "));
            }
            b.set_message("importing");
            b
        });
        bar.set_position(done);
    }

    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

/// Sends a request to the state's owner (a daemon or `master serve`), or runs it
/// in-process as the owner; waits up to [`control::OWNER_WAIT`] for an owner that is
/// starting or stopping (see [`control::reach`]).
pub fn run_request(state: &Path, req: Request) -> Result<Reply, CliError> {
    let mut progress = Progress::new();
    let result = request_owner(state, req, &mut progress);
    progress.finish();
    result
}

fn request_owner(state: &Path, req: Request, progress: &mut Progress) -> Result<Reply, CliError> {
    let deadline = std::time::Instant::now() + control::OWNER_WAIT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match control::reach(state, left)? {
            Access::Owner(client) => {
                log::debug!(
                    "using the daemon at {}",
                    control::socket_path(state).display()
                );
                match client.call(&req, &mut |d, t| progress.update(d, t)) {
                    Err(e @ ControlError::Unanswered { .. })
                        if std::time::Instant::now() < deadline =>
                    {
                        log::info!(
                            "{}; asking the next owner",
                            shelfboot_proto::report::error_chain(&e)
                        );
                        std::thread::sleep(control::OWNER_POLL);
                    }
                    r => return Ok(r?),
                }
            }
            Access::Owned(_lock) => {
                // A cluster member's databases change only through Raft, in its
                // `master serve`: never behind its back, in-process.
                if crate::cluster::ClusterConfig::load(state)?.is_some() {
                    return Err(MasterError::ClusterNotRunning.into());
                }
                let mut m = Master::open(state)?;
                let outcome = control::execute(&mut m, req, Backplane::Unserved, &mut |d, t| {
                    progress.update(d, t)
                })?;
                return Ok(outcome.reply);
            }
        }
    }
}

/// The control request for a state command; `None` for the commands that run locally
/// without state or run on their own (keygen, pack, daemon, serve, stats, decode,
/// completions, man).
fn request_for(cmd: Command) -> Result<Option<Request>, CliError> {
    Ok(Some(match cmd {
        Command::Trust { action } => match action {
            TrustCmd::Add { key, comment } => Request::TrustAdd {
                path: absolute(&key)?,
                comment,
            },
            TrustCmd::List => Request::TrustList,
            TrustCmd::Remove { key_id } => Request::TrustRemove { key_id },
        },
        Command::Import { image, no_activate } => Request::Import {
            path: absolute(&image)?,
            activate: !no_activate,
        },
        Command::Releases => Request::Releases,
        Command::Packages => Request::Packages,
        Command::Classes { release } => Request::Classes { release },
        Command::Nodes => Request::Nodes,
        Command::Cluster {
            action: ClusterCmd::Status,
        } => Request::ClusterStatus,
        Command::Cluster {
            action: ClusterCmd::Switchover { id },
        } => Request::ClusterSwitchover { to: id },
        Command::Cluster {
            action: ClusterCmd::Add { id, addr },
        } => Request::ClusterAdd { id, addr },
        Command::Cluster {
            action: ClusterCmd::Remove { id },
        } => Request::ClusterRemove { id },
        Command::Cluster {
            action: ClusterCmd::Order { ids },
        } => Request::ClusterOrder { order: ids },
        Command::Node { action } => match action {
            NodeCmd::Add(a) => Request::NodeAdd {
                identity: NodeIdentity {
                    mac: a.mac,
                    card_type: a.card_type,
                    arch: a.arch,
                    shelf: a.shelf,
                    slot: a.slot,
                    hw_rev: a.hw_rev,
                    features: a.features,
                },
                class: a.class,
            },
            NodeCmd::Class { node, class, auto } => Request::NodeClass {
                mac: node,
                class: if auto { None } else { class },
            },
        },
        Command::Assign {
            target,
            release,
            packages,
            clear,
        } => Request::Assign {
            target,
            release,
            pins: packages,
            clear,
        },
        Command::Assignments => Request::Assignments,
        Command::TestMode {
            node,
            packages,
            off,
        } => Request::TestMode {
            mac: node,
            packages,
            off,
        },
        Command::Rollback { target, to } => Request::Rollback { target, to },
        Command::History { node, limit } => Request::History { node, limit },
        Command::Explain { node } => Request::Explain { mac: node },
        Command::Gc { keep } => Request::Gc { keep },
        Command::Prepare { node } => Request::Fleet {
            action: FleetAction::Prepare,
            target: node,
        },
        Command::WarmBoot { node } => Request::Fleet {
            action: FleetAction::WarmBoot,
            target: node,
        },
        Command::Reset { node } => Request::Fleet {
            action: FleetAction::Reset,
            target: node,
        },
        Command::Keygen { .. }
        | Command::Pack { .. }
        | Command::Daemon { .. }
        | Command::Serve(_)
        | Command::Witness { .. }
        | Command::Cluster {
            action: ClusterCmd::Init { .. } | ClusterCmd::Certify { .. },
        }
        | Command::Stats
        | Command::Upgrade { .. }
        | Command::Watch(_)
        | Command::Events(_)
        | Command::Decode { .. }
        | Command::Completions { .. }
        | Command::Man { .. } => return Ok(None),
    }))
}

/// A flag set by SIGINT or SIGTERM (blocked in every thread, waited for in one), so that
/// a long-running view ends cleanly; without `wanted`, nothing is blocked.
fn stop_on_signal(wanted: bool) -> Result<std::sync::Arc<AtomicBool>, CliError> {
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    if wanted {
        let mut sigs = SigSet::empty();
        sigs.add(Signal::SIGINT);
        sigs.add(Signal::SIGTERM);
        sigs.thread_block().map_err(CliError::Signals)?;
        let s = stop.clone();
        std::thread::spawn(move || {
            if sigs.wait().is_ok() {
                s.store(true, Ordering::Relaxed);
            }
        });
    }
    Ok(stop)
}

/// `master cluster init`: writes STATE/cluster.toml (never over an existing one).
fn cluster_init(
    state: &Path,
    id: u64,
    listen: String,
    members: &[String],
    epoch_base: Option<u64>,
    witness: bool,
) -> Result<Reply, CliError> {
    use crate::cluster::{ClusterConfig, MemberConfig};
    let _lock = StateLock::acquire_waiting(state, control::OWNER_WAIT)?;
    if ClusterConfig::load(state)?.is_some() {
        return Err(CliError::Cluster(format!(
            "{} exists: this master is already a cluster member",
            state.join(crate::cluster::CONFIG_FILE).display()
        )));
    }
    let members = members
        .iter()
        .map(|m| {
            let (i, addr) = m
                .split_once('=')
                .ok_or_else(|| CliError::Cluster(format!("--member '{m}' is not ID=ADDR:PORT")))?;
            let id = i
                .parse()
                .map_err(|_| CliError::Cluster(format!("--member '{m}': '{i}' is not a number")))?;
            Ok(MemberConfig {
                id,
                addr: addr.to_owned(),
            })
        })
        .collect::<Result<Vec<_>, CliError>>()?;
    let epoch_base = match epoch_base {
        Some(b) => b,
        None => std::fs::read_to_string(state.join("serve.epoch"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0),
    };
    let cfg = ClusterConfig {
        id,
        listen,
        epoch_base,
        witness,
        members,
    };
    cfg.check().map_err(CliError::Cluster)?;
    std::fs::create_dir_all(state).map_err(|source| MasterError::StateDir {
        path: state.to_path_buf(),
        source,
    })?;
    cfg.save(state)?;
    Ok(Reply::Done(format!(
        "this master is member {id} of a cluster of {} (epoch base {epoch_base}); start `master serve` on every member",
        cfg.members.len()
    )))
}

fn run_daemon(state: &Path, group: Option<&str>) -> Result<(), CliError> {
    let _lock = StateLock::acquire_waiting(state, control::OWNER_WAIT)?;
    if crate::cluster::ClusterConfig::load(state)?.is_some() {
        // Only `master serve` replicates; a daemon would write this member's databases
        // alone.
        return Err(MasterError::ClusterNotRunning.into());
    }
    let mut m = Master::open(state)?;
    let daemon = Daemon::bind(state, group)?;
    eprintln!("master daemon listening on {}", daemon.path().display());
    let sig = daemon.serve_until_signal(&mut m)?;
    eprintln!("master daemon stopping on {sig}");
    Ok(())
}

fn run_inner(mut cli: Cli, out: &mut dyn std::io::Write) -> Result<(), CliError> {
    let file = crate::config::load(cli.config.as_deref())?;
    if !cli.state_given
        && let Some(state) = &file.state
    {
        cli.state = state.clone();
    }
    let json = cli.json;
    let reply = match cli.command {
        Command::Keygen { prefix } => {
            let (sk, pk, id) = keys::keygen(&prefix)?;
            Reply::Done(format!(
                "wrote {} (secret, mode 0600) and {}; key id {id}",
                sk.display(),
                pk.display()
            ))
        }
        Command::Pack { spec, key, out } => {
            let signing = keys::read_signing_key(&key)?;
            let packed = pack::prepare(&spec)?;
            crate::resolve::check_release(&packed.manifest).map_err(|source| {
                CliError::PackCheck {
                    path: spec.clone(),
                    source: Box::new(source),
                }
            })?;
            let bytes = pack::write_image(&packed, &signing, &out)?;
            Reply::Done(format!(
                "wrote {}: release {}, {} boot images, {} packages, {} blobs, {bytes} bytes, signed by {}",
                out.display(),
                packed.manifest.release,
                packed.manifest.boot.len(),
                packed.manifest.packages.len(),
                packed.manifest.blobs.len(),
                keys::key_id(&signing.verifying_key())
            ))
        }
        Command::Daemon { group } => {
            let group = group.or_else(|| file.control_group.clone());
            return run_daemon(&cli.state, group.as_deref());
        }
        Command::Serve(a) => return Ok(crate::serve::cli::serve(&cli.state, &a, &file)?),
        Command::Cluster {
            action:
                ClusterCmd::Init {
                    id,
                    listen,
                    members,
                    epoch_base,
                    witness,
                },
        } => cluster_init(&cli.state, id, listen, &members, epoch_base, witness)?,
        Command::Cluster {
            action:
                ClusterCmd::Certify {
                    shelf_key,
                    plan_pub,
                    out,
                },
        } => {
            let plan_pub = plan_pub.unwrap_or_else(|| cli.state.join("plan.pub"));
            let out = out.unwrap_or_else(|| cli.state.join(crate::serve::CERT_FILE));
            let (_, plan_id, shelf_id) = keys::certify(&shelf_key, &plan_pub, &out)?;
            Reply::Done(format!(
                "wrote {}: plan key {plan_id} certified by shelf key {shelf_id}; `master serve` attaches it (as STATE/{}) from its next start or takeover, and cards with the shelf key's .pub in their initramfs obey it",
                out.display(),
                crate::serve::CERT_FILE
            ))
        }
        Command::Witness { group } => {
            let stop = stop_on_signal(true)?;
            let group = group.or_else(|| file.control_group.clone());
            crate::serve::run_witness(&cli.state, group.as_deref(), &stop)
                .map_err(crate::serve::cli::ServeCliError::from)?;
            return Ok(());
        }
        Command::Stats => return Ok(crate::serve::cli::print_stats(&cli.state, json, out)?),
        Command::Upgrade {
            node,
            class,
            wave,
            wave_timeout,
        } => {
            let stop = stop_on_signal(wave.is_some() || class.is_some())?;
            let args = upgrade::UpgradeArgs {
                node,
                class,
                wave,
                wave_timeout: std::time::Duration::from_secs(wave_timeout),
            };
            return upgrade::run(&cli.state, &args, out, &stop);
        }
        Command::Decode { frames } => return Ok(decode::run(&frames, json, out)?),
        Command::Watch(a) => {
            let stop = stop_on_signal(!a.once)?;
            let mode = if json {
                crate::watch::Mode::Json
            } else if std::io::stdout().is_terminal() {
                crate::watch::Mode::Terminal
            } else {
                crate::watch::Mode::Plain
            };
            let rows = || {
                console::Term::stdout()
                    .size_checked()
                    .map(|(rows, _)| usize::from(rows))
            };
            return Ok(crate::watch::run(&cli.state, &a, mode, out, &stop, &rows)?);
        }
        Command::Events(a) => {
            let stop = stop_on_signal(a.follow)?;
            return events::run(&cli.state, &a, json, out, &stop);
        }
        Command::Completions { shell } => return Ok(manual::completions(shell, out)?),
        Command::Man { dir } => {
            let pages = manual::write_man_pages(&dir)?;
            Reply::Done(format!(
                "wrote {} man pages to {}",
                pages.len(),
                dir.display()
            ))
        }
        cmd => match request_for(cmd)? {
            Some(req) => run_request(&cli.state, req)?,
            None => Reply::Pong,
        },
    };
    let text = if json {
        let mut s = serde_json::to_string_pretty(&reply)
            .map_err(|e| CliError::Output(std::io::Error::other(e)))?;
        s.push('\n');
        s
    } else {
        output::render(&reply)
    };
    out.write_all(text.as_bytes()).map_err(CliError::Output)
}

/// Runs the CLI; prints errors with their cause chain.
pub fn run(cli: Cli) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    match run_inner(cli, &mut stdout) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let chain = match &e {
                CliError::Control(ControlError::Remote(chain)) => chain.clone(),
                _ => shelfboot_proto::report::causes(&e)
                    .map(|c| c.to_string())
                    .collect(),
            };
            let mut lines = chain.into_iter();
            if let Some(first) = lines.next() {
                eprintln!("error: {first}");
            }
            for l in lines {
                eprintln!("  caused by: {l}");
            }
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "master",
            "--state",
            "/s",
            "--json",
            "assign",
            "linecards",
            "--package",
            "a=1.0.0",
        ])
        .unwrap();
        assert!(cli.json);
        let Some(Request::Assign { target, pins, .. }) = request_for(cli.command).unwrap() else {
            panic!("not an assign request")
        };
        assert_eq!(
            (target.as_str(), pins),
            ("linecards", vec!["a=1.0.0".to_owned()])
        );
        assert!(Cli::try_parse_from(["master", "test-mode", "02:00:00:00:00:01"]).is_err());
        assert!(Cli::try_parse_from(["master", "explain", "not-a-mac"]).is_err());
    }
}
