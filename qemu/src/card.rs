//! One line card as a QEMU VM: TCG, the PVH vmlinux, an initramfs, the serial console
//! appended to a log file, optional flash (a raw 0xFF-filled disk image that the guest
//! turns into MTD with block2mtd and that persists across power cycles; nandsim needs
//! nothing host-side, only module parameters) and an optional virtio-net NIC on a
//! backplane tap.
//!
//! QEMU runs in its own process group; [`Card::power_cut`] and `Drop` SIGKILL the whole
//! group, so no VM outlives a failed test. Every wait has a deadline. Consecutive
//! [`Card::wait_for`] calls match lines in order. When a wait times out, the card's QEMU
//! monitor (a unix socket beside the console log, read-only use: [`crate::monitor`])
//! says where the CPU is; that goes into the error and `NAME.qemu.log`. What it does not
//! do: KVM, graphics, or guest-initiated reset (`-no-reboot`: a guest reboot or panic
//! exits).

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use shelfboot_proto::id::Arch;

/// How the NIC is emulated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NicModel {
    /// virtio-net-pci (fast, carrier up at once).
    VirtioNet,
    /// e1000 (~2 s to carrier under TCG).
    E1000,
}

/// A NIC on a backplane tap.
#[derive(Debug, Clone)]
pub struct Nic {
    /// Network namespace holding the tap.
    pub netns: String,
    /// Tap name in that namespace.
    pub tap: String,
    /// Guest MAC address.
    pub mac: [u8; 6],
    /// Emulated model.
    pub model: NicModel,
}

/// Everything needed to start one card.
#[derive(Debug, Clone)]
pub struct CardConfig {
    /// Card name (log file names, messages).
    pub name: String,
    /// Processor: which QEMU and machine (x86_64: `qemu-system-x86_64`, the PC machine,
    /// console ttyS0; aarch64: `qemu-system-aarch64 -M virt -cpu cortex-a57`, console
    /// ttyAMA0).
    pub arch: Arch,
    /// Kernel for `-kernel` ([`crate::Kernel::qemu_kernel`]: the PVH vmlinux or the raw
    /// arm64 Image).
    pub kernel: PathBuf,
    /// Initramfs for `-initrd`.
    pub initramfs: PathBuf,
    /// Extra kernel arguments after [`console_args`] of the architecture.
    pub append: String,
    /// Guest RAM in MiB (nandsim keeps its data in RAM: NAND size + ~130 MiB).
    pub memory_mib: u32,
    /// Raw disk image exposed as virtio-blk `/dev/vda` (for block2mtd).
    pub disk: Option<PathBuf>,
    /// NIC on a backplane tap.
    pub nic: Option<Nic>,
    /// Directory for `NAME.console.log` and `NAME.qemu.log`.
    pub log_dir: PathBuf,
    /// A guest reboot resets the VM in place (the card's own reset, its resident agent's
    /// or its watchdog's: the same kernel and initramfs boot again, the console log goes
    /// on) instead of exiting QEMU (`-no-reboot`, the default). x86_64 cards also get
    /// QEMU's `i6300esb` watchdog, which resets the VM when it fires.
    pub reset_in_place: bool,
}

impl CardConfig {
    /// A card with 256 MiB, no disk and no NIC.
    pub fn new(name: &str, kernel: &Path, initramfs: &Path, log_dir: &Path) -> Self {
        Self {
            name: name.to_string(),
            arch: Arch::X86_64,
            kernel: kernel.to_path_buf(),
            initramfs: initramfs.to_path_buf(),
            append: String::new(),
            memory_mib: 256,
            disk: None,
            nic: None,
            log_dir: log_dir.to_path_buf(),
            reset_in_place: false,
        }
    }

    /// Path of the console log.
    pub fn console_log(&self) -> PathBuf {
        self.log_dir.join(format!("{}.console.log", self.name))
    }

