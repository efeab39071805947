//! The seed's backups: one Fernet token (base64url text) over a whole gzip file, as Python's
//! `cryptography` writes it. Decrypted here in one streaming pass with bounded memory.
//!
//! A Fernet token's HMAC sits at its very end, so plaintext cannot be trusted until the last
//! byte is read. The caller therefore writes to a temporary name and keeps the output only
//! if this returns `Ok` — that is what "where the format allows" means for this format.

use std::io::{Read, Write};

use aes::cipher::{BlockDecryptMut, KeyIvInit};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::CryptoError;
use super::keys::{Key, Keyring};

type Decryptor = cbc::Decryptor<aes::Aes128>;

const READ_SIZE: usize = 1 << 20;
const HEADER: usize = 1 + 8 + 16;
const TAG: usize = 32;

/// What a legacy decryption produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacySummary {
    /// Plaintext bytes written.
    pub written: u64,
    /// Id of the key that authenticated the token.
    pub key_id: String,
    /// The token's timestamp (seconds since the epoch): when the backup was encrypted.
    pub created_at: u64,
}

/// Decodes base64url text arriving in pieces, ignoring whitespace and `=` padding.
struct Base64Stream {
    pending: Vec<u8>,
}

impl Base64Stream {
    fn new() -> Self {
        Self {
            pending: Vec::new(),
        }
    }

    /// Decodes all complete 4-character groups; keeps the rest for later.
    fn feed(&mut self, text: &[u8], out: &mut Vec<u8>, last: bool) -> Result<(), CryptoError> {
        self.pending.extend(
            text.iter()
                .copied()
                .filter(|b| !b.is_ascii_whitespace() && *b != b'='),
        );
        let usable = if last {
            self.pending.len()
        } else {
            self.pending.len() / 4 * 4
        };
        if usable == 0 {
            return Ok(());
        }
        decode_base64(&self.pending[..usable], out)?;
        self.pending.drain(..usable);
        Ok(())
    }
}

/// Decodes base64url text without padding or whitespace, appending to `out`.
pub fn decode_base64(text: &[u8], out: &mut Vec<u8>) -> Result<(), CryptoError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode_vec(text, out)
        .map_err(|_| {
            CryptoError::Malformed(
                "the file is not base64url text (is it a Fernet token file?)".into(),
            )
        })
}

/// Streams the decoded token bytes of `input` to `each`, in pieces.
fn decoded_pieces(
    mut input: impl Read,
    mut each: impl FnMut(&[u8]) -> Result<(), CryptoError>,
) -> Result<(), CryptoError> {
    let mut text = vec![0u8; READ_SIZE];
    let mut decoder = Base64Stream::new();
    let mut bytes = Vec::with_capacity(READ_SIZE);
    loop {
        let n = match input.read(&mut text) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CryptoError::Io(format!("reading the encrypted file: {e}"))),
        };
        bytes.clear();
        decoder.feed(&text[..n], &mut bytes, n == 0)?;
        if !bytes.is_empty() {
            each(&bytes)?;
        }
        if n == 0 {
            return Ok(());
        }
    }
}

fn new_mac(key: &Key) -> Hmac<Sha256> {
    <Hmac<Sha256> as Mac>::new_from_slice(key.signing())
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"))
}

/// Finds the configured key whose HMAC matches the token in `input` (one reading pass,
/// no decryption). Needed only when several keys are configured.
pub fn identify_key(input: impl Read, ring: &Keyring) -> Result<&Key, CryptoError> {
    if ring.is_empty() {
        return Err(CryptoError::NoKeys);
    }
    let mut macs: Vec<Hmac<Sha256>> = ring.keys().iter().map(new_mac).collect();
    let mut tail: Vec<u8> = Vec::with_capacity(TAG * 2);
    decoded_pieces(input, |piece| {
        // Everything but the last 32 bytes is signed.
        tail.extend_from_slice(piece);
        if tail.len() > TAG {
            let signed = tail.len() - TAG;
            for mac in &mut macs {
                mac.update(&tail[..signed]);
            }
            tail.drain(..signed);
        }
        Ok(())
    })?;
    if tail.len() < TAG {
        return Err(CryptoError::Truncated(
            "the token is shorter than its HMAC".into(),
        ));
    }
    ring.keys()
        .iter()
        .zip(macs)
        .find(|(_, mac)| mac.clone().verify_slice(&tail).is_ok())
        .map(|(key, _)| key)
        .ok_or_else(|| CryptoError::Authentication {
            tried: ring.ids().join(", "),
            at: String::new(),
        })
}

