//! shelfboot mkinitramfs: reproducible newc initramfs images for the cards, and the boot
//! images (kernel + initramfs + command line) the master serves.
//!
//! Modules: [`newc`] (cpio writer and reader), [`tree`] (sorted image contents with fixed
//! metadata), [`compress`], [`modules`] (modules.dep closure and load.list), [`build`]
//! (what goes where), [`bootimage`] (the container, with a pure parser the card uses) and
//! [`cli`]. Formats are documented in docs/lab.md.
//!
//! With `default-features = false` only the pure formats remain ([`newc`], [`tree`],
//! [`modules`], [`bootimage`]): no compression libraries, for the static card init.

pub mod bootimage;
#[cfg(feature = "build")]
pub mod build;
#[cfg(feature = "build")]
pub mod cli;
#[cfg(feature = "build")]
pub mod compress;
pub mod modules;
pub mod newc;
pub mod tree;
