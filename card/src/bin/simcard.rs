//! `simcard`: run N simulated cards (card agents with file-backed flash) on one
//! interface, then print where each ended up. See `docs/conversation.md`.
//!
//! ```text
//! simcard --iface IF --anchor STATE/plan.anchor --dir DIR [--cards N]
//!         [--types lc100:x86_64,lc200:aarch64] [--base-mac 02:5c:00:00:00:00]
//!         [--features a,b] [--phase on|warm|reset] [--timeout SECS]
//!         [--leb BYTES --lebs N] [--report FILE] [--json]
//! ```
//!
//! Card i (1-based) gets MAC base + i, slot i, the i-th type of `--types` (round robin)
//! and flash in `DIR/card-<i>` (kept between runs: a second run is a warm boot). Exit
//! status 0 when every card decided to boot, 1 otherwise, 2 on bad arguments (clap's
//! usage error, or an unreadable trust anchor). `--help` lists every flag.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use clap::Parser;
use shelfboot_card::agent::Timers;
use shelfboot_card::sim::{self, SimCard, SimConfig};
use shelfboot_proto::frame::MacAddr;
use shelfboot_proto::msg::{Arch, BootPhase};
use shelfboot_proto::sign::TrustAnchor;

/// Run N simulated cards (card agents with file-backed flash) on one interface, then print
/// where each ended up.
#[derive(Debug, Parser)]
#[command(name = "simcard", version)]
struct Args {
    /// Interface the cards talk on (run as root in the namespace that has it).
    #[arg(long, value_name = "IF")]
    iface: String,
    /// The master's trust anchor (STATE/plan.anchor).
    #[arg(long, value_name = "FILE")]
    anchor: PathBuf,
    /// Directory of the cards' flash: card i in DIR/card-<i>, kept between runs.
    #[arg(long)]
    dir: PathBuf,
    /// Number of cards.
    #[arg(long, value_name = "N", default_value_t = 1)]
    cards: usize,
    /// Card types with their architecture, given round robin.
    #[arg(long, value_name = "TYPE:ARCH,...", value_delimiter = ',', value_parser = parse_type,
          default_value = "lc100:x86_64")]
    types: Vec<(String, Arch)>,
    /// Card i gets MAC base + i.
    #[arg(long = "base-mac", value_name = "MAC", value_parser = parse_mac,
          default_value = "02:5c:00:00:00:00")]
    base_mac: MacAddr,
    /// Features every card asks for.
    #[arg(long, value_name = "F,...", value_delimiter = ',')]
    features: Vec<String>,
    /// Boot phase of the first Solicit: on, warm or reset.
    #[arg(long, value_name = "on|warm|reset", value_parser = parse_phase, default_value = "on")]
    phase: BootPhase,
    /// Give up after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    timeout: u64,
    /// Flash geometry of a fresh card: LEB size in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 128 * 1024)]
    leb: u64,
    /// Flash geometry of a fresh card: number of LEBs.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    lebs: u64,
    /// Write the reports here (JSON) as they change.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Print the reports as JSON.
    #[arg(long)]
    json: bool,
}

/// The netio parser (six hex octets), as the protocol crate's address type.
fn parse_mac(s: &str) -> Result<MacAddr, String> {
    s.parse::<shelfboot_netio::MacAddr>()
        .map(|m| MacAddr(m.0))
        .map_err(|e| e.to_string())
}

fn parse_type(t: &str) -> Result<(String, Arch), String> {
    let (ty, ar) = t.split_once(':').unwrap_or((t, "x86_64"));
    let arch = match ar {
        "x86_64" => Arch::X86_64,
        "aarch64" => Arch::Aarch64,
        _ => return Err(format!("unknown arch {ar:?} (x86_64, aarch64)")),
    };
    Ok((ty.to_owned(), arch))
}

fn parse_phase(p: &str) -> Result<BootPhase, String> {
    match p {
        "on" => Ok(BootPhase::PowerOn),
        "warm" => Ok(BootPhase::WarmBoot),
        "reset" => Ok(BootPhase::AfterReset),
        _ => Err(format!("unknown phase {p:?} (on, warm, reset)")),
    }
}

fn config(a: &Args) -> Result<SimConfig, String> {
    let bytes = std::fs::read(&a.anchor)
        .map_err(|e| format!("reading trust anchor {}: {e}", a.anchor.display()))?;
    let anchor = TrustAnchor::from_bytes(&bytes)
        .map_err(|e| format!("trust anchor {}: {e}", a.anchor.display()))?;
    let base = a.base_mac;
    let base_n = u64::from_be_bytes([
        0, 0, base.0[0], base.0[1], base.0[2], base.0[3], base.0[4], base.0[5],
    ]);
    let cards = (1..=a.cards)
        .map(|i| {
            let n = (base_n + i as u64).to_be_bytes();
            let (card_type, arch) = a.types[(i - 1) % a.types.len()].clone();
            SimCard {
                mac: MacAddr([n[2], n[3], n[4], n[5], n[6], n[7]]),
                card_type,
                arch,
                shelf: 1,
                slot: u16::try_from(i).unwrap_or(u16::MAX),
                features: a.features.clone(),
                dir: a.dir.join(format!("card-{i}")),
            }
        })
        .collect();
    Ok(SimConfig {
        iface: a.iface.clone(),
        ethertype: shelfboot_proto::DEFAULT_ETHERTYPE,
        anchor,
        cards,
        leb_size: a.leb,
        total_lebs: a.lebs,
        phase: a.phase,
        timers: Timers::default(),
        timeout: Duration::from_secs(a.timeout),
        report: a.report.clone(),
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    let json = args.json;
    let cfg = match config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("simcard: {e}");
            return ExitCode::from(2);
        }
    };
    let stop = AtomicBool::new(false);
    let reports = match sim::run(&cfg, &stop) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("simcard: {}", shelfboot_proto::report::error_chain(&e));
            return ExitCode::FAILURE;
        }
    };
    if json {
        match serde_json::to_string_pretty(&reports) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("simcard: encoding the report: {e}"),
        }
    } else {
        for r in &reports {
            let how = if r.decision.is_empty() {
                format!("{:?} (undecided)", r.phase).to_lowercase()
            } else if r.validated_only {
                format!("{} (validated, nothing fetched)", r.decision)
            } else if r.autonomous {
                format!("{} (autonomous, no master)", r.decision)
            } else {
                format!(
                    "{} (fetched {} bytes)",
                    r.decision, r.counters.bytes_written
                )
            };
            let digest = r.digest.get(..16).unwrap_or("pristine");
            println!(
                "{} slot {:>3} {:<8} set {digest}  {how}{}",
                r.mac,
                r.slot,
                r.card_type,
                r.error
                    .as_ref()
                    .map(|e| format!("  last error: {e}"))
                    .unwrap_or_default()
            );
        }
    }
    if reports
        .iter()
        .all(|r| r.decision == "kexec" || r.decision == "switch_root")
    {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
