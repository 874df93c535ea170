//! Encryption at rest of the records that hold secrets (endpoints: signing
//! secrets, credentials, custom headers). XChaCha20-Poly1305 with a random
//! nonce per write; the record's key is the associated data, so a sealed value
//! cannot be moved to another record unnoticed.
//!
//! A sealed value is `MAGIC, key id (4), nonce (24), ciphertext and tag`. The key
//! id (the first bytes of the key's SHA-256) says which key of the `Keyring`
//! opens it, which is what lets a key rotation be resumed after a crash.

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};

const MAGIC: u8 = 0xE5;
const ID_LEN: usize = 4;
const NONCE_LEN: usize = 24;
const HEADER_LEN: usize = 1 + ID_LEN + NONCE_LEN;

/// A 256-bit data key.
#[derive(Clone)]
pub struct DataKey {
    id: [u8; ID_LEN],
    cipher: XChaCha20Poly1305,
    bytes: [u8; 32],
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DataKey({})", self.id_hex())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("an encryption key is 32 bytes as standard base64 (44 characters)")]
    Malformed,
}

impl DataKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        let digest = Sha256::digest(bytes);
        Self {
            id: digest[..ID_LEN]
                .try_into()
                .expect("a digest is longer than an id"),
            cipher: XChaCha20Poly1305::new(&bytes.into()),
            bytes,
        }
    }

    pub fn generate() -> Self {
        Self::from_bytes(rand::random())
    }

    /// Parses the base64 form (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| KeyError::Malformed)?;
        Ok(Self::from_bytes(
            bytes.try_into().map_err(|_| KeyError::Malformed)?,
        ))
    }

    /// The base64 form, for a key file.
    pub fn encode(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.bytes)
    }

    /// A short public name of the key (not secret): for messages.
    pub fn id_hex(&self) -> String {
        self.id.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// The key new writes are sealed with, and older keys that can still open.
#[derive(Clone, Debug)]
pub struct Keyring {
    current: DataKey,
    older: Vec<DataKey>,
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("the record is not encrypted")]
    NotSealed,
    #[error("the record was encrypted with key {0}, which is not configured")]
    UnknownKey(String),
    #[error("the record does not decrypt: it was altered or moved")]
    Corrupt,
}

impl Keyring {
    pub fn new(current: DataKey) -> Self {
        Self {
            current,
            older: Vec::new(),
        }
    }

    /// Also opens what `key` sealed (a key being rotated away from, or to).
    pub fn with_older(mut self, key: DataKey) -> Self {
        if key.id != self.current.id {
            self.older.push(key);
        }
        self
    }

    pub fn current(&self) -> &DataKey {
        &self.current
    }

    pub fn seal(&self, record_key: &[u8], plain: &[u8]) -> Vec<u8> {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let sealed = self
            .current
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: record_key,
                },
            )
            .expect("XChaCha20-Poly1305 encrypts any record size we store");
        let mut out = Vec::with_capacity(HEADER_LEN + sealed.len());
        out.push(MAGIC);
        out.extend_from_slice(&self.current.id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    pub fn open(&self, record_key: &[u8], value: &[u8]) -> Result<Vec<u8>, SealError> {
        if value.len() < HEADER_LEN || value[0] != MAGIC {
            return Err(SealError::NotSealed);
        }
        let id = &value[1..1 + ID_LEN];
        let key = std::iter::once(&self.current)
            .chain(&self.older)
            .find(|k| k.id == id)
            .ok_or_else(|| {
                SealError::UnknownKey(id.iter().map(|b| format!("{b:02x}")).collect())
            })?;
        key.cipher
            .decrypt(
                XNonce::from_slice(&value[1 + ID_LEN..HEADER_LEN]),
                Payload {
                    msg: &value[HEADER_LEN..],
                    aad: record_key,
                },
            )
            .map_err(|_| SealError::Corrupt)
    }

    /// Was `value` sealed with another key than the current one?
    pub fn is_stale(&self, value: &[u8]) -> bool {
        value.len() < HEADER_LEN || value[0] != MAGIC || value[1..1 + ID_LEN] != self.current.id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_binds_to_the_record_key() {
        let ring = Keyring::new(DataKey::generate());
        let sealed = ring.seal(b"E/a", b"whsec_secret");
        assert!(!sealed.windows(12).any(|w| w == b"whsec_secret"));
        assert_eq!(ring.open(b"E/a", &sealed).unwrap(), b"whsec_secret");
        assert!(matches!(
            ring.open(b"E/b", &sealed),
            Err(SealError::Corrupt)
        ));
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(matches!(
            ring.open(b"E/a", &tampered),
            Err(SealError::Corrupt)
        ));
        assert!(matches!(
            ring.open(b"E/a", b"plain"),
            Err(SealError::NotSealed)
        ));
        // Two seals of the same value differ (random nonces).
        assert_ne!(ring.seal(b"E/a", b"x"), ring.seal(b"E/a", b"x"));
    }

    #[test]
    fn older_keys_open_and_are_stale() {
        let old = DataKey::generate();
        let sealed = Keyring::new(old.clone()).seal(b"k", b"v");
        let other = Keyring::new(DataKey::generate());
        assert!(matches!(
            other.open(b"k", &sealed),
            Err(SealError::UnknownKey(_))
        ));
        let ring = other.with_older(old);
        assert_eq!(ring.open(b"k", &sealed).unwrap(), b"v");
        assert!(ring.is_stale(&sealed));
        assert!(!ring.is_stale(&ring.seal(b"k", b"v")));
    }

    #[test]
    fn keys_parse_from_base64_only_at_full_length() {
        let k = DataKey::generate();
        assert_eq!(
            DataKey::parse(&format!(" {}\n", k.encode())).unwrap().id,
            k.id
        );
        assert!(DataKey::parse("c2hvcnQ=").is_err());
        assert!(DataKey::parse("not base64!").is_err());
    }
}
