//! Where each entry's data sits in a `pg_dump -Fc` archive, found as the archive streams
//! past (when a backup is taken), and the rows of one data block read back out of it (when a
//! backup is restored straight from its encrypted chunks, without the whole archive ever
//! being written out).
//!
//! A data block is the block header (type byte, dump id), then the rows in length-prefixed
//! chunks, then a zero length. The rows of a block, concatenated, are exactly what pg_dump's
//! directory format keeps in that entry's `N.dat` file.

use serde::{Deserialize, Serialize};

use super::dump_format::{BLOCK_BLOBS, BLOCK_DATA, HEAD_LIMIT, decode_int, parse_head};

/// One entry's data block: plaintext bytes `offset..offset + length` of the archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataBlock {
    /// The table-of-contents entry (dump id) the data belongs to.
    pub id: i64,
    /// Where the block header starts.
    pub offset: u64,
    /// Bytes from the block header to the end marker, inclusive.
    pub length: u64,
}

impl DataBlock {
    /// The offset just past the block; `None` when it overflows (a damaged manifest).
    pub fn end(&self) -> Option<u64> {
        self.offset.checked_add(self.length)
    }
}

/// Whether every block lies within an archive of `size` bytes: the check before a plan from
/// a manifest (or a plan file) is trusted to address a backup.
pub fn all_within(blocks: &[DataBlock], size: u64) -> bool {
    blocks
        .iter()
        .all(|b| b.end().is_some_and(|end| end <= size))
}

/// What the walker found, in stream order.
enum Event<'a> {
    Start { kind: u8, id: i64, at: u64 },
    Rows(&'a [u8]),
    End { at: u64 },
}

#[derive(Debug, Clone, Copy)]
enum Step {
    Kind,
    Id { kind: u8 },
    BlobOid,
    Len { blobs: bool },
    Rows { remaining: u64, blobs: bool },
}

/// Walks the data-block framing of a custom-format archive, given the bytes after its table
/// of contents in any pieces.
struct Walker {
    int_size: usize,
    step: Step,
    pending: Vec<u8>,
    pos: u64,
}

impl Walker {
    fn new(int_size: usize, pos: u64) -> Self {
        Self {
            int_size,
            step: Step::Kind,
            pending: Vec::with_capacity(9),
            pos,
        }
    }

    /// Takes one integer from `buf`, across calls if it is split; `None` until complete.
    fn int(&mut self, buf: &mut &[u8]) -> Option<i64> {
        let width = 1 + self.int_size;
        if self.pending.is_empty() && buf.len() >= width {
            let value = decode_int(&buf[..width]);
            *buf = &buf[width..];
            self.pos += width as u64;
            return Some(value);
        }
        let take = (width - self.pending.len()).min(buf.len());
        self.pending.extend_from_slice(&buf[..take]);
        *buf = &buf[take..];
        self.pos += take as u64;
        if self.pending.len() < width {
            return None;
        }
        let value = decode_int(&self.pending);
        self.pending.clear();
        Some(value)
    }

    /// Whether the walk stands between blocks (a complete archive ends there).
    fn between_blocks(&self) -> bool {
        matches!(self.step, Step::Kind) && self.pending.is_empty()
    }

