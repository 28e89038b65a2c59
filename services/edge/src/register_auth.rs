//! Who may register sessions (`POST /v1/sessions`). Closed unless configured: the request carries
//! `Authorization: Bearer <credential>`, accepted when it is one of the configured API keys (backend callers) or a
//! JWT signed by the upstream identity provider (HS256 with a shared secret, or RS256 with its public key; `exp`,
//! `iss` and `aud` required and checked). A JWT's `sub` is stored with the session as `subject`, and registrations
//! are limited per subject as well as per address. `CES_REGISTER_OPEN=true` lets anyone register (local
//! development, or an edge behind a gateway that authenticates); the node logs that loudly at start.

use std::collections::HashSet;

use ces_runtime::config::Vars;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Why a registration was refused (stable codes, also the metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization: Bearer` header.
    Missing,
    /// Not an API key, and not a JWT that verifies.
    Invalid,
    /// A JWT that verifies but has expired (or is not yet valid).
    Expired,
    /// A JWT whose issuer or audience is not the configured one.
    WrongAudience,
}

impl Refusal {
    /// Every refusal, for metric pre-registration (`ces_edge_registrations_refused_total{reason}`).
    pub const ALL: [Refusal; 4] = [
        Refusal::Missing,
        Refusal::Invalid,
        Refusal::Expired,
        Refusal::WrongAudience,
    ];

    /// The stable code.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Invalid => "invalid",
            Refusal::Expired => "expired",
            Refusal::WrongAudience => "wrong_issuer_or_audience",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

/// The configured registration credentials.
#[derive(Clone, Default)]
pub struct RegisterAuth {
    /// SHA-256 of each API key: compared digest to digest, so neither the keys nor their length leak through
    /// timing.
    api_keys: HashSet<[u8; 32]>,
    jwt: Option<(DecodingKey, Validation)>,
    open: bool,
}

impl std::fmt::Debug for RegisterAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisterAuth")
            .field("api_keys", &self.api_keys.len())
            .field("jwt", &self.jwt.as_ref().map(|(_, v)| v.algorithms.clone()))
            .field("open", &self.open)
            .finish()
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
}

/// Shortest API key accepted: 128 bits of a random 32-hex-character key.
const MIN_API_KEY_BYTES: usize = 32;

impl RegisterAuth {
    /// Reads `CES_REGISTER_OPEN`, `CES_REGISTER_API_KEYS`, `CES_REGISTER_JWT_HS256_SECRET`,
    /// `CES_REGISTER_JWT_RS256_PUBLIC_KEY_FILE`, `CES_REGISTER_JWT_ISSUER` and `CES_REGISTER_JWT_AUDIENCE`.
    pub fn read(v: &mut Vars<'_>) -> Self {
        let open = v.parse("CES_REGISTER_OPEN", false);
        let keys = v.list("CES_REGISTER_API_KEYS", &[]);
        v.check(keys.iter().all(|k| k.len() >= MIN_API_KEY_BYTES), || {
            format!("CES_REGISTER_API_KEYS: every key must be at least {MIN_API_KEY_BYTES} bytes")
        });
        let api_keys = keys.iter().map(|k| digest(k)).collect();
        let hs256 = v.optional("CES_REGISTER_JWT_HS256_SECRET");
        let rs256 = v.optional("CES_REGISTER_JWT_RS256_PUBLIC_KEY_FILE");
        let issuer = v.optional("CES_REGISTER_JWT_ISSUER");
        let audience = v.optional("CES_REGISTER_JWT_AUDIENCE");
        let key = match (hs256, rs256) {
            (None, None) => None,
            (Some(_), Some(_)) => {
                v.check(false, || {
                    "set CES_REGISTER_JWT_HS256_SECRET or CES_REGISTER_JWT_RS256_PUBLIC_KEY_FILE, not both".into()
                });
                None
            }
            (Some(secret), None) => {
                v.check(secret.len() >= 32, || {
                    "CES_REGISTER_JWT_HS256_SECRET must be at least 32 bytes".into()
                });
                Some((
                    DecodingKey::from_secret(secret.as_bytes()),
                    Algorithm::HS256,
                ))
            }
            (None, Some(path)) => {
                match std::fs::read(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|pem| DecodingKey::from_rsa_pem(&pem).map_err(|e| e.to_string()))
                {
                    Ok(key) => Some((key, Algorithm::RS256)),
                    Err(e) => {
                        v.check(false, || {
                            format!("CES_REGISTER_JWT_RS256_PUBLIC_KEY_FILE={path:?}: {e}")
                        });
                        None
                    }
                }
            }
        };
        v.check(
            key.is_some() || (issuer.is_none() && audience.is_none()),
            || "CES_REGISTER_JWT_ISSUER/AUDIENCE need a JWT key".into(),
        );
        // A token for another service of the same identity provider must not register here.
        v.check(
            key.is_none() || (issuer.is_some() && audience.is_some()),
            || "a JWT key needs CES_REGISTER_JWT_ISSUER and CES_REGISTER_JWT_AUDIENCE".into(),
        );
        let credentials = !keys.is_empty() || key.is_some();
        v.check(open || credentials, || {
            "registration is closed: set CES_REGISTER_API_KEYS, or a JWT key \
             (CES_REGISTER_JWT_HS256_SECRET or CES_REGISTER_JWT_RS256_PUBLIC_KEY_FILE with CES_REGISTER_JWT_ISSUER \
             and CES_REGISTER_JWT_AUDIENCE), or CES_REGISTER_OPEN=true to let anyone register"
                .into()
        });
        v.check(!(open && credentials), || {
            "CES_REGISTER_OPEN=true and registration credentials exclude each other: choose one"
                .into()
        });
        let jwt = key.map(|(key, algorithm)| {
            // Only the configured algorithm: a token cannot pick a weaker one (or `none`).
            let mut validation = Validation::new(algorithm);
            validation.leeway = 30;
            validation.validate_nbf = true;
            if let Some(issuer) = &issuer {
                validation.set_issuer(&[issuer]);
            }
            if let Some(audience) = &audience {
                validation.set_audience(&[audience]);
            }
            validation.set_required_spec_claims(&["exp", "iss", "aud"]);
            (key, validation)
        });
        Self {
            api_keys,
            jwt,
            open,
        }
    }

    /// Whether anyone may register (`CES_REGISTER_OPEN=true`).
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Checks a registration's bearer credential (`""` when absent). `Ok(Some(subject))` for a JWT with a `sub`.
    pub fn check(&self, bearer: &str) -> Result<Option<String>, Refusal> {
        if self.is_open() {
            return Ok(None);
        }
        if bearer.is_empty() {
            return Err(Refusal::Missing);
        }
        if self.api_keys.contains(&digest(bearer)) {
            return Ok(None);
        }
        let Some((key, validation)) = &self.jwt else {
            return Err(Refusal::Invalid);
        };
        use jsonwebtoken::errors::ErrorKind;
        match jsonwebtoken::decode::<Claims>(bearer, key, validation) {
            Ok(data) => Ok(data.claims.sub),
            Err(e) => Err(match e.kind() {
                ErrorKind::ExpiredSignature | ErrorKind::ImmatureSignature => Refusal::Expired,
                ErrorKind::InvalidIssuer | ErrorKind::InvalidAudience => Refusal::WrongAudience,
                _ => Refusal::Invalid,
            }),
        }
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    use super::*;

    const SECRET: &str = "registration-jwt-secret-0123456789abcdef";

    fn read(pairs: &[(&'static str, &str)]) -> Result<RegisterAuth, String> {
        let src: HashMap<&'static str, String> =
            pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        let mut v = Vars::new(&src);
        let auth = RegisterAuth::read(&mut v);
        v.finish().map(|()| auth).map_err(|e| e.to_string())
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn hs256(claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn closed_unless_configured_and_open_only_when_asked() {
        let err = read(&[]).unwrap_err();
        assert!(
            err.contains("registration is closed") && err.contains("CES_REGISTER_OPEN"),
            "{err}"
        );
        let auth = read(&[("CES_REGISTER_OPEN", "true")]).unwrap();
        assert!(auth.is_open());
        assert_eq!(auth.check(""), Ok(None));
        let key = "k".repeat(32);
        let err = read(&[
            ("CES_REGISTER_OPEN", "true"),
            ("CES_REGISTER_API_KEYS", &key),
        ])
        .unwrap_err();
        assert!(err.contains("exclude each other"), "{err}");
        assert!(!read(&[("CES_REGISTER_API_KEYS", &key)]).unwrap().is_open());
    }

    #[test]
    fn a_jwt_key_needs_an_issuer_and_an_audience() {
        for missing in ["CES_REGISTER_JWT_ISSUER", "CES_REGISTER_JWT_AUDIENCE"] {
            let mut pairs = vec![
                ("CES_REGISTER_JWT_HS256_SECRET", SECRET),
                ("CES_REGISTER_JWT_ISSUER", "https://id.example.com"),
                ("CES_REGISTER_JWT_AUDIENCE", "ces"),
            ];
            pairs.retain(|(k, _)| *k != missing);
            let err = read(&pairs).unwrap_err();
            assert!(
                err.contains("needs CES_REGISTER_JWT_ISSUER and CES_REGISTER_JWT_AUDIENCE"),
                "{err}"
            );
        }
    }

    #[test]
    fn api_keys_are_matched_exactly() {
        let key = "k".repeat(32);
        let auth = read(&[(
            "CES_REGISTER_API_KEYS",
            &format!("{key},{}", "m".repeat(40)),
        )])
        .unwrap();
        assert_eq!(auth.check(&key), Ok(None));
        assert_eq!(auth.check(&"m".repeat(40)), Ok(None));
        assert_eq!(auth.check(""), Err(Refusal::Missing));
        assert_eq!(auth.check(&"k".repeat(31)), Err(Refusal::Invalid));
        assert!(read(&[("CES_REGISTER_API_KEYS", "short")]).is_err());
    }

    #[test]
    fn hs256_tokens_are_checked_for_signature_expiry_issuer_and_audience() {
        let auth = read(&[
            ("CES_REGISTER_JWT_HS256_SECRET", SECRET),
            ("CES_REGISTER_JWT_ISSUER", "https://id.example.com"),
            ("CES_REGISTER_JWT_AUDIENCE", "ces"),
        ])
        .unwrap();
        let good = json!({"sub": "user-7", "exp": now() + 60, "iss": "https://id.example.com", "aud": "ces"});
        assert_eq!(auth.check(&hs256(good.clone())), Ok(Some("user-7".into())));
        let mut expired = good.clone();
        expired["exp"] = json!(now() - 120);
        assert_eq!(auth.check(&hs256(expired)), Err(Refusal::Expired));
        let mut other_aud = good.clone();
        other_aud["aud"] = json!("billing");
        assert_eq!(auth.check(&hs256(other_aud)), Err(Refusal::WrongAudience));
        for claim in ["exp", "iss", "aud"] {
            let mut without = good.clone();
            without.as_object_mut().unwrap().remove(claim);
            assert_eq!(
                auth.check(&hs256(without)),
                Err(Refusal::Invalid),
                "without {claim}"
            );
        }
        let forged = encode(
            &Header::new(Algorithm::HS256),
            &good,
            &EncodingKey::from_secret(&[b'x'; 40]),
        )
        .unwrap();
        assert_eq!(auth.check(&forged), Err(Refusal::Invalid));
        // An unsigned token (`alg: none`) is never accepted.
        let header = base64_url(br#"{"alg":"none","typ":"JWT"}"#);
        let payload = base64_url(good.to_string().as_bytes());
        assert_eq!(
            auth.check(&format!("{header}.{payload}.")),
            Err(Refusal::Invalid)
        );
    }

    #[test]
    fn rs256_verifies_with_the_public_key_only() {
        // At run time: a test binary reused from another checkout must read this one's files.
        let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
        let public = format!("{dir}/tests/data/jwt_rs256_public.pem");
        let private = std::fs::read(format!("{dir}/tests/data/jwt_rs256_private.pem")).unwrap();
        let auth = read(&[
            ("CES_REGISTER_JWT_RS256_PUBLIC_KEY_FILE", &public),
            ("CES_REGISTER_JWT_ISSUER", "https://id.example.com"),
            ("CES_REGISTER_JWT_AUDIENCE", "ces"),
        ])
        .unwrap();
        let claims = json!({"sub": "user-9", "exp": now() + 60, "iss": "https://id.example.com", "aud": "ces"});
        let token = encode(
            &Header::new(Algorithm::RS256),
            &claims,
            &EncodingKey::from_rsa_pem(&private).unwrap(),
        )
        .unwrap();
        assert_eq!(auth.check(&token), Ok(Some("user-9".into())));
        // HS256 signed with the public key as the secret (algorithm confusion) is refused.
        let public_pem = std::fs::read(&public).unwrap();
        let confused = encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(&public_pem),
        )
        .unwrap();
        assert_eq!(auth.check(&confused), Err(Refusal::Invalid));
        let err = read(&[
            ("CES_REGISTER_JWT_RS256_PUBLIC_KEY_FILE", "/nonexistent.pem"),
            ("CES_REGISTER_JWT_ISSUER", "i"),
            ("CES_REGISTER_JWT_AUDIENCE", "a"),
        ])
        .unwrap_err();
        assert!(err.contains("/nonexistent.pem"), "{err}");
    }

    fn base64_url(bytes: &[u8]) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }
}
