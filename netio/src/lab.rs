//! Network-namespace fixtures for tests and benchmarks: a throwaway namespace holding a
//! bridge and N veth ports, with optional `tc tbf` shaping and an nftables bridge-family
//! loss rule. Built by shelling out to `ip`, `tc` and `nft` (iproute2, nftables).
//!
//! ```text
//!   netns sb-<purpose>-<pid>-<n>-<t>
//!   +--------------------------------------------------+
//!   |  p0 ==veth== p0b --+                              |
//!   |  p1 ==veth== p1b --+-- br0   (nft: bridge forward |
//!   |  ...               |          numgen loss rule)   |
//!   |  pN ==veth== pNb --+                              |
//!   +--------------------------------------------------+
//! ```
//!
//! Endpoints open sockets on `pI` from a thread that has entered the namespace
//! ([`Lab::run`], [`Lab::enter`]) or from a process started with [`Lab::command`]
//! (`ip netns exec`). Everything lives inside the namespace, so deleting it on drop (also
//! when a test panics) removes the bridge, veths, qdiscs and rules; no traffic ever leaves
//! it. Names carry the pid, a per-process counter and a time stamp, so concurrent tests and
//! processes never collide. It does not create IP addresses or routes: none are needed.

use std::fs::File;
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use nix::sched::{CloneFlags, setns};

use crate::mac::MacAddr;

/// Environment variable that enables the network-namespace test tier.
pub const TIER_ENV: &str = "SHELFBOOT_TIER_NETNS";

/// True if the netns tier is enabled; otherwise prints the skip notice for `test`.
pub fn tier_enabled(test: &str) -> bool {
    if std::env::var(TIER_ENV).is_ok_and(|v| v == "1") {
        return true;
    }
    eprintln!("{test}: skipped: set {TIER_ENV}=1 as root");
    false
}

/// Failures building or using a lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("could not start `{cmd}` (is iproute2/nftables installed?)")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{cmd}` failed with {status}: {stderr}")]
    Command {
        cmd: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("opening /run/netns/{netns} to enter it failed")]
    OpenNetns {
        netns: String,
        #[source]
        source: std::io::Error,
    },
    #[error("setns(CLONE_NEWNET) into {netns} failed")]
    Setns {
        netns: String,
        #[source]
        source: nix::errno::Errno,
    },
    #[error("port {port} does not exist in lab {netns} ({ports} ports)")]
    NoPort {
        netns: String,
        port: usize,
        ports: usize,
    },
    #[error("loss of {percent}% is not a percentage below 100")]
    BadLoss { percent: u8 },
}

type Result<T> = std::result::Result<T, LabError>;

/// `tc qdisc ... tbf` parameters for one port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tbf {
    pub rate_bits_per_sec: u64,
    pub burst_bytes: u32,
    pub latency: Duration,
}

impl Tbf {
    /// 1 Gbit/s with a 256 KiB bucket (2 ms at line rate; 64 KiB measured ~25% short of
    /// the rate here) and 20 ms of queue: the "master link" of the
    /// benchmarks.
    pub const GIGABIT: Tbf = Tbf {
        rate_bits_per_sec: 1_000_000_000,
        burst_bytes: 256 << 10,
        latency: Duration::from_millis(20),
    };
}

