//! The local control channel between the CLI and the master daemon, and the state lock.
//!
//! * `master daemon --state DIR` takes an exclusive `flock` on `DIR/lock` for its whole
//!   life and listens on `DIR/control.sock` (mode 0600, or 0660 with `--group NAME`, the
//!   socket then owned by that group). Every connection's peer is checked with
//!   `SO_PEERCRED`: root, the daemon's own uid, or (with `--group`) a peer in that group
//!   (its primary gid, one of its process's supplementary groups, or a member by the
//!   group database); anyone else gets an error reply saying who may use the master, and
//!   a warning in the log.
//! * The state has one owner at a time: whoever holds the lock. `master daemon` and
//!   `master serve` hold it for their whole life and bind the socket after taking it (and
//!   remove it before letting go), so a daemon without a socket is starting or stopping.
//! * A CLI command ([`reach`]) first tries the socket; if no daemon answers it takes the
//!   lock itself and runs the operation in-process. If the lock is held and nothing
//!   answers (a master starting or stopping, or another CLI running in-process), it
//!   retries both every [`OWNER_POLL`], for at most [`OWNER_WAIT`], then fails saying so.
//!   A request the owner closed unanswered (it stopped before reading it) is sent again
//!   the same way. The daemon and a CLI, or two CLIs, therefore never write the state
//!   concurrently, and a CLI command issued while a master starts or stops waits for it.
//! * A starting daemon waits for the lock the same way ([`StateLock::acquire_waiting`]),
//!   except that a holder answering on the socket (a running daemon or `master serve`)
//!   is refused at once.
//! * Protocol: one JSON [`Request`] line from the client; the daemon answers with zero or
//!   more `{"progress":[done,total]}` lines and then one `{"ok":<Reply>}` or
//!   `{"error":["message","cause",...]}` line, and closes. Requests are at most 1 MiB and
//!   a client that sends nothing for 30 s is dropped. Requests execute one at a time; a
//!   client still sending its request does not hold up the others (see [`daemon`]).
//!
//! * A caller the file modes (or the daemon) refuse gets [`ControlError::Denied`]: who may
//!   use this master and how to get access (see [`access`]).
//!
//! This module does not format output (see [`crate::cli`]) and does not serve the
//! backplane (see [`crate::serve`]).

pub mod access;
mod daemon;
mod ops;

#[cfg(test)]
use daemon::Policy;
pub use daemon::{Daemon, MAX_PENDING, Polled, WRITE_TIMEOUT};

pub use ops::{Backplane, Outcome, Reply, Request, execute};

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Largest request line accepted.
pub const MAX_REQUEST: u64 = 1 << 20;
/// How long the daemon waits for a client's request.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a CLI command, or a starting daemon, waits for a state owner that does not
/// answer on the control socket (starting, stopping, or a CLI command in-process).
pub const OWNER_WAIT: Duration = Duration::from_secs(30);
/// How often the socket and the lock are tried again while waiting.
pub const OWNER_POLL: Duration = Duration::from_millis(20);

/// Errors of the control channel and the state lock.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{refusal}")]
    Denied {
        refusal: Box<access::Refusal>,
        #[source]
        source: io::Error,
    },
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
    #[error(
        "state directory {path} is held by a master process that did not answer on its control socket within {:.0} s (a master starting or stopping, or a CLI command running in-process); retry, or find the holder with `fuser {path}/lock`",
        waited.as_secs_f64()
    )]
    OwnerSilent { path: PathBuf, waited: Duration },
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
    #[error(
        "the master at {path} closed the connection before reading the request (it was stopping)"
    )]
    Unanswered {
        path: PathBuf,
        #[source]
        source: Option<io::Error>,
    },
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
    /// Lacking permission to create the directory or open the lock is
    /// [`ControlError::Denied`].
    pub fn acquire(state: &Path) -> Result<Self, ControlError> {
        if let Err(source) = fs::create_dir_all(state) {
            if source.kind() == io::ErrorKind::PermissionDenied {
                return Err(denied(state, access::Refused::NoStateDir, source));
            }
            return Err(ControlError::LockFile {
                path: state.to_path_buf(),
                source,
            });
        }
        let path = state.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| {
                if source.kind() == io::ErrorKind::PermissionDenied {
                    denied(state, access::Refused::Lock, source)
                } else {
                    ControlError::LockFile {
                        path: path.clone(),
                        source,
                    }
                }
            })?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: file }),
            Err(fs::TryLockError::WouldBlock) => Err(ControlError::Busy(state.to_path_buf())),
            Err(fs::TryLockError::Error(source)) => Err(ControlError::LockFile { path, source }),
        }
    }

    /// Takes the lock, waiting up to `wait` while it is held by a process that does not
    /// answer on the control socket (a master starting or stopping, a CLI command running
    /// in-process). A holder that answers is a running daemon or `master serve`: refused at
    /// once with [`ControlError::Busy`].
    pub fn acquire_waiting(state: &Path, wait: Duration) -> Result<Self, ControlError> {
        let deadline = Instant::now() + wait;
        loop {
            match Self::acquire(state) {
                Err(ControlError::Busy(path)) => {
                    if Client::connect(state).is_some() {
                        return Err(ControlError::Busy(path));
                    }
                    if Instant::now() >= deadline {
                        return Err(ControlError::OwnerSilent { path, waited: wait });
                    }
                    std::thread::sleep(OWNER_POLL);
                }
                taken => return taken,
            }
        }
    }
}