    fn walk(
        &mut self,
        mut buf: &[u8],
        on: &mut dyn FnMut(Event<'_>) -> Result<(), String>,
    ) -> Result<(), String> {
        while !buf.is_empty() {
            match self.step {
                Step::Kind => {
                    let kind = buf[0];
                    if kind != BLOCK_DATA && kind != BLOCK_BLOBS {
                        return Err(format!(
                            "unknown data block type {kind} at byte {}",
                            self.pos
                        ));
                    }
                    buf = &buf[1..];
                    self.pos += 1;
                    self.step = Step::Id { kind };
                }
                Step::Id { kind } => {
                    let at = self.pos - 1 - self.pending.len() as u64;
                    let Some(id) = self.int(&mut buf) else {
                        continue;
                    };
                    on(Event::Start { kind, id, at })?;
                    self.step = if kind == BLOCK_BLOBS {
                        Step::BlobOid
                    } else {
                        Step::Len { blobs: false }
                    };
                }
                Step::BlobOid => {
                    let Some(oid) = self.int(&mut buf) else {
                        continue;
                    };
                    if oid == 0 {
                        on(Event::End { at: self.pos })?;
                        self.step = Step::Kind;
                    } else {
                        self.step = Step::Len { blobs: true };
                    }
                }
                Step::Len { blobs } => {
                    let Some(len) = self.int(&mut buf) else {
                        continue;
                    };
                    if len < 0 {
                        return Err(format!("negative chunk length {len} at byte {}", self.pos));
                    }
                    if len == 0 {
                        if blobs {
                            self.step = Step::BlobOid;
                        } else {
                            on(Event::End { at: self.pos })?;
                            self.step = Step::Kind;
                        }
                    } else {
                        self.step = Step::Rows {
                            remaining: len as u64,
                            blobs,
                        };
                    }
                }
                Step::Rows { remaining, blobs } => {
                    let take = remaining.min(buf.len() as u64) as usize;
                    on(Event::Rows(&buf[..take]))?;
                    buf = &buf[take..];
                    self.pos += take as u64;
                    self.step = if remaining == take as u64 {
                        Step::Len { blobs }
                    } else {
                        Step::Rows {
                            remaining: remaining - take as u64,
                            blobs,
                        }
                    };
                }
            }
        }
        Ok(())
    }
}

/// Records every data block of an archive as it streams past. An archive this module does
/// not read (compressed by pg_dump, another format version, damaged) yields no blocks: its
/// restores then take the path that writes the whole archive out.
pub struct BlockScanner {
    head: Vec<u8>,
    /// The head is parsed again once it has grown to this (doubling: linear in its size).
    parse_at: usize,
    walker: Option<Walker>,
    blocks: Vec<DataBlock>,
    open: Option<(i64, u64)>,
    large_objects: bool,
    given_up: bool,
}

impl Default for BlockScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl BlockScanner {
    /// A scanner at the start of an archive.
    pub fn new() -> Self {
        Self {
            head: Vec::new(),
            parse_at: 0,
            walker: None,
            blocks: Vec::new(),
            open: None,
            large_objects: false,
            given_up: false,
        }
    }

    /// Takes the next bytes of the archive.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.given_up || bytes.is_empty() {
            return;
        }
        if self.walker.is_none() {
            self.head.extend_from_slice(bytes);
            if self.head.len() < self.parse_at {
                return;
            }
            self.parse_at = self.head.len() * 2;
            match parse_head(&self.head) {
                Ok(Some((toc, used))) => {
                    let rest = self.head.split_off(used);
                    self.head = Vec::new();
                    self.walker = Some(Walker::new(toc.int_size, used as u64));
                    self.feed(&rest);
                }
                Ok(None) if self.head.len() < HEAD_LIMIT => {}
                _ => self.give_up(),
            }
            return;
        }
        let (blocks, open, large_objects) =
            (&mut self.blocks, &mut self.open, &mut self.large_objects);
        let walked = self.walker.as_mut().map(|w| {
            w.walk(bytes, &mut |event| {
                match event {
                    Event::Start { kind, id, at } => {
                        *large_objects |= kind == BLOCK_BLOBS;
                        *open = Some((id, at));
                    }
                    Event::End { at } => {
                        if let Some((id, offset)) = open.take() {
                            blocks.push(DataBlock {
                                id,
                                offset,
                                length: at - offset,
                            });
                        }
                    }
                    Event::Rows(_) => {}
                }
                Ok(())
            })
        });
        if let Some(Err(e)) = walked {
            tracing::warn!(error = %e, "the pg_dump archive's data blocks could not be indexed");
            self.give_up();
        }
    }

    fn give_up(&mut self) {
        self.given_up = true;
        self.head = Vec::new();
        self.blocks = Vec::new();
        self.walker = None;
    }

    /// The data blocks, once the archive has ended between two of them; `None` when it is
    /// not an archive this module reads, or holds large objects (which only a written-out
    /// archive restores).
    pub fn finish(self) -> Option<Vec<DataBlock>> {
        let walker = self.walker?;
        (!self.given_up && !self.large_objects && walker.between_blocks()).then_some(self.blocks)
    }
}

