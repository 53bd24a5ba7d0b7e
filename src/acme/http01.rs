//! http-01 answers by token (placeholder until the listener lands).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// http-01 key authorizations by token, shared by the ACME client and the listener.
#[derive(Clone, Debug, Default)]
pub struct Http01Tokens(Arc<RwLock<HashMap<String, String>>>);

impl Http01Tokens {
    pub fn insert(&self, token: &str, key_authorization: &str) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token.to_owned(), key_authorization.to_owned());
    }

    pub fn remove(&self, token: &str) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(token);
    }
}
