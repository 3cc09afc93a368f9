//! Auth.js v5 session tokens: the encrypted JWT a Next.js app keeps in `authjs.session-token`
//! (or `__Secure-authjs.session-token`), so a browser that is signed in to the app connects to
//! Parley without a second login (DESIGN §5).
//!
//! The token is a compact JWE with `alg: dir` and `enc: A256CBC-HS512` (RFC 7516, RFC 7518
//! §5.2.5). Its 64-byte key is HKDF-SHA256 of the UTF-8 bytes of `AUTH_SECRET`, with the cookie
//! name as salt and `Auth.js Generated Encryption Key (<salt>)` as info. Every configured secret
//! (`AUTH_SECRET`, then `AUTH_SECRET_1..3` for rotation) and both cookie names are tried.

use aes::cipher::{BlockDecryptMut, KeyIvInit, block_padding::Pkcs7};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use sha2::{Sha256, Sha512};

use crate::verify::VerifyError;

/// The cookie names Auth.js v5 uses, which are also the HKDF salts.
pub const COOKIE_NAMES: [&str; 2] = ["authjs.session-token", "__Secure-authjs.session-token"];

/// One derived key: 32 bytes of MAC key, then 32 bytes of AES key.
#[derive(Clone)]
pub struct Key([u8; 64]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key([redacted])")
    }
}

impl Key {
    /// The key Auth.js derives from `secret` for cookie `salt`.
    pub fn derive(secret: &str, salt: &str) -> Key {
        let hk = hkdf::Hkdf::<Sha256>::new(Some(salt.as_bytes()), secret.as_bytes());
        let mut okm = [0u8; 64];
        let info = format!("Auth.js Generated Encryption Key ({salt})");
        hk.expand(info.as_bytes(), &mut okm)
            .expect("64 bytes is a valid HKDF-SHA256 output length");
        Key(okm)
    }
}

/// Every key to try: each secret with each cookie name.
pub fn keys_for(secrets: &[&str]) -> Vec<Key> {
    secrets
        .iter()
        .flat_map(|s| COOKIE_NAMES.iter().map(move |salt| Key::derive(s, salt)))
        .collect()
}

/// Whether `token` has the shape of a compact JWE (five segments).
pub fn looks_like_jwe(token: &str) -> bool {
    token.split('.').count() == 5
}

/// Decrypts a token with the first key whose MAC matches; returns the claims' JSON bytes.
pub fn decrypt(token: &str, keys: &[Key]) -> Result<Vec<u8>, VerifyError> {
    let parts: Vec<&str> = token.split('.').collect();
    let [header_b64, encrypted_key, iv, ciphertext, tag] = parts[..] else {
        return Err(VerifyError::Malformed("not a compact JWE".into()));
    };
    let header: serde_json::Value = B64
        .decode(header_b64)
        .ok()
        .and_then(|h| serde_json::from_slice(&h).ok())
        .ok_or_else(|| VerifyError::Malformed("unreadable JWE header".into()))?;
    let alg = header.get("alg").and_then(|v| v.as_str()).unwrap_or("");
    let enc = header.get("enc").and_then(|v| v.as_str()).unwrap_or("");
    if alg != "dir" || enc != "A256CBC-HS512" {
        return Err(VerifyError::AlgorithmNotAllowed(format!(
            "{}/{}",
            truncate(alg),
            truncate(enc)
        )));
    }
    if header.get("zip").is_some() {
        return Err(VerifyError::Malformed(
            "compressed JWE is not accepted".into(),
        ));
    }
    if !encrypted_key.is_empty() {
        return Err(VerifyError::Malformed(
            "dir JWE must have no encrypted key".into(),
        ));
    }
    let decode = |s: &str| {
        B64.decode(s)
            .map_err(|_| VerifyError::Malformed("bad base64url in JWE".into()))
    };
    let (iv, ciphertext, tag) = (decode(iv)?, decode(ciphertext)?, decode(tag)?);
    if iv.len() != 16 || tag.len() != 32 || ciphertext.is_empty() || ciphertext.len() % 16 != 0 {
        return Err(VerifyError::Malformed(
            "JWE parts have the wrong length".into(),
        ));
    }
    // RFC 7518 §5.2.2.1: the AAD is the ASCII of the encoded protected header, AL its length
    // in bits as a 64-bit big-endian number.
    let aad = header_b64.as_bytes();
    let al = ((aad.len() as u64) * 8).to_be_bytes();
    for key in keys {
        let (mac_key, enc_key) = key.0.split_at(32);
        let mut mac = <Hmac<Sha512> as Mac>::new_from_slice(mac_key).expect("any key length");
        mac.update(aad);
        mac.update(&iv);
        mac.update(&ciphertext);
        mac.update(&al);
        if mac.verify_truncated_left(&tag).is_err() {
            continue;
        }
        let plain = cbc::Decryptor::<aes::Aes256>::new_from_slices(enc_key, &iv)
            .expect("32-byte key, 16-byte iv")
            .decrypt_padded_vec_mut::<Pkcs7>(&ciphertext)
            .map_err(|_| VerifyError::Malformed("bad padding".into()))?;
        return Ok(plain);
    }
    Err(VerifyError::BadSignature)
}

/// The Auth.js session token in a `Cookie` header: the whole cookie, or its chunks
/// `<name>.0`, `<name>.1`, … joined in order.
pub fn token_from_cookies(cookie_header: &str) -> Option<String> {
    let pairs: Vec<(&str, &str)> = cookie_header
        .split(';')
        .filter_map(|p| p.trim().split_once('='))
        .collect();
    for name in COOKIE_NAMES.iter().rev() {
        if let Some((_, v)) = pairs.iter().find(|(k, _)| k == name) {
            return Some((*v).to_owned());
        }
        let mut chunks: Vec<(usize, &str)> = pairs
            .iter()
            .filter_map(|(k, v)| {
                let n = k.strip_prefix(name)?.strip_prefix('.')?.parse().ok()?;
                Some((n, *v))
            })
            .collect();
        if !chunks.is_empty() {
            chunks.sort_by_key(|(n, _)| *n);
            if chunks.iter().enumerate().any(|(i, (n, _))| i != *n) {
                continue; // a missing chunk: not a token
            }
            return Some(chunks.into_iter().map(|(_, v)| v).collect());
        }
    }
    None
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_cookies_are_joined_in_order() {
        let h = "a=1; authjs.session-token.1=def; authjs.session-token.0=abc; b=2";
        assert_eq!(token_from_cookies(h).as_deref(), Some("abcdef"));
        assert_eq!(
            token_from_cookies("__Secure-authjs.session-token=xyz").as_deref(),
            Some("xyz")
        );
        assert_eq!(token_from_cookies("authjs.session-token.1=def"), None);
        assert_eq!(token_from_cookies("other=1"), None);
    }

    #[test]
    fn a_jwe_with_another_algorithm_is_refused() {
        let header = B64.encode(br#"{"alg":"A256KW","enc":"A256GCM"}"#);
        let t = format!("{header}.abc.abc.abc.abc");
        assert!(matches!(
            decrypt(&t, &keys_for(&["x"])),
            Err(VerifyError::AlgorithmNotAllowed(_))
        ));
    }
}
