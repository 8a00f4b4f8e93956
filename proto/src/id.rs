//! The identities every crate shares: a card's [`MacAddr`], a processor [`Arch`] and a
//! sha256 [`Digest`]. One type each, used on the wire, in the master's databases, in its
//! CLI and JSON, on the card's flash and in the logs.
//!
//! Each type prints and parses one text form (`Display` / `FromStr`) and serializes by the
//! format it meets: compact binary formats (CBOR on the wire, where serde reports
//! `is_human_readable() == false`) get the raw bytes, text formats (JSON, TOML) get the
//! text form. So the wire encoding is the one pinned by the golden-byte tests while the
//! master's manifests and `--json` output stay readable.
//!
//! This module parses no frames (see [`crate::frame`]) and hashes nothing but what
//! [`Digest::of`] is given.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

/// A 48-bit Ethernet MAC address: `02:00:00:00:00:01` as text, six bytes on the wire.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// ff:ff:ff:ff:ff:ff.
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    /// Whether the group bit is set (a multicast or the broadcast address).
    pub const fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }

    /// Whether this is the broadcast address.
    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }

    /// Whether the locally administered bit is set (shelfboot's group and simulated MACs).
    pub const fn is_local(&self) -> bool {
        self.0[0] & 2 == 2
    }

    /// Destination MAC of an Ethernet frame, if it is long enough to have one.
    pub fn dst_of(frame: &[u8]) -> Option<MacAddr> {
        frame.first_chunk::<6>().copied().map(MacAddr)
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
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A string that is not six colon- (or dash-) separated hex octets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a MAC address: expected six hex octets like 02:00:00:00:00:01")]
pub struct ParseMacError {
    /// The text that did not parse.
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
            if part.len() != 2 || !part.bytes().all(|c| c.is_ascii_hexdigit()) {
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

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            serde_bytes::serialize(&self.0, s)
        }
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            d.deserialize_str(FromStrVisitor::<MacAddr>::new("a MAC address"))
        } else {
            serde_bytes::deserialize::<[u8; 6], D>(d).map(MacAddr)
        }
    }
}

/// Processor architecture of a card and of a build. Text and CBOR: `x86_64`, `aarch64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Arch {
    /// x86-64.
    #[serde(rename = "x86_64")]
    X86_64,
    /// 64-bit ARM.
    #[serde(rename = "aarch64")]
    Aarch64,
}

impl Arch {
    /// Every architecture, in a stable order.
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Aarch64];

    /// The text form, as in `uname -m` and Rust target triples.
    pub const fn as_str(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no architecture shelfboot supports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a supported processor architecture: use x86_64 or aarch64")]
pub struct ParseArchError {
    /// The text that did not parse.
    pub input: String,
}

impl FromStr for Arch {
    type Err = ParseArchError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Arch::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| ParseArchError {
                input: s.to_owned(),
            })
    }
}

/// A sha256 digest: 64 lowercase hex digits as text, 32 bytes on the wire.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// Length in bytes.
    pub const LEN: usize = 32;
    /// Characters of [`Digest::short`].
    pub const SHORT_LEN: usize = 12;

    /// The sha256 of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(Sha256::digest(bytes).into())
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The first [`Digest::SHORT_LEN`] hex digits: how listings and logs name a digest.
    pub fn short(&self) -> String {
        let mut s = self.to_string();
        s.truncate(Self::SHORT_LEN);
        s
    }
}

impl From<[u8; 32]> for Digest {
    fn from(b: [u8; 32]) -> Self {
        Digest(b)
    }
}

impl From<Digest> for [u8; 32] {
    fn from(d: Digest) -> Self {
        d.0
    }
}

impl AsRef<[u8]> for Digest {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 64];
        hex::encode_to_slice(self.0, &mut buf).map_err(|_| fmt::Error)?;
        // `encode_to_slice` writes only ASCII hex digits.
        f.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A string that is not 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a sha256 digest: expected 64 hex digits")]
pub struct ParseDigestError {
    /// The text that did not parse.
    pub input: String,
}

impl FromStr for Digest {
    type Err = ParseDigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| ParseDigestError {
            input: s.to_owned(),
        })?;
        Ok(Digest(out))
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            serde_bytes::serialize(&self.0, s)
        }
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            d.deserialize_str(FromStrVisitor::<Digest>::new(
                "a sha256 digest (64 hex digits)",
            ))
        } else {
            serde_bytes::deserialize::<[u8; 32], D>(d).map(Digest)
        }
    }
}

