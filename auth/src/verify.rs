//! Token verification. A refused token is refused for a reason the server logs
//! ([`VerifyError`]); the client is only ever told `unauthenticated`.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::RwLock;
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parley_common::config::{ConfigError, Env, Secret};
use parley_common::domain::UserId;
use serde::Deserialize;

use crate::authjs;

/// The kinds of token `AUTH_TOKEN_KINDS` can switch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenKind {
    /// Parley access tokens: EdDSA, checked against the auth role's JWKS.
    Parley,
    /// JWTs signed with HS256 and `AUTH_SECRET`.
    Hs256,
    /// Auth.js v5 session tokens (JWE), encrypted with a key derived from `AUTH_SECRET`.
    AuthJs,
}

impl TokenKind {
    fn parse(raw: &str) -> Result<Self, String> {
        match raw {
            "parley" => Ok(TokenKind::Parley),
            "hs256" => Ok(TokenKind::Hs256),
            "authjs" => Ok(TokenKind::AuthJs),
            other => Err(format!(
                "unknown token kind {other:?} (known: parley, hs256, authjs)"
            )),
        }
    }
}

/// What the verifier needs, read from `AUTH_TOKEN_KINDS`, `AUTH_SECRET` and, for rotation of
/// Auth.js secrets, `AUTH_SECRET_1..3` (older secrets that still open existing sessions).
#[derive(Debug, Clone)]
pub struct VerifierConfig {
    pub kinds: HashSet<TokenKind>,
    pub secret: Option<Secret>,
    /// `AUTH_SECRET_1`, `AUTH_SECRET_2`, `AUTH_SECRET_3`, where set.
    pub previous_secrets: Vec<Secret>,
    /// `AUTH_ISSUER` and `AUTH_AUDIENCE`, required of Parley tokens.
    pub issuer: String,
    pub audience: String,
    /// Tokens longer than this are refused before any parsing.
    pub max_token_bytes: usize,
    /// Clock skew forgiven on `exp`, in seconds.
    pub leeway_secs: u64,
    /// What HS256 tokens (minted by an app backend that holds `AUTH_SECRET`) must satisfy.
    pub hs256: Hs256Policy,
}

/// The rules an HS256 token is held to beyond its signature and `exp` (issue 15, finding 10).
///
/// An HS256 token is minted by an app backend that shares `AUTH_SECRET`; it speaks for the
/// app's users, whose ids the app chooses. So a well-formed subject is accepted, with two
/// exceptions: a token may not live longer than `max_lifetime` (a leaked token, or one minted
/// by a careless backend with a ten-year `exp`, is useful for a day at most), and, while
/// Parley's own accounts are switched on (`parley` in `AUTH_TOKEN_KINDS`), it may not name one
/// of them: those accounts signed up with a password, and only the EdDSA tokens Parley issues
/// after that password may speak for them. Holding the shared secret is then not enough to
/// impersonate a Parley account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hs256Policy {
    /// `AUTH_HS256_MAX_LIFETIME`, default 24 h: the longest `exp - iat` (and `exp - now`).
    pub max_lifetime: Duration,
    /// `AUTH_HS256_ISSUER`: when set, the `iss` every HS256 token must carry.
    pub issuer: Option<String>,
    /// `AUTH_HS256_AUDIENCE`: when set, the `aud` every HS256 token must carry.
    pub audience: Option<String>,
    /// `AUTH_HS256_ALLOW_PARLEY_ACCOUNTS`, default false: whether an HS256 token may name a
    /// Parley account (an id of the shape [`looks_like_account_id`]). Only for deployments
    /// whose app backend mints tokens for users who registered with Parley.
    pub allow_parley_accounts: bool,
}

impl Default for Hs256Policy {
    fn default() -> Self {
        Self {
            max_lifetime: Hs256Policy::DEFAULT_MAX_LIFETIME,
            issuer: None,
            audience: None,
            allow_parley_accounts: false,
        }
    }
}

