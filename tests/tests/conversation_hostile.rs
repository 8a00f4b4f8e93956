//! The conversation under hostile frames and at scale, in network namespaces (see
//! `conversation.rs` for the layout): a rogue master and garbage never cause a flash
//! write; a warm boot of 200 simulated cards moves no artifact byte. Network-namespace
//! tier: `#[ignore]`d with the reason, run by `./dev test` as root (docs/testing.md).

mod conv;

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    use super::conv::{Fixture, init_log, serial, spawn_cards, spawn_master};
    use rand::{Rng, SeedableRng};
    use shelfboot_card::flash::{FileVolumes, Store, StoreConfig, Volumes};
    use shelfboot_master::state::Master;
    use shelfboot_master::store::NodeIdentity;
    use shelfboot_netio::{PacketSocket, SocketConfig};
    use shelfboot_proto::data::{DataHeader, encode_data_frame};
    use shelfboot_proto::frame::{Header, Link, MacAddr, MessageType};
    use shelfboot_proto::msg::{
        self, Action, ArtifactKind, ArtifactRef, BootPhase, CommandBody, Join, Message, PlanBody,
        Verdict, set_digest,
    };
    use shelfboot_proto::sign::SigningKey;
    use shelfboot_testkit::netns::Lab;
    use shelfboot_testkit::tier::{self, Tier};

    /// A rogue on `iface` for `run_for`: answers every Solicit with well-formed plans signed by
    /// an untrusted key (nonce and session right), sends Joins, data, an untrusted Reset
    /// command, random bytes and bit-flipped copies of its frames. Returns frames sent.
    fn rogue(iface: &str, run_for: Duration) -> u64 {
        let mut sock = PacketSocket::open(iface, SocketConfig::default()).unwrap();
        let me = MacAddr(sock.mac().0);
        let key = SigningKey::from_seed(&[9u8; 32]);
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        let mut sent = 0u64;
        let end = Instant::now() + run_for;
        let mut seen: Vec<(u8, Vec<u8>)> = Vec::new();
        while Instant::now() < end {
            let mut solicits = Vec::new();
            sock.recv_batch(
                &mut |f: &[u8], _| {
                    if let Ok((h, Message::Solicit(s))) =
                        msg::decode_frame(f, shelfboot_proto::DEFAULT_ETHERTYPE)
                    {
                        solicits.push((h, s));
                    }
                },
                Duration::from_millis(20),
            )
            .unwrap();
            let mut frames: Vec<Vec<u8>> = Vec::new();
            for (h, s) in solicits {
                let link = Link {
                    dst: s.mac,
                    src: me,
                    ethertype: shelfboot_proto::DEFAULT_ETHERTYPE,
                };
                let art = ArtifactRef {
                    kind: ArtifactKind::BootImage,
                    name: "evil".into(),
                    version: "6.6.6".into(),
                    sha256: shelfboot_proto::msg::Digest([0x66; 32]),
                    size: 4096,
                };
                for verdict in [Verdict::Fetch, Verdict::Continue] {
                    let body = PlanBody {
                        artifacts: vec![art.clone()],
                        cmdline: "init=/evil".into(),
                        persist: true,
                        verdict,
                        digest: set_digest(std::slice::from_ref(&art), "init=/evil"),
                        nonce: s.nonce,
                        epoch: 99,
                        artifacts_omitted: false,
                        report_inventory: false,
                    };
                    let plan = Message::Plan(key.sign_plan(body).unwrap());
                    let mut buf = vec![0u8; shelfboot_proto::MAX_FRAME_LEN];
                    let n = msg::encode_message(&mut buf, &link, h.session, 1, &plan).unwrap();
                    buf.truncate(n);
                    frames.push(buf);
                }
                let join = Message::Join(Join {
                    transfer: 7,
                    artifact: shelfboot_proto::msg::Digest([0x66; 32]),
                    size: 4096,
                    group: s.mac,
                    block_size: 1408,
                    first_slice: 0,
                });
                let cmd = Message::Command(
                    key.sign_command(CommandBody {
                        action: Action::Reset,
                        target: None,
                        epoch: 99,
                        serial: 1,
                    })
                    .unwrap(),
                );
                for m in [join, cmd] {
                    let mut buf = vec![0u8; shelfboot_proto::MAX_FRAME_LEN];
                    let n = msg::encode_message(&mut buf, &link, h.session, 2, &m).unwrap();
                    buf.truncate(n);
                    frames.push(buf);
                }
                let mut buf = vec![0u8; shelfboot_proto::MAX_FRAME_LEN];
                let hdr = DataHeader::new(0, 0, 1408).unwrap();
                let n = encode_data_frame(
                    &mut buf,
                    &link,
                    &Header::new(MessageType::Data, 7, 3),
                    &hdr,
                    &[0x66; 1408],
                )
                .unwrap();
                buf.truncate(n);
                frames.push(buf);
                for f in frames.clone() {
                    seen.push((s.mac.0[5], f));
                }
            }
            // Corrupted copies of everything so far, and random bytes with our EtherType.
            for (_, f) in seen.iter().take(16) {
                let mut c = f.clone();
                let i = rng.gen_range(14..c.len());
                c[i] ^= 1 << rng.gen_range(0..8);
                frames.push(c);
            }
            for _ in 0..8 {
                let len = rng.gen_range(14..300);
                let mut f: Vec<u8> = (0..len).map(|_| rng.r#gen()).collect();
                f[..6].copy_from_slice(&[0xff; 6]);
                f[6..12].copy_from_slice(&me.0);
                f[12..14].copy_from_slice(&shelfboot_proto::DEFAULT_ETHERTYPE.to_be_bytes());
                frames.push(f);
            }
            let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
            sent += sock.send_batch(&refs).unwrap() as u64;
        }
        sent
    }

    #[test]
    #[ignore = "tier: network namespaces (root, iproute2, nftables); ./dev test runs it"]
    fn rogue_master_and_garbage_never_cause_a_write() {
        tier::require(&[Tier::Netns]);
        let _serial = serial();
        init_log();
        let tmp = tempfile::tempdir().unwrap();
        let fx = Fixture::new(tmp.path(), 4096);
        let lab = Lab::new("conv-rogue", 3).unwrap();
        let cards = fx.cards(3);
        let mut cfg = fx.sim_config("p1", cards.clone(), Duration::from_secs(4));
        cfg.timers.solicit_max = Duration::from_millis(500);
        let (reports, sent) = std::thread::scope(|s| {
            let c = spawn_cards(s, &lab, cfg, Arc::new(AtomicBool::new(false)));
            let r = s.spawn(|| {
                lab.enter().unwrap();
                rogue("p2", Duration::from_secs(4))
            });
            (c.join().unwrap(), r.join().unwrap())
        });
        assert!(sent > 100, "rogue sent {sent} frames");
        for (r, card) in reports.iter().zip(&cards) {
            assert!(r.decision.is_empty(), "card acted on a rogue: {r:?}");
            let c = r.counters;
            assert!(c.dropped_forged > 0, "{c:?}");
            assert!(c.dropped_malformed > 0, "{c:?}");
            assert!(c.dropped_unexpected + c.dropped_data > 0, "{c:?}");
            assert_eq!(c.plans_accepted + c.commands + c.bytes_written, 0, "{c:?}");
            let mut vols = FileVolumes::open(&card.dir).unwrap();
            assert!(
                vols.list().unwrap().is_empty(),
                "card {} wrote flash",
                card.mac
            );
        }
    }

    #[test]
    #[ignore = "tier: network namespaces (root, iproute2, nftables); ./dev test runs it"]
    fn warm_boot_of_200_cards_moves_no_artifact_byte() {
        tier::require(&[Tier::Netns]);
        let _serial = serial();
        init_log();
        let tmp = tempfile::tempdir().unwrap();
        let fx = Fixture::new(tmp.path(), 4096);
        let lab = Lab::new("conv-warm", 2).unwrap();
        let cards = fx.cards(200);
        // Factory state: every card's flash already holds its plan (burned from the blobs).
        let mut m = Master::open(&fx.state).unwrap();
        for c in &cards {
            m.add_node(
                &NodeIdentity {
                    mac: c.mac,
                    card_type: c.card_type.clone(),
                    arch: c.arch,
                    shelf: u32::from(c.shelf),
                    slot: u32::from(c.slot),
                    hw_rev: "sim".into(),
                    features: vec![],
                },
                None,
            )
            .unwrap();
            let plan = m.plan(&c.mac).unwrap();
            let vols = FileVolumes::open_or_format(&c.dir, 64 * 1024, 1024).unwrap();
            let (mut store, _) = Store::open(vols, StoreConfig::default()).unwrap();
            let refs = plan.artifact_refs();
            store.begin(&refs, &plan.cmdline).unwrap();
            for a in &refs {
                let f = std::fs::File::open(m.blobs().path(&a.sha256)).unwrap();
                store.stage(a, f).unwrap();
            }
            store.commit().unwrap();
        }
        drop(m);
        let mut cfg = fx.sim_config("p1", cards.clone(), Duration::from_secs(60));
        cfg.phase = BootPhase::WarmBoot;
        let stop_m = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let (reports, st) = std::thread::scope(|s| {
            let m = spawn_master(s, &lab, fx.serve_config("p0"), stop_m.clone());
            let c = spawn_cards(s, &lab, cfg, Arc::new(AtomicBool::new(false)));
            let reports = c.join().unwrap();
            stop_m.store(true, Ordering::Relaxed);
            (reports, m.join().unwrap())
        });
        let took = started.elapsed();
        eprintln!("stats: {st:?}");
        for r in &reports {
            assert!(
                r.decision == "kexec" && r.validated_only && !r.autonomous,
                "card {} did not validate: {r:?}",
                r.mac
            );
            assert_eq!(r.counters.bytes_written, 0);
        }
        assert_eq!(st.plans_continue, 200, "{st:?}");
        assert_eq!(st.plans_fetch, 0);
        assert_eq!(st.artifact_bytes, 0);
        assert!(st.sessions.is_empty());
        eprintln!(
            "warm boot of 200 cards: {took:?}, {} Solicits ({} coalesced, {} repeats re-answered), queue high water {}",
            st.solicits, st.solicits_coalesced, st.solicits_repeated, st.solicit_queue_high_water
        );
    }
}
