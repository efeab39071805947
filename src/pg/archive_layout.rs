//! Lays a `pg_dump -Fc` archive out for `pg_restore --jobs` as it streams past: every data
//! block's offset in the table of contents, and each big table's data cut into parts that
//! load side by side.
//!
//! `pg_restore --jobs` loads one table with one COPY on one connection, so a database whose
//! biggest table holds most of the data restores at the speed of that one COPY while the
//! other jobs sit idle (measured in benches/recovery.rs: the largest table's COPY and its
//! primary key were 9.5 s of a 9.7 s restore). Cut at row boundaries into parts, each its own
//! table-of-contents entry, the table loads on every job, scheduled by pg_restore itself; the
//! table's indexes, constraints and other post-data entries are made to wait for every part.
//!
//! The parts are entries of type `TABLE DATA PART`, not `TABLE DATA`: pg_restore wraps the
//! COPY of the `TABLE DATA` entry of a table it has just created in a transaction that starts
//! with TRUNCATE, which would erase the parts loaded beside it. Only uncompressed archives
//! (`pg_dump -Z0`, what Lazarus takes) of the versions this module knows (1.14 — PostgreSQL
//! 15 —, 1.15 — PostgreSQL 16 — and 1.16 — PostgreSQL 17 and 18) are laid out; anything else
//! passes through unchanged.
//!
//! The output holds the header and table of contents (known only at the end, and written
//! then, at offset 0: [`Finished::toc`]), room reserved for the entries added, then the data
//! blocks.

use std::collections::HashMap;
use std::io::Write;

use super::dump_format::{
    BLOCK_BLOBS, BLOCK_DATA, Entry, HEAD_LIMIT, OFFSET_NO_DATA, OFFSET_SET, SECTION_DATA,
    SECTION_POST_DATA, TABLE_DATA, Toc, decode_int, encode_int, encode_offset, encode_toc,
    entry_len, parse_head, toc_len,
};

/// The type of the entries a split table's data is listed under.
pub const TABLE_DATA_PART: &[u8] = b"TABLE DATA PART";
/// Most parts a whole archive is cut into (bounds the room reserved for their entries).
pub const MAX_PARTS: u64 = 1024;
/// Smallest part: below this a COPY is quick enough on its own.
pub const MIN_PART_BYTES: u64 = 64 << 20;

/// Why a laid-out archive could not be completed.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// Writing the output failed.
    #[error("cannot write the restore archive: {0}")]
    Io(#[from] std::io::Error),
    /// The archive's structure is not what its table of contents promised.
    #[error(
        "the pg_dump archive in the backup cannot be laid out for parallel restore: {0}; restore it as pg_dump wrote it (--param split_tables=false)"
    )]
    Damaged(String),
}

/// The part size for an archive of `total` bytes: at least [`MIN_PART_BYTES`], and few
/// enough parts that their entries fit the room reserved.
pub fn part_size_for(total: u64) -> u64 {
    (total / MAX_PARTS).max(MIN_PART_BYTES)
}

/// What a finished layout produced.
#[derive(Debug)]
pub struct Finished {
    /// The header and table of contents, to be written at offset 0 of the output (within
    /// the room reserved there); `None` when the archive passed through unchanged.
    pub toc: Option<Vec<u8>>,
    /// Tables whose data was cut into parts.
    pub split_tables: usize,
    /// Parts added to the table of contents.
    pub parts_added: usize,
}

/// A table whose data may be cut into parts.
#[derive(Debug)]
struct Candidate {
    entry: usize,
    /// Post-data entries that must wait for all of the table's data.
    dependents: Vec<usize>,
    /// Ids of the parts after the first (which keeps the entry's own id).
    parts: Vec<i64>,
}

/// Where the byte stream is, between data blocks or inside one.
#[derive(Debug)]
enum State {
    Head(Vec<u8>),
    Passthrough,
    BlockKind,
    BlockId { kind: u8 },
    BlobOid,
    ChunkLen { blobs: bool },
    ChunkData { remaining: u64, blobs: bool },
}

/// The current data block, when it belongs to a table that may be split.
#[derive(Debug)]
struct Splitting {
    data_id: i64,
    part_bytes: u64,
    last_byte: u8,
}

