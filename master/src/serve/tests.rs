//! Pure tests of the service: frames in, frames out, against a real state directory with
//! the master's fixture release (no sockets).

use std::time::{Duration, Instant};

use shelfboot_proto::frame::{Link, MacAddr};
use shelfboot_proto::msg::{
    Arch, BootPhase, Digest, ErrorReason, Fetch, Message, Solicit, Verdict, decode_frame,
    encode_message,
};
use shelfboot_proto::sign::{SigningKey, TrustAnchor};

use super::{Service, ServiceConfig};
use crate::state::fixture;

const ET: u16 = shelfboot_proto::DEFAULT_ETHERTYPE;
const ME: MacAddr = MacAddr([0x02, 0x5b, 0, 0, 0, 0xaa]);

fn mac(s: &str) -> MacAddr {
    let v: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16).unwrap())
        .collect();
    MacAddr(v.try_into().unwrap())
}

fn service(dir: &std::path::Path, now: Instant) -> Service<crate::store::sqlite::SqliteStore> {
    service_with(dir, now, "")
}

/// A service over the fixture release plus `extra_toml` (classes, packages, overrides).
fn service_with(
    dir: &std::path::Path,
    now: Instant,
    extra_toml: &str,
) -> Service<crate::store::sqlite::SqliteStore> {
    service_on(dir, now, extra_toml, shelfboot_proto::STANDARD_MTU)
}

/// [`service_with`] on a port of MTU `link_mtu`.
fn service_on(
    dir: &std::path::Path,
    now: Instant,
    extra_toml: &str,
    link_mtu: u16,
) -> Service<crate::store::sqlite::SqliteStore> {
    let mut m = fixture::master(dir);
    let img = fixture::image(dir, "1.0.0", extra_toml, &fixture::vendor_key());
    m.import_from(img.as_slice(), true, &mut |_, _| {}).unwrap();
    let cfg = ServiceConfig {
        ethertype: ET,
        solicit_budget: 32,
        heartbeat: Duration::from_secs(1),
        link_mtu,
        join_window: Duration::from_millis(300),
        max_rate: 10_000_000,
        absence: Duration::from_secs(10),
    };
    Service::new(cfg, m, SigningKey::from_seed(&[5u8; 32]), ME, 3, now)
}

fn solicit(card: MacAddr, card_type: &str, slot: u16, digest: Option<Digest>, n: u8) -> Vec<u8> {
    let s = Solicit {
        mac: card,
        card_type: card_type.into(),
        arch: Arch::X86_64,
        shelf: 1,
        slot,
        hw_rev: "A".into(),
        features: vec![],
        phase: BootPhase::PowerOn,
        inventory: vec![],
        inventory_digest: digest,
        nonce: [n; 16],
        inventory_omitted: false,
        link_mtu: None,
    };
    frame(card, MacAddr::BROADCAST, &Message::Solicit(s))
}

fn frame(src: MacAddr, dst: MacAddr, m: &Message) -> Vec<u8> {
    let link = Link {
        dst,
        src,
        ethertype: ET,
    };
    let mut buf = vec![0u8; shelfboot_proto::MAX_FRAME_LEN];
    let n = encode_message(&mut buf, &link, 77, 1, m).unwrap();
    buf.truncate(n);
    buf
}

fn messages(frames: &[Vec<u8>]) -> Vec<(MacAddr, Message)> {
    frames
        .iter()
        .filter_map(|f| {
            let (_, m) = decode_frame(f, ET).ok()?;
            Some((MacAddr(f[..6].try_into().ok()?), m))
        })
        .collect()
}

#[test]
fn plans_are_signed_continue_when_the_digest_matches_else_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let mut svc = service(dir.path(), t0);
    let card = mac(fixture::N1);
    // Queued, not answered at once (only the start-up Advertise goes out).
    let out = messages(&svc.handle_frame(t0, &solicit(card, "lc100", 1, None, 1)));
    assert!(
        out.iter().all(|(_, m)| matches!(m, Message::Advertise(_))),
        "{out:?}"
    );
    let out = messages(&svc.tick(t0));
    let plan = out
        .iter()
        .find_map(|(d, m)| match m {
            Message::Plan(p) if *d == card => Some(p.clone()),
            _ => None,
        })
        .expect("a plan to the card");
    let anchor = TrustAnchor::new(vec![SigningKey::from_seed(&[5u8; 32]).public_key()]);
    anchor.verify_plan(&plan, &[1u8; 16]).unwrap();
    assert_eq!(plan.body.verdict, Verdict::Fetch);
    assert_eq!(plan.body.epoch, 3);
    // Same card, now holding the set: Continue.
    svc.handle_frame(t0, &solicit(card, "lc100", 1, Some(plan.body.digest), 2));
    let out = messages(&svc.tick(t0));
    assert!(
        out.iter()
            .any(|(_, m)| matches!(m, Message::Plan(p) if p.body.verdict == Verdict::Continue))
    );
    let st = svc.stats();
    assert_eq!((st.plans_fetch, st.plans_continue), (1, 1));
}

#[test]
fn unknown_card_gets_an_error_and_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let mut svc = service(dir.path(), t0);
    let card = mac("02:00:00:00:00:77");
    svc.handle_frame(t0, &solicit(card, "toaster", 40, None, 1));
    let out = messages(&svc.tick(t0));
    assert!(out.iter().any(|(d, m)| *d == card
        && matches!(m, Message::Error(e) if e.reason == ErrorReason::UnknownCard)));
    use crate::store::Store as _;
    let node = svc
        .master()
        .store()
        .node(&"02:00:00:00:00:77".parse().unwrap())
        .unwrap();
    assert!(node.is_some(), "the card is recorded as seen");
    assert_eq!(svc.stats().unknown_cards, 1);
}

#[test]
fn solicit_storm_is_served_fairly_and_repeats_cost_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let mut svc = service(dir.path(), t0);
    let cards: Vec<MacAddr> = (1..=40u8).map(|i| MacAddr([2, 0, 0, 1, 0, i])).collect();
    for (i, c) in cards.iter().enumerate() {
        let slot = u16::try_from(1 + i % 8).unwrap();
        svc.handle_frame(t0, &solicit(*c, "lc100", slot, None, 1));
        // A card that retries while queued keeps its place and is served once.
        svc.handle_frame(t0, &solicit(*c, "lc100", slot, None, 1));
    }
    assert_eq!(svc.queued_solicits(), 40);
    let first = messages(&svc.tick(t0));
    let plans = |v: &[(MacAddr, Message)]| {
        v.iter()
            .filter(|(_, m)| matches!(m, Message::Plan(_)))
            .count()
    };
    assert_eq!(
        plans(&first),
        40,
        "no transfer runs: every queued Solicit at once"
    );
    // A repeat of an answered Solicit is answered from the cache.
    let again = messages(&svc.handle_frame(t0, &solicit(cards[0], "lc100", 1, None, 1)));
    assert_eq!(plans(&again), 1);
    // While a transfer runs, Solicits are served one budget per tick.
    let plan = first
        .iter()
        .find_map(|(d, m)| match m {
            Message::Plan(p) if *d == cards[0] => Some(p.clone()),
            _ => None,
        })
        .unwrap();
    let fetch = Fetch {
        artifact: plan.body.artifacts[0].sha256,
        have_slices: 0,
    };
    svc.handle_frame(t0, &frame(cards[0], ME, &Message::Fetch(fetch)));
    let more: Vec<MacAddr> = (1..=40u8).map(|i| MacAddr([2, 0, 0, 2, 0, i])).collect();
    for (i, c) in more.iter().enumerate() {
        let slot = u16::try_from(1 + i % 8).unwrap();
        svc.handle_frame(t0, &solicit(*c, "lc100", slot, None, 1));
    }
    let second = messages(&svc.tick(t0));
    assert_eq!(plans(&second), 32, "one budget per tick during a transfer");
    let third = messages(&svc.tick(t0));
    assert_eq!(plans(&third), 8);
    let st = svc.stats();
    assert_eq!(
        (
            st.solicits_served,
            st.solicits_coalesced,
            st.solicits_repeated
        ),
        (80, 40, 1)
    );
}

