//! The chunked encrypted format of new backups (specified in `docs/FORMAT.md`).
//!
//! A header, then independent chunks — each compressed, then encrypted as one Fernet token in
//! binary form — then an encrypted index and a fixed-size trailer. Chunks decrypt and
//! decompress in parallel, a reader can start at any chunk, and every byte is authenticated:
//! each chunk's plaintext names its file and position, and the index (itself a token) holds
//! the plaintext size and SHA-256.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

use sha2::{Digest, Sha256};

use super::CryptoError;
use super::keys::{Key, Keyring};
use super::token;
use crate::codec::{self, Compression};
use crate::parallel;

/// First bytes of every chunked file.
pub const MAGIC: [u8; 8] = *b"LZRCHNK1";
/// Last bytes of every complete chunked file.
pub const END_MAGIC: [u8; 8] = *b"LZRCEND1";
/// Format version written by this build.
pub const VERSION: u8 = 1;
/// Header size in bytes.
pub const HEADER_LEN: usize = 32;
/// Trailer size in bytes.
pub const TRAILER_LEN: usize = 64;
/// Frame tag of a data chunk.
pub const FRAME_CHUNK: u8 = b'C';
/// Frame tag of the index.
pub const FRAME_INDEX: u8 = b'I';
/// Frame prefix: tag and token length.
pub const FRAME_PREFIX: usize = 5;
/// Default plaintext bytes per chunk.
pub const DEFAULT_CHUNK_SIZE: usize = 4 << 20;
/// Largest chunk a reader accepts (guards allocations against a corrupt length).
pub const MAX_CHUNK_SIZE: usize = 64 << 20;
/// Bytes in front of the compressed payload inside each chunk's plaintext.
const CHUNK_PREFIX: usize = 16 + 8 + 4;
const INDEX_ENTRY: usize = 8 + 4 + 4;

/// The fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// How chunk payloads are compressed.
    pub compression: Compression,
    /// Nominal plaintext bytes per chunk.
    pub chunk_size: u32,
    /// Random id binding chunks and index to this file.
    pub file_id: [u8; 16],
}

impl Header {
    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..8].copy_from_slice(&MAGIC);
        out[8] = VERSION;
        out[9] = self.compression.code();
        out[12..16].copy_from_slice(&self.chunk_size.to_be_bytes());
        out[16..32].copy_from_slice(&self.file_id);
        out
    }

    /// Parses a header; says plainly when the bytes are not this format.
    pub fn decode(bytes: &[u8]) -> Result<Header, CryptoError> {
        if bytes.len() < HEADER_LEN || bytes[..8] != MAGIC {
            return Err(CryptoError::Malformed(
                "not a Lazarus chunked file (bad magic)".into(),
            ));
        }
        if bytes[8] != VERSION {
            return Err(CryptoError::Malformed(format!(
                "chunked format version {} is not supported by this build (it reads {VERSION})",
                bytes[8]
            )));
        }
        let compression = Compression::from_code(bytes[9]).ok_or_else(|| {
            CryptoError::Malformed(format!("unknown compression code {}", bytes[9]))
        })?;
        let chunk_size = u32::from_be_bytes(bytes[12..16].try_into().unwrap_or_default());
        if chunk_size == 0 || chunk_size as usize > MAX_CHUNK_SIZE {
            return Err(CryptoError::Malformed(format!(
                "implausible chunk size {chunk_size}"
            )));
        }
        let mut file_id = [0u8; 16];
        file_id.copy_from_slice(&bytes[16..32]);
        Ok(Header {
            compression,
            chunk_size,
            file_id,
        })
    }
}

/// The fixed trailer: readable without a key (sizes for listings and downloads), and checked
/// against the authenticated index before it is trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trailer {
    /// Offset of the index frame.
    pub index_offset: u64,
    /// Length of the index token.
    pub index_len: u32,
    /// Number of data chunks.
    pub chunk_count: u64,
    /// Bytes of plaintext in all.
    pub plaintext_size: u64,
    /// Id of the key that encrypted the file.
    pub key_id: String,
    /// The file's random id.
    pub file_id: [u8; 16],
}

