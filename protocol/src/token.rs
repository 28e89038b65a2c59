//! Signed session tokens, with key ids so keys can be rotated without downtime.
//!
//! A token is `v1.<kid>.<payload>.<signature>`: `kid` names the key that signed it, the payload is base64url (no
//! padding) of the JSON `{"sid":"<session id>","exp":<unix seconds>}`, and the signature is base64url of
//! HMAC-SHA256 over the text `v1.<kid>.<payload>` with that key's secret. [`TokenKeys`] holds every configured
//! key: the first signs, all verify, so a new key is rolled out first as a second entry (verify only), then moved
//! first (signing), and the old one removed once every token it signed has expired. The signature is checked in
//! constant time before the payload is parsed, so forged input never reaches the JSON parser.

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
    /// The token names a key that is not (or no longer) configured.
    #[error("unknown_key")]
    UnknownKey,
    /// The token has expired.
    #[error("expired")]
    Expired,
    /// The token is valid but its session was closed.
    #[error("revoked")]
    Revoked,
}

impl TokenError {
    /// Every reason, for metric pre-registration (`ces_edge_token_failures_total{reason}`).
    pub const ALL: [TokenError; 6] = [
        TokenError::Missing,
        TokenError::Malformed,
        TokenError::BadSignature,
        TokenError::UnknownKey,
        TokenError::Expired,
        TokenError::Revoked,
    ];
}

#[derive(Serialize, Deserialize)]
struct Claims {
    sid: String,
    exp: u64,
}

/// Longest key id.
pub const MAX_KID_LEN: usize = 32;

/// The signing and verifying keys: the first signs, all verify.
#[derive(Clone)]
pub struct TokenKeys {
    keys: Vec<(String, HmacSha256)>,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<&str> = self.keys.iter().map(|(k, _)| k.as_str()).collect();
        write!(f, "TokenKeys({kids:?}, <secrets redacted>)")
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

impl TokenKeys {
    /// Keys from `(kid, secret)` pairs, the first signing. Every kid is 1–[`MAX_KID_LEN`] of `[A-Za-z0-9_-]`
    /// and unique; every secret at least [`MIN_SECRET_LEN`] bytes.
    pub fn new<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Result<Self, String> {
        let mut keys: Vec<(String, HmacSha256)> = Vec::new();
        for (kid, secret) in pairs {
            if kid.is_empty()
                || kid.len() > MAX_KID_LEN
                || !kid
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(format!(
                    "key id {kid:?} must be 1-{MAX_KID_LEN} characters of A-Z a-z 0-9 _ -"
                ));
            }
            if secret.len() < MIN_SECRET_LEN {
                return Err(format!(
                    "the secret of key {kid:?} is {} bytes; it must be at least {MIN_SECRET_LEN}",
                    secret.len()
                ));
            }
            if keys.iter().any(|(k, _)| k == kid) {
                return Err(format!("key id {kid:?} is given twice"));
            }
            let mac = HmacSha256::new_from_slice(secret).map_err(|e| e.to_string())?;
            keys.push((kid.to_owned(), mac));
        }
        if keys.is_empty() {
            return Err("no key given".into());
        }
        Ok(Self { keys })
    }

    /// Parses `kid=secret,kid=secret` (the first signs).
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut pairs = Vec::new();
        for item in spec.split(',').map(str::trim) {
            let (kid, secret) = item
                .split_once('=')
                .ok_or_else(|| "each key must be written kid=secret".to_owned())?;
            pairs.push((kid.trim(), secret.as_bytes()));
        }
        Self::new(pairs)
    }

    /// The id of the signing key.
    pub fn signing_kid(&self) -> &str {
        &self.keys[0].0
    }

    /// A token for `session` valid until `expires_at` (unix seconds), signed with the first key.
    pub fn sign(&self, session: &SessionId, expires_at: u64) -> String {
        let (kid, mac) = &self.keys[0];
        let claims = Claims {
            sid: session.as_str().to_owned(),
            exp: expires_at,
        };
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap_or_default());
        let signed = format!("{VERSION}.{kid}.{payload}");
        let mut mac = mac.clone();
        mac.update(signed.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{signed}.{sig}")
    }

    /// Checks the key id, signature and expiry against `now` (unix seconds).
    pub fn verify(&self, token: &str, now: u64) -> Result<Verified, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let (signed, sig) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let mut parts = signed.splitn(3, '.');
        let (Some(version), Some(kid), Some(payload)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        if version != VERSION || payload.contains('.') {
            return Err(TokenError::Malformed);
        }
        let (_, mac) = self
            .keys
            .iter()
            .find(|(k, _)| k == kid)
            .ok_or(TokenError::UnknownKey)?;
        let sig = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| TokenError::Malformed)?;
        let mut mac = mac.clone();
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

