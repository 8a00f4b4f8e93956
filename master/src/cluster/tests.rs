//! Members of a cluster in one process, talking Raft over loopback TCP (no root, no
//! namespace): writes through any member reach every member; a refused write is refused
//! everywhere; the log store keeps what openraft expects; an operation applied to two
//! databases leaves the same rows.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::op::{Op, OpResult};
use super::store::ReplicatedStore;
use super::*;
use crate::blobs::BlobDir;
use crate::state::{Master, fixture};
use crate::store::sqlite::SqliteStore;
use crate::store::{Assignment, NodeIdentity, NodeState, Store, Target};
use shelfboot_proto::id::{Arch, MacAddr};

fn identity(n: u8) -> NodeIdentity {
    NodeIdentity {
        mac: MacAddr([0x02, 0x66, 0, 0, 0, n]),
        card_type: "lc".into(),
        arch: Arch::X86_64,
        shelf: 1,
        slot: u32::from(n),
        hw_rev: String::new(),
        features: vec![],
    }
}

/// A free loopback port for a member. Taken below the kernel's ephemeral range (32768 and
/// up), so that no outgoing connection of another test can be holding it when the member
/// binds it; each test binary has a block of its own by process id.
fn port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let block = 20_000 + u16::try_from(std::process::id() % 200).unwrap() * 60;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < 60, "out of test ports");
        if std::net::TcpListener::bind(("127.0.0.1", block + n)).is_ok() {
            return block + n;
        }
    }
}

fn configs(n: u64) -> Vec<ClusterConfig> {
    let members: Vec<MemberConfig> = (1..=n)
        .map(|id| MemberConfig {
            id,
            addr: format!("127.0.0.1:{}", port()),
        })
        .collect();
    members
        .iter()
        .map(|m| ClusterConfig {
            id: m.id,
            listen: m.addr.clone(),
            epoch_base: 10,
            witness: false,
            members: members.clone(),
        })
        .collect()
}

fn start(dir: &Path, cfg: &ClusterConfig) -> Arc<Cluster> {
    let state = dir.join(format!("m{}", cfg.id));
    std::fs::create_dir_all(&state).unwrap();
    Arc::new(Cluster::start(&state, cfg.clone()).unwrap())
}