#[test]
fn fetch_of_an_artifact_outside_the_plan_is_refused_inside_it_joins_a_session() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let mut svc = service(dir.path(), t0);
    let card = mac(fixture::N1);
    svc.handle_frame(t0, &solicit(card, "lc100", 1, None, 1));
    let plan = messages(&svc.tick(t0))
        .into_iter()
        .find_map(|(_, m)| match m {
            Message::Plan(p) => Some(p),
            _ => None,
        })
        .unwrap();
    let bad = Fetch {
        artifact: Digest([0x42; 32]),
        have_slices: 0,
    };
    assert!(messages(&svc.handle_frame(t0, &frame(card, ME, &Message::Fetch(bad)))).is_empty());
    let good = Fetch {
        artifact: plan.body.artifacts[0].sha256,
        have_slices: 0,
    };
    let out = messages(&svc.handle_frame(t0, &frame(card, ME, &Message::Fetch(good.clone()))));
    let join = out
        .iter()
        .find_map(|(_, m)| match m {
            Message::Join(j) => Some(j.clone()),
            _ => None,
        })
        .expect("a Join");
    assert_eq!(
        join.group.0[0], 0x03,
        "locally administered multicast group"
    );
    // A second card within the join window shares the session.
    let card2 = mac(fixture::N2);
    svc.handle_frame(t0, &solicit(card2, "lc100", 2, None, 1));
    svc.tick(t0);
    let out = messages(&svc.handle_frame(t0, &frame(card2, ME, &Message::Fetch(good))));
    assert!(
        out.iter()
            .any(|(_, m)| matches!(m, Message::Join(j) if j.transfer == join.transfer))
    );
    let st = svc.stats();
    assert_eq!((st.fetches, st.fetches_refused, st.joins), (3, 1, 2));
    assert_eq!(st.sessions.len(), 1);
}

/// One boot of `cards`: every card solicits (reporting `held` as its inventory), is
/// served, and sends Ready three times (as the agent does). Returns each card's plan.
fn boot_round(
    svc: &mut Service<crate::store::sqlite::SqliteStore>,
    cards: &[MacAddr],
    held: Option<&shelfboot_proto::msg::PlanBody>,
    nonce: u8,
    t0: Instant,
) -> Vec<shelfboot_proto::msg::PlanBody> {
    svc.begin_batch();
    for (i, c) in cards.iter().enumerate() {
        let slot = u16::try_from(1 + i % 8).unwrap();
        let s = Solicit {
            mac: *c,
            card_type: "lc100".into(),
            arch: Arch::X86_64,
            shelf: 1,
            slot,
            hw_rev: "A".into(),
            features: vec![],
            phase: BootPhase::WarmBoot,
            inventory: held.map(|p| p.artifacts.clone()).unwrap_or_default(),
            inventory_digest: held.map(|p| p.digest),
            nonce: [nonce; 16],
            inventory_omitted: false,
            link_mtu: None,
        };
        svc.handle_frame(t0, &frame(*c, MacAddr::BROADCAST, &Message::Solicit(s)));
    }
    let mut plans = Vec::new();
    while svc.queued_solicits() > 0 {
        for (_, m) in messages(&svc.tick(t0)) {
            if let Message::Plan(p) = m {
                plans.push(p.body);
            }
        }
    }
    for (c, p) in cards.iter().zip(&plans) {
        let ready = shelfboot_proto::msg::Ready {
            digest: p.digest,
            persisted: true,
            handoff: shelfboot_proto::msg::Handoff::Kexec,
        };
        for _ in 0..3 {
            svc.handle_frame(t0, &frame(*c, ME, &Message::Ready(ready.clone())));
        }
    }
    svc.commit();
    plans
}

/// The body of the first Plan the service sends at its next tick.
fn plan_sent(
    svc: &mut Service<crate::store::sqlite::SqliteStore>,
    t0: Instant,
) -> shelfboot_proto::msg::PlanBody {
    messages(&svc.tick(t0))
        .into_iter()
        .find_map(|(_, m)| match m {
            Message::Plan(p) => Some(p.body),
            _ => None,
        })
        .expect("a plan")
}

#[test]
fn ready_in_test_mode_marks_the_node_test_and_keeps_its_flash_inventory() {
    use crate::store::{NodeState, Store as _};
    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let mut svc = service(dir.path(), t0);
    let card = MacAddr([2, 0, 0, 3, 0, 1]);
    let plans = boot_round(&mut svc, &[card], None, 1, t0);
    let node = |svc: &Service<crate::store::sqlite::SqliteStore>| {
        svc.master().store().node(&card).unwrap().unwrap()
    };
    let flash = node(&svc).inventory;
    assert_eq!(flash.as_ref().and_then(|i| i.digest), Some(plans[0].digest));
    let pins = crate::state::parse_pins(&["debug-tools=0.9.0".to_owned()]).unwrap();
    svc.master_mut().test_mode(&card, Some(pins)).unwrap();
    // The next boot: the card still holds its flash set; the plan is RAM-only.
    svc.handle_frame(t0, &solicit(card, "lc100", 1, Some(plans[0].digest), 9));
    let plan = plan_sent(&mut svc, t0);
    assert!(!plan.persist);
    assert_eq!(plan.verdict, Verdict::Fetch);
    assert!(plan.artifacts.iter().any(|a| a.name == "debug-tools"));
    let ready = shelfboot_proto::msg::Ready {
        digest: plan.digest,
        persisted: false,
        handoff: shelfboot_proto::msg::Handoff::Kexec,
    };
    svc.handle_frame(t0, &frame(card, ME, &Message::Ready(ready)));
    svc.commit();
    let n = node(&svc);
    assert_eq!(n.state, NodeState::Test);
    assert_eq!(
        n.inventory.and_then(|i| i.digest),
        Some(plans[0].digest),
        "the RAM-only set is not recorded as the flash inventory"
    );
    // Test mode left: the flash set is the plan again, validated with Continue.
    svc.master_mut().test_mode(&card, None).unwrap();
    svc.handle_frame(t0, &solicit(card, "lc100", 1, Some(plans[0].digest), 10));
    let plan = plan_sent(&mut svc, t0);
    assert!(plan.persist);
    assert_eq!(plan.verdict, Verdict::Continue);
}

