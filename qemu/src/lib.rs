//! shelfboot QEMU lab: real Debian kernels booting our initramfs under TCG, with emulated
//! NAND (nandsim) or persistent flash (block2mtd over a disk image) and a bridged
//! backplane in a private network namespace.
//!
//! Modules: [`kernel`] (apt acquisition and cache), [`kbuild`] (the arm64 kernel built
//! from Debian's source, cached beside it), [`vmlinux`] (PVH extraction),
//! [`backplane`] (netns, bridge, taps, loss, raw test ports), [`card`] (one VM: console
//! log, waits, power cut/cycle), [`flash`] (nandsim and block2mtd parameters),
//! [`hostbin`] (host tools for test images), [`shelf`] (cards on a backplane), [`monitor`]
//! (where a timed-out VM's CPU is), [`cmd`], [`busybox`] (shell-init lab images; mtd-utils
//! over a card's flash image).
//! docs/lab.md explains the lab and how to add a scenario.

pub mod backplane;
pub mod busybox;
pub mod card;
pub mod cmd;
pub mod flash;
pub mod hostbin;
pub mod kbuild;
pub mod kernel;
pub mod monitor;
pub mod release;
pub mod scenario;
pub mod shelf;
pub mod vmlinux;

pub use backplane::{Backplane, RawPort};
pub use card::{Card, CardConfig, Nic, NicModel, Pattern};
pub use kernel::Kernel;
pub use shelf::Shelf;