/// A writer that takes a custom-format archive's bytes in order and writes them laid out
/// for parallel restore to `out`; [`ArchiveLayout::finish`] hands back the table of contents.
pub struct ArchiveLayout<W: Write> {
    out: W,
    part_bytes: u64,
    state: State,
    toc: Option<Toc>,
    candidates: HashMap<i64, Candidate>,
    offsets: HashMap<i64, u64>,
    written: u64,
    reserved: u64,
    toc_len: u64,
    next_id: i64,
    pending: Vec<u8>,
    splitting: Option<Splitting>,
    damage: Option<String>,
    poisoned: bool,
}

impl<W: Write> ArchiveLayout<W> {
    /// Lays the archive out into `out`, cutting table data into parts of about `part_bytes`.
    pub fn new(out: W, part_bytes: u64) -> Self {
        Self {
            out,
            part_bytes: part_bytes.max(1),
            state: State::Head(Vec::new()),
            toc: None,
            candidates: HashMap::new(),
            offsets: HashMap::new(),
            written: 0,
            reserved: 0,
            toc_len: 0,
            next_id: 0,
            pending: Vec::new(),
            splitting: None,
            damage: None,
            poisoned: false,
        }
    }

    /// Why the archive could not be laid out, once a write has failed on its contents.
    pub fn damage(&self) -> Option<&str> {
        self.damage.as_deref()
    }

    fn emit(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn int_size(&self) -> usize {
        self.toc.as_ref().map_or(4, |t| t.int_size)
    }

    fn encode_int(&self, value: i64) -> Vec<u8> {
        encode_int(value, self.int_size())
    }

    /// Collects the bytes of one integer; `Some` once it is complete.
    fn take_int(&mut self, buf: &mut &[u8]) -> Option<i64> {
        let width = 1 + self.int_size();
        let need = width - self.pending.len();
        let take = need.min(buf.len());
        self.pending.extend_from_slice(&buf[..take]);
        *buf = &buf[take..];
        if self.pending.len() < width {
            return None;
        }
        let value = decode_int(&self.pending);
        self.pending.clear();
        Some(value)
    }

    /// Starts the data region once the table of contents is known.
    fn begin(&mut self, toc: Toc) -> std::io::Result<()> {
        let len = toc_len(&toc);
        self.next_id = toc.entries.iter().map(|e| e.dump_id).max().unwrap_or(0) + 1;
        // Post-data entries by what they depend on: one pass, not one per table.
        let mut post_data_by_dep: HashMap<&[u8], Vec<usize>> = HashMap::new();
        for (index, entry) in toc.entries.iter().enumerate() {
            if entry.section == SECTION_POST_DATA {
                for dep in &entry.deps {
                    post_data_by_dep.entry(dep).or_default().push(index);
                }
            }
        }
        for (index, entry) in toc.entries.iter().enumerate() {
            if !is_copy_data(entry) {
                continue;
            }
            let own = entry.dump_id.to_string().into_bytes();
            let mut dependents: Vec<usize> = [entry.deps[0].as_slice(), own.as_slice()]
                .iter()
                .filter_map(|dep| post_data_by_dep.get(dep))
                .flatten()
                .copied()
                .collect();
            dependents.sort_unstable();
            dependents.dedup();
            self.candidates.insert(
                entry.dump_id,
                Candidate {
                    entry: index,
                    dependents,
                    parts: Vec::new(),
                },
            );
        }
        // Room for MAX_PARTS more entries like the largest candidate, each also named by
        // every dependent.
        let per_part = self
            .candidates
            .values()
            .map(|c| {
                let entry = &toc.entries[c.entry];
                entry_len(entry, toc.int_size, toc.off_size)
                    + (TABLE_DATA_PART.len()
                        + 2 * (c.dependents.len() + 1) * (1 + toc.int_size + 20))
                        as u64
            })
            .max()
            .unwrap_or(0);
        self.toc_len = len;
        self.reserved = len + (MAX_PARTS * per_part).clamp(64 << 10, 256 << 20);
        self.toc = Some(toc);
        let zeros = vec![0u8; 64 << 10];
        let mut left = self.reserved;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            self.emit(&zeros[..n])?;
            left -= n as u64;
        }
        self.state = State::BlockKind;
        Ok(())
    }

