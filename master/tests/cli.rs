//! The `master` binary end to end, as an operator runs it: keygen → pack → trust → import
//! → node add → nodes → explain, first in-process, then through a running daemon.
//! Uses the example release in `testdata/shelf`; no root needed.

// Integration tests still live in a test module (workspace lint `tests_outside_test_module`).
#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Output};
    use std::time::{Duration, Instant};

    fn master(dir: &Path, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_master"))
            .args(args)
            .current_dir(dir)
            .env("SHELFBOOT_STATE", dir.join("state"))
            .env_remove("RUST_LOG")
            .output()
            .expect("run master")
    }

    fn ok(dir: &Path, args: &[&str]) -> String {
        let out = master(dir, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "master {args:?} failed: {stderr}");
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    fn copy_example(dst: &Path) {
        let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/shelf");
        std::fs::create_dir_all(dst.join("files")).unwrap();
        std::fs::copy(src.join("system.toml"), dst.join("system.toml")).unwrap();
        for e in std::fs::read_dir(src.join("files")).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dst.join("files").join(e.file_name())).unwrap();
        }
    }

    /// Kills the daemon child when the test ends, pass or fail.
    struct Daemon(Child);

    impl Drop for Daemon {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn operator_session_in_process_and_through_the_daemon() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        copy_example(dir);

        let out = ok(dir, &["keygen", "-o", "vendor"]);
        assert!(out.contains("vendor.key (secret, mode 0600)"), "{out}");
        let out = ok(
            dir,
            &[
                "pack",
                "system.toml",
                "--key",
                "vendor.key",
                "-o",
                "release.img",
            ],
        );
        assert!(
            out.contains("release shelf-os@1.0.0, 4 boot images, 13 packages"),
            "{out}"
        );

        // Not trusted yet: refused, exit code 1, error names the key.
        let out = master(dir, &["import", "release.img"]);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("untrusted key"), "{err}");

        ok(
            dir,
            &["trust", "add", "vendor.pub", "--comment", "test vendor"],
        );
        let out = ok(dir, &["import", "release.img"]);
        assert!(out.contains("imported shelf-os@1.0.0"), "{out}");
        ok(
            dir,
            &[
                "node",
                "add",
                "--mac",
                "02:00:00:00:00:03",
                "--type",
                "lc200",
                "--arch",
                "aarch64",
                "--slot",
                "3",
                "--feature",
                "bgp",
            ],
        );
        let out = ok(dir, &["explain", "02:00:00:00:00:03"]);
        assert!(out.contains("package bgpd 1.0.0 (aarch64)"), "{out}");
        assert!(
            out.contains("* provides feature bgp (requested by the card)"),
            "{out}"
        );

        // Usage errors exit with 2.
        assert_eq!(master(dir, &["explain", "nonsense"]).status.code(), Some(2));

        // Now through a daemon: same answers, and a second writer is refused.
        let child = Command::new(env!("CARGO_BIN_EXE_master"))
            .args(["daemon"])
            .env("SHELFBOOT_STATE", dir.join("state"))
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start daemon");
        let mut daemon = Daemon(child);
        let sock = dir.join("state/control.sock");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&sock).is_err() {
            assert!(Instant::now() < deadline, "daemon did not start listening");
            std::thread::sleep(Duration::from_millis(20));
        }
        let json = ok(dir, &["nodes", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["reply"], "nodes");
        assert_eq!(v["data"][0]["plan"]["class"], "linecards");
        assert_eq!(v["data"][0]["plan"]["arch"], "aarch64");
        let out = ok(dir, &["import", "release.img"]);
        assert!(out.contains("already imported"), "{out}");
        let out = master(dir, &["daemon"]);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("in use by another master process"), "{err}");

        // SIGTERM stops the daemon cleanly: exit 0, socket removed, lock released.
        let pid = nix::unistd::Pid::from_raw(i32::try_from(daemon.0.id()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(st) = daemon.0.try_wait().unwrap() {
                break st;
            }
            assert!(Instant::now() < deadline, "daemon ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "{status:?}");
        assert!(!sock.exists());
        let out = ok(dir, &["releases"]);
        assert!(out.contains("shelf-os@1.0.0"), "{out}");
    }

    /// One CLI process with its output captured.
    fn spawn_cli(dir: &Path, args: &[&str]) -> Child {
        Command::new(env!("CARGO_BIN_EXE_master"))
            .args(args)
            .current_dir(dir)
            .env("SHELFBOOT_STATE", dir.join("state"))
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start a CLI")
    }

    /// CLI requests issued at the moment a daemon starts, and at the moment it stops, all
    /// succeed: the CLI waits for (or talks to) the one owner of the state, never finds it
    /// "in use" or its database locked. Bounded: 6 rounds of 8 requests, under 2 minutes.
    #[test]
    fn requests_issued_while_a_daemon_starts_and_stops_all_succeed() {
        const CARD: &str = "02:00:00:00:00:07";
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        ok(
            dir,
            &[
                "node", "add", "--mac", CARD, "--type", "lc100", "--arch", "x86_64", "--slot", "7",
            ],
        );
        let requests: [&[&str]; 4] = [
            &["test-mode", CARD, "--off"],
            &["nodes", "--json"],
            &["node", "class", CARD, "--auto"],
            &["history", "--limit", "5"],
        ];
        let began = Instant::now();
        let mut answered = 0;
        for round in 0..6 {
            let child = Command::new(env!("CARGO_BIN_EXE_master"))
                .args(["daemon"])
                .env("SHELFBOOT_STATE", dir.join("state"))
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("start daemon");
            let mut daemon = Daemon(child);
            // At once, while the daemon takes the lock and binds its socket.
            let mut clis: Vec<Child> = requests.iter().map(|r| spawn_cli(dir, r)).collect();
            // Let the daemon come up and serve some, then stop it with requests in flight.
            std::thread::sleep(Duration::from_millis(20 * round));
            clis.extend(requests.iter().map(|r| spawn_cli(dir, r)));
            let pid = nix::unistd::Pid::from_raw(i32::try_from(daemon.0.id()).unwrap());
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
            for cli in clis {
                let out = cli.wait_with_output().unwrap();
                let stderr = String::from_utf8_lossy(&out.stderr);
                assert!(
                    out.status.success(),
                    "round {round}: a CLI request failed: {stderr}"
                );
                answered += 1;
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            while daemon.0.try_wait().unwrap().is_none() {
                assert!(Instant::now() < deadline, "daemon ignored SIGTERM");
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(
                began.elapsed() < Duration::from_secs(120),
                "round {round} took too long"
            );
        }
        assert_eq!(answered, 48);
        // Every test-mode request reached the state: one event each.
        let history = ok(dir, &["history", "--limit", "1000", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&history).unwrap();
        let test_mode = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "test-mode")
            .count();
        assert_eq!(test_mode, 12, "{history}");
    }

    /// `master decode`: a sample frame as hex is dumped (exit 0); bad hex and a truncated
    /// frame are errors (exit 1) that say which frame and why; no hex is a usage error.
    #[test]
    fn decode_dumps_frames_and_names_bad_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let frames = shelfboot_proto::samples::every_frame();
        let whole = hex::encode(&frames[0]);
        let out = ok(dir, &["decode", &whole]);
        assert!(out.starts_with("ethernet: "), "{out}");
        assert!(out.contains("(CRC ok)"), "{out}");
        assert!(out.contains("(valid; signatures not checked)"), "{out}");

        let out = master(dir, &["decode", "zz"]);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("frame 1 is not hex"), "{err}");

        let cut = hex::encode(&frames[0][..30]);
        let out = master(dir, &["decode", &whole, &cut]);
        assert_eq!(out.status.code(), Some(1));
        let dump = String::from_utf8_lossy(&out.stdout);
        assert!(
            dump.contains("frame 2:") && dump.contains("rejected"),
            "{dump}"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("frame 2 (30 bytes) does not decode"), "{err}");

        assert_eq!(master(dir, &["decode"]).status.code(), Some(2));
    }

    #[test]
    fn cluster_certify_writes_the_certificate_and_serve_refuses_one_of_another_key() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::create_dir_all(dir.join("state")).unwrap();
        ok(dir, &["keygen", "-o", "shelf"]);
        ok(dir, &["keygen", "-o", "state/plan"]);
        let out = ok(dir, &["cluster", "certify", "--shelf-key", "shelf.key"]);
        assert!(
            out.contains("plan.cert: plan key") && out.contains("certified by shelf key"),
            "{out}"
        );
        let cert = std::fs::read_to_string(dir.join("state/plan.cert")).unwrap();
        assert!(cert.starts_with("shelfboot-master-cert "), "{cert}");
        // Never over an existing certificate.
        let out = master(dir, &["cluster", "certify", "--shelf-key", "shelf.key"]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("must not exist yet"), "{err}");
        // A public key is no shelf secret key.
        let out = master(
            dir,
            &[
                "cluster",
                "certify",
                "--shelf-key",
                "shelf.pub",
                "--out",
                "x.cert",
            ],
        );
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("shelf.pub is not a shelfboot secret key file"),
            "{err}"
        );
        // Another key's certificate in place of this master's: serve refuses to start.
        ok(dir, &["keygen", "-o", "other"]);
        ok(
            dir,
            &[
                "cluster",
                "certify",
                "--shelf-key",
                "shelf.key",
                "--plan-pub",
                "other.pub",
                "--out",
                "other.cert",
            ],
        );
        std::fs::rename(dir.join("other.cert"), dir.join("state/plan.cert")).unwrap();
        let cfg = shelfboot_master::serve::ServeConfig::new("unused", &dir.join("state"));
        let err = shelfboot_master::serve::load_key(&cfg).unwrap_err();
        let chain: Vec<String> = shelfboot_proto::report::causes(&err)
            .map(|c| c.to_string())
            .collect();
        let text = chain.join(": ");
        assert!(
            text.contains("plan.cert") && text.contains("but this master signs with plan key"),
            "{text}"
        );
    }
}