impl Trailer {
    fn encode(&self) -> [u8; TRAILER_LEN] {
        let mut out = [0u8; TRAILER_LEN];
        out[..8].copy_from_slice(&self.index_offset.to_be_bytes());
        out[8..12].copy_from_slice(&self.index_len.to_be_bytes());
        out[12..20].copy_from_slice(&self.chunk_count.to_be_bytes());
        out[20..28].copy_from_slice(&self.plaintext_size.to_be_bytes());
        let id = self.key_id.as_bytes();
        out[28..28 + id.len().min(8)].copy_from_slice(&id[..id.len().min(8)]);
        out[36..52].copy_from_slice(&self.file_id);
        out[56..64].copy_from_slice(&END_MAGIC);
        out
    }

    /// Parses a trailer; a missing end magic means the file is truncated.
    pub fn decode(bytes: &[u8]) -> Result<Trailer, CryptoError> {
        if bytes.len() != TRAILER_LEN || bytes[56..64] != END_MAGIC {
            return Err(CryptoError::Truncated(
                "the end-of-file marker is missing: the file was cut short (an interrupted upload or download?)".into(),
            ));
        }
        let u64_at = |i: usize| u64::from_be_bytes(bytes[i..i + 8].try_into().unwrap_or_default());
        let mut file_id = [0u8; 16];
        file_id.copy_from_slice(&bytes[36..52]);
        Ok(Trailer {
            index_offset: u64_at(0),
            index_len: u32::from_be_bytes(bytes[8..12].try_into().unwrap_or_default()),
            chunk_count: u64_at(12),
            plaintext_size: u64_at(20),
            key_id: String::from_utf8_lossy(&bytes[28..36])
                .trim_end_matches('\0')
                .to_string(),
            file_id,
        })
    }
}

/// Where one chunk lives and how big its plaintext is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// Offset of the chunk's frame (its tag byte).
    pub offset: u64,
    /// Length of its token.
    pub token_len: u32,
    /// Bytes of plaintext it holds.
    pub plain_len: u32,
}

/// The authenticated index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Index {
    /// The file's random id.
    pub file_id: [u8; 16],
    /// Bytes of plaintext in all.
    pub plaintext_size: u64,
    /// SHA-256 of the whole plaintext.
    pub plaintext_sha256: [u8; 32],
    /// One entry per chunk, in order.
    pub entries: Vec<IndexEntry>,
}

impl Index {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + 8 + 32 + 8 + self.entries.len() * INDEX_ENTRY);
        out.extend_from_slice(&self.file_id);
        out.extend_from_slice(&self.plaintext_size.to_be_bytes());
        out.extend_from_slice(&self.plaintext_sha256);
        out.extend_from_slice(&(self.entries.len() as u64).to_be_bytes());
        for e in &self.entries {
            out.extend_from_slice(&e.offset.to_be_bytes());
            out.extend_from_slice(&e.token_len.to_be_bytes());
            out.extend_from_slice(&e.plain_len.to_be_bytes());
        }
        out
    }

    fn decode(bytes: &[u8]) -> Result<Index, CryptoError> {
        let bad = || CryptoError::Malformed("the index does not parse".into());
        if bytes.len() < 64 {
            return Err(bad());
        }
        let mut file_id = [0u8; 16];
        file_id.copy_from_slice(&bytes[..16]);
        let plaintext_size = u64::from_be_bytes(bytes[16..24].try_into().map_err(|_| bad())?);
        let mut plaintext_sha256 = [0u8; 32];
        plaintext_sha256.copy_from_slice(&bytes[24..56]);
        let count = u64::from_be_bytes(bytes[56..64].try_into().map_err(|_| bad())?) as usize;
        let body = &bytes[64..];
        if body.len() != count.checked_mul(INDEX_ENTRY).ok_or_else(bad)? {
            return Err(bad());
        }
        let entries = body
            .chunks_exact(INDEX_ENTRY)
            .map(|e| IndexEntry {
                offset: u64::from_be_bytes(e[..8].try_into().unwrap_or_default()),
                token_len: u32::from_be_bytes(e[8..12].try_into().unwrap_or_default()),
                plain_len: u32::from_be_bytes(e[12..16].try_into().unwrap_or_default()),
            })
            .collect();
        Ok(Index {
            file_id,
            plaintext_size,
            plaintext_sha256,
            entries,
        })
    }
}

