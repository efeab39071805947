//! `encrypt`: a plain file (a dump, a base backup) to the chunked format — compressed and
//! encrypted once, in parallel, so every store can be given the very same bytes.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use super::files::{commit, discard, part_path, prepare_dir};
use super::inputs::{self, lenient_opt_u64};
use super::services::Services;
use crate::codec::{Compression, DEFAULT_ZSTD_LEVEL};
use crate::crypto::chunked::{self, DEFAULT_CHUNK_SIZE, EncodeOptions};
use crate::engine::{Activity, ActivityContext, ActivityError, ActivitySpec, InputSpec, Progress};
use crate::parallel::available_threads;

static SPEC: ActivitySpec = ActivitySpec {
    name: "encrypt",
    summary: "compress and encrypt a file into the chunked format",
    inputs: &[
        InputSpec {
            name: "src",
            required: true,
            help: "plain file",
        },
        InputSpec {
            name: "dest",
            required: true,
            help: "encrypted output",
        },
        InputSpec {
            name: "compression",
            required: false,
            help: "zstd (default), gzip or none",
        },
        InputSpec {
            name: "level",
            required: false,
            help: "compression level (default 3 for zstd)",
        },
        InputSpec {
            name: "chunk_size",
            required: false,
            help: "plaintext bytes per chunk (default 4 MiB)",
        },
        InputSpec {
            name: "threads",
            required: false,
            help: "worker threads (default: all cores)",
        },
    ],
    outputs: &[
        "path",
        "size",
        "sha256",
        "plaintext_size",
        "plaintext_sha256",
        "compressed_size",
        "chunks",
        "key_id",
        "compression",
        "seconds",
    ],
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Inputs {
    src: PathBuf,
    dest: PathBuf,
    compression: Option<String>,
    #[serde(default, deserialize_with = "lenient_opt_u64")]
    level: Option<u64>,
    #[serde(default, deserialize_with = "lenient_opt_u64")]
    chunk_size: Option<u64>,
    #[serde(default, deserialize_with = "lenient_opt_u64")]
    threads: Option<u64>,
}

/// The `encrypt` activity.
pub struct Encrypt {
    services: Arc<Services>,
}

impl Encrypt {
    /// The activity with these keys.
    pub fn new(services: Arc<Services>) -> Self {
        Self { services }
    }
}

/// Reports bytes read now and then, and stops when the attempt is cancelled.
struct Watched<'a, R: Read> {
    inner: R,
    read: u64,
    reported: u64,
    total: Option<u64>,
    ctx: &'a ActivityContext,
}

impl<R: Read> Read for Watched<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.ctx.cancellation().is_cancelled() {
            return Err(std::io::Error::other("encryption stopped"));
        }
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read >= self.reported + (16 << 20) || n == 0 {
            self.reported = self.read;
            self.ctx.progress(Progress {
                done: self.read,
                total: self.total,
                unit: "bytes".into(),
                message: Some("compressing and encrypting".into()),
            });
        }
        Ok(n)
    }
}

#[async_trait]
impl Activity for Encrypt {
    fn spec(&self) -> &'static ActivitySpec {
        &SPEC
    }

    fn check_inputs(&self, inputs: &Value) -> Result<(), String> {
        match inputs.get("compression").and_then(Value::as_str) {
            Some(name) if !name.contains("${") && Compression::from_name(name).is_none() => Err(
                format!("compression \"{name}\" is not known; use zstd, gzip or none"),
            ),
            _ => Ok(()),
        }
    }

    fn input_files(&self) -> &'static [&'static str] {
        &["src"]
    }

    async fn run(&self, ctx: &ActivityContext, inputs: Value) -> Result<Value, ActivityError> {
        let inputs: Inputs = inputs::parse("encrypt", inputs)?;
        let started = Instant::now();
        let keys = self
            .services
            .keys()
            .map_err(|e| ActivityError::permanent(e.to_string()))?;
        let key = keys
            .primary()
            .map_err(|e| ActivityError::permanent(e.to_string()))?
            .clone();
        let compression = match inputs.compression.as_deref() {
            None => Compression::Zstd,
            Some(name) => Compression::from_name(name).ok_or_else(|| {
                ActivityError::permanent(format!(
                    "compression \"{name}\" is not known; use zstd, gzip or none"
                ))
            })?,
        };
        let options = EncodeOptions {
            compression,
            level: inputs
                .level
                .map_or(DEFAULT_ZSTD_LEVEL, |l| l.clamp(1, 19) as i32),
            chunk_size: inputs.chunk_size.map_or(DEFAULT_CHUNK_SIZE, |c| c as usize),
            threads: inputs
                .threads
                .map_or_else(available_threads, |t| t.clamp(1, 64) as usize),
        };
        prepare_dir(&inputs.dest)?;
        let part = part_path(&inputs.dest);
        let source = File::open(&inputs.src).map_err(|e| {
            ActivityError::permanent(format!("cannot read {}: {e}", inputs.src.display()))
        })?;
        let total = source.metadata().ok().map(|m| m.len());
        let summary = tokio::task::block_in_place(|| {
            let out = File::create(&part)
                .map_err(|e| format!("cannot create {}: {e}", part.display()))?;
            let mut writer = BufWriter::with_capacity(4 << 20, out);
            let reader = Watched {
                inner: BufReader::with_capacity(4 << 20, source),
                read: 0,
                reported: 0,
                total,
                ctx,
            };
            let summary =
                chunked::encode(reader, &mut writer, &key, options).map_err(|e| e.to_string())?;
            writer
                .flush()
                .map_err(|e| format!("cannot write {}: {e}", part.display()))?;
            Ok::<_, String>(summary)
        });
        let summary = match summary {
            Ok(s) => s,
            Err(message) => {
                discard(&part);
                return Err(if ctx.cancellation().is_cancelled() {
                    ActivityError::cancelled(message)
                } else {
                    ActivityError::retryable(message)
                });
            }
        };
        commit(&part, &inputs.dest)?;
        Ok(json!({
            "path": inputs.dest,
            "size": summary.encoded_size,
            "sha256": summary.encoded_sha256,
            "plaintext_size": summary.plaintext_size,
            "plaintext_sha256": summary.plaintext_sha256,
            "compressed_size": summary.compressed_size,
            "chunks": summary.chunks,
            "key_id": summary.key_id,
            "compression": compression,
            "seconds": started.elapsed().as_secs_f64(),
        }))
    }
}
