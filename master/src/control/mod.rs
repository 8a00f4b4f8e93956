//! The local control channel between the CLI and the master daemon, and the state lock.
//!
//! * `master daemon --state DIR` takes an exclusive `flock` on `DIR/lock` for its whole
//!   life and listens on `DIR/control.sock` (mode 0600, or 0660 with `--group NAME`, the
//!   socket then owned by that group). Every connection's peer is checked with
//!   `SO_PEERCRED`: root, the daemon's own uid, or (with `--group`) a peer whose primary
//!   gid is that group; anyone else gets an error reply and a warning in the log.
//! * A CLI command first tries the socket; if no daemon answers it takes the same lock
//!   itself (non-blocking) and runs the operation in-process. The daemon and a CLI, or
//!   two CLIs, therefore never write the state concurrently.
//! * Protocol: one JSON [`Request`] line from the client; the daemon answers with zero or
//!   more `{"progress":[done,total]}` lines and then one `{"ok":<Reply>}` or
//!   `{"error":["message","cause",...]}` line, and closes. Requests are at most 1 MiB and
//!   a client that sends nothing for 30 s is dropped. Requests execute one at a time; a
//!   client still sending its request does not hold up the others (see [`daemon`]).
//!
//! This module does not format output (see [`crate::cli`]) and does not serve the
//! backplane (issue 4).

mod daemon;
mod ops;

#[cfg(test)]
use daemon::Policy;
pub use daemon::{Daemon, MAX_PENDING, WRITE_TIMEOUT};

pub use ops::{Reply, Request, execute};

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Largest request line accepted.
pub const MAX_REQUEST: u64 = 1 << 20;
/// How long the daemon waits for a client's request.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of the control channel and the state lock.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot open lock file {path}")]
    LockFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "state directory {0} is in use by another master process (`master serve`, a daemon whose socket does not answer, or another CLI command); retry, or stop it"
    )]
    Busy(PathBuf),
    #[error("cannot listen on {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("unknown group '{0}' for the control socket")]
    UnknownGroup(String),
    #[error("cannot set owner/mode of {path}")]
    Permissions {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("talking to the master daemon at {path} failed")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the master daemon sent a reply this CLI cannot read")]
    BadReply(#[source] serde_json::Error),
    #[error("the master daemon closed the connection without a reply (see its log)")]
    NoReply,
    #[error("{}", .0.first().map(String::as_str).unwrap_or("master daemon reported an error"))]
    Remote(Vec<String>),
}

/// The exclusive lock on a state directory; released when dropped (or the process dies).
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

impl StateLock {
    /// Takes the lock without waiting.
    pub fn acquire(state: &Path) -> Result<Self, ControlError> {
        fs::create_dir_all(state).map_err(|source| ControlError::LockFile {
            path: state.to_path_buf(),
            source,
        })?;
        let path = state.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| ControlError::LockFile {
                path: path.clone(),
                source,
            })?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: file }),
            Err(fs::TryLockError::WouldBlock) => Err(ControlError::Busy(state.to_path_buf())),
            Err(fs::TryLockError::Error(source)) => Err(ControlError::LockFile { path, source }),
        }
    }
}

/// Path of the control socket in a state directory.
pub fn socket_path(state: &Path) -> PathBuf {
    state.join("control.sock")
}

/// One line from the daemon.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Line {
    Progress([u64; 2]),
    Ok(Box<Reply>),
    Error(Vec<String>),
}

/// Who may talk to the daemon.
/// A connection to a running daemon.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    path: PathBuf,
}

impl Client {
    /// Connects if a daemon listens on the state directory's socket.
    pub fn connect(state: &Path) -> Option<Self> {
        let path = socket_path(state);
        UnixStream::connect(&path)
            .ok()
            .map(|stream| Self { stream, path })
    }

    /// Sends one request and waits for the reply, reporting progress lines.
    pub fn call(
        self,
        req: &Request,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Reply, ControlError> {
        let io_err = |source| ControlError::Io {
            path: self.path.clone(),
            source,
        };
        let mut text = serde_json::to_string(req).map_err(ControlError::BadReply)?;
        text.push('\n');
        (&self.stream).write_all(text.as_bytes()).map_err(io_err)?;
        let reader = BufReader::new(&self.stream);
        for line in reader.lines() {
            let line = line.map_err(io_err)?;
            match serde_json::from_str::<Line>(&line).map_err(ControlError::BadReply)? {
                Line::Progress([d, t]) => progress(d, t),
                Line::Ok(reply) => return Ok(*reply),
                Line::Error(chain) => return Err(ControlError::Remote(chain)),
            }
        }
        Err(ControlError::NoReply)
    }
}

#[cfg(test)]
mod tests;
