//! CPU time of a group of processes, whole trees included: a control group per side of
//! the backplane (the master's processes, the cards'), so that a peer's cost counts every
//! process it runs, also the children a server forks per connection and reaps (or lets
//! the kernel reap) before the run ends, which `/proc/PID/stat` of the parent misses.
//!
//! A process joins its group itself before it execs the program (`Proc::spawn_in`), so
//! nothing it forks escapes. cgroup v2 (`cpu.stat`, always there) is preferred; on a
//! host with only v1 hierarchies, v1's `cpuacct` controller (`cpuacct.usage`). Where
//! neither can be made (no permission, no cgroup file system), the benchmark runs without
//! CPU figures and says so.

use std::path::{Path, PathBuf};

/// One control group made for this run; removed on drop.
#[derive(Debug)]
pub struct CpuGroup {
    dir: PathBuf,
    kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// cgroup v2: `cpu.stat`'s `usage_usec`.
    V2,
    /// cgroup v1 `cpuacct`: `cpuacct.usage`, nanoseconds.
    V1,
}

/// Where each kind of hierarchy may be mounted, in order of preference.
const CANDIDATES: [(&str, Kind); 3] = [
    ("/sys/fs/cgroup/unified", Kind::V2),
    ("/sys/fs/cgroup", Kind::V2),
    ("/sys/fs/cgroup/cpuacct", Kind::V1),
];

impl CpuGroup {
    /// Makes the group `name` (unique per run: the caller puts its PID in it) in the
    /// first hierarchy that takes it. The error says what each attempt met.
    pub fn create(name: &str) -> Result<CpuGroup, String> {
        let mut tried = Vec::new();
        for (root, kind) in CANDIDATES {
            let probe = match kind {
                Kind::V2 => "cgroup.controllers",
                Kind::V1 => "cpuacct.usage",
            };
            if !Path::new(root).join(probe).exists() {
                tried.push(format!("{root}: no {probe}"));
                continue;
            }
            let dir = Path::new(root).join(name);
            match std::fs::create_dir(&dir) {
                Ok(()) => {
                    let g = CpuGroup { dir, kind };
                    if g.usage_s().is_some() {
                        return Ok(g);
                    }
                    tried.push(format!("{}: usage not readable", g.dir.display()));
                }
                Err(e) => tried.push(format!("{}: {e}", dir.display())),
            }
        }
        Err(format!(
            "no control group for CPU accounting ({})",
            tried.join("; ")
        ))
    }

    /// The file a process writes `0` to in order to join the group.
    pub fn procs_file(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// CPU seconds (user + system) the group's processes have used since it was made,
    /// the ended ones included.
    pub fn usage_s(&self) -> Option<f64> {
        match self.kind {
            Kind::V2 => {
                let s = std::fs::read_to_string(self.dir.join("cpu.stat")).ok()?;
                let usec = s
                    .lines()
                    .find_map(|l| l.strip_prefix("usage_usec "))?
                    .trim()
                    .parse::<u64>()
                    .ok()?;
                Some(usec as f64 / 1e6)
            }
            Kind::V1 => {
                let s = std::fs::read_to_string(self.dir.join("cpuacct.usage")).ok()?;
                Some(s.trim().parse::<u64>().ok()? as f64 / 1e9)
            }
        }
    }
}

impl Drop for CpuGroup {
    fn drop(&mut self) {
        // Its processes have been killed and reaped by then; a straggler still exiting
        // keeps the directory busy for a moment.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        log::warn!("could not remove the control group {}", self.dir.display());
    }
}

/// The two sides of a transfer, each in its own group.
#[derive(Debug)]
pub struct Sides {
    pub master: CpuGroup,
    pub cards: CpuGroup,
}

impl Sides {
    /// Both groups for this run (`sbbench-<pid>-master`, `-cards`).
    pub fn create() -> Result<Sides, String> {
        let pid = std::process::id();
        Ok(Sides {
            master: CpuGroup::create(&format!("sbbench-{pid}-master"))?,
            cards: CpuGroup::create(&format!("sbbench-{pid}-cards"))?,
        })
    }

    /// (master, cards) CPU seconds so far.
    pub fn usage(&self) -> Option<(f64, f64)> {
        Some((self.master.usage_s()?, self.cards.usage_s()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shelfboot_testkit::tier::{self, Tier};
    use std::process::Command;

    /// Making a control group needs root, as the benchmark itself does.
    #[test]
    #[ignore = "tier: network namespaces (root, iproute2, nftables); ./dev test runs it"]
    fn a_forked_childs_cpu_counts_for_the_group() {
        tier::require(&[Tier::Netns]);
        let g = CpuGroup::create(&format!("sbbench-test-{}", std::process::id())).unwrap();
        let before = g.usage_s().unwrap();
        // The shell joins, then a background child burns CPU and is reaped by the shell.
        let st = Command::new("sh")
            .arg("-c")
            .arg(r#"echo 0 > "$0" && (i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done) & wait"#)
            .arg(g.procs_file())
            .status()
            .unwrap();
        assert!(st.success());
        let used = g.usage_s().unwrap() - before;
        assert!(used > 0.05 && used < 60.0, "{used}");
    }
}
