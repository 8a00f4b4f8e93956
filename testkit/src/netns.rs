//! The network-namespace fixture: a throwaway namespace ([`Netns`]) and the common
//! topology of one namespace with a bridge and N veth ports ([`Lab`]). Built by shelling
//! out to `ip`, `tc` and `nft` (iproute2, nftables); needs root.
//!
//! ```text
//!   Lab: netns sb-<purpose>-<pid>-<n>-<t>
//!   +--------------------------------------------------+
//!   |  p0 ==veth== p0b --+                              |
//!   |  p1 ==veth== p1b --+-- br0   (nft: bridge forward |
//!   |  ...               |          numgen loss rule)   |
//!   |  pN ==veth== pNb --+                              |
//!   +--------------------------------------------------+
//! ```
//!
//! A [`Netns`] owns one namespace: it runs commands inside it ([`Netns::command`],
//! [`Netns::exec`], [`Netns::ip_batch`]), moves a dedicated thread into it
//! ([`Netns::run`], [`Netns::enter`]) so that sockets opened there live in it, shapes a
//! device with tbf, drops a percentage of what a bridge forwards (nftables bridge family)
//! and reads interface counters. Deleting the namespace on drop (also while a failing test
//! unwinds) removes every bridge, veth, tap, qdisc and rule inside it; no traffic ever
//! leaves it. Names carry the pid, a per-process counter and a time stamp, so concurrent
//! tests and processes never collide.
//!
//! Topologies other than [`Lab`] are built from [`Netns`] where they are used: the QEMU
//! lab's backplane (`shelfboot_qemu::backplane`: a master veth and one tap per card VM)
//! and the benchmark's (`shelfboot_bench::backplane`: one namespace per endpoint, with IP
//! addresses). Not here: IP addresses or routes for [`Lab`] (none are needed), rootless
//! operation.

use std::fs::File;
use std::io::Write;
use std::ops::Deref;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use nix::sched::{CloneFlags, setns};
use shelfboot_netio::MacAddr;

/// Failures building or using a namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("could not start `{cmd}` (is iproute2/nftables installed, and are we root?)")]
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
    #[error("loss of {percent}% is not a percentage")]
    BadLoss { percent: u8 },
    #[error("counter {name} of {ifname} in {netns} reads {value:?}, not a number")]
    Counter {
        netns: String,
        ifname: String,
        name: String,
        value: String,
    },
}

type Result<T> = std::result::Result<T, NetnsError>;

/// `tc qdisc ... tbf` parameters for one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tbf {
    pub rate_bits_per_sec: u64,
    pub burst_bytes: u32,
    pub latency: Duration,
}

impl Tbf {
    /// 1 Gbit/s with a 256 KiB bucket (2 ms at line rate; 64 KiB measured ~25% short of
    /// the rate here) and 20 ms of queue: the "master link" of the benchmarks.
    pub const GIGABIT: Tbf = Tbf {
        rate_bits_per_sec: 1_000_000_000,
        burst_bytes: 256 << 10,
        latency: Duration::from_millis(20),
    };
}

/// The nftables table (bridge family) that holds the loss rule.
const LOSS_TABLE: &str = "sbloss";

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