impl Hs256Policy {
    pub const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
    /// The longest `AUTH_HS256_MAX_LIFETIME` accepted.
    pub const MAX_MAX_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);

    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let max_lifetime = match env.get("AUTH_HS256_MAX_LIFETIME") {
            None => Self::DEFAULT_MAX_LIFETIME,
            Some(raw) => parse_duration(raw)
                .and_then(|d| {
                    if d.is_zero() || d > Self::MAX_MAX_LIFETIME {
                        Err("must be more than 0 and at most 30 days".to_owned())
                    } else {
                        Ok(d)
                    }
                })
                .map_err(|reason| ConfigError::Invalid {
                    name: "AUTH_HS256_MAX_LIFETIME",
                    reason: format!("{raw:?}: {reason}"),
                })?,
        };
        Ok(Self {
            max_lifetime,
            issuer: env.get("AUTH_HS256_ISSUER").map(str::to_owned),
            audience: env.get("AUTH_HS256_AUDIENCE").map(str::to_owned),
            allow_parley_accounts: env.parse_or("AUTH_HS256_ALLOW_PARLEY_ACCOUNTS", false)?,
        })
    }
}

/// A duration setting: whole seconds (`86400`), or a number with one unit, `s`, `m`, `h` or
/// `d` (`90m`, `24h`, `7d`).
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let (digits, unit) = match raw.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => raw.split_at(at),
        None => (raw, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| "expected seconds, or a number with s, m, h or d".to_owned())?;
    let scale = match unit.trim() {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => return Err(format!("unknown unit {other:?} (use s, m, h or d)")),
    };
    n.checked_mul(scale)
        .map(Duration::from_secs)
        .ok_or_else(|| "too large".to_owned())
}

/// Whether `id` has the shape of a Parley account id (a UUIDv7 in 32 lowercase hex digits,
/// what [`new_account_id`] makes), which HS256 tokens may not name by default.
pub fn looks_like_account_id(id: &str) -> bool {
    id.len() == 32
        && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && uuid::Uuid::try_parse(id).is_ok_and(|u| u.get_version_num() == 7)
}

/// A fresh Parley account id (see [`looks_like_account_id`]).
pub fn new_account_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// The shortest `AUTH_SECRET` accepted: shorter secrets can be brute-forced offline.
pub const MIN_SECRET_BYTES: usize = 16;

impl VerifierConfig {
    pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8 * 1024;

    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let raw = env.string_or("AUTH_TOKEN_KINDS", "parley,hs256");
        let kinds = raw
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(TokenKind::parse)
            .collect::<Result<HashSet<_>, _>>()
            .map_err(|reason| ConfigError::Invalid {
                name: "AUTH_TOKEN_KINDS",
                reason,
            })?;
        if kinds.is_empty() {
            return Err(ConfigError::Invalid {
                name: "AUTH_TOKEN_KINDS",
                reason: "no token kind is switched on".into(),
            });
        }
        let secret = env.secret("AUTH_SECRET");
        let previous_secrets = ["AUTH_SECRET_1", "AUTH_SECRET_2", "AUTH_SECRET_3"]
            .into_iter()
            .filter_map(|name| env.secret(name))
            .collect();
        if kinds.contains(&TokenKind::Hs256) || kinds.contains(&TokenKind::AuthJs) {
            match &secret {
                None => {
                    return Err(ConfigError::Missing {
                        name: "AUTH_SECRET",
                    });
                }
                Some(s) if s.expose().len() < MIN_SECRET_BYTES => {
                    return Err(ConfigError::Invalid {
                        name: "AUTH_SECRET",
                        reason: format!("must be at least {MIN_SECRET_BYTES} bytes"),
                    });
                }
                Some(_) => {}
            }
        }
        Ok(Self {
            kinds,
            secret,
            previous_secrets,
            issuer: env.string_or("AUTH_ISSUER", crate::config::DEFAULT_ISSUER),
            audience: env.string_or("AUTH_AUDIENCE", crate::config::DEFAULT_AUDIENCE),
            max_token_bytes: Self::DEFAULT_MAX_TOKEN_BYTES,
            leeway_secs: 5,
            hs256: Hs256Policy::from_env(env)?,
        })
    }
}

/// A token that passed: who it speaks for and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub user_id: UserId,
    /// Expiry, seconds since the Unix epoch.
    pub exp: i64,
    /// The Parley session a Parley token belongs to (its `sid`), so signing out closes the
    /// sockets it opened.
    pub session_id: Option<String>,
}