/// Waits (bounded) until exactly one member serves; returns its index.
fn serving(members: &[Option<Arc<Cluster>>]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s: Vec<usize> = members
            .iter()
            .enumerate()
            .filter(|(_, c)| c.as_ref().is_some_and(|c| c.serving().is_some()))
            .map(|(i, _)| i)
            .collect();
        assert!(s.len() <= 1, "two members serve: {s:?}");
        if let Some(i) = s.first() {
            return *i;
        }
        assert!(Instant::now() < deadline, "no member serves");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (bounded) until every running member sees every member as a voter and has
/// applied as far as the others: the cluster is made.
fn settled(members: &[Option<Arc<Cluster>>]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st: Vec<ClusterStatus> = members.iter().flatten().map(|c| c.status()).collect();
        let all = st.len();
        if st.iter().all(|s| {
            s.members.iter().filter(|m| m.voter).count() == all
                && s.applied_index.is_some()
                && s.applied_index == st[0].applied_index
        }) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the cluster is not made: {st:#?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts a member for each of `cfgs` and waits until the cluster is made and one
/// serves; returns the members and the index of the serving one.
fn made(dir: &Path, cfgs: &[ClusterConfig]) -> (Vec<Option<Arc<Cluster>>>, usize) {
    let members: Vec<Option<Arc<Cluster>>> = cfgs.iter().map(|c| Some(start(dir, c))).collect();
    let first = serving(&members);
    settled(&members);
    (members, first)
}

/// Stops every member still running.
fn shut_down(members: Vec<Option<Arc<Cluster>>>) {
    for m in members.into_iter().flatten() {
        m.shutdown();
    }
}

fn dump(dir: &Path, id: u64) -> String {
    let d = SqliteStore::open(&dir.join(format!("m{id}/master.db")))
        .unwrap()
        .dump()
        .unwrap();
    // The applied log id is replication's own bookkeeping; the data is what must agree.
    d.lines()
        .filter(|l| !l.contains(machine::META_APPLIED))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn three_members_replicate_every_write_and_a_backup_takes_over() {
    let tmp = tempfile::tempdir().unwrap();
    let cfgs = configs(3);
    let mut members: Vec<Option<Arc<Cluster>>> =
        cfgs.iter().map(|c| Some(start(tmp.path(), c))).collect();
    let first = serving(&members);
    let epoch = members[first].as_ref().unwrap().serving().unwrap();
    assert!(epoch > 10, "epoch {epoch} = base 10 + term");

    // A write through each member, the followers' forwarded to the leader.
    for (i, m) in members.iter().enumerate() {
        let r = m
            .as_ref()
            .unwrap()
            .write(Op::RecordIdentity {
                id: identity(u8::try_from(i).unwrap() + 1),
                now: 1000,
            })
            .unwrap();
        assert_eq!(r, OpResult::Flag(true), "a new card");
    }
    // A write the databases refuse is refused the same way, wherever it is made.
    let r = members[(first + 1) % 3]
        .as_ref()
        .unwrap()
        .write(Op::RecordState {
            mac: MacAddr([0x02, 0x66, 0, 0, 0, 99]),
            state: NodeState::Ready,
            reason: None,
            now: 1001,
        })
        .unwrap();
    assert!(
        matches!(&r, OpResult::Refused(m) if m.contains("unknown node")),
        "{r:?}"
    );

    // Every member's own account, gathered on any member.
    let all = members[(first + 2) % 3].as_ref().unwrap().status_all();
    for m in &all.members {
        let r = m.reported.as_ref().expect("every member answers");
        assert_eq!(r.missing_blobs, 0, "{all:#?}");
        assert_eq!(r.serving, m.id == cfgs[first].id, "{all:#?}");
    }
    // The serving member stops: another serves with a higher epoch, writes go on.
    members[first].take().unwrap().shutdown();
    let second = serving(&members);
    assert_ne!(second, first);
    let epoch2 = members[second].as_ref().unwrap().serving().unwrap();
    assert!(epoch2 > epoch, "{epoch2} > {epoch}");
    for m in members.iter().flatten() {
        m.write(Op::RecordIdentity {
            id: identity(10 + u8::try_from(m.config().id).unwrap()),
            now: 1002,
        })
        .unwrap();
    }

    // The stopped member comes back, catches up, and does not take over.
    let back = start(tmp.path(), &cfgs[first]);
    members[first] = Some(back);
    let leader = members[second].as_ref().unwrap();
    let target = leader.status().applied_index;
    let deadline = Instant::now() + Duration::from_secs(20);
    while members[first].as_ref().unwrap().status().applied_index < target {
        assert!(
            Instant::now() < deadline,
            "the returning member did not catch up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(serving(&members), second);
    for m in members.iter_mut() {
        m.take().unwrap().shutdown();
    }
    let d1 = dump(tmp.path(), 1);
    assert!(
        d1.contains("02:66:00:00:00:0b") || d1.contains("02:66:00:00:00:0c"),
        "{d1}"
    );
    for id in 2..=3 {
        assert_eq!(
            dump(tmp.path(), id),
            d1,
            "member {id} differs from member 1"
        );
    }
}

#[test]
fn a_planned_switchover_moves_the_service_and_a_witness_or_stranger_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfgs = configs(3);
    // Member 3 is a witness: it votes, never serves.
    cfgs[2].witness = true;
    let (members, first) = made(tmp.path(), &cfgs);
    assert_ne!(first, 2, "a witness never serves");
    let to = 1 - first;
    let to_id = cfgs[to].id;
    // Asked on the witness, of all members: the handover is the leader's.
    let w = members[2].as_ref().unwrap();
    let s = w.switchover(to_id, 2000).unwrap();
    assert!(s.serving && s.id == to_id, "{s:#?}");
    assert_eq!(serving(&members), to);
    let e = w.switchover(3, 2001).unwrap_err();
    assert!(
        matches!(&e, ClusterError::NotComplete { id: 3, why } if why.contains("witness")),
        "{e}"
    );
    let e = w.switchover(42, 2002).unwrap_err();
    assert!(matches!(e, ClusterError::UnknownMember(42)), "{e}");
    // Back again, and the order of succession follows the operator's choice.
    let s = members[to]
        .as_ref()
        .unwrap()
        .switchover(cfgs[first].id, 2003)
        .unwrap();
    assert!(s.serving, "{s:#?}");
    assert_eq!(serving(&members), first);
    shut_down(members);
}

#[test]
fn the_order_of_succession_hands_the_service_to_the_preferred_member() {
    let tmp = tempfile::tempdir().unwrap();
    let cfgs = configs(3);
    let (members, first) = made(tmp.path(), &cfgs);
    let preferred = (first + 2) % 3;
    let order = vec![cfgs[preferred].id, cfgs[first].id];
    members[first]
        .as_ref()
        .unwrap()
        .set_succession(order.clone(), 3000)
        .unwrap();
    // The leader sees a more preferred member complete and hands over within seconds.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if members[preferred].as_ref().unwrap().serving().is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the preferred member does not serve"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let st = members[first].as_ref().unwrap().status();
    assert_eq!(st.succession, order);
    assert_eq!(st.next, Some(cfgs[first].id), "{st:#?}");
    // An order naming a stranger is refused.
    let e = members[first]
        .as_ref()
        .unwrap()
        .set_succession(vec![9], 3001)
        .unwrap_err();
    assert!(matches!(e, ClusterError::UnknownMember(9)), "{e}");
    shut_down(members);
}

#[test]
fn cluster_toml_is_checked_and_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(ClusterConfig::load(tmp.path()).unwrap().is_none());
    let mut c = configs(3).remove(0);
    c.save(tmp.path()).unwrap();
    assert_eq!(ClusterConfig::load(tmp.path()).unwrap(), Some(c.clone()));
    c.id = 7;
    let e = c.check().unwrap_err();
    assert!(e.contains("do not include this master"), "{e}");
    c.id = 1;
    c.listen = "nowhere".into();
    assert!(c.check().unwrap_err().contains("not ADDR:PORT"));
}

#[test]
fn two_master_cards_and_a_witness_survive_losing_either_card() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfgs = configs(3);
    cfgs[2].witness = true;
    let (mut members, first) = made(tmp.path(), &cfgs);
    let other = 1 - first;
    // The serving card dies: the other card serves (the witness makes the quorum).
    members[first].take().unwrap().shutdown();
    assert_eq!(serving(&members), other);
    members[other]
        .as_ref()
        .unwrap()
        .write(Op::RecordIdentity {
            id: identity(1),
            now: 4000,
        })
        .unwrap();
    // It comes back; then the other card dies: the first serves again, with the write.
    members[first] = Some(start(tmp.path(), &cfgs[first]));
    settled(&members);
    members[other].take().unwrap().shutdown();
    assert_eq!(serving(&members), first);
    let r = members[first]
        .as_ref()
        .unwrap()
        .write(Op::RecordIdentity {
            id: identity(1),
            now: 4001,
        })
        .unwrap();
    assert_eq!(
        r,
        OpResult::Flag(false),
        "the card written while it was away is known"
    );
    shut_down(members);
}

/// Imports the fixture release (plus `extra_toml`) through member `c`, as the operator's
/// CLI on that master would; returns the release and every blob its databases reference.
fn import_through(
    dir: &Path,
    c: &Arc<Cluster>,
    extra_toml: &str,
) -> (
    crate::image::manifest::ReleaseId,
    std::collections::BTreeSet<shelfboot_proto::id::Digest>,
) {
    let state = dir.join(format!("m{}", c.config().id));
    let rel = dir.join("release");
    std::fs::create_dir_all(&rel).unwrap();
    let image = fixture::image(&rel, "1.0.0", extra_toml, &fixture::vendor_key());
    let local = SqliteStore::open(&state.join("master.db")).unwrap();
    let blobs = BlobDir::open(&state.join("blobs")).unwrap();
    let mut m = Master::with_store(ReplicatedStore::new(local, c.clone(), blobs.clone()), blobs);
    m.trust_add(&fixture::vendor_pub(&rel), "vendor").unwrap();
    let report = m.import_from(&image[..], true, &mut |_, _| {}).unwrap();
    let wanted = m.store().referenced_blobs().unwrap();
    assert!(!wanted.is_empty());
    (report.release, wanted)
}

#[test]
fn every_acknowledged_write_survives_repeated_failovers_exactly_once() {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};
    let tmp = tempfile::tempdir().unwrap();
    let cfgs = configs(3);
    let members: Arc<Mutex<Vec<Option<Arc<Cluster>>>>> = Arc::new(Mutex::new(
        cfgs.iter().map(|c| Some(start(tmp.path(), c))).collect(),
    ));
    {
        let m = members.lock().unwrap();
        serving(&m);
        settled(&m);
    }
    // A release, imported through member 1 as the operator's CLI would: its blobs are on
    // every member before the import returns.
    let release = {
        let c = members.lock().unwrap()[0].clone().unwrap();
        let (release, wanted) = import_through(tmp.path(), &c, "");
        for id in 1..=3 {
            let dir = BlobDir::open(&tmp.path().join(format!("m{id}/blobs"))).unwrap();
            for sha in &wanted {
                assert!(dir.contains(sha), "member {id} holds blob {sha}");
            }
        }
        release
    };
    let stop = Arc::new(AtomicBool::new(false));
    // The client: one write at a time, through a member that runs, round robin: a card,
    // then an assignment of the release to it.
    let client = {
        let members = members.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut acked = Vec::new();
            let mut unknown = Vec::new();
            let mut n: u8 = 0;
            while !stop.load(Ordering::Relaxed) && n < 200 {
                n += 1;
                let c = {
                    let m = members.lock().unwrap();
                    let up: Vec<Arc<Cluster>> = m.iter().flatten().cloned().collect();
                    up[usize::from(n) % up.len()].clone()
                };
                match c.write(Op::RecordIdentity {
                    id: identity(n),
                    now: 5000 + i64::from(n),
                }) {
                    Ok(OpResult::Flag(true)) => acked.push(("identity", n)),
                    Ok(other) => panic!("write {n}: {other:?}"),
                    Err(_) => {
                        // Its assignment would be refused if the card was not written.
                        unknown.push(("identity", n));
                        continue;
                    }
                }
                let assignment = Assignment {
                    target: Target::Node(identity(n).mac),
                    release: Some(release.clone()),
                    pins: Default::default(),
                    set_at: 5000 + i64::from(n),
                };
                match c.write(Op::SetAssignment {
                    assignment,
                    kind: "assign".into(),
                    now: 5000 + i64::from(n),
                }) {
                    Ok(OpResult::Done) => acked.push(("assign", n)),
                    Ok(other) => panic!("assignment {n}: {other:?}"),
                    Err(_) => unknown.push(("assign", n)),
                }
            }
            (acked, unknown)
        })
    };
    // Five failovers: the serving member is stopped and brought back each time.
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(300));
        let (i, c) = {
            let mut m = members.lock().unwrap();
            let i = serving(&m);
            (i, m[i].take().unwrap())
        };
        c.shutdown();
        drop(c);
        std::thread::sleep(Duration::from_millis(200));
        let back = start(tmp.path(), &cfgs[i]);
        members.lock().unwrap()[i] = Some(back);
    }
    stop.store(true, Ordering::Relaxed);
    let (acked, unknown) = client.join().unwrap();
    assert!(
        acked.len() > 20,
        "the client made progress: {} acked",
        acked.len()
    );
    {
        let m = members.lock().unwrap();
        serving(&m);
        settled(&m);
    }
    for m in members.lock().unwrap().iter_mut() {
        m.take().unwrap().shutdown();
    }
    let d1 = dump(tmp.path(), 1);
    for id in 2..=3 {
        assert_eq!(
            dump(tmp.path(), id),
            d1,
            "member {id} differs from member 1"
        );
    }
    let db = SqliteStore::open(&tmp.path().join("m1/master.db")).unwrap();
    for n in 1..=200u8 {
        let mac = identity(n).mac;
        for kind in ["identity", "assign"] {
            let events = db
                .events(Some(&mac), 100)
                .unwrap()
                .into_iter()
                .filter(|e| e.kind == kind)
                .count();
            if acked.contains(&(kind, n)) {
                assert_eq!(events, 1, "acknowledged {kind} {n} is there exactly once");
            } else if unknown.contains(&(kind, n)) {
                assert!(
                    events <= 1,
                    "{kind} {n} of unknown outcome is there at most once"
                );
            } else {
                assert_eq!(events, 0, "{kind} {n} was never made");
            }
        }
    }
}

