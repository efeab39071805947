//! `decompress`: a gzip or zstd file (several members or frames allowed) to plain bytes,
//! streaming, recognised by magic bytes; written under a temporary name and renamed.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::Instant;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use super::files::{PieceWriter, WRITE_PIECE, commit, discard, part_path, prepare_dir};
use super::inputs;
use crate::codec::{self, Compression};
use crate::engine::{Activity, ActivityContext, ActivityError, ActivitySpec, InputSpec, Progress};

static SPEC: ActivitySpec = ActivitySpec {
    name: "decompress",
    summary: "decompress a gzip or zstd file (detected by magic bytes)",
    inputs: &[
        InputSpec {
            name: "src",
            required: true,
            help: "compressed file",
        },
        InputSpec {
            name: "dest",
            required: true,
            help: "output file",
        },
    ],
    outputs: &["path", "size", "compression", "seconds"],
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Inputs {
    src: PathBuf,
    dest: PathBuf,
}

/// The `decompress` activity.
pub struct Decompress;

/// Counts bytes written and reports progress now and then.
struct Counting<'a, W: Write> {
    inner: W,
    written: u64,
    reported: u64,
    ctx: &'a ActivityContext,
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.ctx.cancellation().is_cancelled() {
            return Err(std::io::Error::other("decompression stopped"));
        }
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        if self.written >= self.reported + (16 << 20) {
            self.reported = self.written;
            self.ctx.progress(Progress {
                done: self.written,
                total: None,
                unit: "bytes".into(),
                message: Some("written".into()),
            });
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[async_trait]
impl Activity for Decompress {
    fn spec(&self) -> &'static ActivitySpec {
        &SPEC
    }

    fn input_files(&self) -> &'static [&'static str] {
        &["src"]
    }

    async fn run(&self, ctx: &ActivityContext, inputs: Value) -> Result<Value, ActivityError> {
        let inputs: Inputs = inputs::parse("decompress", inputs)?;
        let started = Instant::now();
        prepare_dir(&inputs.dest)?;
        let part = part_path(&inputs.dest);
        let source = File::open(&inputs.src).map_err(|e| {
            let message = format!("cannot read {}: {e}", inputs.src.display());
            if e.kind() == std::io::ErrorKind::NotFound {
                ActivityError::permanent(message)
            } else {
                ActivityError::retryable(message)
            }
        })?;
        let outcome = tokio::task::block_in_place(|| -> Result<(Compression, u64), String> {
            let (format, mut decoder) =
                codec::auto_decoder(source).map_err(|e| format!("cannot read: {e}"))?;
            let out = File::create(&part)
                .map_err(|e| format!("cannot create {}: {e}", part.display()))?;
            let mut counting = Counting {
                inner: BufWriter::with_capacity(WRITE_PIECE, PieceWriter::new(out, &part)),
                written: 0,
                reported: 0,
                ctx,
            };
            std::io::copy(&mut decoder, &mut counting).map_err(|e| {
                if ctx.cancellation().is_cancelled() {
                    "stopped".to_string()
                } else if super::files::is_write_failure(&e) {
                    e.to_string()
                } else {
                    format!(
                        "{} does not decompress: {e} (truncated or damaged?)",
                        inputs.src.display()
                    )
                }
            })?;
            counting.flush().map_err(|e| e.to_string())?;
            Ok((format, counting.written))
        });
        let (format, written) = match outcome {
            Ok(done) => done,
            Err(message) => {
                discard(&part);
                return Err(if ctx.cancellation().is_cancelled() {
                    ActivityError::cancelled(message)
                } else {
                    ActivityError::permanent(message)
                });
            }
        };
        commit(&part, &inputs.dest)?;
        Ok(json!({
            "path": inputs.dest,
            "size": written,
            "compression": format,
            "seconds": started.elapsed().as_secs_f64(),
        }))
    }
}