/// Why a token was refused. Logged by the server; never shown to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("no token was presented")]
    Missing,
    #[error("token is larger than {max} bytes")]
    Oversized { max: usize },
    #[error("token is malformed: {0}")]
    Malformed(String),
    #[error("algorithm {0} is not accepted")]
    AlgorithmNotAllowed(String),
    #[error("signature does not verify")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token has no {0} claim")]
    MissingClaim(String),
    #[error("token subject is not a valid user id: {0}")]
    BadSubject(String),
    #[error("token was issued by someone else")]
    WrongIssuer,
    #[error("token is meant for someone else")]
    WrongAudience,
    #[error("token names signing key {0:?}, which is not in the JWKS")]
    UnknownKey(String),
    #[error("token lives longer than the {max_secs} s allowed (AUTH_HS256_MAX_LIFETIME)")]
    LifetimeTooLong { max_secs: u64 },
    #[error("token was issued in the future (iat)")]
    IssuedInFuture,
    #[error("token is not valid yet (nbf)")]
    NotYetValid,
    #[error("token subject names a Parley account, which only Parley's own tokens speak for")]
    ParleyAccountSubject,
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    exp: Option<i64>,
    #[serde(default)]
    iat: Option<i64>,
    #[serde(default)]
    sid: Option<String>,
}

/// Verifies tokens of the kinds switched on. Cheap to share behind an `Arc`.
pub struct Verifier {
    hs256: Option<(DecodingKey, Validation)>,
    hs256_policy: Hs256Policy,
    /// Whether Parley accounts exist to be protected from HS256 subjects.
    parley_accounts: bool,
    /// Parley's EdDSA validation, when the kind is on, and the keys of the JWKS by `kid`.
    parley: Option<Validation>,
    jwks: RwLock<HashMap<String, DecodingKey>>,
    /// Auth.js keys, one per secret and cookie name; empty when the kind is off.
    authjs: Vec<authjs::Key>,
    leeway_secs: u64,
    max_token_bytes: usize,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("hs256", &self.hs256.is_some())
            .field("parley", &self.parley.is_some())
            .finish_non_exhaustive()
    }
}

impl Verifier {
    pub fn new(config: &VerifierConfig) -> Self {
        let hs256 = config
            .kinds
            .contains(&TokenKind::Hs256)
            .then(|| {
                config.secret.as_ref().map(|secret| {
                    let mut v = Validation::new(Algorithm::HS256);
                    v.algorithms = vec![Algorithm::HS256];
                    let policy = &config.hs256;
                    let mut required = vec!["exp", "sub"];
                    v.validate_exp = true;
                    v.validate_nbf = true;
                    if let Some(iss) = &policy.issuer {
                        v.set_issuer(&[iss]);
                        required.push("iss");
                    }
                    match &policy.audience {
                        Some(aud) => {
                            v.set_audience(&[aud]);
                            required.push("aud");
                        }
                        None => v.validate_aud = false,
                    }
                    v.set_required_spec_claims(&required);
                    v.leeway = config.leeway_secs;
                    (DecodingKey::from_secret(secret.expose().as_bytes()), v)
                })
            })
            .flatten();
        let authjs = if config.kinds.contains(&TokenKind::AuthJs) {
            let secrets: Vec<&str> = config
                .secret
                .iter()
                .chain(&config.previous_secrets)
                .map(Secret::expose)
                .collect();
            authjs::keys_for(&secrets)
        } else {
            Vec::new()
        };
        let parley = config.kinds.contains(&TokenKind::Parley).then(|| {
            let mut v = Validation::new(Algorithm::EdDSA);
            v.algorithms = vec![Algorithm::EdDSA];
            v.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
            v.set_issuer(&[&config.issuer]);
            v.set_audience(&[&config.audience]);
            v.leeway = config.leeway_secs;
            v
        });
        Self {
            hs256,
            hs256_policy: config.hs256.clone(),
            parley_accounts: config.kinds.contains(&TokenKind::Parley),
            parley,
            jwks: RwLock::new(HashMap::new()),
            authjs,
            leeway_secs: config.leeway_secs,
            max_token_bytes: config.max_token_bytes,
        }
    }

    /// Whether Parley tokens are accepted (and a JWKS is worth fetching).
    pub fn accepts_parley_tokens(&self) -> bool {
        self.parley.is_some()
    }