/// A [`ControlError::Denied`] for `state`, with the facts read now.
fn denied(state: &Path, refused: access::Refused, source: io::Error) -> ControlError {
    ControlError::Denied {
        refusal: Box::new(access::Refusal {
            refused,
            facts: access::Facts::probe(state),
        }),
        source,
    }
}

/// How a CLI command reaches the state.
#[derive(Debug)]
pub enum Access {
    /// Through the owner's control socket.
    Owner(Client),
    /// In-process: this process owns the state while it holds the lock.
    Owned(StateLock),
}

/// Finds the state's owner on the control socket, or becomes the owner, waiting up to
/// `wait` while the lock is held by a process that does not answer (see the module
/// docs). Fails with [`ControlError::OwnerSilent`] after that, and at once with
/// [`ControlError::Denied`] when the socket refuses the caller and the lock is held or
/// refuses it too.
pub fn reach(state: &Path, wait: Duration) -> Result<Access, ControlError> {
    let deadline = Instant::now() + wait;
    loop {
        let socket_refused = match Client::try_connect(state) {
            Ok(client) => return Ok(Access::Owner(client)),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Some(e),
            Err(_) => None,
        };
        match (StateLock::acquire(state), socket_refused) {
            (Ok(lock), _) => return Ok(Access::Owned(lock)),
            (Err(ControlError::Busy(_)), Some(source)) => {
                return Err(denied(state, access::Refused::Socket, source));
            }
            (Err(ControlError::Busy(path)), None) => {
                if Instant::now() >= deadline {
                    return Err(ControlError::OwnerSilent { path, waited: wait });
                }
                std::thread::sleep(OWNER_POLL);
            }
            (Err(e), _) => return Err(e),
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

/// A connection to a running daemon.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    path: PathBuf,
}

impl Client {
    /// Connects if a daemon listens on the state directory's socket.
    pub fn connect(state: &Path) -> Option<Self> {
        Self::try_connect(state).ok()
    }

    /// Connects to the state directory's socket; the error says why not (no socket, no
    /// listener, permission denied).
    pub fn try_connect(state: &Path) -> io::Result<Self> {
        let path = socket_path(state);
        UnixStream::connect(&path).map(|stream| Self { stream, path })
    }

    /// Sends one request and waits for the reply, reporting progress lines.
    ///
    /// A connection closed before any line came back is [`ControlError::Unanswered`]. An
    /// owner stops only between requests (the daemon and the serve loop look at their stop
    /// signal between two polls of the socket), so a stopping owner never executed it:
    /// the request may be sent again to the next owner.
    pub fn call(
        self,
        req: &Request,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Reply, ControlError> {
        let io_err = |source| ControlError::Io {
            path: self.path.clone(),
            source,
        };
        let unanswered = |source: Option<io::Error>| ControlError::Unanswered {
            path: self.path.clone(),
            source,
        };
        let closed = |e: &io::Error| {
            matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            )
        };
        let mut text = serde_json::to_string(req).map_err(ControlError::BadReply)?;
        text.push('\n');
        if let Err(e) = (&self.stream).write_all(text.as_bytes()) {
            return Err(if closed(&e) {
                unanswered(Some(e))
            } else {
                io_err(e)
            });
        }
        let reader = BufReader::new(&self.stream);
        let mut answered = false;
        for line in reader.lines() {
            let line = match line {
                Ok(l) => l,
                Err(e) if !answered && closed(&e) => return Err(unanswered(Some(e))),
                Err(e) => return Err(io_err(e)),
            };
            answered = true;
            match serde_json::from_str::<Line>(&line).map_err(ControlError::BadReply)? {
                Line::Progress([d, t]) => progress(d, t),
                Line::Ok(reply) => return Ok(*reply),
                Line::Error(chain) => return Err(ControlError::Remote(chain)),
            }
        }
        Err(if answered {
            ControlError::NoReply
        } else {
            unanswered(None)
        })
    }
}

#[cfg(test)]
mod tests;