#[test]
fn warm_boot_writes_nothing_to_the_node_database() {
    use crate::store::{NodeState, Store as _};
    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let mut svc = service(dir.path(), t0);
    let cards: Vec<MacAddr> = (1..=100u8).map(|i| MacAddr([2, 0, 0, 2, 0, i])).collect();
    // First boot: pristine cards are registered, fetch, and become ready.
    let plans = boot_round(&mut svc, &cards, None, 1, t0);
    assert_eq!(plans.len(), cards.len());
    assert!(plans.iter().all(|p| p.verdict == Verdict::Fetch));
    type Svc = Service<crate::store::sqlite::SqliteStore>;
    let events = |svc: &Svc| svc.master().store().events(None, 100_000).unwrap().len();
    let after_first = events(&svc);
    assert!(after_first >= 3 * cards.len(), "identity, inventory, state");
    // Every row but the "last seen" time, which a warm boot does refresh.
    let nodes = |svc: &Svc| {
        let mut v = svc.master().store().nodes().unwrap();
        v.iter_mut().for_each(|n| n.last_seen = None);
        v
    };
    let before = nodes(&svc);
    // A restarted master (empty caches) and a warm boot of every card holding its plan.
    drop(svc);
    let m = crate::state::Master::open(&dir.path().join("state")).unwrap();
    let cfg = ServiceConfig {
        ethertype: ET,
        solicit_budget: 32,
        heartbeat: Duration::from_secs(1),
        link_mtu: shelfboot_proto::STANDARD_MTU,
        join_window: Duration::from_millis(300),
        max_rate: 10_000_000,
        absence: Duration::from_secs(10),
    };
    let mut svc = Service::new(cfg, m, SigningKey::from_seed(&[5u8; 32]), ME, 4, t0);
    let started = std::time::Instant::now();
    let warm = boot_round(&mut svc, &cards, Some(&plans[0]), 2, t0);
    eprintln!(
        "warm round of {} cards: {:?}",
        cards.len(),
        started.elapsed()
    );
    assert!(warm.iter().all(|p| p.verdict == Verdict::Continue));
    assert_eq!(svc.stats().plans_continue, cards.len() as u64);
    assert_eq!(svc.stats().db_errors, 0);
    assert_eq!(
        events(&svc),
        after_first,
        "no event for an unchanged report"
    );
    assert!(nodes(&svc) == before, "a node row changed on a warm boot");
    let node = svc.master().store().node(&cards[0]).unwrap().unwrap();
    assert_eq!(node.state, NodeState::Ready);
}

#[test]
fn fleet_orders_go_out_as_signed_commands_three_copies_each() {
    use crate::control::{Backplane, Reply, Request, execute};
    use crate::state::{FleetAction, FleetOrder, MasterError};
    use shelfboot_proto::msg::Action;

    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let mut svc = service(dir.path(), t);
    fixture::add_nodes(svc.master_mut());
    let key = SigningKey::from_seed(&[5u8; 32]);
    let anchor = TrustAnchor::new(vec![key.public_key()]);
    let order = |action, target: Option<&str>| Request::Fleet {
        action,
        target: target.map(|m| m.parse().unwrap()),
    };

    // Not serving (as a CLI in-process or `master daemon` would be): refused, no order.
    let err = execute(
        svc.master_mut(),
        order(FleetAction::Prepare, None),
        Backplane::Unserved,
        &mut |_, _| {},
    )
    .unwrap_err();
    assert!(
        matches!(err, MasterError::NotServing(FleetAction::Prepare)),
        "{err}"
    );
    assert!(err.to_string().contains("master serve"), "{err}");

    // An unknown card is refused by name.
    let err = execute(
        svc.master_mut(),
        order(FleetAction::Reset, Some("02:00:00:00:99:99")),
        Backplane::Served,
        &mut |_, _| {},
    )
    .unwrap_err();
    assert!(format!("{err}").contains("02:00:00:00:99:99"), "{err}");
    let prepare = execute(
        svc.master_mut(),
        order(FleetAction::Prepare, None),
        Backplane::Served,
        &mut |_, _| {},
    )
    .unwrap();
    assert!(
        matches!(&prepare.reply, Reply::Done(t) if t.contains("BurnNow") && t.contains("every card")),
        "{prepare:?}"
    );
    // The request returns its order to the caller, exactly as asked.
    assert_eq!(
        prepare.order,
        Some(FleetOrder {
            action: FleetAction::Prepare,
            target: None
        })
    );
    let warm = execute(
        svc.master_mut(),
        order(FleetAction::WarmBoot, Some(fixture::N2)),
        Backplane::Served,
        &mut |_, _| {},
    )
    .unwrap();
    let _ = svc.tick(t); // advertise, heartbeat
    for o in prepare.order.iter().chain(warm.order.iter()) {
        svc.command(t, o);
    }
    let mut seen = Vec::new();
    for ms in [0u64, 100, 200, 400, 600, 800] {
        for (dst, m) in messages(&svc.tick(t + Duration::from_millis(ms))) {
            if let Message::Command(c) = m {
                anchor.verify_command(&c).unwrap();
                seen.push((ms, dst, c.body));
            }
        }
    }
    let burn: Vec<_> = seen
        .iter()
        .filter(|s| s.2.action == Action::BurnNow)
        .collect();
    let warm: Vec<_> = seen
        .iter()
        .filter(|s| s.2.action == Action::WarmBoot)
        .collect();
    assert_eq!(burn.len(), 3, "{seen:?}");
    assert_eq!(warm.len(), 3, "{seen:?}");
    assert!(
        burn.iter()
            .all(|s| s.1 == MacAddr::BROADCAST && s.2.target.is_none())
    );
    assert!(burn.iter().all(|s| s.2.serial == 1 && s.2.epoch == 3));
    assert!(
        warm.iter()
            .all(|s| s.1 == mac(fixture::N2) && s.2.target == Some(mac(fixture::N2)))
    );
    assert!(warm.iter().all(|s| s.2.serial == 2));
    // Copies are spaced, not a burst.
    assert_eq!(burn[0].0, 0);
    assert!(burn[1].0 >= 200 && burn[2].0 >= 400, "{seen:?}");
    assert_eq!(svc.stats().commands_sent, 6);
}

#[test]
fn a_card_that_cannot_fit_its_plan_stays_failed_with_the_reason_when_it_asks_again() {
    use crate::store::{NodeState, Store as _};
    use shelfboot_proto::msg::{ErrorMsg, Progress, Stage};
    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let mut svc = service(dir.path(), t0);
    let card = mac(fixture::N1);
    let m: MacAddr = fixture::N1.parse().unwrap();
    let state = |svc: &Service<crate::store::sqlite::SqliteStore>| {
        let n = svc.master().store().node(&m).unwrap().unwrap();
        (n.state, n.state_reason)
    };
    let ask = |svc: &mut Service<crate::store::sqlite::SqliteStore>, n: u8| {
        svc.begin_batch();
        svc.handle_frame(t0, &solicit(card, "lc100", 1, None, n));
        let verdict = messages(&svc.tick(t0))
            .into_iter()
            .find_map(|(_, m)| match m {
                Message::Plan(p) => Some(p.body.verdict),
                _ => None,
            });
        svc.commit();
        verdict
    };
    assert_eq!(ask(&mut svc, 1), Some(Verdict::Fetch));
    assert_eq!(state(&svc).0, NodeState::Fetching);
    let no_space = ErrorMsg {
        reason: ErrorReason::NoSpace {
            needed: 9,
            available: 4,
        },
        detail: "not enough flash".into(),
    };
    svc.begin_batch();
    svc.handle_frame(t0, &frame(card, ME, &Message::Error(no_space)));
    svc.commit();
    let failed = state(&svc);
    assert_eq!(failed.0, NodeState::Failed);
    assert!(
        failed
            .1
            .as_deref()
            .is_some_and(|r| r.starts_with("NoSpace")),
        "{failed:?}"
    );
    // It asks again (new nonce, same flash): same plan, and the node still says why.
    assert_eq!(ask(&mut svc, 2), Some(Verdict::Fetch));
    assert_eq!(state(&svc), failed);
    // Also after an operator request dropped the service's caches.
    let _ = svc.master_mut();
    assert_eq!(ask(&mut svc, 3), Some(Verdict::Fetch));
    assert_eq!(state(&svc), failed);
    // Once it actually fetches, the node says so.
    let p = Progress {
        stage: Stage::Fetching,
        artifact: None,
        done: 1,
        total: 9,
    };
    svc.begin_batch();
    svc.handle_frame(t0, &frame(card, ME, &Message::Progress(p)));
    svc.commit();
    assert_eq!(state(&svc), (NodeState::Fetching, None));
}

