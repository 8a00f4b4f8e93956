//! An in-memory backplane for pure tests: [`MemHub`] is a software switch, [`MemPort`] a
//! [`FrameIo`] port on it, so protocol code can run many endpoints in one process
//! without root, namespaces or sockets.
//!
//! Delivery follows what the real stack shows the caller (bridge plus `PacketSocket`'s
//! filter): broadcast goes to every other port; multicast only to ports that joined the
//! group; unicast to the port(s) with that MAC (unknown unicast is dropped and counted,
//! where a real bridge would flood it); a frame never comes back to its sender. Each port
//! queue is bounded and overflow is counted, like a socket buffer. An optional drop
//! function models loss. It does not model timing, rates or reordering.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::config::ETH_HEADER_LEN;
use crate::io::FrameIo;
use shelfboot_proto::id::MacAddr;

/// Errors of the in-memory backplane.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemError {
    #[error("frame {index} of the batch is {len} bytes; port {port} takes 14..={max}")]
    FrameSize {
        port: MacAddr,
        index: usize,
        len: usize,
        max: usize,
    },
    #[error("{group} is not a multicast MAC; port {port} cannot join it")]
    NotMulticast { port: MacAddr, group: MacAddr },
    #[error("the in-memory hub's lock was poisoned by a panicking thread")]
    Poisoned,
}

/// Decides whether the hub drops a frame (true = drop). Sees every frame once.
pub type DropFn = Box<dyn FnMut(&[u8]) -> bool + Send>;

#[derive(Debug, Default)]
struct Port {
    mac: MacAddr,
    groups: Vec<MacAddr>,
    queue: VecDeque<Vec<u8>>,
    overflow: u64,
}

#[derive(Default)]
struct Hub {
    ports: Vec<Port>,
    drop_fn: Option<DropFn>,
    stats: HubStats,
}

/// Hub-wide counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HubStats {
    /// Frames sent into the hub.
    pub sent: u64,
    /// Copies queued at receiving ports.
    pub delivered: u64,
    /// Frames the drop function discarded.
    pub dropped: u64,
    /// Unicast frames to a MAC no port has.
    pub unknown_unicast: u64,
    /// Copies lost because a port's queue was full.
    pub overflow: u64,
}

/// A software switch shared by its ports (cheap to clone).
#[derive(Clone)]
pub struct MemHub {
    inner: Arc<(Mutex<Hub>, Condvar)>,
    queue_cap: usize,
    max_frame: usize,
}

impl std::fmt::Debug for MemHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemHub")
            .field("queue_cap", &self.queue_cap)
            .finish_non_exhaustive()
    }
}

impl Default for MemHub {
    fn default() -> Self {
        Self::new(4096, 1514)
    }
}

