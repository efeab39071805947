//! The pg_dump custom format's header and table of contents, read and written field by
//! field (archive versions 1.14 — PostgreSQL 15 —, 1.15 — PostgreSQL 16 — and 1.16 —
//! PostgreSQL 17 and 18, which add a `relkind` integer to each entry; uncompressed archives
//! only, what Lazarus takes), and the integers and markers of its data blocks.
//! Shared by the modules that index, lay out, scan and convert such archives.

/// The custom format's magic bytes.
pub(crate) const MAGIC: &[u8; 5] = b"PGDMP";
/// Offset flags of a table-of-contents entry.
pub(crate) const OFFSET_NOT_SET: u8 = 1;
pub(crate) const OFFSET_SET: u8 = 2;
pub(crate) const OFFSET_NO_DATA: u8 = 3;
/// Data block types.
pub(crate) const BLOCK_DATA: u8 = 1;
pub(crate) const BLOCK_BLOBS: u8 = 3;

/// An integer as pg_dump's `WriteInt` writes it: a sign byte, then the magnitude's bytes,
/// least significant first.
pub(crate) fn decode_int(bytes: &[u8]) -> i64 {
    let mut le = [0u8; 8];
    let n = (bytes.len() - 1).min(8);
    le[..n].copy_from_slice(&bytes[1..=n]);
    let value = i64::from_le_bytes(le);
    if bytes[0] != 0 {
        value.wrapping_neg()
    } else {
        value
    }
}

/// Section numbers of table-of-contents entries.
pub(crate) const SECTION_DATA: i64 = 3;
pub(crate) const SECTION_POST_DATA: i64 = 4;
/// The type of the entries holding a table's rows.
pub(crate) const TABLE_DATA: &[u8] = b"TABLE DATA";
/// A table of contents still incomplete after this many bytes is not one these modules read.
pub(crate) const HEAD_LIMIT: usize = 256 << 20;

/// One table-of-contents entry, kept field by field so it can be written back changed.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) dump_id: i64,
    pub(crate) had_dumper: i64,
    /// tableoid, oid, tag, desc.
    pub(crate) names: [Option<Vec<u8>>; 4],
    pub(crate) section: i64,
    /// defn, drop, copy, namespace, tablespace, table AM, owner, with-oids.
    pub(crate) rest: Vec<Option<Vec<u8>>>,
    /// The relation kind (archive 1.16 on: written between table AM and owner; 0 for
    /// entries that are not relations), `None` before 1.16.
    pub(crate) relkind: Option<i64>,
    pub(crate) deps: Vec<Vec<u8>>,
    pub(crate) flag: u8,
    pub(crate) offset: Vec<u8>,
}

impl Entry {
    pub(crate) fn desc(&self) -> &[u8] {
        self.names[3].as_deref().unwrap_or_default()
    }
}

/// The parsed header and table of contents.
#[derive(Debug)]
pub(crate) struct Toc {
    /// Everything before the entry count, byte for byte.
    pub(crate) prefix: Vec<u8>,
    pub(crate) int_size: usize,
    pub(crate) off_size: usize,
    pub(crate) entries: Vec<Entry>,
}

pub(crate) fn encode_int(value: i64, int_size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + int_size);
    out.push(u8::from(value < 0));
    let magnitude = value.unsigned_abs();
    for i in 0..int_size {
        out.push(if i < 8 {
            (magnitude >> (i * 8)) as u8
        } else {
            0
        });
    }
    out
}

pub(crate) fn encode_offset(at: u64, off_size: usize) -> Vec<u8> {
    (0..off_size)
        .map(|i| if i < 8 { (at >> (i * 8)) as u8 } else { 0 })
        .collect()
}

pub(crate) fn string_len(s: &Option<Vec<u8>>, int_size: usize) -> u64 {
    (1 + int_size + s.as_ref().map_or(0, Vec::len)) as u64
}

