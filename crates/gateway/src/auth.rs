//! Bearer tokens as a university's single sign-on issues them (OIDC access or ID tokens).
//!
//! RS256 and ES256 keys come from a JWKS (file or URL), HS256 from a shared secret. Only those
//! three algorithms are accepted, each only with a key of its own kind, so `alg: none` and a
//! public key passed off as an HMAC secret are refused. `sub` is the student id.

use std::sync::RwLock;
use std::time::Duration;

use anyhow::{Context, bail};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use seatrush_core::domain::StudentId;
use serde::{Deserialize, Serialize};

use crate::config::AuthConfig;

/// Who a request comes from.
#[derive(Debug, Clone)]
pub struct Identity {
    pub student: StudentId,
    pub admin: bool,
}

/// Why a token was refused (answered 401).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("an Authorization: Bearer token is required")]
    Missing,
    #[error("the token was refused: {0}")]
    Refused(String),
}

/// The claims the development issuer signs, and the ones a test forges.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenClaims {
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub seatrush_admin: bool,
}

struct Key {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// Checks tokens; with the development issuer, also signs them.
pub struct Verifier {
    keys: RwLock<Vec<Key>>,
    /// The JWKS URL, refetched by [`Verifier::refresh`].
    jwks_url: Option<String>,
    hs256: Option<Vec<u8>>,
    issuer: Option<String>,
    audience: Option<String>,
    admin: AdminClaim,
    dev: Option<DevIssuer>,
}

/// The development issuer: signs HS256 tokens for any student, for the demo and the tests.
#[derive(Clone)]
pub struct DevIssuer {
    key: EncodingKey,
    issuer: Option<String>,
    audience: Option<String>,
}

impl DevIssuer {
    /// A token for `student`, valid for `ttl`.
    pub fn issue(&self, student: &str, admin: bool, ttl: Duration) -> anyhow::Result<String> {
        let claims = TokenClaims {
            sub: student.to_owned(),
            exp: now_secs() + ttl.as_secs(),
            nbf: None,
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            seatrush_admin: admin,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.key)
            .context("signing a development token")
    }
}

/// A student's HS256 token signed with `secret`, valid for `ttl`, without issuer or audience:
/// what a load generator or a small setup's own sign-on hands out.
pub fn hs256_token(secret: &[u8], student: &str, ttl: Duration) -> anyhow::Result<String> {
    DevIssuer {
        key: EncodingKey::from_secret(secret),
        issuer: None,
        audience: None,
    }
    .issue(student, false, ttl)
}

/// `NAME` (true) or `NAME=VALUE` (equal, or an array holding it).
#[derive(Debug, Clone)]
struct AdminClaim {
    name: String,
    value: Option<String>,
}

impl AdminClaim {
    fn parse(raw: &str) -> Self {
        match raw.split_once('=') {
            Some((name, value)) => Self {
                name: name.to_owned(),
                value: Some(value.to_owned()),
            },
            None => Self {
                name: raw.to_owned(),
                value: None,
            },
        }
    }

    fn marks(&self, claims: &serde_json::Map<String, serde_json::Value>) -> bool {
        use serde_json::Value;
        match (claims.get(&self.name), &self.value) {
            (Some(Value::Bool(true)), None) => true,
            (Some(Value::String(s)), Some(v)) => s == v,
            (Some(Value::Array(items)), Some(v)) => items.iter().any(|i| i.as_str() == Some(v)),
            _ => false,
        }
    }
}

impl Verifier {
    /// Loads the keys configured; refuses a configuration without any.
    pub async fn new(config: &AuthConfig) -> anyhow::Result<Self> {
        let mut hs256 = config.hs256_secret.as_ref().map(|s| s.as_bytes().to_vec());
        if let Some(secret) = &hs256
            && secret.len() < 32
        {
            bail!("the HS256 secret must be at least 32 bytes long");
        }
        if config.dev_issuer && hs256.is_none() {
            // A secret of this instance only: tokens it signs are good here until it stops.
            hs256 = Some(random_secret());
        }
        let dev = config.dev_issuer.then(|| DevIssuer {
            key: EncodingKey::from_secret(hs256.as_deref().unwrap_or_default()),
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
        });
        let jwks_url = config
            .jwks
            .as_ref()
            .filter(|s| s.starts_with("http://") || s.starts_with("https://"))
            .cloned();
        let verifier = Self {
            keys: RwLock::new(Vec::new()),
            jwks_url,
            hs256,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            admin: AdminClaim::parse(&config.admin_claim),
            dev,
        };
        let jwks = match (&config.jwks, &verifier.jwks_url) {
            (Some(_), Some(url)) => Some(fetch_jwks(url).await?),
            (Some(path), None) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading the JWKS {path}"))?,
            ),
            (None, _) => None,
        };
        let mut keys = match jwks {
            Some(text) => keys_of(&text)?,
            None => Vec::new(),
        };
        if let Some(secret) = &verifier.hs256 {
            keys.push(Key {
                kid: None,
                algorithm: Algorithm::HS256,
                key: DecodingKey::from_secret(secret),
            });
        }
        if keys.is_empty() {
            bail!(
                "no key to check tokens with: give --jwks or --jwt-hs256-secret \
                 (or --dev-issuer for a demo)"
            );
        }
        *verifier.keys.write().unwrap_or_else(|p| p.into_inner()) = keys;
        Ok(verifier)
    }

    pub fn dev_issuer(&self) -> Option<&DevIssuer> {
        self.dev.as_ref()
    }

