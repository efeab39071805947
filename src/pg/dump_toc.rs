//! Fills in the data offsets of a `pg_dump -Fc` archive that was written to a pipe.
//!
//! pg_dump can only record where each table's data starts when it writes to a seekable
//! file; Lazarus streams pg_dump straight into the encrypted format, so its archives carry
//! "offset not set" in every table-of-contents entry, and `pg_restore --jobs N` must then
//! have every worker scan the archive to find its tables. Writing the offsets into the
//! restored copy before pg_restore runs (what pg_dump itself does when it can seek) removes
//! that scanning. Only archive versions this module knows (1.14 — PostgreSQL 15 —, 1.15 —
//! PostgreSQL 16 — and 1.16 — PostgreSQL 17 and 18) are touched; others are left exactly as
//! they are.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::dump_format::{
    BLOCK_BLOBS, BLOCK_DATA, MAGIC, OFFSET_NO_DATA, OFFSET_NOT_SET, OFFSET_SET, decode_int,
};

/// Why the offsets could not be filled (the archive is then left untouched).
#[derive(Debug, thiserror::Error)]
#[error("cannot index the pg_dump archive {path}: {message}")]
pub struct TocError {
    /// The archive.
    pub path: String,
    /// What went wrong.
    pub message: String,
}

struct Reader {
    inner: BufReader<File>,
    pos: u64,
    int_size: usize,
}

impl Reader {
    fn byte(&mut self) -> std::io::Result<Option<u8>> {
        let mut b = [0u8; 1];
        match self.inner.read(&mut b)? {
            0 => Ok(None),
            _ => {
                self.pos += 1;
                Ok(Some(b[0]))
            }
        }
    }

    fn need(&mut self) -> std::io::Result<u8> {
        self.byte()?.ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "archive ends early")
        })
    }

    fn int(&mut self) -> std::io::Result<i64> {
        // Fast path: the whole integer is in the buffer (one per row chunk: millions).
        let width = 1 + self.int_size;
        if let Some(bytes) = self.inner.buffer().get(..width) {
            let value = decode_int(bytes);
            self.inner.consume(width);
            self.pos += width as u64;
            return Ok(value);
        }
        let negative = self.need()? != 0;
        let mut value: i64 = 0;
        for i in 0..self.int_size {
            let b = i64::from(self.need()?);
            if i < 8 {
                value |= b << (i * 8);
            }
        }
        Ok(if negative { -value } else { value })
    }

    fn skip(&mut self, n: u64) -> std::io::Result<()> {
        let n = i64::try_from(n).map_err(std::io::Error::other)?;
        self.inner.seek_relative(n)?;
        self.pos += n as u64;
        Ok(())
    }

    fn string(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        let len = self.int()?;
        if len < 0 {
            return Ok(None);
        }
        if len > 1 << 30 {
            return Err(std::io::Error::other("implausible string length"));
        }
        let mut bytes = vec![0u8; len as usize];
        self.inner.read_exact(&mut bytes)?;
        self.pos += len as u64;
        Ok(Some(bytes))
    }

    fn skip_string(&mut self) -> std::io::Result<()> {
        let len = self.int()?;
        if len > 0 {
            self.skip(len as u64)?;
        }
        Ok(())
    }

    /// Skips data chunks up to the zero-length end marker.
    fn skip_chunks(&mut self) -> std::io::Result<()> {
        loop {
            let len = self.int()?;
            if len == 0 {
                return Ok(());
            }
            if len < 0 {
                return Err(std::io::Error::other("negative chunk length"));
            }
            self.skip(len as u64)?;
        }
    }
}