#[test]
fn a_prepare_pending_card_gets_burn_now_before_its_plan_and_ready_clears_the_mark() {
    use crate::control::{Backplane, Request, execute};
    use crate::state::FleetAction;
    use crate::store::{NodeState, Store as _};
    use shelfboot_proto::msg::{Action, Handoff, Ready};

    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let mut svc = service(dir.path(), t);
    fixture::add_nodes(svc.master_mut());
    let anchor = TrustAnchor::new(vec![SigningKey::from_seed(&[5u8; 32]).public_key()]);
    let n1 = mac(fixture::N1);
    let n1m: MacAddr = fixture::N1.parse().unwrap();
    let n2m: MacAddr = fixture::N2.parse().unwrap();
    // `master prepare N1`: only N1 is marked.
    execute(
        svc.master_mut(),
        Request::Fleet {
            action: FleetAction::Prepare,
            target: Some(n1m),
        },
        Backplane::Served,
        &mut |_, _| {},
    )
    .unwrap();
    assert!(svc.master().prepare_pending(&n1m).unwrap());
    assert!(!svc.master().prepare_pending(&n2m).unwrap());
    let _ = svc.tick(t);

    let answer = |svc: &mut Service<_>, card: MacAddr, slot: u16, n: u8| {
        svc.handle_frame(t, &solicit(card, "lc100", slot, None, n));
        messages(&svc.tick(t))
            .into_iter()
            .filter(|(d, _)| *d == card)
            .map(|(_, m)| m)
            .collect::<Vec<_>>()
    };
    // The marked card: a signed BurnNow to it, then its plan (Fetch: it is pristine).
    let got = answer(&mut svc, n1, 1, 1);
    assert_eq!(got.len(), 2, "{got:?}");
    let Message::Command(c) = &got[0] else {
        panic!("BurnNow first, got {got:?}")
    };
    anchor.verify_command(c).unwrap();
    assert_eq!((c.body.action, c.body.target), (Action::BurnNow, Some(n1)));
    let Message::Plan(plan) = &got[1] else {
        panic!("then the plan, got {got:?}")
    };
    // An unmarked card gets its plan alone.
    let other = answer(&mut svc, mac(fixture::N2), 2, 2);
    assert!(matches!(other.as_slice(), [Message::Plan(_)]), "{other:?}");

    // Ready (and its repeats) clears the mark: the card is ready, held.
    let ready = Message::Ready(Ready {
        digest: plan.body.digest,
        persisted: true,
        handoff: Handoff::Kexec,
    });
    for _ in 0..3 {
        svc.handle_frame(t, &frame(n1, ME, &ready));
    }
    assert!(!svc.master().prepare_pending(&n1m).unwrap());
    let node = svc.master().store().node(&n1m).unwrap().unwrap();
    assert_eq!(node.state, NodeState::Ready);
    assert_eq!(
        node.state_reason.as_deref(),
        Some("prepared, holding for warm boot")
    );
    let events = svc.master().store().events(Some(&n1m), 50).unwrap();
    assert_eq!(
        events.iter().filter(|e| e.kind == "prepared").count(),
        1,
        "{events:?}"
    );
    // Its next Solicit (the warm boot) gets the plan alone; its Ready then clears the
    // "prepared, holding" reason.
    svc.handle_frame(t, &solicit(n1, "lc100", 1, Some(plan.body.digest), 3));
    let again: Vec<_> = messages(&svc.tick(t))
        .into_iter()
        .filter(|(d, _)| *d == n1)
        .map(|(_, m)| m)
        .collect();
    assert!(
        matches!(again.as_slice(), [Message::Plan(p)] if p.body.verdict == shelfboot_proto::msg::Verdict::Continue),
        "{again:?}"
    );
    svc.handle_frame(t, &frame(n1, ME, &ready));
    let node = svc.master().store().node(&n1m).unwrap().unwrap();
    assert_eq!((node.state, node.state_reason), (NodeState::Ready, None));

    // `master prepare` (all): every known card is marked.
    execute(
        svc.master_mut(),
        Request::Fleet {
            action: FleetAction::Prepare,
            target: None,
        },
        Backplane::Served,
        &mut |_, _| {},
    )
    .unwrap();
    for n in [fixture::N1, fixture::N2, fixture::N3, fixture::N4] {
        assert!(
            svc.master().prepare_pending(&n.parse().unwrap()).unwrap(),
            "{n}"
        );
    }
}

#[test]
fn the_service_stamps_records_with_the_clock_and_writes_only_through_the_store_it_is_given() {
    use crate::blobs::BlobDir;
    use crate::state::{FixedClock, Master};
    use crate::store::sqlite::SqliteStore;
    use crate::store::{NodeState, Store as _};

    // An in-memory store and a clock at a fixed time: the service reaches nothing else.
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_in_memory().unwrap();
    let blobs = BlobDir::open(&dir.path().join("blobs")).unwrap();
    let m = Master::with_store(store, blobs).with_clock(FixedClock(1_234_567));
    let cfg = ServiceConfig {
        ethertype: ET,
        solicit_budget: 32,
        heartbeat: Duration::from_secs(1),
        link_mtu: shelfboot_proto::STANDARD_MTU,
        join_window: Duration::from_millis(300),
        max_rate: 10_000_000,
        absence: Duration::from_secs(10),
    };
    let t = Instant::now();
    let mut svc = Service::new(cfg, m, SigningKey::from_seed(&[5u8; 32]), ME, 3, t);
    let card = mac(fixture::N1);
    svc.begin_batch();
    svc.handle_frame(t, &solicit(card, "lc100", 1, None, 1));
    let replies = messages(&svc.tick(t));
    svc.commit();
    // No release: the card is told it has no plan, and recorded as seen, at the clock's time.
    assert!(
        replies
            .iter()
            .any(|(d, m)| *d == card && matches!(m, Message::Error(_))),
        "{replies:?}"
    );
    let node_mac: MacAddr = fixture::N1.parse().unwrap();
    let node = svc.master().store().node(&node_mac).unwrap().unwrap();
    assert_eq!(node.state, NodeState::Pristine);
    let events = svc.master().store().events(Some(&node_mac), 10).unwrap();
    assert!(!events.is_empty());
    assert!(events.iter().all(|e| e.at == 1_234_567), "{events:?}");
    assert!(!dir.path().join("state").exists());
}

