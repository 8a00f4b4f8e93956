//! shelfboot benchmarks: shelfboot against TFTP, HTTP, udpcast and uftp on one namespace
//! backplane, next to the raw AF_PACKET ceiling (issue 7 items 1-5), and the QEMU-lab items 6-7 (`lab`). The binary
//! `shelfboot-bench` wires these modules; see docs/benchmarks.md.
//!
//! This is a measurement command, not a test suite: it asserts nothing about the
//! numbers, it reports them (and hangs and failures) as they are.

pub mod backplane;
pub mod lab;
pub mod peers;
pub mod plot;
pub mod proc;
pub mod report;
pub mod scenarios;
pub mod shelfboot;