/// Deserializes a text form through `FromStr`, keeping the parse error's message.
struct FromStrVisitor<T> {
    expecting: &'static str,
    _t: std::marker::PhantomData<T>,
}

impl<T> FromStrVisitor<T> {
    fn new(expecting: &'static str) -> Self {
        Self {
            expecting,
            _t: std::marker::PhantomData,
        }
    }
}

impl<T: FromStr<Err: fmt::Display>> Visitor<'_> for FromStrVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cbor<T: Serialize>(v: &T) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(v, &mut out).unwrap();
        out
    }

    #[test]
    fn mac_parses_prints_and_round_trips() {
        let m: MacAddr = "02:00:0a:ff:00:01".parse().unwrap();
        assert_eq!(m.0, [2, 0, 0x0a, 0xff, 0, 1]);
        assert_eq!(m.to_string(), "02:00:0a:ff:00:01");
        assert_eq!("02-00-0A-FF-00-01".parse::<MacAddr>().unwrap(), m);
        for bad in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:01:02",
            "02:00:00:00:00:1g",
            "002:0:0:0:0:0",
            "2:0:0:0:0:1",
            "+2:00:00:00:00:01",
        ] {
            let e = bad.parse::<MacAddr>().unwrap_err();
            assert!(e.to_string().contains("expected six hex octets"), "{bad:?}");
        }
    }

    #[test]
    fn mac_classification() {
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
        assert_eq!(MacAddr::dst_of(&frame[..5]), None);
    }

    #[test]
    fn mac_is_bytes_in_cbor_and_text_in_json() {
        let m = MacAddr([2, 0, 0, 0, 0, 3]);
        assert_eq!(cbor(&m), [0x46, 2, 0, 0, 0, 0, 3]);
        let back: MacAddr = ciborium::from_reader(&cbor(&m)[..]).unwrap();
        assert_eq!(back, m);
        assert_eq!(serde_json::to_string(&m).unwrap(), r#""02:00:00:00:00:03""#);
        let back: MacAddr = serde_json::from_str(r#""02:00:00:00:00:03""#).unwrap();
        assert_eq!(back, m);
        let e = serde_json::from_str::<MacAddr>(r#""02:00""#).unwrap_err();
        assert!(e.to_string().contains("not a MAC address"), "{e}");
    }

    #[test]
    fn arch_text_forms() {
        for a in Arch::ALL {
            assert_eq!(a.to_string().parse::<Arch>().unwrap(), a);
            assert_eq!(serde_json::to_string(&a).unwrap(), format!("\"{a}\""));
        }
        assert_eq!(cbor(&Arch::Aarch64), b"\x67aarch64");
        let e = "arm".parse::<Arch>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "\"arm\" is not a supported processor architecture: use x86_64 or aarch64"
        );
    }

    #[test]
    fn digest_text_bytes_and_hash() {
        // sha256("abc"), FIPS 180-2 appendix B.1.
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let d = Digest::of(b"abc");
        assert_eq!(d.to_string(), abc);
        assert_eq!(format!("{d:?}"), abc);
        assert_eq!(d.short(), "ba7816bf8f01");
        assert_eq!(abc.parse::<Digest>().unwrap(), d);
        assert_eq!(abc.to_uppercase().parse::<Digest>().unwrap(), d);
        for bad in ["", &abc[1..], &format!("{abc}0"), &abc.replace('a', "g")] {
            assert!(bad.parse::<Digest>().is_err(), "{bad:?}");
        }
        let c = cbor(&d);
        assert_eq!(&c[..2], [0x58, 0x20]);
        assert_eq!(&c[2..], d.as_bytes());
        assert_eq!(ciborium::from_reader::<Digest, _>(&c[..]).unwrap(), d);
        assert_eq!(serde_json::to_string(&d).unwrap(), format!("\"{abc}\""));
        assert_eq!(
            serde_json::from_str::<Digest>(&format!("\"{abc}\"")).unwrap(),
            d
        );
    }

    proptest::proptest! {
        #[test]
        fn digest_and_mac_text_round_trip(b in proptest::array::uniform32(0u8..), m in proptest::array::uniform6(0u8..)) {
            let d = Digest(b);
            proptest::prop_assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
            let mac = MacAddr(m);
            proptest::prop_assert_eq!(mac.to_string().parse::<MacAddr>().unwrap(), mac);
        }
    }
}