    /// Path of the QEMU monitor socket: `NAME.monitor` beside the console log, or, when
    /// that path is too long for a unix socket, `shelfboot-HASH.monitor` (of the log path)
    /// in the temporary directory; `None` if neither fits (too long, or a comma: QEMU's
    /// option separator).
    pub fn monitor_socket(&self) -> Option<PathBuf> {
        let fits = |p: &Path| {
            let t = p.to_string_lossy();
            t.len() <= crate::monitor::MAX_SOCKET_PATH && !t.contains(',')
        };
        let beside = self.log_dir.join(format!("{}.monitor", self.name));
        if fits(&beside) {
            return Some(beside);
        }
        let mut h = std::hash::DefaultHasher::new();
        std::hash::Hash::hash(&beside, &mut h);
        let short = std::env::temp_dir().join(format!(
            "shelfboot-{:016x}.monitor",
            std::hash::Hasher::finish(&h)
        ));
        fits(&short).then_some(short)
    }

    /// The full command line (program first).
    pub fn command(&self) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        if let Some(nic) = &self.nic {
            a.extend(["ip", "netns", "exec", &nic.netns].map(String::from));
        }
        let append = format!("{} {}", console_args(self.arch), self.append)
            .trim()
            .to_string();
        match self.arch {
            Arch::X86_64 => a.push("qemu-system-x86_64".into()),
            Arch::Aarch64 => a.extend(
                ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a57"].map(String::from),
            ),
        }
        a.extend(
            [
                "-accel",
                "tcg",
                "-m",
                &format!("{}M", self.memory_mib),
                "-nodefaults",
                "-display",
                "none",
                "-name",
                &self.name,
                "-kernel",
                &self.kernel.to_string_lossy(),
                "-initrd",
                &self.initramfs.to_string_lossy(),
                "-append",
                &append,
                "-chardev",
                &format!(
                    "file,id=con,path={},append=on",
                    self.console_log().display()
                ),
                "-serial",
                "chardev:con",
            ]
            .map(String::from),
        );
        if self.reset_in_place {
            if self.arch == Arch::X86_64 {
                a.extend(["-device", "i6300esb", "-watchdog-action", "reset"].map(String::from));
            }
        } else {
            a.push("-no-reboot".into());
        }
        if let Some(m) = self.monitor_socket() {
            a.push("-monitor".into());
            a.push(format!("unix:{},server=on,wait=off", m.display()));
        }
        if let Some(disk) = &self.disk {
            a.push("-drive".into());
            a.push(format!("file={},format=raw,if=virtio", disk.display()));
        }
        if let Some(nic) = &self.nic {
            let device = match nic.model {
                NicModel::VirtioNet => "virtio-net-pci",
                NicModel::E1000 => "e1000",
            };
            a.push("-netdev".into());
            a.push(format!(
                "tap,id=n0,ifname={},script=no,downscript=no",
                nic.tap
            ));
            a.push("-device".into());
            a.push(format!(
                "{device},netdev=n0,mac={}",
                crate::backplane::mac_string(&nic.mac)
            ));
        }
        a
    }
}

/// The console and panic arguments every card's kernel gets first: the serial console
/// of the machine (ttyS0 on the PC, the PL011 ttyAMA0 on `virt`), and reboot (so QEMU
/// exits, `-no-reboot`) at once on a panic.
pub fn console_args(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "console=ttyS0 panic=-1",
        Arch::Aarch64 => "console=ttyAMA0 panic=-1",
    }
}

/// What to look for on the console.
#[derive(Debug, Clone)]
pub enum Pattern {
    /// A line containing this text.
    Substring(String),
    /// A line matching this regex.
    Regex(regex::Regex),
}

impl Pattern {
    /// True when `line` matches.
    pub fn matches(&self, line: &str) -> bool {
        match self {
            Pattern::Substring(s) => line.contains(s.as_str()),
            Pattern::Regex(r) => r.is_match(line),
        }
    }
}

impl From<&str> for Pattern {
    fn from(s: &str) -> Self {
        Pattern::Substring(s.to_string())
    }
}

impl From<regex::Regex> for Pattern {
    fn from(r: regex::Regex) -> Self {
        Pattern::Regex(r)
    }
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pattern::Substring(s) => write!(f, "{s:?}"),
            Pattern::Regex(r) => write!(f, "/{}/", r.as_str()),
        }
    }
}