    /// Refetches the JWKS URL, if one is configured; keeps the old keys if that fails.
    pub async fn refresh(&self) -> anyhow::Result<()> {
        let Some(url) = &self.jwks_url else {
            return Ok(());
        };
        let mut keys = keys_of(&fetch_jwks(url).await?)?;
        if let Some(secret) = &self.hs256 {
            keys.push(Key {
                kid: None,
                algorithm: Algorithm::HS256,
                key: DecodingKey::from_secret(secret),
            });
        }
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = keys;
        Ok(())
    }

    pub fn refreshes(&self) -> bool {
        self.jwks_url.is_some()
    }

    /// Checks a token's signature, algorithm, times, issuer and audience, and reads who it is.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let refused = |why: String| AuthError::Refused(why);
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| refused(format!("unreadable header ({e})")))?;
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let candidates = keys.iter().filter(|k| {
            k.algorithm == header.alg
                && (header.kid.is_none() || k.kid.is_none() || k.kid == header.kid)
        });
        let mut last = format!("no key for algorithm {:?}", header.alg);
        for key in candidates {
            match jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
                token,
                &key.key,
                &self.validation(header.alg),
            ) {
                Ok(data) => return self.identity(&data.claims),
                Err(e) => last = e.to_string(),
            }
        }
        Err(refused(last))
    }

    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        validation.leeway = 30;
        validation.validate_nbf = true;
        // An issuer or an audience the gateway is set to check must be in the token: the
        // library checks a claim against the expected value only when the claim is there, so a
        // token signed by a trusted key for another application, without `aud`, would pass.
        let mut required = vec!["exp", "sub"];
        if self.issuer.is_some() {
            required.push("iss");
        }
        if self.audience.is_some() {
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        match &self.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
        }
        validation
    }

    fn identity(
        &self,
        claims: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Identity, AuthError> {
        let sub = claims
            .get("sub")
            .and_then(|s| s.as_str())
            .ok_or_else(|| AuthError::Refused("sub is not a string".into()))?;
        let student = StudentId::parse(sub)
            .map_err(|e| AuthError::Refused(format!("sub is not a student id: {e}")))?;
        Ok(Identity {
            student,
            admin: self.admin.marks(claims),
        })
    }
}

/// The RS256 and ES256 (P-256) keys of a JWKS document; others are skipped.
fn keys_of(jwks: &str) -> anyhow::Result<Vec<Key>> {
    let set: JwkSet = serde_json::from_str(jwks).context("the JWKS is not a JWK set")?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let algorithm = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
                Algorithm::ES256
            }
            _ => continue,
        };
        if let Some(declared) = jwk.common.key_algorithm
            && declared.to_string() != format!("{algorithm:?}")
        {
            continue;
        }
        keys.push(Key {
            kid: jwk.common.key_id.clone(),
            algorithm,
            key: DecodingKey::from_jwk(jwk).context("a JWKS key that cannot be used")?,
        });
    }
    if keys.is_empty() {
        bail!("the JWKS holds no RS256 or ES256 (P-256) key");
    }
    Ok(keys)
}

async fn fetch_jwks(url: &str) -> anyhow::Result<String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .context("building an HTTP client")?;
    client
        .get(url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .with_context(|| format!("fetching the JWKS from {url}"))?
        .text()
        .await
        .with_context(|| format!("reading the JWKS from {url}"))
}

fn random_secret() -> Vec<u8> {
    let mut secret = uuid::Uuid::new_v4().as_bytes().to_vec();
    secret.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    secret
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_claim_is_a_flag_a_value_or_a_member() {
        let claims = |v: serde_json::Value| v.as_object().cloned().unwrap_or_default();
        let flag = AdminClaim::parse("seatrush_admin");
        assert!(flag.marks(&claims(serde_json::json!({"seatrush_admin": true}))));
        assert!(!flag.marks(&claims(serde_json::json!({"seatrush_admin": "true"}))));
        let role = AdminClaim::parse("roles=registrar");
        assert!(role.marks(&claims(
            serde_json::json!({"roles": ["student", "registrar"]})
        )));
        assert!(role.marks(&claims(serde_json::json!({"roles": "registrar"}))));
        assert!(!role.marks(&claims(serde_json::json!({"roles": ["student"]}))));
    }

    #[tokio::test]
    async fn a_configured_issuer_and_audience_must_be_in_the_token() {
        let secret = "a-secret-of-at-least-thirty-two-bytes";
        let config = AuthConfig {
            jwks: None,
            hs256_secret: Some(secret.to_owned()),
            issuer: Some("https://sso.example.edu".to_owned()),
            audience: Some("seatrush".to_owned()),
            admin_claim: "seatrush_admin".to_owned(),
            dev_issuer: false,
            jwks_refresh: Duration::from_secs(300),
        };
        let verifier = Verifier::new(&config).await.expect("a verifier");
        let key = EncodingKey::from_secret(secret.as_bytes());
        let sign = |claims: serde_json::Value| {
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).expect("a token")
        };
        let exp = now_secs() + 600;
        let full = serde_json::json!({"sub": "s1", "exp": exp,
            "iss": "https://sso.example.edu", "aud": "seatrush"});
        assert!(verifier.verify(&sign(full.clone())).is_ok());
        for missing in ["iss", "aud"] {
            let mut claims = full.clone();
            claims.as_object_mut().expect("an object").remove(missing);
            assert!(
                verifier.verify(&sign(claims)).is_err(),
                "a token without {missing} was accepted"
            );
        }
        // Without an issuer or audience configured, neither is asked for.
        let open = Verifier::new(&AuthConfig {
            issuer: None,
            audience: None,
            ..config
        })
        .await
        .expect("a verifier");
        let token = hs256_token(secret.as_bytes(), "s1", Duration::from_secs(600)).expect("token");
        assert!(open.verify(&token).is_ok());
    }
}