/// A network namespace with a bridge and veth ports; deleted on drop.
#[derive(Debug)]
pub struct Lab {
    netns: String,
    ports: usize,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// `sb-<purpose>-<pid>-<counter>-<time>`, purpose reduced to `[a-z0-9-]`, at most 16.
fn unique_name(purpose: &str) -> String {
    let clean: String = purpose
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(16)
        .collect();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_micros());
    format!("sb-{clean}-{}-{n}-{t:x}", std::process::id())
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn run_cmd(mut cmd: Command, stdin: Option<&str>) -> Result<Output> {
    let desc = describe(&cmd);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let spawn = |source| LabError::Spawn {
        cmd: desc.clone(),
        source,
    };
    let mut child = cmd.spawn().map_err(spawn)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).map_err(spawn)?;
    }
    let out = child.wait_with_output().map_err(spawn)?;
    if !out.status.success() {
        return Err(LabError::Command {
            cmd: desc,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(out)
}

impl Lab {
    /// Create namespace, bridge `br0` and `ports` veth pairs `pI`/`pIb` (the `b` end in
    /// the bridge), all up, IPv6 off so no stray neighbour discovery runs. Port `i` gets
    /// MAC [`Lab::port_mac`]`(i)`.
    pub fn new(purpose: &str, ports: usize) -> Result<Lab> {
        let netns = unique_name(purpose);
        let mut add = Command::new("ip");
        add.args(["netns", "add", &netns]);
        run_cmd(add, None)?;
        // From here on, Drop deletes the namespace whatever fails next.
        let lab = Lab { netns, ports };
        if let Err(e) = lab.exec(&[
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ]) {
            log::debug!("lab {}: IPv6 left on: {e}", lab.netns);
        }
        let mut batch =
            String::from("link set lo up\nlink add br0 type bridge stp_state 0 forward_delay 0\n");
        for i in 0..ports {
            let mac = Self::port_mac(i);
            batch.push_str(&format!(
                "link add p{i} address {mac} type veth peer name p{i}b\n\
                 link set p{i}b master br0\nlink set p{i}b up\nlink set p{i} up\n"
            ));
        }
        batch.push_str("link set br0 up\n");
        let mut ip = Command::new("ip");
        ip.args(["-n", &lab.netns, "-batch", "-"]);
        run_cmd(ip, Some(&batch))?;
        Ok(lab)
    }

    /// The namespace's name (as `ip netns` knows it).
    pub fn netns(&self) -> &str {
        &self.netns
    }

    pub fn ports(&self) -> usize {
        self.ports
    }

    /// Endpoint interface of port `i` (`pI`), where a socket goes.
    pub fn port(&self, i: usize) -> String {
        format!("p{i}")
    }

    /// Bridge-side interface of port `i` (`pIb`).
    pub fn bridge_port(&self, i: usize) -> String {
        format!("p{i}b")
    }

    /// MAC of endpoint `i`: locally administered 02:5b:00:00:HH:LL with HHLL = i + 1.
    pub fn port_mac(i: usize) -> MacAddr {
        let n = u16::try_from(i + 1).unwrap_or(u16::MAX).to_be_bytes();
        MacAddr([0x02, 0x5b, 0, 0, n[0], n[1]])
    }

    fn check_port(&self, port: usize) -> Result<()> {
        if port >= self.ports {
            return Err(LabError::NoPort {
                netns: self.netns.clone(),
                port,
                ports: self.ports,
            });
        }
        Ok(())
    }

    /// Shape the egress of `dev` (inside the lab) with a tbf qdisc, replacing any root
    /// qdisc. Note that a socket with PACKET_QDISC_BYPASS skips it.
    pub fn shape_dev(&self, dev: &str, tbf: Tbf) -> Result<()> {
        let mut tc = Command::new("tc");
        tc.args([
            "-n",
            &self.netns,
            "qdisc",
            "replace",
            "dev",
            dev,
            "root",
            "tbf",
        ]);
        tc.arg("rate").arg(format!("{}bit", tbf.rate_bits_per_sec));
        tc.arg("burst").arg(tbf.burst_bytes.to_string());
        tc.arg("latency")
            .arg(format!("{}us", tbf.latency.as_micros()));
        run_cmd(tc, None).map(drop)
    }

    /// Shape what port `i` sends into the bridge (egress of `pI`).
    pub fn shape_port(&self, port: usize, tbf: Tbf) -> Result<()> {
        self.check_port(port)?;
        self.shape_dev(&self.port(port), tbf)
    }

    /// Drop `percent`% of the frames the bridge forwards (nftables bridge family,
    /// `numgen random mod 100 < N drop`), only those of `ethertype` if given. Replaces an
    /// earlier rule; 0 removes it.
    pub fn set_loss(&self, percent: u8, ethertype: Option<u16>) -> Result<()> {
        if percent >= 100 {
            return Err(LabError::BadLoss { percent });
        }
        let mut script = String::from("add table bridge sbloss\ndelete table bridge sbloss\n");
        if percent > 0 {
            let matcher = ethertype.map_or(String::new(), |t| format!("ether type {t:#06x} "));
            script.push_str("table bridge sbloss {\n  chain forward {\n");
            script.push_str("    type filter hook forward priority 0; policy accept;\n");
            script.push_str(&format!(
                "    {matcher}numgen random mod 100 < {percent} counter drop\n  }}\n}}\n"
            ));
        }
        let mut nft = self.command("nft");
        nft.args(["-f", "-"]);
        run_cmd(nft, Some(&script)).map(drop)
    }

    /// Frames the loss rule has dropped so far (0 if there is no rule).
    pub fn loss_dropped(&self) -> Result<u64> {
        let out = match self.exec(&["nft", "list", "table", "bridge", "sbloss"]) {
            Ok(o) => o,
            Err(LabError::Command { .. }) => return Ok(0),
            Err(e) => return Err(e),
        };
        // "... counter packets 123 bytes 4567 drop"
        let n = out
            .split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Ok(n)
    }

    /// `ip netns exec <lab> <program>`: a process inside the lab (add args, then spawn).
    /// Wait for or kill what you spawn before the lab drops: a namespace lives on while a
    /// process is still inside it.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.netns, program]);
        c
    }

    /// Run `argv` inside the lab and return its stdout.
    pub fn exec(&self, argv: &[&str]) -> Result<String> {
        let (first, rest) = argv.split_first().ok_or_else(|| LabError::Spawn {
            cmd: String::new(),
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        })?;
        let mut c = self.command(first);
        c.args(rest);
        let out = run_cmd(c, None)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Move the *calling thread* into the lab's namespace. Only call this on a thread
    /// created for the purpose (it never returns to the original namespace); sockets it
    /// opens afterwards live in the lab.
    pub fn enter(&self) -> Result<()> {
        let path = format!("/run/netns/{}", self.netns);
        let f = File::open(&path).map_err(|source| LabError::OpenNetns {
            netns: self.netns.clone(),
            source,
        })?;
        setns(&f, CloneFlags::CLONE_NEWNET).map_err(|source| LabError::Setns {
            netns: self.netns.clone(),
            source,
        })
    }

    /// Run `f` on a dedicated thread inside the lab and return its result. A panic in
    /// `f` is resumed on the caller's thread (and the lab still cleans up on drop).
    pub fn run<T: Send, F: FnOnce() -> T + Send>(&self, f: F) -> Result<T> {
        std::thread::scope(|s| {
            let handle = s.spawn(|| -> Result<T> {
                self.enter()?;
                Ok(f())
            });
            match handle.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let mut del = Command::new("ip");
        del.args(["netns", "del", &self.netns]);
        if let Err(e) = run_cmd(del, None) {
            log::error!(
                "lab teardown: {e}; remove it with `ip netns del {}`",
                self.netns
            );
        }
    }
}

/// Multicast MACs the kernel has registered on `ifname`, from
/// `/proc/thread-self/net/dev_mcast` (so: as seen from the calling thread's namespace).
pub fn multicast_groups(ifname: &str) -> std::io::Result<Vec<MacAddr>> {
    let text = std::fs::read_to_string("/proc/thread-self/net/dev_mcast")?;
    Ok(parse_dev_mcast(&text, ifname))
}

fn parse_dev_mcast(text: &str, ifname: &str) -> Vec<MacAddr> {
    text.lines()
        .filter_map(|line| {
            let mut w = line.split_whitespace();
            let (_idx, name, _users, _global, hex) =
                (w.next()?, w.next()?, w.next()?, w.next()?, w.next()?);
            if name != ifname || hex.len() != 12 {
                return None;
            }
            let mut mac = [0u8; 6];
            for (i, b) in mac.iter_mut().enumerate() {
                *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
            }
            Some(MacAddr(mac))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_clean() {
        let a = unique_name("Loss test/2%");
        let b = unique_name("Loss test/2%");
        assert_ne!(a, b);
        assert!(a.starts_with("sb-loss-test-2--"), "{a}");
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        assert!(a.contains(&std::process::id().to_string()));
        let long = unique_name(&"x".repeat(100));
        assert!(long.len() < 64);
    }

    #[test]
    fn port_macs_are_local_unicast_and_distinct() {
        let m: Vec<_> = (0..300).map(Lab::port_mac).collect();
        assert!(m.iter().all(|a| a.is_local() && !a.is_multicast()));
        let mut d = m.clone();
        d.sort();
        d.dedup();
        assert_eq!(d.len(), m.len());
    }

    #[test]
    fn dev_mcast_parsing() {
        let text = "2    p0              1     0     333300000001\n\
                    2    p0              1     0     035b00000007\n\
                    3    p1              1     0     035b00000008\n\
                    4    p2              1     0     bad\n";
        assert_eq!(
            parse_dev_mcast(text, "p0"),
            vec![
                MacAddr([0x33, 0x33, 0, 0, 0, 1]),
                MacAddr([0x03, 0x5b, 0, 0, 0, 7])
            ]
        );
        assert!(parse_dev_mcast(text, "p2").is_empty());
    }
}
