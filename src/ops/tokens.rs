//! API tokens: random bearer secrets of which the configuration keeps only the SHA-256,
//! each with an identity and a role. A token is shown once, when it is made.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use super::actor::Role;
use crate::config::{Loaded, TokenConfig};

/// What every token starts with, so one pasted into a log or a chat is recognisable.
pub const TOKEN_PREFIX: &str = "lzr_";

/// A new random token (256 bits).
pub fn new_token() -> String {
    let mut raw = [0u8; 32];
    rand::Rng::fill(&mut rand::rng(), &mut raw[..]);
    format!("{TOKEN_PREFIX}{}", hex::encode(raw))
}

/// The SHA-256 of a token, hex: what the configuration holds.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The configured tokens, re-read when the configuration file changes (a token made with
/// `lazarus token create` works without restarting `serve`).
pub struct Tokens {
    file: Option<PathBuf>,
    cache: Mutex<(Option<SystemTime>, Vec<TokenConfig>)>,
}

fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl Tokens {
    /// The tokens of a loaded configuration.
    pub fn new(loaded: &Loaded) -> Self {
        let modified = loaded
            .file
            .as_ref()
            .and_then(|f| std::fs::metadata(f).ok()?.modified().ok());
        Self {
            file: loaded.file.clone(),
            cache: Mutex::new((modified, loaded.config.tokens.clone())),
        }
    }

    fn current(&self) -> Vec<TokenConfig> {
        let Ok(mut cache) = self.cache.lock() else {
            return Vec::new();
        };
        if let Some(file) = &self.file {
            let modified = std::fs::metadata(file).ok().and_then(|m| m.modified().ok());
            if modified != cache.0 {
                match Loaded::load(Some(file)) {
                    Ok(loaded) => *cache = (modified, loaded.config.tokens),
                    Err(e) => {
                        tracing::warn!(error = %e, "configuration changed but cannot be read; keeping the tokens it had")
                    }
                }
            }
        }
        cache.1.clone()
    }

    /// Whether any token is configured at all.
    pub fn is_empty(&self) -> bool {
        self.current().is_empty()
    }

    /// The identity and role of a presented token, if it is one of ours.
    pub fn identify(&self, presented: &str) -> Option<(String, Role)> {
        let hash = token_hash(presented.trim());
        self.current()
            .into_iter()
            .find(|t| same(&t.sha256.to_ascii_lowercase(), &hash))
            .map(|t| (t.name, t.role))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_known_by_its_hash_alone() {
        let token = new_token();
        assert!(token.starts_with(TOKEN_PREFIX) && token.len() == 68);
        let loaded = Loaded {
            source: "test".into(),
            base: PathBuf::from("."),
            file: None,
            config: crate::config::Config {
                tokens: vec![TokenConfig {
                    name: "ci".into(),
                    role: Role::Operator,
                    sha256: token_hash(&token),
                }],
                ..Default::default()
            },
        };
        let tokens = Tokens::new(&loaded);
        assert_eq!(tokens.identify(&token), Some(("ci".into(), Role::Operator)));
        assert_eq!(tokens.identify(&new_token()), None);
        assert_eq!(tokens.identify(""), None);
    }
}
