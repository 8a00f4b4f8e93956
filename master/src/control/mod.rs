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
//!   a client that sends nothing for 30 s is dropped. One request at a time.
//!
//! This module does not format output (see [`crate::cli`]) and does not serve the
//! backplane (issue 4).

mod ops;

pub use ops::{Reply, Request, execute};

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::os::fd::AsFd;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::sys::stat::{Mode, umask};
use nix::unistd::{Gid, Group, Uid, chown, geteuid};
use serde::{Deserialize, Serialize};

use crate::master::Master;

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
#[derive(Debug, Clone, Copy)]
struct Policy {
    uid: Uid,
    group: Option<Gid>,
}

impl Policy {
    fn allows(&self, uid: u32, gid: u32) -> bool {
        uid == 0 || uid == self.uid.as_raw() || self.group.is_some_and(|g| g.as_raw() == gid)
    }
}

/// The daemon's listening socket.
#[derive(Debug)]
pub struct Daemon {
    listener: UnixListener,
    path: PathBuf,
    policy: Policy,
}

impl Daemon {
    /// Binds `<state>/control.sock`. The caller holds the state lock, so a socket file
    /// already there is stale and is replaced.
    pub fn bind(state: &Path, group: Option<&str>) -> Result<Self, ControlError> {
        let path = socket_path(state);
        let gid = match group {
            Some(name) => Some(
                Group::from_name(name)
                    .ok()
                    .flatten()
                    .ok_or_else(|| ControlError::UnknownGroup(name.to_owned()))?
                    .gid,
            ),
            None => None,
        };
        match fs::remove_file(&path) {
            Ok(()) => log::info!("removed stale control socket {}", path.display()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(ControlError::Bind { path, source }),
        }
        // Create the socket with mode 0600 from the start (no window with a wider mode).
        let old = umask(Mode::from_bits_truncate(0o177));
        let bound = UnixListener::bind(&path);
        umask(old);
        let listener = bound.map_err(|source| ControlError::Bind {
            path: path.clone(),
            source,
        })?;
        if let Some(g) = gid {
            let perm = |source| ControlError::Permissions {
                path: path.clone(),
                source,
            };
            chown(&path, None, Some(g)).map_err(|e| perm(io::Error::from(e)))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o660)).map_err(perm)?;
        }
        Ok(Self {
            listener,
            path,
            policy: Policy {
                uid: geteuid(),
                group: gid,
            },
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts and serves one connection. Errors of one client are logged, not returned.
    pub fn serve_one(&self, master: &mut Master) -> Result<(), ControlError> {
        let (stream, _) = self.listener.accept().map_err(|source| ControlError::Io {
            path: self.path.clone(),
            source,
        })?;
        if let Err(e) = self.handle(stream, master) {
            log::warn!("control client: {}", crate::error_chain(&e).join(": "));
        }
        Ok(())
    }

    /// For an event loop that also polls other sockets (the backplane service): switches
    /// the listener to non-blocking mode, so [`Daemon::poll_once`] never waits.
    pub fn set_nonblocking(&self) -> Result<(), ControlError> {
        self.listener
            .set_nonblocking(true)
            .map_err(|source| ControlError::Io {
                path: self.path.clone(),
                source,
            })
    }

    /// Serves one pending connection if there is one (after [`Daemon::set_nonblocking`]).
    /// Returns whether a client was served. The request itself is handled blocking.
    pub fn poll_once(&self, master: &mut Master) -> Result<bool, ControlError> {
        match self.listener.accept() {
            Ok((stream, _)) => {
                let served = stream
                    .set_nonblocking(false)
                    .map_err(|source| ControlError::Io {
                        path: self.path.clone(),
                        source,
                    });
                match served.and_then(|()| self.handle(stream, master)) {
                    Ok(()) => {}
                    Err(e) => log::warn!("control client: {}", crate::error_chain(&e).join(": ")),
                }
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(source) => Err(ControlError::Io {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// Serves until SIGTERM or SIGINT arrives (read through a signalfd, so no handler
    /// runs asynchronously), then returns the signal; dropping the daemon then removes
    /// the socket. Blocks those signals in the calling thread.
    pub fn serve_until_signal(&self, master: &mut Master) -> Result<Signal, ControlError> {
        let sys = |source: nix::Error| ControlError::Io {
            path: self.path.clone(),
            source: source.into(),
        };
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGTERM);
        mask.add(Signal::SIGINT);
        mask.thread_block().map_err(sys)?;
        let sfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(sys)?;
        self.set_nonblocking()?;
        loop {
            let mut fds = [
                PollFd::new(self.listener.as_fd(), PollFlags::POLLIN),
                PollFd::new(sfd.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(sys(e)),
            }
            let ready = |fd: &PollFd<'_>| fd.revents().is_some_and(|r| !r.is_empty());
            let (sock_ready, sig_ready) = (ready(&fds[0]), ready(&fds[1]));
            if sig_ready && let Some(info) = sfd.read_signal().map_err(sys)? {
                let sig = i32::try_from(info.ssi_signo)
                    .ok()
                    .and_then(|n| Signal::try_from(n).ok())
                    .unwrap_or(Signal::SIGTERM);
                return Ok(sig);
            }
            if sock_ready {
                self.poll_once(master)?;
            }
        }
    }

    fn handle(&self, stream: UnixStream, master: &mut Master) -> Result<(), ControlError> {
        let io_err = |source| ControlError::Io {
            path: self.path.clone(),
            source,
        };
        let cred = getsockopt(&stream, PeerCredentials).map_err(|e| io_err(e.into()))?;
        let mut out = stream.try_clone().map_err(io_err)?;
        if !self.policy.allows(cred.uid(), cred.gid()) {
            log::warn!(
                "refused control client pid {} uid {} gid {}",
                cred.pid(),
                cred.uid(),
                cred.gid()
            );
            let msg = format!(
                "permission denied: uid {} may not use the master control socket (root, uid {}{} only)",
                cred.uid(),
                self.policy.uid,
                self.policy
                    .group
                    .map(|g| format!(" or group {g}"))
                    .unwrap_or_default()
            );
            return write_line(&mut out, &Line::Error(vec![msg])).map_err(io_err);
        }
        stream
            .set_read_timeout(Some(CLIENT_TIMEOUT))
            .map_err(io_err)?;
        let mut line = String::new();
        BufReader::new(stream.take(MAX_REQUEST))
            .read_line(&mut line)
            .map_err(io_err)?;
        let req: Request = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => {
                let msg = vec![format!("malformed control request: {e}")];
                return write_line(&mut out, &Line::Error(msg)).map_err(io_err);
            }
        };
        log::info!("control request from uid {}: {}", cred.uid(), req.name());
        let mut progress_out = out.try_clone().map_err(io_err)?;
        let mut last = 0u64;
        let mut progress = |done: u64, total: u64| {
            // At most ~100 progress lines per request; a vanished client is noticed at the
            // final write.
            if done == total || done.saturating_sub(last) >= (total / 100).max(1) {
                last = done;
                let _ = write_line(&mut progress_out, &Line::Progress([done, total]));
            }
        };
        let result = execute(master, req, &mut progress);
        let line = match result {
            Ok(reply) => Line::Ok(Box::new(reply)),
            Err(e) => {
                let chain = crate::error_chain(&e);
                log::error!("control request failed: {}", chain.join(": "));
                Line::Error(chain)
            }
        };
        write_line(&mut out, &line).map_err(io_err)
    }
}

impl AsFd for Daemon {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.listener.as_fd()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

fn write_line(out: &mut impl Write, line: &Line) -> io::Result<()> {
    let mut text = serde_json::to_string(line).map_err(io::Error::other)?;
    text.push('\n');
    out.write_all(text.as_bytes())?;
    out.flush()
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