/// How to write a chunked file.
#[derive(Debug, Clone, Copy)]
pub struct EncodeOptions {
    /// Compression of each chunk.
    pub compression: Compression,
    /// Compression level.
    pub level: i32,
    /// Plaintext bytes per chunk.
    pub chunk_size: usize,
    /// Worker threads.
    pub threads: usize,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        Self {
            compression: Compression::Zstd,
            level: codec::DEFAULT_ZSTD_LEVEL,
            chunk_size: DEFAULT_CHUNK_SIZE,
            threads: parallel::available_threads(),
        }
    }
}

/// What encoding produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodeSummary {
    /// Bytes of plaintext read.
    pub plaintext_size: u64,
    /// SHA-256 of the plaintext, hex.
    pub plaintext_sha256: String,
    /// Bytes written.
    pub encoded_size: u64,
    /// SHA-256 of the bytes written, hex (what every store holds).
    pub encoded_sha256: String,
    /// Sum of compressed chunk payloads (to report the format's overhead).
    pub compressed_size: u64,
    /// Data chunks written.
    pub chunks: u64,
    /// Id of the encrypting key.
    pub key_id: String,
}

fn io_err(context: &str) -> impl Fn(io::Error) -> CryptoError + '_ {
    move |e| CryptoError::Io(format!("{context}: {e}"))
}

/// Counts and hashes what passes through a writer.
struct HashingWriter<W: Write> {
    inner: W,
    written: u64,
    hash: Sha256,
}

impl<W: Write> HashingWriter<W> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), CryptoError> {
        self.inner
            .write_all(bytes)
            .map_err(io_err("writing the encrypted output"))?;
        self.hash.update(bytes);
        self.written += bytes.len() as u64;
        Ok(())
    }
}

fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Compresses, encrypts and writes `reader` in the chunked format, in parallel, in bounded
/// memory.
pub fn encode<R: Read + Send, W: Write>(
    mut reader: R,
    writer: W,
    key: &Key,
    options: EncodeOptions,
) -> Result<EncodeSummary, CryptoError> {
    let chunk_size = options.chunk_size.clamp(4096, MAX_CHUNK_SIZE);
    let mut file_id = [0u8; 16];
    rand::Rng::fill(&mut rand::rng(), &mut file_id[..]);
    let header = Header {
        compression: options.compression,
        chunk_size: chunk_size as u32,
        file_id,
    };
    let mut out = HashingWriter {
        inner: writer,
        written: 0,
        hash: Sha256::new(),
    };
    out.put(&header.encode())?;

    let mut plain_hash = Sha256::new();
    let mut plain_total = 0u64;
    let mut next_chunk = 0u64;
    let mut entries = Vec::new();
    let mut compressed_total = 0u64;
    let plain_hash_ref = &mut plain_hash;
    let plain_total_ref = &mut plain_total;
    parallel::ordered(
        || {
            let mut buf = vec![0u8; chunk_size];
            let n = read_full(&mut reader, &mut buf).map_err(io_err("reading the input"))?;
            if n == 0 {
                return Ok(None);
            }
            buf.truncate(n);
            plain_hash_ref.update(&buf);
            *plain_total_ref += n as u64;
            let no = next_chunk;
            next_chunk += 1;
            Ok(Some((no, buf)))
        },
        options.threads,
        options.threads * 2,
        |(no, plain): (u64, Vec<u8>)| {
            let packed = codec::compress_block(&plain, options.compression, options.level)
                .map_err(io_err("compressing a chunk"))?;
            let mut message = Vec::with_capacity(CHUNK_PREFIX + packed.len());
            message.extend_from_slice(&file_id);
            message.extend_from_slice(&no.to_be_bytes());
            message.extend_from_slice(&(plain.len() as u32).to_be_bytes());
            message.extend_from_slice(&packed);
            Ok((
                token::encrypt(key, &message),
                plain.len() as u32,
                packed.len() as u64,
            ))
        },
        |(token, plain_len, packed_len)| {
            entries.push(IndexEntry {
                offset: out.written,
                token_len: token.len() as u32,
                plain_len,
            });
            compressed_total += packed_len;
            let mut prefix = [0u8; FRAME_PREFIX];
            prefix[0] = FRAME_CHUNK;
            prefix[1..].copy_from_slice(&(token.len() as u32).to_be_bytes());
            out.put(&prefix)?;
            out.put(&token)
        },
    )?;

    let plaintext_sha256: [u8; 32] = plain_hash.finalize().into();
    let index = Index {
        file_id,
        plaintext_size: plain_total,
        plaintext_sha256,
        entries,
    };
    let index_token = token::encrypt(key, &index.encode());
    let index_offset = out.written;
    let mut prefix = [0u8; FRAME_PREFIX];
    prefix[0] = FRAME_INDEX;
    prefix[1..].copy_from_slice(&(index_token.len() as u32).to_be_bytes());
    out.put(&prefix)?;
    out.put(&index_token)?;
    let trailer = Trailer {
        index_offset,
        index_len: index_token.len() as u32,
        chunk_count: index.entries.len() as u64,
        plaintext_size: plain_total,
        key_id: key.id().to_string(),
        file_id,
    };
    out.put(&trailer.encode())?;
    out.inner
        .flush()
        .map_err(io_err("writing the encrypted output"))?;
    Ok(EncodeSummary {
        plaintext_size: plain_total,
        plaintext_sha256: hex::encode(plaintext_sha256),
        encoded_size: out.written,
        encoded_sha256: hex::encode(out.hash.finalize()),
        compressed_size: compressed_total,
        chunks: index.entries.len() as u64,
        key_id: key.id().to_string(),
    })
}

/// An opened chunked file: its header, trailer and authenticated index.
#[derive(Debug, Clone)]
pub struct Opened {
    /// The header.
    pub header: Header,
    /// The trailer.
    pub trailer: Trailer,
    /// The authenticated index.
    pub index: Index,
    /// Size of the file.
    pub file_size: u64,
}

/// Something a chunked file can be read from by position: a file on disk, or an object
/// already in memory (a WAL segment fetched whole needs no file around it).
pub trait Source: Sync {
    /// Fills `buf` from `offset`; a short source is an error.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Total size in bytes.
    fn size(&self) -> io::Result<u64>;
}

impl Source for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
}

impl Source for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let part = start
            .checked_add(buf.len())
            .and_then(|end| self.get(start..end))
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(part);
        Ok(())
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.len() as u64)
    }
}

