//! Child processes of the benchmark: started inside a namespace (`ip netns exec`, which
//! execs, so the PID is the program's own), in their own process group, with output to a
//! log file; waited for with a deadline and killed (the whole group) when it passes, so
//! a hanging peer is reported as a hang instead of stalling the run. Also reads a live
//! process's CPU time from `/proc/PID/stat`.
//!
//! It does not retry anything and does not interpret the programs' output.

use std::fs::File;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// Failures around child processes.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("starting `{cmd}` in namespace {netns}")]
    Spawn {
        cmd: String,
        netns: String,
        #[source]
        source: std::io::Error,
    },
    #[error("creating the log file {path}")]
    Log {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("waiting for `{cmd}`")]
    Wait {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
}

/// How a child ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Ended {
    /// Exited with status 0 after this long.
    Ok(Duration),
    /// Exited with a failure status (log file says why).
    Failed(String),
    /// Still running at the deadline; killed.
    Hung(Duration),
}

/// A started child.
#[derive(Debug)]
pub struct Proc {
    pub cmd: String,
    pub child: Child,
    pub started: Instant,
    pub log: String,
    ended: Option<Ended>,
}

impl Proc {
    /// Starts `argv` inside `netns`, stdout and stderr to `log`.
    pub fn spawn(netns: &str, argv: &[&str], log: &Path) -> Result<Proc, ProcError> {
        Self::spawn_in(netns, argv, log, None)
    }

    /// [`Proc::spawn`] with a working directory.
    pub fn spawn_in(
        netns: &str,
        argv: &[&str],
        log: &Path,
        cwd: Option<&Path>,
    ) -> Result<Proc, ProcError> {
        Self::spawn_accounted(netns, argv, log, cwd, None)
    }

    /// [`Proc::spawn_in`], the process (and everything it forks) in control group
    /// `group` (`cpuacct::CpuGroup::procs_file`): a shell joins it, then execs
    /// `ip netns exec`, so the PID is still the program's own.
    pub fn spawn_accounted(
        netns: &str,
        argv: &[&str],
        log: &Path,
        cwd: Option<&Path>,
        group: Option<&Path>,
    ) -> Result<Proc, ProcError> {
        let cmd = argv.join(" ");
        let f = File::create(log).map_err(|source| ProcError::Log {
            path: log.display().to_string(),
            source,
        })?;
        let f2 = f.try_clone().map_err(|source| ProcError::Log {
            path: log.display().to_string(),
            source,
        })?;
        let mut c = match group {
            Some(procs) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(r#"echo 0 > "$0" && exec "$@""#)
                    .arg(procs)
                    .arg("ip");
                c
            }
            None => Command::new("ip"),
        };
        c.args(["netns", "exec", netns])
            .args(argv)
            .stdin(Stdio::null())
            .stdout(f)
            .stderr(f2)
            .process_group(0);
        if let Some(d) = cwd {
            c.current_dir(d);
        }
        let child = c.spawn().map_err(|source| ProcError::Spawn {
            cmd: cmd.clone(),
            netns: netns.to_owned(),
            source,
        })?;
        Ok(Proc {
            cmd,
            child,
            started: Instant::now(),
            log: log.display().to_string(),
            ended: None,
        })
    }

    /// Whether it has ended (without waiting); records how.
    pub fn poll(&mut self) -> Result<Option<Ended>, ProcError> {
        if let Some(e) = &self.ended {
            return Ok(Some(e.clone()));
        }
        let st = self.child.try_wait().map_err(|source| ProcError::Wait {
            cmd: self.cmd.clone(),
            source,
        })?;
        Ok(st.map(|st| {
            let e = if st.success() {
                Ended::Ok(self.started.elapsed())
            } else {
                Ended::Failed(format!("`{}` exited with {st}; see {}", self.cmd, self.log))
            };
            self.ended = Some(e.clone());
            e
        }))
    }

    /// Kills the process group (SIGKILL) and reaps the child.
    pub fn kill(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = self.child.wait();
    }

    /// Asks the process group to stop (SIGTERM), waits up to `grace`, then kills.
    pub fn stop(&mut self, grace: Duration) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let end = Instant::now() + grace;
        while Instant::now() < end {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }

    /// Waits until it ends or `deadline`; a child still running then is killed and
    /// reported as `Hung`.
    pub fn wait_until(&mut self, deadline: Instant) -> Result<Ended, ProcError> {
        loop {
            if let Some(e) = self.poll()? {
                return Ok(e);
            }
            if Instant::now() >= deadline {
                let e = Ended::Hung(self.started.elapsed());
                self.kill();
                self.ended = Some(e.clone());
                return Ok(e);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.ended.is_none() && !matches!(self.child.try_wait(), Ok(Some(_))) {
            self.kill();
        }
    }
}

/// Waits for all `procs` (each until the shared deadline); returns how each ended.
pub fn wait_all(procs: &mut [Proc], deadline: Instant) -> Result<Vec<Ended>, ProcError> {
    // Poll all together so that each one's end time is taken when it ends.
    loop {
        let mut pending = false;
        for p in procs.iter_mut() {
            if p.poll()?.is_none() {
                pending = true;
            }
        }
        if !pending || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    procs.iter_mut().map(|p| p.wait_until(deadline)).collect()
}

/// utime + stime of a live process, in seconds (`/proc/PID/stat`, fields 14 and 15).
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: split after its closing parenthesis.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100);
    Some(ticks as f64 / hz as f64)
}

/// The load averages, for the report (the machine is shared).
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_of_self_is_readable_and_small() {
        let c = cpu_secs(std::process::id()).expect("own /proc/PID/stat");
        assert!((0.0..1e6).contains(&c));
    }
}
