//! The WAL reader on arbitrary bytes: as given, and laid over a valid synthetic segment (so
//! the fuzzer spends its time past the header checks). It may refuse; it must never panic.
#![no_main]

use lazarus::wal::reader::synthetic::{Builder, SEGMENT};
use lazarus::wal::reader::{ScanOptions, scan_segment};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = scan_segment(data, ScanOptions { collect_xacts: true });
    if data.len() < 4 {
        return;
    }
    let mut b = Builder::new(1, 5);
    for i in 0..64u32 {
        let _ = b.record(i, 10, 0, &vec![0x11; (i as usize * 131) % 3000]);
        let _ = b.commit(i, 1_795_000_000_000_000 + i64::from(i));
    }
    let mut segment = b.data;
    // The first four bytes place the input somewhere in the first 256 KiB.
    let at = (u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize) % (256 << 10);
    let body = &data[4..];
    let end = (at + body.len()).min(SEGMENT);
    segment[at..end].copy_from_slice(&body[..end - at]);
    let _ = scan_segment(&segment, ScanOptions { collect_xacts: true });
});
