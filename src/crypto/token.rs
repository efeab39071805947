//! Fernet tokens in binary form (the base64url-decoded token): what each chunk of the
//! chunked format holds. Encryption and decryption go through the `fernet` crate; the HMAC
//! alone can be checked without decrypting, to verify a download.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::CryptoError;
use super::keys::{Key, Keyring};

/// Version byte, timestamp, IV and HMAC around the ciphertext.
pub const TOKEN_FIXED: usize = 1 + 8 + 16 + 32;
/// The smallest valid token: fixed parts plus one block of padding.
pub const TOKEN_MIN: usize = TOKEN_FIXED + 16;
const VERSION: u8 = 0x80;

/// Encrypts `plaintext` with `key` into a binary token.
pub fn encrypt(key: &Key, plaintext: &[u8]) -> Vec<u8> {
    let text = key.fernet().encrypt(plaintext);
    // The crate's own output is valid base64url.
    base64::engine::general_purpose::URL_SAFE
        .decode(text.as_bytes())
        .unwrap_or_else(|_| unreachable!("fernet produced invalid base64"))
}

/// The creation time stamped in a token (seconds since the epoch).
pub fn timestamp(token: &[u8]) -> Option<u64> {
    if token.len() < TOKEN_MIN || token[0] != VERSION {
        return None;
    }
    Some(u64::from_be_bytes(token[1..9].try_into().ok()?))
}

/// The key whose HMAC matches the token, if any (constant-time comparison).
pub fn verify<'a>(ring: &'a Keyring, token: &[u8]) -> Option<&'a Key> {
    if token.len() < TOKEN_MIN
        || token[0] != VERSION
        || !(token.len() - TOKEN_FIXED).is_multiple_of(16)
    {
        return None;
    }
    let (message, tag) = token.split_at(token.len() - 32);
    ring.keys().iter().find(|key| {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key.signing())
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(message);
        mac.verify_slice(tag).is_ok()
    })
}

/// Decrypts a binary token with whichever configured key signed it; `hint` (a key id) is
/// tried first. Tokens are accepted whatever their timestamp, as Python's `decrypt` does
/// without a ttl.
pub fn decrypt(ring: &Keyring, token: &[u8], hint: Option<&str>) -> Result<Vec<u8>, CryptoError> {
    if ring.is_empty() {
        return Err(CryptoError::NoKeys);
    }
    let stamp = timestamp(token).ok_or(CryptoError::Malformed("not a Fernet token".into()))?;
    let text = base64::engine::general_purpose::URL_SAFE.encode(token);
    let hinted = hint.and_then(|id| ring.by_id(id));
    let ordered = hinted
        .into_iter()
        .chain(ring.keys().iter().filter(|k| Some(k.id()) != hint));
    for key in ordered {
        if let Ok(plain) = key.fernet().decrypt_at_time(&text, None, stamp) {
            return Ok(plain);
        }
    }
    Err(CryptoError::Authentication {
        tried: ring.ids().join(", "),
        at: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::keys::generate;

    #[test]
    fn tokens_round_trip_and_verify_with_the_right_key_only() {
        let ring = Keyring::parse(&generate(), "t").unwrap();
        let other = Keyring::parse(&generate(), "t").unwrap();
        let token = encrypt(ring.primary().unwrap(), b"hello chunk");
        assert!(verify(&ring, &token).is_some());
        assert!(verify(&other, &token).is_none());
        assert_eq!(decrypt(&ring, &token, None).unwrap(), b"hello chunk");
        let err = decrypt(&other, &token, None).unwrap_err().to_string();
        assert!(err.contains("HMAC"), "{err}");
    }

    #[test]
    fn rotation_decrypts_with_any_configured_key() {
        let (old, new) = (generate(), generate());
        let before = Keyring::parse(&old, "t").unwrap();
        let token = encrypt(before.primary().unwrap(), b"x");
        let after = Keyring::parse(&format!("{new},{old}"), "t").unwrap();
        assert_eq!(decrypt(&after, &token, None).unwrap(), b"x");
        assert_eq!(
            verify(&after, &token).unwrap().id(),
            before.primary().unwrap().id()
        );
    }

    #[test]
    fn a_flipped_byte_fails_authentication() {
        let ring = Keyring::parse(&generate(), "t").unwrap();
        let mut token = encrypt(ring.primary().unwrap(), &[7u8; 1000]);
        token[500] ^= 1;
        assert!(verify(&ring, &token).is_none());
        assert!(decrypt(&ring, &token, None).is_err());
    }
}