    /// The bytes the table of contents grows by when `data_id`'s table gets one more part.
    fn growth_for_part(&self, data_id: i64, part_id: i64) -> u64 {
        let (Some(toc), Some(candidate)) = (self.toc.as_ref(), self.candidates.get(&data_id))
        else {
            return u64::MAX;
        };
        let entry = &toc.entries[candidate.entry];
        let dep_len = |id: i64| (1 + toc.int_size + id.to_string().len()) as u64;
        let mut part = entry.clone();
        part.dump_id = part_id;
        part.names[3] = Some(TABLE_DATA_PART.to_vec());
        let mut growth = entry_len(&part, toc.int_size, toc.off_size)
            + candidate.dependents.len() as u64 * dep_len(part_id);
        if candidate.parts.is_empty() {
            // The first cut also renames the entry itself and makes the dependents wait
            // for it by id.
            growth += (TABLE_DATA_PART.len() - TABLE_DATA.len()) as u64
                + candidate.dependents.len() as u64 * dep_len(data_id);
        }
        growth
    }

    /// Ends the current part and starts the next, under a new id.
    fn cut(&mut self, data_id: i64) -> std::io::Result<()> {
        let part_id = self.next_id;
        self.next_id += 1;
        self.toc_len += self.growth_for_part(data_id, part_id);
        if let Some(candidate) = self.candidates.get_mut(&data_id) {
            candidate.parts.push(part_id);
        }
        let end = self.encode_int(0);
        self.emit(&end)?;
        self.offsets.insert(part_id, self.written);
        let id = self.encode_int(part_id);
        self.emit(&[BLOCK_DATA])?;
        self.emit(&id)?;
        Ok(())
    }

    /// The common case, millions of times per archive: whole row chunks that pass through
    /// unchanged, copied as one run. Stops before anything else (a block's end, a chunk cut
    /// off by the end of `buf`, a place to cut); returns the bytes consumed.
    fn copy_whole_chunks(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let width = 1 + self.int_size();
        let mut at = 0;
        while buf.len() - at > width {
            let len = decode_int(&buf[at..at + width]);
            let Ok(len) = usize::try_from(len) else { break };
            if len == 0 || buf.len() - at - width < len {
                break;
            }
            if let Some(s) = self.splitting.as_mut() {
                if s.part_bytes >= self.part_bytes && s.last_byte == b'\n' {
                    break;
                }
                s.part_bytes += len as u64;
                s.last_byte = buf[at + width + len - 1];
            }
            at += width + len;
        }
        if at > 0 {
            self.emit(&buf[..at])?;
        }
        Ok(at)
    }

