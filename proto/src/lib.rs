//! shelfboot wire protocol: framing, CBOR control messages, data frames, signatures (sans-IO).