pub(crate) fn entry_len(e: &Entry, int_size: usize, off_size: usize) -> u64 {
    let int = (1 + int_size) as u64;
    int * 3
        + e.names.iter().map(|s| string_len(s, int_size)).sum::<u64>()
        + e.rest.iter().map(|s| string_len(s, int_size)).sum::<u64>()
        + e.relkind.map_or(0, |_| int)
        + e.deps
            .iter()
            .map(|d| (1 + int_size + d.len()) as u64)
            .sum::<u64>()
        + int
        + 1
        + off_size as u64
}

pub(crate) fn toc_len(toc: &Toc) -> u64 {
    toc.prefix.len() as u64
        + (1 + toc.int_size) as u64
        + toc
            .entries
            .iter()
            .map(|e| entry_len(e, toc.int_size, toc.off_size))
            .sum::<u64>()
}

pub(crate) fn encode_toc(toc: &Toc, entries: &[Entry]) -> Vec<u8> {
    encode_toc_with(toc, entries, &mut |e, out| {
        out.push(e.flag);
        out.extend_from_slice(&e.offset);
    })
}

/// Writes a header and table of contents with `extra` writing each entry's format-specific
/// tail (the custom format's data offset, the directory format's file name).
pub(crate) fn encode_toc_with(
    toc: &Toc,
    entries: &[Entry],
    extra: &mut dyn FnMut(&Entry, &mut Vec<u8>),
) -> Vec<u8> {
    let int = |v: i64| encode_int(v, toc.int_size);
    let string = |out: &mut Vec<u8>, s: &Option<Vec<u8>>| match s {
        Some(bytes) => {
            out.extend(int(bytes.len() as i64));
            out.extend_from_slice(bytes);
        }
        None => out.extend(int(-1)),
    };
    let mut out = toc.prefix.clone();
    out.extend(int(entries.len() as i64));
    for e in entries {
        out.extend(int(e.dump_id));
        out.extend(int(e.had_dumper));
        for s in &e.names {
            string(&mut out, s);
        }
        out.extend(int(e.section));
        for (i, s) in e.rest.iter().enumerate() {
            if i == RELKIND_AFTER
                && let Some(relkind) = e.relkind
            {
                out.extend(int(relkind));
            }
            string(&mut out, s);
        }
        for d in &e.deps {
            string(&mut out, &Some(d.clone()));
        }
        string(&mut out, &None);
        extra(e, &mut out);
    }
    out
}

/// How many of an entry's `rest` strings come before its `relkind` (defn, drop, copy,
/// namespace, tablespace, table AM).
pub(crate) const RELKIND_AFTER: usize = 6;

/// Reads the header and table of contents from the start of an archive: `Ok(None)` while
/// more bytes are needed, `Err` when it is not an archive this module lays out.
pub(crate) fn parse_head(bytes: &[u8]) -> Result<Option<(Toc, usize)>, ()> {
    if bytes.len() < 11 {
        return if MAGIC.starts_with(&bytes[..bytes.len().min(5)]) {
            Ok(None)
        } else {
            Err(())
        };
    }
    let (major, minor) = (bytes[5], bytes[6]);
    let int_size = bytes[8] as usize;
    let off_size = bytes[9] as usize;
    if &bytes[..5] != MAGIC
        || major != 1
        || !(14..=16).contains(&minor)
        || bytes[10] != 1
        || !(4..=8).contains(&int_size)
        || !(4..=8).contains(&off_size)
    {
        return Err(());
    }
    let mut r = Cursor {
        bytes,
        pos: 11,
        int_size,
    };
    let parsed = (|| -> Option<Result<(Toc, usize), ()>> {
        let compressed = if minor >= 15 {
            r.byte()? != 0
        } else {
            r.int()? != 0
        };
        if compressed {
            return Some(Err(()));
        }
        for _ in 0..7 {
            r.int()?;
        }
        for _ in 0..3 {
            r.string()?;
        }
        let prefix = bytes[..r.pos].to_vec();
        let count = r.int()?;
        if !(0..=10_000_000).contains(&count) {
            return Some(Err(()));
        }
        // Capacity from what is buffered, not from a count the input claims.
        let mut entries = Vec::with_capacity((count as usize).min(bytes.len() / 64));
        for _ in 0..count {
            let dump_id = r.int()?;
            let had_dumper = r.int()?;
            let names = [r.string()?, r.string()?, r.string()?, r.string()?];
            let section = r.int()?;
            let mut rest = Vec::with_capacity(8);
            let mut relkind = None;
            for i in 0..8 {
                if i == RELKIND_AFTER && minor >= 16 {
                    relkind = Some(r.int()?);
                }
                rest.push(r.string()?);
            }
            let mut deps = Vec::new();
            while let Some(dep) = r.string()? {
                deps.push(dep);
            }
            let flag = r.byte()?;
            let offset = r.take(off_size)?.to_vec();
            if !matches!(flag, OFFSET_NOT_SET | OFFSET_SET | OFFSET_NO_DATA) {
                return Some(Err(()));
            }
            entries.push(Entry {
                dump_id,
                had_dumper,
                names,
                section,
                rest,
                relkind,
                deps,
                flag,
                offset,
            });
        }
        Some(Ok((
            Toc {
                prefix,
                int_size,
                off_size,
                entries,
            },
            r.pos,
        )))
    })();
    match parsed {
        None => Ok(None),
        Some(Ok(done)) => Ok(Some(done)),
        Some(Err(())) => Err(()),
    }
}