    /// Replaces the keys Parley tokens are checked against. Keys that are not Ed25519 are
    /// skipped.
    pub fn set_jwks(&self, jwks: &crate::signing::Jwks) {
        let keys = jwks
            .keys
            .iter()
            .filter(|k| k.kty == "OKP" && k.crv == "Ed25519")
            .filter_map(|k| Some((k.kid.clone(), DecodingKey::from_ed_components(&k.x).ok()?)))
            .collect();
        *self.jwks.write().expect("jwks lock") = keys;
    }

    /// Finds and checks the Auth.js session token in a `Cookie` header.
    pub fn verify_cookies(&self, cookie_header: &str) -> Result<Verified, VerifyError> {
        if self.authjs.is_empty() {
            return Err(VerifyError::Missing);
        }
        let token = authjs::token_from_cookies(cookie_header).ok_or(VerifyError::Missing)?;
        self.verify(&token)
    }

    fn verify_authjs(&self, token: &str) -> Result<Verified, VerifyError> {
        if self.authjs.is_empty() {
            return Err(VerifyError::AlgorithmNotAllowed("JWE".into()));
        }
        let plain = authjs::decrypt(token, &self.authjs)?;
        let Claims { sub, exp, .. } = serde_json::from_slice(&plain)
            .map_err(|e| VerifyError::Malformed(format!("claims: {e}")))?;
        let sub = sub.ok_or_else(|| VerifyError::MissingClaim("sub".into()))?;
        let exp = exp.ok_or_else(|| VerifyError::MissingClaim("exp".into()))?;
        if exp.saturating_add(self.leeway_secs as i64)
            < jsonwebtoken::get_current_timestamp() as i64
        {
            return Err(VerifyError::Expired);
        }
        let user_id = UserId::parse(&sub).map_err(|_| VerifyError::BadSubject(truncate(&sub)))?;
        Ok(Verified {
            user_id,
            exp,
            session_id: None,
        })
    }

    /// Checks a token and names the user it speaks for.
    pub fn verify(&self, token: &str) -> Result<Verified, VerifyError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(VerifyError::Missing);
        }
        if token.len() > self.max_token_bytes {
            return Err(VerifyError::Oversized {
                max: self.max_token_bytes,
            });
        }
        if authjs::looks_like_jwe(token) {
            return self.verify_authjs(token);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| {
            // An algorithm jsonwebtoken does not know (`none` among them) fails header parsing.
            match alg_of(token) {
                Some(alg) if alg != "HS256" => VerifyError::AlgorithmNotAllowed(alg),
                _ => VerifyError::Malformed(e.to_string()),
            }
        })?;
        // The algorithm picks the key, and each kind has exactly one algorithm: an HS256 token
        // is never checked against a public key, nor an EdDSA token against the secret.
        let jwks;
        let (key, validation) = match (&self.hs256, &self.parley, header.alg) {
            (Some((key, v)), _, Algorithm::HS256) => (key, v),
            (_, Some(v), Algorithm::EdDSA) => {
                let kid = header
                    .kid
                    .clone()
                    .ok_or_else(|| VerifyError::MissingClaim("kid".into()))?;
                jwks = self.jwks.read().expect("jwks lock");
                let key = jwks
                    .get(&kid)
                    .ok_or_else(|| VerifyError::UnknownKey(truncate(&kid)))?;
                (key, v)
            }
            (_, _, alg) => return Err(VerifyError::AlgorithmNotAllowed(format!("{alg:?}"))),
        };
        let data =
            jsonwebtoken::decode::<Claims>(token, key, validation).map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => VerifyError::Expired,
                ErrorKind::InvalidSignature => VerifyError::BadSignature,
                ErrorKind::MissingRequiredClaim(c) => VerifyError::MissingClaim(c.clone()),
                ErrorKind::InvalidIssuer => VerifyError::WrongIssuer,
                ErrorKind::InvalidAudience => VerifyError::WrongAudience,
                ErrorKind::ImmatureSignature => VerifyError::NotYetValid,
                ErrorKind::InvalidAlgorithm => {
                    VerifyError::AlgorithmNotAllowed(format!("{:?}", header.alg))
                }
                _ => VerifyError::Malformed(e.to_string()),
            })?;
        let Claims { sub, exp, iat, sid } = data.claims;
        let sub = sub.ok_or_else(|| VerifyError::MissingClaim("sub".into()))?;
        let exp = exp.ok_or_else(|| VerifyError::MissingClaim("exp".into()))?;
        let user_id = UserId::parse(&sub).map_err(|_| VerifyError::BadSubject(truncate(&sub)))?;
        if header.alg == Algorithm::HS256 {
            self.check_hs256(&sub, exp, iat, jsonwebtoken::get_current_timestamp() as i64)?;
        }
        Ok(Verified {
            user_id,
            exp,
            session_id: sid,
        })
    }
}