/// Decrypts a single-token file with `key`, streaming plaintext to `out`. Returns `Ok` only
/// if the token's HMAC verifies; on `Err` whatever was written must be discarded.
pub fn decrypt(
    input: impl Read,
    key: &Key,
    mut out: impl Write,
) -> Result<LegacySummary, CryptoError> {
    let mut mac = new_mac(key);
    let mut header: Vec<u8> = Vec::with_capacity(HEADER);
    let mut cipher: Option<Decryptor> = None;
    // Bytes not yet known to be ciphertext (the last 32 may be the tag) or not yet a whole
    // block; the very last block is held back for unpadding.
    let mut held: Vec<u8> = Vec::with_capacity(READ_SIZE + TAG + 32);
    let mut written = 0u64;
    let mut created_at = 0u64;
    let write_err =
        |e: std::io::Error| CryptoError::Io(format!("writing the decrypted output: {e}"));

    decoded_pieces(input, |mut piece| {
        if header.len() < HEADER {
            let need = (HEADER - header.len()).min(piece.len());
            header.extend_from_slice(&piece[..need]);
            piece = &piece[need..];
            if header.len() == HEADER {
                if header[0] != 0x80 {
                    return Err(CryptoError::Malformed(
                        "the file is not a Fernet token (bad version byte)".into(),
                    ));
                }
                created_at = u64::from_be_bytes(header[1..9].try_into().unwrap_or_default());
                mac.update(&header);
                cipher = Some(
                    Decryptor::new_from_slices(key.encryption(), &header[9..25])
                        .unwrap_or_else(|_| unreachable!("16-byte key and iv")),
                );
            }
        }
        held.extend_from_slice(piece);
        // Keep the possible tag (32) and one last block (16) back.
        let keep = TAG + 16;
        if held.len() > keep {
            let ready = (held.len() - keep) / 16 * 16;
            if ready > 0 {
                if let Some(dec) = cipher.as_mut() {
                    let blocks = &mut held[..ready];
                    mac.update(blocks);
                    decrypt_blocks(dec, blocks);
                    out.write_all(blocks).map_err(write_err)?;
                    written += ready as u64;
                }
                held.drain(..ready);
            }
        }
        Ok(())
    })?;

    if header.len() < HEADER || held.len() < TAG + 16 {
        return Err(CryptoError::Truncated(
            "the token ends before its last block and HMAC".into(),
        ));
    }
    let body_len = held.len() - TAG;
    if !body_len.is_multiple_of(16) {
        return Err(CryptoError::Truncated(
            "the ciphertext is not a whole number of blocks".into(),
        ));
    }
    let (body, tag) = held.split_at_mut(body_len);
    mac.update(body);
    if mac.verify_slice(tag).is_err() {
        return Err(CryptoError::Authentication {
            tried: key.id().to_string(),
            at: String::new(),
        });
    }
    let Some(dec) = cipher.as_mut() else {
        return Err(CryptoError::Truncated("no ciphertext".into()));
    };
    decrypt_blocks(dec, body);
    let pad = usize::from(body[body.len() - 1]);
    if pad == 0
        || pad > 16
        || body[body.len() - pad..]
            .iter()
            .any(|b| usize::from(*b) != pad)
    {
        return Err(CryptoError::Malformed(
            "bad padding after a valid HMAC".into(),
        ));
    }
    let plain = &body[..body.len() - pad];
    out.write_all(plain).map_err(write_err)?;
    out.flush().map_err(write_err)?;
    written += plain.len() as u64;
    Ok(LegacySummary {
        written,
        key_id: key.id().to_string(),
        created_at,
    })
}

fn decrypt_blocks(dec: &mut Decryptor, bytes: &mut [u8]) {
    let (blocks, tail) = aes::cipher::inout::InOutBuf::from(bytes).into_chunks();
    debug_assert!(tail.is_empty());
    dec.decrypt_blocks_inout_mut(blocks);
}

/// Whether the first bytes look like a Fernet token in text form (version 0x80 is "gA").
pub fn looks_like_token(head: &[u8]) -> bool {
    head.starts_with(b"gAAAAA")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::keys::generate;

    fn token_text(key: &Key, plain: &[u8]) -> Vec<u8> {
        key.fernet().encrypt(plain).into_bytes()
    }

    #[test]
    fn streams_a_token_of_any_length() {
        let ring = Keyring::parse(&generate(), "t").unwrap();
        let key = ring.primary().unwrap();
        for len in [0usize, 1, 15, 16, 17, 4095, 3 * READ_SIZE + 5] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let mut text = token_text(key, &plain);
            text.push(b'\n');
            let mut out = Vec::new();
            let summary = decrypt(&text[..], key, &mut out).unwrap();
            assert_eq!(out, plain, "length {len}");
            assert_eq!(summary.written, len as u64);
        }
    }

    #[test]
    fn finds_the_right_key_among_several() {
        let (a, b) = (generate(), generate());
        let ring = Keyring::parse(&format!("{a},{b}"), "t").unwrap();
        let signer = Keyring::parse(&b, "t").unwrap();
        let text = token_text(signer.primary().unwrap(), b"payload");
        let key = identify_key(&text[..], &ring).unwrap();
        assert_eq!(key.id(), signer.primary().unwrap().id());
    }

    #[test]
    fn tampering_wrong_key_and_truncation_fail() {
        let ring = Keyring::parse(&generate(), "t").unwrap();
        let key = ring.primary().unwrap();
        let text = token_text(key, &vec![9u8; 100_000]);

        let other = Keyring::parse(&generate(), "t").unwrap();
        assert!(matches!(
            decrypt(&text[..], other.primary().unwrap(), Vec::new()),
            Err(CryptoError::Authentication { .. })
        ));
        assert!(identify_key(&text[..], &other).is_err());

        let mut altered = text.clone();
        altered[5000] = if altered[5000] == b'A' { b'B' } else { b'A' };
        assert!(matches!(
            decrypt(&altered[..], key, Vec::new()),
            Err(CryptoError::Authentication { .. })
        ));

        let cut = &text[..text.len() - 300];
        assert!(decrypt(cut, key, Vec::new()).is_err());
        assert!(decrypt(&b"gAAAAA"[..], key, Vec::new()).is_err());
    }
}
