//! shelfboot benchmarks: shelfboot against TFTP, HTTP, udpcast and uftp on one namespace
//! backplane, next to the raw AF_PACKET ceiling (`ceiling`, also printed per I/O path by the
//! `netio-ceiling` binary), a 200-package release to 16 simulated cards (`release`), the
//! takeover after the serving master of a three-master cluster is killed (`failover`), and
//! the QEMU-lab flash and boot-path measurements (`lab`). The binary `shelfboot-bench`
//! wires these modules; see docs/benchmarks.md.
//!
//! This is a measurement command, not a test suite: it asserts nothing about the
//! numbers, it reports them (and hangs and failures) as they are.

pub mod backplane;
pub mod ceiling;
pub mod cpuacct;
pub mod failover;
pub mod lab;
pub mod peers;
pub mod plot;
pub mod proc;
pub mod release;
pub mod report;
pub mod scenarios;
pub mod shelfboot;
pub mod sockbuf;
