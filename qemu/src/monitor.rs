//! A minimal client for a card's QEMU human monitor (HMP) on a unix socket, used for one
//! thing: when a wait times out, ask the VM where its CPU is (`info registers`, the next
//! instructions), so a card that went silent says whether it spins in the old kernel, in
//! kexec's purgatory, in the decompressor or in the new kernel.
//!
//! ```text
//! connect → read banner up to "(qemu) " → "CMD\n" → read up to the next "(qemu) "
//!         → drop the echoed command line and terminal escapes → text
//! ```
//!
//! Not here: QMP (JSON), changing VM state, or any command that is not read-only.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The monitor's prompt.
const PROMPT: &str = "(qemu) ";
/// Longest unix socket path (sun_path is 108 bytes with its NUL; keep a margin).
pub const MAX_SOCKET_PATH: usize = 100;

/// A failed monitor query.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// Connecting, writing or reading the socket failed.
    #[error("QEMU monitor {socket}: {action} failed (is the VM still running?)")]
    Io {
        /// The socket.
        socket: PathBuf,
        /// What was attempted.
        action: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// No prompt came back in time.
    #[error("QEMU monitor {socket}: no prompt within {secs:.1} s after {what}")]
    NoPrompt {
        /// The socket.
        socket: PathBuf,
        /// What was waited for.
        what: String,
        /// The wait.
        secs: f64,
    },
}

/// Runs one read-only HMP `command` on the monitor at `socket` and returns its output.
pub fn query(socket: &Path, command: &str, timeout: Duration) -> Result<String, MonitorError> {
    let io = |action: &'static str| {
        let socket = socket.to_path_buf();
        move |source| MonitorError::Io {
            socket,
            action,
            source,
        }
    };
    let deadline = Instant::now() + timeout;
    let mut s = UnixStream::connect(socket).map_err(io("connect"))?;
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(io("set a read timeout"))?;
    read_to_prompt(&mut s, socket, "connecting", deadline)?;
    s.write_all(format!("{command}\n").as_bytes())
        .map_err(io("write the command"))?;
    let out = read_to_prompt(&mut s, socket, command, deadline)?;
    Ok(clean(&out, command))
}

fn read_to_prompt(
    s: &mut UnixStream,
    socket: &Path,
    what: &str,
    deadline: Instant,
) -> Result<String, MonitorError> {
    let started = Instant::now();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if String::from_utf8_lossy(&buf).ends_with(PROMPT) {
            return Ok(String::from_utf8_lossy(&buf).into_owned());
        }
        if Instant::now() >= deadline {
            return Err(MonitorError::NoPrompt {
                socket: socket.to_path_buf(),
                what: what.to_string(),
                secs: started.elapsed().as_secs_f64(),
            });
        }
        match s.read(&mut chunk) {
            Ok(0) => {
                return Err(MonitorError::Io {
                    socket: socket.to_path_buf(),
                    action: "read (the monitor closed the connection)",
                    source: std::io::ErrorKind::UnexpectedEof.into(),
                });
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(source) => {
                return Err(MonitorError::Io {
                    socket: socket.to_path_buf(),
                    action: "read",
                    source,
                });
            }
        }
    }
}

/// Strips terminal escapes and carriage returns, the echoed command and the prompt.
fn clean(raw: &str, command: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ params final-byte (0x40..=0x7e).
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if ('\x40'..='\x7e').contains(&d) {
                        break;
                    }
                }
            }
            continue;
        }
        if c != '\r' {
            out.push(c);
        }
    }
    let body = out.strip_suffix(PROMPT).unwrap_or(&out);
    body.lines()
        .filter(|l| !l.trim().is_empty() && !l.trim().ends_with(command))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The line with the instruction pointer of an `info registers` dump (`RIP=...`).
pub fn rip_line(registers: &str) -> Option<&str> {
    registers
        .lines()
        .find(|l| l.contains("RIP=") || l.contains("EIP="))
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A fake monitor: banner with escapes, echo with escapes, output, prompt.
    #[test]
    fn query_reads_one_command_and_cleans_it() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("m.sock");
        let l = UnixListener::bind(&sock).unwrap();
        let server = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            c.write_all(b"QEMU 7.2.0 monitor - type 'help' for more information\r\n(qemu) ")
                .unwrap();
            let mut cmd = [0u8; 64];
            let n = c.read(&mut cmd).unwrap();
            assert_eq!(&cmd[..n], b"info registers\n");
            c.write_all(b"i\x1b[K\x1b[Dinfo registers\r\nRAX=0 RBX=0\r\nRIP=ffffffff81000000 RFL=00000246\r\n(qemu) ")
                .unwrap();
        });
        let out = query(&sock, "info registers", Duration::from_secs(5)).unwrap();
        server.join().unwrap();
        assert_eq!(out, "RAX=0 RBX=0\nRIP=ffffffff81000000 RFL=00000246");
        assert_eq!(rip_line(&out), Some("RIP=ffffffff81000000 RFL=00000246"));
    }

    #[test]
    fn a_missing_monitor_or_a_silent_one_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("none.sock");
        let e = query(&sock, "info registers", Duration::from_secs(1)).unwrap_err();
        assert!(
            matches!(
                e,
                MonitorError::Io {
                    action: "connect",
                    ..
                }
            ),
            "{e}"
        );
        let l = UnixListener::bind(&sock).unwrap();
        let server = std::thread::spawn(move || {
            let (c, _) = l.accept().unwrap();
            std::thread::sleep(Duration::from_millis(800));
            drop(c);
        });
        let e = query(&sock, "info registers", Duration::from_millis(300)).unwrap_err();
        assert!(matches!(e, MonitorError::NoPrompt { .. }), "{e}");
        server.join().unwrap();
    }
}