/// The expiry (unix seconds) written in `token`, read without any key: what a client learns from its own token to
/// refresh it in time. Not a check of anything; `None` for a token not of the `v1` form.
pub fn unverified_expiry(token: &str) -> Option<u64> {
    let mut parts = token.split('.');
    let (Some(VERSION), Some(_kid), Some(payload), Some(_sig), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    let payload = URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice::<Claims>(&payload)
        .ok()
        .map(|c| c.exp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_holds_every_token_error_once() {
        for e in TokenError::ALL {
            // Exhaustive: a new variant stops compiling here until it is added to `ALL` as well.
            match e {
                TokenError::Missing
                | TokenError::Malformed
                | TokenError::BadSignature
                | TokenError::UnknownKey
                | TokenError::Expired
                | TokenError::Revoked => {}
            }
        }
        let names: std::collections::BTreeSet<String> =
            TokenError::ALL.iter().map(ToString::to_string).collect();
        assert_eq!(names.len(), TokenError::ALL.len());
    }

    fn keys(pairs: &[(&str, u8)]) -> TokenKeys {
        let secrets: Vec<(String, [u8; 32])> = pairs
            .iter()
            .map(|(k, b)| ((*k).to_owned(), [*b; 32]))
            .collect();
        TokenKeys::new(secrets.iter().map(|(k, s)| (k.as_str(), &s[..]))).unwrap()
    }

    fn sid() -> SessionId {
        SessionId::parse("s-1").unwrap()
    }

    #[test]
    fn round_trip_names_the_signing_key() {
        let k = keys(&[("k1", 1)]);
        let t = k.sign(&sid(), 1_000);
        assert!(t.starts_with("v1.k1."), "{t}");
        assert_eq!(
            k.verify(&t, 999),
            Ok(Verified {
                session_id: sid(),
                expires_at: 1_000
            })
        );
    }

    #[test]
    fn rotation_the_first_key_signs_and_every_listed_key_verifies() {
        let old = keys(&[("old", 1)]);
        let both = keys(&[("new", 2), ("old", 1)]);
        let new_only = keys(&[("new", 2)]);
        let old_token = old.sign(&sid(), 1_000);
        assert!(
            both.verify(&old_token, 0).is_ok(),
            "old tokens work while the old key is listed"
        );
        let new_token = both.sign(&sid(), 1_000);
        assert!(new_token.starts_with("v1.new."));
        assert!(new_only.verify(&new_token, 0).is_ok());
        assert_eq!(new_only.verify(&old_token, 0), Err(TokenError::UnknownKey));
    }

    #[test]
    fn key_specs_are_checked() {
        assert!(TokenKeys::parse(&format!("a={},b={}", "x".repeat(32), "y".repeat(40))).is_ok());
        for bad in [
            "".to_owned(),
            "nosecret".to_owned(),
            format!("a={}", "x".repeat(31)),
            format!("a={0},a={0}", "x".repeat(32)),
            format!("bad kid={}", "x".repeat(32)),
        ] {
            assert!(TokenKeys::parse(&bad).is_err(), "{bad}");
        }
        let k = keys(&[("k1", 1)]);
        assert!(!format!("{k:?}").contains("\\x01"), "secrets never printed");
    }

    #[test]
    fn expiry_is_exclusive() {
        let k = keys(&[("k1", 1)]);
        let t = k.sign(&sid(), 1_000);
        assert_eq!(k.verify(&t, 1_000), Err(TokenError::Expired));
    }

    #[test]
    fn another_secret_under_the_same_kid_or_a_changed_payload_is_a_bad_signature() {
        let t = keys(&[("k1", 1)]).sign(&sid(), 1_000);
        assert_eq!(
            keys(&[("k1", 2)]).verify(&t, 0),
            Err(TokenError::BadSignature)
        );
        let sig = t.rsplit_once('.').unwrap().1;
        let forged_payload = URL_SAFE_NO_PAD.encode(br#"{"sid":"other","exp":99999999999}"#);
        let forged = format!("v1.k1.{forged_payload}.{sig}");
        assert_eq!(
            keys(&[("k1", 1)]).verify(&forged, 0),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn malformed_input_is_rejected_without_panicking() {
        let long = "a".repeat(MAX_TOKEN_LEN + 1);
        let k = keys(&[("k1", 1)]);
        for bad in [
            "x",
            "v1.x",
            "v2.k1.a.b",
            "v1...",
            "v1.k1.a.!!!",
            "....",
            long.as_str(),
            "v1.k1.a.b.c",
        ] {
            let r = k.verify(bad, 0);
            assert!(
                matches!(
                    r,
                    Err(TokenError::Malformed | TokenError::BadSignature | TokenError::UnknownKey)
                ),
                "{bad}: {r:?}"
            );
        }
        assert_eq!(k.verify("", 0), Err(TokenError::Missing));
    }

    #[test]
    fn a_signed_but_invalid_session_id_is_malformed() {
        let k = keys(&[("k1", 1)]);
        let payload = URL_SAFE_NO_PAD.encode(br#"{"sid":"bad id","exp":5}"#);
        let signed = format!("v1.k1.{payload}");
        let mut mac = k.keys[0].1.clone();
        mac.update(signed.as_bytes());
        let token = format!(
            "{signed}.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        );
        assert_eq!(k.verify(&token, 0), Err(TokenError::Malformed));
    }

    #[test]
    fn a_client_reads_the_expiry_of_its_own_token_without_the_key() {
        let token = keys(&[("k1", 1)]).sign(&SessionId::parse("s1").unwrap(), 1_700_000_123);
        assert_eq!(unverified_expiry(&token), Some(1_700_000_123));
        for other in [
            "",
            "v1.k1.e30.sig",
            "v2.k1.eyJzaWQiOiJzIiwiZXhwIjoxfQ.sig",
            "v1.k1.eyJzaWQiOiJzIiwiZXhwIjoxfQ",
            "v1.k1.eyJzaWQiOiJzIiwiZXhwIjoxfQ.sig.more",
            "v1.k1.!!!.sig",
        ] {
            assert_eq!(unverified_expiry(other), None, "{other}");
        }
        assert_eq!(
            unverified_expiry("v1.k1.eyJzaWQiOiJzIiwiZXhwIjoxfQ.sig"),
            Some(1)
        );
    }
}
