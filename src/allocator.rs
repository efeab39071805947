//! Process-wide allocator settings for the data path.
//!
//! Every chunk of the chunked format (4 MiB) and every WAL segment (16 MiB) passes through
//! buffers of a few MiB. glibc serves such sizes with a fresh `mmap` and returns them with
//! `munmap`, so each new buffer page-faults once per 4 KiB — measured at a third of the CPU
//! time of `wal fetch`. Keeping large buffers on the heap lets the next chunk reuse the
//! pages already mapped.

/// Buffers up to this size come from the heap and are reused.
const MMAP_THRESHOLD: i32 = 64 << 20;
/// Free memory kept at the top of the heap before it is returned to the system.
const TRIM_THRESHOLD: i32 = 256 << 20;

/// Makes the allocator reuse large buffers instead of mapping fresh pages for each one.
/// Call once, at the start of `main`, before any threads exist.
pub fn reuse_large_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's allocation thresholds; called before any other
    // thread can allocate.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}
