//! Backup masters with cards: three `master serve` processes in a cluster on one namespace
//! backplane (Raft over the namespace's loopback), sixteen simulated cards burning a
//! release. The serving master is killed (SIGKILL) in the middle of the burn: another takes
//! over with a higher epoch, every card ends with every artifact verified, no card writes
//! again what it had staged (beyond the partly written block it stood at), no card is
//! reset. The first master is a master that ran alone until now (the fixture's state
//! directory, release imported): the cluster starts from its databases, and the others
//! receive them and its blobs. Network-namespace tier: `#[ignore]`d with the reason, run by
//! `./dev test` as root.

mod conv;

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    use std::time::{Duration, Instant};

    use super::conv::{Fixture, assert_all_fetched, init_log, serial, spawn_cards};
    use shelfboot_master::cluster::ClusterStatus;
    use shelfboot_master::serve::ServeStats;
    use shelfboot_master::state::Master;
    use shelfboot_testkit::netns::Lab;
    use shelfboot_testkit::tier::{self, Tier};

    const UNIT: usize = 512 * 1024;
    const CARDS: usize = 16;
    /// Bound on any wait for the cluster.
    const WAIT: Duration = Duration::from_secs(30);

    /// The `master` binary: `SHELFBOOT_MASTER_BIN`, else built with cargo (debug).
    fn master_bin() -> PathBuf {
        if let Ok(p) = std::env::var("SHELFBOOT_MASTER_BIN") {
            return p.into();
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = Command::new(cargo)
            .args(["build", "-q", "-p", "shelfboot-master", "--bin", "master"])
            .status()
            .unwrap();
        assert!(st.success(), "cargo build -p shelfboot-master --bin master");
        let target = std::env::var("CARGO_TARGET_DIR").map_or_else(
            |_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
            PathBuf::from,
        );
        target.join("debug/master")
    }

    /// Index of member `id` (ids count from 1).
    fn idx(id: u64) -> usize {
        usize::try_from(id).unwrap() - 1
    }

    struct Member {
        id: u64,
        state: PathBuf,
        log: PathBuf,
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

    fn cli(bin: &Path, state: &Path, args: &[&str]) -> std::process::Output {
        Command::new(bin)
            .arg("--state")
            .arg(state)
            .args(args)
            .output()
            .unwrap()
    }

    fn status(bin: &Path, state: &Path) -> Option<ClusterStatus> {
        let out = cli(bin, state, &["--json", "cluster", "status"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        serde_json::from_value(v.get("data")?.clone()).ok()
    }

    fn serving(bin: &Path, members: &[Member], not: Option<u64>) -> (u64, ClusterStatus) {
        let deadline = Instant::now() + WAIT;
        loop {
            let found: Vec<(u64, ClusterStatus)> = members
                .iter()
                .filter(|m| m.child.is_some())
                .filter_map(|m| status(bin, &m.state).map(|s| (m.id, s)))
                .filter(|(_, s)| s.serving)
                .collect();
            assert!(found.len() <= 1, "two members serve at once: {found:#?}");
            if let Some((id, s)) = found.into_iter().next()
                && Some(id) != not
            {
                return (id, s);
            }
            assert!(
                Instant::now() < deadline,
                "no member serves; {}",
                logs(members)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn logs(members: &[Member]) -> String {
        members
            .iter()
            .map(|m| {
                let log = std::fs::read_to_string(&m.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                format!(
                    "\n--- master {} (last lines) ---\n{}",
                    m.id,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect()
    }

    fn stats(state: &Path) -> Option<ServeStats> {
        serde_json::from_slice(&std::fs::read(state.join("serve-stats.json")).ok()?).ok()
    }

    #[test]
    #[ignore = "tier: network namespaces (root, iproute2); ./dev test runs it"]
    fn the_serving_master_killed_mid_burn_another_takes_over_and_every_card_completes() {
        tier::require(&[Tier::Netns]);
        let _serial = serial();
        init_log();
        let bin = master_bin();
        let tmp = tempfile::tempdir().unwrap();
        let fx = Fixture::new(tmp.path(), UNIT);
        let lab = Lab::new("failover", 4).unwrap();
        let addr = |i: u64| format!("127.0.0.1:{}", 7410 + i);
        let mut members: Vec<Member> = (1..=3)
            .map(|id| Member {
                id,
                state: if id == 1 {
                    fx.state.clone()
                } else {
                    tmp.path().join(format!("m{id}"))
                },
                log: tmp.path().join(format!("serve-{id}.log")),
                child: None,
            })
            .collect();
        for m in &members {
            let mut args: Vec<String> = vec!["cluster".into(), "init".into(), "--id".into()];
            args.push(m.id.to_string());
            args.extend(["--listen".into(), addr(m.id)]);
            for i in 1..=3 {
                args.extend(["--member".into(), format!("{i}={}", addr(i))]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = cli(&bin, &m.state, &args);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // Every master signs with the fixture's plan key, the one the cards trust.
        let key = fx.state.join("plan.key");
        for m in &mut members {
            let log = std::fs::File::create(&m.log).unwrap();
            let child = Command::new("ip")
                .args(["netns", "exec", lab.netns()])
                .arg(&bin)
                .arg("--state")
                .arg(&m.state)
                .args([
                    "serve",
                    "--iface",
                    &lab.port(idx(m.id)),
                    "--max-rate-mbs",
                    "6",
                ])
                .arg("--key")
                .arg(&key)
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap();
            m.child = Some(child);
        }
        // The cluster is made from master 1's databases; the others receive them and
        // fetch the blobs before they count as complete.
        let deadline = Instant::now() + WAIT;
        loop {
            let st: Vec<Option<ClusterStatus>> =
                members.iter().map(|m| status(&bin, &m.state)).collect();
            let ready = st.iter().all(|s| {
                s.as_ref().is_some_and(|s| {
                    s.members.iter().filter(|m| m.voter).count() == 3
                        && s.missing_blobs == 0
                        && s.applied_index.is_some()
                })
            });
            if ready {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "cluster not made: {st:#?} {}",
                logs(&members)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        for m in &members[1..] {
            let out = cli(&bin, &m.state, &["--json", "releases"]);
            assert!(
                String::from_utf8_lossy(&out.stdout).contains("shelf-os"),
                "master {} has the release: {}",
                m.id,
                String::from_utf8_lossy(&out.stdout)
            );
        }
        let (first, st1) = serving(&bin, &members, None);

        let cards = fx.cards(CARDS);
        let (reports, took) = std::thread::scope(|s| {
            let c = spawn_cards(
                s,
                &lab,
                fx.sim_config(&lab.port(3), cards.clone(), Duration::from_secs(150)),
                Arc::new(AtomicBool::new(false)),
            );
            // Kill the serving master once the burn is well under way.
            let leader = &members[idx(first)].state;
            let deadline = Instant::now() + WAIT;
            while stats(leader).is_none_or(|s| s.artifact_bytes < 4 * UNIT as u64) {
                assert!(Instant::now() < deadline, "the burn did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
            let t0 = Instant::now();
            {
                let m = &mut members[idx(first)];
                if let Some(mut c) = m.child.take() {
                    c.kill().unwrap();
                    c.wait().unwrap();
                }
            }
            let (second, st2) = serving(&bin, &members, Some(first));
            let took = t0.elapsed();
            eprintln!(
                "master {first} killed mid-burn; master {second} serves after {took:?} (epoch {} -> {})",
                st1.epoch, st2.epoch
            );
            assert!(st2.epoch > st1.epoch);
            (c.join().unwrap(), took)
        });
        eprintln!("takeover in {took:?}");
        // Stopped with SIGTERM, each within the bound (a master must not hang on a write
        // its lost quorum cannot commit).
        for m in &mut members {
            if let Some(mut c) = m.child.take() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(c.id().cast_signed()),
                    nix::sys::signal::Signal::SIGTERM,
                );
                let deadline = Instant::now() + WAIT;
                while c.try_wait().unwrap().is_none() {
                    if Instant::now() >= deadline {
                        let _ = c.kill();
                        let _ = c.wait();
                        panic!("master {} did not stop on SIGTERM within {WAIT:?}", m.id);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        assert_all_fetched(&reports);
        let m = Master::open(&fx.state).unwrap();
        for (card, r) in cards.iter().zip(&reports) {
            assert_eq!(fx.check_card(card), 3);
            let plan_bytes: u64 = m
                .plan(&card.mac)
                .unwrap()
                .artifact_refs()
                .iter()
                .map(|a| a.size)
                .sum();
            // What was staged stays staged: at most the block each artifact stood at is
            // written again.
            assert!(
                r.counters.bytes_written <= plan_bytes + 3 * 64 * 1024,
                "card {} wrote {} bytes for a plan of {plan_bytes}",
                r.mac,
                r.counters.bytes_written
            );
            assert_eq!(r.counters.commands, 0, "card {} was ordered: {r:?}", r.mac);
        }
        assert!(
            reports.iter().any(|r| r.counters.epoch_changes > 0),
            "some card followed the new master: {reports:#?}"
        );
    }
}
