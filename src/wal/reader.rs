//! Lazarus's own WAL reader: walks one segment's pages and records and reports what a
//! catalog needs — the LSN range, and the commit/abort timestamps (`xl_xact_commit.xact_time`)
//! that decide which segments a point-in-time target needs.
//!
//! It reads PostgreSQL 15–17 (page magic 0xD110, 0xD113, 0xD116; the page, record and
//! transaction layouts it touches are the same in all three) and refuses other magics by
//! name. It never panics on bad input: every length is checked against the segment.
//!
//! A record that begins in one segment and ends in the next is not decoded by either scan
//! (its start is here, its end there); a commit lost that way only makes the catalog's
//! timestamps conservative, never wrong.

use serde::{Deserialize, Serialize};

use super::WalError;
use super::names::{Lsn, SegmentName};

/// Page magics this build reads, with the PostgreSQL major version that writes each.
pub const PAGE_MAGICS: &[(u16, u32)] = &[(0xD110, 15), (0xD113, 16), (0xD116, 17)];

const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
const XLP_LONG_HEADER: u16 = 0x0002;
const XLP_FIRST_IS_OVERWRITE_CONTRECORD: u16 = 0x0008;
const SHORT_PAGE_HEADER: usize = 24;
const LONG_PAGE_HEADER: usize = 40;
const RECORD_HEADER: usize = 24;
const RECORD_CRC_OFFSET: usize = 20;
/// PostgreSQL refuses records above 1020 MiB; anything longer is not a record.
const MAX_RECORD: usize = 1020 << 20;

const RM_XLOG_ID: u8 = 0;
const RM_XACT_ID: u8 = 1;
const XLOG_SWITCH: u8 = 0x40;
const XLOG_XACT_OPMASK: u8 = 0x70;
const XLOG_XACT_COMMIT: u8 = 0x00;
const XLOG_XACT_ABORT: u8 = 0x20;
const XLOG_XACT_COMMIT_PREPARED: u8 = 0x30;
const XLOG_XACT_ABORT_PREPARED: u8 = 0x40;

const XLR_MAX_BLOCK_ID: u8 = 32;
const XLR_BLOCK_ID_DATA_SHORT: u8 = 255;
const XLR_BLOCK_ID_DATA_LONG: u8 = 254;
const XLR_BLOCK_ID_ORIGIN: u8 = 253;
const XLR_BLOCK_ID_TOPLEVEL_XID: u8 = 252;
const BKPBLOCK_HAS_IMAGE: u8 = 0x10;
const BKPBLOCK_SAME_REL: u8 = 0x80;
const BKPIMAGE_HAS_HOLE: u8 = 0x01;
const BKPIMAGE_COMPRESSED: u8 = 0x04 | 0x08 | 0x10;

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01 UTC).
pub const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// What ended a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum XactKind {
    /// COMMIT.
    Commit,
    /// ABORT.
    Abort,
    /// COMMIT PREPARED.
    CommitPrepared,
    /// ROLLBACK PREPARED.
    AbortPrepared,
}

/// One transaction end found in the WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct XactRecord {
    /// Where the record starts.
    pub lsn: Lsn,
    /// Commit or abort.
    pub kind: XactKind,
    /// The record's transaction id.
    pub xid: u32,
    /// `xact_time`, microseconds since the Unix epoch.
    pub time: i64,
}

/// What a scan of one segment found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentScan {
    /// Timeline and segment number, from the first page header.
    pub name: SegmentName,
    /// PostgreSQL major version that wrote it (from the page magic).
    pub server_version: u32,
    /// The cluster's system identifier.
    pub system_id: u64,
    /// Segment size in bytes.
    pub segment_size: u64,
    /// WAL page size in bytes.
    pub page_size: u32,
    /// First byte of the segment.
    pub start_lsn: Lsn,
    /// End of the last record decoded (the segment end when a record continues past it).
    pub end_lsn: Lsn,
    /// Records that begin in this segment and were decoded.
    pub records: u64,
    /// Commits (plain and prepared).
    pub commits: u64,
    /// Aborts (plain and prepared).
    pub aborts: u64,
    /// Earliest commit/abort time, microseconds since the Unix epoch.
    pub first_xact_time: Option<i64>,
    /// Latest commit/abort time, microseconds since the Unix epoch.
    pub last_xact_time: Option<i64>,
    /// The segment was ended early by `pg_switch_wal()` or `archive_timeout`.
    pub switched: bool,
    /// Valid WAL stops before the segment's end (a partial segment, or recycled bytes).
    pub ends_early: bool,
    /// Every transaction end, when asked for.
    pub xacts: Vec<XactRecord>,
}