#[test]
fn a_leader_that_loses_its_quorum_gives_up_a_write_as_of_unknown_outcome() {
    let tmp = tempfile::tempdir().unwrap();
    let cfgs = configs(3);
    let (mut members, first) = made(tmp.path(), &cfgs);
    for (i, m) in members.iter_mut().enumerate() {
        if i != first {
            m.take().unwrap().shutdown();
        }
    }
    let leader = members[first].take().unwrap();
    let t0 = Instant::now();
    let e = leader
        .write(Op::RecordIdentity {
            id: identity(7),
            now: 6000,
        })
        .unwrap_err();
    assert!(
        matches!(&e, ClusterError::Unknown { message, .. } if message.contains("no quorum")),
        "{e}"
    );
    assert!(
        t0.elapsed() < WRITE_TIMEOUT,
        "given up at once, not at the deadline"
    );
    assert_eq!(
        leader.serving(),
        None,
        "a leader without a quorum does not serve"
    );
    leader.shutdown();
}

#[test]
fn a_member_is_added_catches_up_votes_and_is_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let cfgs = configs(3);
    let (mut members, first) = made(tmp.path(), &cfgs);
    members[first]
        .as_ref()
        .unwrap()
        .write(Op::RecordIdentity {
            id: identity(1),
            now: 7000,
        })
        .unwrap();
    // A fourth master card: its own cluster.toml names no initial members.
    let fourth = ClusterConfig {
        id: 4,
        listen: format!("127.0.0.1:{}", port()),
        epoch_base: 10,
        witness: false,
        members: vec![],
    };
    members.push(Some(start(tmp.path(), &fourth)));
    // Asked on a follower; the leader adds it.
    let asker = members[(first + 1) % 3].as_ref().unwrap().clone();
    asker
        .change_members(net::MemberChange::Add {
            id: 4,
            addr: fourth.listen.clone(),
        })
        .unwrap();
    settled(&members);
    let st = members[3].as_ref().unwrap().status();
    assert_eq!(st.members.iter().filter(|m| m.voter).count(), 4, "{st:#?}");
    assert!(
        dump(tmp.path(), 4).contains("02:66:00:00:00:01"),
        "it holds the writes from before"
    );
    // Removed again: three voters; removing a stranger is refused.
    asker
        .change_members(net::MemberChange::Remove { id: 4 })
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while asker.status().members.iter().filter(|m| m.voter).count() != 3 {
        assert!(Instant::now() < deadline, "{:#?}", asker.status());
        std::thread::sleep(Duration::from_millis(20));
    }
    let e = asker
        .change_members(net::MemberChange::Remove { id: 9 })
        .unwrap_err();
    assert!(
        matches!(&e, ClusterError::Refused { message, .. } if message.contains("not a voting member")),
        "{e}"
    );
    shut_down(members);
}