/// Writes the data offsets into an archive whose table of contents lacks them. Returns how
/// many entries were filled; `Ok(0)` when there was nothing to do or the version is one this
/// module leaves alone.
pub fn fill_data_offsets(path: &Path) -> Result<usize, TocError> {
    let fail = |message: String| TocError {
        path: path.display().to_string(),
        message,
    };
    let io = |e: std::io::Error| fail(e.to_string());
    let file = File::options()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io)?;
    let mut head = [0u8; 11];
    if file.read_exact_at(&mut head, 0).is_err() || &head[..5] != MAGIC {
        return Err(fail("not a pg_dump custom-format archive".into()));
    }
    let (major, minor) = (head[5], head[6]);
    let int_size = head[8] as usize;
    let off_size = head[9] as usize;
    let format = head[10];
    if major != 1
        || !(14..=16).contains(&minor)
        || format != 1
        || !(4..=8).contains(&int_size)
        || !(4..=8).contains(&off_size)
    {
        return Ok(0);
    }
    let mut r = Reader {
        inner: BufReader::with_capacity(1 << 20, file.try_clone().map_err(io)?),
        pos: 0,
        int_size,
    };
    r.skip(11).map_err(io)?;
    let parse = |r: &mut Reader| -> std::io::Result<Vec<(i64, u64, u8)>> {
        if minor >= 15 {
            r.need()?; // compression algorithm
        } else {
            r.int()?; // compression level
        }
        for _ in 0..7 {
            r.int()?; // creation time
        }
        r.skip_string()?; // database name
        r.skip_string()?; // server version
        r.skip_string()?; // pg_dump version
        let count = r.int()?;
        if !(0..=10_000_000).contains(&count) {
            return Err(std::io::Error::other("implausible TOC entry count"));
        }
        let mut entries = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let dump_id = r.int()?;
            r.int()?; // had dumper
            // tableoid, oid, tag, desc
            for _ in 0..4 {
                r.skip_string()?;
            }
            r.int()?; // section
            // defn, drop, copy, namespace, tablespace, table AM, [relkind: 1.16 on,] owner,
            // with-oids
            for i in 0..8 {
                if i == crate::pg::dump_format::RELKIND_AFTER && minor >= 16 {
                    r.int()?;
                }
                r.skip_string()?;
            }
            while r.string()?.is_some() {} // dependencies, NULL-terminated
            let flag_at = r.pos;
            let flag = r.need()?;
            r.skip(off_size as u64)?;
            if !matches!(flag, OFFSET_NOT_SET | OFFSET_SET | OFFSET_NO_DATA) {
                return Err(std::io::Error::other(format!("bad offset flag {flag}")));
            }
            entries.push((dump_id, flag_at, flag));
        }
        Ok(entries)
    };
    let entries = parse(&mut r).map_err(|e| fail(format!("table of contents: {e}")))?;
    if !entries.iter().any(|&(_, _, flag)| flag == OFFSET_NOT_SET) {
        return Ok(0);
    }
    // Walk the data blocks, remembering where each starts.
    let mut starts = std::collections::HashMap::new();
    let walk = |r: &mut Reader,
                starts: &mut std::collections::HashMap<i64, u64>|
     -> std::io::Result<()> {
        loop {
            let at = r.pos;
            let Some(kind) = r.byte()? else { return Ok(()) };
            let dump_id = r.int()?;
            match kind {
                BLOCK_DATA => r.skip_chunks()?,
                BLOCK_BLOBS => loop {
                    let oid = r.int()?;
                    if oid == 0 {
                        break;
                    }
                    r.skip_chunks()?;
                },
                other => return Err(std::io::Error::other(format!("unknown block type {other}"))),
            }
            starts.insert(dump_id, at);
        }
    };
    walk(&mut r, &mut starts).map_err(|e| fail(format!("data blocks: {e}")))?;
    let mut filled = 0;
    for (dump_id, flag_at, flag) in entries {
        let Some(&start) = starts.get(&dump_id) else {
            continue;
        };
        if flag != OFFSET_NOT_SET {
            continue;
        }
        let mut field = vec![0u8; 1 + off_size];
        field[0] = OFFSET_SET;
        for (i, byte) in field[1..].iter_mut().enumerate().take(8) {
            *byte = (start >> (i * 8)) as u8;
        }
        file.write_all_at(&field, flag_at).map_err(io)?;
        filled += 1;
    }
    file.sync_data().map_err(io)?;
    let _ = r.inner.seek(SeekFrom::Start(0));
    Ok(filled)
}