impl Verifier {
    /// What an HS256 token must satisfy beyond its signature, `exp`, `iss` and `aud`
    /// ([`Hs256Policy`]): a lifetime within the cap, counted from `iat` and from now (so a
    /// future `iat` cannot stretch it), and a subject that is not a Parley account.
    fn check_hs256(
        &self,
        sub: &str,
        exp: i64,
        iat: Option<i64>,
        now: i64,
    ) -> Result<(), VerifyError> {
        let leeway = self.leeway_secs as i64;
        let max = self.hs256_policy.max_lifetime.as_secs();
        let max_i = i64::try_from(max).unwrap_or(i64::MAX);
        if let Some(iat) = iat {
            if iat > now.saturating_add(leeway) {
                return Err(VerifyError::IssuedInFuture);
            }
            if exp.saturating_sub(iat) > max_i {
                return Err(VerifyError::LifetimeTooLong { max_secs: max });
            }
        }
        if exp.saturating_sub(now) > max_i.saturating_add(leeway) {
            return Err(VerifyError::LifetimeTooLong { max_secs: max });
        }
        if self.parley_accounts
            && !self.hs256_policy.allow_parley_accounts
            && looks_like_account_id(sub)
        {
            return Err(VerifyError::ParleyAccountSubject);
        }
        Ok(())
    }
}

