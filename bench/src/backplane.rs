//! The benchmark backplane: one namespace holding a bridge, one namespace for the master
//! and one per card, each joined to the bridge by a veth pair, with IPv4 addresses (the
//! IP peers need them) and a multicast-capable default route. The master's port can be
//! tbf-shaped and the bridge can drop a percentage of all frames (nftables).
//!
//! ```text
//!  ns <p>-m : eth0 10.77.0.1 (tbf) ==veth== m  --+
//!  ns <p>-c1: eth0 10.77.1.1       ==veth== c1 --+-- br0  (ns <p>-br, nft loss)
//!  ns <p>-cN: eth0 10.77.1.N       ==veth== cN --+
//! ```
//!
//! Unlike `netio::lab::Lab` (one namespace, all ports in it), every endpoint has its own
//! namespace, so IP traffic really crosses the veths and the bridge instead of being
//! short-cut by the local routing table. Everything is deleted on drop. It does not
//! start any server; see `peers`.

use std::process::Command;

use shelfboot_netio::lab::Tbf;

/// Failures while building or changing the backplane.
#[derive(Debug, thiserror::Error)]
pub enum BackplaneError {
    #[error("running `{cmd}`; is iproute2/nftables installed and are we root?")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{cmd}` failed: {stderr}")]
    Failed { cmd: String, stderr: String },
}

