//! shelfboot's test kit: what the tests of several crates share around the product code.
//!
//! - [`tier`]: the one gate of the root-only test tiers (network namespaces, QEMU). Tier
//!   tests are `#[ignore = "tier: ..."]`, so a plain `cargo test` lists them as ignored
//!   with the reason; a tier test that runs was asked for, and [`tier::require`] fails it
//!   with what is missing (root, `/dev/net/tun`, a tool) instead of letting it pass
//!   untested.
//! - [`netns`]: the one network-namespace fixture. [`netns::Netns`] is a named namespace
//!   deleted on drop (commands inside it, threads that enter it, tbf shaping, an
//!   nftables loss rule on its bridge); [`netns::Lab`] is the common topology of one
//!   namespace with a bridge and N veth ports. The QEMU lab's backplane (taps for the
//!   cards, a master veth) and the benchmark's backplane (one namespace per endpoint)
//!   are topologies built on [`netns::Netns`] in their own crates.
//!
//! A dev-dependency of netio, tests, init and the QEMU lab's tests. Two crates depend on it
//! as a normal dependency because their *binaries* build namespaces at run time: the QEMU
//! lab (`shelfboot-lab demo` runs the backplane) and the benchmark (`shelfboot-bench`,
//! `netio-ceiling`). No product binary that goes on a card or runs the master links it.
//!
//! Not here: the QEMU scenario prelude (it needs the lab crate's kernel and release
//! builder: `shelfboot_qemu::scenario`), sample protocol values (`shelfboot_proto::samples`).

pub mod netns;
pub mod tier;