/// The `alg` of a token's header, read without trusting it, for the log.
fn alg_of(token: &str) -> Option<String> {
    use base64_decode::decode_segment;
    token
        .split('.')
        .next()
        .and_then(decode_segment)
        .and_then(|h| serde_json::from_slice::<serde_json::Value>(&h).ok())
        .and_then(|v| v.get("alg").and_then(|a| a.as_str()).map(truncate))
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

mod base64_decode {
    /// Decodes one base64url segment (no padding), as in a JWT.
    pub fn decode_segment(s: &str) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(s.len() * 3 / 4);
        let mut buf = 0u32;
        let mut bits = 0;
        for c in s.bytes() {
            let v = match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'-' => 62,
                b'_' => 63,
                b'=' => break,
                _ => return None,
            };
            buf = (buf << 6) | u32::from(v);
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((buf >> bits) as u8);
                buf &= (1 << bits) - 1;
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    const SECRET: &str = "a-test-secret-of-enough-length";

    fn verifier() -> Verifier {
        let env = Env::from_pairs([("AUTH_SECRET", SECRET), ("AUTH_TOKEN_KINDS", "hs256")]);
        Verifier::new(&VerifierConfig::from_env(&env).unwrap())
    }

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    fn sign(claims: serde_json::Value, secret: &str) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn b64(bytes: &[u8]) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b))
                << (8 * (3 - chunk.len()));
            for i in 0..=chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }

    #[test]
    fn a_valid_token_names_its_user() {
        let exp = now() + 60;
        let v = verifier().verify(&sign(json!({"sub": "alice", "exp": exp}), SECRET));
        assert_eq!(
            v.unwrap(),
            Verified {
                user_id: UserId::parse("alice").unwrap(),
                exp,
                session_id: None,
            }
        );
    }

    #[test]
    fn a_token_signed_with_another_secret_is_refused() {
        let t = sign(
            json!({"sub": "alice", "exp": now() + 60}),
            "another-secret-entirely!!",
        );
        assert_eq!(verifier().verify(&t), Err(VerifyError::BadSignature));
    }

    #[test]
    fn an_expired_token_is_refused() {
        let t = sign(json!({"sub": "alice", "exp": now() - 60}), SECRET);
        assert_eq!(verifier().verify(&t), Err(VerifyError::Expired));
    }

    #[test]
    fn a_token_without_exp_is_refused() {
        let t = sign(json!({"sub": "alice"}), SECRET);
        assert_eq!(
            verifier().verify(&t),
            Err(VerifyError::MissingClaim("exp".into()))
        );
    }

    #[test]
    fn alg_none_is_refused() {
        let header = b64(br#"{"alg":"none","typ":"JWT"}"#);
        let claims = b64(format!(r#"{{"sub":"alice","exp":{}}}"#, now() + 60).as_bytes());
        let t = format!("{header}.{claims}.");
        assert_eq!(
            verifier().verify(&t),
            Err(VerifyError::AlgorithmNotAllowed("none".into()))
        );
    }

    #[test]
    fn another_algorithm_is_refused_even_with_the_right_secret() {
        let t = encode(
            &Header::new(Algorithm::HS512),
            &json!({"sub": "alice", "exp": now() + 60}),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert_eq!(
            verifier().verify(&t),
            Err(VerifyError::AlgorithmNotAllowed("HS512".into()))
        );
    }

    #[test]
    fn a_subject_that_is_not_a_user_id_is_refused() {
        let t = sign(json!({"sub": "alice.*", "exp": now() + 60}), SECRET);
        assert!(matches!(
            verifier().verify(&t),
            Err(VerifyError::BadSubject(_))
        ));
    }

    #[test]
    fn an_oversized_token_is_refused_before_parsing() {
        let t = "a".repeat(VerifierConfig::DEFAULT_MAX_TOKEN_BYTES + 1);
        assert!(matches!(
            verifier().verify(&t),
            Err(VerifyError::Oversized { .. })
        ));
    }

    #[test]
    fn garbage_is_malformed() {
        assert!(matches!(
            verifier().verify("not-a-token"),
            Err(VerifyError::Malformed(_))
        ));
        assert_eq!(verifier().verify(""), Err(VerifyError::Missing));
    }

    fn verifier_with(extra: &[(&str, &str)]) -> Verifier {
        let mut env = Env::from_pairs([("AUTH_SECRET", SECRET), ("AUTH_TOKEN_KINDS", "hs256")]);
        for (k, v) in extra {
            env = env.with(k, *v);
        }
        Verifier::new(&VerifierConfig::from_env(&env).unwrap())
    }

    #[test]
    fn an_hs256_token_living_longer_than_a_day_is_refused() {
        let too_long = VerifyError::LifetimeTooLong { max_secs: 86_400 };
        // By its exp alone (no iat), and by exp - iat.
        let t = sign(json!({"sub": "alice", "exp": now() + 86_400 + 120}), SECRET);
        assert_eq!(verifier().verify(&t), Err(too_long.clone()));
        let t = sign(
            json!({"sub": "alice", "iat": now() - 10, "exp": now() + 86_400}),
            SECRET,
        );
        assert_eq!(verifier().verify(&t), Err(too_long));
        // A day exactly is fine.
        let t = sign(
            json!({"sub": "alice", "iat": now(), "exp": now() + 86_400}),
            SECRET,
        );
        assert!(verifier().verify(&t).is_ok());
    }

    #[test]
    fn a_future_iat_cannot_stretch_an_hs256_tokens_lifetime() {
        let exp = now() + 10 * 86_400;
        let t = sign(json!({"sub": "alice", "iat": exp - 60, "exp": exp}), SECRET);
        assert_eq!(verifier().verify(&t), Err(VerifyError::IssuedInFuture));
    }

    #[test]
    fn the_lifetime_cap_is_a_setting() {
        let v = verifier_with(&[("AUTH_HS256_MAX_LIFETIME", "10m")]);
        let t = sign(json!({"sub": "alice", "exp": now() + 3600}), SECRET);
        assert_eq!(
            v.verify(&t),
            Err(VerifyError::LifetimeTooLong { max_secs: 600 })
        );
        let t = sign(json!({"sub": "alice", "exp": now() + 300}), SECRET);
        assert!(v.verify(&t).is_ok());
    }

    #[test]
    fn durations_parse_as_seconds_or_with_a_unit() {
        assert_eq!(parse_duration("86400"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("90m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration(" 30s "), Ok(Duration::from_secs(30)));
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("-5").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
        let err = VerifierConfig::from_env(&Env::from_pairs([
            ("AUTH_SECRET", SECRET),
            ("AUTH_HS256_MAX_LIFETIME", "0"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("AUTH_HS256_MAX_LIFETIME"), "{err}");
        let err = VerifierConfig::from_env(&Env::from_pairs([
            ("AUTH_SECRET", SECRET),
            ("AUTH_HS256_MAX_LIFETIME", "forever"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("AUTH_HS256_MAX_LIFETIME"), "{err}");
    }

    #[test]
    fn with_an_issuer_set_only_hs256_tokens_from_that_issuer_pass() {
        let v = verifier_with(&[("AUTH_HS256_ISSUER", "https://app.example")]);
        let exp = now() + 60;
        let t = sign(json!({"sub": "alice", "exp": exp}), SECRET);
        assert_eq!(v.verify(&t), Err(VerifyError::MissingClaim("iss".into())));
        let t = sign(json!({"sub": "alice", "exp": exp, "iss": "evil"}), SECRET);
        assert_eq!(v.verify(&t), Err(VerifyError::WrongIssuer));
        let t = sign(
            json!({"sub": "alice", "exp": exp, "iss": "https://app.example"}),
            SECRET,
        );
        assert!(v.verify(&t).is_ok());
    }

    #[test]
    fn with_an_audience_set_only_hs256_tokens_for_it_pass() {
        let v = verifier_with(&[("AUTH_HS256_AUDIENCE", "parley-chat")]);
        let exp = now() + 60;
        let t = sign(json!({"sub": "alice", "exp": exp}), SECRET);
        assert_eq!(v.verify(&t), Err(VerifyError::MissingClaim("aud".into())));
        let t = sign(json!({"sub": "alice", "exp": exp, "aud": "other"}), SECRET);
        assert_eq!(v.verify(&t), Err(VerifyError::WrongAudience));
        let t = sign(
            json!({"sub": "alice", "exp": exp, "aud": "parley-chat"}),
            SECRET,
        );
        assert!(v.verify(&t).is_ok());
        // Unset, an aud is not checked.
        let t = sign(json!({"sub": "alice", "exp": exp, "aud": "any"}), SECRET);
        assert!(verifier().verify(&t).is_ok());
    }

    #[test]
    fn an_hs256_token_not_valid_yet_is_refused() {
        let t = sign(
            json!({"sub": "alice", "exp": now() + 600, "nbf": now() + 300}),
            SECRET,
        );
        assert_eq!(verifier().verify(&t), Err(VerifyError::NotYetValid));
    }

    #[test]
    fn an_hs256_token_may_not_name_a_parley_account_while_parley_accounts_are_on() {
        let account = new_account_id();
        assert!(looks_like_account_id(&account));
        let t = sign(json!({"sub": account, "exp": now() + 60}), SECRET);
        let v = verifier_with(&[("AUTH_TOKEN_KINDS", "parley,hs256")]);
        assert_eq!(v.verify(&t), Err(VerifyError::ParleyAccountSubject));
        // Allowed when the operator says so, or when Parley accounts are off.
        let v = verifier_with(&[
            ("AUTH_TOKEN_KINDS", "parley,hs256"),
            ("AUTH_HS256_ALLOW_PARLEY_ACCOUNTS", "true"),
        ]);
        assert!(v.verify(&t).is_ok());
        assert!(verifier().verify(&t).is_ok());
        // App ids of other shapes, UUIDs included, are the app's own.
        let v = verifier_with(&[("AUTH_TOKEN_KINDS", "parley,hs256")]);
        for sub in [
            "alice",
            "0190f5b2-7c3e-7a1b-8c2d-3e4f5a6b7c8d",
            "4f1c2d3e4f5a4b6c8d7e9f0a1b2c3d4e",
        ] {
            let t = sign(json!({"sub": sub, "exp": now() + 60}), SECRET);
            assert!(v.verify(&t).is_ok(), "{sub}");
        }
    }

    #[test]
    fn a_short_or_missing_secret_stops_the_start() {
        let err = VerifierConfig::from_env(&Env::default()).unwrap_err();
        assert_eq!(err.to_string(), "AUTH_SECRET is required but not set");
        let err =
            VerifierConfig::from_env(&Env::from_pairs([("AUTH_SECRET", "short")])).unwrap_err();
        assert!(
            err.to_string().starts_with("AUTH_SECRET is invalid"),
            "{err}"
        );
        let err = VerifierConfig::from_env(&Env::from_pairs([
            ("AUTH_SECRET", SECRET),
            ("AUTH_TOKEN_KINDS", "hs256,magic"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("AUTH_TOKEN_KINDS"), "{err}");
    }
}
