//! The lab's sample release, made of real software: squashfs packages built with
//! `mksquashfs` from Debian's busybox-static, and boot images per card type and
//! architecture (the kernel + an initramfs with our init, its module load list when the
//! kernel has modules, and the master's plan anchor), plus the `system.toml` that
//! `master pack` reads.
//!
//! ```text
//! base 1.0.0       /bin/busybox, /sbin/init: start /etc/shelfboot/rc.d/*, print
//!                  "SHELFBOOT-READY packages: ...", then idle
//! heartbeat 1.0.0  depends base; rc.d/50-heartbeat prints "HEARTBEAT n" every 5 s
//! diag 1.0.0       provides feature "diag"; rc.d/60-diag prints "DIAG up"
//! testpkg 1.0.0    depends base; in no class: only a test-mode trial (`master test-mode
//!                  MAC --package testpkg=1.0.0`) runs it; rc.d/70-testpkg prints
//!                  "TESTPKG-RUNNING from a test-mode trial"
//! boot "lab-kernel" per card type and arch: SHBOOTIM(kernel, initramfs, cmdline with
//!                  the type)
//! classes: every card gets heartbeat (and base); a card asking feature diag gets diag
//! ```
//!
//! A release holds one build of every package and one boot image per card type for each
//! card architecture it is built for ([`ArchBuild`]: x86_64 with Debian's bzImage and
//! modules, aarch64 with the lab's own Image, drivers built in); the base package carries
//! that architecture's busybox.
//!
//! Packages are overlay layers (base at the bottom), so each package only ships its own
//! files and its line in `/etc/shelfboot/packages/`. The same initramfs boots the card
//! from QEMU (stage 1) and sits in the boot image a card kexecs (stage 2).
//! Not here: signing, packing and importing (master), booting (crate::shelf).

use std::path::{Path, PathBuf};
use std::process::Command;

use shelfboot_mkinitramfs::build::{self, BuildSpec, ModuleSpec};
use shelfboot_mkinitramfs::compress::Compression;

use shelfboot_proto::id::Arch;

use crate::cmd::{self, CmdError};
use crate::flash::Block2mtd;
use crate::kernel::Kernel;

/// The console line a card prints when its package root is up.
pub const READY_LINE: &str = "SHELFBOOT-READY packages:";
/// The heartbeat service's console line prefix.
pub const HEARTBEAT_LINE: &str = "HEARTBEAT ";
/// The console line of the test-mode package `testpkg` when it runs.
pub const TESTPKG_LINE: &str = "TESTPKG-RUNNING";
/// Name of the boot image in the release.
pub const BOOT_NAME: &str = "lab-kernel";
/// Release version.
pub const VERSION: &str = "1.0.0";
/// How much of the kernel's own log a lab card prints on its console (stage 1 and stored
/// images alike): `loglevel=6` shows notices and worse (the banner, the command line,
/// UBI attach, warnings, errors, oopses, panics, hung tasks, RCU stalls) but not the
/// info chatter, and init's own INFO lines keep their `shelfboot-init: INFO` form (init
/// prints them itself: init/src/logger.rs). `earlyprintk=serial` prints on COM1 before
/// the ttyS0 console exists, and the bzImage decompressor of a kexec'd image prints its
/// errors there too, so a card whose stored kernel hangs or dies early still says how
/// far it got. (`quiet`, used before, is loglevel 4 with no early console: a card whose
/// stored kernel hung early printed nothing at all.)
pub const CONSOLE_LOG: &str = "loglevel=6 earlyprintk=serial,ttyS0,115200";
/// [`CONSOLE_LOG`] of an aarch64 card: the same log level, and `earlycon` on the `virt`
/// machine's PL011 (its MMIO address) for the lines before the ttyAMA0 console exists.
pub const CONSOLE_LOG_AARCH64: &str = "loglevel=6 earlycon=pl011,0x9000000";
/// Kernel arguments every lab card gets (stage 1 and stored images alike).
/// `no_timer_check`: on a loaded TCG host the kernel's IO-APIC timer check can fail and
/// panic ("IO-APIC + timer doesn't work!", seen in `flashfaults.rs`).
pub const BASE_CMDLINE: &str = concat!(
    "console=ttyS0 panic=-1 ",
    "loglevel=6 earlyprintk=serial,ttyS0,115200",
    " no_timer_check ipv6.disable=1 shelfboot.carrier_timeout=5"
);

