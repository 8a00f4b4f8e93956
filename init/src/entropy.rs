//! The boot's randomness (the agent's Solicit nonce and backoff seed), drawn early, in
//! parallel with the module loads, instead of when the first Solicit is built.
//!
//! Why: at `/init` a kernel without a hardware RNG (no RDRAND, no virtio-rng: the QEMU
//! TCG lab) has not initialized its CRNG yet. The first read then waits for it: on Linux
//! ≥ 5.18 a `/dev/urandom` read runs the jitter-entropy loop, which credits about one bit
//! per timer tick, so ~256 ticks (≈ 1 s at HZ=250) of wall time, and `getrandom(2)` first
//! waits a second passively. Measured in the lab: 1.1-1.5 s before the first Solicit of
//! every cold boot (a kexec'd kernel gets a seed from the old one and does not wait).
//! The wait is bound to ticks, not CPU, so it overlaps well with module loading.
//!
//! How: [`start`] (after /dev is mounted) spawns one thread that reads one byte of
//! `/dev/urandom` (that starts the jitter loop at once) and then draws [`PREFETCH`] bytes
//! with `getrandom(2)` flags 0, which returns only from an initialized CRNG. [`fill`]
//! serves those bytes once each, in order; when they are used up, or the thread has not
//! delivered within [`WAIT`], or [`start`] was never called, it reads `/dev/urandom` as
//! before. Not here: what the bytes are for (the agent, [`crate::provision`]).

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::Duration;

/// Bytes drawn ahead: a nonce (16) and a seed (8) for the first conversation and two
/// restarted ones.
pub const PREFETCH: usize = 72;
/// Longest wait for the prefetch thread in [`fill`] before falling back to /dev/urandom.
pub const WAIT: Duration = Duration::from_secs(10);

type Drawn = Result<Vec<u8>, String>;

/// Bytes drawn by a background thread, served once each.
#[derive(Debug)]
pub struct Prefetch {
    rx: Option<Receiver<Drawn>>,
    bytes: Vec<u8>,
    used: usize,
}

impl Prefetch {
    /// Runs `draw` on its own thread; its bytes are served by [`Prefetch::take`].
    pub fn spawn(draw: impl FnOnce() -> Drawn + Send + 'static) -> Self {
        let (tx, rx) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("entropy".into())
            .spawn(move || {
                // The receiver may be gone (fell back already): nothing left to do.
                let _ = tx.send(draw());
            });
        if let Err(e) = &spawned {
            log::warn!("cannot start the entropy thread ({e}): drawing randomness when needed");
        }
        Self {
            rx: spawned.ok().map(|_| rx),
            bytes: Vec::new(),
            used: 0,
        }
    }

    /// Fills `buf` from the drawn bytes, waiting up to `wait` for them; `false` (buf
    /// untouched) if they failed, did not come in time or are used up.
    pub fn take(&mut self, buf: &mut [u8], wait: Duration) -> bool {
        if let Some(rx) = &self.rx {
            match rx.recv_timeout(wait) {
                Ok(Ok(b)) => {
                    self.bytes = b;
                    self.rx = None;
                }
                Ok(Err(e)) => {
                    log::warn!("early randomness failed: {e}");
                    self.rx = None;
                }
                Err(RecvTimeoutError::Timeout) => {
                    log::warn!("the kernel CRNG is still not ready after {wait:?}");
                    return false;
                }
                Err(RecvTimeoutError::Disconnected) => self.rx = None,
            }
        }
        let rest = &mut self.bytes[self.used..];
        if rest.len() < buf.len() {
            return false;
        }
        buf.copy_from_slice(&rest[..buf.len()]);
        // Served once: wipe what was handed out.
        rest[..buf.len()].fill(0);
        self.used += buf.len();
        true
    }
}

