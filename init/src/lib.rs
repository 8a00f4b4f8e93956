//! shelfboot init: the static PID 1 of a line card's initramfs.
//!
//! The boot flow ([`flow`]) is: mount the kernel filesystems ([`mounts`]), read the
//! configuration from the kernel command line ([`config`]), load the kernel modules listed
//! by mkinitramfs ([`modules`]), bring the backplane link up ([`net`]), attach the UBI
//! flash and open card's store ([`flash`]), let a [`flow::Provisioner`] talk to the master
//! (the card agent plugs in there), then hand off ([`handoff`]): kexec into the
//! committed boot image or switch_root into the committed packages. Every kernel
//! interaction goes through the [`kernel::Kernel`] trait so that the whole sequence is unit
//! tested against a recording fake; the only `unsafe` code is in [`sys`].
//!
//! Not here: the network conversation with the master (shelfboot-card's agent), the commit
//! protocol itself (shelfboot-card's `flash` module; init only provides UBI volumes).
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

#[allow(unsafe_code)]
pub mod sys;

pub mod config;
pub mod kernel;
pub mod logger;
pub mod modules;
pub mod mounts;

pub mod boottime;
pub mod check;
pub mod entropy;
pub mod flash;
pub mod flow;
pub mod handoff;
pub mod net;
pub mod pid1;
pub mod provision;
pub mod ram;
pub mod reaper;
pub mod resident;
pub mod watchdog;