/// How much of the kernel's log a lab card of `arch` prints ([`CONSOLE_LOG`]).
pub fn console_log(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => CONSOLE_LOG,
        Arch::Aarch64 => CONSOLE_LOG_AARCH64,
    }
}

/// Kernel arguments every lab card of `arch` gets, stage 1 and stored images alike
/// (except the console, which QEMU's command line sets for stage 1): [`BASE_CMDLINE`] on
/// x86_64; on aarch64 its own console and log arguments, `ipv6.disable` and the carrier
/// timeout as on x86_64 (not `no_timer_check`, an x86 IO-APIC matter), and the flash,
/// whose drivers are built in and take their parameters from the command line
/// ([`Block2mtd::cmdline`], and the simulated NAND chip of the lab's measured geometry as
/// mtd0, for experiments).
pub fn base_cmdline(arch: Arch) -> String {
    match arch {
        Arch::X86_64 => BASE_CMDLINE.to_string(),
        Arch::Aarch64 => format!(
            "{} {CONSOLE_LOG_AARCH64} {}",
            crate::card::console_args(arch),
            arch_args(arch)
        ),
    }
}

/// What a card of `arch` gets on top of the console and log arguments.
fn arch_args(arch: Arch) -> String {
    match arch {
        Arch::X86_64 => "no_timer_check ipv6.disable=1 shelfboot.carrier_timeout=5".into(),
        Arch::Aarch64 => format!(
            "ipv6.disable=1 shelfboot.carrier_timeout=5 {} {}",
            crate::flash::Nandsim::default().cmdline(),
            Block2mtd::default().cmdline()
        ),
    }
}

/// What one card architecture of a release is built from.
#[derive(Debug, Clone)]
pub struct ArchBuild {
    /// The lab kernel of that architecture.
    pub kernel: Kernel,
    /// The static init binary for it (PID 1 of the initramfs).
    pub init: PathBuf,
    /// Its static busybox (the base package's `/bin/busybox`).
    pub busybox: PathBuf,
}

impl ArchBuild {
    /// The card architecture.
    pub fn arch(&self) -> Arch {
        self.kernel.arch
    }
}

/// What a release is built from.
#[derive(Debug, Clone)]
pub struct ReleaseSpec {
    /// Card types that get a boot image (one per architecture).
    pub card_types: Vec<String>,
    /// One build per card architecture.
    pub builds: Vec<ArchBuild>,
    /// Trust anchor file for the initramfs (the master's `plan.anchor`).
    pub anchor: PathBuf,
}

/// A built release.
#[derive(Debug, Clone)]
pub struct Release {
    /// Directory holding `system.toml` and `files/`.
    pub dir: PathBuf,
    /// The `system.toml` for `master pack`.
    pub system_toml: PathBuf,
    /// Per architecture: the kernel version of its boot images and the initramfs QEMU
    /// boots (the same bytes as in that architecture's boot images).
    pub arches: Vec<(Arch, String, PathBuf)>,
    /// Sizes of the artifacts, by file name (for reports).
    pub sizes: Vec<(String, u64)>,
}

impl Release {
    /// The initramfs of `arch`'s cards, if the release has that architecture.
    pub fn initramfs(&self, arch: Arch) -> Option<&Path> {
        self.arches
            .iter()
            .find(|(a, _, _)| *a == arch)
            .map(|(_, _, p)| p.as_path())
    }
}

/// Failures building the release.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// Writing a file of the release failed.
    #[error("cannot write {path} of the lab release")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// mksquashfs failed (is squashfs-tools installed?).
    #[error("building package {name} with mksquashfs failed (apt-get install squashfs-tools)")]
    Squashfs {
        /// Package.
        name: String,
        /// The cause.
        #[source]
        source: CmdError,
    },
    /// The initramfs could not be built.
    #[error("building the lab initramfs failed")]
    Initramfs(#[source] build::BuildError),
    /// The boot image could not be assembled.
    #[error("building the boot image for card type {card_type} failed")]
    BootImage {
        /// Card type.
        card_type: String,
        /// The cause.
        #[source]
        source: shelfboot_mkinitramfs::bootimage::BootImageError,
    },
    /// A host file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

fn write(path: &Path, data: impl AsRef<[u8]>) -> Result<(), ReleaseError> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).map_err(|source| ReleaseError::Write {
            path: p.to_path_buf(),
            source,
        })?;
    }
    std::fs::write(path, data).map_err(|source| ReleaseError::Write {
        path: path.to_path_buf(),
        source,
    })
}

