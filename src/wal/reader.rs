//! Lazarus's own WAL reader: walks one segment's pages and records and reports what a
//! catalog needs — the LSN range, and the commit/abort timestamps (`xl_xact_commit.xact_time`)
//! that decide which segments a point-in-time target needs.
//!
//! It reads PostgreSQL 15–18 (page magic 0xD110, 0xD113, 0xD116, 0xD118; the page, record
//! and transaction layouts it touches are the same in all four — 18 grew the dropped-stats
//! items of a commit's xinfo area from 12 to 16 bytes, which this reader never walks) and
//! refuses other magics by name. It never panics on bad input: every length is checked against the segment.
//!
//! A record that begins in one segment and ends in the next belongs to the segment it starts
//! in, as `pg_waldump` places it by its start LSN: that scan reads the part it has (a commit's
//! `xact_time` lies in its first bytes) and the next segment's scan skips the rest as a
//! continuation. Its CRC covers bytes the segment does not hold, so only its header and back
//! link are checked.

use serde::{Deserialize, Serialize};

use super::WalError;
use super::names::{Lsn, SegmentName};

/// Page magics this build reads, with the PostgreSQL major version that writes each.
pub const PAGE_MAGICS: &[(u16, u32)] = &[(0xD110, 15), (0xD113, 16), (0xD116, 17), (0xD118, 18)];

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
const XLOG_RESTORE_POINT: u8 = 0x70;
/// `MAXFNAMELEN`: the room `pg_create_restore_point` names have, NUL included.
const RESTORE_POINT_NAME: usize = 64;
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

/// A named restore point (`pg_create_restore_point`) found in the WAL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestorePoint {
    /// Its name.
    pub name: String,
    /// When it was made, microseconds since the Unix epoch.
    pub time: i64,
    /// Where its record starts.
    pub lsn: Lsn,
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
    /// Where the last commit/abort record in the segment (by position) starts: a recovery
    /// to the archive's last transaction end stops right after it.
    #[serde(default)]
    pub last_xact_lsn: Option<Lsn>,
    /// The segment was ended early by `pg_switch_wal()` or `archive_timeout`.
    pub switched: bool,
    /// Valid WAL stops before the segment's end (a partial segment, or recycled bytes).
    pub ends_early: bool,
    /// The last record starts here and ends in the next segment: replaying it (or stopping
    /// at it) needs that segment too.
    #[serde(default)]
    pub runs_off: bool,
    /// That record is a transaction end: stopping at it needs the next segment.
    #[serde(default)]
    pub runs_off_xact: bool,
    /// That record could not be read from this segment alone (its header, or a transaction
    /// end's time, lies past the end): read again with the next segment
    /// ([`scan_segment_continued`]) to count it here.
    #[serde(default)]
    pub split_tail: bool,
    /// With `runs_off_xact`: the latest transaction end among the records that end in this
    /// segment (what replay can reach without the next one).
    #[serde(default)]
    pub last_complete_xact_time: Option<i64>,
    /// The smallest and largest transaction id among the transaction ends that begin in
    /// this segment (a `--to-xid` target ends in a segment whose range holds it).
    #[serde(default)]
    pub xid_range: Option<(u32, u32)>,
    /// Named restore points made in this segment, in order.
    #[serde(default)]
    pub restore_points: Vec<RestorePoint>,
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
    scan_segment_continued(data, None, options)
}