/// Protocol version 2: plans larger than one frame, digest-only warm boots, inventories
/// asked for, version-1 cards.
mod v2 {
    use shelfboot_proto::frag::{Grid, Limits, Reassembler, encode_frames};
    use shelfboot_proto::frame::{Frame, Header, MessageType};
    use shelfboot_proto::msg::{ArtifactRef, Inventory, Plan};

    use super::*;
    use crate::store::Store as _;

    /// The card of the `bulk` class (lc100, slot 9).
    const BULK: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x09]);

    /// A service whose card `BULK` (class `bulk`: lc100 in slots 9-16) takes `n` extra
    /// packages with 64-byte names.
    fn bulk_service(
        dir: &std::path::Path,
        now: Instant,
        n: usize,
    ) -> Service<crate::store::sqlite::SqliteStore> {
        bulk_service_on(dir, now, n, shelfboot_proto::STANDARD_MTU)
    }

    /// [`bulk_service`] on a port of MTU `link_mtu`.
    fn bulk_service_on(
        dir: &std::path::Path,
        now: Instant,
        n: usize,
        link_mtu: u16,
    ) -> Service<crate::store::sqlite::SqliteStore> {
        let files = dir.join("files");
        std::fs::create_dir_all(&files).unwrap();
        let mut toml = String::new();
        let mut wanted = Vec::new();
        for i in 0..n {
            let name = format!("pkg-{i:0>60}");
            std::fs::write(files.join(format!("{name}.sqfs")), format!("payload {i}")).unwrap();
            toml.push_str(&format!(
                "[[package]]\nname = \"{name}\"\nversion = \"1.0.0\"\narch = \"x86_64\"\nfile = \"files/{name}.sqfs\"\n\n"
            ));
            wanted.push(format!("\"{name}\" = \"*\""));
        }
        // The packages come through a per-node override of the card, which the import's
        // delivery check (classes only) leaves to serve: a plan over the message limit
        // must still reach serve's own check.
        toml.push_str(&format!(
            "[[class]]\nname = \"bulk\"\nmatch = {{ card_types = [\"lc100\"], slots = [\"9-16\"] }}\nboot = \"lc-kernel\"\n\n[[override]]\nmac = \"{BULK}\"\npackages = {{ {} }}\n\n",
            wanted.join(", ")
        ));
        service_on(dir, now, &toml, link_mtu)
    }

    fn anchor() -> TrustAnchor {
        TrustAnchor::new(vec![SigningKey::from_seed(&[5u8; 32]).public_key()])
    }

    /// A Solicit of `card` in protocol `version`; `omitted`: the list left out.
    fn solicit_v(
        card: MacAddr,
        slot: u16,
        digest: Option<Digest>,
        n: u8,
        version: u8,
        omitted: bool,
    ) -> Vec<u8> {
        let s = Solicit {
            mac: card,
            card_type: "lc100".into(),
            arch: Arch::X86_64,
            shelf: 1,
            slot,
            hw_rev: "A".into(),
            features: vec![],
            phase: BootPhase::WarmBoot,
            inventory: vec![],
            inventory_digest: digest,
            nonce: [n; 16],
            inventory_omitted: omitted,
            link_mtu: None,
        };
        let link = Link {
            dst: MacAddr::BROADCAST,
            src: card,
            ethertype: ET,
        };
        let h = Header::new(MessageType::Solicit, 77, u32::from(n)).in_version(version);
        encode_frames(&link, &h, &Message::Solicit(s))
            .unwrap()
            .remove(0)
    }

    /// The frames to `card`, reassembled as a card does: (messages, frames, versions).
    fn to_card(frames: &[Vec<u8>], card: MacAddr) -> (Vec<Message>, usize, Vec<u8>) {
        let mut r = Reassembler::new(Limits::CARD);
        let now = Instant::now();
        let mut msgs = Vec::new();
        let mut n = 0;
        let mut versions = Vec::new();
        for f in frames.iter().filter(|f| f[..6] == card.0) {
            n += 1;
            let fr = Frame::decode(f, ET).unwrap();
            versions.push(fr.header().version);
            if fr
                .header()
                .flags
                .contains(shelfboot_proto::frame::Flags::FRAGMENT)
            {
                if let Some(m) = r.push(now, &fr).unwrap() {
                    msgs.push(m.decode().unwrap());
                }
            } else {
                msgs.push(shelfboot_proto::msg::decode_message(&fr).unwrap());
            }
        }
        (msgs, n, versions)
    }

    fn plan_of(msgs: &[Message]) -> Plan {
        msgs.iter()
            .find_map(|m| match m {
                Message::Plan(p) => Some(p.clone()),
                _ => None,
            })
            .expect("a plan")
    }

    #[test]
    fn a_plan_of_60_packages_goes_in_fragments_and_verifies_after_reassembly() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        let mut svc = bulk_service(dir.path(), t0, 60);
        svc.handle_frame(t0, &solicit_v(BULK, 9, None, 1, 2, false));
        let out = svc.tick(t0);
        let (msgs, frames, versions) = to_card(&out, BULK);
        assert!(frames > 3, "{frames} frames");
        assert!(versions.iter().all(|v| *v == 2));
        let plan = plan_of(&msgs);
        assert!(
            plan.body.artifacts.len() >= 62,
            "{}",
            plan.body.artifacts.len()
        );
        anchor().verify_plan(&plan, &[1; 16]).unwrap();
        assert_eq!(plan.body.verdict, Verdict::Fetch);
        let st = svc.stats();
        assert_eq!(st.messages_fragmented, 1);
        assert_eq!(
            st.frames_out_by_type.get("Plan").copied(),
            Some(frames as u64)
        );
        // The card's retry (a fragment was lost): the same frames again, at no cost.
        let again = svc.handle_frame(t0, &solicit_v(BULK, 9, None, 1, 2, false));
        let mine: Vec<&Vec<u8>> = out.iter().filter(|f| f[..6] == BULK.0).collect();
        assert_eq!(again.iter().collect::<Vec<_>>(), mine);
    }

    /// A Solicit of a `bulk`-class card saying its port's MTU (`None`: 1500).
    fn solicit_mtu(card: MacAddr, slot: u16, mtu: Option<u16>, n: u8) -> Vec<u8> {
        let s = Solicit {
            mac: card,
            card_type: "lc100".into(),
            arch: Arch::X86_64,
            shelf: 1,
            slot,
            hw_rev: "A".into(),
            features: vec![],
            phase: BootPhase::PowerOn,
            inventory: vec![],
            inventory_digest: None,
            nonce: [n; 16],
            inventory_omitted: false,
            link_mtu: mtu,
        };
        let link = Link {
            dst: MacAddr::BROADCAST,
            src: card,
            ethertype: ET,
        };
        encode_frames(
            &link,
            &Header::new(MessageType::Solicit, 77, 1),
            &Message::Solicit(s),
        )
        .unwrap()
        .remove(0)
    }

    #[test]
    fn the_plan_goes_on_the_jumbo_grid_only_when_both_ports_take_9000() {
        for (master_mtu, card_mtu, jumbo) in [
            (9000, Some(9000), true),
            (1500, Some(9000), false),
            (9000, None, false),
            (9000, Some(4000), false),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let t0 = Instant::now();
            let mut svc = bulk_service_on(dir.path(), t0, 60, master_mtu);
            svc.handle_frame(t0, &solicit_mtu(BULK, 9, card_mtu, 1));
            let out = svc.tick(t0);
            let (msgs, frames, _) = to_card(&out, BULK);
            let plan = plan_of(&msgs);
            anchor().verify_plan(&plan, &[1; 16]).unwrap();
            let body = Message::Plan(plan).encode_long_body().unwrap().len();
            let grid = if jumbo { Grid::Jumbo } else { Grid::Standard };
            let case = format!("master {master_mtu}, card {card_mtu:?}");
            assert_eq!(frames, body.div_ceil(grid.data_len()), "{case}");
            let longest = out
                .iter()
                .filter(|f| f[..6] == BULK.0)
                .map(Vec::len)
                .max()
                .unwrap();
            assert_eq!(longest > 1514, jumbo, "{case}: longest frame {longest}");
        }
    }

    #[test]
    fn a_session_uses_the_mtu_both_ports_take_and_a_smaller_port_gets_its_own() {
        const OTHER: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x0a]);
        let dir = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        let mut svc = bulk_service_on(dir.path(), t0, 3, 9000);
        let mut joins = Vec::new();
        for (n, card, slot, mtu) in [
            (1, BULK, 9, Some(9000)),
            (2, OTHER, 10, None),
            (3, BULK, 9, Some(9000)),
        ] {
            svc.handle_frame(t0, &solicit_mtu(card, slot, mtu, n));
            let plan = plan_of(&to_card(&svc.tick(t0), card).0);
            let boot = plan
                .body
                .artifacts
                .iter()
                .find(|a| a.kind == shelfboot_proto::msg::ArtifactKind::BootImage)
                .unwrap()
                .sha256;
            let link = Link {
                dst: ME,
                src: card,
                ethertype: ET,
            };
            let fetch = Message::Fetch(shelfboot_proto::msg::Fetch {
                artifact: boot,
                have_slices: 0,
            });
            let f = encode_frames(&link, &Header::new(MessageType::Fetch, 77, 2), &fetch).unwrap();
            let out = svc.handle_frame(t0, &f[0]);
            let join = to_card(&out, card)
                .0
                .into_iter()
                .find_map(|m| match m {
                    Message::Join(j) => Some(j),
                    _ => None,
                })
                .expect("a Join");
            joins.push(join);
        }
        assert_eq!(joins[0].block_size, 8960, "both ports at 9000");
        assert_eq!(joins[1].block_size, 1408, "a 1500 port");
        assert_ne!(joins[1].transfer, joins[0].transfer, "its own session");
        assert_eq!(
            joins[2].transfer, joins[0].transfer,
            "the jumbo card rejoins its own"
        );
        let blocks: Vec<u16> = svc.stats().sessions.iter().map(|s| s.block_size).collect();
        assert_eq!(blocks, [8960, 1408]);
    }

    #[test]
    fn a_warm_boot_of_a_large_set_is_one_solicit_and_one_continue_frame() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        let mut svc = bulk_service(dir.path(), t0, 60);
        svc.handle_frame(t0, &solicit_v(BULK, 9, None, 1, 2, false));
        let plan = plan_of(&to_card(&svc.tick(t0), BULK).0);
        let before = svc.stats();
        // The card holds the set; its Solicit leaves the list out.
        svc.handle_frame(t0, &solicit_v(BULK, 9, Some(plan.body.digest), 2, 2, true));
        let out = svc.tick(t0);
        let (msgs, frames, _) = to_card(&out, BULK);
        assert_eq!(frames, 1, "one Continue frame");
        let cont = plan_of(&msgs);
        assert!(cont.body.artifacts_omitted && cont.body.artifacts.is_empty());
        assert!(
            !cont.body.report_inventory,
            "the digest is the plan's: nothing to ask"
        );
        assert_eq!(cont.body.verdict, Verdict::Continue);
        assert_eq!(cont.body.digest, plan.body.digest);
        anchor().verify_plan(&cont, &[2; 16]).unwrap();
        let st = svc.stats();
        let d = |m: &std::collections::BTreeMap<String, u64>,
                 b: &std::collections::BTreeMap<String, u64>,
                 k: &str| {
            m.get(k).copied().unwrap_or(0) - b.get(k).copied().unwrap_or(0)
        };
        assert_eq!(
            d(&st.frames_in_by_type, &before.frames_in_by_type, "Solicit"),
            1
        );
        assert_eq!(
            d(&st.frames_out_by_type, &before.frames_out_by_type, "Plan"),
            1
        );
        assert_eq!(st.plans_digest_only, 1);
        // The node database knows the installed set: the plan's items.
        let node = svc.master().store().node(&BULK).unwrap().unwrap();
        let inv = node.inventory.unwrap();
        assert_eq!(inv.digest, Some(plan.body.digest));
        assert_eq!(inv.items.len(), plan.body.artifacts.len());
    }

    #[test]
    fn an_unknown_digest_without_its_list_is_asked_for_and_the_inventory_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        let mut svc = bulk_service(dir.path(), t0, 60);
        let other = Digest([0x44; 32]);
        svc.handle_frame(t0, &solicit_v(BULK, 9, Some(other), 1, 2, true));
        let plan = plan_of(&to_card(&svc.tick(t0), BULK).0);
        assert!(plan.body.report_inventory);
        assert_eq!(plan.body.verdict, Verdict::Fetch);
        // The card's answer: 50 artifacts, in fragments.
        let items: Vec<ArtifactRef> = plan.body.artifacts[..50].to_vec();
        let inv = Message::Inventory(Inventory {
            inventory: items,
            inventory_digest: Some(other),
            nonce: [1; 16],
        });
        let link = Link {
            dst: ME,
            src: BULK,
            ethertype: ET,
        };
        let frames =
            encode_frames(&link, &Header::new(MessageType::Inventory, 77, 9), &inv).unwrap();
        assert!(frames.len() > 1);
        for f in frames.iter().rev() {
            svc.handle_frame(t0, f);
        }
        let st = svc.stats();
        assert_eq!(st.inventories, 1);
        assert_eq!(st.reassembly.completed, 1);
        let node = svc.master().store().node(&BULK).unwrap().unwrap();
        let got = node.inventory.unwrap();
        assert_eq!(got.digest, Some(other));
        assert_eq!(got.items.len(), 50);
    }

    #[test]
    fn a_version_1_card_is_served_in_version_1_while_its_plan_fits_one_frame() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        let mut svc = service(dir.path(), t0);
        let card = mac(fixture::N1);
        svc.handle_frame(t0, &solicit_v(card, 1, None, 1, 1, false));
        let (msgs, frames, versions) = to_card(&svc.tick(t0), card);
        assert_eq!(frames, 1);
        assert_eq!(versions, [1]);
        anchor().verify_plan(&plan_of(&msgs), &[1; 16]).unwrap();
    }

    #[test]
    fn a_version_1_card_with_a_plan_larger_than_one_frame_gets_an_error_and_is_failed() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        let mut svc = bulk_service(dir.path(), t0, 60);
        svc.handle_frame(t0, &solicit_v(BULK, 9, None, 1, 1, false));
        let (msgs, frames, versions) = to_card(&svc.tick(t0), BULK);
        assert_eq!(
            (frames, versions),
            (1, vec![1]),
            "one v1 frame a v1 card decodes"
        );
        let Message::Error(e) = &msgs[0] else {
            panic!("{msgs:?}")
        };
        assert_eq!(e.reason, ErrorReason::UnsupportedVersion { min: 2, max: 2 });
        assert!(
            e.detail.contains("needs protocol version 2"),
            "{}",
            e.detail
        );
        let node = svc.master().store().node(&BULK).unwrap().unwrap();
        assert_eq!(node.state, crate::store::NodeState::Failed);
        let reason = node.state_reason.unwrap_or_default();
        assert!(reason.contains("plan undeliverable"), "{reason}");
        assert_eq!(svc.stats().plans_undeliverable, 1);
    }

    #[test]
    fn a_plan_over_the_message_limit_is_an_error_to_the_card_and_the_node_reason() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        let mut svc = bulk_service(dir.path(), t0, 640);
        svc.handle_frame(t0, &solicit_v(BULK, 9, None, 1, 2, false));
        let (msgs, frames, _) = to_card(&svc.tick(t0), BULK);
        assert_eq!(frames, 1);
        let Message::Error(e) = &msgs[0] else {
            panic!("{msgs:?}")
        };
        assert!(
            matches!(e.reason, ErrorReason::MessageTooLarge { max: 65536, len } if len > 65536),
            "{e:?}"
        );
        let node = svc.master().store().node(&BULK).unwrap().unwrap();
        assert_eq!(node.state, crate::store::NodeState::Failed);
        assert!(
            node.state_reason
                .unwrap_or_default()
                .contains("65536-byte message limit")
        );
    }
}

