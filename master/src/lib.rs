//! shelfboot master: package and node databases, composite images, plan resolution and
//! the operator CLI with its local control socket.
//!
//! Layout: [`blobs`] (content-addressed files), [`keys`] (vendor keys), [`policy`] (classes,
//! overrides, defaults), [`image`] (composite format, manifest, pack), [`store`] (the
//! databases behind the [`store::Store`] trait, SQLite implementation), [`resolve`] (plan
//! resolution with pubgrub), [`master`] (the operations the CLI and the daemon run),
//! [`control`] (the control socket), [`cli`] (clap definitions and output).
//! The backplane service (`master serve`) is not here yet.

pub mod blobs;
pub mod image;
pub mod keys;
pub mod policy;
pub mod store;
