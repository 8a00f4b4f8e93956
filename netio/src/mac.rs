//! Ethernet MAC addresses: parsing (`02:00:00:00:00:01`), printing, and the few
//! classifications the I/O layer needs (multicast, broadcast, locally administered).
//! It does not parse frames: that is the protocol crate's job.

use std::fmt;
use std::str::FromStr;

/// A 48-bit Ethernet MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// ff:ff:ff:ff:ff:ff
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    /// Group bit set (multicast or broadcast).
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }

    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }

    /// Locally administered bit set (what shelfboot uses for its group and simulated MACs).
    pub fn is_local(&self) -> bool {
        self.0[0] & 2 == 2
    }

    /// Destination MAC of an Ethernet frame, if it is long enough to have one.
    pub fn dst_of(frame: &[u8]) -> Option<MacAddr> {
        frame
            .get(0..6)
            .and_then(|b| <[u8; 6]>::try_from(b).ok())
            .map(MacAddr)
    }

    /// Source MAC of an Ethernet frame, if it is long enough to have one.
    pub fn src_of(frame: &[u8]) -> Option<MacAddr> {
        frame
            .get(6..12)
            .and_then(|b| <[u8; 6]>::try_from(b).ok())
            .map(MacAddr)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A string that is not six colon-separated hex octets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a MAC address: expected six hex octets like 02:00:00:00:00:01")]
pub struct ParseMacError {
    pub input: String,
}

impl FromStr for MacAddr {
    type Err = ParseMacError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseMacError {
            input: s.to_owned(),
        };
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in &mut out {
            let part = parts.next().ok_or_else(err)?;
            if part.is_empty() || part.len() > 2 {
                return Err(err());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print_round_trip() {
        let m: MacAddr = "02:00:0a:ff:00:01".parse().unwrap();
        assert_eq!(m.0, [2, 0, 0x0a, 0xff, 0, 1]);
        assert_eq!(m.to_string(), "02:00:0a:ff:00:01");
        assert_eq!("02-00-0A-FF-00-01".parse::<MacAddr>().unwrap(), m);
    }

    #[test]
    fn parse_rejects_malformed() {
        for bad in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:01:02",
            "02:00:00:00:00:1g",
            "002:0:0:0:0:0",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn classification() {
        assert!(MacAddr::BROADCAST.is_multicast() && MacAddr::BROADCAST.is_broadcast());
        let group = MacAddr([0x03, 0, 0, 0, 0, 1]);
        assert!(group.is_multicast() && group.is_local() && !group.is_broadcast());
        assert!(!MacAddr([0x02, 0, 0, 0, 0, 1]).is_multicast());
        let frame = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0x88, 0xb5];
        assert_eq!(MacAddr::dst_of(&frame), Some(MacAddr([1, 2, 3, 4, 5, 6])));
        assert_eq!(
            MacAddr::src_of(&frame),
            Some(MacAddr([7, 8, 9, 10, 11, 12]))
        );
        assert_eq!(MacAddr::src_of(&frame[..11]), None);
    }
}
