//! shelfboot master: package and node databases, composite images, plan resolution and
//! the operator CLI with its local control socket.
//!
//! Layout: [`blobs`] (content-addressed files), [`keys`] (vendor keys), [`policy`] (classes,
//! overrides, defaults), [`image`] (composite format, manifest, pack), [`store`] (the
//! databases behind the [`store::Store`] trait, SQLite implementation), [`resolve`] (plan
//! resolution with pubgrub), [`master`] (the operations the CLI and the daemon run, and the
//! calls the backplane service will make), [`control`] (the control socket and state lock),
//! [`cli`] (clap definitions and output), [`serve`] (the backplane service, issue 4).

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
