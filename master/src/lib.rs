//! shelfboot master: package and node databases, composite images, plan resolution and
//! the operator CLI with its local control socket.
//!
//! Layout: [`blobs`] (content-addressed files), [`keys`] (vendor keys), [`policy`] (classes,
//! overrides, defaults), [`image`] (composite format, manifest, pack), [`store`] (the
//! databases behind the [`store::Store`] trait, SQLite implementation), [`resolve`] (plan
//! resolution with pubgrub), [`state`] (the master's state and its operations: what the
//! CLI, the daemon and the backplane service run), [`control`] (the control socket, the
//! state lock and who owns the state), [`cli`] (clap definitions, output, `decode`),
//! [`serve`] (the backplane service).

pub mod blobs;
pub mod cli;
pub mod control;
pub mod image;
pub mod keys;
pub mod policy;
pub mod resolve;
pub mod serve;
pub mod state;
pub mod store;

/// The messages of an error and its `source()` chain, outermost first.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut out = vec![err.to_string()];
    let mut cur = err.source();
    while let Some(e) = cur {
        out.push(e.to_string());
        cur = e.source();
    }
    out
}