impl MemHub {
    /// A hub whose ports queue at most `queue_cap` frames of at most `max_frame` bytes.
    pub fn new(queue_cap: usize, max_frame: usize) -> Self {
        Self {
            inner: Arc::new((Mutex::new(Hub::default()), Condvar::new())),
            queue_cap,
            max_frame,
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, Hub>, MemError> {
        self.inner.0.lock().map_err(|_| MemError::Poisoned)
    }

    /// Add a port with MAC `mac`.
    pub fn port(&self, mac: MacAddr) -> Result<MemPort, MemError> {
        let mut hub = self.lock()?;
        hub.ports.push(Port {
            mac,
            ..Port::default()
        });
        Ok(MemPort {
            hub: self.clone(),
            index: hub.ports.len() - 1,
            mac,
        })
    }

    /// Install (or with `None` remove) a function that drops frames.
    pub fn set_drop(&self, f: Option<DropFn>) -> Result<(), MemError> {
        self.lock()?.drop_fn = f;
        Ok(())
    }

    pub fn stats(&self) -> Result<HubStats, MemError> {
        Ok(self.lock()?.stats)
    }
}

/// One port on a [`MemHub`].
#[derive(Debug)]
pub struct MemPort {
    hub: MemHub,
    index: usize,
    mac: MacAddr,
}

impl MemPort {
    /// Frames this port lost because its queue was full.
    pub fn overflow(&self) -> Result<u64, MemError> {
        Ok(self
            .hub
            .lock()?
            .ports
            .get(self.index)
            .map_or(0, |p| p.overflow))
    }
}

impl FrameIo for MemPort {
    type Error = MemError;

    fn mac(&self) -> MacAddr {
        self.mac
    }

    fn max_frame_len(&self) -> usize {
        self.hub.max_frame
    }

    fn send_batch(&mut self, frames: &[&[u8]]) -> Result<usize, MemError> {
        for (index, f) in frames.iter().enumerate() {
            if f.len() < ETH_HEADER_LEN || f.len() > self.hub.max_frame {
                let max = self.hub.max_frame;
                return Err(MemError::FrameSize {
                    port: self.mac,
                    index,
                    len: f.len(),
                    max,
                });
            }
        }
        let cap = self.hub.queue_cap;
        let mut hub = self.hub.lock()?;
        let hub = &mut *hub;
        for f in frames {
            hub.stats.sent += 1;
            if hub.drop_fn.as_mut().is_some_and(|drop| drop(f)) {
                hub.stats.dropped += 1;
                continue;
            }
            let dst = MacAddr::dst_of(f).unwrap_or_default();
            let mut matched = false;
            for (i, port) in hub.ports.iter_mut().enumerate() {
                let wanted = if dst.is_broadcast() {
                    true
                } else if dst.is_multicast() {
                    port.groups.contains(&dst)
                } else {
                    port.mac == dst
                };
                if !wanted || i == self.index {
                    continue;
                }
                matched = true;
                if port.queue.len() >= cap {
                    port.overflow += 1;
                    hub.stats.overflow += 1;
                } else {
                    port.queue.push_back(f.to_vec());
                    hub.stats.delivered += 1;
                }
            }
            if !matched && !dst.is_multicast() {
                hub.stats.unknown_unicast += 1;
            }
        }
        self.hub.inner.1.notify_all();
        Ok(frames.len())
    }

    fn recv_batch(
        &mut self,
        out: &mut dyn FnMut(&[u8], MacAddr),
        timeout: Duration,
    ) -> Result<usize, MemError> {
        let deadline = Instant::now() + timeout;
        let mut hub = self.hub.lock()?;
        loop {
            if hub
                .ports
                .get(self.index)
                .is_some_and(|p| !p.queue.is_empty())
            {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(0);
            }
            hub = self
                .hub
                .inner
                .1
                .wait_timeout(hub, left)
                .map_err(|_| MemError::Poisoned)?
                .0;
        }
        // Copy out under the lock, deliver without it (the callback may send).
        let frames: Vec<Vec<u8>> = match hub.ports.get_mut(self.index) {
            Some(p) => p.queue.drain(..p.queue.len().min(256)).collect(),
            None => Vec::new(),
        };
        drop(hub);
        for f in &frames {
            out(f, MacAddr::src_of(f).unwrap_or_default());
        }
        Ok(frames.len())
    }

    fn join(&mut self, group: MacAddr) -> Result<(), MemError> {
        if !group.is_multicast() {
            return Err(MemError::NotMulticast {
                port: self.mac,
                group,
            });
        }
        let mut hub = self.hub.lock()?;
        if let Some(p) = hub.ports.get_mut(self.index)
            && !p.groups.contains(&group)
        {
            p.groups.push(group);
        }
        Ok(())
    }

    fn leave(&mut self, group: MacAddr) -> Result<(), MemError> {
        let mut hub = self.hub.lock()?;
        if let Some(p) = hub.ports.get_mut(self.index) {
            p.groups.retain(|g| *g != group);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(dst: MacAddr, src: MacAddr, tag: u8) -> Vec<u8> {
        let mut f = dst.0.to_vec();
        f.extend_from_slice(&src.0);
        f.extend_from_slice(&[0x88, 0xb5, tag]);
        f
    }

    fn recv_tags(p: &mut MemPort) -> Vec<u8> {
        let mut tags = Vec::new();
        p.recv_batch(&mut |f, _| tags.push(f[14]), Duration::from_millis(1))
            .unwrap();
        tags
    }

    #[test]
    fn delivery_rules_match_the_real_stack() {
        let hub = MemHub::default();
        let mac = |n| MacAddr([2, 0, 0, 0, 0, n]);
        let group = MacAddr([3, 0, 0, 0, 0, 9]);
        let (mut a, mut b, mut c) = (
            hub.port(mac(1)).unwrap(),
            hub.port(mac(2)).unwrap(),
            hub.port(mac(3)).unwrap(),
        );
        b.join(group).unwrap();
        assert!(c.join(mac(7)).is_err());
        let frames = [
            frame(MacAddr::BROADCAST, mac(1), 1),
            frame(group, mac(1), 2),
            frame(mac(3), mac(1), 3),
            frame(mac(9), mac(1), 4),
        ];
        let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        assert_eq!(a.send_batch(&refs).unwrap(), 4);
        assert_eq!(
            recv_tags(&mut a),
            Vec::<u8>::new(),
            "a frame came back to its sender"
        );
        assert_eq!(recv_tags(&mut b), vec![1, 2]);
        assert_eq!(recv_tags(&mut c), vec![1, 3]);
        let st = hub.stats().unwrap();
        assert_eq!((st.sent, st.delivered, st.unknown_unicast), (4, 4, 1));
        b.leave(group).unwrap();
        a.send_batch(&[&frames[1]]).unwrap();
        assert!(recv_tags(&mut b).is_empty());
    }

    #[test]
    fn loss_overflow_and_sizes() {
        let hub = MemHub::new(2, 100);
        let mut a = hub.port(MacAddr([2, 0, 0, 0, 0, 1])).unwrap();
        let mut b = hub.port(MacAddr([2, 0, 0, 0, 0, 2])).unwrap();
        let f = frame(b.mac(), a.mac(), 0);
        assert!(a.send_batch(&[&f[..13]]).is_err());
        assert!(a.send_batch(&[&[0u8; 101]]).is_err());
        a.send_batch(&[&f, &f, &f]).unwrap();
        assert_eq!(b.overflow().unwrap(), 1);
        assert_eq!(recv_tags(&mut b).len(), 2);
        let mut n = 0u32;
        hub.set_drop(Some(Box::new(move |_| {
            n += 1;
            n.is_multiple_of(2)
        })))
        .unwrap();
        a.send_batch(&[&f, &f]).unwrap();
        assert_eq!(recv_tags(&mut b).len(), 1);
        assert_eq!(hub.stats().unwrap().dropped, 1);
    }

    #[test]
    fn recv_waits_for_a_sender_on_another_thread() {
        let hub = MemHub::default();
        let mut a = hub.port(MacAddr([2, 0, 0, 0, 0, 1])).unwrap();
        let mut b = hub.port(MacAddr([2, 0, 0, 0, 0, 2])).unwrap();
        let f = frame(b.mac(), a.mac(), 5);
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            a.send_batch(&[&f]).unwrap();
        });
        let mut got = Vec::new();
        let n = b
            .recv_batch(&mut |f, src| got.push((f[14], src)), Duration::from_secs(5))
            .unwrap();
        t.join().unwrap();
        assert_eq!(n, 1);
        assert_eq!(got, vec![(5, MacAddr([2, 0, 0, 0, 0, 1]))]);
        // and times out when nothing comes
        let start = Instant::now();
        assert_eq!(
            b.recv_batch(&mut |_, _| {}, Duration::from_millis(30))
                .unwrap(),
            0
        );
        assert!(start.elapsed() >= Duration::from_millis(25));
    }
}
