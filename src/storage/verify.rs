//! Verifying a download as it streams in, so a bad copy is caught on the store that served
//! it and the download fails over — at the damaged chunk, not from the start.
//!
//! Chunked files are checked frame by frame (each token's HMAC, the index, the trailer);
//! the seed's single-token files by the token's HMAC at the end; anything else by size and,
//! when known, SHA-256.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::crypto::Keyring;
use crate::crypto::chunked::{
    self, FRAME_CHUNK, FRAME_INDEX, FRAME_PREFIX, HEADER_LEN, MAX_CHUNK_SIZE, TRAILER_LEN,
};
use crate::crypto::legacy;

/// The formats a backup object can be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// Lazarus's chunked format.
    Chunked,
    /// One Fernet token in text form (the seed's `*.enc`).
    LegacyFernet,
    /// Anything else (checked by size and checksum only).
    Raw,
}

impl Format {
    /// Recognises a format from an object's first bytes.
    pub fn detect(head: &[u8]) -> Format {
        if chunked::is_chunked(head) {
            Format::Chunked
        } else if legacy::looks_like_token(head) {
            Format::LegacyFernet
        } else {
            Format::Raw
        }
    }
}

/// A verification failure: the bytes from `restart_at` on must come from elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyFailure {
    /// Offset of the first untrustworthy byte (a frame start, or 0).
    pub restart_at: u64,
    /// What was wrong, for the report.
    pub reason: String,
}

/// What a finished verification established.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Verified {
    /// The format found.
    pub format: Format,
    /// Bytes in all.
    pub size: u64,
    /// SHA-256 of all bytes, hex.
    pub sha256: String,
    /// Whether an HMAC check covered every byte (false without keys, or for raw data).
    pub authenticated: bool,
}

type Mac256 = Hmac<Sha256>;

fn macs(keys: &Keyring) -> Vec<Mac256> {
    keys.keys()
        .iter()
        .map(|k| {
            <Mac256 as Mac>::new_from_slice(k.signing())
                .unwrap_or_else(|_| unreachable!("HMAC takes any key length"))
        })
        .collect()
}

/// The chunked format's parser state.
struct ChunkedState {
    header: Vec<u8>,
    /// Prefix of the frame being read.
    prefix: Vec<u8>,
    frame_start: u64,
    frame_tag: u8,
    token_len: u64,
    token_read: u64,
    macs: Vec<Mac256>,
    tag: Vec<u8>,
    chunks: u64,
    index_offset: Option<u64>,
    index_len: u64,
    trailer: Vec<u8>,
}

/// The single-token format's state.
struct LegacyState {
    text: Vec<u8>,
    macs: Vec<Mac256>,
    holdback: Vec<u8>,
    decoded: u64,
}

enum Kind {
    Undecided(Vec<u8>),
    Chunked(Box<ChunkedState>),
    Legacy(Box<LegacyState>),
    Raw,
}

/// The SHA-256 of a stream, computed on a thread of its own: a download hashes the whole
/// object and checks every chunk's HMAC, and on one thread the two hashes were three
/// quarters of its time (`cargo bench --bench recovery`). Inline when no thread can start.
struct WholeHash {
    pieces: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    worker: Option<std::thread::JoinHandle<Sha256>>,
    inline: Sha256,
    /// The hashing thread went away part-way: no hash can be given.
    broken: bool,
}

/// Pieces queued for the hashing thread before `update` waits for it.
const HASH_QUEUE: usize = 16;

impl WholeHash {
    fn new() -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(HASH_QUEUE);
        let worker = std::thread::Builder::new()
            .name("sha256".into())
            .spawn(move || {
                let mut hash = Sha256::new();
                for piece in rx {
                    hash.update(&piece);
                }
                hash
            })
            .ok();
        Self {
            pieces: worker.as_ref().map(|_| tx),
            worker,
            inline: Sha256::new(),
            broken: false,
        }
    }

    fn update(&mut self, data: &[u8]) {
        if data.is_empty() || self.broken {
            return;
        }
        match &self.pieces {
            Some(tx) => {
                if tx.send(data.to_vec()).is_err() {
                    self.broken = true;
                }
            }
            None => self.inline.update(data),
        }
    }

    /// The hash; `None` when the hashing thread failed part-way.
    fn finalize(mut self) -> Option<[u8; 32]> {
        self.pieces = None;
        match self.worker.take().map(std::thread::JoinHandle::join) {
            _ if self.broken => None,
            Some(Ok(hash)) => Some(hash.finalize().into()),
            Some(Err(_)) => None,
            None => Some(self.inline.finalize().into()),
        }
    }
}

/// Checks a stream of bytes fed in order.
pub struct Verifier {
    keys: Keyring,
    hash: WholeHash,
    offset: u64,
    safe: u64,
    kind: Kind,
}