/// An Alive of `card`'s resident agent.
fn alive(
    card: MacAddr,
    health: shelfboot_proto::msg::Health,
    running: u8,
    rolled_back_from: Option<u8>,
    detail: &str,
) -> Vec<u8> {
    let a = shelfboot_proto::msg::Alive {
        running: Some(Digest([running; 32])),
        persisted: true,
        health,
        uptime: 30,
        epoch: 3,
        rolled_back_from: rolled_back_from.map(|b| Digest([b; 32])),
        dropped: 0,
        detail: detail.into(),
    };
    frame(card, ME, &Message::Alive(a))
}

/// `kind detail` of each event of `card`, oldest first, without its registration.
fn history_of(svc: &Service<crate::store::sqlite::SqliteStore>, card: MacAddr) -> Vec<String> {
    use crate::store::Store as _;
    svc.master()
        .store()
        .events(Some(&card), 100)
        .unwrap()
        .into_iter()
        .filter(|e| e.kind != "identity")
        .map(|e| format!("{} {}", e.kind, e.detail))
        .collect()
}

#[test]
fn an_alive_records_health_once_and_a_repeat_writes_nothing() {
    use crate::store::{Health, Store as _};
    use shelfboot_proto::msg::Health as Wire;

    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let mut svc = service(dir.path(), t0);
    fixture::add_nodes(svc.master_mut());
    let card = mac(fixture::N1);
    let at = |s: u64| t0 + Duration::from_secs(s);
    let out = svc.handle_frame(at(1), &alive(card, Wire::Checking, 0xd1, None, ""));
    assert!(
        messages(&out)
            .iter()
            .all(|(_, m)| matches!(m, Message::Advertise(_))),
        "an Alive is not answered"
    );
    let node = svc.master().store().node(&card).unwrap().unwrap();
    let h = node.health.expect("the report is recorded");
    assert_eq!(
        (h.health, h.running, h.rolled_back_from),
        (Health::Checking, Some(Digest([0xd1; 32])), None)
    );
    assert!(node.present);
    let dump = svc.master().store().dump().unwrap();
    for s in [3, 5, 7] {
        svc.begin_batch();
        svc.handle_frame(at(s), &alive(card, Wire::Checking, 0xd1, None, ""));
        svc.tick(at(s));
        svc.commit();
    }
    assert_eq!(
        svc.master().store().dump().unwrap(),
        dump,
        "the same report again writes nothing"
    );
    svc.handle_frame(at(8), &alive(card, Wire::Healthy, 0xd1, None, ""));
    let st = svc.stats();
    assert_eq!((st.alives, st.health_writes), (5, 2));
    assert_eq!(st.dropped_unexpected, 0);
    assert_eq!(
        history_of(&svc, card),
        [format!(
            "health healthy (set {})",
            Digest([0xd1; 32]).short()
        )],
        "the verdict is history, checking is not"
    );
    // A card the database does not know is heard, but nothing is written for it.
    let stranger = mac("02:00:00:00:00:77");
    svc.handle_frame(at(9), &alive(stranger, Wire::Healthy, 0xd1, None, ""));
    assert!(svc.master().store().node(&stranger).unwrap().is_none());
    assert_eq!(svc.stats().health_writes, 2);
    assert_eq!(svc.stats().db_errors, 0);
}