/// Whether streaming these blocks out of a backup cut into chunks of `chunk_bytes` is worth
/// it: each table decodes every chunk its block touches, so tens of thousands of small
/// tables would decode the same chunks over and over. Past twice the archive's own size
/// (plus a little), writing the archive out once is cheaper.
pub fn worth_streaming(blocks: &[DataBlock], chunk_bytes: u64) -> bool {
    let chunk = chunk_bytes.max(1);
    let mut decoded = 0u64;
    let mut total = 0u64;
    for block in blocks {
        let last = block.offset.saturating_add(block.length.max(1) - 1) / chunk;
        let chunks = last - block.offset / chunk + 1;
        decoded = decoded.saturating_add(chunks.saturating_mul(chunk));
        total = total.saturating_add(block.length);
    }
    decoded <= total.saturating_mul(2).saturating_add(64 << 20)
}

/// Why a data block's rows could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum RowsError {
    /// The block's bytes are not the block the manifest promised.
    #[error("the data of entry {id} is damaged: {detail}")]
    Damaged {
        /// The entry.
        id: i64,
        /// What was wrong.
        detail: String,
    },
    /// Writing the rows failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Takes the plaintext bytes of one data block (`block.offset..`, in any pieces) and writes
/// the rows in it to `out`: the block header and chunk framing checked and dropped.
pub struct BlockRows<W: std::io::Write> {
    out: W,
    block: DataBlock,
    walker: Walker,
    seen: u64,
    written: u64,
    ended: bool,
}

impl<W: std::io::Write> BlockRows<W> {
    /// Rows of `block`, in an archive whose integers are `int_size` bytes, written to `out`.
    pub fn new(out: W, block: DataBlock, int_size: usize) -> Self {
        Self {
            out,
            block,
            walker: Walker::new(int_size, block.offset),
            seen: 0,
            written: 0,
            ended: false,
        }
    }

    /// The block being read.
    pub fn block(&self) -> DataBlock {
        self.block
    }