impl Verifier {
    /// A verifier; with no keys, HMACs are not checked.
    pub fn new(keys: Keyring) -> Self {
        Self {
            keys,
            hash: WholeHash::new(),
            offset: 0,
            safe: 0,
            kind: Kind::Undecided(Vec::new()),
        }
    }

    /// Bytes fed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The end of the last verified unit: a safe point to checkpoint and resume from.
    pub fn safe_offset(&self) -> u64 {
        match self.kind {
            Kind::Raw => self.offset,
            _ => self.safe,
        }
    }

    /// Feeds the next bytes.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), VerifyFailure> {
        self.hash.update(data);
        if let Kind::Undecided(head) = &mut self.kind {
            let take = (8 - head.len()).min(data.len());
            head.extend_from_slice(&data[..take]);
            data = &data[take..];
            self.offset += take as u64;
            if head.len() < 8 {
                return Ok(());
            }
            let head = std::mem::take(head);
            self.kind = match Format::detect(&head) {
                Format::Chunked => Kind::Chunked(Box::new(ChunkedState {
                    header: Vec::with_capacity(HEADER_LEN),
                    prefix: Vec::with_capacity(FRAME_PREFIX),
                    frame_start: 0,
                    frame_tag: 0,
                    token_len: 0,
                    token_read: 0,
                    macs: Vec::new(),
                    tag: Vec::with_capacity(32),
                    chunks: 0,
                    index_offset: None,
                    index_len: 0,
                    trailer: Vec::with_capacity(TRAILER_LEN),
                })),
                Format::LegacyFernet => Kind::Legacy(Box::new(LegacyState {
                    text: Vec::new(),
                    macs: macs(&self.keys),
                    holdback: Vec::with_capacity(64),
                    decoded: 0,
                })),
                Format::Raw => Kind::Raw,
            };
            // Replay the sniffed bytes through the chosen parser.
            self.offset -= head.len() as u64;
            self.feed_parser(&head)?;
        }
        self.feed_parser(data)
    }

    fn feed_parser(&mut self, data: &[u8]) -> Result<(), VerifyFailure> {
        match &mut self.kind {
            Kind::Undecided(_) | Kind::Raw => {
                self.offset += data.len() as u64;
                Ok(())
            }
            Kind::Legacy(state) => {
                feed_legacy(state, data)?;
                self.offset += data.len() as u64;
                Ok(())
            }
            Kind::Chunked(_) => self.feed_chunked(data),
        }
    }

    fn feed_chunked(&mut self, mut data: &[u8]) -> Result<(), VerifyFailure> {
        let keys = &self.keys;
        let Kind::Chunked(st) = &mut self.kind else {
            return Ok(());
        };
        while !data.is_empty() {
            if st.header.len() < HEADER_LEN {
                let take = (HEADER_LEN - st.header.len()).min(data.len());
                st.header.extend_from_slice(&data[..take]);
                data = &data[take..];
                self.offset += take as u64;
                if st.header.len() == HEADER_LEN {
                    chunked::Header::decode(&st.header).map_err(|e| VerifyFailure {
                        restart_at: 0,
                        reason: e.to_string(),
                    })?;
                    self.safe = self.offset;
                    st.frame_start = self.offset;
                }
                continue;
            }
            if st.index_offset.is_some()
                && st.token_read == st.token_len
                && st.prefix.len() == FRAME_PREFIX
            {
                // Trailer.
                let take = (TRAILER_LEN - st.trailer.len()).min(data.len());
                if take == 0 {
                    return Err(VerifyFailure {
                        restart_at: self.offset,
                        reason: "bytes after the trailer".into(),
                    });
                }
                st.trailer.extend_from_slice(&data[..take]);
                data = &data[take..];
                self.offset += take as u64;
                continue;
            }
            if st.prefix.len() < FRAME_PREFIX {
                let take = (FRAME_PREFIX - st.prefix.len()).min(data.len());
                st.prefix.extend_from_slice(&data[..take]);
                data = &data[take..];
                self.offset += take as u64;
                if st.prefix.len() == FRAME_PREFIX {
                    st.frame_tag = st.prefix[0];
                    st.token_len = u64::from(u32::from_be_bytes(
                        st.prefix[1..5].try_into().unwrap_or_default(),
                    ));
                    st.token_read = 0;
                    st.tag.clear();
                    let sane =
                        st.token_len >= 32 + 16 && st.token_len <= (MAX_CHUNK_SIZE as u64) * 2;
                    if !(st.frame_tag == FRAME_CHUNK || st.frame_tag == FRAME_INDEX) || !sane {
                        return Err(VerifyFailure {
                            restart_at: st.frame_start,
                            reason: format!(
                                "damaged frame header at offset {} (after chunk {})",
                                st.frame_start, st.chunks
                            ),
                        });
                    }
                    if st.frame_tag == FRAME_INDEX {
                        st.index_offset = Some(st.frame_start);
                        st.index_len = st.token_len;
                    }
                    st.macs = macs(keys);
                }
                continue;
            }
            // Token bytes: all but the last 32 are signed; the last 32 are the tag.
            let signed_left = (st.token_len - 32).saturating_sub(st.token_read);
            let take = (st.token_len - st.token_read).min(data.len() as u64) as usize;
            let (piece, rest) = data.split_at(take);
            let signed = (signed_left as usize).min(piece.len());
            for mac in &mut st.macs {
                mac.update(&piece[..signed]);
            }
            st.tag.extend_from_slice(&piece[signed..]);
            st.token_read += take as u64;
            self.offset += take as u64;
            data = rest;
            if st.token_read == st.token_len {
                let what = if st.frame_tag == FRAME_INDEX {
                    "the index".to_string()
                } else {
                    format!("chunk {}", st.chunks)
                };
                if !keys.is_empty()
                    && !std::mem::take(&mut st.macs)
                        .into_iter()
                        .any(|mac| mac.verify_slice(&st.tag).is_ok())
                {
                    return Err(VerifyFailure {
                        restart_at: st.frame_start,
                        reason: format!("HMAC failure at {what} (offset {})", st.frame_start),
                    });
                }
                if st.frame_tag == FRAME_CHUNK {
                    st.chunks += 1;
                    st.prefix.clear();
                }
                self.safe = self.offset;
                st.frame_start = self.offset;
            }
        }
        Ok(())
    }

    /// Ends the stream: checks completeness, size and checksum.
    pub fn finish(
        self,
        expected_size: Option<u64>,
        expected_sha256: Option<&str>,
    ) -> Result<Verified, VerifyFailure> {
        let size = self.offset;
        let whole = |reason: String| VerifyFailure {
            restart_at: 0,
            reason,
        };
        let sha256 = hex::encode(self.hash.finalize().ok_or_else(|| {
            whole("its SHA-256 could not be computed (the hashing thread failed); try again".into())
        })?);
        if let Some(expected) = expected_size
            && expected != size
        {
            return Err(whole(format!("size is {size} bytes, expected {expected}")));
        }
        if let Some(expected) = expected_sha256
            && !expected.eq_ignore_ascii_case(&sha256)
        {
            return Err(whole(format!("SHA-256 is {sha256}, expected {expected}")));
        }
        let keyed = !self.keys.is_empty();
        let (format, authenticated) = match self.kind {
            Kind::Undecided(_) | Kind::Raw => (Format::Raw, false),
            Kind::Legacy(mut state) => {
                feed_legacy(&mut state, &[]).map_err(|f| whole(f.reason))?;
                let LegacyState {
                    text,
                    macs,
                    holdback,
                    ..
                } = *state;
                let mut decoder_rest = Vec::new();
                let mut tail = holdback;
                if !text.is_empty() {
                    legacy::decode_base64(&text, &mut decoder_rest)
                        .map_err(|e| whole(e.to_string()))?;
                }
                tail.extend_from_slice(&decoder_rest);
                if tail.len() < 32 {
                    return Err(whole("the token is shorter than its HMAC".into()));
                }
                let (signed, tag) = tail.split_at(tail.len() - 32);
                let ok = macs.into_iter().any(|mut mac| {
                    mac.update(signed);
                    mac.verify_slice(tag).is_ok()
                });
                if keyed && !ok {
                    return Err(whole(format!(
                        "HMAC failure: the token does not authenticate with any configured key (ids {})",
                        self.keys.ids().join(", ")
                    )));
                }
                (Format::LegacyFernet, keyed)
            }
            Kind::Chunked(st) => {
                if st.trailer.len() != TRAILER_LEN {
                    return Err(VerifyFailure {
                        restart_at: self.safe,
                        reason: "the object ends before its trailer (truncated)".into(),
                    });
                }
                let trailer =
                    chunked::Trailer::decode(&st.trailer).map_err(|e| whole(e.to_string()))?;
                let consistent = Some(trailer.index_offset) == st.index_offset
                    && u64::from(trailer.index_len) == st.index_len
                    && trailer.chunk_count == st.chunks;
                if !consistent {
                    return Err(whole(
                        "the trailer does not match the frames before it".into(),
                    ));
                }
                (Format::Chunked, keyed)
            }
        };
        Ok(Verified {
            format,
            size,
            sha256,
            authenticated,
        })
    }
}