static EARLY: Mutex<Option<Prefetch>> = Mutex::new(None);
static URANDOM: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Starts drawing [`PREFETCH`] bytes in the background (see the module docs); `urandom`
/// is `/dev/urandom` under the mounted devtmpfs. Records the `entropy` boot step.
pub fn start(urandom: &Path) {
    let path = urandom.to_path_buf();
    if let Ok(mut u) = URANDOM.lock() {
        *u = Some(path.clone());
    }
    let p = Prefetch::spawn(move || {
        let t = crate::boottime::now();
        // The jitter loop below is always runnable: at nice 0 it would take half the
        // only CPU of a small card from the module loads (measured: they slowed ~2x).
        if let Err(e) = crate::sys::random::lowest_priority_for_this_thread() {
            log::warn!(
                "entropy thread keeps its priority: {}",
                shelfboot_proto::report::error_chain(&e)
            );
        }
        // Starts the kernel's jitter-entropy loop now (Linux >= 5.18) instead of after
        // getrandom's passive one-second wait; the byte itself is not used.
        let _ = std::fs::File::open(&path).and_then(|mut f| f.read_exact(&mut [0u8; 1]));
        let mut b = vec![0u8; PREFETCH];
        let r = crate::sys::random::getrandom(&mut b)
            .map_err(|e| shelfboot_proto::report::error_chain(&e));
        crate::boottime::step("entropy", t);
        r.map(|()| b)
    });
    if let Ok(mut g) = EARLY.lock() {
        *g = Some(p);
    }
}

/// Fills `buf` with random bytes: the early ones if [`start`] ran and some are left,
/// else a read of /dev/urandom.
pub fn fill(buf: &mut [u8]) -> std::io::Result<()> {
    let served = EARLY
        .lock()
        .ok()
        .and_then(|mut g| g.as_mut().map(|p| p.take(buf, WAIT)))
        .unwrap_or(false);
    if served {
        return Ok(());
    }
    let path = URANDOM
        .lock()
        .ok()
        .and_then(|u| u.clone())
        .unwrap_or_else(|| PathBuf::from("/dev/urandom"));
    std::fs::File::open(path).and_then(|mut f| f.read_exact(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drawn_bytes_are_served_once_in_order_then_exhausted() {
        let mut p = Prefetch::spawn(|| Ok((1..=10).collect()));
        let mut a = [0u8; 4];
        assert!(p.take(&mut a, Duration::from_secs(5)));
        assert_eq!(a, [1, 2, 3, 4]);
        let mut b = [0u8; 6];
        assert!(p.take(&mut b, Duration::ZERO));
        assert_eq!(b, [5, 6, 7, 8, 9, 10]);
        let mut c = [7u8; 1];
        assert!(!p.take(&mut c, Duration::ZERO), "used up");
        assert_eq!(c, [7], "untouched when not served");
        assert!(p.bytes.iter().all(|&x| x == 0), "served bytes are wiped");
    }

    #[test]
    fn a_failed_or_late_draw_is_not_served() {
        let mut p = Prefetch::spawn(|| Err("getrandom failed".into()));
        let mut a = [9u8; 2];
        assert!(!p.take(&mut a, Duration::from_secs(5)));
        assert_eq!(a, [9, 9]);
        let (tx, rx) = mpsc::channel::<()>();
        let mut late = Prefetch::spawn(move || {
            // Blocks until the test lets it go (bounded: the test drops tx at the end).
            let _ = rx.recv_timeout(Duration::from_secs(10));
            Ok(vec![1; 8])
        });
        assert!(
            !late.take(&mut a, Duration::from_millis(20)),
            "not yet drawn"
        );
        drop(tx);
        assert!(
            late.take(&mut a, Duration::from_secs(10)),
            "served once drawn"
        );
        assert_eq!(a, [1, 1]);
    }

    #[test]
    fn fill_without_start_reads_urandom() {
        let mut a = [0u8; 32];
        fill(&mut a).unwrap();
        assert!(a.iter().any(|&x| x != 0));
    }
}