#[test]
fn a_silent_card_is_absent_after_the_interval_and_present_again_when_heard() {
    use crate::store::Store as _;
    use shelfboot_proto::msg::Health as Wire;

    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let mut svc = service(dir.path(), t0);
    fixture::add_nodes(svc.master_mut());
    let (n1, n2) = (mac(fixture::N1), mac(fixture::N2));
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let present = |svc: &Service<crate::store::sqlite::SqliteStore>, card| {
        svc.master().store().node(&card).unwrap().map(|n| n.present)
    };
    svc.tick(at(0));
    // N1's agent speaks every 2 s until 5 s; the others (present in the database when
    // the master started) never speak.
    for ms in [1000, 3000, 5000] {
        svc.handle_frame(at(ms), &alive(n1, Wire::Healthy, 0xd1, None, ""));
    }
    for ms in (500..10_000).step_by(500) {
        svc.tick(at(ms));
    }
    assert_eq!(present(&svc, n2), Some(true), "a just-started master waits");
    svc.tick(at(10_000));
    assert_eq!(
        present(&svc, n2),
        Some(false),
        "one interval after the start"
    );
    assert_eq!(present(&svc, n1), Some(true));
    assert_eq!(history_of(&svc, n2), ["absent not heard for 10 s"]);
    for ms in (10_500..=15_000).step_by(500) {
        svc.tick(at(ms));
    }
    assert_eq!(present(&svc, n1), Some(false), "10 s after its last Alive");
    let live = |svc: &Service<crate::store::sqlite::SqliteStore>| {
        let c = svc.stats().cards;
        let n = c.iter().find(|c| c.mac == n1).expect("N1 in the live view");
        (n.absent, n.health.clone())
    };
    assert_eq!(
        live(&svc),
        (true, Some("healthy".to_owned())),
        "`master watch` sees it absent, with its last report"
    );
    let last_seen = svc.master().store().node(&n1).unwrap().unwrap().last_seen;
    // Absent cards are not marked again.
    for ms in (15_500..=40_000).step_by(500) {
        svc.tick(at(ms));
    }
    assert_eq!(svc.stats().cards_absent, 4, "N1..N4 once each");
    // Heard again (any frame): present again.
    svc.handle_frame(at(41_000), &solicit(n2, "lc100", 2, None, 9));
    svc.handle_frame(at(41_000), &alive(n1, Wire::Healthy, 0xd1, None, ""));
    assert_eq!(present(&svc, n1), Some(true));
    assert_eq!(present(&svc, n2), Some(true));
    assert_eq!(live(&svc), (false, Some("healthy".to_owned())));
    assert_eq!(
        history_of(&svc, n1)
            .into_iter()
            .filter(|e| !e.starts_with("health"))
            .collect::<Vec<_>>(),
        ["absent not heard for 10 s", "present present again"]
    );
    assert_eq!(
        history_of(&svc, n2),
        ["absent not heard for 10 s", "present present again"]
    );
    assert!(last_seen.is_some());
    assert_eq!(svc.stats().cards_returned, 2);
}

