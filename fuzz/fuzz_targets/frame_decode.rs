//! Fuzz target: frame decoder, then the CBOR control decoder and the data header decoder,
//! with re-encode round trips wherever decoding succeeds.
//!
//! Each input is used four ways, because a random input almost never carries a valid
//! CRC-32 and libFuzzer cannot solve CRCs:
//! 1. as a raw Ethernet frame (`Frame::decode`, then message / data decoding);
//! 2. as `type byte ‖ CBOR body` straight into `Message::decode_body`;
//! 3. as a data payload straight into `DataView::from_payload`;
//! 4. as `type byte ‖ payload` wrapped into a frame with a correct CRC, then the full path.
//! Any accepted value must re-encode to exactly the accepted bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shelfboot_proto::data::{DataView, encode_data_frame};
use shelfboot_proto::frame::{
    FRAME_OVERHEAD, Frame, Header, Link, MacAddr, MessageType, encode_frame,
};
use shelfboot_proto::msg::{Message, decode_message, encode_message_with_header, reply_for};
use shelfboot_proto::{DEFAULT_ETHERTYPE, MAX_FRAME_LEN, describe_frame};

fuzz_target!(|data: &[u8]| {
    full_path(data);
    if let Some((&code, body)) = data.split_first() {
        if let Some(t) = MessageType::from_code(code) {
            if t.is_control() {
                if let Ok(msg) = Message::decode_body(t, body) {
                    let again = msg.encode_body().expect("accepted message re-encodes");
                    assert_eq!(again, body, "accepted body is not canonical");
                }
            }
            // 4. Wrap into a valid frame so the CRC gate is passed.
            let mut buf = vec![0u8; MAX_FRAME_LEN];
            let link = Link {
                dst: MacAddr::BROADCAST,
                src: MacAddr([2, 0, 0, 0, 0, 1]),
                ethertype: DEFAULT_ETHERTYPE,
            };
            if let Ok(n) = encode_frame(&mut buf, &link, &Header::new(t, 1, 2), body) {
                full_path(&buf[..n]);
            }
        }
    }
    if let Ok(view) = DataView::from_payload(7, data) {
        assert_eq!(view.data().len() + 20, data.len());
    }
});

/// Frame → message or data, with round trips.
fn full_path(bytes: &[u8]) {
    let _ = describe_frame(bytes);
    let frame = match Frame::decode(bytes, DEFAULT_ETHERTYPE) {
        Ok(f) => f,
        Err(e) => {
            if let Some((hdr, msg)) = reply_for(&e) {
                let mut buf = vec![0u8; MAX_FRAME_LEN];
                let link = Link {
                    dst: MacAddr::BROADCAST,
                    src: MacAddr([2, 0, 0, 0, 0, 1]),
                    ethertype: DEFAULT_ETHERTYPE,
                };
                let n =
                    encode_message_with_header(&mut buf, &link, &hdr, &msg).expect("reply encodes");
                let f = Frame::decode(&buf[..n], DEFAULT_ETHERTYPE).expect("reply decodes");
                assert_eq!(decode_message(&f).expect("reply body decodes"), msg);
            }
            return;
        }
    };
    let end = FRAME_OVERHEAD + frame.payload().len();
    let mut buf = vec![0u8; MAX_FRAME_LEN];
    let n = encode_frame(&mut buf, &frame.link(), &frame.header(), frame.payload())
        .expect("accepted frame re-encodes");
    assert!(n >= end);
    assert_eq!(&buf[..end], &bytes[..end], "frame re-encode differs");
    if frame.header().msg_type.is_control() {
        if let Ok(msg) = decode_message(&frame) {
            let m = encode_message_with_header(&mut buf, &frame.link(), &frame.header(), &msg)
                .expect("accepted message re-encodes");
            assert_eq!(
                &buf[..end],
                &bytes[..end],
                "message frame re-encode differs"
            );
            assert_eq!(m, frame_len(end));
        }
    } else if let Ok(view) = DataView::from_frame(&frame) {
        let m = encode_data_frame(
            &mut buf,
            &frame.link(),
            &frame.header(),
            &view.header(),
            view.data(),
        )
        .expect("accepted data frame re-encodes");
        assert_eq!(&buf[..end], &bytes[..end], "data frame re-encode differs");
        assert_eq!(m, frame_len(end));
    }
}

fn frame_len(end: usize) -> usize {
    end.max(shelfboot_proto::frame::MIN_ETH_FRAME_LEN)
}
