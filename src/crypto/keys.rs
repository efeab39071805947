//! Fernet keys: loaded from `LAZARUS_KEYS` or a key file, several at once for rotation —
//! the first encrypts, all decrypt. Keys never appear in logs, errors or the journal: only
//! their ids (a short hash) do.

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use base64::Engine as _;
use sha2::{Digest, Sha256};

use super::CryptoError;

/// The environment variable holding comma-separated Fernet keys.
pub const KEYS_ENV: &str = "LAZARUS_KEYS";

/// One Fernet key (32 bytes: a signing half and an encryption half).
#[derive(Clone)]
pub struct Key {
    id: String,
    fernet: fernet::Fernet,
    signing: [u8; 16],
    encryption: [u8; 16],
}

impl Drop for Key {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.signing.zeroize();
        self.encryption.zeroize();
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", self.id)
    }
}

impl Key {
    /// Parses a key in Fernet's text form (32 bytes, base64url). The error never echoes it.
    pub fn parse(text: &str, position: &str) -> Result<Key, CryptoError> {
        let text = text.trim();
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text.trim_end_matches('='))
            .map_err(|_| CryptoError::BadKey(format!("{position} is not base64url text")))?;
        if raw.len() != 32 {
            return Err(CryptoError::BadKey(format!(
                "{position} decodes to {} bytes; a Fernet key is 32 (make one with `lazarus key generate`)",
                raw.len()
            )));
        }
        let mut signing = [0u8; 16];
        let mut encryption = [0u8; 16];
        signing.copy_from_slice(&raw[..16]);
        encryption.copy_from_slice(&raw[16..]);
        let id = hex::encode(&Sha256::digest(&raw)[..4]);
        let fernet = fernet::Fernet::new(text)
            .ok_or_else(|| CryptoError::BadKey(format!("{position} is not a valid Fernet key")))?;
        Ok(Key {
            id,
            fernet,
            signing,
            encryption,
        })
    }

    /// A short, non-secret identifier: the first 4 bytes of the key's SHA-256, hex.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The HMAC-SHA256 signing half.
    pub fn signing(&self) -> &[u8; 16] {
        &self.signing
    }

    /// The AES-128 encryption half.
    pub fn encryption(&self) -> &[u8; 16] {
        &self.encryption
    }

    /// The key as the `fernet` crate holds it.
    pub fn fernet(&self) -> &fernet::Fernet {
        &self.fernet
    }

    /// The key's text (Fernet's base64url form), for writing a key file another process
    /// reads; wiped from memory when dropped. Never log it.
    pub fn to_text(&self) -> zeroize::Zeroizing<String> {
        let mut raw = zeroize::Zeroizing::new([0u8; 32]);
        raw[..16].copy_from_slice(&self.signing);
        raw[16..].copy_from_slice(&self.encryption);
        zeroize::Zeroizing::new(base64::engine::general_purpose::URL_SAFE.encode(&raw[..]))
    }
}

/// The configured keys, in order: the first encrypts, every one decrypts.
#[derive(Clone, Debug, Default)]
pub struct Keyring {
    keys: Vec<Key>,
}

impl Keyring {
    /// A keyring of the given keys.
    pub fn new(keys: Vec<Key>) -> Self {
        Self { keys }
    }

    /// Parses comma- or newline-separated keys; `#` starts a comment line.
    pub fn parse(text: &str, source: &str) -> Result<Keyring, CryptoError> {
        let keys = text
            .split([',', '\n'])
            .map(str::trim)
            .filter(|k| !k.is_empty() && !k.starts_with('#'))
            .enumerate()
            .map(|(i, k)| Key::parse(k, &format!("key {} of {source}", i + 1)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Keyring { keys })
    }

    /// Reads a key file, refusing one that others can read.
    pub fn from_file(path: &Path) -> Result<Keyring, CryptoError> {
        let meta = std::fs::metadata(path).map_err(|e| {
            CryptoError::BadKey(format!("cannot read key file {}: {e}", path.display()))
        })?;
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(CryptoError::BadKey(format!(
                "key file {} is readable by group or others (mode {:o}); run `chmod 600 {}`",
                path.display(),
                mode & 0o777,
                path.display()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| {
            CryptoError::BadKey(format!("cannot read key file {}: {e}", path.display()))
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Keys from `LAZARUS_KEYS`, else from `file` if given; may be empty.
    pub fn load(file: Option<&Path>) -> Result<Keyring, CryptoError> {
        match std::env::var(KEYS_ENV) {
            Ok(text) if !text.trim().is_empty() => Self::parse(&text, KEYS_ENV),
            _ => match file {
                Some(path) => Self::from_file(path),
                None => Ok(Keyring::default()),
            },
        }
    }

    /// Whether no key is configured.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The keys, in order.
    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    /// The key that encrypts new data.
    pub fn primary(&self) -> Result<&Key, CryptoError> {
        self.keys.first().ok_or(CryptoError::NoKeys)
    }

    /// The key with this id.
    pub fn by_id(&self, id: &str) -> Option<&Key> {
        self.keys.iter().find(|k| k.id == id)
    }

    /// Ids of all keys, for messages.
    pub fn ids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.id.as_str()).collect()
    }
}

/// A new random key in Fernet's text form.
pub fn generate() -> String {
    fernet::Fernet::generate_key()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_written_out_parses_back_to_the_same_key() {
        let text = generate();
        let key = Key::parse(&text, "test").unwrap();
        let again = Key::parse(&key.to_text(), "again").unwrap();
        assert_eq!(again.id(), key.id());
        assert_eq!(key.to_text().as_str(), text.trim());
    }

    #[test]
    fn parses_rotation_lists_and_hides_key_text() {
        let (a, b) = (generate(), generate());
        let ring = Keyring::parse(&format!("# comment\n{a}, {b}\n"), "test").unwrap();
        assert_eq!(ring.keys().len(), 2);
        assert_eq!(ring.primary().unwrap().id().len(), 8);
        let shown = format!("{ring:?}");
        assert!(!shown.contains(&a) && !shown.contains(&b), "{shown}");
    }

    #[test]
    fn bad_keys_are_refused_without_echoing_them() {
        let err = Keyring::parse("c2hvcnQ", "LAZARUS_KEYS")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("key 1 of LAZARUS_KEYS decodes to 5 bytes"),
            "{err}"
        );
        assert!(!err.contains("c2hvcnQ"));
        let err = Keyring::parse("not base64 !!", "x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not base64url"), "{err}");
    }

    #[test]
    fn world_readable_key_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, generate()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Keyring::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(Keyring::from_file(&path).unwrap().keys().len(), 1);
    }
}