fn write_exec(path: &Path, text: &str) -> Result<(), ReleaseError> {
    use std::os::unix::fs::PermissionsExt as _;
    write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).map_err(|source| {
        ReleaseError::Write {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// The base root's /sbin/init: starts the services of every layer, says Ready, idles.
const BASE_INIT: &str = r#"#!/bin/sh
export PATH=/bin:/sbin
for s in /etc/shelfboot/rc.d/*; do [ -x "$s" ] && "$s" & done
echo "SHELFBOOT-READY packages: $(cat /etc/shelfboot/packages/* | tr '\n' ' ')uptime $(cut -d' ' -f1 /proc/uptime)"
while :; do sleep 3600; done
"#;

const HEARTBEAT: &str = r#"#!/bin/sh
: > /run/heartbeat.up
n=0
while :; do n=$((n+1)); echo "HEARTBEAT $n"; sleep 5; done
"#;

/// The lab's health command (in base): healthy once heartbeat says it is up.
pub const HEALTH_COMMAND: &str = "/usr/libexec/lab-health";
const HEALTH: &str = "#!/bin/sh
test -e /run/heartbeat.up
";

const DIAG: &str = "#!/bin/sh\necho \"DIAG up\"\n";

const TESTPKG: &str = "#!/bin/sh\necho \"TESTPKG-RUNNING from a test-mode trial\"\n";

const BUSYBOX_APPLETS: &[&str] = &[
    "sh", "cat", "echo", "sleep", "cut", "tr", "ls", "mount", "test",
];

/// Builds one package tree into `out` with mksquashfs (fixed times, root-owned).
fn squashfs(name: &str, tree: &Path, out: &Path) -> Result<(), ReleaseError> {
    cmd::run(Command::new("mksquashfs").args([
        tree.as_os_str(),
        out.as_os_str(),
        "-noappend".as_ref(),
        "-quiet".as_ref(),
        "-no-progress".as_ref(),
        "-all-root".as_ref(),
        "-comp".as_ref(),
        "gzip".as_ref(),
        "-mkfs-time".as_ref(),
        "0".as_ref(),
        "-all-time".as_ref(),
        "0".as_ref(),
    ]))
    .map(|_| ())
    .map_err(|source| ReleaseError::Squashfs {
        name: name.into(),
        source,
    })
}

/// Writes package `name`'s tree under `dir/trees/` and returns its path.
fn package_tree(name: &str, busybox: &Path, dir: &Path) -> Result<PathBuf, ReleaseError> {
    let t = dir.join("trees").join(name);
    let _ = std::fs::remove_dir_all(&t);
    write(
        &t.join("etc/shelfboot/packages").join(name),
        format!("{name}-{VERSION}\n"),
    )?;
    match name {
        "base" => {
            let bin = t.join("bin");
            std::fs::create_dir_all(&bin).map_err(|source| ReleaseError::Write {
                path: bin.clone(),
                source,
            })?;
            std::fs::copy(busybox, bin.join("busybox")).map_err(|source| ReleaseError::Read {
                path: busybox.to_path_buf(),
                source,
            })?;
            for a in BUSYBOX_APPLETS {
                let link = t.join("bin").join(a);
                std::os::unix::fs::symlink("busybox", &link)
                    .map_err(|source| ReleaseError::Write { path: link, source })?;
            }
            write_exec(&t.join("sbin/init"), BASE_INIT)?;
            write_exec(&t.join(HEALTH_COMMAND.trim_start_matches('/')), HEALTH)?;
            for d in ["dev", "proc", "sys", "run", "tmp", "etc/shelfboot/rc.d"] {
                std::fs::create_dir_all(t.join(d)).map_err(|source| ReleaseError::Write {
                    path: t.join(d),
                    source,
                })?;
            }
        }
        "heartbeat" => write_exec(&t.join("etc/shelfboot/rc.d/50-heartbeat"), HEARTBEAT)?,
        "testpkg" => write_exec(&t.join("etc/shelfboot/rc.d/70-testpkg"), TESTPKG)?,
        _ => write_exec(&t.join("etc/shelfboot/rc.d/60-diag"), DIAG)?,
    }
    Ok(t)
}

/// The lab initramfs: our init, the modules for virtio-net, block2mtd flash, UBI,
/// squashfs, overlayfs and loop (test-mode packages in RAM) with load.list (none when
/// the kernel has its drivers built in), and the trust anchor.
pub fn initramfs(k: &Kernel, init: &Path, anchor: &Path) -> Result<Vec<u8>, ReleaseError> {
    let mut wanted: Vec<(String, String)> = vec![("virtio_net".into(), String::new())];
    wanted.extend(Block2mtd::default().modules());
    for m in ["ubi", "squashfs", "overlay", "loop"] {
        wanted.push((m.into(), String::new()));
    }
    wanted.extend(watchdog_modules());
    let spec = BuildSpec {
        init: Some(init.to_path_buf()),
        modules: k.modules.then(|| ModuleSpec {
            root: k.root.clone(),
            kver: k.version.clone(),
            wanted,
        }),
        trust: vec![anchor.to_path_buf()],
        compression: Compression::Gzip,
        ..BuildSpec::default()
    };
    build::build(&spec)
        .map(|b| b.archive)
        .map_err(ReleaseError::Initramfs)
}

/// The hardware watchdog of the lab's x86_64 cards (QEMU's `i6300esb`, armed by init
/// when the card's command line says `shelfboot.watchdog=`): the watchdog core keeps it
/// running across a kexec and does not feed it on its own before userspace takes over,
/// so a kernel that hangs after a kexec resets the card.
pub fn watchdog_modules() -> Vec<(String, String)> {
    vec![
        (
            "watchdog".into(),
            "stop_on_reboot=0 handle_boot_enabled=0".into(),
        ),
        ("i6300esb".into(), String::new()),
    ]
}

/// Kernel arguments of a stored image for `card_type` on `arch` (the plan's command
/// line).
pub fn stored_cmdline(card_type: &str, arch: Arch) -> String {
    format!("{} shelfboot.card={card_type}", base_cmdline(arch))
}

/// Kernel arguments of a card's first (QEMU) boot on `arch`: type, slot and features.
pub fn card_append(
    arch: Arch,
    card_type: &str,
    slot: u16,
    features: &[&str],
    master_timeout_s: u32,
) -> String {
    let mut s = format!(
        "{} {} shelfboot.card={card_type} shelfboot.slot={slot} shelfboot.master_timeout={master_timeout_s}",
        console_log(arch),
        arch_args(arch)
    );
    if !features.is_empty() {
        s.push_str(&format!(" shelfboot.features={}", features.join(",")));
    }
    s
}

/// The `[[package]]` entry of one build.
fn package_entry(name: &str, version: &str, arch: Arch, file: &str, extra: &str) -> String {
    format!(
        "[[package]]\nname = \"{name}\"\nversion = \"{version}\"\narch = \"{arch}\"\nfile = \"{file}\"\n{extra}\n"
    )
}

/// Boot image file name (in `files/`) of `card_type` on `arch`.
fn boot_file(card_type: &str, arch: Arch) -> String {
    format!("{BOOT_NAME}-{card_type}-{arch}.img")
}

/// The `[[boot]]` entries of every card type on every architecture.
fn boot_entries(arches: &[(Arch, String)], card_types: &[String], extra_cmdline: &str) -> String {
    let mut toml = String::new();
    for (arch, kver) in arches {
        for ct in card_types {
            toml.push_str(&format!(
                "[[boot]]\nname = \"{BOOT_NAME}\"\nversion = \"{}\"\ncard_type = \"{ct}\"\narch = \"{arch}\"\nimage = \"files/{}\"\ncmdline = \"{}{extra_cmdline}\"\n\n",
                boot_version(kver, extra_cmdline),
                boot_file(ct, *arch),
                stored_cmdline(ct, *arch),
            ));
        }
    }
    toml
}

/// Version of the boot entry of kernel `kver`: the kernel's (`6.1.0`), or, when the
/// release adds to its command line (a health command), a version of its own
/// (`6.1.0-cmdline.HASH`): the master refuses one version with two contents.
fn boot_version(kver: &str, extra_cmdline: &str) -> String {
    let base = kver.split('-').next().unwrap_or("6");
    if extra_cmdline.is_empty() {
        return base.to_string();
    }
    let h = <sha2::Sha256 as sha2::Digest>::digest(extra_cmdline.as_bytes());
    format!("{base}-cmdline.{}", hex::encode(&h[..4]))
}

/// The class (all card types, all architectures) and the defaults.
fn class_entry(card_types: &[String], class_packages: &str) -> String {
    let types: Vec<String> = card_types.iter().map(|t| format!("\"{t}\"")).collect();
    format!(
        "[[class]]\nname = \"lab\"\nmatch = {{ card_types = [{}] }}\nboot = \"{BOOT_NAME}\"\npackages = {{ {class_packages} }}\n\n[defaults]\npackages = {{ base = \"^1\" }}\n",
        types.join(", ")
    )
}

/// Builds the release into `dir` (see the module docs).
pub fn build(spec: &ReleaseSpec, dir: &Path) -> Result<Release, ReleaseError> {
    let files = dir.join("files");
    std::fs::create_dir_all(&files).map_err(|source| ReleaseError::Write {
        path: files.clone(),
        source,
    })?;
    let mut sizes = Vec::new();
    let mut toml = format!("[release]\nname = \"lab-os\"\nversion = \"{VERSION}\"\n\n");
    let mut arches = Vec::new();
    for b in &spec.builds {
        let arch = b.arch();
        for (name, extra) in [
            ("base", ""),
            ("heartbeat", "depends = { base = \"^1\" }\n"),
            (
                "diag",
                "provides = [\"diag\"]\ndepends = { base = \"^1\" }\n",
            ),
            ("testpkg", "depends = { base = \"^1\" }\n"),
        ] {
            let tree = package_tree(name, &b.busybox, dir)?;
            let file = format!("{name}-{VERSION}-{arch}.sqfs");
            let out = files.join(&file);
            squashfs(name, &tree, &out)?;
            sizes.push((file.clone(), std::fs::metadata(&out).map_or(0, |m| m.len())));
            toml.push_str(&package_entry(
                name,
                VERSION,
                arch,
                &format!("files/{file}"),
                extra,
            ));
        }
        let initrd = initramfs(&b.kernel, &b.init, &spec.anchor)?;
        let initramfs_path = dir.join(format!("initramfs-{arch}.cpio.gz"));
        write(&initramfs_path, &initrd)?;
        let kernel = std::fs::read(&b.kernel.kexec_image).map_err(|source| ReleaseError::Read {
            path: b.kernel.kexec_image.clone(),
            source,
        })?;
        for ct in &spec.card_types {
            let img = shelfboot_mkinitramfs::bootimage::build(
                &kernel,
                &initrd,
                &stored_cmdline(ct, arch),
            )
            .map_err(|source| ReleaseError::BootImage {
                card_type: format!("{ct} ({arch})"),
                source,
            })?;
            let file = boot_file(ct, arch);
            write(&files.join(&file), &img)?;
            sizes.push((file, img.len() as u64));
        }
        arches.push((arch, b.kernel.version.clone(), initramfs_path));
    }
    let kvers: Vec<(Arch, String)> = arches.iter().map(|(a, v, _)| (*a, v.clone())).collect();
    toml.push_str(&boot_entries(&kvers, &spec.card_types, ""));
    toml.push_str(&class_entry(&spec.card_types, "heartbeat = \"^1\""));
    let system_toml = dir.join("system.toml");
    write(&system_toml, toml)?;
    Ok(Release {
        dir: dir.to_path_buf(),
        system_toml,
        arches,
        sizes,
    })
}

/// What a release derived from a built one changes (see [`derive`]); the default changes
/// nothing but the version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Derived {
    /// Release version, e.g. `1.1.0`.
    pub version: String,
    /// New version of the `heartbeat` package (its files change: the version line and a
    /// `HEARTBEAT v<version>` banner), or `None` to keep heartbeat 1.0.0.
    pub heartbeat: Option<String>,
    /// Size of an extra package `bulk` 1.0.0 (incompressible bytes, depends base ^1) that
    /// the class gives every card; 0 = no such package.
    pub bulk_bytes: u64,
    /// Extra small packages `lab-pkg-NN` (version = the release's) that the class gives
    /// every card: each ships only its line in `/etc/shelfboot/packages/`, so the Ready
    /// line lists every one of them mounted. A release with 60 of them is a plan of 64+
    /// artifacts: fragments on the wire, one segment on flash, 64+ overlay layers.
    pub extra_packages: usize,
    /// The release names the lab's health command (`/usr/libexec/lab-health`: heartbeat
    /// is up) with this deadline in seconds (`shelfboot.health=`,
    /// `shelfboot.health_deadline=` in its command line); `None`: no health command.
    pub health_deadline_s: Option<u64>,
    /// The derived heartbeat (with [`Derived::heartbeat`]) crashes at start: it never
    /// says it is up, so the health command never passes.
    pub heartbeat_broken: bool,
    /// The release's kernel hangs at boot: its command line names an initramfs init that
    /// does not exist and `panic=0`, so the kernel panics and waits forever (only a
    /// watchdog brings the card back).
    pub kernel_hangs: bool,
    /// MACs (`02:…` text) given a per-node override `ram = true`: RAM-first cards, which
    /// run their set from RAM and never burn it.
    pub ram_first: Vec<String>,
}

/// Name of extra package `i` of a derived release.
pub fn extra_package_name(i: usize) -> String {
    format!("lab-pkg-{i:02}")
}

/// Writes the heartbeat tree of `version` (banner + the usual loop) and returns it.
fn heartbeat_tree(version: &str, broken: bool, dir: &Path) -> Result<PathBuf, ReleaseError> {
    let t = dir.join("trees").join(format!("heartbeat-{version}"));
    let _ = std::fs::remove_dir_all(&t);
    write(
        &t.join("etc/shelfboot/packages/heartbeat"),
        format!("heartbeat-{version}\n"),
    )?;
    let script = if broken {
        format!("#!/bin/sh\necho \"HEARTBEAT v{version} crashed at start\"\nexit 1\n")
    } else {
        HEARTBEAT.replacen(
            "n=0\n",
            &format!("echo \"HEARTBEAT v{version} starting\"\nn=0\n"),
            1,
        )
    };
    write_exec(&t.join("etc/shelfboot/rc.d/50-heartbeat"), &script)?;
    Ok(t)
}

/// Writes the bulk tree: `size` pseudo-random (incompressible) bytes in /opt/bulk/data.
fn bulk_tree(size: u64, dir: &Path) -> Result<PathBuf, ReleaseError> {
    let t = dir.join("trees").join("bulk");
    let _ = std::fs::remove_dir_all(&t);
    write(&t.join("etc/shelfboot/packages/bulk"), "bulk-1.0.0\n")?;
    write(&t.join("opt/bulk/data"), noise(size))?;
    Ok(t)
}

/// `size` bytes of a fixed xorshift stream (the same bytes every build).
fn noise(size: u64) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let n = usize::try_from(size).unwrap_or(usize::MAX);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

/// The `system.toml` of a derived release: the base release's boot images and base
/// package (same files, so the same artifacts and blobs), heartbeat as given, the
/// optional bulk package, the same class and defaults; every package built for each
/// architecture of `arches` (arch, kernel version).
fn derived_toml(arches: &[(Arch, String)], card_types: &[String], d: &Derived) -> String {
    let mut toml = format!(
        "[release]\nname = \"lab-os\"\nversion = \"{}\"\n\n",
        d.version
    );
    let dep = "depends = { base = \"^1\" }\n";
    let hb = d.heartbeat.as_deref().unwrap_or(VERSION);
    for (arch, _) in arches {
        let f = |name: &str, v: &str| format!("files/{name}-{v}-{arch}.sqfs");
        toml.push_str(&package_entry(
            "base",
            VERSION,
            *arch,
            &f("base", VERSION),
            "",
        ));
        toml.push_str(&package_entry(
            "heartbeat",
            hb,
            *arch,
            &f("heartbeat", hb),
            dep,
        ));
        toml.push_str(&package_entry(
            "diag",
            VERSION,
            *arch,
            &f("diag", VERSION),
            "provides = [\"diag\"]\ndepends = { base = \"^1\" }\n",
        ));
        if d.bulk_bytes > 0 {
            toml.push_str(&package_entry(
                "bulk",
                "1.0.0",
                *arch,
                &f("bulk", "1.0.0"),
                dep,
            ));
        }
        for i in 0..d.extra_packages {
            let name = extra_package_name(i);
            toml.push_str(&package_entry(
                &name,
                &d.version,
                *arch,
                &f(&name, &d.version),
                dep,
            ));
        }
    }
    let mut class_packages = "heartbeat = \"^1\"".to_string();
    if d.bulk_bytes > 0 {
        class_packages.push_str(", bulk = \"^1\"");
    }
    for i in 0..d.extra_packages {
        class_packages.push_str(&format!(", {} = \"={}\"", extra_package_name(i), d.version));
    }
    let mut health = d.health_deadline_s.map_or_else(String::new, |s| {
        format!(" shelfboot.health={HEALTH_COMMAND} shelfboot.health_deadline={s}")
    });
    if d.kernel_hangs {
        health.push_str(" rdinit=/lab-kernel-hangs panic=0");
    }
    toml.push_str(&boot_entries(arches, card_types, &health));
    toml.push_str(&class_entry(card_types, &class_packages));
    for mac in &d.ram_first {
        toml.push_str(&format!("\n[[override]]\nmac = \"{mac}\"\nram = true\n"));
    }
    toml
}

/// A later release built beside `base` (which [`build`] made for `card_types`): only
/// what `d` names is new (squashfs of the new heartbeat, the bulk package); boot images,
/// base and diag are the base release's files, so importing it stores only the new
/// blobs and a card fetches only the changed artifacts. Written to `base.dir/<version>.toml`
/// (paths inside are relative to `base.dir`).
pub fn derive(base: &Release, card_types: &[String], d: &Derived) -> Result<Release, ReleaseError> {
    let dir = &base.dir;
    let files = dir.join("files");
    let mut sizes = Vec::new();
    let mut build = |name: &str, tree: &Path, file: String| -> Result<(), ReleaseError> {
        let out = files.join(&file);
        squashfs(name, tree, &out)?;
        sizes.push((file, std::fs::metadata(&out).map_or(0, |m| m.len())));
        Ok(())
    };
    // Every package below is architecture-independent (scripts and data): one tree, one
    // build per architecture.
    for (arch, _, _) in &base.arches {
        if let Some(v) = &d.heartbeat {
            let tree = heartbeat_tree(v, d.heartbeat_broken, dir)?;
            build("heartbeat", &tree, format!("heartbeat-{v}-{arch}.sqfs"))?;
        }
        if d.bulk_bytes > 0 {
            let tree = bulk_tree(d.bulk_bytes, dir)?;
            build("bulk", &tree, format!("bulk-1.0.0-{arch}.sqfs"))?;
        }
        for i in 0..d.extra_packages {
            let name = extra_package_name(i);
            let t = dir.join("trees").join(format!("{name}-{}", d.version));
            let _ = std::fs::remove_dir_all(&t);
            write(
                &t.join("etc/shelfboot/packages").join(&name),
                format!("{name}-{}\n", d.version),
            )?;
            build(&name, &t, format!("{name}-{}-{arch}.sqfs", d.version))?;
        }
    }
    let kvers: Vec<(Arch, String)> = base
        .arches
        .iter()
        .map(|(a, v, _)| (*a, v.clone()))
        .collect();
    let system_toml = dir.join(format!("{}.toml", d.version));
    write(&system_toml, derived_toml(&kvers, card_types, d))?;
    Ok(Release {
        dir: dir.clone(),
        system_toml,
        arches: base.arches.clone(),
        sizes,
    })
}

/// The lab initramfs with other flash modules in place of block2mtd (e.g. nandsim with
/// its fault-injection parameters, [`crate::flash::Nandsim::params`]); gzip, like
/// [`initramfs`].
pub fn initramfs_with_flash(
    k: &Kernel,
    init: &Path,
    anchor: &Path,
    flash_modules: Vec<(String, String)>,
) -> Result<Vec<u8>, ReleaseError> {
    let mut wanted: Vec<(String, String)> = vec![("virtio_net".into(), String::new())];
    wanted.extend(flash_modules);
    // loop: packages stored in a segment are mounted through a loop device limited to
    // their extent of the ubiblock device.
    for m in ["ubi", "squashfs", "overlay", "loop"] {
        wanted.push((m.into(), String::new()));
    }
    wanted.extend(watchdog_modules());
    let spec = BuildSpec {
        init: Some(init.to_path_buf()),
        modules: k.modules.then(|| ModuleSpec {
            root: k.root.clone(),
            kver: k.version.clone(),
            wanted,
        }),
        trust: vec![anchor.to_path_buf()],
        compression: Compression::Gzip,
        ..BuildSpec::default()
    };
    build::build(&spec)
        .map(|b| b.archive)
        .map_err(ReleaseError::Initramfs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_append_names_type_slot_and_features() {
        let a = card_append(Arch::X86_64, "lc100", 3, &["diag"], 20);
        assert!(a.contains("shelfboot.card=lc100"), "{a}");
        assert!(a.contains("shelfboot.slot=3"), "{a}");
        assert!(a.contains("shelfboot.features=diag"), "{a}");
        assert!(!card_append(Arch::X86_64, "fab10", 1, &[], 20).contains("features"));
        assert!(stored_cmdline("fab10", Arch::X86_64).ends_with("shelfboot.card=fab10"));
        assert!(stored_cmdline("fab10", Arch::X86_64).starts_with(BASE_CMDLINE));
        // The kernel's own log stays on the console (a silent card shows why).
        for c in [a, stored_cmdline("lc100", Arch::X86_64)] {
            assert!(!c.split_whitespace().any(|w| w == "quiet"), "{c}");
            assert!(c.contains(CONSOLE_LOG), "{c}");
        }
        // aarch64: its console, and the built-in flash drivers' parameters in both
        // stages (the stored image gets no module list to carry them).
        let first = card_append(Arch::Aarch64, "lc100", 1, &[], 20);
        let stored = stored_cmdline("lc100", Arch::Aarch64);
        assert!(stored.starts_with("console=ttyAMA0 panic=-1 "), "{stored}");
        for c in [&first, &stored] {
            assert!(c.contains(CONSOLE_LOG_AARCH64), "{c}");
            assert!(c.contains(&Block2mtd::default().cmdline()), "{c}");
            assert!(c.contains("nandsim.id_bytes="), "{c}");
            assert!(!c.contains("ttyS0") && !c.contains("no_timer_check"), "{c}");
        }
    }

    #[test]
    fn derived_release_reuses_the_base_files_and_adds_only_what_changed() {
        let types = vec!["lc100".to_string(), "fab10".to_string()];
        let x86 = vec![(Arch::X86_64, "6.1.0-56-amd64".to_string())];
        let d = Derived {
            version: "1.1.0".into(),
            heartbeat: Some("1.1.0".into()),
            bulk_bytes: 0,
            extra_packages: 0,
            health_deadline_s: None,
            heartbeat_broken: false,
            kernel_hangs: false,
            ram_first: vec![],
        };
        let t = derived_toml(&x86, &types, &d);
        assert!(!t.contains("[[override]]"), "{t}");
        let ram = Derived {
            version: "1.1.0".into(),
            ram_first: vec!["52:54:00:5b:00:02".into()],
            ..Derived::default()
        };
        let r = derived_toml(&x86, &types, &ram);
        assert!(
            r.ends_with("[[override]]\nmac = \"52:54:00:5b:00:02\"\nram = true\n"),
            "{r}"
        );
        assert!(t.contains("version = \"1.1.0\"\n"), "{t}");
        assert!(t.contains("file = \"files/base-1.0.0-x86_64.sqfs\""), "{t}");
        assert!(
            t.contains("file = \"files/heartbeat-1.1.0-x86_64.sqfs\""),
            "{t}"
        );
        assert!(
            t.contains("image = \"files/lab-kernel-fab10-x86_64.img\""),
            "{t}"
        );
        assert!(t.contains(&stored_cmdline("lc100", Arch::X86_64)), "{t}");
        assert!(!t.contains("bulk") && !t.contains("aarch64"), "{t}");
        let big = Derived {
            bulk_bytes: 5,
            heartbeat: None,
            ..d
        };
        let t = derived_toml(&x86, &types, &big);
        assert!(t.contains("heartbeat = \"^1\", bulk = \"^1\""), "{t}");
        assert!(
            t.contains("file = \"files/heartbeat-1.0.0-x86_64.sqfs\""),
            "{t}"
        );
        let many = Derived {
            extra_packages: 3,
            ..big
        };
        let t = derived_toml(&x86, &types, &many);
        assert!(
            t.contains("bulk = \"^1\", lab-pkg-00 = \"=1.1.0\", lab-pkg-01 = \"=1.1.0\", lab-pkg-02 = \"=1.1.0\" }"),
            "{t}"
        );
        assert!(
            t.contains("file = \"files/lab-pkg-02-1.1.0-x86_64.sqfs\""),
            "{t}"
        );
        // A mixed release: every package and boot image once per architecture, one class.
        let mixed = vec![
            (Arch::X86_64, "6.1.0-56-amd64".to_string()),
            (Arch::Aarch64, "6.1.192-3-0123456789abcdef".to_string()),
        ];
        let t = derived_toml(&mixed, &types, &many);
        assert_eq!(t.matches("[[package]]").count(), 2 * (4 + 3), "{t}");
        assert_eq!(t.matches("[[boot]]").count(), 4, "{t}");
        assert_eq!(t.matches("[[class]]").count(), 1, "{t}");
        assert!(
            t.contains("file = \"files/lab-pkg-02-1.1.0-aarch64.sqfs\""),
            "{t}"
        );
        assert!(
            t.contains("version = \"6.1.192\"\ncard_type = \"lc100\"\narch = \"aarch64\"\nimage = \"files/lab-kernel-lc100-aarch64.img\""),
            "{t}"
        );
        assert!(t.contains(&stored_cmdline("fab10", Arch::Aarch64)), "{t}");
        let n = noise(1000);
        assert_eq!(n.len(), 1000);
        assert_eq!(n, noise(1000));
        // Incompressible enough: no byte value dominates.
        let zeros = n.iter().filter(|&&b| b == 0).count();
        assert!(zeros < 20, "{zeros}");
    }
}