    fn feed(&mut self, mut buf: &[u8]) -> Result<(), LayoutError> {
        while !buf.is_empty() {
            if matches!(self.state, State::ChunkLen { .. }) && self.pending.is_empty() {
                let copied = self.copy_whole_chunks(buf)?;
                buf = &buf[copied..];
                if buf.is_empty() {
                    break;
                }
            }
            match &mut self.state {
                State::Head(head) => {
                    head.extend_from_slice(buf);
                    buf = &[];
                    match parse_head(head) {
                        Ok(Some((toc, used))) => {
                            let rest = head.split_off(used);
                            self.begin(toc)?;
                            self.feed(&rest)?;
                        }
                        Ok(None) if head.len() < HEAD_LIMIT => {}
                        _ => {
                            let head = std::mem::take(head);
                            self.state = State::Passthrough;
                            self.emit(&head)?;
                        }
                    }
                }
                State::Passthrough => {
                    self.emit(buf)?;
                    buf = &[];
                }
                State::BlockKind => {
                    let kind = buf[0];
                    buf = &buf[1..];
                    if kind != BLOCK_DATA && kind != BLOCK_BLOBS {
                        return Err(LayoutError::Damaged(format!(
                            "unknown data block type {kind} at byte {} of the laid-out output",
                            self.written
                        )));
                    }
                    self.state = State::BlockId { kind };
                }
                State::BlockId { kind } => {
                    let kind = *kind;
                    let Some(id) = self.take_int(&mut buf) else {
                        continue;
                    };
                    if self.offsets.insert(id, self.written).is_some() {
                        return Err(LayoutError::Damaged(format!(
                            "data for entry {id} appears twice"
                        )));
                    }
                    let encoded = self.encode_int(id);
                    self.emit(&[kind])?;
                    self.emit(&encoded)?;
                    self.splitting = (kind == BLOCK_DATA && self.candidates.contains_key(&id))
                        .then_some(Splitting {
                            data_id: id,
                            part_bytes: 0,
                            last_byte: 0,
                        });
                    self.state = if kind == BLOCK_BLOBS {
                        State::BlobOid
                    } else {
                        State::ChunkLen { blobs: false }
                    };
                }
                State::BlobOid => {
                    let Some(oid) = self.take_int(&mut buf) else {
                        continue;
                    };
                    let encoded = self.encode_int(oid);
                    self.emit(&encoded)?;
                    self.state = if oid == 0 {
                        State::BlockKind
                    } else {
                        State::ChunkLen { blobs: true }
                    };
                }
                State::ChunkLen { blobs } => {
                    let blobs = *blobs;
                    let Some(len) = self.take_int(&mut buf) else {
                        continue;
                    };
                    if len < 0 {
                        return Err(LayoutError::Damaged(format!("negative chunk length {len}")));
                    }
                    if len == 0 {
                        self.splitting = None;
                        let end = self.encode_int(0);
                        self.emit(&end)?;
                        self.state = if blobs {
                            State::BlobOid
                        } else {
                            State::BlockKind
                        };
                        continue;
                    }
                    // A row ends at the end of the previous chunk: the next one may start
                    // a new part, if the table of contents still has room for it.
                    let cut_here = self.splitting.as_ref().and_then(|s| {
                        (s.part_bytes >= self.part_bytes && s.last_byte == b'\n')
                            .then_some(s.data_id)
                    });
                    if let Some(data_id) = cut_here {
                        if self.toc_len + self.growth_for_part(data_id, self.next_id)
                            <= self.reserved
                        {
                            self.cut(data_id)?;
                            if let Some(s) = self.splitting.as_mut() {
                                s.part_bytes = 0;
                            }
                        } else {
                            // No room left for another entry: the rest stays in this part.
                            self.splitting = None;
                        }
                    }
                    let encoded = self.encode_int(len);
                    self.emit(&encoded)?;
                    self.state = State::ChunkData {
                        remaining: len as u64,
                        blobs,
                    };
                }
                State::ChunkData { remaining, blobs } => {
                    let take = (*remaining).min(buf.len() as u64) as usize;
                    *remaining -= take as u64;
                    let (done, blobs) = (*remaining == 0, *blobs);
                    let (piece, rest) = buf.split_at(take);
                    buf = rest;
                    if let Some(s) = self.splitting.as_mut()
                        && let Some(&last) = piece.last()
                    {
                        s.part_bytes += take as u64;
                        s.last_byte = last;
                    }
                    self.emit(piece)?;
                    if done {
                        self.state = State::ChunkLen { blobs };
                    }
                }
            }
        }
        Ok(())
    }

    /// Completes the layout: checks the archive ended between blocks and builds the final
    /// table of contents. Returns the output writer (not flushed) and what to write at 0.
    pub fn finish(mut self) -> Result<(W, Finished), LayoutError> {
        match std::mem::replace(&mut self.state, State::Passthrough) {
            State::Head(head) => {
                self.emit(&head)?;
                return Ok((self.out, passthrough()));
            }
            State::Passthrough => return Ok((self.out, passthrough())),
            State::BlockKind => {}
            _ => {
                return Err(LayoutError::Damaged(
                    "the archive ends inside a data block".into(),
                ));
            }
        }
        let Some(toc) = self.toc.take() else {
            return Ok((self.out, passthrough()));
        };
        let split: HashMap<usize, &Candidate> = self
            .candidates
            .values()
            .filter(|c| !c.parts.is_empty())
            .map(|c| (c.entry, c))
            .collect();
        let mut waits: HashMap<usize, Vec<i64>> = HashMap::new();
        for candidate in split.values() {
            let own = toc.entries[candidate.entry].dump_id;
            for &dependent in &candidate.dependents {
                let list = waits.entry(dependent).or_default();
                list.push(own);
                list.extend(&candidate.parts);
            }
        }
        let mut entries = Vec::with_capacity(toc.entries.len() + self.offsets.len());
        for (index, entry) in toc.entries.iter().enumerate() {
            let mut entry = entry.clone();
            if let Some(ids) = waits.get(&index) {
                for id in ids {
                    let dep = id.to_string().into_bytes();
                    if !entry.deps.contains(&dep) {
                        entry.deps.push(dep);
                    }
                }
            }
            if entry.flag != OFFSET_NO_DATA {
                let Some(&at) = self.offsets.get(&entry.dump_id) else {
                    return Err(LayoutError::Damaged(format!(
                        "the table of contents lists data for entry {} ({} {}) but the archive holds none",
                        entry.dump_id,
                        String::from_utf8_lossy(entry.desc()),
                        String::from_utf8_lossy(entry.names[2].as_deref().unwrap_or_default())
                    )));
                };
                entry.flag = OFFSET_SET;
                entry.offset = encode_offset(at, toc.off_size);
            }
            let parts = split.get(&index).map(|c| c.parts.clone());
            if parts.is_some() {
                entry.names[3] = Some(TABLE_DATA_PART.to_vec());
            }
            let template = entry.clone();
            entries.push(entry);
            for id in parts.unwrap_or_default() {
                let mut part = template.clone();
                part.dump_id = id;
                part.offset =
                    encode_offset(self.offsets.get(&id).copied().unwrap_or(0), toc.off_size);
                entries.push(part);
            }
        }
        let parts_added = entries.len() - toc.entries.len();
        let bytes = encode_toc(&toc, &entries);
        if bytes.len() as u64 > self.reserved {
            return Err(LayoutError::Damaged(format!(
                "the new table of contents ({} bytes) outgrew the room kept for it ({})",
                bytes.len(),
                self.reserved
            )));
        }
        Ok((
            self.out,
            Finished {
                toc: Some(bytes),
                split_tables: split.len(),
                parts_added,
            },
        ))
    }
}

