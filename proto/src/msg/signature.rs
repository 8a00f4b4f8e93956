//! The signature field of signed messages (Plan, Command): 64 opaque bytes on the wire.
//!
//! This module only carries the bytes: making and checking signatures is [`crate::sign`].

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Length of a signature.
pub const SIGNATURE_LEN: usize = 64;

/// An Ed25519 signature. CBOR: a 64-byte string.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature(pub [u8; SIGNATURE_LEN]);

impl fmt::Debug for Signature {
    /// The first 32 bytes in hex: enough to tell two signatures apart in a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({}…)", hex::encode(&self.0[..32]))
    }
}

impl Serialize for Signature {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serde_bytes::serialize(&self.0, s)
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde_bytes::deserialize::<[u8; SIGNATURE_LEN], D>(d).map(Signature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_the_first_half_in_hex() {
        let mut b = [0u8; SIGNATURE_LEN];
        b[0] = 0xab;
        b[63] = 0xff;
        let text = format!("{:?}", Signature(b));
        assert_eq!(text, format!("Signature(ab{}…)", "00".repeat(31)));
    }
}