/// Reads and checks a chunked file's header, trailer and index.
pub fn open<S: Source + ?Sized>(file: &S, ring: &Keyring) -> Result<Opened, CryptoError> {
    let file_size = file.size().map_err(io_err("reading the file size"))?;
    if file_size < (HEADER_LEN + TRAILER_LEN) as u64 {
        let mut head = vec![0u8; file_size.min(HEADER_LEN as u64) as usize];
        file.read_exact_at(&mut head, 0)
            .map_err(io_err("reading the header"))?;
        Header::decode(&head)?;
        return Err(CryptoError::Truncated(format!(
            "the file is {file_size} bytes, too short to hold a header and a trailer"
        )));
    }
    let mut head = [0u8; HEADER_LEN];
    file.read_exact_at(&mut head, 0)
        .map_err(io_err("reading the header"))?;
    let header = Header::decode(&head)?;
    let mut tail = [0u8; TRAILER_LEN];
    file.read_exact_at(&mut tail, file_size - TRAILER_LEN as u64)
        .map_err(io_err("reading the trailer"))?;
    let trailer = Trailer::decode(&tail)?;
    let index_end = trailer
        .index_offset
        .checked_add(FRAME_PREFIX as u64 + u64::from(trailer.index_len))
        .filter(|end| *end + TRAILER_LEN as u64 == file_size)
        .ok_or_else(|| {
            CryptoError::Malformed(
                "the trailer does not match the file size (truncated or altered)".into(),
            )
        })?;
    let _ = index_end;
    let mut frame = vec![0u8; FRAME_PREFIX + trailer.index_len as usize];
    file.read_exact_at(&mut frame, trailer.index_offset)
        .map_err(io_err("reading the index"))?;
    let index = decode_index(&frame, &trailer, ring)?;
    if index.file_id != header.file_id
        || trailer.file_id != header.file_id
        || index.entries.len() as u64 != trailer.chunk_count
        || index.plaintext_size != trailer.plaintext_size
    {
        return Err(CryptoError::Malformed(
            "the trailer disagrees with the authenticated index (altered file)".into(),
        ));
    }
    let mut expected_offset = HEADER_LEN as u64;
    for e in &index.entries {
        if e.offset != expected_offset || e.plain_len as usize > MAX_CHUNK_SIZE {
            return Err(CryptoError::Malformed(
                "the index lists impossible chunk offsets".into(),
            ));
        }
        expected_offset += FRAME_PREFIX as u64 + u64::from(e.token_len);
    }
    if expected_offset != trailer.index_offset {
        return Err(CryptoError::Malformed(
            "the chunks do not end where the index starts".into(),
        ));
    }
    Ok(Opened {
        header,
        trailer,
        index,
        file_size,
    })
}

/// Authenticates and parses the index frame named by a trailer (read from a file, or fetched
/// from a store with a ranged GET to check a key before downloading anything).
pub fn decode_index(frame: &[u8], trailer: &Trailer, ring: &Keyring) -> Result<Index, CryptoError> {
    if frame.len() < FRAME_PREFIX || frame[0] != FRAME_INDEX {
        return Err(CryptoError::Malformed("the index frame is missing".into()));
    }
    let plain = token::decrypt(ring, &frame[FRAME_PREFIX..], Some(&trailer.key_id))?;
    let index = Index::decode(&plain)?;
    if index.file_id != trailer.file_id || index.plaintext_size != trailer.plaintext_size {
        return Err(CryptoError::Malformed(
            "the trailer disagrees with the authenticated index (altered file)".into(),
        ));
    }
    Ok(index)
}

/// Progress callback: (chunks done, plaintext bytes done).
pub type ProgressFn<'a> = &'a mut dyn FnMut(u64, u64) -> Result<(), CryptoError>;

/// What a decode wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeSummary {
    /// Bytes written.
    pub written: u64,
    /// Chunks processed in this call.
    pub chunks: u64,
}

/// Decrypts (and, with `decompress`, decompresses) chunks `from..` of an opened file into
/// `out`, in parallel, verifying each chunk's authenticity, file id and position.
/// With `decompress` the caller gets plaintext; without, the concatenated compressed
/// payloads (a valid multi-frame zstd or multi-member gzip stream).
#[allow(clippy::too_many_arguments)]
pub fn decode<S: Source + ?Sized, W: Write>(
    file: &S,
    opened: &Opened,
    ring: &Keyring,
    from: u64,
    decompress: bool,
    threads: usize,
    out: W,
    progress: ProgressFn<'_>,
) -> Result<DecodeSummary, CryptoError> {
    let all = opened.index.entries.len() as u64;
    decode_range(
        file,
        opened,
        ring,
        from..all,
        decompress,
        threads,
        out,
        progress,
    )
}

