//! The resident agent against signed, forged, foreign and replayed commands, and the
//! pacing and addressing of its Alives.

use std::time::{Duration, Instant};

use shelfboot_proto::frame::{Link, MacAddr};
use shelfboot_proto::msg::{
    Action, CommandBody, Digest, Health, Heartbeat, Message, decode_frame, encode_message,
};
use shelfboot_proto::sign::{SigningKey, TrustAnchor};

use super::*;

const CARD: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x01]);
const MASTER: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0xaa]);
const OTHER_MASTER: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0xbb]);
const ET: u16 = shelfboot_proto::DEFAULT_ETHERTYPE;

fn key() -> SigningKey {
    SigningKey::from_seed(&[1u8; 32])
}

fn config() -> ResidentConfig {
    ResidentConfig {
        mac: CARD,
        ethertype: ET,
        anchor: TrustAnchor::new(vec![key().public_key()]),
        running: Some(Digest([4; 32])),
        persisted: true,
        epoch: 5,
        master: Some(MASTER),
        last_command: Some((5, 10)),
        alive_every: Duration::from_secs(2),
        health: Health::Checking,
        rolled_back_from: None,
        detail: String::new(),
    }
}

fn encode(src: MacAddr, dst: MacAddr, m: &Message) -> Vec<u8> {
    let mut buf = vec![0u8; shelfboot_proto::MAX_FRAME_LEN];
    let link = Link {
        dst,
        src,
        ethertype: ET,
    };
    let n = encode_message(&mut buf, &link, 0, 1, m).unwrap();
    buf.truncate(n);
    buf
}

fn command(k: &SigningKey, action: Action, target: Option<MacAddr>, stamp: (u64, u64)) -> Vec<u8> {
    let body = CommandBody {
        action,
        target,
        epoch: stamp.0,
        serial: stamp.1,
    };
    encode(
        MASTER,
        target.unwrap_or(MacAddr::BROADCAST),
        &Message::Command(k.sign_command(body).unwrap()),
    )
}

/// The Alives among `frames`, with their destination.
fn alives(frames: &[Vec<u8>]) -> Vec<(MacAddr, shelfboot_proto::msg::Alive)> {
    frames
        .iter()
        .map(|f| {
            let (_, m) = decode_frame(f, ET).unwrap();
            let dst = MacAddr(f[..6].try_into().unwrap());
            match m {
                Message::Alive(a) => (dst, a),
                other => panic!("the resident agent sent {other:?}"),
            }
        })
        .collect()
}

#[test]
fn alives_go_at_once_then_every_interval_to_the_master_with_the_running_set() {
    let t0 = Instant::now();
    let mut r = Resident::new(config(), t0);
    r.tick(t0);
    let a = alives(&r.drain());
    assert_eq!(a.len(), 1);
    let (dst, alive) = &a[0];
    assert_eq!(*dst, MASTER);
    assert_eq!(
        (
            alive.running,
            alive.persisted,
            alive.health,
            alive.epoch,
            alive.uptime,
            alive.dropped
        ),
        (Some(Digest([4; 32])), true, Health::Checking, 5, 0, 0)
    );
    r.tick(t0 + Duration::from_millis(1999));
    assert!(r.drain().is_empty());
    r.tick(t0 + Duration::from_secs(2));
    let a = alives(&r.drain());
    assert_eq!((a.len(), a[0].1.uptime), (1, 2));
    assert_eq!(r.next_deadline(), t0 + Duration::from_secs(4));
    assert_eq!(r.counters().alives, 2);
}

#[test]
fn a_health_change_is_reported_at_once_and_only_once() {
    let t0 = Instant::now();
    let mut r = Resident::new(config(), t0);
    r.tick(t0);
    r.drain();
    r.set_health(t0, Health::Healthy, "");
    let a = alives(&r.drain());
    assert_eq!(a[0].1.health, Health::Healthy);
    r.set_health(t0, Health::Healthy, "");
    assert!(r.drain().is_empty(), "no change, no extra Alive");
    r.rolled_back(t0, Digest([4; 32]), "health check failed");
    let a = alives(&r.drain());
    assert_eq!(
        (
            a[0].1.health,
            a[0].1.rolled_back_from,
            a[0].1.detail.as_str()
        ),
        (
            Health::Unhealthy,
            Some(Digest([4; 32])),
            "health check failed"
        )
    );
}

