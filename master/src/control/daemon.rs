//! The daemon side of the control socket: who may connect, how a request is read and how
//! the reply is written.
//!
//! Two ways to serve:
//! * blocking ([`Daemon::serve_one`]): accept one client, read its request line, answer;
//! * inside an event loop ([`Daemon::set_nonblocking`] + [`Daemon::poll_once`]): the
//!   daemon's file descriptor ([`AsFd`]) is an epoll set holding the listener *and* every
//!   connection whose request line is still incomplete, so the caller's `poll` wakes for a
//!   new client and for request bytes alike. A client that connects and sends nothing
//!   never blocks the loop (the backplane keeps being served); it is dropped with an
//!   error line once its timeout ([`CLIENT_TIMEOUT`] by default) has passed (checked at the next wake-up), and at
//!   most [`MAX_PENDING`] such clients wait at once.
//!
//! Executing a request still runs to completion in the caller's thread (an import blocks
//! the loop for its duration, about 1.3 s per 100 MiB); replies are written blocking with
//! a [`WRITE_TIMEOUT`].
//!
//! This module does not parse or execute requests (see [`super::ops`]).

use std::cell::RefCell;
use std::fs;
use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{UnixCredentials, getsockopt, sockopt::PeerCredentials};
use nix::sys::stat::{Mode, umask};
use nix::unistd::{Gid, Group, Uid, chown, geteuid};

use super::{
    Backplane, CLIENT_TIMEOUT, ControlError, Line, MAX_REQUEST, Request, access, execute,
    socket_path,
};
use crate::state::{FleetOrder, Master};
use crate::store::Store;

/// Connections with an incomplete request line the event-loop daemon keeps at once; a
/// client beyond that is told the daemon is busy.
pub const MAX_PENDING: usize = 16;
/// How long writing one reply line may block on a client that does not read.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// What one [`Daemon::poll_once`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Polled {
    /// Requests executed (whether they succeeded or not).
    pub executed: u32,
    /// Fleet orders those requests made, oldest first, for the caller to send.
    pub orders: Vec<FleetOrder>,
}

/// Who may talk to the daemon.
#[derive(Debug, Clone, Copy)]
pub(super) struct Policy {
    pub(super) uid: Uid,
    pub(super) group: Option<Gid>,
}

impl Policy {
    pub(super) fn allows(&self, uid: u32, gid: u32) -> bool {
        uid == 0 || uid == self.uid.as_raw() || self.group.is_some_and(|g| g.as_raw() == gid)
    }
}

/// A client whose request line has not fully arrived (event-loop mode).
#[derive(Debug)]
struct Pending {
    stream: UnixStream,
    cred: UnixCredentials,
    buf: Vec<u8>,
    since: Instant,
}

/// What a non-blocking read of a pending client found.
enum ReadState {
    /// A whole line (without its newline).
    Line(Vec<u8>),
    /// More bytes are needed.
    Waiting,
    /// The client closed before sending a whole line.
    Closed,
    /// The line is longer than [`MAX_REQUEST`].
    TooLong,
}

