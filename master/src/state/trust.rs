//! Trusted vendor keys: the keys composite images must be signed with to import.

use std::path::Path;

use super::{Master, MasterError};
use crate::keys;
use crate::store::{Store, TrustedKey};

impl<S: Store> Master<S> {
    /// Trusts the public key in `path`.
    pub fn trust_add(&mut self, path: &Path, comment: &str) -> Result<TrustedKey, MasterError> {
        let key = keys::read_verifying_key(path)?;
        let rec = TrustedKey {
            key_id: keys::key_id(&key),
            public_key: hex::encode(key.as_bytes()),
            comment: if comment.is_empty() {
                path.display().to_string()
            } else {
                comment.to_owned()
            },
            added_at: self.now(),
        };
        self.store.trust_key(&rec)?;
        Ok(rec)
    }

    /// Stops trusting a key.
    pub fn trust_remove(&mut self, key_id: &str) -> Result<(), MasterError> {
        Ok(self.store.untrust_key(key_id, self.now())?)
    }

    /// Trusted keys.
    pub fn trust_list(&self) -> Result<Vec<TrustedKey>, MasterError> {
        Ok(self.store.trusted_keys()?)
    }
}