/// Runs `argv`, returns stdout; feeds `stdin` if given.
pub fn run(argv: &[&str], stdin: Option<&str>) -> Result<String, BackplaneError> {
    use std::io::Write as _;
    let cmd = argv.join(" ");
    let spawn = |source| BackplaneError::Spawn {
        cmd: cmd.clone(),
        source,
    };
    let (prog, rest) = argv.split_first().unwrap_or((&"true", &[]));
    let mut c = Command::new(prog);
    c.args(rest)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().map_err(spawn)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).map_err(spawn)?;
    }
    let out = child.wait_with_output().map_err(spawn)?;
    if !out.status.success() {
        return Err(BackplaneError::Failed {
            cmd,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The backplane; deleted on drop.
#[derive(Debug)]
pub struct Backplane {
    prefix: String,
    cards: usize,
}

impl Backplane {
    /// Builds the namespaces for a master and `cards` cards (1..=200).
    pub fn new(cards: usize) -> Result<Backplane, BackplaneError> {
        let prefix = format!("sbb{}", std::process::id());
        let bp = Backplane { prefix, cards };
        // Namespaces first, so that Drop can clean up whatever exists.
        run(&["ip", "netns", "add", &bp.bridge_ns()], None)?;
        run(&["ip", "netns", "add", &bp.master_ns()], None)?;
        for i in 1..=cards {
            run(&["ip", "netns", "add", &bp.card_ns(i)], None)?;
        }
        let br = bp.bridge_ns();
        run(
            &["ip", "-n", &br, "-batch", "-"],
            Some(
                "link add br0 type bridge stp_state 0 forward_delay 0 mcast_snooping 0\n\
                 link set dev br0 up\nlink set dev lo up\n",
            ),
        )?;
        let mut ends = vec![(
            "pm".to_owned(),
            bp.master_ns(),
            "02:5b:00:00:00:01".to_owned(),
        )];
        for i in 1..=cards {
            ends.push((format!("pc{i}"), bp.card_ns(i), Self::card_mac(i)));
        }
        for (k, (port, ns, mac)) in ends.iter().enumerate() {
            let ip = if k == 0 {
                "10.77.0.1/16".to_owned()
            } else {
                format!("10.77.1.{k}/16")
            };
            // Made inside the endpoint's namespace, then the bridge end moved out.
            let b = format!(
                "link set dev lo up\nlink add name eth0 address {mac} type veth peer name {port}\n\
                 link set dev {port} netns {br}\nlink set dev eth0 up\naddress add {ip} dev eth0\n\
                 route add default dev eth0\n"
            );
            run(&["ip", "-n", ns, "-batch", "-"], Some(&b))?;
            run(
                &[
                    "ip", "-n", &br, "link", "set", "dev", port, "master", "br0", "up",
                ],
                None,
            )?;
            run(
                &[
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    "sysctl",
                    "-qw",
                    "net.ipv6.conf.all.disable_ipv6=1",
                ],
                None,
            )?;
        }
        Ok(bp)
    }

    /// Number of card namespaces.
    pub fn cards(&self) -> usize {
        self.cards
    }

    pub fn bridge_ns(&self) -> String {
        format!("{}-br", self.prefix)
    }

    pub fn master_ns(&self) -> String {
        format!("{}-m", self.prefix)
    }

    /// Namespace of card `i` (1-based).
    pub fn card_ns(&self, i: usize) -> String {
        format!("{}-c{i}", self.prefix)
    }

    /// MAC of card `i`'s eth0.
    pub fn card_mac(i: usize) -> String {
        format!("02:5c:00:00:{:02x}:{:02x}", (i >> 8) & 0xff, i & 0xff)
    }

    /// IPv4 address of card `i`.
    pub fn card_ip(i: usize) -> String {
        format!("10.77.1.{i}")
    }

    /// Shapes the master's egress with tbf, or removes the shaper (`None`).
    pub fn shape_master(&self, tbf: Option<Tbf>) -> Result<(), BackplaneError> {
        let ns = self.master_ns();
        match tbf {
            Some(t) => {
                let rate = t.rate_bits_per_sec.to_string();
                let burst = t.burst_bytes.to_string();
                let lat = format!("{}ms", t.latency.as_millis());
                run(
                    &[
                        "ip", "netns", "exec", &ns, "tc", "qdisc", "replace", "dev", "eth0",
                        "root", "tbf", "rate", &rate, "burst", &burst, "latency", &lat,
                    ],
                    None,
                )?;
            }
            None => {
                // Absent qdisc is fine.
                let _ = run(
                    &[
                        "ip", "netns", "exec", &ns, "tc", "qdisc", "del", "dev", "eth0", "root",
                    ],
                    None,
                );
            }
        }
        Ok(())
    }

    /// Drops `percent` % of every frame the bridge forwards (0 removes the rule).
    pub fn set_loss(&self, percent: u8) -> Result<(), BackplaneError> {
        let ns = self.bridge_ns();
        let _ = run(
            &[
                "ip", "netns", "exec", &ns, "nft", "delete", "table", "bridge", "sbbloss",
            ],
            None,
        );
        if percent > 0 {
            let rules = format!(
                "table bridge sbbloss {{\n chain drop_some {{\n  type filter hook forward priority 0; \
                 policy accept;\n  numgen random mod 100 < {percent} counter drop\n }}\n}}\n"
            );
            run(
                &["ip", "netns", "exec", &ns, "nft", "-f", "-"],
                Some(&rules),
            )?;
        }
        Ok(())
    }

    /// Bytes the master's eth0 has sent so far (all protocols, with headers).
    pub fn master_tx_bytes(&self) -> Result<u64, BackplaneError> {
        let out = run(
            &[
                "ip",
                "-n",
                &self.master_ns(),
                "-s",
                "-j",
                "link",
                "show",
                "dev",
                "eth0",
            ],
            None,
        )?;
        let v: serde_json::Value =
            serde_json::from_str(&out).map_err(|e| BackplaneError::Failed {
                cmd: "ip -s -j link show dev eth0".into(),
                stderr: format!("unparsable JSON: {e}"),
            })?;
        v.pointer("/0/stats64/tx/bytes")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| BackplaneError::Failed {
                cmd: "ip -s -j link show dev eth0".into(),
                stderr: "no stats64.tx.bytes in the output".into(),
            })
    }
}

impl Drop for Backplane {
    fn drop(&mut self) {
        let mut names = vec![self.bridge_ns(), self.master_ns()];
        names.extend((1..=self.cards).map(|i| self.card_ns(i)));
        for ns in names {
            if let Err(e) = run(&["ip", "netns", "del", &ns], None) {
                log::error!("backplane teardown: {e}; remove it with `ip netns del {ns}`");
            }
        }
    }
}
