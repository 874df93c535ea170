//! Application-scoped API tokens: stored as SHA-256 hashes, found by hash.

use sha2::{Digest, Sha256};

use super::{Page, PageReq, Store, StoreError, TokenRecord, decode, encode, keys};
use crate::domain::{AppId, TokenId};

/// The hash under which a token is stored and looked up.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// What an application-scoped token starts with.
pub const TOKEN_PREFIX: &str = "whd_app_";

impl Store {
    /// Creates a token for `app`; returns its record and the token itself, which
    /// is not kept (only its hash is) and so can be shown only this once.
    pub fn issue_token(
        &self,
        app: &AppId,
        description: String,
        now_ms: i64,
    ) -> Result<(TokenRecord, String), StoreError> {
        let token = format!("{TOKEN_PREFIX}{}", crate::domain::random_token());
        let rec = TokenRecord {
            id: TokenId::new(now_ms),
            app_id: app.clone(),
            description,
            hash: token_hash(&token),
            created_ms: now_ms,
        };
        let mut batch = sled::Batch::default();
        batch.insert(keys::token(&rec.id), encode(&rec));
        batch.insert(keys::token_hash(&rec.hash), rec.id.as_str().as_bytes());
        self.tree.apply_batch(batch)?;
        Ok((rec, token))
    }

    /// The token whose secret hashes to `hash`, if it exists.
    pub fn token_by_hash(&self, hash: &[u8; 32]) -> Result<Option<TokenRecord>, StoreError> {
        let Some(id) = self.tree.get(keys::token_hash(hash))? else {
            return Ok(None);
        };
        match TokenId::parse(&String::from_utf8_lossy(&id)) {
            Some(id) => self.get(&keys::token(&id)),
            None => Ok(None),
        }
    }

    pub fn get_token(&self, id: &TokenId) -> Result<Option<TokenRecord>, StoreError> {
        self.get(&keys::token(id))
    }

    /// Tokens, newest first, optionally of one application.
    pub fn list_tokens(
        &self,
        req: &PageReq,
        app: Option<&AppId>,
    ) -> Result<Page<TokenRecord>, StoreError> {
        self.page(&[keys::ns::TOKEN], req, |k, v| {
            let t: TokenRecord = decode(k, v)?;
            Ok(app.is_none_or(|a| &t.app_id == a).then_some(t))
        })
    }

    /// Adds the removal of every token of `app` to `batch` (the app is going).
    pub(super) fn delete_tokens_into(
        &self,
        batch: &mut sled::Batch,
        app: &AppId,
    ) -> Result<(), StoreError> {
        for entry in self.tree.scan_prefix([keys::ns::TOKEN]) {
            let (k, v) = entry?;
            let t: TokenRecord = decode(&k, &v)?;
            if &t.app_id == app {
                batch.remove(k);
                batch.remove(keys::token_hash(&t.hash));
            }
        }
        Ok(())
    }

    pub fn delete_token(&self, rec: &TokenRecord) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        batch.remove(keys::token(&rec.id));
        batch.remove(keys::token_hash(&rec.hash));
        self.tree.apply_batch(batch)?;
        Ok(())
    }
}
