//! Fuzz target: the reassembly of fragmented control messages.
//!
//! The input is a sequence of records `src ‖ type ‖ len:u16 ‖ payload[len]`; each record
//! becomes a frame with the `FRAGMENT` flag (valid CRC, so the reassembler itself is
//! reached) from MAC `02:..:src`, handed to a card-sized [`Reassembler`] 100 ms after the
//! previous one (so timeouts fire too). After every push the reassembler's memory must
//! stay within its stated bound; a completed message is decoded, and if it decodes it
//! must re-encode to exactly the reassembled bytes.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use shelfboot_proto::frag::{Limits, Reassembler};
use shelfboot_proto::frame::{Flags, Frame, Header, Link, MacAddr, MessageType, encode_frame};
use shelfboot_proto::{DEFAULT_ETHERTYPE, MAX_FRAME_LEN};

fuzz_target!(|data: &[u8]| {
    let mut r = Reassembler::new(Limits::CARD);
    let t0 = Instant::now();
    let mut rest = data;
    let mut i = 0u32;
    let mut buf = vec![0u8; MAX_FRAME_LEN];
    while let [src, code, hi, lo, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
        let (payload, next) = tail.split_at(len);
        rest = next;
        i += 1;
        let Some(t) = MessageType::from_code(*code).filter(|t| t.is_control()) else {
            continue;
        };
        let link = Link {
            dst: MacAddr([2, 0, 0, 0, 0, 1]),
            src: MacAddr([2, 0, 0, 0, 0, *src]),
            ethertype: DEFAULT_ETHERTYPE,
        };
        let h = Header {
            flags: Flags::FRAGMENT,
            ..Header::new(t, 1, i)
        };
        let Ok(n) = encode_frame(&mut buf, &link, &h, payload) else {
            continue;
        };
        let frame = Frame::decode(&buf[..n], DEFAULT_ETHERTYPE).expect("own frame decodes");
        let now = t0 + Duration::from_millis(100 * u64::from(i));
        if let Ok(Some(whole)) = r.push(now, &frame) {
            if let Ok(msg) = whole.decode() {
                let again = msg.encode_long_body().expect("accepted message re-encodes");
                assert_eq!(again, whole.body, "accepted body is not canonical");
            }
        }
        assert!(
            r.memory_bytes() <= r.limits().memory_bound(),
            "reassembly memory {} over the bound {}",
            r.memory_bytes(),
            r.limits().memory_bound()
        );
        assert!(r.partials() <= r.limits().max_partials);
    }
});
