//! Raises the kernel's caps on socket buffers (`net.core.rmem_max`, `net.core.wmem_max`)
//! for the length of one benchmark run, and puts the old values back when dropped.
//!
//! Why: uftp's and uftpd's `-B` and udp-receiver's `--rcvbuf` ask for their buffers with
//! plain `SO_RCVBUF`/`SO_SNDBUF`, which the kernel silently caps at these two values
//! (socket(7)). uftp's ReadMe ("Tuning") says to raise them with `sysctl -w
//! net.core.rmem_max=…` / `wmem_max`, and udp-sender(1) says to raise `rmem_max` when
//! receivers drop packets. Without the raise, the peers' buffer options would be quietly
//! worth less than they say. shelfboot's own sockets are not capped: as root, netio uses
//! the `FORCE` variants.
//!
//! The caps are not per network namespace on the kernels this runs on (6.18 checked): in
//! a namespace other than the host's, `/proc/sys/net/core/rmem_max` is read-only and
//! reads the host's value live, changing with it. So the host's value is the one that
//! counts, for every process on the machine while the run lasts; that is why the raise
//! only lasts the run.
//!
//! It only ever raises (a cap already at or above the wanted size is left as it is) and
//! restores only what it changed. It does not touch `rmem_default`/`wmem_default`: every
//! peer that wants a larger buffer asks for it.

use std::path::{Path, PathBuf};

/// Where the host's caps live (the benchmark runs in the host's network namespace).
pub const PROC_NET_CORE: &str = "/proc/sys/net/core";

/// The two caps, as file names under [`PROC_NET_CORE`].
const CAPS: [&str; 2] = ["rmem_max", "wmem_max"];

/// Failures reading or writing a cap.
#[derive(Debug, thiserror::Error)]
pub enum CapError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds {text:?}, not a byte count")]
    Parse { path: PathBuf, text: String },
    #[error("writing {value} to {path}")]
    Write {
        path: PathBuf,
        value: u64,
        #[source]
        source: std::io::Error,
    },
}

/// One cap as it was and as it is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cap {
    pub name: &'static str,
    pub before: u64,
    pub now: u64,
}

/// The caps of one run; restores the ones it raised when dropped.
#[derive(Debug)]
pub struct RaisedCaps {
    dir: PathBuf,
    caps: Vec<Cap>,
}

fn read_cap(path: &Path) -> Result<u64, CapError> {
    let text = std::fs::read_to_string(path).map_err(|source| CapError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    text.trim().parse().map_err(|_| CapError::Parse {
        path: path.to_path_buf(),
        text,
    })
}

fn write_cap(path: &Path, value: u64) -> Result<(), CapError> {
    std::fs::write(path, format!("{value}\n")).map_err(|source| CapError::Write {
        path: path.to_path_buf(),
        value,
        source,
    })
}

impl RaisedCaps {
    /// Raises the host's caps to at least `bytes`.
    pub fn raise(bytes: u64) -> Result<RaisedCaps, CapError> {
        Self::raise_in(Path::new(PROC_NET_CORE), bytes)
    }

    /// Raises the caps under `dir` (a `/proc/sys/net/core`, or a stand-in in tests) to at
    /// least `bytes`. On a failure, caps already raised are put back before returning.
    pub fn raise_in(dir: &Path, bytes: u64) -> Result<RaisedCaps, CapError> {
        let mut raised = RaisedCaps {
            dir: dir.to_path_buf(),
            caps: Vec::new(),
        };
        for name in CAPS {
            let path = dir.join(name);
            let before = read_cap(&path)?;
            if before < bytes {
                write_cap(&path, bytes)?;
            }
            raised.caps.push(Cap {
                name,
                before,
                now: before.max(bytes),
            });
        }
        Ok(raised)
    }

    /// Each cap before the run and during it.
    pub fn caps(&self) -> &[Cap] {
        &self.caps
    }

    /// One line for the report's notes.
    pub fn describe(&self) -> String {
        let each: Vec<String> = self
            .caps
            .iter()
            .map(|c| {
                if c.now > c.before {
                    format!(
                        "net.core.{} raised from {} to {} for this run",
                        c.name, c.before, c.now
                    )
                } else {
                    format!("net.core.{} already {} (left as it was)", c.name, c.before)
                }
            })
            .collect();
        format!(
            "{}; the peers' socket-buffer options (uftp/uftpd -B, udp-receiver --rcvbuf) are \
             capped by these",
            each.join(", ")
        )
    }
}

impl Drop for RaisedCaps {
    fn drop(&mut self) {
        for c in &self.caps {
            if c.now > c.before
                && let Err(e) = write_cap(&self.dir.join(c.name), c.before)
            {
                eprintln!(
                    "could not restore net.core.{} to {}: {e} ({:?}); restore it by hand",
                    c.name,
                    c.before,
                    std::error::Error::source(&e)
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stand_in(tag: &str, rmem: &str, wmem: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sockbuf-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("rmem_max"), rmem).unwrap();
        std::fs::write(dir.join("wmem_max"), wmem).unwrap();
        dir
    }

    fn read(dir: &Path, name: &str) -> String {
        std::fs::read_to_string(dir.join(name)).unwrap()
    }

    #[test]
    fn raises_low_caps_and_restores_them_on_drop() {
        let dir = stand_in("low", "212992\n", "212992\n");
        {
            let caps = RaisedCaps::raise_in(&dir, 4 << 20).unwrap();
            assert_eq!(read(&dir, "rmem_max"), "4194304\n");
            assert_eq!(read(&dir, "wmem_max"), "4194304\n");
            assert!(caps.describe().contains("raised from 212992 to 4194304"));
        }
        assert_eq!(read(&dir, "rmem_max"), "212992\n");
        assert_eq!(read(&dir, "wmem_max"), "212992\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn leaves_higher_caps_alone() {
        let dir = stand_in("high", "8388608\n", "4194304\n");
        {
            let caps = RaisedCaps::raise_in(&dir, 4 << 20).unwrap();
            assert_eq!(
                caps.caps(),
                [
                    Cap {
                        name: "rmem_max",
                        before: 8 << 20,
                        now: 8 << 20
                    },
                    Cap {
                        name: "wmem_max",
                        before: 4 << 20,
                        now: 4 << 20
                    }
                ]
            );
        }
        assert_eq!(read(&dir, "rmem_max"), "8388608\n");
        assert_eq!(read(&dir, "wmem_max"), "4194304\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_cap_that_is_not_a_number_is_an_error_naming_the_file() {
        let dir = stand_in("bad", "lots\n", "212992\n");
        let e = RaisedCaps::raise_in(&dir, 4 << 20).unwrap_err();
        assert!(e.to_string().contains("rmem_max"), "{e}");
        assert_eq!(read(&dir, "wmem_max"), "212992\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