/// Errors of a card.
#[derive(Debug, thiserror::Error)]
pub enum CardError {
    /// A log or image file could not be prepared.
    #[error("card {card}: cannot {action} {path}")]
    File {
        /// Card name.
        card: String,
        /// What was attempted.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// QEMU could not be started.
    #[error(
        "card {card}: cannot start `{cmd}`; is qemu-system-x86 (x86_64) or qemu-system-arm (aarch64) installed?"
    )]
    Spawn {
        /// Card name.
        card: String,
        /// Command line.
        cmd: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The pattern did not show up in time.
    #[error(
        "card {card}: no console line matching {pattern} within {secs:.1} s (console {log}); CPU then: {cpu}; last lines:\n{tail}"
    )]
    Timeout {
        /// Card name.
        card: String,
        /// The pattern.
        pattern: String,
        /// The wait.
        secs: f64,
        /// Console log path.
        log: PathBuf,
        /// Where the VM's CPU was at the timeout (its `RIP=` line; the full dump is in
        /// `NAME.qemu.log`), or why that could not be asked. (Boxed: keeps the error
        /// small.)
        cpu: Box<str>,
        /// Last console lines.
        tail: String,
    },
    /// QEMU exited while we waited for a line.
    #[error(
        "card {card}: QEMU exited ({status}) before {pattern} appeared (console {log}); QEMU said: {qemu_said}; last console lines:\n{tail}"
    )]
    Exited {
        /// Card name.
        card: String,
        /// The pattern.
        pattern: String,
        /// Exit status.
        status: ExitStatus,
        /// Console log path.
        log: PathBuf,
        /// Tail of QEMU's own stderr log.
        qemu_said: String,
        /// Last console lines.
        tail: String,
    },
    /// The card is not running.
    #[error("card {card} is powered off")]
    Off {
        /// Card name.
        card: String,
    },
}

/// A running (or powered-off) card.
#[derive(Debug)]
pub struct Card {
    cfg: CardConfig,
    child: Option<Child>,
    /// Console log offset where the current boot started.
    boot_start: u64,
    /// Offset after the last matched line.
    cursor: u64,
    started: Instant,
    boots: u32,
    /// How QEMU ended by itself in this boot (None while running or after a power cut).
    exited: Option<ExitStatus>,
}

/// A matched console line.
#[derive(Debug, Clone)]
pub struct Matched {
    /// The line (without newline).
    pub line: String,
    /// Time since this boot's QEMU start.
    pub elapsed: Duration,
}

/// Writes a raw image of `size` bytes of 0xFF (erased flash: block2mtd + UBI attach it as
/// an empty MTD device without ubiformat).
pub fn create_erased_image(path: &Path, size: u64) -> std::io::Result<()> {
    let mut f = fs::File::create(path)?;
    let chunk = vec![0xffu8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64);
        // n <= 1 MiB, so the cast is lossless.
        f.write_all(&chunk[..usize::try_from(n).unwrap_or(chunk.len())])?;
        left -= n;
    }
    f.sync_all()
}

fn tail_of_file(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(n)..].join(" | ");
    if tail.is_empty() {
        format!("nothing ({})", path.display())
    } else {
        format!("{tail} ({})", path.display())
    }
}

impl Card {
    /// Starts QEMU.
    pub fn start(cfg: CardConfig) -> Result<Self, CardError> {
        let mut card = Self {
            cfg,
            child: None,
            boot_start: 0,
            cursor: 0,
            started: Instant::now(),
            boots: 0,
            exited: None,
        };
        card.boot()?;
        Ok(card)
    }

    fn file_err(
        &self,
        action: &'static str,
        path: &Path,
    ) -> impl FnOnce(std::io::Error) -> CardError {
        let (card, path) = (self.cfg.name.clone(), path.to_path_buf());
        move |source| CardError::File {
            card,
            action,
            path,
            source,
        }
    }

    fn qemu_log(&self) -> PathBuf {
        self.cfg.log_dir.join(format!("{}.qemu.log", self.cfg.name))
    }