#[test]
fn two_voters_without_a_witness_survive_no_loss_and_never_split() {
    let tmp = tempfile::tempdir().unwrap();
    let cfgs = configs(2);
    let (mut members, first) = made(tmp.path(), &cfgs);
    // Either card lost: the survivor holds no quorum, so it neither serves nor writes.
    members[first].take().unwrap().shutdown();
    let survivor = members[1 - first].as_ref().unwrap();
    std::thread::sleep(Duration::from_millis(2 * ELECTION_MAX_MS));
    assert_eq!(survivor.serving(), None, "{:#?}", survivor.status());
    let e = survivor
        .write(Op::RecordIdentity {
            id: identity(2),
            now: 8000,
        })
        .unwrap_err();
    assert!(
        matches!(e, ClusterError::NoLeader(_) | ClusterError::Unknown { .. }),
        "{e}"
    );
    // The lost card back: one of the two serves again.
    members[first] = Some(start(tmp.path(), &cfgs[first]));
    serving(&members);
    shut_down(members);
}

#[test]
fn a_switchover_to_a_member_still_fetching_blobs_is_refused_until_it_has_them() {
    let tmp = tempfile::tempdir().unwrap();
    let cfgs = configs(3);
    let (mut members, first) = made(tmp.path(), &cfgs);
    // One member is down while a release with a 48 MiB package is imported: the other
    // two hold its blobs (a majority), it fetches them when it returns.
    let lag = (first + 1) % 3;
    members[lag].take().unwrap().shutdown();
    let files = tmp.path().join("release/files");
    std::fs::create_dir_all(&files).unwrap();
    let big: Vec<u8> = (0..48u32 << 20)
        .map(|i| (i ^ (i >> 11)).to_le_bytes()[0])
        .collect();
    std::fs::write(files.join("big.sqfs"), &big).unwrap();
    let extra = "[[package]]\nname = \"big\"\nversion = \"1.0.0\"\narch = \"x86_64\"\n\
                 file = \"files/big.sqfs\"\nprovides = []\ndepends = {}\n";
    let leader = members[first].as_ref().unwrap().clone();
    import_through(tmp.path(), &leader, extra);
    members[lag] = Some(start(tmp.path(), &cfgs[lag]));
    let back = members[lag].as_ref().unwrap().clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    while back.status().missing_blobs == 0 {
        assert!(
            Instant::now() < deadline,
            "the returning member never lacked a blob"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let e = leader.switchover(cfgs[lag].id, 9000).unwrap_err();
    assert!(
        matches!(&e, ClusterError::NotComplete { why, .. } if why.contains("lacks")),
        "{e}"
    );
    // Once it holds them, the switchover goes through.
    let deadline = Instant::now() + Duration::from_secs(60);
    while back.status().missing_blobs > 0 {
        assert!(
            Instant::now() < deadline,
            "the returning member did not fetch its blobs"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let s = leader.switchover(cfgs[lag].id, 9001).unwrap();
    assert!(s.serving, "{s:#?}");
    shut_down(members);
}

#[test]
fn a_batch_of_card_reports_is_one_entry_and_every_read_sees_it() {
    let tmp = tempfile::tempdir().unwrap();
    let cfgs = configs(3);
    let (members, first) = made(tmp.path(), &cfgs);
    let c = members[first].as_ref().unwrap().clone();
    let state = tmp.path().join(format!("m{}", c.config().id));
    let local = SqliteStore::open(&state.join("master.db")).unwrap();
    let blobs = BlobDir::open(&state.join("blobs")).unwrap();
    let mut s = ReplicatedStore::new(local, c.clone(), blobs);
    for n in 1..=3 {
        s.record_identity(&identity(n), 100).unwrap();
    }
    let before = c.status().last_log_index;
    s.begin_batch().unwrap();
    for n in 1..=3 {
        s.record_state(&identity(n).mac, NodeState::Fetching, None, 101)
            .unwrap();
    }
    assert_eq!(
        c.status().last_log_index,
        before,
        "queued, not yet proposed"
    );
    // A read sends them first, as one entry, and sees them.
    let node = s.node(&identity(2).mac).unwrap().unwrap();
    assert_eq!(node.state, NodeState::Fetching);
    assert_eq!(
        c.status().last_log_index,
        before.map(|i| i + 1),
        "three reports, one entry"
    );
    // A refused report among others: the others stand, the refusal is returned.
    s.record_state(&identity(1).mac, NodeState::Ready, None, 102)
        .unwrap();
    s.record_state(
        &MacAddr([0x02, 0x66, 0, 0, 0, 77]),
        NodeState::Ready,
        None,
        102,
    )
    .unwrap();
    let e = s.end_batch().unwrap_err();
    assert!(e.to_string().contains("unknown node"), "{e}");
    assert_eq!(
        s.node(&identity(1).mac).unwrap().unwrap().state,
        NodeState::Ready
    );
    // Outside a batch a report goes at once.
    s.record_state(&identity(3).mac, NodeState::Ready, None, 103)
        .unwrap();
    assert_eq!(
        SqliteStore::open(&state.join("master.db"))
            .unwrap()
            .node(&identity(3).mac)
            .unwrap()
            .unwrap()
            .state,
        NodeState::Ready
    );
    drop(s);
    shut_down(members);
}

/// Presence and agents' reports go through the cluster as card reports: queued in a
/// batch, one entry, the same rows and history on every member; an unchanged report
/// adds no row change anywhere.
#[test]
fn presence_and_health_reports_are_batched_and_replicated() {
    use crate::store::{Health, NodeHealth};
    use shelfboot_proto::id::Digest;

    let tmp = tempfile::tempdir().unwrap();
    let cfgs = configs(2);
    let (members, first) = made(tmp.path(), &cfgs);
    let c = members[first].as_ref().unwrap().clone();
    let state = tmp.path().join(format!("m{}", c.config().id));
    let local = SqliteStore::open(&state.join("master.db")).unwrap();
    let blobs = BlobDir::open(&state.join("blobs")).unwrap();
    let mut s = ReplicatedStore::new(local, c.clone(), blobs);
    for n in 1..=2 {
        s.record_identity(&identity(n), 100).unwrap();
    }
    let report = NodeHealth {
        health: Health::Healthy,
        running: Some(Digest([0xc0; 32])),
        rolled_back_from: Some(Digest([0xd1; 32])),
        dropped: 0,
        detail: "never healthy".into(),
    };
    let before = c.status().last_log_index;
    s.begin_batch().unwrap();
    s.record_health(&identity(1).mac, &report, 110).unwrap();
    s.mark_absent(&identity(2).mac, 12, 112).unwrap();
    assert_eq!(
        c.status().last_log_index,
        before,
        "queued, not yet proposed"
    );
    s.end_batch().unwrap();
    assert_eq!(
        c.status().last_log_index,
        before.map(|i| i + 1),
        "one entry"
    );
    s.begin_batch().unwrap();
    s.record_health(&identity(1).mac, &report, 120).unwrap();
    s.mark_present(&identity(2).mac, 121).unwrap();
    s.end_batch().unwrap();
    // Every member has applied the last entry (the metrics of a member may lag its
    // apply, so wait for the index itself).
    let target = c.status().last_log_index;
    let deadline = Instant::now() + Duration::from_secs(20);
    while members
        .iter()
        .flatten()
        .any(|m| m.status().applied_index < target)
    {
        assert!(
            Instant::now() < deadline,
            "a member did not apply the reports"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let n1 = s.node(&identity(1).mac).unwrap().unwrap();
    assert_eq!(n1.health.as_ref(), Some(&report));
    assert_eq!(n1.last_seen, Some(110), "the repeated report wrote nothing");
    assert!(
        n1.state_reason
            .as_deref()
            .is_some_and(|r| r.starts_with("rolled back on its own from set d1d1")),
        "{n1:?}"
    );
    let kinds: Vec<String> = s
        .events(Some(&identity(2).mac), 10)
        .unwrap()
        .into_iter()
        .map(|e| format!("{} {}", e.kind, e.detail))
        .collect();
    assert_eq!(
        kinds[1..],
        ["absent not heard for 12 s", "present present again"]
    );
    drop(s);
    shut_down(members);
    let other = cfgs[(first + 1) % 2].id;
    assert_eq!(
        dump(tmp.path(), other),
        dump(tmp.path(), cfgs[first].id),
        "both members hold the same rows"
    );
}
