//! shelfboot master: package and node databases, composite images, plan resolution and
//! the operator CLI with its local control socket.
//!
//! Layout: [`blobs`] (content-addressed files), [`keys`] (vendor keys), [`policy`] (classes,
//! overrides, defaults), [`image`] (composite format, manifest, pack), [`store`] (the
//! databases behind the [`store::Store`] trait, SQLite implementation), [`resolve`] (plan
//! resolution with pubgrub), [`state`] (the master's state and its operations: what the
//! CLI, the daemon and the backplane service run), [`control`] (the control socket, the
//! state lock and who owns the state), [`cli`] (clap definitions, output, `decode`),
//! [`serve`] (the backplane service), [`watch`] (the live view of a serving master),
//! [`config`] (the configuration file), [`logging`] (log lines for a terminal or the
//! journal).

pub mod blobs;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod control;
pub mod image;
pub mod keys;
pub mod logging;
pub mod policy;
pub mod resolve;
pub mod serve;
pub mod state;
pub mod store;
pub mod watch;
