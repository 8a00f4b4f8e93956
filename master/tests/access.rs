//! Access said plainly: the `master` binary run as an unprivileged user (uid 65534,
//! through `setpriv`) against a state directory and control socket owned by root. The
//! refusals must say who may use this master and how to get access, never only
//! "cannot open lock file ...: Permission denied". Root tier: `#[ignore]`d with the
//! reason, run by `./dev test` as root.

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{PermissionsExt, chown};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Output};
    use std::time::{Duration, Instant};

    use shelfboot_testkit::tier::{self, Tier};

    const NOBODY: u32 = 65534;

    fn bin() -> &'static str {
        env!("CARGO_BIN_EXE_master")
    }

    /// Runs `master --state STATE ARGS` as uid/gid 65534 with exactly `groups` as its
    /// supplementary groups.
    fn as_nobody(state: &Path, groups: &[u32], args: &[&str]) -> Output {
        let mut cmd = Command::new("setpriv");
        cmd.arg(format!("--reuid={NOBODY}"))
            .arg(format!("--regid={NOBODY}"));
        if groups.is_empty() {
            cmd.arg("--clear-groups");
        } else {
            let list: Vec<String> = groups.iter().map(u32::to_string).collect();
            cmd.arg(format!("--groups={}", list.join(",")));
        }
        cmd.arg(bin())
            .arg("--state")
            .arg(state)
            .args(args)
            .env_remove("SHELFBOOT_STATE")
            .env_remove("RUST_LOG")
            .current_dir("/")
            .output()
            .expect("run setpriv")
    }

    fn refused(out: &Output, wants: &[&str]) -> String {
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "not refused: {err}");
        assert!(!err.contains("cannot open lock file"), "{err}");
        assert!(err.contains("(uid 65534)"), "{err}");
        for w in wants {
            assert!(err.contains(w), "`{w}` missing from: {err}");
        }
        err
    }

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// A root `master daemon`, stopped (SIGTERM) when dropped.
    struct Daemon(Child);

    impl Drop for Daemon {
        fn drop(&mut self) {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(self.0.id()).unwrap());
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.0.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn start_daemon(state: &Path, group: &str) -> Daemon {
        let child = Command::new(bin())
            .args(["--state"])
            .arg(state)
            .args(["daemon", "--group", group])
            .env_remove("RUST_LOG")
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start master daemon");
        let d = Daemon(child);
        let sock = state.join("control.sock");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !sock.exists() {
            assert!(Instant::now() < deadline, "no control socket after 20 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    #[test]
    #[ignore = "tier: root (runs commands as another user with setpriv); ./dev test runs it"]
    fn an_unprivileged_user_is_told_who_may_use_the_master_and_how() {
        tier::require(&[Tier::Root]);
        let users = nix::unistd::Group::from_name("users")
            .unwrap()
            .expect("group `users` (gid 100 in Debian's base-passwd)");
        let gid = users.gid.as_raw();
        let tmp = tempfile::tempdir().unwrap();
        chmod(tmp.path(), 0o755);
        let state: PathBuf = tmp.path().join("state");
        std::fs::create_dir(&state).unwrap();
        chmod(&state, 0o750);

        // No master running, a root-only state directory: only root may.
        refused(
            &as_nobody(&state, &[], &["nodes"]),
            &["may not use the master at", "only root may", "sudo"],
        );
        // A state directory that does not exist and cannot be created.
        let missing = tmp.path().join("missing/state");
        refused(
            &as_nobody(&missing, &[], &["nodes"]),
            &["there is no master state directory", "--state DIR"],
        );

        // A daemon letting group `users` in, on a directory that group may enter.
        chown(&state, None, Some(gid)).unwrap();
        let _daemon = start_daemon(&state, "users");
        let err = refused(
            &as_nobody(&state, &[], &["nodes"]),
            &[
                "only root and members of group users may",
                "usermod -aG users nobody",
            ],
        );
        assert!(
            err.contains("state directory root:users mode 0750"),
            "{err}"
        );

        // In the group as a supplementary group only (as after `usermod -aG` and a new
        // login): the kernel lets the process at the socket and the daemon accepts it.
        let out = as_nobody(&state, &[gid], &["nodes"]);
        assert!(
            out.status.success(),
            "member refused: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("SLOT"));

        // A socket anyone may reach: the daemon's own check refuses and says the same.
        chmod(&state, 0o755);
        chmod(&state.join("control.sock"), 0o666);
        let err = refused(
            &as_nobody(&state, &[], &["nodes"]),
            &[
                "only root and members of group users may",
                "control socket root:users mode 0666",
                "usermod -aG users nobody",
            ],
        );
        assert!(
            !err.contains("caused by"),
            "a daemon refusal has no OS cause: {err}"
        );
    }
}