    fn boot(&mut self) -> Result<(), CardError> {
        fs::create_dir_all(&self.cfg.log_dir)
            .map_err(self.file_err("create", &self.cfg.log_dir))?;
        let log = self.cfg.console_log();
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(self.file_err("open", &log))?;
        let start = f
            .seek(SeekFrom::End(0))
            .map_err(self.file_err("seek", &log))?;
        let qemu_log = self.qemu_log();
        let qerr = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&qemu_log)
            .map_err(self.file_err("open", &qemu_log))?;
        if let Some(m) = self.cfg.monitor_socket() {
            // A socket left by an earlier boot: QEMU would fail to bind.
            let _ = fs::remove_file(m);
        }
        let argv = self.cfg.command();
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(qerr)
            .process_group(0);
        log::info!(
            "card {}: boot {}: {}",
            self.cfg.name,
            self.boots + 1,
            argv.join(" ")
        );
        let child = cmd.spawn().map_err(|source| CardError::Spawn {
            card: self.cfg.name.clone(),
            cmd: argv.join(" "),
            source,
        })?;
        self.child = Some(child);
        self.boot_start = start;
        self.cursor = start;
        self.started = Instant::now();
        self.boots += 1;
        self.exited = None;
        Ok(())
    }

    /// The card's name.
    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// Its configuration.
    pub fn config(&self) -> &CardConfig {
        &self.cfg
    }

    /// How many times QEMU was started.
    pub fn boots(&self) -> u32 {
        self.boots
    }

    /// Console output of the current boot so far.
    pub fn console(&self) -> String {
        self.read_from(self.boot_start)
    }

    fn read_from(&self, offset: u64) -> String {
        let mut out = Vec::new();
        if let Ok(mut f) = fs::File::open(self.cfg.console_log())
            && f.seek(SeekFrom::Start(offset)).is_ok()
        {
            let _ = f.read_to_end(&mut out);
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Asks the monitor where the CPU is (registers and the next instructions), appends
    /// the answer to `NAME.qemu.log` and returns its `RIP=` line (or why it has none).
    fn cpu_state(&self, waiting_for: &str) -> Box<str> {
        let Some(sock) = self.cfg.monitor_socket() else {
            return "unknown (no monitor socket: no short enough path without a comma)".into();
        };
        let t = Duration::from_secs(5);
        let regs = match crate::monitor::query(&sock, "info registers", t) {
            Ok(r) => r,
            Err(e) => return format!("unknown ({e})").into(),
        };
        let code = crate::monitor::query(&sock, "x/12i $pc", t).unwrap_or_else(|e| e.to_string());
        let dump = format!(
            "--- card {} boot {}: CPU at the timeout of the wait for {waiting_for} ({:.1} s into the boot)\n{regs}\n{code}\n",
            self.cfg.name,
            self.boots,
            self.started.elapsed().as_secs_f64()
        );
        let qlog = self.qemu_log();
        if let Err(e) = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&qlog)
            .and_then(|mut f| f.write_all(dump.as_bytes()))
        {
            log::warn!(
                "card {}: cannot append the CPU dump to {}: {e}",
                self.cfg.name,
                qlog.display()
            );
        }
        let rip = crate::monitor::rip_line(&regs).unwrap_or("no RIP in the dump");
        format!("{rip} (registers and code in {})", qlog.display()).into()
    }

    fn tail(&self, n: usize) -> String {
        let text = self.console();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Waits until a complete console line after the previous match matches `pattern`.
    pub fn wait_for(
        &mut self,
        pattern: impl Into<Pattern>,
        timeout: Duration,
    ) -> Result<Matched, CardError> {
        let pattern = pattern.into();
        let deadline = Instant::now() + timeout;
        loop {
            // Check for exit before reading, so lines written just before exit are seen.
            let exited = self.try_exit_status();
            let text = self.read_from(self.cursor);
            let mut consumed = 0u64;
            for line in text.split_inclusive('\n') {
                if !line.ends_with('\n') {
                    break; // incomplete line: wait for the rest
                }
                consumed += line.len() as u64;
                let line = line.trim_end_matches(['\n', '\r']);
                if pattern.matches(line) {
                    self.cursor += consumed;
                    return Ok(Matched {
                        line: line.to_string(),
                        elapsed: self.started.elapsed(),
                    });
                }
            }
            if let Some(status) = exited {
                return Err(CardError::Exited {
                    card: self.cfg.name.clone(),
                    pattern: pattern.to_string(),
                    status,
                    log: self.cfg.console_log(),
                    qemu_said: tail_of_file(&self.qemu_log(), 5),
                    tail: self.tail(30),
                });
            }
            if Instant::now() >= deadline {
                return Err(CardError::Timeout {
                    card: self.cfg.name.clone(),
                    pattern: pattern.to_string(),
                    secs: timeout.as_secs_f64(),
                    log: self.cfg.console_log(),
                    cpu: self.cpu_state(&pattern.to_string()),
                    tail: self.tail(30),
                });
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn try_exit_status(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                self.child = None;
                self.exited = Some(status);
                Some(status)
            }
            _ => None,
        }
    }

    /// Waits for QEMU to exit by itself (guest poweroff or panic) within `timeout`; if it
    /// already did during an earlier wait, returns that status at once.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, CardError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited {
                return Ok(status);
            }
            if self.child.is_none() {
                return Err(CardError::Off {
                    card: self.cfg.name.clone(),
                });
            }
            if let Some(status) = self.try_exit_status() {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(CardError::Timeout {
                    card: self.cfg.name.clone(),
                    pattern: "QEMU exit".into(),
                    secs: timeout.as_secs_f64(),
                    log: self.cfg.console_log(),
                    cpu: self.cpu_state("QEMU exit"),
                    tail: self.tail(30),
                });
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// True while QEMU runs.
    pub fn is_running(&mut self) -> bool {
        self.try_exit_status();
        self.child.is_some()
    }

    /// Pulls the plug: SIGKILL to QEMU's process group, then reap it. Flash on a disk
    /// image keeps what reached the host file; nandsim contents are lost.
    pub fn power_cut(&mut self) {
        self.exited = None;
        if let Some(mut child) = self.child.take() {
            let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
            if let Err(e) = killpg(pid, Signal::SIGKILL) {
                log::debug!("card {}: killpg: {e}", self.cfg.name);
            }
            let _ = child.kill();
            let _ = child.wait();
            if let Some(m) = self.cfg.monitor_socket() {
                // QEMU killed with SIGKILL leaves its socket behind.
                let _ = fs::remove_file(m);
            }
        }
    }

    /// Power cut, then start again with the same configuration.
    pub fn power_cycle(&mut self) -> Result<(), CardError> {
        self.power_cut();
        self.boot()
    }
}

impl Drop for Card {
    fn drop(&mut self) {
        self.power_cut();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_has_the_lab_shape() {
        let mut c = CardConfig::new(
            "c0",
            Path::new("/k/vmlinux"),
            Path::new("/i.cpio.gz"),
            Path::new("/logs"),
        );
        c.disk = Some(PathBuf::from("/f.img"));
        c.nic = Some(Nic {
            netns: "ns1".into(),
            tap: "tap0".into(),
            mac: [0x52, 0x54, 0, 0, 0, 1],
            model: NicModel::VirtioNet,
        });
        c.append = "ipv6.disable=1".into();
        let a = c.command().join(" ");
        assert!(
            a.starts_with("ip netns exec ns1 qemu-system-x86_64 -accel tcg -m 256M -nodefaults"),
            "{a}"
        );
        assert!(a.contains(
            "-kernel /k/vmlinux -initrd /i.cpio.gz -append console=ttyS0 panic=-1 ipv6.disable=1"
        ));
        assert!(a.contains(
            "-chardev file,id=con,path=/logs/c0.console.log,append=on -serial chardev:con"
        ));
        assert!(a.contains("-drive file=/f.img,format=raw,if=virtio"));
        assert!(a.contains("-netdev tap,id=n0,ifname=tap0,script=no,downscript=no"));
        assert!(a.contains("-device virtio-net-pci,netdev=n0,mac=52:54:00:00:00:01"));
        assert!(
            a.contains("-monitor unix:/logs/c0.monitor,server=on,wait=off"),
            "{a}"
        );
        // A log directory too long for a unix socket: a short one in the temp directory,
        // one per log path; none where QEMU would split the path at a comma.
        c.log_dir = PathBuf::from(format!("/{}", "d".repeat(120)));
        let short = c.monitor_socket().unwrap();
        assert!(
            short.starts_with(std::env::temp_dir()),
            "{}",
            short.display()
        );
        assert!(short.to_string_lossy().len() <= crate::monitor::MAX_SOCKET_PATH);
        c.log_dir = PathBuf::from(format!("/{}", "e".repeat(120)));
        assert_ne!(c.monitor_socket().unwrap(), short);
        let mut arm = c.clone();
        arm.arch = Arch::Aarch64;
        let a = arm.command().join(" ");
        assert!(
            a.starts_with(
                "ip netns exec ns1 qemu-system-aarch64 -M virt -cpu cortex-a57 -accel tcg -m 256M"
            ),
            "{a}"
        );
        assert!(
            a.contains("-append console=ttyAMA0 panic=-1 ipv6.disable=1"),
            "{a}"
        );
        assert!(a.contains("-device virtio-net-pci,netdev=n0"), "{a}");
        c.log_dir = PathBuf::from("/a,b");
        if !std::env::temp_dir().to_string_lossy().contains(',') {
            assert!(
                c.monitor_socket()
                    .unwrap()
                    .starts_with(std::env::temp_dir())
            );
        }
    }

    #[test]
    fn patterns() {
        assert!(Pattern::from("READY").matches("card READY now"));
        let r: Pattern = regex::Regex::new(r"^LOADED \d+$").unwrap().into();
        assert!(r.matches("LOADED 12"));
        assert!(!r.matches("LOADED x"));
    }

    #[test]
    fn erased_image_is_all_ff() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f.img");
        create_erased_image(&p, (3 << 20) + 5).unwrap();
        let b = fs::read(&p).unwrap();
        assert_eq!(b.len(), (3 << 20) + 5);
        assert!(b.iter().all(|&x| x == 0xff));
    }

    /// A fake "QEMU" (a shell script) exercises waits, ordering, exit and power cut
    /// without root or a kernel.
    #[test]
    fn waits_and_power_cut_with_a_fake_vm() {
        let d = tempfile::tempdir().unwrap();
        let cfg = CardConfig::new("fake", Path::new("/k"), Path::new("/i"), d.path());
        let mut card = Card {
            cfg: cfg.clone(),
            child: None,
            boot_start: 0,
            cursor: 0,
            started: Instant::now(),
            boots: 0,
            exited: None,
        };
        let log = cfg.console_log();
        let script = format!(
            "echo one >> {0}; echo two >> {0}; printf part >> {0}; sleep 30",
            log.display()
        );
        let child = Command::new("sh")
            .args(["-c", &script])
            .process_group(0)
            .spawn()
            .unwrap();
        card.child = Some(child);
        card.wait_for("two", Duration::from_secs(5)).unwrap();
        // "one" came before the cursor: not found again.
        let err = card
            .wait_for("one", Duration::from_millis(200))
            .unwrap_err();
        assert!(matches!(err, CardError::Timeout { .. }), "{err}");
        // An incomplete line does not match.
        assert!(card.wait_for("part", Duration::from_millis(200)).is_err());
        assert!(card.is_running());
        card.power_cut();
        assert!(!card.is_running());
        assert!(matches!(
            card.wait_exit(Duration::from_millis(10)),
            Err(CardError::Off { .. })
        ));
        assert!(card.console().contains("one\ntwo\n"));
        // A VM that dies reports QEMU's own words.
        fs::write(card.qemu_log(), "qemu: could not open tap0\n").unwrap();
        card.child = Some(Command::new("true").spawn().unwrap());
        let err = card
            .wait_for("never", Duration::from_secs(5))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("QEMU exited") && err.contains("could not open tap0"),
            "{err}"
        );
        // The exit seen by wait_for is still reported by wait_exit.
        assert!(card.wait_exit(Duration::from_millis(10)).unwrap().success());
        card.power_cut();
        assert!(matches!(
            card.wait_exit(Duration::from_millis(10)),
            Err(CardError::Off { .. })
        ));
    }
}