/// Reads from a buffer that may end early (`None`: need more bytes).
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    int_size: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let slice = self.bytes.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(slice)
    }

    fn byte(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn int(&mut self) -> Option<i64> {
        let width = 1 + self.int_size;
        self.take(width).map(decode_int)
    }

    /// `Some(None)` is a NULL string.
    fn string(&mut self) -> Option<Option<Vec<u8>>> {
        let len = self.int()?;
        if len < 0 {
            return Some(None);
        }
        let len = usize::try_from(len).ok()?.min(HEAD_LIMIT + 1);
        self.take(len).map(|s| Some(s.to_vec()))
    }
}

/// Builders of small custom-format archives, for the unit tests of the modules that read
/// them.
#[cfg(test)]
pub(crate) mod synthetic {
    use super::{OFFSET_NO_DATA, encode_int};

    /// Integer width of the archives built here.
    pub(crate) const INT: usize = 4;
    /// Offset width of the archives built here.
    pub(crate) const OFF: usize = 8;

    pub(crate) fn int(v: i64) -> Vec<u8> {
        encode_int(v, INT)
    }

    pub(crate) fn string(s: &str) -> Vec<u8> {
        let mut out = int(s.len() as i64);
        out.extend_from_slice(s.as_bytes());
        out
    }

    /// One table-of-contents entry named `tag`, whose COPY statement is `copy`.
    pub(crate) fn entry(
        id: i64,
        tag: &str,
        desc: &str,
        section: i64,
        copy: &str,
        deps: &[i64],
        flag: u8,
    ) -> Vec<u8> {
        let mut out = int(id);
        out.extend(int(i64::from(flag != OFFSET_NO_DATA)));
        for s in ["0", "0", tag, desc] {
            out.extend(string(s));
        }
        out.extend(int(section));
        for s in ["", "", copy, "public", "", "heap", "postgres", "false"] {
            out.extend(string(s));
        }
        for d in deps {
            out.extend(string(&d.to_string()));
        }
        out.extend(int(-1));
        out.push(flag);
        out.extend([0u8; OFF]);
        out
    }

    /// A version 1.14 header announcing `entries` entries, compressed by pg_dump at level
    /// `compression`.
    pub(crate) fn header(entries: i64, compression: i64) -> Vec<u8> {
        let mut out = b"PGDMP".to_vec();
        out.extend([1, 14, 0, INT as u8, OFF as u8, 1]);
        out.extend(int(compression));
        for v in [0, 0, 0, 1, 0, 124, 0] {
            out.extend(int(v));
        }
        for s in ["db", "15.0", "15.0"] {
            out.extend(string(s));
        }
        out.extend(int(entries));
        out
    }

    /// The data block of entry `id`: each of `rows` in a chunk of its own.
    pub(crate) fn block<I: IntoIterator<Item = String>>(id: i64, rows: I) -> Vec<u8> {
        let mut out = vec![super::BLOCK_DATA];
        out.extend(int(id));
        for row in rows {
            out.extend(string(&row));
        }
        out.extend(int(0));
        out
    }
}