/// How much a scan reports.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScanOptions {
    /// Collect every transaction end in [`SegmentScan::xacts`].
    pub collect_xacts: bool,
}

fn u16_at(data: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(data.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(data: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(data.get(at..at + 8)?.try_into().ok()?))
}

/// A page header, checked against where the page must be.
struct Page {
    info: u16,
    rem_len: u32,
    header_len: usize,
}

/// The fixed facts of a segment, from its first (long) page header.
struct Layout {
    magic: u16,
    page_size: usize,
    start: u64,
}

impl Layout {
    /// Reads the header of the page at `offset`; `None` when it is not a valid page of
    /// this segment at this place (end of valid WAL).
    fn page(&self, data: &[u8], offset: usize) -> Option<Page> {
        let magic = u16_at(data, offset)?;
        let info = u16_at(data, offset + 2)?;
        let pageaddr = u64_at(data, offset + 8)?;
        let rem_len = u32_at(data, offset + 16)?;
        if magic != self.magic || pageaddr != self.start + offset as u64 {
            return None;
        }
        let header_len = if info & XLP_LONG_HEADER != 0 {
            LONG_PAGE_HEADER
        } else {
            SHORT_PAGE_HEADER
        };
        Some(Page {
            info,
            rem_len,
            header_len,
        })
    }
}

/// How gathering one record ended.
enum Gathered {
    /// The record is in the buffer; the next one starts at (or after) this offset.
    Complete(usize),
    /// It continues in the next segment.
    RunsOff,
    /// No valid record here: the end of valid WAL.
    End,
}

/// Reads one WAL segment (the whole file, as PostgreSQL archives it).
pub fn scan_segment(data: &[u8], options: ScanOptions) -> Result<SegmentScan, WalError> {
    if data.len() < LONG_PAGE_HEADER {
        return Err(WalError::NotWal(format!(
            "the file is {} bytes, too short for a WAL segment",
            data.len()
        )));
    }
    let magic = u16_at(data, 0).unwrap_or(0);
    let Some(&(_, server_version)) = PAGE_MAGICS.iter().find(|(m, _)| *m == magic) else {
        return Err(WalError::UnknownMagic(magic));
    };
    let info = u16_at(data, 2).unwrap_or(0);
    let timeline = u32_at(data, 4).unwrap_or(0);
    let start = u64_at(data, 8).unwrap_or(0);
    let system_id = u64_at(data, 24).unwrap_or(0);
    let segment_size = u32_at(data, 32).unwrap_or(0) as u64;
    let page_size = u32_at(data, 36).unwrap_or(0) as usize;
    if info & XLP_LONG_HEADER == 0 {
        return Err(WalError::NotWal(
            "the first page has no long header: this is not the start of a WAL segment".into(),
        ));
    }
    if !segment_size.is_power_of_two()
        || !(1 << 20..=1 << 30).contains(&segment_size)
        || !page_size.is_power_of_two()
        || !(1024..=65536).contains(&page_size)
        || !start.is_multiple_of(segment_size)
        || timeline == 0
    {
        return Err(WalError::NotWal(format!(
            "implausible segment header (segment size {segment_size}, page size {page_size}, \
             address {start:#X}, timeline {timeline})"
        )));
    }
    if (data.len() as u64) != segment_size {
        return Err(WalError::NotWal(format!(
            "the file is {} bytes but its header says segments are {segment_size} bytes \
             (truncated or padded)",
            data.len()
        )));
    }
    let layout = Layout {
        magic,
        page_size,
        start,
    };
    let mut scan = SegmentScan {
        name: SegmentName {
            timeline,
            segno: start / segment_size,
        },
        server_version,
        system_id,
        segment_size,
        page_size: page_size as u32,
        start_lsn: Lsn(start),
        end_lsn: Lsn(start),
        records: 0,
        commits: 0,
        aborts: 0,
        first_xact_time: None,
        last_xact_time: None,
        switched: false,
        ends_early: false,
        xacts: Vec::new(),
    };

    let Some(first) = layout.page(data, 0) else {
        return Err(WalError::NotWal(
            "the first page header does not check out".into(),
        ));
    };
    let mut pos = match skip_continuation(data, &layout, &first) {
        Some(pos) => pos,
        None => {
            // A single record fills the whole segment and goes on.
            scan.end_lsn = Lsn(start + segment_size);
            return Ok(scan);
        }
    };
    scan.end_lsn = Lsn(start + pos as u64);
    let mut prev: Option<u64> = None;
    let mut record = Vec::with_capacity(8192);
    loop {
        pos = align8(pos);
        if pos >= data.len() {
            break;
        }
        if pos % page_size == 0 {
            match layout.page(data, pos) {
                Some(page) if page.info & XLP_FIRST_IS_CONTRECORD == 0 => pos += page.header_len,
                _ => {
                    scan.ends_early = true;
                    break;
                }
            }
        }
        let record_lsn = start + pos as u64;
        match gather(data, &layout, pos, &mut record) {
            Gathered::Complete(end) => {
                if !record_is_valid(&record, prev) {
                    scan.ends_early = true;
                    break;
                }
                scan.records += 1;
                scan.end_lsn = Lsn(start + end as u64);
                prev = Some(record_lsn);
                let rmid = record[17];
                let info = record[16];
                if rmid == RM_XLOG_ID && info & 0xF0 == XLOG_SWITCH {
                    scan.switched = true;
                    break;
                }
                if rmid == RM_XACT_ID {
                    note_xact(&mut scan, &record, record_lsn, info, options);
                }
                pos = end;
            }
            Gathered::RunsOff => {
                scan.end_lsn = Lsn(start + segment_size);
                break;
            }
            Gathered::End => {
                scan.ends_early = true;
                break;
            }
        }
    }
    Ok(scan)
}

fn align8(pos: usize) -> usize {
    (pos + 7) & !7
}

/// Skips the tail of a record begun in the previous segment; `None` when it fills the
/// whole segment.
fn skip_continuation(data: &[u8], layout: &Layout, first: &Page) -> Option<usize> {
    if first.info & XLP_FIRST_IS_CONTRECORD == 0
        || first.info & XLP_FIRST_IS_OVERWRITE_CONTRECORD != 0
    {
        return Some(first.header_len);
    }
    let mut remaining = first.rem_len as usize;
    let mut page_start = 0usize;
    let mut header_len = first.header_len;
    loop {
        let room = layout.page_size - header_len;
        if remaining <= room {
            return Some(page_start + header_len + remaining);
        }
        remaining -= room;
        page_start += layout.page_size;
        if page_start >= data.len() {
            return None;
        }
        let page = layout.page(data, page_start)?;
        if page.info & XLP_FIRST_IS_CONTRECORD == 0 || page.rem_len as usize != remaining {
            // Not the continuation we were following: valid WAL resumes after this header.
            return Some(page_start + page.header_len);
        }
        header_len = page.header_len;
    }
}

/// Copies the record starting at `pos` into `out`, across page headers.
fn gather(data: &[u8], layout: &Layout, pos: usize, out: &mut Vec<u8>) -> Gathered {
    let page_size = layout.page_size;
    let Some(total) = u32_at(data, pos) else {
        return Gathered::End;
    };
    let total = total as usize;
    if !(RECORD_HEADER..=MAX_RECORD).contains(&total) {
        return Gathered::End;
    }
    out.clear();
    let page_end = (pos / page_size + 1) * page_size;
    let first = (page_end - pos).min(total);
    out.extend_from_slice(&data[pos..pos + first]);
    let mut cursor = pos + first;
    while out.len() < total {
        if cursor >= data.len() {
            return Gathered::RunsOff;
        }
        let Some(page) = layout.page(data, cursor) else {
            return Gathered::End;
        };
        let remaining = total - out.len();
        if page.info & XLP_FIRST_IS_CONTRECORD == 0 || page.rem_len as usize != remaining {
            return Gathered::End;
        }
        let body = cursor + page.header_len;
        let take = remaining.min(page_size - page.header_len);
        out.extend_from_slice(&data[body..body + take]);
        cursor = body + take;
    }
    Gathered::Complete(cursor)
}

/// Checks the record's CRC-32C and back link.
fn record_is_valid(record: &[u8], prev: Option<u64>) -> bool {
    let Some(stored) = u32_at(record, RECORD_CRC_OFFSET) else {
        return false;
    };
    if let (Some(expected), Some(link)) = (prev, u64_at(record, 8))
        && link != expected
    {
        return false;
    }
    let crc = crc32c::crc32c(&record[RECORD_HEADER..]);
    crc32c::crc32c_append(crc, &record[..RECORD_CRC_OFFSET]) == stored
}

/// The record's main data (what the resource manager wrote), after its block references.
fn main_data(record: &[u8]) -> Option<&[u8]> {
    let mut at = RECORD_HEADER;
    let mut block_data = 0usize;
    let mut main_len = 0usize;
    while at < record.len() {
        let id = record[at];
        at += 1;
        match id {
            XLR_BLOCK_ID_DATA_SHORT => {
                main_len = *record.get(at)? as usize;
                at += 1;
                break;
            }
            XLR_BLOCK_ID_DATA_LONG => {
                main_len = u32_at(record, at)? as usize;
                at += 4;
                break;
            }
            XLR_BLOCK_ID_ORIGIN => at += 2,
            XLR_BLOCK_ID_TOPLEVEL_XID => at += 4,
            id if id <= XLR_MAX_BLOCK_ID => {
                let fork_flags = *record.get(at)?;
                block_data += u16_at(record, at + 1)? as usize;
                at += 3;
                if fork_flags & BKPBLOCK_HAS_IMAGE != 0 {
                    block_data += u16_at(record, at)? as usize;
                    let image_info = *record.get(at + 4)?;
                    at += 5;
                    if image_info & BKPIMAGE_HAS_HOLE != 0 && image_info & BKPIMAGE_COMPRESSED != 0
                    {
                        at += 2;
                    }
                }
                if fork_flags & BKPBLOCK_SAME_REL == 0 {
                    at += 12;
                }
                at += 4;
            }
            _ => return None,
        }
    }
    let end = at.checked_add(block_data)?.checked_add(main_len)?;
    if end != record.len() {
        return None;
    }
    record.get(record.len() - main_len..)
}

fn note_xact(scan: &mut SegmentScan, record: &[u8], lsn: u64, info: u8, options: ScanOptions) {
    let kind = match info & XLOG_XACT_OPMASK {
        XLOG_XACT_COMMIT => XactKind::Commit,
        XLOG_XACT_ABORT => XactKind::Abort,
        XLOG_XACT_COMMIT_PREPARED => XactKind::CommitPrepared,
        XLOG_XACT_ABORT_PREPARED => XactKind::AbortPrepared,
        _ => return,
    };
    let Some(time) = main_data(record).and_then(|data| u64_at(data, 0)) else {
        return;
    };
    let time = (time as i64).saturating_add(PG_EPOCH_OFFSET_MICROS);
    match kind {
        XactKind::Commit | XactKind::CommitPrepared => scan.commits += 1,
        XactKind::Abort | XactKind::AbortPrepared => scan.aborts += 1,
    }
    scan.first_xact_time = Some(scan.first_xact_time.map_or(time, |t| t.min(time)));
    scan.last_xact_time = Some(scan.last_xact_time.map_or(time, |t| t.max(time)));
    if options.collect_xacts {
        scan.xacts.push(XactRecord {
            lsn: Lsn(lsn),
            kind,
            xid: u32_at(record, 4).unwrap_or(0),
            time,
        });
    }
}
