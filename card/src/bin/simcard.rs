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
//! status 0 when every card decided to boot, 1 otherwise, 2 on bad arguments.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use shelfboot_card::agent::Timers;
use shelfboot_card::sim::{self, SimCard, SimConfig};
use shelfboot_proto::frame::MacAddr;
use shelfboot_proto::msg::{Arch, BootPhase};
use shelfboot_proto::sign::TrustAnchor;

const USAGE: &str = "usage: simcard --iface IF --anchor FILE --dir DIR [--cards N] \
[--types TYPE:ARCH,...] [--base-mac MAC] [--features F,...] [--phase on|warm|reset] \
[--timeout SECS] [--leb BYTES] [--lebs N] [--report FILE] [--json]";

/// The netio parser (six hex octets), as the protocol crate's address type.
fn parse_mac(s: &str) -> Result<MacAddr, String> {
    s.parse::<shelfboot_netio::MacAddr>()
        .map(|m| MacAddr(m.0))
        .map_err(|e| format!("--base-mac: {e}"))
}

fn parse_arch(s: &str) -> Option<Arch> {
    match s {
        "x86_64" => Some(Arch::X86_64),
        "aarch64" => Some(Arch::Aarch64),
        _ => None,
    }
}

fn config(args: &[String]) -> Result<(SimConfig, bool), String> {
    let mut iface = None;
    let mut anchor = None;
    let mut dir = None;
    let mut cards = 1usize;
    let mut types = vec![("lc100".to_owned(), Arch::X86_64)];
    let mut base = MacAddr([0x02, 0x5c, 0, 0, 0, 0]);
    let mut features = Vec::new();
    let mut phase = BootPhase::PowerOn;
    let mut timeout = 60u64;
    let mut leb = 128 * 1024u64;
    let mut lebs = 1024u64;
    let mut report = None;
    let mut json = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--iface" => iface = Some(val()?),
            "--anchor" => anchor = Some(PathBuf::from(val()?)),
            "--dir" => dir = Some(PathBuf::from(val()?)),
            "--cards" => cards = val()?.parse().map_err(|_| "--cards: not a number")?,
            "--types" => {
                types = val()?
                    .split(',')
                    .map(|t| {
                        let (ty, ar) = t.split_once(':').unwrap_or((t, "x86_64"));
                        parse_arch(ar)
                            .map(|ar| (ty.to_owned(), ar))
                            .ok_or(format!("--types: unknown arch {ar:?} (x86_64, aarch64)"))
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--base-mac" => base = parse_mac(&val()?)?,
            "--features" => features = val()?.split(',').map(str::to_owned).collect(),
            "--phase" => {
                phase = match val()?.as_str() {
                    "on" => BootPhase::PowerOn,
                    "warm" => BootPhase::WarmBoot,
                    "reset" => BootPhase::AfterReset,
                    p => return Err(format!("--phase: unknown phase {p:?}")),
                }
            }
            "--timeout" => timeout = val()?.parse().map_err(|_| "--timeout: not a number")?,
            "--leb" => leb = val()?.parse().map_err(|_| "--leb: not a number")?,
            "--lebs" => lebs = val()?.parse().map_err(|_| "--lebs: not a number")?,
            "--report" => report = Some(PathBuf::from(val()?)),
            "--json" => json = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let iface = iface.ok_or("--iface is required")?;
    let anchor_path = anchor.ok_or("--anchor is required")?;
    let dir = dir.ok_or("--dir is required")?;
    let bytes = std::fs::read(&anchor_path)
        .map_err(|e| format!("reading trust anchor {}: {e}", anchor_path.display()))?;
    let anchor = TrustAnchor::from_bytes(&bytes)
        .map_err(|e| format!("trust anchor {}: {e}", anchor_path.display()))?;
    let base_n = u64::from_be_bytes([
        0, 0, base.0[0], base.0[1], base.0[2], base.0[3], base.0[4], base.0[5],
    ]);
    let cards = (1..=cards)
        .map(|i| {
            let n = (base_n + i as u64).to_be_bytes();
            let (card_type, arch) = types[(i - 1) % types.len()].clone();
            SimCard {
                mac: MacAddr([n[2], n[3], n[4], n[5], n[6], n[7]]),
                card_type,
                arch,
                shelf: 1,
                slot: u16::try_from(i).unwrap_or(u16::MAX),
                features: features.clone(),
                dir: dir.join(format!("card-{i}")),
            }
        })
        .collect();
    Ok((
        SimConfig {
            iface,
            ethertype: shelfboot_proto::DEFAULT_ETHERTYPE,
            anchor,
            cards,
            leb_size: leb,
            total_lebs: lebs,
            phase,
            timers: Timers::default(),
            timeout: Duration::from_secs(timeout),
            report,
        },
        json,
    ))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let (cfg, json) = match config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("simcard: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let stop = AtomicBool::new(false);
    let reports = match sim::run(&cfg, &stop) {
        Ok(r) => r,
        Err(e) => {
            let mut msg = e.to_string();
            let mut cur = std::error::Error::source(&e);
            while let Some(c) = cur {
                msg.push_str(": ");
                msg.push_str(&c.to_string());
                cur = c.source();
            }
            eprintln!("simcard: {msg}");
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