impl<W: Write> Write for ArchiveLayout<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // After any failure the state may be half updated: nothing more is taken.
        if self.poisoned {
            return Err(std::io::Error::other(
                self.damage
                    .clone()
                    .unwrap_or_else(|| "an earlier write failed".into()),
            ));
        }
        self.feed(buf).map_err(|e| {
            self.poisoned = true;
            match e {
                LayoutError::Io(e) => e,
                other => {
                    self.damage = Some(other.to_string());
                    std::io::Error::new(std::io::ErrorKind::InvalidData, other.to_string())
                }
            }
        })?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

fn passthrough() -> Finished {
    Finished {
        toc: None,
        split_tables: 0,
        parts_added: 0,
    }
}

/// A COPY block of a table, which may be cut between rows.
fn is_copy_data(entry: &Entry) -> bool {
    let copy = entry
        .rest
        .get(2)
        .and_then(|c| c.as_deref())
        .unwrap_or_default();
    entry.desc() == TABLE_DATA
        && entry.section == SECTION_DATA
        && entry.had_dumper != 0
        && entry.flag != OFFSET_NO_DATA
        && !entry.deps.is_empty()
        && copy.starts_with(b"COPY ")
        && copy.windows(10).any(|w| w == b"FROM stdin")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::dump_format::OFFSET_NOT_SET;
    use crate::pg::dump_format::synthetic::{INT, block, entry, header};

    /// A version 1.14 archive: table 1, its data 2 (`rows` rows, one chunk each), its primary
    /// key 3, and a sequence value 4 with no dependency on the table.
    fn archive(rows: usize, compression: i64) -> Vec<u8> {
        let mut out = header(4, compression);
        out.extend(entry(1, "t", "TABLE", 2, "", &[], OFFSET_NO_DATA));
        out.extend(entry(
            2,
            "t",
            "TABLE DATA",
            SECTION_DATA,
            "COPY public.t (a) FROM stdin;\n",
            &[1],
            OFFSET_NOT_SET,
        ));
        out.extend(entry(
            3,
            "t",
            "CONSTRAINT",
            SECTION_POST_DATA,
            "",
            &[1],
            OFFSET_NO_DATA,
        ));
        out.extend(entry(
            4,
            "t",
            "SEQUENCE SET",
            SECTION_DATA,
            "",
            &[],
            OFFSET_NOT_SET,
        ));
        let lines = (0..rows).map(|row| format!("{row}\n"));
        out.extend(block(2, lines.chain(["\\.\n\n\n\n".to_string()])));
        out.extend(block(4, ["SELECT 1;\n".to_string()]));
        out
    }

    fn lay_out(input: &[u8], part: u64, piece: usize) -> Result<(Vec<u8>, Finished), LayoutError> {
        let mut layout = ArchiveLayout::new(Vec::new(), part);
        for chunk in input.chunks(piece) {
            layout.feed(chunk)?;
        }
        let (mut out, finished) = layout.finish()?;
        if let Some(toc) = &finished.toc {
            out[..toc.len()].copy_from_slice(toc);
        }
        Ok((out, finished))
    }

    /// The data of the block at `at`: its id and the concatenated chunks.
    fn block_at(out: &[u8], at: u64) -> (i64, Vec<u8>) {
        let mut pos = at as usize;
        assert_eq!(out[pos], BLOCK_DATA);
        let id = decode_int(&out[pos + 1..pos + 2 + INT]);
        pos += 2 + INT;
        let mut data = Vec::new();
        loop {
            let len = decode_int(&out[pos..pos + 1 + INT]) as usize;
            pos += 1 + INT;
            if len == 0 {
                return (id, data);
            }
            data.extend_from_slice(&out[pos..pos + len]);
            pos += len;
        }
    }

    fn offset(e: &Entry) -> u64 {
        e.offset
            .iter()
            .enumerate()
            .fold(0u64, |v, (i, &b)| v | (u64::from(b) << (i * 8)))
    }

    #[test]
    fn big_table_is_cut_into_parts_at_row_boundaries_that_its_key_waits_for() {
        let input = archive(1000, 0);
        let expected: Vec<u8> = (0..1000)
            .flat_map(|r| format!("{r}\n").into_bytes())
            .chain(b"\\.\n\n\n\n".iter().copied())
            .collect();
        for piece in [1, 7, 4096, usize::MAX] {
            let (out, finished) = lay_out(&input, 1000, piece).unwrap();
            let (toc, _) = parse_head(&out).unwrap().unwrap();
            let parts: Vec<&Entry> = toc
                .entries
                .iter()
                .filter(|e| e.desc() == TABLE_DATA_PART)
                .collect();
            assert_eq!(finished.split_tables, 1);
            assert_eq!(finished.parts_added, parts.len() - 1);
            assert!(parts.len() >= 3, "{} parts", parts.len());
            assert_eq!(parts[0].dump_id, 2, "the first part keeps the entry's id");
            let mut data = Vec::new();
            for part in &parts {
                assert_eq!(part.flag, OFFSET_SET);
                assert_eq!(part.deps, vec![b"1".to_vec()]);
                let (id, bytes) = block_at(&out, offset(part));
                assert_eq!(id, part.dump_id);
                assert!(bytes.ends_with(b"\n"), "a part ends inside a row");
                data.extend(bytes);
            }
            assert_eq!(data, expected, "rows lost or reordered (pieces of {piece})");
            let key = toc.entries.iter().find(|e| e.dump_id == 3).unwrap();
            for part in &parts {
                assert!(key.deps.contains(&part.dump_id.to_string().into_bytes()));
            }
            let sequence = toc.entries.iter().find(|e| e.dump_id == 4).unwrap();
            assert_eq!(block_at(&out, offset(sequence)).1, b"SELECT 1;\n");
        }
    }

    #[test]
    fn small_table_keeps_one_entry_and_gets_its_offset() {
        let (out, finished) = lay_out(&archive(10, 0), 1 << 20, 3).unwrap();
        assert_eq!((finished.split_tables, finished.parts_added), (0, 0));
        let (toc, _) = parse_head(&out).unwrap().unwrap();
        assert_eq!(toc.entries.len(), 4);
        let data = toc.entries.iter().find(|e| e.dump_id == 2).unwrap();
        assert_eq!(data.desc(), TABLE_DATA);
        assert_eq!(data.flag, OFFSET_SET);
        assert_eq!(block_at(&out, offset(data)).0, 2);
    }

    #[test]
    fn compressed_or_foreign_input_passes_through_unchanged() {
        let compressed = archive(100, -1);
        let (out, finished) = lay_out(&compressed, 10, 5).unwrap();
        assert!(finished.toc.is_none());
        assert_eq!(out, compressed);
        let text = b"-- a plain SQL dump\nSELECT 1;\n".to_vec();
        let (out, finished) = lay_out(&text, 10, 4).unwrap();
        assert!(finished.toc.is_none());
        assert_eq!(out, text);
    }

    #[test]
    fn archive_cut_short_inside_a_block_is_an_error() {
        let input = archive(100, 0);
        let cut = &input[..input.len() - 20];
        let err = lay_out(cut, 100, 64).unwrap_err();
        assert!(
            err.to_string().contains("ends inside a data block"),
            "{err}"
        );
    }
}
