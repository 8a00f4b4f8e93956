//! `shelfboot-lab`: get the lab kernel, boot one card by hand with its console on
//! stdout, or run the shelf demo. Scenarios live in tests; see docs/lab.md.

mod demo;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use shelfboot_proto::id::Arch;
use shelfboot_qemu::card::{self, Card, CardConfig};
use shelfboot_qemu::kernel;

/// The shelfboot QEMU lab.
#[derive(Debug, Parser)]
#[command(name = "shelfboot-lab", version)]
struct Cli {
    /// More log output (-v info, -vv debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Boot a small shelf from erased flash with live progress, then warm-boot it, and
    /// print a table (cleans up after itself, also on Ctrl-C).
    Demo {
        /// Number of cards (types alternate lc100/fab10; every third asks feature diag).
        #[arg(long, default_value_t = 3)]
        cards: usize,
        /// Keep the work directory (consoles, flash images, master state).
        #[arg(long)]
        keep: bool,
        /// A mixed shelf: x86_64 and aarch64 cards in turn (the arm64 lab kernel is
        /// built once, about 3 minutes, then cached).
        #[arg(long)]
        arm: bool,
    },
    /// Acquire (or find cached) the lab kernel and print its paths: Debian's amd64
    /// kernel, or the arm64 kernel built from Debian's source (about 3 minutes, once).
    Kernel {
        /// Card architecture.
        #[arg(long, default_value_t = Arch::X86_64)]
        arch: Arch,
        /// Ask apt for the current version even if one is cached.
        #[arg(long)]
        refresh: bool,
    },
    /// Boot one card and copy its console to stdout until QEMU exits or the timeout.
    Card {
        /// Card architecture (which kernel and which QEMU).
        #[arg(long, default_value_t = Arch::X86_64)]
        arch: Arch,
        /// Initramfs to boot.
        #[arg(long)]
        initramfs: PathBuf,
        /// Raw flash image for virtio-blk /dev/vda (created 0xFF-filled if missing).
        #[arg(long)]
        disk: Option<PathBuf>,
        /// Size of a newly created disk image, MiB.
        #[arg(long, default_value_t = 64)]
        disk_mib: u64,
        /// Extra kernel arguments.
        #[arg(long, default_value = "")]
        append: String,
        /// Guest RAM, MiB.
        #[arg(long, default_value_t = 256)]
        memory: u32,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
        /// Directory for the console and QEMU logs.
        #[arg(long, default_value = "lab-logs")]
        log_dir: PathBuf,
    },
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Cmd::Demo { cards, keep, arm } => {
            let work = std::env::temp_dir().join(format!("shelfboot-demo-{}", std::process::id()));
            let arches: &[Arch] = if arm {
                &[Arch::X86_64, Arch::Aarch64]
            } else {
                &[Arch::X86_64]
            };
            let r = demo::run(cards, arches, &work, &mut std::io::stdout());
            if keep {
                eprintln!("shelfboot-lab: work directory kept: {}", work.display());
            } else if let Err(e) = std::fs::remove_dir_all(&work) {
                eprintln!("shelfboot-lab: cannot remove {}: {e}", work.display());
            }
            r
        }
        Cmd::Kernel { arch, refresh } => {
            let started = Instant::now();
            let k = kernel::acquire_arch(&kernel::cache_dir(), arch, refresh)
                .with_context(|| format!("cannot get the {arch} lab kernel"))?;
            println!("version  {}", k.version);
            println!("arch     {}", k.arch);
            println!("qemu     {}", k.qemu_kernel.display());
            println!("kexec    {}", k.kexec_image.display());
            if k.modules {
                println!("modules  {}/lib/modules/{}", k.root.display(), k.version);
            } else {
                println!("modules  none (built in)");
            }
            println!("({:.1} s)", started.elapsed().as_secs_f64());
            Ok(())
        }
        Cmd::Card {
            arch,
            initramfs,
            disk,
            disk_mib,
            append,
            memory,
            timeout,
            log_dir,
        } => {
            let k = kernel::acquire_arch(&kernel::cache_dir(), arch, false)
                .with_context(|| format!("cannot get the {arch} lab kernel"))?;
            if let Some(d) = &disk
                && !d.exists()
            {
                card::create_erased_image(d, disk_mib << 20)
                    .with_context(|| format!("cannot create flash image {}", d.display()))?;
            }
            let mut cfg = CardConfig::new("card", &k.qemu_kernel, &initramfs, &log_dir);
            cfg.arch = arch;
            cfg.disk = disk;
            cfg.append = append;
            cfg.memory_mib = memory;
            let console = cfg.console_log();
            let _ = std::fs::remove_file(&console);
            let mut c = Card::start(cfg)?;
            let deadline = Instant::now() + Duration::from_secs(timeout);
            let mut shown = 0;
            let mut out = std::io::stdout();
            loop {
                let text = c.console();
                if text.len() > shown {
                    out.write_all(&text.as_bytes()[shown..])?;
                    out.flush()?;
                    shown = text.len();
                }
                if !c.is_running() {
                    eprintln!(
                        "shelfboot-lab: QEMU exited; console in {}",
                        console.display()
                    );
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    anyhow::bail!(
                        "card still running after {timeout} s; killed (console in {})",
                        console.display()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shelfboot-lab: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
