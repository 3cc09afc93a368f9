//! Parley access tokens: EdDSA (Ed25519) JWTs with `kid`, `iss`, `aud`, `exp`, `sub` and `sid`
//! (the session), and the JWKS that publishes the public keys.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use chrono::Utc;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rand::RngCore;
use serde::{Deserialize, Serialize};

/// The PKCS#8 v1 prefix of an Ed25519 private key (RFC 8410), before the 32-byte seed.
const PKCS8_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// A key as stored.
#[derive(Debug, Clone)]
pub struct StoredKey {
    pub kid: String,
    pub seed: Vec<u8>,
    pub public_key: Vec<u8>,
    pub retired: bool,
}

/// A new random key.
pub fn generate() -> StoredKey {
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    let public = ed25519_dalek::SigningKey::from_bytes(&seed)
        .verifying_key()
        .to_bytes();
    StoredKey {
        kid: uuid::Uuid::now_v7().simple().to_string(),
        seed: seed.to_vec(),
        public_key: public.to_vec(),
        retired: false,
    }
}

/// The keys in use: the one that signs, and every one still published.
pub struct KeyRing {
    signer: (String, EncodingKey),
    published: Vec<StoredKey>,
}

impl KeyRing {
    /// From stored keys, newest first: the first unretired one signs.
    pub fn new(keys: Vec<StoredKey>) -> Option<Self> {
        let active = keys.iter().find(|k| !k.retired)?;
        let mut der = PKCS8_ED25519_PREFIX.to_vec();
        der.extend_from_slice(&active.seed);
        Some(Self {
            signer: (active.kid.clone(), EncodingKey::from_ed_der(&der)),
            published: keys,
        })
    }

    /// The JWKS document.
    pub fn jwks(&self) -> Jwks {
        Jwks {
            keys: self
                .published
                .iter()
                .map(|k| Jwk {
                    kty: "OKP".into(),
                    crv: "Ed25519".into(),
                    alg: "EdDSA".into(),
                    usage: "sig".into(),
                    kid: k.kid.clone(),
                    x: B64.encode(&k.public_key),
                })
                .collect(),
        }
    }

    /// Signs an access token for `user` in session `sid`; returns it and its `exp`.
    pub fn sign(
        &self,
        user: &str,
        sid: &str,
        issuer: &str,
        audience: &str,
        ttl_secs: i64,
    ) -> (String, i64) {
        let now = Utc::now().timestamp();
        let exp = now + ttl_secs;
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.signer.0.clone());
        let claims = AccessClaims {
            sub: user.to_owned(),
            sid: sid.to_owned(),
            iss: issuer.to_owned(),
            aud: audience.to_owned(),
            iat: now,
            exp,
        };
        let token = jsonwebtoken::encode(&header, &claims, &self.signer.1)
            .expect("an Ed25519 key from a 32-byte seed always signs");
        (token, exp)
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct AccessClaims {
    sub: String,
    sid: String,
    iss: String,
    aud: String,
    iat: i64,
    exp: i64,
}

/// `GET /.well-known/jwks.json`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Jwk {
    pub kty: String,
    pub crv: String,
    pub alg: String,
    #[serde(rename = "use")]
    pub usage: String,
    pub kid: String,
    pub x: String,
}
