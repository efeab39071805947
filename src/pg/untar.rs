//! Unpacks pg_basebackup's tar stream into a new data directory, as a `Write` sink, so the
//! decrypted stream goes straight to disk without an intermediate tar file.
//!
//! `global/pg_control` is held back and written last (pgBackRest does the same): a restore
//! that stops half-way leaves a directory PostgreSQL refuses to start, never a half-copied
//! cluster that starts. Paths that would leave the directory are refused.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Component, Path, PathBuf};

const BLOCK: usize = 512;
const PG_CONTROL: &str = "global/pg_control";
/// Largest single write into a restored file. The page cache sizes its folios by the write
/// that creates them, and ext4 (large folios, Linux 6.16+) then walks a whole folio for every
/// 8 KiB page PostgreSQL writes into it: data files unpacked with 1 MiB writes made WAL
/// replay three times slower (11.1 s against 3.4 s with 64 KiB writes, which also unpack
/// faster than 8 KiB or 256 KiB ones; benches/RESULTS.md).
const WRITE_SIZE: usize = 64 << 10;

enum State {
    /// Collecting a 512-byte header.
    Header,
    /// Copying a file's bytes; then padding to the block.
    Body {
        remaining: u64,
        padding: usize,
        out: Option<BufWriter<File>>,
        control: bool,
    },
    /// Skipping the padding after a body.
    Padding(usize),
    /// Two zero blocks seen: the archive is over.
    Done,
}

/// Streams a tar archive into `root`.
pub struct Untar {
    root: PathBuf,
    state: State,
    header: Vec<u8>,
    zero_blocks: usize,
    control: Vec<u8>,
    files: u64,
    bytes: u64,
    owner: Option<(nix::unistd::Uid, nix::unistd::Gid)>,
}

fn bad(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

fn octal(field: &[u8]) -> io::Result<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        // Base-256 (GNU) for sizes beyond 8 GiB.
        let mut value: u64 = u64::from(field[0] & 0x7F);
        for &b in &field[1..] {
            value = value
                .checked_mul(256)
                .ok_or_else(|| bad("tar size overflows"))?
                + u64::from(b);
        }
        return Ok(value);
    }
    let text: String = field
        .iter()
        .take_while(|&&b| b != 0 && b != b' ')
        .map(|&b| b as char)
        .collect();
    let text = text.trim();
    if text.is_empty() {
        return Ok(0);
    }
    u64::from_str_radix(text, 8)
        .map_err(|_| bad(format!("bad octal field {text:?} in a tar header")))
}

fn name(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).to_string()
}

impl Untar {
    /// An extractor into `root` (created if missing).
    pub fn new(root: &Path) -> io::Result<Untar> {
        std::fs::create_dir_all(root)?;
        Ok(Untar {
            root: root.to_path_buf(),
            state: State::Header,
            header: Vec::with_capacity(BLOCK),
            zero_blocks: 0,
            control: Vec::new(),
            files: 0,
            bytes: 0,
            owner: None,
        })
    }

    /// Gives everything written to this user and group (the server's, when we are root).
    pub fn with_owner(mut self, owner: Option<(nix::unistd::Uid, nix::unistd::Gid)>) -> Untar {
        self.owner = owner;
        if let Some((uid, gid)) = owner {
            let _ = nix::unistd::chown(&self.root, Some(uid), Some(gid));
        }
        self
    }

    fn own(&self, path: &Path) -> io::Result<()> {
        if let Some((uid, gid)) = self.owner {
            nix::unistd::chown(path, Some(uid), Some(gid)).map_err(io::Error::from)?;
        }
        Ok(())
    }

    fn make_dirs(&self, dir: &Path) -> io::Result<()> {
        if dir.exists() {
            return Ok(());
        }
        if let Some(parent) = dir.parent() {
            self.make_dirs(parent)?;
        }
        std::fs::create_dir(dir)?;
        set_mode(dir, 0o700)?;
        self.own(dir)
    }

