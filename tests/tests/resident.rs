//! The resident agent (what runs on a card after hand-off) against hostile and replayed
//! commands, on a real wire: network namespaces, port 0 plays the master (and an
//! attacker on the same backplane), port 1 is a card's resident agent driven by card's
//! `resident::turn`, the I/O turn init's resident loop uses. Network-namespace tier:
//! `#[ignore]`d with the reason, run by `./dev test` as root.

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    use shelfboot_card::resident::{Order, Resident, ResidentConfig, ResidentCounters, turn};
    use shelfboot_netio::{PacketSocket, SocketConfig};
    use shelfboot_proto::frame::{Link, MacAddr};
    use shelfboot_proto::msg::{
        Action, Alive, CommandBody, Digest, Health, Message, decode_frame, encode_message,
    };
    use shelfboot_proto::sign::{SigningKey, TrustAnchor};
    use shelfboot_testkit::netns::Lab;
    use shelfboot_testkit::tier::{self, Tier};

    const ET: u16 = shelfboot_proto::DEFAULT_ETHERTYPE;

    fn master_key() -> SigningKey {
        SigningKey::from_seed(&[21; 32])
    }

    fn card_config(last_command: Option<(u64, u64)>) -> ResidentConfig {
        ResidentConfig {
            mac: Lab::port_mac(1),
            ethertype: ET,
            anchor: TrustAnchor::new(vec![master_key().public_key()]),
            running: Some(Digest([6; 32])),
            persisted: true,
            epoch: 5,
            master: Some(Lab::port_mac(0)),
            last_command,
            alive_every: Duration::from_millis(300),
            health: Health::Healthy,
            rolled_back_from: None,
            detail: String::new(),
        }
    }

    /// Runs the card's resident agent on port 1 until it has an order, `stop` is set, or
    /// 20 s passed; returns the order and its counters.
    fn run_card(
        lab: &Lab,
        cfg: ResidentConfig,
        stop: &AtomicBool,
    ) -> (Option<Order>, ResidentCounters) {
        lab.enter().unwrap();
        let mut sock = PacketSocket::open(
            &lab.port(1),
            SocketConfig {
                ethertype: ET,
                ..SocketConfig::default()
            },
        )
        .unwrap();
        let mut agent = Resident::new(cfg, Instant::now());
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
            turn(&mut sock, &mut agent, Duration::from_millis(50)).unwrap();
            if let Some(o) = agent.take_order() {
                return (Some(o), *agent.counters());
            }
        }
        (None, *agent.counters())
    }

    /// The master's port: sends frames, collects the card's Alives.
    struct MasterPort {
        sock: PacketSocket,
    }

    impl MasterPort {
        fn open(lab: &Lab) -> Self {
            lab.enter().unwrap();
            let sock = PacketSocket::open(
                &lab.port(0),
                SocketConfig {
                    ethertype: ET,
                    ..SocketConfig::default()
                },
            )
            .unwrap();
            Self { sock }
        }

        fn command(&mut self, key: &SigningKey, target: Option<MacAddr>, stamp: (u64, u64)) {
            let body = CommandBody {
                action: Action::Reset,
                target,
                epoch: stamp.0,
                serial: stamp.1,
            };
            let m = Message::Command(key.sign_command(body).unwrap());
            self.send(target.unwrap_or(MacAddr::BROADCAST), &m);
        }

        fn send(&mut self, dst: MacAddr, m: &Message) {
            let mut buf = vec![0u8; shelfboot_proto::MAX_FRAME_LEN];
            let link = Link {
                dst,
                src: Lab::port_mac(0),
                ethertype: ET,
            };
            let n = encode_message(&mut buf, &link, 0, 1, m).unwrap();
            assert_eq!(self.sock.send_batch(&[&buf[..n]]).unwrap(), 1);
        }

        /// Alives received within `d`.
        fn alives(&mut self, d: Duration) -> Vec<Alive> {
            let mut out = Vec::new();
            let end = Instant::now() + d;
            while Instant::now() < end {
                self.sock
                    .recv_batch(
                        &mut |f: &[u8], _| {
                            if let Ok((_, Message::Alive(a))) = decode_frame(f, ET) {
                                out.push(a);
                            }
                        },
                        Duration::from_millis(50),
                    )
                    .unwrap();
            }
            out
        }
    }

    #[test]
    #[ignore = "tier: network namespaces (root); ./dev test runs it"]
    fn hostile_and_replayed_commands_are_dropped_counted_and_reported_then_a_valid_one_is_obeyed_once()
     {
        tier::require(&[Tier::Netns]);
        let lab = Lab::new("resident", 2).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (order, counters, alives) = std::thread::scope(|s| {
            let card = s.spawn(|| run_card(&lab, card_config(Some((5, 10))), &stop));
            let mut m = MasterPort::open(&lab);
            // The card is there: Alives arrive, addressed to us, healthy, nothing dropped.
            let first = m.alives(Duration::from_secs(2));
            assert!(!first.is_empty(), "no Alive from the card");
            assert_eq!(
                (
                    first[0].running,
                    first[0].health,
                    first[0].epoch,
                    first[0].dropped
                ),
                (Some(Digest([6; 32])), Health::Healthy, 5, 0)
            );
            let stranger = SigningKey::from_seed(&[99; 32]);
            let other_card = Lab::port_mac(7);
            for _ in 0..2 {
                // Forged: signed by a key the card does not trust.
                m.command(&stranger, None, (9, 1));
                m.command(&stranger, Some(Lab::port_mac(1)), (9, 2));
                // Replayed: the stamp the card last executed, an older one, an old epoch.
                m.command(&master_key(), None, (5, 10));
                m.command(&master_key(), None, (5, 9));
                m.command(&master_key(), None, (4, 50));
                // For another card, sent to every card.
                m.command(&master_key(), Some(other_card), (9, 3));
            }
            let reported = m.alives(Duration::from_secs(1));
            // Now a valid one, three copies as a master sends them.
            for _ in 0..3 {
                m.command(&master_key(), None, (5, 11));
            }
            let (order, counters) = card.join().unwrap();
            (order, counters, reported)
        });
        stop.store(true, Ordering::Relaxed);
        assert_eq!(
            order,
            Some(Order {
                action: Action::Reset,
                stamp: (5, 11)
            }),
            "{counters:?}"
        );
        assert_eq!(counters.commands, 1, "{counters:?}");
        assert_eq!(counters.dropped_forged, 4, "{counters:?}");
        assert_eq!(counters.dropped_replayed, 6, "{counters:?}");
        assert_eq!(counters.dropped_not_for_us, 2, "{counters:?}");
        let last = alives.last().expect("Alives after the hostile commands");
        assert_eq!(last.dropped, 10, "the master is told: {alives:?}");

        // After the reset, the stamp is on flash: its replay is refused by the next
        // resident agent too.
        let stop = AtomicBool::new(false);
        let (order, counters) = std::thread::scope(|s| {
            let card = s.spawn(|| run_card(&lab, card_config(Some((5, 11))), &stop));
            let mut m = MasterPort::open(&lab);
            assert!(!m.alives(Duration::from_secs(1)).is_empty());
            for _ in 0..3 {
                m.command(&master_key(), None, (5, 11));
            }
            m.alives(Duration::from_secs(1));
            stop.store(true, Ordering::Relaxed);
            card.join().unwrap()
        });
        assert_eq!(order, None);
        assert_eq!(counters.dropped_replayed, 3, "{counters:?}");
    }
}