/// The daemon's listening socket.
#[derive(Debug)]
pub struct Daemon {
    listener: UnixListener,
    path: PathBuf,
    policy: Policy,
    /// The listener and every pending connection, level-triggered for input.
    epoll: Epoll,
    pending: RefCell<Vec<Pending>>,
    client_timeout: Duration,
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
            Err(e) if e.kind() == ErrorKind::NotFound => {}
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
        let sys = |e: nix::Error| ControlError::Bind {
            path: path.clone(),
            source: e.into(),
        };
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(sys)?;
        epoll
            .add(&listener, EpollEvent::new(EpollFlags::EPOLLIN, 0))
            .map_err(sys)?;
        Ok(Self {
            listener,
            path,
            policy: Policy {
                uid: geteuid(),
                group: gid,
            },
            epoll,
            pending: RefCell::new(Vec::new()),
            client_timeout: CLIENT_TIMEOUT,
        })
    }

    /// How long a client may take to send its request line (default [`CLIENT_TIMEOUT`]).
    pub fn with_client_timeout(mut self, timeout: Duration) -> Self {
        self.client_timeout = timeout;
        self
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Clients waiting with an incomplete request (event-loop mode).
    pub fn pending(&self) -> usize {
        self.pending.borrow().len()
    }

    fn io_err(&self, source: io::Error) -> ControlError {
        ControlError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Accepts and serves one connection, blocking until its request line arrives (at
    /// most [`CLIENT_TIMEOUT`]). Errors of one client are logged, not returned.
    pub fn serve_one<S: Store>(&self, master: &mut Master<S>) -> Result<(), ControlError> {
        let (stream, _) = self.listener.accept().map_err(|e| self.io_err(e))?;
        if let Err(e) = self.handle_blocking(stream, master) {
            log::warn!(
                "control client: {}",
                shelfboot_proto::report::error_chain(&e)
            );
        }
        Ok(())
    }

    /// For an event loop that also polls other sockets (the backplane service): switches
    /// the listener to non-blocking mode, so [`Daemon::poll_once`] never waits for a
    /// client.
    pub fn set_nonblocking(&self) -> Result<(), ControlError> {
        self.listener
            .set_nonblocking(true)
            .map_err(|e| self.io_err(e))
    }

    /// Accepts every waiting client, reads what the pending ones sent, and executes each
    /// request that is complete. Never waits for a client (after
    /// [`Daemon::set_nonblocking`]). Returns how many requests were executed and the fleet
    /// orders they made (only with [`Backplane::Served`]).
    pub fn poll_once<S: Store>(
        &self,
        master: &mut Master<S>,
        backplane: Backplane,
    ) -> Result<Polled, ControlError> {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if let Err(e) = self.admit(stream) {
                        log::warn!(
                            "control client: {}",
                            shelfboot_proto::report::error_chain(&e)
                        );
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(self.io_err(e)),
            }
        }
        let now = Instant::now();
        let waiting = std::mem::take(&mut *self.pending.borrow_mut());
        let mut kept = Vec::with_capacity(waiting.len());
        let mut polled = Polled::default();
        for mut p in waiting {
            let state = read_available(&mut p.stream, &mut p.buf);
            if !matches!(state, Ok(ReadState::Waiting))
                || now.saturating_duration_since(p.since) >= self.client_timeout
            {
                let _ = self.epoll.delete(&p.stream);
            }
            let result = match state {
                Ok(ReadState::Line(line)) => {
                    polled.executed += 1;
                    let (order, written) = self.answer(p.stream, p.cred, &line, master, backplane);
                    polled.orders.extend(order);
                    written
                }
                Ok(ReadState::Waiting)
                    if now.saturating_duration_since(p.since) < self.client_timeout =>
                {
                    kept.push(p);
                    continue;
                }
                Ok(ReadState::Waiting) => refuse(
                    &p.stream,
                    &format!(
                        "no request line within {} ms; the master daemon closed the connection",
                        self.client_timeout.as_millis()
                    ),
                ),
                Ok(ReadState::TooLong) => refuse(
                    &p.stream,
                    &format!("control request longer than {MAX_REQUEST} bytes"),
                ),
                Ok(ReadState::Closed) => Ok(()),
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                log::warn!(
                    "control client pid {}: {}",
                    p.cred.pid(),
                    shelfboot_proto::report::error_chain(&self.io_err(e))
                );
            }
        }
        // Requests executed above may not add pending clients (only `admit` does), so
        // the survivors are put back as they were.
        self.pending.borrow_mut().extend(kept);
        Ok(polled)
    }

    /// Checks a new client's credentials and queues it for its request line.
    fn admit(&self, stream: UnixStream) -> Result<(), ControlError> {
        let cred = getsockopt(&stream, PeerCredentials).map_err(|e| self.io_err(e.into()))?;
        if let Some(msg) = self.refusal(&cred) {
            return refuse(&stream, &msg).map_err(|e| self.io_err(e));
        }
        if self.pending.borrow().len() >= MAX_PENDING {
            log::warn!(
                "control client pid {} refused: {MAX_PENDING} clients are already waiting",
                cred.pid()
            );
            let msg =
                format!("the master daemon is busy ({MAX_PENDING} control clients waiting); retry");
            return refuse(&stream, &msg).map_err(|e| self.io_err(e));
        }
        stream.set_nonblocking(true).map_err(|e| self.io_err(e))?;
        self.epoll
            .add(
                &stream,
                EpollEvent::new(
                    EpollFlags::EPOLLIN,
                    u64::try_from(stream.as_raw_fd()).unwrap_or(0),
                ),
            )
            .map_err(|e| self.io_err(e.into()))?;
        self.pending.borrow_mut().push(Pending {
            stream,
            cred,
            buf: Vec::new(),
            since: Instant::now(),
        });
        Ok(())
    }

    /// The refusal message for a peer the policy does not allow, logged. `SO_PEERCRED`
    /// carries only the primary gid, so a peer is also in the group when the group is one
    /// of its process's supplementary groups (`/proc/PID/status`, read while the peer
    /// is connected) or the group database lists its user in the group.
    fn refusal(&self, cred: &UnixCredentials) -> Option<String> {
        if self.policy.allows(cred.uid(), cred.gid()) {
            return None;
        }
        let peer = access::Person::lookup(cred.uid());
        let member = self.policy.group.is_some_and(|g| {
            access::process_groups(cred.pid()).contains(&g.as_raw())
                || access::listed_in_group(&peer, cred.gid(), g.as_raw())
        });
        if member {
            return None;
        }
        log::warn!(
            "refused control client pid {} uid {} gid {}",
            cred.pid(),
            cred.uid(),
            cred.gid()
        );
        let state = self.path.parent().unwrap_or(Path::new("/"));
        let mut facts = access::Facts::probe(state);
        facts.you = peer;
        facts.listed = false;
        facts.has_group = false;
        Some(
            access::Refusal {
                refused: access::Refused::Socket,
                facts,
            }
            .to_string(),
        )
    }

    /// Serves one client in blocking mode. Nothing sends fleet orders here: they are
    /// refused.
    fn handle_blocking<S: Store>(
        &self,
        stream: UnixStream,
        master: &mut Master<S>,
    ) -> Result<(), ControlError> {
        let cred = getsockopt(&stream, PeerCredentials).map_err(|e| self.io_err(e.into()))?;
        if let Some(msg) = self.refusal(&cred) {
            return refuse(&stream, &msg).map_err(|e| self.io_err(e));
        }
        stream
            .set_read_timeout(Some(self.client_timeout))
            .map_err(|e| self.io_err(e))?;
        let mut line = Vec::new();
        BufReader::new((&stream).take(MAX_REQUEST))
            .read_until(b'\n', &mut line)
            .map_err(|e| self.io_err(e))?;
        let (_, written) = self.answer(stream, cred, &line, master, Backplane::Unserved);
        written.map_err(|e| self.io_err(e))
    }

    /// Parses and executes one request line and writes the progress and reply lines.
    /// Returns the fleet order the request made (it stands even if the client is gone) and
    /// how writing the reply went.
    fn answer<S: Store>(
        &self,
        stream: UnixStream,
        cred: UnixCredentials,
        line: &[u8],
        master: &mut Master<S>,
        backplane: Backplane,
    ) -> (Option<FleetOrder>, io::Result<()>) {
        let blocking = stream
            .set_nonblocking(false)
            .and_then(|()| stream.set_write_timeout(Some(WRITE_TIMEOUT)));
        if let Err(e) = blocking {
            return (None, Err(e));
        }
        let req: Request = match serde_json::from_slice(line) {
            Ok(r) => r,
            Err(e) => {
                let msg = format!("malformed control request: {e}");
                return (None, refuse(&stream, &msg));
            }
        };
        log::info!("control request from uid {}: {}", cred.uid(), req.name());
        let mut progress_out = &stream;
        let mut last = 0u64;
        let mut progress = |done: u64, total: u64| {
            // At most ~100 progress lines per request; a vanished client is noticed at the
            // final write.
            if done == total || done.saturating_sub(last) >= (total / 100).max(1) {
                last = done;
                let _ = write_line(&mut progress_out, &Line::Progress([done, total]));
            }
        };
        let (order, line) = match execute(master, req, backplane, &mut progress) {
            Ok(outcome) => (outcome.order, Line::Ok(Box::new(outcome.reply))),
            Err(e) => {
                log::error!(
                    "control request failed: {}",
                    shelfboot_proto::report::error_chain(&e)
                );
                let chain = shelfboot_proto::report::causes(&e)
                    .map(|c| c.to_string())
                    .collect();
                (None, Line::Error(chain))
            }
        };
        (order, write_line(&mut &stream, &line))
    }

    /// Serves until SIGTERM or SIGINT arrives (read through a signalfd, so no handler
    /// runs asynchronously), then returns the signal; dropping the daemon then removes
    /// the socket. Blocks those signals in the calling thread.
    pub fn serve_until_signal<S: Store>(
        &self,
        master: &mut Master<S>,
    ) -> Result<Signal, ControlError> {
        let sys = |source: nix::Error| self.io_err(source.into());
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGTERM);
        mask.add(Signal::SIGINT);
        mask.thread_block().map_err(sys)?;
        let sfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(sys)?;
        self.set_nonblocking()?;
        loop {
            // With clients waiting, wake once a second to drop those past their timeout.
            let timeout = if self.pending() > 0 {
                PollTimeout::from(1000u16)
            } else {
                PollTimeout::NONE
            };
            let mut fds = [
                PollFd::new(self.as_fd(), PollFlags::POLLIN),
                PollFd::new(sfd.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(sys(e)),
            }
            let ready = |fd: &PollFd<'_>| fd.revents().is_some_and(|r| !r.is_empty());
            let sig_ready = ready(&fds[1]);
            if sig_ready && let Some(info) = sfd.read_signal().map_err(sys)? {
                let sig = i32::try_from(info.ssi_signo)
                    .ok()
                    .and_then(|n| Signal::try_from(n).ok())
                    .unwrap_or(Signal::SIGTERM);
                return Ok(sig);
            }
            self.poll_once(master, Backplane::Unserved)?;
        }
    }
}

/// Reads what a non-blocking client has sent so far, up to the end of the first line.
fn read_available(stream: &mut UnixStream, buf: &mut Vec<u8>) -> io::Result<ReadState> {
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(ReadState::Closed),
            Ok(n) => {
                let got = chunk.get(..n).unwrap_or_default();
                if let Some(end) = got.iter().position(|&b| b == b'\n') {
                    buf.extend_from_slice(got.get(..end).unwrap_or_default());
                    return Ok(if buf.len() as u64 > MAX_REQUEST {
                        ReadState::TooLong
                    } else {
                        ReadState::Line(std::mem::take(buf))
                    });
                }
                buf.extend_from_slice(got);
                if buf.len() as u64 > MAX_REQUEST {
                    return Ok(ReadState::TooLong);
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(ReadState::Waiting),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Answers a client with one error line (bounded by [`WRITE_TIMEOUT`]).
fn refuse(stream: &UnixStream, msg: &str) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    write_line(&mut &*stream, &Line::Error(vec![msg.to_owned()]))
}

impl AsFd for Daemon {
    /// The epoll set: readable when a client connects or a waiting client sent bytes.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.epoll.0.as_fd()
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