    fn safe_path(&self, relative: &str) -> io::Result<PathBuf> {
        let relative = relative.trim_start_matches("./");
        let path = Path::new(relative);
        if relative.is_empty()
            || path
                .components()
                .any(|c| !matches!(c, Component::Normal(_)))
        {
            return Err(bad(format!(
                "tar entry {relative:?} would leave the data directory"
            )));
        }
        Ok(self.root.join(path))
    }

    fn start_entry(&mut self) -> io::Result<()> {
        let h = std::mem::take(&mut self.header);
        if h.iter().all(|&b| b == 0) {
            self.zero_blocks += 1;
            if self.zero_blocks == 2 {
                self.state = State::Done;
            }
            self.header = h;
            self.header.clear();
            return Ok(());
        }
        self.zero_blocks = 0;
        let stored: u64 = octal(&h[148..156])?;
        let sum: u64 = h
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    u64::from(b' ')
                } else {
                    u64::from(b)
                }
            })
            .sum();
        if stored != sum {
            return Err(bad(
                "tar header checksum mismatch: the backup stream is damaged",
            ));
        }
        let mut entry = name(&h[0..100]);
        if &h[257..262] == b"ustar" {
            let prefix = name(&h[345..500]);
            if !prefix.is_empty() {
                entry = format!("{prefix}/{entry}");
            }
        }
        let mode = octal(&h[100..108])? as u32 & 0o7777;
        let size = octal(&h[124..136])?;
        let kind = h[156];
        let padding = ((BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64) as usize;
        self.header = h;
        self.header.clear();
        match kind {
            b'5' => {
                let path = self.safe_path(entry.trim_end_matches('/'))?;
                self.make_dirs(&path)?;
                self.state = State::Padding(0);
            }
            b'0' | 0 => {
                let control = entry.trim_start_matches("./") == PG_CONTROL;
                let out = if control {
                    None
                } else {
                    let path = self.safe_path(&entry)?;
                    if let Some(dir) = path.parent() {
                        self.make_dirs(dir)?;
                    }
                    let file = File::create(&path)?;
                    set_mode(&path, if mode == 0 { 0o600 } else { mode & 0o700 })?;
                    self.own(&path)?;
                    Some(BufWriter::with_capacity(WRITE_SIZE, file))
                };
                self.files += 1;
                self.state = State::Body {
                    remaining: size,
                    padding,
                    out,
                    control,
                };
            }
            b'2' => {
                return Err(bad(format!(
                    "tar entry {entry:?} is a symbolic link (a tablespace): restoring clusters with tablespaces is not supported yet"
                )));
            }
            b'x' | b'g' => {
                // pax headers carry nothing PostgreSQL needs; skip their bodies.
                self.state = State::Body {
                    remaining: size,
                    padding,
                    out: None,
                    control: false,
                };
            }
            other => {
                return Err(bad(format!(
                    "tar entry {entry:?} has type {:?}, which a base backup never holds",
                    other as char
                )));
            }
        }
        Ok(())
    }

    /// Writes `global/pg_control` — the last step — and flushes. Call after the stream ends.
    pub fn finish(mut self) -> io::Result<UntarSummary> {
        if let State::Body {
            out: Some(mut out), ..
        } = std::mem::replace(&mut self.state, State::Done)
        {
            out.flush()?;
        }
        if self.control.is_empty() {
            return Err(bad(
                "the backup holds no global/pg_control: it is incomplete or not a base backup",
            ));
        }
        let path = self.root.join(PG_CONTROL);
        if let Some(dir) = path.parent() {
            self.make_dirs(dir)?;
        }
        let mut file = File::create(&path)?;
        file.write_all(&self.control)?;
        file.sync_all()?;
        set_mode(&path, 0o600)?;
        self.own(&path)?;
        set_mode(&self.root, 0o700)?;
        Ok(UntarSummary {
            files: self.files,
            bytes: self.bytes,
        })
    }
}

fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// What an unpack wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UntarSummary {
    /// Files written.
    pub files: u64,
    /// Bytes of file content written.
    pub bytes: u64,
}

