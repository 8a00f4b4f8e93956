//! The gate of the root-only test tiers.
//!
//! A tier test is marked `#[ignore = "tier: ..."]` with one of the reasons below and starts
//! with [`require`]. Plain `cargo test` then reports it as *ignored*, with the reason,
//! never as a silent `ok`. Running ignored tests (`cargo test -- --ignored` or
//! `--include-ignored`, which `./dev test` does when the machine can run the tiers) is
//! asking for the tier: if something the tier needs is missing, [`require`] panics with
//! the list, so the test fails and says what to install or how to run it.
//!
//! ```text
//! #[test]
//! #[ignore = "tier: network namespaces (root, iproute2, nftables); ./dev test runs it"]
//! fn frames_cross_the_bridge() {
//!     tier::require(&[Tier::Netns]);
//!     ...
//! }
//! ```
//!
//! The reasons are literals (attributes take no constants); keep them as written here so
//! that `grep 'tier: '` finds every tier test:
//!
//! - `tier: network namespaces (root, iproute2, nftables); ./dev test runs it`
//! - `tier: QEMU (root, /dev/net/tun, ./dev setup); ./dev test runs it`
//! - `tier: root (runs commands as another user with setpriv); ./dev test runs it`
//! - `tier: network namespaces (root, iproute2, nftables) and promtool (prometheus); ./dev test runs it`
//! - `tier: systemd-analyze (root, Debian package systemd); ./dev test runs it`
//!
//! The root tier needs nothing the network-namespace tier lacks, so `./dev test` runs its
//! tests in the network-namespace step. The last two are checks with an outside tool
//! ([`Tier::Promtool`], [`Tier::SystemdAnalyze`]): they run with the network-namespace
//! tier, and fail there naming the Debian package when the tool is absent (`./dev setup`
//! installs it).
//!
//! What this does not check: whether the Debian kernel can be downloaded or a build
//! succeeds; those steps fail on their own with their own errors.

use std::path::Path;

/// A test tier beyond the pure tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// Network namespaces, veths, bridges, AF_PACKET: root, `ip`, `tc`, `nft`.
    Netns,
    /// Card VMs under QEMU on a tap backplane: root, `/dev/net/tun`, `qemu-system-x86_64`,
    /// and for the aarch64 cards `qemu-system-aarch64` and the cross compiler that builds
    /// their kernel.
    Qemu,
    /// Root on the host, to run commands as an unprivileged user: `setpriv`.
    Root,
    /// Prometheus's `promtool` (checks the metrics exposition).
    Promtool,
    /// `systemd-analyze` (verifies unit files).
    SystemdAnalyze,
}

impl Tier {
    /// Short name, as in the failure message.
    pub fn name(self) -> &'static str {
        match self {
            Tier::Netns => "network-namespace",
            Tier::Qemu => "QEMU",
            Tier::Root => "root",
            Tier::Promtool => "promtool",
            Tier::SystemdAnalyze => "systemd-analyze",
        }
    }
}

/// What the machine offers, as far as the tiers care. Read once by [`Host::probe`];
/// [`Host::missing`] is pure so that the rules are tested without root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Effective user id.
    pub euid: u32,
    /// `/dev/net/tun` exists.
    pub tun: bool,
    /// Programs found on `PATH` (of those the tiers need).
    pub programs: Vec<&'static str>,
}

/// Programs a tier needs on `PATH`, each with the Debian package that has it.
fn programs(tier: Tier) -> &'static [(&'static str, &'static str)] {
    match tier {
        Tier::Netns => &[("ip", "iproute2"), ("tc", "iproute2"), ("nft", "nftables")],
        Tier::Qemu => &[
            ("ip", "iproute2"),
            ("nft", "nftables"),
            ("qemu-system-x86_64", "qemu-system-x86"),
            ("qemu-system-aarch64", "qemu-system-arm"),
            ("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"),
        ],
        Tier::Root => &[("setpriv", "util-linux")],
        Tier::Promtool => &[("promtool", "prometheus")],
        Tier::SystemdAnalyze => &[("systemd-analyze", "systemd")],
    }
}

impl Host {
    /// Looks at this machine: euid, `/dev/net/tun`, and the tiers' programs on `PATH`.
    pub fn probe() -> Host {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let on_path = |prog: &str| std::env::split_paths(&path).any(|d| d.join(prog).is_file());
        let mut found = Vec::new();
        for tier in [
            Tier::Netns,
            Tier::Qemu,
            Tier::Root,
            Tier::Promtool,
            Tier::SystemdAnalyze,
        ] {
            for (prog, _) in programs(tier) {
                if !found.contains(prog) && on_path(prog) {
                    found.push(*prog);
                }
            }
        }
        Host {
            euid: nix::unistd::geteuid().as_raw(),
            tun: Path::new("/dev/net/tun").exists(),
            programs: found,
        }
    }