/// Feeds base64 text of a legacy token: decodes whole groups, signs all but the last 32
/// decoded bytes.
fn feed_legacy(state: &mut LegacyState, data: &[u8]) -> Result<(), VerifyFailure> {
    state.text.extend(
        data.iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace() && *b != b'='),
    );
    let usable = state.text.len() / 4 * 4;
    if usable < 4096 && !data.is_empty() {
        return Ok(());
    }
    let mut decoded = Vec::with_capacity(usable / 4 * 3);
    legacy::decode_base64(&state.text[..usable], &mut decoded).map_err(|e| VerifyFailure {
        restart_at: 0,
        reason: e.to_string(),
    })?;
    state.text.drain(..usable);
    state.decoded += decoded.len() as u64;
    state.holdback.extend_from_slice(&decoded);
    if state.holdback.len() > 32 {
        let signed = state.holdback.len() - 32;
        for mac in &mut state.macs {
            mac.update(&state.holdback[..signed]);
        }
        state.holdback.drain(..signed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::chunked::{EncodeOptions, encode};
    use crate::crypto::keys::generate;

    fn chunked_bytes(ring: &Keyring) -> Vec<u8> {
        let plain: Vec<u8> = (0..600_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let mut out = Vec::new();
        let options = EncodeOptions {
            chunk_size: 100_000,
            threads: 2,
            ..Default::default()
        };
        encode(&plain[..], &mut out, ring.primary().unwrap(), options).unwrap();
        out
    }

    fn verify_in_pieces(
        ring: &Keyring,
        bytes: &[u8],
        piece: usize,
    ) -> Result<Verified, VerifyFailure> {
        let mut v = Verifier::new(ring.clone());
        for part in bytes.chunks(piece) {
            v.feed(part)?;
        }
        v.finish(Some(bytes.len() as u64), None)
    }

    #[test]
    fn chunked_objects_verify_in_any_piece_size() {
        let ring = Keyring::parse(&generate(), "t").unwrap();
        let bytes = chunked_bytes(&ring);
        for piece in [1, 7, 4096, 1 << 20] {
            let v = verify_in_pieces(&ring, &bytes, piece).unwrap();
            assert_eq!(v.format, Format::Chunked);
            assert!(v.authenticated);
            assert_eq!(v.sha256, hex::encode(Sha256::digest(&bytes)));
        }
    }

    #[test]
    fn a_flipped_byte_names_its_chunk_and_restart_point() {
        let ring = Keyring::parse(&generate(), "t").unwrap();
        let mut bytes = chunked_bytes(&ring);
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &bytes).unwrap();
        let opened = chunked::open(file.as_file(), &ring).unwrap();
        let third = opened.index.entries[2];
        bytes[third.offset as usize + 100] ^= 1;
        let failure = verify_in_pieces(&ring, &bytes, 65536).unwrap_err();
        assert_eq!(failure.restart_at, third.offset);
        assert!(
            failure.reason.contains("HMAC failure at chunk 2"),
            "{}",
            failure.reason
        );
    }

    #[test]
    fn truncation_and_wrong_keys_fail() {
        let ring = Keyring::parse(&generate(), "t").unwrap();
        let bytes = chunked_bytes(&ring);
        let mut v = Verifier::new(ring.clone());
        v.feed(&bytes[..bytes.len() - 10]).unwrap();
        let f = v.finish(None, None).unwrap_err();
        assert!(f.reason.contains("truncated"), "{}", f.reason);
        let other = Keyring::parse(&generate(), "t").unwrap();
        assert!(verify_in_pieces(&other, &bytes, 4096).is_err());
        // Without keys only structure, size and checksum are checked.
        let v = verify_in_pieces(&Keyring::default(), &bytes, 4096).unwrap();
        assert!(!v.authenticated);
    }

    #[test]
    fn legacy_tokens_verify_at_the_end() {
        let ring = Keyring::parse(&generate(), "t").unwrap();
        let text = ring
            .primary()
            .unwrap()
            .fernet()
            .encrypt(&vec![5u8; 300_000])
            .into_bytes();
        let v = verify_in_pieces(&ring, &text, 1000).unwrap();
        assert_eq!(v.format, Format::LegacyFernet);
        assert!(v.authenticated);
        let mut bad = text.clone();
        bad[2000] = if bad[2000] == b'A' { b'B' } else { b'A' };
        let f = verify_in_pieces(&ring, &bad, 1000).unwrap_err();
        assert_eq!(f.restart_at, 0);
        assert!(f.reason.contains("HMAC failure"), "{}", f.reason);
    }

    #[test]
    fn raw_objects_check_size_and_checksum() {
        let data = b"PGDMP plain dump bytes".to_vec();
        let mut v = Verifier::new(Keyring::default());
        v.feed(&data).unwrap();
        let sha = hex::encode(Sha256::digest(&data));
        assert_eq!(
            v.finish(Some(data.len() as u64), Some(&sha))
                .unwrap()
                .format,
            Format::Raw
        );
        let mut v = Verifier::new(Keyring::default());
        v.feed(&data).unwrap();
        assert!(v.finish(None, Some("00")).is_err());
    }
}