impl Write for Untar {
    fn write(&mut self, mut buf: &[u8]) -> io::Result<usize> {
        let total = buf.len();
        while !buf.is_empty() {
            match &mut self.state {
                State::Done => return Ok(total),
                State::Header => {
                    let take = (BLOCK - self.header.len()).min(buf.len());
                    self.header.extend_from_slice(&buf[..take]);
                    buf = &buf[take..];
                    if self.header.len() == BLOCK {
                        self.start_entry()?;
                    }
                }
                State::Padding(n) => {
                    let take = (*n).min(buf.len());
                    *n -= take;
                    buf = &buf[take..];
                    if *n == 0 {
                        self.state = State::Header;
                    }
                }
                State::Body {
                    remaining,
                    padding,
                    out,
                    control,
                } => {
                    let take = (*remaining).min(buf.len() as u64) as usize;
                    if *control {
                        self.control.extend_from_slice(&buf[..take]);
                    } else if let Some(out) = out {
                        for piece in buf[..take].chunks(WRITE_SIZE) {
                            out.write_all(piece)?;
                        }
                    }
                    self.bytes += take as u64;
                    *remaining -= take as u64;
                    buf = &buf[take..];
                    if *remaining == 0 {
                        if let Some(mut done) = out.take() {
                            done.flush()?;
                        }
                        let pad = *padding;
                        self.state = if pad == 0 {
                            State::Header
                        } else {
                            State::Padding(pad)
                        };
                    }
                }
            }
        }
        Ok(total)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Watches a tar stream go by and keeps the last `keep` bytes of the files it is asked
/// about (e.g. the `WAL-Ranges` at the end of pg_basebackup's `backup_manifest`).
pub struct TarTail {
    wanted: Vec<String>,
    keep: usize,
    header: Vec<u8>,
    remaining: u64,
    padding: u64,
    current: Option<usize>,
    tails: Vec<Vec<u8>>,
    broken: bool,
}

impl TarTail {
    /// Watches for these file names.
    pub fn new(wanted: &[&str], keep: usize) -> TarTail {
        TarTail {
            wanted: wanted.iter().map(|s| s.to_string()).collect(),
            keep,
            header: Vec::with_capacity(BLOCK),
            remaining: 0,
            padding: 0,
            current: None,
            tails: vec![Vec::new(); wanted.len()],
            broken: false,
        }
    }

    /// The kept tail of a watched file (empty if it never went by).
    pub fn tail(&self, file: &str) -> &[u8] {
        self.wanted
            .iter()
            .position(|w| w == file)
            .map_or(&[][..], |i| &self.tails[i][..])
    }

    /// Feeds the next bytes of the stream.
    pub fn feed(&mut self, mut buf: &[u8]) {
        while !buf.is_empty() && !self.broken {
            if self.remaining > 0 {
                let take = self.remaining.min(buf.len() as u64) as usize;
                if let Some(i) = self.current {
                    let tail = &mut self.tails[i];
                    tail.extend_from_slice(&buf[..take]);
                    if tail.len() > self.keep {
                        let cut = tail.len() - self.keep;
                        tail.drain(..cut);
                    }
                }
                self.remaining -= take as u64;
                buf = &buf[take..];
            } else if self.padding > 0 {
                let take = self.padding.min(buf.len() as u64) as usize;
                self.padding -= take as u64;
                buf = &buf[take..];
            } else {
                let take = (BLOCK - self.header.len()).min(buf.len());
                self.header.extend_from_slice(&buf[..take]);
                buf = &buf[take..];
                if self.header.len() == BLOCK {
                    let h = std::mem::take(&mut self.header);
                    if h.iter().any(|&b| b != 0) {
                        match octal(&h[124..136]) {
                            Ok(size) => {
                                let entry = name(&h[0..100]);
                                let entry = entry.trim_start_matches("./");
                                self.current = self.wanted.iter().position(|w| w == entry);
                                if let Some(i) = self.current {
                                    self.tails[i].clear();
                                }
                                self.remaining = size;
                                self.padding = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
                            }
                            Err(_) => self.broken = true,
                        }
                    }
                    self.header = h;
                    self.header.clear();
                }
            }
        }
    }
}