/// The chunks holding plaintext bytes `start..end` of an opened file, and the plaintext
/// offset of the first of them: what a reader of one part of the plaintext decodes.
pub fn chunks_covering(opened: &Opened, start: u64, end: u64) -> (std::ops::Range<u64>, u64) {
    let mut at = 0u64;
    let mut first: Option<(u64, u64)> = None;
    for (no, entry) in opened.index.entries.iter().enumerate() {
        let next = at + u64::from(entry.plain_len);
        if first.is_none() && next > start {
            first = Some((no as u64, at));
        }
        if let Some((from, from_at)) = first
            && next >= end
        {
            return (from..no as u64 + 1, from_at);
        }
        at = next;
    }
    let all = opened.index.entries.len() as u64;
    let (from, from_at) = first.unwrap_or((all, at));
    (from..all, from_at)
}

/// Like [`decode`], for chunks `chunks` only: one part of the plaintext, authenticated
/// chunk by chunk as the whole file is.
#[allow(clippy::too_many_arguments)]
pub fn decode_range<S: Source + ?Sized, W: Write>(
    file: &S,
    opened: &Opened,
    ring: &Keyring,
    chunks: std::ops::Range<u64>,
    decompress: bool,
    threads: usize,
    mut out: W,
    progress: ProgressFn<'_>,
) -> Result<DecodeSummary, CryptoError> {
    let entries = &opened.index.entries;
    let from = chunks.start;
    let end = (chunks.end as usize).min(entries.len());
    let mut next = from as usize;
    let file_id = opened.header.file_id;
    let key_hint = opened.trailer.key_id.as_str();
    let mut written = 0u64;
    let mut done_chunks = from;
    let mut done_plain: u64 = entries[..next.min(entries.len())]
        .iter()
        .map(|e| u64::from(e.plain_len))
        .sum();
    let mut count = 0u64;
    parallel::ordered(
        || {
            let Some(entry) = entries.get(next).filter(|_| next < end) else {
                return Ok(None);
            };
            let no = next as u64;
            next += 1;
            let mut frame = vec![0u8; FRAME_PREFIX + entry.token_len as usize];
            file.read_exact_at(&mut frame, entry.offset)
                .map_err(io_err("reading a chunk"))?;
            Ok(Some((no, *entry, frame)))
        },
        threads,
        threads * 2,
        |(no, entry, frame): (u64, IndexEntry, Vec<u8>)| {
            let declared = u32::from_be_bytes(frame[1..5].try_into().unwrap_or_default());
            if frame[0] != FRAME_CHUNK || declared != entry.token_len {
                return Err(CryptoError::Malformed(format!(
                    "chunk {no} has a damaged frame"
                )));
            }
            let mut frame = frame;
            let message = token::decrypt_in_place(ring, &mut frame[FRAME_PREFIX..], Some(key_hint))
                .map_err(|e| e.at_chunk(no))?;
            if message.len() < CHUNK_PREFIX
                || message[..16] != file_id
                || message[16..24] != no.to_be_bytes()
                || message[24..28] != entry.plain_len.to_be_bytes()
            {
                return Err(CryptoError::Malformed(format!(
                    "chunk {no} belongs to another file or position (chunks were swapped or spliced)"
                )));
            }
            let payload = &message[CHUNK_PREFIX..];
            if decompress {
                let mut plain = Vec::new();
                codec::decompress_block(payload, entry.plain_len as usize, &mut plain).map_err(
                    |e| CryptoError::Malformed(format!("chunk {no} does not decompress: {e}")),
                )?;
                Ok((plain, u64::from(entry.plain_len)))
            } else {
                Ok((payload.to_vec(), u64::from(entry.plain_len)))
            }
        },
        |(bytes, plain_len)| {
            out.write_all(&bytes)
                .map_err(io_err("writing the output"))?;
            written += bytes.len() as u64;
            done_chunks += 1;
            done_plain += plain_len;
            count += 1;
            progress(done_chunks, done_plain)
        },
    )?;
    out.flush().map_err(io_err("writing the output"))?;
    Ok(DecodeSummary {
        written,
        chunks: count,
    })
}