#[test]
fn without_a_master_alives_are_broadcast_until_a_heartbeat_names_one() {
    let t0 = Instant::now();
    let mut r = Resident::new(
        ResidentConfig {
            master: None,
            epoch: 0,
            ..config()
        },
        t0,
    );
    r.tick(t0);
    assert_eq!(alives(&r.drain())[0].0, MacAddr::BROADCAST);
    let hb = |epoch| {
        Message::Heartbeat(Heartbeat {
            master_id: 1,
            epoch,
        })
    };
    r.handle_frame(t0, &encode(OTHER_MASTER, MacAddr::BROADCAST, &hb(3)));
    r.tick(t0 + Duration::from_secs(2));
    assert_eq!(alives(&r.drain())[0].0, OTHER_MASTER);
    // An older epoch does not take the Alives away from the newer master.
    r.handle_frame(t0, &encode(MASTER, MacAddr::BROADCAST, &hb(2)));
    r.tick(t0 + Duration::from_secs(4));
    assert_eq!(alives(&r.drain())[0].0, OTHER_MASTER);
}

#[test]
fn a_signed_newer_command_for_us_or_all_is_one_order_and_its_copies_are_not() {
    let t0 = Instant::now();
    let mut r = Resident::new(config(), t0);
    let warm = command(&key(), Action::WarmBoot, None, (5, 11));
    r.handle_frame(t0, &warm);
    assert_eq!(
        r.take_order(),
        Some(Order {
            action: Action::WarmBoot,
            stamp: (5, 11)
        })
    );
    r.handle_frame(t0, &warm);
    r.handle_frame(t0, &command(&key(), Action::Reset, Some(CARD), (6, 1)));
    assert_eq!(
        r.take_order(),
        None,
        "one order per hand-off: the card is resetting"
    );
    assert_eq!(r.last_command(), Some((5, 11)));
    assert_eq!(r.counters().commands, 1);
}

#[test]
fn forged_foreign_and_replayed_commands_are_dropped_counted_and_reported() {
    let t0 = Instant::now();
    let mut r = Resident::new(config(), t0);
    let stranger = SigningKey::from_seed(&[9u8; 32]);
    // Forged: a key the anchor does not hold.
    r.handle_frame(t0, &command(&stranger, Action::Reset, None, (9, 1)));
    // Another card's.
    r.handle_frame(
        t0,
        &command(
            &key(),
            Action::Reset,
            Some(MacAddr([2, 0, 0, 0, 0, 9])),
            (9, 2),
        ),
    );
    // Replayed: the stamp on flash, an older serial, and an epoch below the plan's.
    r.handle_frame(t0, &command(&key(), Action::Reset, None, (5, 10)));
    r.handle_frame(t0, &command(&key(), Action::Reset, None, (5, 3)));
    r.handle_frame(t0, &command(&key(), Action::Reset, None, (4, 99)));
    // Tampered: a valid command with its action changed after signing.
    let mut tampered = command(&key(), Action::Reset, None, (9, 3));
    let at = tampered
        .windows(5)
        .position(|w| w == b"reset")
        .expect("the action text is in the frame");
    tampered[at..at + 5].copy_from_slice(b"rxset");
    r.handle_frame(t0, &tampered);
    // Not a frame at all.
    r.handle_frame(t0, &[0u8; 20]);
    assert_eq!(r.take_order(), None);
    let c = *r.counters();
    assert_eq!(
        (
            c.dropped_forged,
            c.dropped_not_for_us,
            c.dropped_replayed,
            c.dropped_malformed,
            c.commands
        ),
        (1, 1, 3, 2, 0)
    );
    let sent = alives(&r.drain());
    assert_eq!(
        sent.len(),
        4,
        "one Alive at once per forged or replayed command"
    );
    assert_eq!(sent.last().unwrap().1.dropped, 4);
}