#[test]
fn a_rollback_shows_in_master_nodes_and_history() {
    use crate::control::{Backplane, Reply, Request, execute};
    use shelfboot_proto::msg::Health as Wire;

    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let mut svc = service(dir.path(), t0);
    fixture::add_nodes(svc.master_mut());
    let (n1, n2) = (mac(fixture::N1), mac(fixture::N2));
    svc.handle_frame(t0, &alive(n2, Wire::Healthy, 0xd2, None, ""));
    let detail = "health command never succeeded within 120 s";
    svc.handle_frame(t0, &alive(n1, Wire::Healthy, 0xc0, Some(0xd1), detail));
    // The same rollback reported again is not history again.
    svc.handle_frame(
        t0 + Duration::from_secs(2),
        &alive(n1, Wire::Healthy, 0xc0, Some(0xd1), detail),
    );
    let mut run = |req| {
        execute(svc.master_mut(), req, Backplane::Served, &mut |_, _| {})
            .unwrap()
            .reply
    };
    let nodes = run(Request::Nodes);
    let text = crate::cli::output::render(&nodes);
    let header = text.lines().next().unwrap();
    assert!(header.contains("PRESENT  LAST-SEEN  HEALTH"), "{text}");
    let row = |m: MacAddr| {
        text.lines()
            .find(|l| l.contains(&m.to_string()))
            .unwrap_or_else(|| panic!("no row for {m}:\n{text}"))
            .to_owned()
    };
    let reason = format!(
        "rolled back on its own from set {}: {detail}",
        Digest([0xd1; 32]).short()
    );
    // Columns are two or more spaces apart.
    let cells = |line: &str| -> Vec<String> {
        line.split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let head = cells(header);
    let col = |name: &str| head.iter().position(|h| h == name).unwrap();
    let r1 = cells(&row(n1));
    assert!(r1[col("STATE")].contains(&reason), "{r1:?}");
    assert_eq!(r1[col("PRESENT")], "yes", "{r1:?}");
    assert!(
        ["0s ago", "1s ago"].contains(&r1[col("LAST-SEEN")].as_str()),
        "{r1:?}"
    );
    assert_eq!(r1[col("HEALTH")], "rolled back", "{r1:?}");
    assert_eq!(cells(&row(n2))[col("HEALTH")], "healthy");
    let n3 = cells(&row(mac(fixture::N3)));
    assert_eq!(n3[col("HEALTH")], "-", "no report: {n3:?}");
    let Reply::Nodes(views) = &nodes else {
        panic!("{nodes:?}")
    };
    let v1 = views.iter().find(|v| v.node.identity.mac == n1).unwrap();
    assert_eq!(
        v1.node.health.as_ref().and_then(|h| h.rolled_back_from),
        Some(Digest([0xd1; 32]))
    );
    let history = run(Request::History {
        node: Some(n1),
        limit: 20,
    });
    let text = crate::cli::output::render(&history);
    assert_eq!(
        text.lines().filter(|l| l.contains("rollback")).count(),
        1,
        "{text}"
    );
    assert!(text.contains(&reason), "{text}");
}

/// `master nodes` through the serving master shows when the service last heard a card,
/// though the database's `last_seen` is written only when something changes.
#[test]
fn last_seen_is_the_last_hearing_while_the_database_is_written_on_change_only() {
    use crate::blobs::BlobDir;
    use crate::state::{Clock, Master};
    use crate::store::sqlite::SqliteStore;
    use crate::store::{NodeIdentity, Store as _};
    use shelfboot_proto::msg::Health as Wire;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicI64, Ordering};

    /// A wall clock the test moves.
    #[derive(Debug)]
    struct Moved(Arc<AtomicI64>);
    impl Clock for Moved {
        fn unix_secs(&self) -> i64 {
            self.0.load(Ordering::Relaxed)
        }
    }
    let wall = Arc::new(AtomicI64::new(1000));
    let dir = tempfile::tempdir().unwrap();
    let blobs = BlobDir::open(&dir.path().join("blobs")).unwrap();
    let mut m = Master::with_store(SqliteStore::open_in_memory().unwrap(), blobs)
        .with_clock(Moved(wall.clone()));
    let card = mac(fixture::N1);
    m.add_node(
        &NodeIdentity {
            mac: card,
            card_type: "lc100".into(),
            arch: shelfboot_proto::id::Arch::X86_64,
            shelf: 1,
            slot: 1,
            hw_rev: "A".into(),
            features: vec![],
        },
        None,
    )
    .unwrap();
    let cfg = ServiceConfig {
        ethertype: ET,
        solicit_budget: 32,
        heartbeat: Duration::from_secs(1),
        link_mtu: shelfboot_proto::STANDARD_MTU,
        join_window: Duration::from_millis(300),
        max_rate: 10_000_000,
        absence: Duration::from_secs(10),
    };
    let t = Instant::now();
    let mut svc = Service::new(cfg, m, SigningKey::from_seed(&[5u8; 32]), ME, 3, t);
    let at = |s: u64| t + Duration::from_secs(s);
    wall.store(1001, Ordering::Relaxed);
    svc.handle_frame(at(1), &alive(card, Wire::Healthy, 0xd1, None, ""));
    for s in (2..=50).step_by(2) {
        wall.store(1000 + i64::try_from(s).unwrap(), Ordering::Relaxed);
        svc.handle_frame(at(s), &alive(card, Wire::Healthy, 0xd1, None, ""));
        svc.tick(at(s));
    }
    wall.store(1052, Ordering::Relaxed);
    svc.tick(at(52));
    let db = svc.master().store().node(&card).unwrap().unwrap();
    assert_eq!(
        db.last_seen,
        Some(1001),
        "written once, at the first report"
    );
    assert!(db.present);
    let views = svc.master_mut().nodes().unwrap();
    assert_eq!(views[0].node.last_seen, Some(1050));
    assert_eq!(views[0].seen_ago, Some(2));
    assert_eq!(svc.stats().health_writes, 1);
}

#[test]
fn ready_from_a_card_without_flash_marks_the_node_ram_and_records_no_inventory() {
    use crate::store::{NodeState, Store as _};
    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let mut svc = service(dir.path(), t0);
    let card = MacAddr([2, 0, 0, 3, 0, 2]);
    // A cold boot of a card whose flash is unusable: nothing held, a plain plan.
    svc.handle_frame(t0, &solicit(card, "lc100", 1, None, 3));
    let plan = plan_sent(&mut svc, t0);
    assert!(
        plan.persist,
        "the master does not know the card lacks flash"
    );
    let ready = shelfboot_proto::msg::Ready {
        digest: plan.digest,
        persisted: false,
        handoff: shelfboot_proto::msg::Handoff::Kexec,
    };
    svc.handle_frame(t0, &frame(card, ME, &Message::Ready(ready)));
    svc.commit();
    let n = svc.master().store().node(&card).unwrap().unwrap();
    assert_eq!(n.state, NodeState::Ram, "not a test: no trial pins");
    assert_eq!(
        n.inventory.and_then(|i| i.digest),
        None,
        "a set in RAM is not recorded as installed"
    );
}
