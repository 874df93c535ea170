//! Standard Webhooks signatures: HMAC-SHA256 over `id.timestamp.body`.
//!
//! Pure functions. Must not do IO or read the clock: callers pass the timestamp.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::domain::Secret;

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &Secret, msg_id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
    let mut mac =
        HmacSha256::new_from_slice(secret.key()).expect("HMAC accepts keys of any length");
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// One signature: `v1,<base64 HMAC-SHA256(secret, id.timestamp.body)>`.
pub fn sign(secret: &Secret, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let tag = mac(secret, msg_id, timestamp, body).finalize().into_bytes();
    format!("v1,{}", B64.encode(tag))
}

/// The `webhook-signature` header value: one signature per valid secret, space-separated.
pub fn signature_header<'a>(
    secrets: impl IntoIterator<Item = &'a Secret>,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    secrets
        .into_iter()
        .map(|s| sign(s, msg_id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// True when any `v1,` signature in `header` is valid for `secret` (constant-time compare).
pub fn verify(secret: &Secret, msg_id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
    header.split(' ').any(|part| {
        let Some(sig) = part.strip_prefix("v1,") else {
            return false;
        };
        let Ok(tag) = B64.decode(sig) else {
            return false;
        };
        mac(secret, msg_id, timestamp, body)
            .verify_slice(&tag)
            .is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn known_secret() -> Secret {
        Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap()
    }

    #[test]
    fn known_answer() {
        let sig = sign(
            &known_secret(),
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn header_carries_every_secret() {
        let a = known_secret();
        let b = Secret::generate();
        let h = signature_header([&a, &b], "msg_x", 5, b"{}");
        assert_eq!(h.split(' ').count(), 2);
        assert!(verify(&a, "msg_x", 5, b"{}", &h));
        assert!(verify(&b, "msg_x", 5, b"{}", &h));
        assert!(!verify(&Secret::generate(), "msg_x", 5, b"{}", &h));
    }

    proptest! {
        #[test]
        fn sign_verifies_and_any_flip_fails(body in proptest::collection::vec(any::<u8>(), 0..256),
                                            ts in 0i64..4_000_000_000,
                                            flip in any::<prop::sample::Index>()) {
            let s = known_secret();
            let h = sign(&s, "msg_1", ts, &body);
            prop_assert!(verify(&s, "msg_1", ts, &body, &h));
            if !body.is_empty() {
                let mut bad = body.clone();
                let i = flip.index(bad.len());
                bad[i] ^= 0x01;
                prop_assert!(!verify(&s, "msg_1", ts, &bad, &h));
            }
            prop_assert!(!verify(&s, "msg_1", ts + 1, &body, &h));
        }

        #[test]
        fn verify_never_panics(header in ".*") {
            let _ = verify(&known_secret(), "msg_1", 1, b"{}", &header);
        }
    }
}
