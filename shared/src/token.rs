//! Signed session tokens.
//!
//! A token is `v1.<payload>.<signature>`: the payload is base64url (no padding) of the JSON
//! `{"sid":"<session id>","exp":<unix seconds>}` and the signature is base64url of HMAC-SHA256 over the text
//! `v1.<payload>` with the configured secret. The signature is checked in constant time before the payload is
//! parsed, so forged input never reaches the JSON parser.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::keys::SessionId;

type HmacSha256 = Hmac<Sha256>;

/// Shortest accepted signing secret, in bytes.
pub const MIN_SECRET_LEN: usize = 32;
/// Longest accepted token, in bytes; anything longer is rejected before any work.
pub const MAX_TOKEN_LEN: usize = 1024;
const VERSION: &str = "v1";

/// Why a token was rejected. The string forms are stable (metric labels, logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No token was given.
    #[error("missing")]
    Missing,
    /// Not of the form `v1.<payload>.<signature>` or not decodable.
    #[error("malformed")]
    Malformed,
    /// The signature does not match.
    #[error("bad_signature")]
    BadSignature,
    /// The token has expired.
    #[error("expired")]
    Expired,
    /// The token is valid but its session was closed.
    #[error("revoked")]
    Revoked,
}

#[derive(Serialize, Deserialize)]
struct Claims {
    sid: String,
    exp: u64,
}

/// Signs and verifies session tokens with one secret.
#[derive(Clone)]
pub struct TokenKey {
    mac: HmacSha256,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(<redacted>)")
    }
}

/// A verified token's contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The session the token grants.
    pub session_id: SessionId,
    /// Expiry, unix seconds.
    pub expires_at: u64,
}

impl TokenKey {
    /// A key from a secret of at least [`MIN_SECRET_LEN`] bytes; `None` if it is shorter.
    pub fn new(secret: &[u8]) -> Option<Self> {
        if secret.len() < MIN_SECRET_LEN {
            return None;
        }
        Some(Self {
            mac: HmacSha256::new_from_slice(secret).ok()?,
        })
    }

    /// A token for `session` valid until `expires_at` (unix seconds).
    pub fn sign(&self, session: &SessionId, expires_at: u64) -> String {
        let claims = Claims {
            sid: session.as_str().to_owned(),
            exp: expires_at,
        };
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap_or_default());
        let signed = format!("{VERSION}.{payload}");
        let mut mac = self.mac.clone();
        mac.update(signed.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{signed}.{sig}")
    }

    /// Checks signature and expiry against `now` (unix seconds).
    pub fn verify(&self, token: &str, now: u64) -> Result<Verified, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let (signed, sig) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let (version, payload) = signed.split_once('.').ok_or(TokenError::Malformed)?;
        if version != VERSION {
            return Err(TokenError::Malformed);
        }
        let sig = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| TokenError::Malformed)?;
        let mut mac = self.mac.clone();
        mac.update(signed.as_bytes());
        mac.verify_slice(&sig)
            .map_err(|_| TokenError::BadSignature)?;
        // Only signed bytes get this far.
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TokenError::Malformed)?;
        let claims: Claims = serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
        let session_id = SessionId::parse(&claims.sid).map_err(|_| TokenError::Malformed)?;
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        Ok(Verified {
            session_id,
            expires_at: claims.exp,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> TokenKey {
        TokenKey::new(&[b; 32]).unwrap()
    }

    fn sid() -> SessionId {
        SessionId::parse("s-1").unwrap()
    }

    #[test]
    fn round_trip() {
        let t = key(1).sign(&sid(), 1_000);
        assert_eq!(
            key(1).verify(&t, 999),
            Ok(Verified {
                session_id: sid(),
                expires_at: 1_000
            })
        );
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(TokenKey::new(&[0; 31]).is_none());
    }

    #[test]
    fn expiry_is_exclusive() {
        let t = key(1).sign(&sid(), 1_000);
        assert_eq!(key(1).verify(&t, 1_000), Err(TokenError::Expired));
    }

    #[test]
    fn another_key_or_a_changed_payload_is_a_bad_signature() {
        let t = key(1).sign(&sid(), 1_000);
        assert_eq!(key(2).verify(&t, 0), Err(TokenError::BadSignature));
        let (_, rest) = t.split_once('.').unwrap();
        let (_, sig) = rest.split_once('.').unwrap();
        let forged_payload = URL_SAFE_NO_PAD.encode(br#"{"sid":"other","exp":99999999999}"#);
        let forged = format!("v1.{forged_payload}.{sig}");
        assert_eq!(key(1).verify(&forged, 0), Err(TokenError::BadSignature));
    }

    #[test]
    fn malformed_input_is_rejected_without_panicking() {
        let long = "a".repeat(MAX_TOKEN_LEN + 1);
        for bad in [
            "x",
            "v1.x",
            "v2.a.b",
            "v1..",
            "v1.a.!!!",
            "....",
            long.as_str(),
            "v1.a.b.c",
        ] {
            let r = key(1).verify(bad, 0);
            assert!(
                matches!(r, Err(TokenError::Malformed | TokenError::BadSignature)),
                "{bad}: {r:?}"
            );
        }
        assert_eq!(key(1).verify("", 0), Err(TokenError::Missing));
    }

    #[test]
    fn a_signed_but_invalid_session_id_is_malformed() {
        let k = key(1);
        let payload = URL_SAFE_NO_PAD.encode(br#"{"sid":"bad id","exp":5}"#);
        let signed = format!("v1.{payload}");
        let mut mac = k.mac.clone();
        mac.update(signed.as_bytes());
        let token = format!(
            "{signed}.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        );
        assert_eq!(k.verify(&token, 0), Err(TokenError::Malformed));
    }
}