    /// Bytes of rows written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    fn damaged(&self, detail: impl Into<String>) -> RowsError {
        RowsError::Damaged {
            id: self.block.id,
            detail: detail.into(),
        }
    }

    /// Takes the next bytes of the block; bytes past its end are ignored.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), RowsError> {
        let left = self.block.length - self.seen;
        let bytes = &bytes[..bytes.len().min(left as usize)];
        if bytes.is_empty() {
            return Ok(());
        }
        if self.ended {
            return Err(self.damaged("bytes after its end marker"));
        }
        self.seen += bytes.len() as u64;
        let expected = self.block.id;
        let out = &mut self.out;
        let written = &mut self.written;
        let mut failure: Option<std::io::Error> = None;
        let mut ended = false;
        let walked = self.walker.walk(bytes, &mut |event| match event {
            Event::Start { kind, id, .. } => {
                if kind != BLOCK_DATA || id != expected {
                    return Err(format!(
                        "expected the rows of entry {expected}, found a block of type {kind} for entry {id}"
                    ));
                }
                Ok(())
            }
            Event::Rows(rows) => {
                *written += rows.len() as u64;
                out.write_all(rows).map_err(|e| {
                    let message = e.to_string();
                    failure = Some(e);
                    message
                })
            }
            Event::End { .. } => {
                ended = true;
                Ok(())
            }
        });
        if let Some(e) = failure {
            return Err(RowsError::Io(e));
        }
        walked.map_err(|detail| self.damaged(detail))?;
        self.ended |= ended;
        Ok(())
    }

    /// Checks the block was complete, flushes, and hands back the writer.
    pub fn finish(mut self) -> Result<W, RowsError> {
        if !self.ended || self.seen != self.block.length {
            return Err(self.damaged(format!(
                "the block ends after {} of its {} bytes",
                self.seen, self.block.length
            )));
        }
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::dump_format::synthetic::{INT, block, entry, header};
    use crate::pg::dump_format::{OFFSET_NO_DATA, OFFSET_NOT_SET};

    /// A version 1.14 archive with two tables' data (entries 2 and 4, one row per chunk);
    /// returns it and where each block starts.
    fn archive(rows: &[usize; 2]) -> (Vec<u8>, Vec<u64>) {
        let copy = "COPY public.t (a) FROM stdin;\n";
        let mut out = header(4, 0);
        out.extend(entry(1, "t", "TABLE", 2, "", &[], OFFSET_NO_DATA));
        out.extend(entry(2, "t", "TABLE DATA", 3, copy, &[1], OFFSET_NOT_SET));
        out.extend(entry(3, "u", "TABLE", 2, "", &[], OFFSET_NO_DATA));
        out.extend(entry(4, "u", "TABLE DATA", 3, copy, &[3], OFFSET_NOT_SET));
        let mut starts = Vec::new();
        for (id, count) in [(2, rows[0]), (4, rows[1])] {
            starts.push(out.len() as u64);
            out.extend(block(id, (0..count).map(|row| format!("{id}-{row}\n"))));
        }
        (out, starts)
    }

    fn rows_of(id: i64, count: usize) -> Vec<u8> {
        (0..count)
            .flat_map(|r| format!("{id}-{r}\n").into_bytes())
            .collect()
    }

    #[test]
    fn scanner_finds_every_block_whatever_the_pieces() {
        let (bytes, starts) = archive(&[50, 3]);
        for piece in [1, 3, 7, 64, bytes.len()] {
            let mut scanner = BlockScanner::new();
            for part in bytes.chunks(piece) {
                scanner.feed(part);
            }
            let blocks = scanner.finish().expect("blocks");
            assert_eq!(blocks.len(), 2, "pieces of {piece}");
            assert_eq!(blocks[0].id, 2);
            assert_eq!(blocks[0].offset, starts[0]);
            assert_eq!(blocks[0].length, starts[1] - starts[0]);
            assert_eq!(blocks[1].id, 4);
            assert_eq!(blocks[1].offset + blocks[1].length, bytes.len() as u64);
        }
    }

    #[test]
    fn scanner_yields_nothing_for_archives_it_does_not_read() {
        let (mut bytes, _) = archive(&[5, 5]);
        let mut cut = BlockScanner::new();
        cut.feed(&bytes[..bytes.len() - 3]);
        assert!(cut.finish().is_none(), "ends inside a block");
        bytes[15] = 9; // compression level 9: pg_dump compressed the rows
        let mut compressed = BlockScanner::new();
        compressed.feed(&bytes);
        assert!(compressed.finish().is_none());
        let mut other = BlockScanner::new();
        other.feed(b"PK\x03\x04 not a dump at all");
        assert!(other.finish().is_none());
    }

    #[test]
    fn block_rows_are_the_rows_alone() {
        let (bytes, _) = archive(&[40, 7]);
        let mut scanner = BlockScanner::new();
        scanner.feed(&bytes);
        let blocks = scanner.finish().unwrap();
        for (block, count) in blocks.iter().zip([40, 7]) {
            for piece in [1, 5, 1000] {
                let slice = &bytes[block.offset as usize..(block.offset + block.length) as usize];
                let mut rows = BlockRows::new(Vec::new(), *block, INT);
                for part in slice.chunks(piece) {
                    rows.feed(part).unwrap();
                }
                assert_eq!(rows.finish().unwrap(), rows_of(block.id, count));
            }
        }
    }

    #[test]
    fn many_small_tables_sharing_chunks_are_not_worth_streaming() {
        let mib = 1u64 << 20;
        let big: Vec<DataBlock> = (0..10)
            .map(|i| DataBlock {
                id: i,
                offset: i as u64 * 100 * mib,
                length: 100 * mib,
            })
            .collect();
        assert!(worth_streaming(&big, 4 * mib));
        let tiny: Vec<DataBlock> = (0..20_000)
            .map(|i| DataBlock {
                id: i,
                offset: i as u64 * 1000,
                length: 1000,
            })
            .collect();
        assert!(!worth_streaming(&tiny, 4 * mib));
        assert!(worth_streaming(&tiny[..10], 4 * mib), "a few are fine");
    }

    #[test]
    fn block_rows_refuse_the_wrong_block_and_a_cut_one() {
        let (bytes, _) = archive(&[10, 10]);
        let mut scanner = BlockScanner::new();
        scanner.feed(&bytes);
        let blocks = scanner.finish().unwrap();
        let second = &bytes[blocks[1].offset as usize..];
        let mut wrong = BlockRows::new(Vec::new(), DataBlock { id: 2, ..blocks[1] }, INT);
        let err = wrong.feed(second).unwrap_err().to_string();
        assert!(err.contains("entry 2") && err.contains("entry 4"), "{err}");
        let mut cut = BlockRows::new(Vec::new(), blocks[1], INT);
        cut.feed(&second[..second.len() - 2]).unwrap();
        let err = cut.finish().unwrap_err().to_string();
        assert!(err.contains("ends after"), "{err}");
    }
}
