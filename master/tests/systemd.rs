//! The `master` binary as a service: its systemd unit passes `systemd-analyze verify`,
//! `master serve` tells a `NOTIFY_SOCKET` when it is ready, feeds the watchdog and says
//! when it stops on SIGTERM (leaving the state free and its stats written), and the
//! configuration file chooses the state directory unless `--state` does.
//!
//! The unit and notification tests are tier tests (`#[ignore]`d with the reason; `./dev
//! test` runs them as root): the notification test serves a veth in a namespace of its
//! own, the unit test needs `systemd-analyze`.

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixDatagram;
    use std::path::Path;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    use shelfboot_testkit::netns::Lab;
    use shelfboot_testkit::tier::{self, Tier};

    const MASTER: &str = env!("CARGO_BIN_EXE_master");

    /// Kills and reaps the child if the test fails before it stopped.
    struct Reap(Child);

    impl Drop for Reap {
        fn drop(&mut self) {
            if let Ok(None) = self.0.try_wait() {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
    }

    #[test]
    #[ignore = "tier: systemd-analyze (root, Debian package systemd); ./dev test runs it"]
    fn the_unit_passes_systemd_analyze_verify() {
        tier::require(&[Tier::SystemdAnalyze]);
        let tmp = tempfile::tempdir().unwrap();
        let unit = include_str!("../systemd/shelfboot-master.service");
        assert!(
            unit.contains("ExecStart=/usr/bin/master serve --config /etc/shelfboot/master.toml")
        );
        // verify checks that ExecStart's program exists: point it at the binary under test.
        let path = tmp.path().join("shelfboot-master.service");
        std::fs::write(&path, unit.replace("/usr/bin/master", MASTER)).unwrap();
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "systemd-analyze verify: {stderr}");
        // Unknown keys and bad values are only warnings to verify: none is allowed here.
        let ours: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains("shelfboot-master"))
            .collect();
        assert!(ours.is_empty(), "systemd-analyze verify warns: {ours:?}");

        // The check can fail: a misspelt key is reported.
        let bad = tmp.path().join("bad-master.service");
        std::fs::write(
            &bad,
            unit.replace("WatchdogSec=", "WatchdogSecs=")
                .replace("/usr/bin/master", MASTER),
        )
        .unwrap();
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&bad)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("WatchdogSecs"), "{stderr}");
    }

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = sock
            .recv(&mut buf)
            .expect("a notification within the socket's read timeout");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    #[ignore = "tier: network namespaces (root, iproute2, nftables); ./dev test runs it"]
    fn serve_tells_systemd_ready_watchdog_and_stopping() {
        tier::require(&[Tier::Netns]);
        let tmp = tempfile::tempdir().unwrap();
        let lab = Lab::new("sd-notify", 1).unwrap();
        let notify = tmp.path().join("notify.sock");
        let sock = UnixDatagram::bind(&notify).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let config = tmp.path().join("master.toml");
        std::fs::write(&config, "iface = \"p0\"\njoin_window_ms = 200\n").unwrap();
        let state = tmp.path().join("state");
        let mut cmd = lab.command(MASTER);
        cmd.arg("--state")
            .arg(&state)
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .env("NOTIFY_SOCKET", &notify)
            .env("WATCHDOG_USEC", "400000")
            .env_remove("WATCHDOG_PID")
            .env_remove("JOURNAL_STREAM")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = Reap(cmd.spawn().unwrap());

        // READY once it serves: the control socket is there for the CLI.
        assert_eq!(recv(&sock), "READY=1\nSTATUS=serving p0 epoch 1\n");
        assert!(state.join("control.sock").exists());

        // Watchdog pings at half of WATCHDOG_USEC (200 ms), from the loop.
        let t0 = Instant::now();
        let mut pings = Vec::new();
        while pings.len() < 6 {
            assert_eq!(recv(&sock), "WATCHDOG=1\n");
            pings.push(t0.elapsed());
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "pings too slow: {pings:?}"
            );
        }
        for w in pings.windows(2) {
            let gap = w[1] - w[0];
            assert!(
                gap >= Duration::from_millis(150) && gap <= Duration::from_millis(600),
                "pings should come every ~200 ms: {pings:?}"
            );
        }

        // SIGTERM: STOPPING, then a clean exit with the state left free.
        let pid = Pid::from_raw(i32::try_from(child.0.id()).unwrap());
        kill(pid, Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let m = recv(&sock);
            if m == "STOPPING=1\nSTATUS=stopping\n" {
                break;
            }
            assert_eq!(m, "WATCHDOG=1\n", "only pings before STOPPING");
            assert!(Instant::now() < deadline, "no STOPPING within 10 s");
        }
        let status = loop {
            if let Some(s) = child.0.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "serve did not exit within 10 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut err = String::new();
        if let Some(mut e) = child.0.stderr.take() {
            use std::io::Read;
            e.read_to_string(&mut err).unwrap();
        }
        assert!(status.success(), "serve exited with {status}: {err}");
        assert!(err.contains("master serve: epoch 1 stopped"), "{err}");
        assert!(
            !state.join("control.sock").exists(),
            "control socket removed"
        );
        let st = shelfboot_master::serve::stats::read(&state).unwrap();
        assert_eq!((st.epoch, st.iface.as_str()), (1, "p0"));
        assert!(st.heartbeats >= 1, "{st:?}");
        // The state lock is free and the database opens.
        let lock = shelfboot_master::control::StateLock::acquire(&state).unwrap();
        drop(lock);
        shelfboot_master::state::Master::open(&state).unwrap();
    }

    fn master(args: &[&str], state_env: Option<&Path>) -> std::process::Output {
        let mut c = Command::new(MASTER);
        c.args(args).env_remove("SHELFBOOT_STATE");
        if let Some(s) = state_env {
            c.env("SHELFBOOT_STATE", s);
        }
        c.output().unwrap()
    }

    #[test]
    fn the_config_file_chooses_the_state_unless_a_flag_or_the_environment_does() {
        let tmp = tempfile::tempdir().unwrap();
        let from_file = tmp.path().join("from-file");
        let from_flag = tmp.path().join("from-flag");
        let from_env = tmp.path().join("from-env");
        let config = tmp.path().join("master.toml");
        std::fs::write(&config, format!("state = \"{}\"\n", from_file.display())).unwrap();
        let cfg = config.to_str().unwrap();

        let out = master(&["--config", cfg, "releases"], None);
        assert!(out.status.success(), "{out:?}");
        assert!(from_file.is_dir(), "the file's state was used");

        let out = master(
            &[
                "--config",
                cfg,
                "--state",
                from_flag.to_str().unwrap(),
                "releases",
            ],
            None,
        );
        assert!(out.status.success(), "{out:?}");
        assert!(from_flag.is_dir(), "--state wins over the file");

        let out = master(&["--config", cfg, "releases"], Some(&from_env));
        assert!(out.status.success(), "{out:?}");
        assert!(from_env.is_dir(), "SHELFBOOT_STATE wins over the file");
    }

    /// `master -v serve` on an interface that does not exist (a fresh state directory per
    /// `run`), stderr into `log`, with
    /// `journal_stream` as JOURNAL_STREAM: it logs (the plan key it generates) and fails.
    fn serve_logging(tmp: &Path, run: u32, log: &Path, journal_stream: Option<&str>) -> String {
        let file = std::fs::File::create(log).unwrap();
        let mut c = Command::new(MASTER);
        c.arg("-v")
            .arg("--state")
            .arg(tmp.join(format!("state-{run}")))
            .args(["serve", "--iface", "sbnosuch0"])
            .env_remove("JOURNAL_STREAM")
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(file);
        if let Some(js) = journal_stream {
            c.env("JOURNAL_STREAM", js);
        }
        let status = c.status().unwrap();
        assert_eq!(status.code(), Some(1));
        std::fs::read_to_string(log).unwrap()
    }

    #[test]
    fn log_lines_carry_priorities_and_no_timestamp_when_stderr_is_the_journal() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("stderr");
        std::fs::write(&log, "").unwrap();
        let m = std::fs::metadata(&log).unwrap();
        // JOURNAL_STREAM names the very file stderr is: journal format.
        let out = serve_logging(
            tmp.path(),
            1,
            &log,
            Some(&format!("{}:{}", m.dev(), m.ino())),
        );
        let line = out
            .lines()
            .find(|l| l.contains("generated plan-signing key"))
            .unwrap_or_else(|| panic!("no key line in {out}"));
        assert!(
            line.starts_with("<6>master: generated plan-signing key "),
            "{out}"
        );
        // Log lines of the journal format have no timestamp and no level word.
        assert!(!out.contains(" INFO "), "{out}");
        // The error report is printed, not logged.
        assert!(out.contains("error: backplane service"), "{out}");

        // A JOURNAL_STREAM that names another file (inherited, output redirected): the
        // usual format, with a timestamp and the level.
        let out = serve_logging(tmp.path(), 2, &log, Some(&format!("{}:1", m.dev())));
        let line = out
            .lines()
            .find(|l| l.contains("generated plan-signing key"))
            .unwrap_or_else(|| panic!("no key line in {out}"));
        assert!(line.starts_with('[') && line.contains(" INFO "), "{out}");
        assert!(!out.contains("<6>"), "{out}");
    }

    #[test]
    fn a_bad_config_file_is_an_error_naming_file_line_and_key() {
        let tmp = tempfile::tempdir().unwrap();
        let config = tmp.path().join("master.toml");
        std::fs::write(&config, "iface = \"bp0\"\nmax_rate_mbs = \"fast\"\n").unwrap();
        let state = tmp.path().join("state");
        let out = master(
            &[
                "--config",
                config.to_str().unwrap(),
                "--state",
                state.to_str().unwrap(),
                "releases",
            ],
            None,
        );
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!(
                "error: {}:2: key `max_rate_mbs`: expected an integer, found string \"fast\"",
                config.display()
            )),
            "{err}"
        );
        assert!(!state.exists(), "nothing ran");

        std::fs::write(&config, "iface = \"bp0\"\nrate = 3\n").unwrap();
        let out = master(&["--config", config.to_str().unwrap(), "serve"], None);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("{}:2: unknown key `rate`", config.display())),
            "{err}"
        );

        let missing = tmp.path().join("nope.toml");
        let out = master(&["--config", missing.to_str().unwrap(), "releases"], None);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!(
                "cannot read configuration file {}",
                missing.display()
            )),
            "{err}"
        );
    }
}
