//! Backup masters: three `master serve` processes in a cluster (docs/master.md, "Backup
//! masters"), each on its own port of one namespace backplane and talking Raft over the
//! namespace's loopback. Writes made through any member reach every member; when the
//! serving master is killed (SIGKILL) another takes over with a higher epoch; the killed
//! one comes back as a follower and catches up; in the end every member's databases dump
//! the same. Network-namespace tier: `#[ignore]`d with the reason, run by `./dev test` as
//! root.

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Output, Stdio};
    use std::time::{Duration, Instant};

    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    use shelfboot_master::cluster::ClusterStatus;
    use shelfboot_master::store::Store;
    use shelfboot_master::store::sqlite::SqliteStore;
    use shelfboot_testkit::netns::{Lab, Netns};
    use shelfboot_testkit::tier::{self, Tier};

    const MASTER: &str = env!("CARGO_BIN_EXE_master");
    /// Bound on any wait for the cluster (elections take about a second).
    const WAIT: Duration = Duration::from_secs(20);

    /// Index of member `id` (ids count from 1).
    fn idx(id: u64) -> usize {
        usize::try_from(id).unwrap() - 1
    }

    struct Member {
        id: u64,
        state: PathBuf,
        child: Option<Child>,
    }

    impl Drop for Member {
        fn drop(&mut self) {
            if let Some(c) = &mut self.child {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    fn cli(state: &Path, args: &[&str]) -> Output {
        Command::new(MASTER)
            .arg("--state")
            .arg(state)
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(state: &Path, args: &[&str]) -> String {
        let out = cli(state, args);
        assert!(
            out.status.success(),
            "master {args:?} on {}: {}",
            state.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn status(state: &Path) -> Option<ClusterStatus> {
        let out = cli(state, &["--json", "cluster", "status"]);
        out.status
            .success()
            .then(|| serde_json::from_slice::<serde_json::Value>(&out.stdout).ok())
            .flatten()
            .and_then(|v| serde_json::from_value(v.get("data")?.clone()).ok())
    }

    fn start(lab: &Lab, m: &mut Member) {
        start_in(lab.netns(), &lab.port(idx(m.id)), m);
    }

    /// `master serve` of `m` on `iface` inside namespace `ns`.
    fn start_in(ns: &str, iface: &str, m: &mut Member) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(m.state.join("serve.log"))
            .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns, MASTER, "--state"])
            .arg(&m.state)
            .args(["serve", "--iface", iface])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        m.child = Some(child);
    }

    fn stop(m: &mut Member, signal: Signal) {
        if let Some(mut c) = m.child.take() {
            kill(Pid::from_raw(c.id().cast_signed()), signal).unwrap();
            let deadline = Instant::now() + WAIT;
            while c.try_wait().unwrap().is_none() {
                assert!(Instant::now() < deadline, "master {} did not stop", m.id);
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Waits for exactly one running member to serve (other than `not`); returns its id
    /// and status.
    fn serving(members: &[Member], not: Option<u64>) -> (u64, ClusterStatus) {
        let deadline = Instant::now() + WAIT;
        loop {
            let mut found: Vec<(u64, ClusterStatus)> = members
                .iter()
                .filter(|m| m.child.is_some())
                .filter_map(|m| status(&m.state).map(|s| (m.id, s)))
                .filter(|(_, s)| s.serving)
                .collect();
            assert!(found.len() <= 1, "two members serve at once: {found:#?}");
            if let Some((id, s)) = found.pop()
                && Some(id) != not
            {
                return (id, s);
            }
            assert!(
                Instant::now() < deadline,
                "no member serves after {WAIT:?}; logs: {}",
                logs(members)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn logs(members: &[Member]) -> String {
        members
            .iter()
            .map(|m| {
                format!(
                    "\n--- master {} ---\n{}",
                    m.id,
                    std::fs::read_to_string(m.state.join("serve.log")).unwrap_or_default()
                )
            })
            .collect()
    }

    /// Waits (bounded) until every member has applied the log as far as the others.
    fn converged(members: &[Member]) {
        let deadline = Instant::now() + WAIT;
        loop {
            let st: Vec<Option<ClusterStatus>> = members.iter().map(|m| status(&m.state)).collect();
            let applied: Vec<Option<u64>> = st
                .iter()
                .map(|s| s.as_ref().and_then(|s| s.applied_index))
                .collect();
            if applied.iter().all(|a| a.is_some() && *a == applied[0]) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "members did not converge: {st:#?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops every member (SIGTERM) and checks their databases dump the same, row for
    /// row, and hold `mac`.
    fn stop_and_compare(members: &mut [Member], mac: &str) {
        for m in members.iter_mut() {
            stop(m, Signal::SIGTERM);
        }
        let dumps: Vec<String> = members
            .iter()
            .map(|m| {
                SqliteStore::open(&m.state.join("master.db"))
                    .unwrap()
                    .dump()
                    .unwrap()
            })
            .collect();
        assert!(dumps[0].contains(mac), "{}", dumps[0]);
        for (m, d) in members.iter().zip(&dumps) {
            assert_eq!(d, &dumps[0], "master {} differs from master 1", m.id);
        }
    }

    fn add_node(state: &Path, n: u32) {
        let mac = format!("02:77:00:00:00:{n:02x}");
        ok(
            state,
            &[
                "node",
                "add",
                "--mac",
                &mac,
                "--type",
                "lc",
                "--arch",
                "x86_64",
                "--slot",
                &n.to_string(),
            ],
        );
    }

    fn macs(state: &Path) -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(&ok(state, &["--json", "nodes"])).unwrap();
        let mut m: Vec<String> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                n["node"]["identity"]["mac"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        m.sort();
        m
    }

    #[test]
    #[ignore = "tier: network namespaces (root, iproute2); ./dev test runs it"]
    fn writes_reach_every_master_and_a_backup_takes_over_when_the_serving_one_is_killed() {
        tier::require(&[Tier::Netns]);
        let tmp = tempfile::tempdir().unwrap();
        let lab = Lab::new("cluster-3", 3).unwrap();
        let addr = |i: u64| format!("127.0.0.1:{}", 7400 + i);
        let mut members: Vec<Member> = (1..=3)
            .map(|id| Member {
                id,
                state: tmp.path().join(format!("m{id}")),
                child: None,
            })
            .collect();
        init(&members, &addr);
        // Without a running serve, a member refuses to change its databases alone.
        let refused = cli(
            &members[0].state,
            &[
                "node",
                "add",
                "--mac",
                "02:77:00:00:00:99",
                "--type",
                "lc",
                "--arch",
                "x86_64",
                "--slot",
                "9",
            ],
        );
        assert!(!refused.status.success());
        assert!(
            String::from_utf8_lossy(&refused.stderr)
                .contains("only through a running `master serve`"),
            "{}",
            String::from_utf8_lossy(&refused.stderr)
        );
        for m in &mut members {
            start(&lab, m);
        }
        let (first, st1) = serving(&members, None);
        assert_eq!(st1.members.len(), 3, "{st1:#?}");

        // A write through each member, leader and followers alike.
        for (k, m) in members.iter().enumerate() {
            add_node(&m.state, u32::try_from(k).unwrap() + 1);
        }
        let want: Vec<String> = (1..=3).map(|n| format!("02:77:00:00:00:{n:02x}")).collect();
        for m in &members {
            assert_eq!(macs(&m.state), want, "master {}", m.id);
        }

        // A fleet order belongs to the serving master: a follower names it.
        let follower = members.iter().find(|m| m.id != first).unwrap();
        let refused = cli(&follower.state, &["warm-boot"]);
        let err = String::from_utf8_lossy(&refused.stderr);
        assert!(
            !refused.status.success()
                && err.contains(&format!("the serving master is member {first}")),
            "{err}"
        );

        // An import through a follower: before it returns, every master holds the release
        // and its blobs.
        let dir = tmp.path().join("release");
        std::fs::create_dir_all(dir.join("files")).unwrap();
        let kernel: Vec<u8> = (0..300_000u32)
            .map(|i| (i * 7 + i / 251).to_le_bytes()[0])
            .collect();
        let base: Vec<u8> = (0..2_500_000u32)
            .map(|i| (i * 13 + i / 509).to_le_bytes()[0])
            .collect();
        std::fs::write(dir.join("files/kernel.img"), &kernel).unwrap();
        std::fs::write(dir.join("files/base.sqfs"), &base).unwrap();
        std::fs::write(
            dir.join("system.toml"),
            "[release]\nname = \"shelf-os\"\nversion = \"1.0.0\"\n\n\
             [[boot]]\nname = \"lc-kernel\"\nversion = \"6.1.0\"\ncard_type = \"lc\"\n\
             arch = \"x86_64\"\nimage = \"files/kernel.img\"\ncmdline = \"console=ttyS0\"\n\n\
             [[package]]\nname = \"base\"\nversion = \"1.0.0\"\narch = \"x86_64\"\n\
             file = \"files/base.sqfs\"\nprovides = []\ndepends = {}\n\n\
             [[class]]\nname = \"linecards\"\nmatch = { card_types = [\"lc\"] }\n\
             boot = \"lc-kernel\"\npackages = {}\n\n[defaults]\npackages = { base = \"^1\" }\n",
        )
        .unwrap();
        let vendor = dir.join("vendor");
        let vendor_s = vendor.to_str().unwrap();
        ok(&follower.state, &["keygen", "--out", vendor_s]);
        ok(
            &follower.state,
            &["trust", "add", &format!("{vendor_s}.pub")],
        );
        let image = dir.join("release.img");
        ok(
            &follower.state,
            &[
                "pack",
                dir.join("system.toml").to_str().unwrap(),
                "--key",
                &format!("{vendor_s}.key"),
                "--out",
                image.to_str().unwrap(),
            ],
        );
        ok(&follower.state, &["import", image.to_str().unwrap()]);
        let digests: Vec<String> = [&kernel, &base]
            .iter()
            .map(|b| {
                use sha2::Digest as _;
                hex::encode(sha2::Sha256::digest(b))
            })
            .collect();
        // Every member says it holds every blob, as any member reports them.
        let all = status(&follower.state).unwrap();
        for m in &all.members {
            let r = m.reported.as_ref().expect("every member answers");
            assert_eq!(r.missing_blobs, 0, "{all:#?}");
        }
        for m in &members {
            assert!(
                ok(&m.state, &["releases"]).contains("shelf-os"),
                "master {} lists the release",
                m.id
            );
            for d in &digests {
                let path = m.state.join("blobs/sha256").join(&d[..2]).join(&d[2..]);
                assert!(path.is_file(), "master {} holds blob {d}", m.id);
            }
        }

        // Kill the serving master: another takes over with a higher epoch.
        let t0 = Instant::now();
        stop(&mut members[idx(first)], Signal::SIGKILL);
        let (second, st2) = serving(&members, Some(first));
        eprintln!(
            "master {first} killed; master {second} serves after {:?} (epoch {} -> {})",
            t0.elapsed(),
            st1.epoch,
            st2.epoch
        );
        assert!(st2.epoch > st1.epoch, "{st1:#?} {st2:#?}");

        // Two of three still make a quorum: writes go on, through both.
        for (k, m) in members.iter().filter(|m| m.child.is_some()).enumerate() {
            add_node(&m.state, 10 + u32::try_from(k).unwrap());
        }

        // The killed master comes back as a follower and catches up; one master serves.
        start(&lab, &mut members[idx(first)]);
        converged(&members);
        let (third, _) = serving(&members, None);
        assert_eq!(third, second, "the returning master does not take over");
        let back = status(&members[idx(first)].state).unwrap();
        assert!(!back.serving && back.role == "follower", "{back:#?}");

        // Stopped cleanly, every member's databases are the same, row for row.
        stop_and_compare(&mut members, "02:77:00:00:00:0b");
    }

    fn init(members: &[Member], addr: &dyn Fn(u64) -> String) {
        for m in members {
            let mut args = vec!["cluster".to_owned(), "init".into(), "--id".into()];
            args.push(m.id.to_string());
            args.extend(["--listen".into(), addr(m.id)]);
            for i in 1..=3 {
                args.extend(["--member".into(), format!("{i}={}", addr(i))]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            ok(&m.state, &args);
        }
    }

    /// The nftables table that cuts a member off: IP and ARP frames to and from its
    /// bridge port are dropped, backplane frames (EtherType 0x88B5) pass.
    fn partition(lab: &Lab, port: &str, on: bool) {
        let script = if on {
            format!(
                "table bridge sb_partition {{\n chain cut {{\n type filter hook forward priority 0; policy accept;\n \
                 iifname \"{port}\" ether type {{ ip, arp }} counter drop\n \
                 oifname \"{port}\" ether type {{ ip, arp }} counter drop\n }}\n}}\n"
            )
        } else {
            "delete table bridge sb_partition\n".to_owned()
        };
        let mut nft = Command::new("ip")
            .args(["netns", "exec", lab.netns(), "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        nft.stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        assert!(nft.wait().unwrap().success(), "nft {script}");
    }

    #[test]
    #[ignore = "tier: network namespaces (root, iproute2, nftables); ./dev test runs it"]
    fn a_serving_master_cut_off_from_the_others_stops_and_the_majority_takes_over() {
        tier::require(&[Tier::Netns]);
        let tmp = tempfile::tempdir().unwrap();
        // Each master in a namespace of its own, its port on the lab's bridge: Raft
        // between them crosses the bridge, where the partition is made.
        let lab = Lab::new("cl-part", 3).unwrap();
        let nss: Vec<Netns> = (0..3)
            .map(|i| Netns::new(&format!("clm{i}")).unwrap())
            .collect();
        for (i, ns) in nss.iter().enumerate() {
            let st = Command::new("ip")
                .args([
                    "-n",
                    lab.netns(),
                    "link",
                    "set",
                    &lab.port(i),
                    "netns",
                    ns.name(),
                ])
                .status()
                .unwrap();
            assert!(st.success());
            ns.ip_batch(&format!(
                "link set {p} up\naddr add 10.77.0.{n}/24 dev {p}\n",
                p = lab.port(i),
                n = i + 1
            ))
            .unwrap();
        }
        let addr = |i: u64| format!("10.77.0.{i}:7400");
        let mut members: Vec<Member> = (1..=3)
            .map(|id| Member {
                id,
                state: tmp.path().join(format!("m{id}")),
                child: None,
            })
            .collect();
        init(&members, &addr);
        for m in &mut members {
            let i = idx(m.id);
            start_in(nss[i].name(), &lab.port(i), m);
        }
        let (first, st1) = serving(&members, None);
        // Settled: every member sees three voters.
        let deadline = Instant::now() + WAIT;
        while !members.iter().all(|m| {
            status(&m.state).is_some_and(|s| s.members.iter().filter(|x| x.voter).count() == 3)
        }) {
            assert!(
                Instant::now() < deadline,
                "cluster not made: {}",
                logs(&members)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        add_node(&members[0].state, 1);

        // Cut the serving master off from the others (not from the backplane).
        let cut = lab.bridge_port(idx(first));
        partition(&lab, &cut, true);
        let t0 = Instant::now();
        let (second, st2) = serving(&members, Some(first));
        eprintln!(
            "master {first} cut off; master {second} serves after {:?} (epoch {} -> {})",
            t0.elapsed(),
            st1.epoch,
            st2.epoch
        );
        assert!(st2.epoch > st1.epoch);
        let old = status(&members[idx(first)].state).unwrap();
        assert!(!old.serving, "the cut-off master stopped serving: {old:#?}");
        // The majority side goes on writing.
        for m in members.iter().filter(|m| m.id != first) {
            add_node(&m.state, 20 + u32::try_from(m.id).unwrap());
        }

        // Healed: one master serves, the cut-off one catches up.
        partition(&lab, &cut, false);
        converged(&members);
        let (now, _) = serving(&members, None);
        eprintln!("healed: master {now} serves");
        stop_and_compare(&mut members, "02:77:00:00:00:16");
    }
}