    /// What `tiers` need that this host lacks, one human-readable item each; empty when
    /// they can run.
    pub fn missing(&self, tiers: &[Tier]) -> Vec<String> {
        let mut out = Vec::new();
        if self.euid != 0 {
            out.push(format!("root (running as uid {})", self.euid));
        }
        if tiers.contains(&Tier::Qemu) && !self.tun {
            out.push("/dev/net/tun (the QEMU backplane's taps)".to_owned());
        }
        for &tier in tiers {
            for (prog, package) in programs(tier) {
                let item = format!("`{prog}` on PATH (Debian package {package})");
                if !self.programs.contains(prog) && !out.contains(&item) {
                    out.push(item);
                }
            }
        }
        out
    }
}

/// Fails the calling test unless this host can run every tier in `tiers`. Call it first in
/// every `#[ignore = "tier: ..."]` test: the test runs only when ignored tests were asked
/// for, so a missing prerequisite is a failure, not a skip.
pub fn require(tiers: &[Tier]) {
    if let Err(msg) = check(&Host::probe(), tiers) {
        panic!("{msg}");
    }
}

/// The decision of [`require`] for `host`: the failure message when something is missing.
pub fn check(host: &Host, tiers: &[Tier]) -> Result<(), String> {
    let missing = host.missing(tiers);
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = tiers.iter().map(|t| t.name()).collect();
    Err(format!(
        "the {} tier was asked for (ignored tests included) but cannot run here; missing: {}. \
         Run as root after `./dev setup`, or leave out `--ignored`/`--include-ignored` \
         (plain `cargo test` lists tier tests as ignored)",
        names.join(" and "),
        missing.join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every program the network-namespace and QEMU tiers need.
    const NETNS_AND_QEMU: [&str; 6] = [
        "ip",
        "tc",
        "nft",
        "qemu-system-x86_64",
        "qemu-system-aarch64",
        "aarch64-linux-gnu-gcc",
    ];

    fn host(euid: u32, tun: bool, programs: &[&'static str]) -> Host {
        Host {
            euid,
            tun,
            programs: programs.to_vec(),
        }
    }

    #[test]
    fn a_complete_root_host_runs_both_tiers() {
        let h = host(0, true, &NETNS_AND_QEMU);
        assert_eq!(check(&h, &[Tier::Netns, Tier::Qemu]), Ok(()));
        assert_eq!(check(&h, &[]), Ok(()));
    }

    #[test]
    fn not_root_is_missing_and_named() {
        let h = host(1000, true, &NETNS_AND_QEMU);
        let e = check(&h, &[Tier::Netns]).unwrap_err();
        assert!(e.contains("network-namespace tier"), "{e}");
        assert!(e.contains("root (running as uid 1000)"), "{e}");
        assert_eq!(h.missing(&[Tier::Netns]).len(), 1);
    }

    #[test]
    fn qemu_needs_tun_and_qemu_but_netns_does_not() {
        let h = host(0, false, &["ip", "tc", "nft"]);
        assert_eq!(check(&h, &[Tier::Netns]), Ok(()));
        let m = h.missing(&[Tier::Qemu]);
        assert_eq!(
            m,
            [
                "/dev/net/tun (the QEMU backplane's taps)",
                "`qemu-system-x86_64` on PATH (Debian package qemu-system-x86)",
                "`qemu-system-aarch64` on PATH (Debian package qemu-system-arm)",
                "`aarch64-linux-gnu-gcc` on PATH (Debian package gcc-aarch64-linux-gnu)"
            ]
        );
        let e = check(&h, &[Tier::Qemu, Tier::Netns]).unwrap_err();
        assert!(e.contains("QEMU and network-namespace tier"), "{e}");
    }

    #[test]
    fn the_root_tier_needs_root_and_setpriv_only() {
        assert_eq!(check(&host(0, false, &["setpriv"]), &[Tier::Root]), Ok(()));
        let m = host(1000, false, &[]).missing(&[Tier::Root]);
        assert_eq!(
            m,
            [
                "root (running as uid 1000)",
                "`setpriv` on PATH (Debian package util-linux)"
            ]
        );
    }

    #[test]
    fn a_tool_tier_names_its_program_and_package() {
        let h = host(0, true, &["ip", "tc", "nft"]);
        let e = check(&h, &[Tier::Netns, Tier::Promtool]).unwrap_err();
        assert!(
            e.contains("`promtool` on PATH (Debian package prometheus)"),
            "{e}"
        );
        assert_eq!(
            h.missing(&[Tier::SystemdAnalyze]),
            ["`systemd-analyze` on PATH (Debian package systemd)"]
        );
        let h = host(0, true, &["systemd-analyze"]);
        assert_eq!(check(&h, &[Tier::SystemdAnalyze]), Ok(()));
    }

    #[test]
    fn a_program_needed_by_two_tiers_is_listed_once() {
        let h = host(
            0,
            true,
            &[
                "tc",
                "qemu-system-x86_64",
                "qemu-system-aarch64",
                "aarch64-linux-gnu-gcc",
            ],
        );
        let m = h.missing(&[Tier::Netns, Tier::Qemu]);
        assert_eq!(
            m,
            [
                "`ip` on PATH (Debian package iproute2)",
                "`nft` on PATH (Debian package nftables)"
            ]
        );
    }
}