/// Runs `cmd` (feeding `stdin` if given) and returns its output; a non-zero exit is an
/// error carrying the command line and its stderr.
pub fn run_cmd(mut cmd: Command, stdin: Option<&str>) -> Result<Output> {
    let desc = describe(&cmd);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let spawn = |source| NetnsError::Spawn {
        cmd: desc.clone(),
        source,
    };
    let mut child = cmd.spawn().map_err(spawn)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).map_err(spawn)?;
    }
    let out = child.wait_with_output().map_err(spawn)?;
    if !out.status.success() {
        return Err(NetnsError::Command {
            cmd: desc,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(out)
}

/// The nft script that replaces the loss rule on the bridge-family forward hook: drop
/// `percent`% (all at 100) of the frames forwarded, only those of `ethertype` if given;
/// 0 only removes an earlier rule.
fn loss_script(percent: u8, ethertype: Option<u16>) -> String {
    // "add" then "delete" removes the table whether or not it existed.
    let mut script = format!("add table bridge {LOSS_TABLE}\ndelete table bridge {LOSS_TABLE}\n");
    if percent > 0 {
        let matcher = ethertype.map_or(String::new(), |t| format!("ether type {t:#06x} "));
        // numgen yields 0..=99, so "< N" drops N%; at 100 every matching frame goes.
        let sample = if percent < 100 {
            format!("numgen random mod 100 < {percent} ")
        } else {
            String::new()
        };
        script.push_str(&format!(
            "table bridge {LOSS_TABLE} {{\n  chain forward {{\n    \
             type filter hook forward priority 0; policy accept;\n    \
             {matcher}{sample}counter drop\n  }}\n}}\n"
        ));
    }
    script
}

/// A network namespace; deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates namespace `sb-<purpose>-...` with `lo` up and IPv6 off (best effort), so
    /// that no stray neighbour discovery runs.
    pub fn new(purpose: &str) -> Result<Netns> {
        let name = unique_name(purpose);
        let mut add = Command::new("ip");
        add.args(["netns", "add", &name]);
        run_cmd(add, None)?;
        // From here on, Drop deletes the namespace whatever fails next.
        let ns = Netns { name };
        if let Err(e) = ns.exec(&[
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ]) {
            log::debug!("netns {}: IPv6 left on: {e}", ns.name);
        }
        ns.ip_batch("link set lo up\n")?;
        Ok(ns)
    }

    /// The namespace's name (as `ip netns` knows it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> -batch -` with `batch` (one `ip` command per line) on stdin.
    pub fn ip_batch(&self, batch: &str) -> Result<()> {
        let mut ip = Command::new("ip");
        ip.args(["-n", &self.name, "-batch", "-"]);
        run_cmd(ip, Some(batch)).map(drop)
    }

    /// Adds bridge `name`, up, STP off and no forward delay; `multicast_snooping` false
    /// floods every multicast frame to every port.
    pub fn add_bridge(&self, name: &str, multicast_snooping: bool) -> Result<()> {
        let snoop = u8::from(multicast_snooping);
        self.ip_batch(&format!(
            "link add {name} type bridge stp_state 0 forward_delay 0 mcast_snooping {snoop}\n\
             link set {name} up\n"
        ))
    }

    /// `ip netns exec <ns> <program>`: a process inside the namespace (add args, then
    /// spawn). Wait for or kill what you spawn before the namespace drops: a namespace
    /// lives on while a process is still inside it.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `argv` inside the namespace and returns its stdout.
    pub fn exec(&self, argv: &[&str]) -> Result<String> {
        let (first, rest) = argv.split_first().ok_or_else(|| NetnsError::Spawn {
            cmd: String::new(),
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        })?;
        let mut c = self.command(first);
        c.args(rest);
        let out = run_cmd(c, None)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Shapes the egress of `dev` with a tbf qdisc, replacing any root qdisc; `None`
    /// removes the root qdisc (no error if there was none). A socket with
    /// PACKET_QDISC_BYPASS skips the shaper.
    pub fn shape(&self, dev: &str, tbf: Option<Tbf>) -> Result<()> {
        let mut tc = Command::new("tc");
        tc.args(["-n", &self.name, "qdisc"]);
        let Some(tbf) = tbf else {
            tc.args(["del", "dev", dev, "root"]);
            if let Err(e) = run_cmd(tc, None) {
                log::debug!("netns {}: no root qdisc on {dev} to remove: {e}", self.name);
            }
            return Ok(());
        };
        tc.args(["replace", "dev", dev, "root", "tbf"]);
        tc.arg("rate").arg(format!("{}bit", tbf.rate_bits_per_sec));
        tc.arg("burst").arg(tbf.burst_bytes.to_string());
        tc.arg("latency")
            .arg(format!("{}us", tbf.latency.as_micros()));
        run_cmd(tc, None).map(drop)
    }

    /// Drops `percent`% of the frames the namespace's bridges forward (nftables bridge
    /// family, `numgen random mod 100 < N drop`; every frame at 100), only those of
    /// `ethertype` if given. Replaces an earlier rule; 0 removes it.
    pub fn set_loss(&self, percent: u8, ethertype: Option<u16>) -> Result<()> {
        if percent > 100 {
            return Err(NetnsError::BadLoss { percent });
        }
        let mut nft = self.command("nft");
        nft.args(["-f", "-"]);
        run_cmd(nft, Some(&loss_script(percent, ethertype))).map(drop)
    }

    /// Frames the loss rule has dropped so far (0 if there is no rule).
    pub fn loss_dropped(&self) -> Result<u64> {
        let out = match self.exec(&["nft", "list", "table", "bridge", LOSS_TABLE]) {
            Ok(o) => o,
            Err(NetnsError::Command { .. }) => return Ok(0),
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

    /// An interface counter (`/sys/class/net/IF/statistics/NAME`, e.g. `tx_bytes`).
    pub fn counter(&self, ifname: &str, name: &str) -> Result<u64> {
        let out = self.exec(&["cat", &format!("/sys/class/net/{ifname}/statistics/{name}")])?;
        out.trim().parse().map_err(|_| NetnsError::Counter {
            netns: self.name.clone(),
            ifname: ifname.to_owned(),
            name: name.to_owned(),
            value: out.trim().to_owned(),
        })
    }

    /// Moves the *calling thread* into the namespace. Only call this on a thread created
    /// for the purpose (it never returns to the original namespace); sockets it opens
    /// afterwards live in the namespace.
    pub fn enter(&self) -> Result<()> {
        let path = format!("/run/netns/{}", self.name);
        let f = File::open(&path).map_err(|source| NetnsError::OpenNetns {
            netns: self.name.clone(),
            source,
        })?;
        setns(&f, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Setns {
            netns: self.name.clone(),
            source,
        })
    }

    /// Runs `f` on a dedicated thread inside the namespace and returns its result. A panic
    /// in `f` is resumed on the caller's thread (and the namespace still goes on drop).
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

impl Drop for Netns {
    fn drop(&mut self) {
        let mut del = Command::new("ip");
        del.args(["netns", "del", &self.name]);
        if let Err(e) = run_cmd(del, None) {
            log::error!(
                "netns teardown: {e}; remove it with `ip netns del {}`",
                self.name
            );
        }
    }
}

/// One namespace with bridge `br0` and `ports` veth pairs `pI`/`pIb` (the `b` end in the
/// bridge), all up. Everything [`Netns`] offers works on a lab directly.
#[derive(Debug)]
pub struct Lab {
    ns: Netns,
    ports: usize,
}

impl Lab {
    /// Creates the namespace, the bridge and the ports; port `i` gets MAC
    /// [`Lab::port_mac`]`(i)`.
    pub fn new(purpose: &str, ports: usize) -> Result<Lab> {
        let ns = Netns::new(purpose)?;
        ns.add_bridge("br0", true)?;
        let mut batch = String::new();
        for i in 0..ports {
            let mac = Self::port_mac(i);
            batch.push_str(&format!(
                "link add p{i} address {mac} type veth peer name p{i}b\n\
                 link set p{i}b master br0\nlink set p{i}b up\nlink set p{i} up\n"
            ));
        }
        ns.ip_batch(&batch)?;
        Ok(Lab { ns, ports })
    }

    /// The namespace's name (as `ip netns` knows it).
    pub fn netns(&self) -> &str {
        self.ns.name()
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

    /// Shapes what port `i` sends into the bridge (egress of `pI`).
    pub fn shape_port(&self, port: usize, tbf: Tbf) -> Result<()> {
        if port >= self.ports {
            return Err(NetnsError::NoPort {
                netns: self.netns().to_owned(),
                port,
                ports: self.ports,
            });
        }
        self.ns.shape(&self.port(port), Some(tbf))
    }
}

impl Deref for Lab {
    type Target = Netns;

    fn deref(&self) -> &Netns {
        &self.ns
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
    fn loss_scripts_sample_match_or_remove() {
        let off = loss_script(0, None);
        assert_eq!(off, "add table bridge sbloss\ndelete table bridge sbloss\n");
        let some = loss_script(10, Some(0x88b5));
        assert!(some.starts_with(&off));
        assert!(
            some.contains("ether type 0x88b5 numgen random mod 100 < 10 counter drop"),
            "{some}"
        );
        let all = loss_script(100, None);
        assert!(all.contains("policy accept;\n    counter drop\n"), "{all}");
        assert!(!all.contains("numgen"));
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