/// Reads one WAL segment; with `next` (the bytes of the segment after it, as far as they
/// are written), a record that begins in this segment and ends in the next is read whole —
/// a commit whose header or `xact_time` lies past this segment's end is then counted here,
/// in the segment it starts in, as `pg_waldump` places it. See [`SegmentScan::split_tail`].
pub fn scan_segment_continued(
    data: &[u8],
    next: Option<&[u8]>,
    options: ScanOptions,
) -> Result<SegmentScan, WalError> {
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
        last_xact_lsn: None,
        switched: false,
        ends_early: false,
        runs_off: false,
        runs_off_xact: false,
        split_tail: false,
        last_complete_xact_time: None,
        xid_range: None,
        restore_points: Vec::new(),
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
        // Most records lie within one page: read them in place; gather the others.
        let page_end = (pos / page_size + 1) * page_size;
        let in_page = u32_at(data, pos)
            .map(|t| t as usize)
            .filter(|&t| (RECORD_HEADER..=page_end - pos).contains(&t));
        let (rec, end): (&[u8], usize) = match in_page {
            Some(total) => (&data[pos..pos + total], pos + total),
            None => match gather(data, &layout, pos, &mut record) {
                Gathered::Complete(end) => (&record[..], end),
                Gathered::RunsOff => {
                    let next_layout = Layout {
                        magic,
                        page_size,
                        start: start + segment_size,
                    };
                    if let Some(next) = next
                        && continue_into(next, &next_layout, &mut record)
                        && record_is_valid(&record, prev)
                    {
                        // The whole record, read across the boundary: it belongs here.
                        scan.records += 1;
                        scan.runs_off = true;
                        let (rmid, info) = (record[17], record[16]);
                        if rmid == RM_XLOG_ID
                            && info & 0xF0 == XLOG_RESTORE_POINT
                            && let Some(point) =
                                main_data(&record).and_then(|m| restore_point(m, record_lsn))
                        {
                            scan.restore_points.push(point);
                        }
                        if rmid == RM_XACT_ID
                            && let Some(main) = main_data(&record)
                        {
                            let before = scan.commits + scan.aborts;
                            let complete = scan.last_xact_time;
                            note_xact(&mut scan, &record, main, record_lsn, info, options);
                            scan.runs_off_xact = scan.commits + scan.aborts > before;
                            if scan.runs_off_xact {
                                scan.last_complete_xact_time = complete;
                            }
                        }
                        scan.end_lsn = Lsn(start + segment_size);
                        break;
                    }
                    // Without the next segment, a record whose header, or whose transaction
                    // time, lies past the end cannot be read here: say so, so the caller
                    // can read again with the next segment at hand.
                    scan.split_tail = record.len() < RECORD_HEADER
                        || (record.get(17) == Some(&RM_XACT_ID)
                            && leading_main_data(&record).is_none_or(|m| m.len() < 8));
                    if header_is_plausible(&record, prev) {
                        scan.records += 1;
                        scan.runs_off = true;
                        if record[17] == RM_XACT_ID
                            && let Some(main) = leading_main_data(&record)
                        {
                            let before = scan.commits + scan.aborts;
                            let complete = scan.last_xact_time;
                            note_xact(&mut scan, &record, main, record_lsn, record[16], options);
                            scan.runs_off_xact = scan.commits + scan.aborts > before;
                            if scan.runs_off_xact {
                                scan.last_complete_xact_time = complete;
                            }
                        }
                    }
                    scan.end_lsn = Lsn(start + segment_size);
                    break;
                }
                Gathered::End => {
                    scan.ends_early = true;
                    break;
                }
            },
        };
        if !record_is_valid(rec, prev) {
            scan.ends_early = true;
            break;
        }
        scan.records += 1;
        scan.end_lsn = Lsn(start + end as u64);
        prev = Some(record_lsn);
        let rmid = rec[17];
        let info = rec[16];
        if rmid == RM_XLOG_ID && info & 0xF0 == XLOG_SWITCH {
            scan.switched = true;
            break;
        }
        if rmid == RM_XLOG_ID
            && info & 0xF0 == XLOG_RESTORE_POINT
            && let Some(point) = main_data(rec).and_then(|main| restore_point(main, record_lsn))
        {
            scan.restore_points.push(point);
        }
        if rmid == RM_XACT_ID
            && let Some(main) = main_data(rec)
        {
            note_xact(&mut scan, rec, main, record_lsn, info, options);
        }
        pos = end;
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

/// Appends the rest of a record begun in the previous segment from `next`'s first pages
/// (each marked as continuing it, with the matching remaining length); whether the record
/// is then whole.
fn continue_into(next: &[u8], layout: &Layout, out: &mut Vec<u8>) -> bool {
    let Some(total) = u32_at(out, 0).map(|t| t as usize) else {
        return false;
    };
    if !(RECORD_HEADER..=MAX_RECORD).contains(&total) {
        return false;
    }
    let mut cursor = 0usize;
    while out.len() < total {
        let Some(page) = layout.page(next, cursor) else {
            return false;
        };
        let remaining = total - out.len();
        if page.info & XLP_FIRST_IS_CONTRECORD == 0 || page.rem_len as usize != remaining {
            return false;
        }
        let body = cursor + page.header_len;
        let take = remaining.min(layout.page_size - page.header_len);
        let Some(bytes) = next.get(body..body + take) else {
            return false;
        };
        out.extend_from_slice(bytes);
        cursor += layout.page_size;
    }
    true
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

/// Whether the start of a record that runs past the segment's end looks like a record: a
/// whole header whose back link points at the record before it.
fn header_is_plausible(record: &[u8], prev: Option<u64>) -> bool {
    let (Some(total), Some(link)) = (u32_at(record, 0), u64_at(record, 8)) else {
        return false;
    };
    // The whole header is needed (rmid and info are at 16 and 17); PostgreSQL may split a
    // header across the segment end, and then this segment cannot say what the record is.
    record.len() >= RECORD_HEADER
        && (total as usize) > record.len()
        && (RECORD_HEADER..=MAX_RECORD).contains(&(total as usize))
        && prev.is_none_or(|p| p == link)
}

/// The beginning of the main data of a record of which only the first bytes are at hand
/// (it runs into the next segment); `None` when it has block references or its main data
/// starts beyond those bytes.
fn leading_main_data(record: &[u8]) -> Option<&[u8]> {
    let mut at = RECORD_HEADER;
    loop {
        match *record.get(at)? {
            XLR_BLOCK_ID_DATA_SHORT => return record.get(at + 2..),
            XLR_BLOCK_ID_DATA_LONG => return record.get(at + 5..),
            XLR_BLOCK_ID_ORIGIN => at += 3,
            XLR_BLOCK_ID_TOPLEVEL_XID => at += 5,
            _ => return None,
        }
    }
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

fn note_xact(
    scan: &mut SegmentScan,
    record: &[u8],
    main: &[u8],
    lsn: u64,
    info: u8,
    options: ScanOptions,
) {
    let kind = match info & XLOG_XACT_OPMASK {
        XLOG_XACT_COMMIT => XactKind::Commit,
        XLOG_XACT_ABORT => XactKind::Abort,
        XLOG_XACT_COMMIT_PREPARED => XactKind::CommitPrepared,
        XLOG_XACT_ABORT_PREPARED => XactKind::AbortPrepared,
        _ => return,
    };
    let Some(time) = u64_at(main, 0) else {
        return;
    };
    let time = (time as i64).saturating_add(PG_EPOCH_OFFSET_MICROS);
    match kind {
        XactKind::Commit | XactKind::CommitPrepared => scan.commits += 1,
        XactKind::Abort | XactKind::AbortPrepared => scan.aborts += 1,
    }
    scan.first_xact_time = Some(scan.first_xact_time.map_or(time, |t| t.min(time)));
    scan.last_xact_time = Some(scan.last_xact_time.map_or(time, |t| t.max(time)));
    scan.last_xact_lsn = Some(Lsn(lsn));
    // COMMIT/ABORT PREPARED records carry no xid of their own in the header (0).
    let xid = u32_at(record, 4).unwrap_or(0);
    if xid != 0 {
        scan.xid_range = Some(match scan.xid_range {
            Some((lo, hi)) => (lo.min(xid), hi.max(xid)),
            None => (xid, xid),
        });
    }
    if options.collect_xacts {
        scan.xacts.push(XactRecord {
            lsn: Lsn(lsn),
            kind,
            xid: u32_at(record, 4).unwrap_or(0),
            time,
        });
    }
}

/// `xl_restore_point`: the time, then the NUL-terminated name.
fn restore_point(main: &[u8], lsn: u64) -> Option<RestorePoint> {
    let time = (u64_at(main, 0)? as i64).saturating_add(PG_EPOCH_OFFSET_MICROS);
    let name = main.get(8..(8 + RESTORE_POINT_NAME).min(main.len()))?;
    let len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Some(RestorePoint {
        name: String::from_utf8_lossy(&name[..len]).into_owned(),
        time,
        lsn: Lsn(lsn),
    })
}

/// Builds small, valid WAL segments for tests and fuzzing seeds.
#[doc(hidden)]
pub mod synthetic {
    use super::*;

    /// Page size of synthetic segments.
    pub const PAGE: usize = 8192;
    /// Segment size of synthetic segments (the smallest PostgreSQL allows).
    pub const SEGMENT: usize = 1 << 20;

    /// A segment under construction.
    pub struct Builder {
        /// The bytes.
        pub data: Vec<u8>,
        pos: usize,
        start: u64,
        tli: u32,
        prev: Option<u64>,
    }

    fn page_header(info: u16, tli: u32, addr: u64, rem_len: u32) -> Vec<u8> {
        let mut h = vec![0u8; SHORT_PAGE_HEADER];
        h[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        h[2..4].copy_from_slice(&info.to_le_bytes());
        h[4..8].copy_from_slice(&tli.to_le_bytes());
        h[8..16].copy_from_slice(&addr.to_le_bytes());
        h[16..20].copy_from_slice(&rem_len.to_le_bytes());
        h
    }

    impl Builder {
        /// Segment `segno` of timeline `tli`.
        pub fn new(tli: u32, segno: u64) -> Builder {
            let start = segno * SEGMENT as u64;
            let mut data = vec![0u8; SEGMENT];
            let mut h = page_header(XLP_LONG_HEADER, tli, start, 0);
            h.resize(LONG_PAGE_HEADER, 0);
            h[24..32].copy_from_slice(&7u64.to_le_bytes());
            h[32..36].copy_from_slice(&(SEGMENT as u32).to_le_bytes());
            h[36..40].copy_from_slice(&(PAGE as u32).to_le_bytes());
            data[..LONG_PAGE_HEADER].copy_from_slice(&h);
            Builder {
                data,
                pos: LONG_PAGE_HEADER,
                start,
                tli,
                prev: None,
            }
        }

        /// Appends a record with this resource manager, info and main data; returns its LSN.
        pub fn record(&mut self, xid: u32, rmid: u8, info: u8, main: &[u8]) -> Option<u64> {
            let mut body = Vec::new();
            if main.len() < 256 {
                body.push(XLR_BLOCK_ID_DATA_SHORT);
                body.push(main.len() as u8);
            } else {
                body.push(XLR_BLOCK_ID_DATA_LONG);
                body.extend_from_slice(&(main.len() as u32).to_le_bytes());
            }
            body.extend_from_slice(main);
            let total = RECORD_HEADER + body.len();
            let mut rec = vec![0u8; RECORD_HEADER];
            rec[0..4].copy_from_slice(&(total as u32).to_le_bytes());
            rec[4..8].copy_from_slice(&xid.to_le_bytes());
            rec[8..16].copy_from_slice(&self.prev.unwrap_or(0).to_le_bytes());
            rec[16] = info;
            rec[17] = rmid;
            rec.extend_from_slice(&body);
            let crc = crc32c::crc32c_append(
                crc32c::crc32c(&rec[RECORD_HEADER..]),
                &rec[..RECORD_CRC_OFFSET],
            );
            rec[20..24].copy_from_slice(&crc.to_le_bytes());
            self.pos = (self.pos + 7) & !7;
            if self.pos.is_multiple_of(PAGE) {
                self.page(0, 0)?;
            }
            let lsn = self.start + self.pos as u64;
            let mut off = 0;
            while off < rec.len() {
                if self.pos.is_multiple_of(PAGE) {
                    self.page(XLP_FIRST_IS_CONTRECORD, (rec.len() - off) as u32)?;
                }
                let n = (PAGE - self.pos % PAGE).min(rec.len() - off);
                self.data[self.pos..self.pos + n].copy_from_slice(&rec[off..off + n]);
                self.pos += n;
                off += n;
            }
            self.prev = Some(lsn);
            Some(lsn)
        }

        fn page(&mut self, info: u16, rem_len: u32) -> Option<()> {
            if self.pos + SHORT_PAGE_HEADER > SEGMENT {
                return None;
            }
            let h = page_header(info, self.tli, self.start + self.pos as u64, rem_len);
            self.data[self.pos..self.pos + SHORT_PAGE_HEADER].copy_from_slice(&h);
            self.pos += SHORT_PAGE_HEADER;
            Some(())
        }

        /// Adds filler records until the next record would start `offset` bytes into a page
        /// (`offset` a multiple of 8, past the page header).
        pub fn pad_to(&mut self, offset: usize) -> Option<()> {
            loop {
                let q = ((self.pos + 7) & !7) % PAGE;
                if q == offset {
                    return Some(());
                }
                let need = if q < offset { offset - q } else { PAGE - q };
                let len = match need {
                    26..=281 => Some(need - 26),
                    282.. => Some(need - 29),
                    _ => None,
                };
                match len {
                    Some(len) => self.record(0, 10, 0, &vec![0; len])?,
                    None => self.record(0, 10, 0, &[])?,
                };
            }
        }

        /// A commit at `unix_micros`.
        pub fn commit(&mut self, xid: u32, unix_micros: i64) -> Option<u64> {
            let time = unix_micros - PG_EPOCH_OFFSET_MICROS;
            self.record(xid, RM_XACT_ID, XLOG_XACT_COMMIT, &time.to_le_bytes())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::synthetic::{Builder, PAGE};
    use super::*;

    const T: i64 = 1_795_000_000_000_000;

    #[test]
    fn records_restore_points_and_the_xid_range_of_transaction_ends() {
        let mut b = Builder::new(1, 5);
        b.commit(700, T).unwrap();
        let mut point = ((T - PG_EPOCH_OFFSET_MICROS + 5) as u64)
            .to_le_bytes()
            .to_vec();
        let mut name = b"before_migration".to_vec();
        name.resize(RESTORE_POINT_NAME, 0);
        point.extend_from_slice(&name);
        let at = b.record(0, RM_XLOG_ID, XLOG_RESTORE_POINT, &point).unwrap();
        b.commit(650, T + 10).unwrap();
        b.commit(702, T + 20).unwrap();
        // A record of another resource manager with the same info bits is no restore point.
        b.record(0, 10, XLOG_RESTORE_POINT, &point).unwrap();
        let scan = scan_segment(&b.data, ScanOptions::default()).unwrap();
        assert_eq!(
            scan.restore_points,
            vec![RestorePoint {
                name: "before_migration".into(),
                time: T + 5,
                lsn: Lsn(at),
            }]
        );
        assert_eq!(scan.xid_range, Some((650, 702)));
    }

    #[test]
    fn reads_commit_times_across_page_boundaries() {
        let mut b = Builder::new(1, 3);
        let mut lsns = Vec::new();
        for i in 0..399u32 {
            // Filler of varying size pushes commits across page boundaries.
            b.record(i, 10, 0, &vec![0xAB; 100 + (i as usize * 37) % 900])
                .unwrap();
            lsns.push(b.commit(i, T + i64::from(i) * 1000).unwrap());
        }
        // And one whose very header is split by a page boundary.
        b.pad_to(PAGE - 16).unwrap();
        lsns.push(b.commit(399, T + 399_000).unwrap());
        let scan = scan_segment(
            &b.data,
            ScanOptions {
                collect_xacts: true,
            },
        )
        .unwrap();
        assert_eq!(
            scan.name,
            SegmentName {
                timeline: 1,
                segno: 3
            }
        );
        assert_eq!(scan.commits, 400);
        assert_eq!(scan.first_xact_time, Some(T));
        assert_eq!(scan.last_xact_time, Some(T + 399_000));
        assert_eq!(scan.xacts.iter().map(|x| x.lsn.0).collect::<Vec<_>>(), lsns);
        assert!(scan.ends_early, "the rest of the segment is empty");
        let last = lsns[399] % PAGE as u64;
        assert!(
            last + RECORD_HEADER as u64 > PAGE as u64,
            "the last commit's header straddles a page ({last})"
        );
    }

    #[test]
    fn a_header_split_by_the_segment_end_is_not_read_past_the_bytes_there() {
        // A record that starts 16 bytes before the segment's end: the first 16 bytes of its
        // header (length, xid, back link) are all this segment holds.
        let mut partial = vec![0u8; 16];
        partial[0..4].copy_from_slice(&100u32.to_le_bytes());
        assert!(!header_is_plausible(&partial, None));
        partial.resize(RECORD_HEADER, 0);
        assert!(header_is_plausible(&partial, None));
    }

    #[test]
    fn a_damaged_record_ends_the_valid_wal() {
        let mut b = Builder::new(1, 3);
        b.commit(1, T).unwrap();
        let second = b.commit(2, T + 1).unwrap();
        b.commit(3, T + 2).unwrap();
        let at = (second - 3 * synthetic::SEGMENT as u64) as usize + RECORD_HEADER + 3;
        b.data[at] ^= 0xFF;
        let scan = scan_segment(&b.data, ScanOptions::default()).unwrap();
        assert_eq!(scan.commits, 1);
        assert!(scan.ends_early);
    }

    #[test]
    fn a_wal_switch_ends_the_segment() {
        let mut b = Builder::new(2, 9);
        b.commit(1, T).unwrap();
        b.record(0, RM_XLOG_ID, XLOG_SWITCH, &[]).unwrap();
        b.commit(2, T + 5).unwrap();
        let scan = scan_segment(&b.data, ScanOptions::default()).unwrap();
        assert!(scan.switched);
        assert_eq!(scan.commits, 1);
    }

    #[test]
    fn never_panics_on_damaged_segments() {
        let mut b = Builder::new(1, 3);
        for i in 0..300u32 {
            b.record(i, 10, 0, &vec![0x5A; (i as usize * 53) % 1200])
                .unwrap();
            b.commit(i, T + i64::from(i)).unwrap();
        }
        let clean = b.data.clone();
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..300 {
            let mut data = clean.clone();
            for _ in 0..(1 + round % 40) {
                let at = (next() % 200_000) as usize;
                data[at] = next() as u8;
            }
            let _ = scan_segment(
                &data,
                ScanOptions {
                    collect_xacts: true,
                },
            );
            let cut = (next() % data.len() as u64) as usize;
            let _ = scan_segment(&data[..cut], ScanOptions::default());
        }
    }
}
