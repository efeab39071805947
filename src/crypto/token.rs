//! Fernet tokens in binary form (the base64url-decoded token): what each chunk of the
//! chunked format holds.
//!
//! The token layout is Fernet's: `0x80 | timestamp u64 | IV[16] | AES-128-CBC ciphertext
//! (PKCS#7) | HMAC-SHA256[32]`, on the same RustCrypto primitives the `fernet` crate uses.
//! Working on binary tokens directly skips the crate's base64 round trip, which costs most
//! of its decryption time (`cargo bench --bench crypto` prints both; see benches/RESULTS.md).
//! The `fernet` crate still parses and generates keys, and the tests check tokens against it
//! and against Python's `cryptography`, both ways.

use aes::cipher::block_padding::Pkcs7;
use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

use super::CryptoError;
use super::keys::{Key, Keyring};

/// Version byte, timestamp, IV and HMAC around the ciphertext.
pub const TOKEN_FIXED: usize = 1 + 8 + 16 + 32;
/// The smallest valid token: fixed parts plus one block of padding.
pub const TOKEN_MIN: usize = TOKEN_FIXED + 16;
const VERSION: u8 = 0x80;
const HEADER: usize = 1 + 8 + 16;

fn mac(key: &Key) -> Hmac<Sha256> {
    <Hmac<Sha256> as Mac>::new_from_slice(key.signing())
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"))
}

/// Encrypts `plaintext` with `key` into a binary token stamped with the current time.
pub fn encrypt(key: &Key, plaintext: &[u8]) -> Vec<u8> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut iv = [0u8; 16];
    rand::rng().fill_bytes(&mut iv);
    let padded = (plaintext.len() / 16 + 1) * 16;
    let mut token = Vec::with_capacity(HEADER + padded + 32);
    token.push(VERSION);
    token.extend_from_slice(&now.to_be_bytes());
    token.extend_from_slice(&iv);
    token.extend_from_slice(plaintext);
    token.resize(HEADER + padded, 0);
    cbc::Encryptor::<aes::Aes128>::new(key.encryption().into(), &iv.into())
        .encrypt_padded_mut::<Pkcs7>(&mut token[HEADER..], plaintext.len())
        .unwrap_or_else(|_| unreachable!("buffer sized for the padding"));
    let mut signer = mac(key);
    signer.update(&token);
    token.extend_from_slice(&signer.finalize().into_bytes());
    token
}

/// The creation time stamped in a token (seconds since the epoch).
pub fn timestamp(token: &[u8]) -> Option<u64> {
    if token.len() < TOKEN_MIN || token[0] != VERSION {
        return None;
    }
    Some(u64::from_be_bytes(token[1..9].try_into().ok()?))
}

fn well_formed(token: &[u8]) -> bool {
    token.len() >= TOKEN_MIN
        && token[0] == VERSION
        && (token.len() - TOKEN_FIXED).is_multiple_of(16)
}

/// The key whose HMAC matches the token, if any (constant-time comparison).
pub fn verify<'a>(ring: &'a Keyring, token: &[u8]) -> Option<&'a Key> {
    if !well_formed(token) {
        return None;
    }
    let (message, tag) = token.split_at(token.len() - 32);
    ring.keys().iter().find(|key| {
        let mut check = mac(key);
        check.update(message);
        check.verify_slice(tag).is_ok()
    })
}

fn ordered<'a>(ring: &'a Keyring, hint: Option<&'a str>) -> impl Iterator<Item = &'a Key> {
    let hinted = hint.and_then(|id| ring.by_id(id));
    hinted
        .into_iter()
        .chain(ring.keys().iter().filter(move |k| Some(k.id()) != hint))
}

/// Authenticates a token with whichever configured key signed it (`hint`, a key id, first)
/// and decrypts it in place; returns the plaintext, a slice of `token`. Tokens are accepted
/// whatever their timestamp, as Python's `decrypt` does without a ttl.
pub fn decrypt_in_place<'t>(
    ring: &Keyring,
    token: &'t mut [u8],
    hint: Option<&str>,
) -> Result<&'t [u8], CryptoError> {
    if ring.is_empty() {
        return Err(CryptoError::NoKeys);
    }
    if !well_formed(token) {
        return Err(CryptoError::Malformed("not a Fernet token".into()));
    }
    let split = token.len() - 32;
    let key = {
        let (message, tag) = token.split_at(split);
        ordered(ring, hint).find(|key| {
            let mut check = mac(key);
            check.update(message);
            check.verify_slice(tag).is_ok()
        })
    }
    .ok_or_else(|| CryptoError::Authentication {
        tried: ring.ids().join(", "),
        at: String::new(),
    })?;
    let iv: [u8; 16] = token[9..HEADER]
        .try_into()
        .unwrap_or_else(|_| unreachable!("checked length"));
    cbc::Decryptor::<aes::Aes128>::new(key.encryption().into(), &iv.into())
        .decrypt_padded_mut::<Pkcs7>(&mut token[HEADER..split])
        .map_err(|_| CryptoError::Malformed("bad padding inside an authenticated token".into()))
}

/// Like [`decrypt_in_place`], into a new buffer.
pub fn decrypt(ring: &Keyring, token: &[u8], hint: Option<&str>) -> Result<Vec<u8>, CryptoError> {
    let mut copy = token.to_vec();
    Ok(decrypt_in_place(ring, &mut copy, hint)?.to_vec())
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
    fn tokens_interoperate_with_the_fernet_crate_both_ways() {
        use base64::Engine as _;
        let ring = Keyring::parse(&generate(), "t").unwrap();
        let key = ring.primary().unwrap();
        for len in [0usize, 1, 15, 16, 17, 100_000] {
            let plain: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let ours = encrypt(key, &plain);
            let text = base64::engine::general_purpose::URL_SAFE.encode(&ours);
            assert_eq!(
                key.fernet().decrypt(&text).unwrap(),
                plain,
                "crate reads ours, {len}"
            );
            let theirs = base64::engine::general_purpose::URL_SAFE
                .decode(key.fernet().encrypt(&plain))
                .unwrap();
            assert_eq!(
                decrypt(&ring, &theirs, None).unwrap(),
                plain,
                "we read the crate's, {len}"
            );
        }
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