/// Whether the bytes at the start of a file are the chunked format's magic.
pub fn is_chunked(head: &[u8]) -> bool {
    head.len() >= MAGIC.len() && head[..MAGIC.len()] == MAGIC
}

/// Reads a chunked file's trailer without a key: sizes for listings.
pub fn peek_trailer(file: &mut File) -> Result<Trailer, CryptoError> {
    let size = file.seek(SeekFrom::End(0)).map_err(io_err("seeking"))?;
    if size < TRAILER_LEN as u64 {
        return Err(CryptoError::Truncated("too short for a trailer".into()));
    }
    let mut tail = [0u8; TRAILER_LEN];
    FileExt::read_exact_at(file, &mut tail, size - TRAILER_LEN as u64)
        .map_err(io_err("reading the trailer"))?;
    Trailer::decode(&tail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::keys::generate;

    fn ring() -> Keyring {
        Keyring::parse(&generate(), "test").unwrap()
    }

    fn data(len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        let mut i = 0u64;
        while out.len() < len {
            out.extend_from_slice(format!("{i}\tsome row text {}\n", i * 7919 % 1000).as_bytes());
            i += 1;
        }
        out.truncate(len);
        out
    }

    fn encode_to_file(
        plain: &[u8],
        ring: &Keyring,
        chunk_size: usize,
    ) -> (tempfile::NamedTempFile, EncodeSummary) {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        let options = EncodeOptions {
            chunk_size,
            threads: 3,
            ..Default::default()
        };
        let summary = encode(plain, file.as_file_mut(), ring.primary().unwrap(), options).unwrap();
        (file, summary)
    }

    fn decode_all(file: &File, ring: &Keyring, decompress: bool) -> Result<Vec<u8>, CryptoError> {
        let opened = open(file, ring)?;
        let mut out = Vec::new();
        decode(
            file,
            &opened,
            ring,
            0,
            decompress,
            3,
            &mut out,
            &mut |_, _| Ok(()),
        )?;
        Ok(out)
    }

    #[test]
    fn round_trips_with_small_overhead() {
        let ring = ring();
        let plain = data(10_000_000);
        let (file, summary) = encode_to_file(&plain, &ring, DEFAULT_CHUNK_SIZE);
        assert_eq!(summary.plaintext_size, plain.len() as u64);
        assert_eq!(summary.chunks, 3);
        assert_eq!(decode_all(file.as_file(), &ring, true).unwrap(), plain);
        let overhead = summary.encoded_size as f64 / summary.compressed_size as f64 - 1.0;
        assert!(overhead < 0.01, "overhead {overhead}");
        let opened = open(file.as_file(), &ring).unwrap();
        assert_eq!(
            hex::encode(opened.index.plaintext_sha256),
            summary.plaintext_sha256
        );
    }

    #[test]
    fn without_decompression_the_output_is_a_valid_zstd_stream() {
        let ring = ring();
        let plain = data(700_000);
        let (file, _) = encode_to_file(&plain, &ring, 100_000);
        let packed = decode_all(file.as_file(), &ring, false).unwrap();
        let (format, mut reader) = codec::auto_decoder(&packed[..]).unwrap();
        assert_eq!(format, Compression::Zstd);
        let mut out = Vec::new();
        reader.read_to_end(&mut out).unwrap();
        assert_eq!(out, plain);
    }

    #[test]
    fn empty_input_is_a_valid_file() {
        let ring = ring();
        let (file, summary) = encode_to_file(&[], &ring, 4096);
        assert_eq!(summary.chunks, 0);
        assert!(decode_all(file.as_file(), &ring, true).unwrap().is_empty());
    }

    #[test]
    fn decoding_can_start_at_any_chunk() {
        let ring = ring();
        let plain = data(500_000);
        let (file, _) = encode_to_file(&plain, &ring, 100_000);
        let opened = open(file.as_file(), &ring).unwrap();
        let mut out = Vec::new();
        decode(
            file.as_file(),
            &opened,
            &ring,
            3,
            true,
            2,
            &mut out,
            &mut |_, _| Ok(()),
        )
        .unwrap();
        assert_eq!(out, &plain[300_000..]);
    }

    #[test]
    fn any_byte_range_decodes_from_the_chunks_covering_it() {
        let ring = ring();
        let plain = data(500_000);
        let (file, _) = encode_to_file(&plain, &ring, 100_000);
        let opened = open(file.as_file(), &ring).unwrap();
        for (start, end) in [
            (0, 1),
            (0, 100_000),
            (99_999, 100_001),
            (150_000, 420_000),
            (400_000, 500_000),
        ] {
            let (chunks, first_at) = chunks_covering(&opened, start, end);
            let mut out = Vec::new();
            decode_range(
                file.as_file(),
                &opened,
                &ring,
                chunks.clone(),
                true,
                1,
                &mut out,
                &mut |_, _| Ok(()),
            )
            .unwrap();
            let skip = (start - first_at) as usize;
            assert_eq!(
                &out[skip..skip + (end - start) as usize],
                &plain[start as usize..end as usize],
                "{start}..{end} from chunks {chunks:?}"
            );
            assert!(out.len() - skip - ((end - start) as usize) < 100_000);
        }
    }

    #[test]
    fn wrong_key_truncation_and_tampering_are_detected() {
        let ring = ring();
        let plain = data(400_000);
        let (file, _) = encode_to_file(&plain, &ring, 100_000);
        let bytes = std::fs::read(file.path()).unwrap();

        let err = decode_all(
            file.as_file(),
            &Keyring::parse(&generate(), "t").unwrap(),
            true,
        )
        .unwrap_err();
        assert!(matches!(err, CryptoError::Authentication { .. }), "{err}");

        let cut = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(cut.path(), &bytes[..bytes.len() - 100]).unwrap();
        let err = decode_all(cut.as_file(), &ring, true).unwrap_err();
        assert!(matches!(err, CryptoError::Truncated(_)), "{err}");

        let flipped = tempfile::NamedTempFile::new().unwrap();
        let mut altered = bytes.clone();
        altered[HEADER_LEN + 200] ^= 0x40;
        std::fs::write(flipped.path(), &altered).unwrap();
        let err = decode_all(flipped.as_file(), &ring, true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("chunk 0") && err.contains("HMAC"), "{err}");

        // Swap two chunks: each authenticates, but not in that place.
        let raw = data(300_000);
        let mut stored = tempfile::NamedTempFile::new().unwrap();
        let options = EncodeOptions {
            chunk_size: 100_000,
            threads: 2,
            compression: Compression::None,
            ..Default::default()
        };
        encode(
            &raw[..],
            stored.as_file_mut(),
            ring.primary().unwrap(),
            options,
        )
        .unwrap();
        let bytes = std::fs::read(stored.path()).unwrap();
        let opened = open(stored.as_file(), &ring).unwrap();
        let (a, b) = (opened.index.entries[0], opened.index.entries[1]);
        assert_eq!(a.token_len, b.token_len);
        let len = FRAME_PREFIX + a.token_len as usize;
        let mut swapped = bytes.clone();
        swapped[a.offset as usize..a.offset as usize + len]
            .copy_from_slice(&bytes[b.offset as usize..b.offset as usize + len]);
        swapped[b.offset as usize..b.offset as usize + len]
            .copy_from_slice(&bytes[a.offset as usize..a.offset as usize + len]);
        let spliced = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(spliced.path(), &swapped).unwrap();
        let err = decode_all(spliced.as_file(), &ring, true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("another file or position"), "{err}");
    }
}
