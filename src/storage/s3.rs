//! A store in an S3-compatible bucket (Cloudflare R2, Backblaze B2, MinIO, AWS S3), on
//! aws-sdk-s3: ranged GETs for resumable downloads, multipart uploads for large files.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream as SdkStream, Length};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use tokio::sync::OnceCell;

use super::{
    Body, ByteStream, Condition, ConditionalError, ObjectMeta, ObjectStore, StorageError,
    Versioned, check_key,
};

/// Files larger than this are uploaded in parts.
const MULTIPART_THRESHOLD: u64 = 64 << 20;
/// Size of one part (S3 allows at most 10,000 parts; grown for huge files).
const PART_SIZE: u64 = 16 << 20;
/// Parts uploaded at once.
const PART_CONCURRENCY: usize = 4;

/// Where the bucket is and how to reach it.
#[derive(Clone)]
pub struct S3Settings {
    /// Store name.
    pub name: String,
    /// Endpoint URL (empty for AWS's own).
    pub endpoint: Option<String>,
    /// Region ("auto" for R2).
    pub region: String,
    /// Bucket.
    pub bucket: String,
    /// Key prefix inside the bucket ("" or ending in "/").
    pub prefix: String,
    /// Path-style addressing (needed by most S3-compatible servers).
    pub path_style: bool,
    /// Static credentials; `None` uses the usual AWS environment and profiles.
    pub credentials: Option<(String, String)>,
    /// How long the store may stay silent before it is given up (see [`DEFAULT_TIMEOUT`]).
    pub timeout: Duration,
}

/// How long a store may stay silent — no answer to a request, or no bytes of a download
/// for this long — before it is given up and the next store is tried. Long enough for a
/// store under load (first bytes usually arrive in well under a second), short enough that
/// a hung one costs seconds, not minutes, of the recovery.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("name", &self.name)
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// An S3 bucket (or a prefix in one) as a store.
pub struct S3Store {
    settings: S3Settings,
    client: OnceCell<Client>,
}

impl S3Store {
    /// A store; the client is built on first use.
    pub fn new(settings: S3Settings) -> Self {
        Self {
            settings,
            client: OnceCell::new(),
        }
    }

    async fn client(&self) -> &Client {
        self.client
            .get_or_init(|| async {
                let s = &self.settings;
                let timeouts = TimeoutConfig::builder()
                    .connect_timeout(s.timeout.min(Duration::from_secs(5)))
                    .read_timeout(s.timeout)
                    .build();
                let mut builder = aws_sdk_s3::Config::builder()
                    .behavior_version(BehaviorVersion::latest())
                    .region(Region::new(s.region.clone()))
                    .force_path_style(s.path_style)
                    .timeout_config(timeouts)
                    // One retry inside the SDK; failing over to the next store is faster
                    // than hammering a sick one.
                    .retry_config(RetryConfig::standard().with_max_attempts(2))
                    // S3-compatible servers differ in their support of the newer default
                    // checksums; integrity is checked end to end by Lazarus anyway.
                    .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
                    .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
                if let Some(endpoint) = &s.endpoint {
                    builder = builder.endpoint_url(endpoint.clone());
                }
                match &s.credentials {
                    Some((id, secret)) => {
                        builder = builder.credentials_provider(Credentials::new(
                            id.clone(),
                            secret.clone(),
                            None,
                            None,
                            "lazarus-config",
                        ));
                    }
                    None => {
                        let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
                            .load()
                            .await;
                        if let Some(provider) = shared.credentials_provider() {
                            builder = builder.credentials_provider(provider);
                        }
                    }
                }
                Client::from_conf(builder.build())
            })
            .await
    }

    fn full_key(&self, key: &str) -> Result<String, StorageError> {
        check_key(&self.settings.name, key)?;
        Ok(format!("{}{key}", self.settings.prefix))
    }

    fn classify<E>(&self, what: &str, key: &str, error: SdkError<E, HttpResponse>) -> StorageError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let store = self.settings.name.clone();
        match &error {
            SdkError::ServiceError(service) => {
                let code = service.err().code().unwrap_or("unknown");
                let http = service.raw().status().as_u16();
                let detail = match (service.err().message(), service.err().code()) {
                    (Some(m), _) => format!(": {m}"),
                    // No code: the reply did not parse; its cause is in the error's sources.
                    (None, None) => format!(": {}", describe(service.err())),
                    (None, Some(_)) => String::new(),
                };
                let message = format!("{what} {key}: {code} (HTTP {http}){detail}");
                match (http, code) {
                    (404, _) | (_, "NoSuchKey" | "NotFound") => StorageError::NotFound {
                        store,
                        key: key.to_string(),
                    },
                    (401 | 403, _) => StorageError::Permanent {
                        store,
                        message: format!("{message}; check the store's credentials"),
                    },
                    (500..=599, _) | (429, _) => StorageError::Transient { store, message },
                    _ => StorageError::Permanent { store, message },
                }
            }
            SdkError::ConstructionFailure(_) => StorageError::Permanent {
                store,
                message: format!("{what} {key}: {}", describe(&error)),
            },
            SdkError::TimeoutError(_) => StorageError::Transient {
                store,
                message: format!("{what} {key}: {}", self.silent()),
            },
            SdkError::DispatchFailure(failure) if failure.is_timeout() => StorageError::Transient {
                store,
                message: format!("{what} {key}: {}", self.silent()),
            },
            _ => StorageError::Transient {
                store,
                message: format!("{what} {key}: {}", describe(&error)),
            },
        }
    }

    /// Why a silent store was given up, with the setting that decides it.
    fn silent(&self) -> String {
        format!(
            "no answer within {} (the store's timeout; set timeout = \"...\" in its [[stores]] entry)",
            crate::engine::duration::format_duration(self.settings.timeout)
        )
    }

    async fn put_multipart(
        &self,
        key: &str,
        full: &str,
        path: &std::path::Path,
        size: u64,
    ) -> Result<u64, StorageError> {
        let client = self.client().await;
        let bucket = &self.settings.bucket;
        let created = client
            .create_multipart_upload()
            .bucket(bucket)
            .key(full)
            .send()
            .await
            .map_err(|e| self.classify("start upload of", key, e))?;
        let upload_id = created.upload_id().unwrap_or_default().to_string();
        let part_size = PART_SIZE.max(size.div_ceil(9_000));
        let parts: Vec<(i32, u64, u64)> = (0..size.div_ceil(part_size))
            .map(|i| {
                let offset = i * part_size;
                ((i + 1) as i32, offset, part_size.min(size - offset))
            })
            .collect();
        let semaphore = Arc::new(tokio::sync::Semaphore::new(PART_CONCURRENCY));
        let mut tasks = Vec::new();
        for (number, offset, len) in parts {
            let permit = Arc::clone(&semaphore);
            let client = client.clone();
            let (bucket, full, upload_id, path) = (
                bucket.clone(),
                full.to_string(),
                upload_id.clone(),
                path.to_path_buf(),
            );
            tasks.push(tokio::spawn(async move {
                let _permit = permit.acquire().await;
                let body = SdkStream::read_from()
                    .path(&path)
                    .offset(offset)
                    .length(Length::Exact(len))
                    .build()
                    .await
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                let out = client
                    .upload_part()
                    .bucket(bucket)
                    .key(full)
                    .upload_id(upload_id)
                    .part_number(number)
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| format!("part {number}: {}", describe(&e)))?;
                Ok::<_, String>(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(out.e_tag().map(String::from))
                        .build(),
                )
            }));
        }
        let mut completed = Vec::new();
        let mut failure = None;
        for task in tasks {
            match task.await {
                Ok(Ok(part)) => completed.push(part),
                Ok(Err(e)) => failure = failure.or(Some(e)),
                Err(e) => failure = failure.or(Some(format!("upload task failed: {e}"))),
            }
        }
        if let Some(message) = failure {
            let _ = client
                .abort_multipart_upload()
                .bucket(bucket)
                .key(full)
                .upload_id(&upload_id)
                .send()
                .await;
            return Err(StorageError::Transient {
                store: self.settings.name.clone(),
                message: format!("upload of {key} failed: {message}"),
            });
        }
        let parts = completed.len();
        let finished = client
            .complete_multipart_upload()
            .bucket(bucket)
            .key(full)
            .upload_id(&upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(completed))
                    .build(),
            )
            .send()
            .await;
        // The reply's shape is not the proof (moto names its root element
        // CompleteMultipartUploadResponse, which the SDK cannot parse): the object is.
        let unparsed = match finished {
            Ok(_) => None,
            Err(SdkError::ServiceError(service))
                if service.raw().status().as_u16() == 200 && service.err().code().is_none() =>
            {
                Some(self.classify("finish upload of", key, SdkError::ServiceError(service)))
            }
            Err(e) => return Err(self.classify("finish upload of", key, e)),
        };
        self.verify_finished(key, size, parts, unparsed).await
    }

    /// Checks with a HEAD that a multipart upload left the whole object: its size, and the
    /// `-PARTS` suffix of its ETag where the store uses one. A success reply that did not
    /// parse (`reply_error`) is forgiven when the object checks out.
    async fn verify_finished(
        &self,
        key: &str,
        size: u64,
        parts: usize,
        reply_error: Option<StorageError>,
    ) -> Result<u64, StorageError> {
        let full = self.full_key(key)?;
        let head = self
            .client()
            .await
            .head_object()
            .bucket(&self.settings.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| self.classify("check of the finished upload of", key, e))?;
        let found = head.content_length().unwrap_or(-1);
        let etag_parts = head
            .e_tag()
            .map(|t| t.trim_matches('"'))
            .and_then(|t| t.rsplit_once('-'))
            .and_then(|(_, n)| n.parse::<usize>().ok());
        let whole = found == size as i64 && etag_parts.is_none_or(|n| n == parts);
        if !whole {
            return Err(StorageError::Transient {
                store: self.settings.name.clone(),
                message: format!(
                    "upload of {key} finished, but the store holds {found} bytes in {} parts where {size} bytes in {parts} parts were sent{}",
                    etag_parts.map_or_else(|| "?".to_string(), |n| n.to_string()),
                    reply_error.map(|e| format!(" ({e})")).unwrap_or_default()
                ),
            });
        }
        if let Some(e) = reply_error {
            tracing::info!(store = %self.settings.name, %key, error = %e, "the store's reply to finishing the upload did not parse; the object checks out");
        }
        Ok(size)
    }
}

/// An SDK error with its causes, for messages.
fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

#[async_trait]
impl ObjectStore for S3Store {
    fn name(&self) -> &str {
        &self.settings.name
    }

    fn describe(&self) -> String {
        format!(
            "s3 bucket {} prefix \"{}\" at {}",
            self.settings.bucket,
            self.settings.prefix,
            self.settings.endpoint.as_deref().unwrap_or("AWS")
        )
    }

    async fn put(&self, key: &str, body: Body) -> Result<u64, StorageError> {
        let full = self.full_key(key)?;
        let client = self.client().await;
        let (stream, size) = match body {
            Body::Bytes(bytes) => {
                let n = bytes.len() as u64;
                (SdkStream::from(bytes), n)
            }
            Body::File(path) | Body::Finished(path) => {
                let size = std::fs::metadata(&path)
                    .map_err(|e| StorageError::Permanent {
                        store: self.settings.name.clone(),
                        message: format!("cannot read {}: {e}", path.display()),
                    })?
                    .len();
                if size > MULTIPART_THRESHOLD {
                    return self.put_multipart(key, &full, &path, size).await;
                }
                let stream =
                    SdkStream::from_path(&path)
                        .await
                        .map_err(|e| StorageError::Permanent {
                            store: self.settings.name.clone(),
                            message: format!("cannot read {}: {e}", path.display()),
                        })?;
                (stream, size)
            }
        };
        client
            .put_object()
            .bucket(&self.settings.bucket)
            .key(&full)
            .content_length(size as i64)
            .body(stream)
            .send()
            .await
            .map_err(|e| self.classify("upload of", key, e))?;
        Ok(size)
    }

    async fn get(
        &self,
        key: &str,
        offset: u64,
        len: Option<u64>,
    ) -> Result<ByteStream, StorageError> {
        let full = self.full_key(key)?;
        let range = match len {
            Some(0) => return Ok(Box::pin(tokio::io::empty())),
            Some(n) => format!("bytes={offset}-{}", offset + n - 1),
            None => format!("bytes={offset}-"),
        };
        let mut request = self
            .client()
            .await
            .get_object()
            .bucket(&self.settings.bucket)
            .key(&full);
        if offset > 0 || len.is_some() {
            request = request.range(range);
        }
        let out = request
            .send()
            .await
            .map_err(|e| self.classify("download of", key, e))?;
        if offset > 0 {
            // A store that ignores the range sends the object from byte 0: never append
            // that at `offset`.
            let served_from = out
                .content_range()
                .and_then(|r| r.strip_prefix("bytes "))
                .and_then(|r| r.split('-').next())
                .and_then(|from| from.parse::<u64>().ok());
            if served_from != Some(offset) {
                return Err(StorageError::Permanent {
                    store: self.name().to_string(),
                    message: format!(
                        "download of {key} from byte {offset}: the store answered with range {:?} instead",
                        out.content_range().unwrap_or("none")
                    ),
                });
            }
        }
        Ok(Box::pin(IdleTimeout {
            inner: out.body.into_async_read(),
            limit: self.settings.timeout,
            timer: Box::pin(tokio::time::sleep(self.settings.timeout)),
            store: self.settings.name.clone(),
            key: key.to_string(),
            at: offset,
        }))
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        let full = self.full_key(key)?;
        match self
            .client()
            .await
            .head_object()
            .bucket(&self.settings.bucket)
            .key(&full)
            .send()
            .await
        {
            Ok(out) => Ok(Some(ObjectMeta {
                key: key.to_string(),
                size: out.content_length().unwrap_or(0).max(0) as u64,
                modified: out.last_modified().map(|t| t.to_string()),
            })),
            Err(e) => match self.classify("head of", key, e) {
                StorageError::NotFound { .. } => Ok(None),
                other => Err(other),
            },
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        let client = self.client().await;
        let full_prefix = format!("{}{prefix}", self.settings.prefix);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = client
                .list_objects_v2()
                .bucket(&self.settings.bucket)
                .prefix(&full_prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| self.classify("listing of", prefix, e))?;
            for object in page.contents() {
                let Some(key) = object.key() else { continue };
                let Some(relative) = key.strip_prefix(&self.settings.prefix) else {
                    continue;
                };
                out.push(ObjectMeta {
                    key: relative.to_string(),
                    size: object.size().unwrap_or(0).max(0) as u64,
                    modified: object.last_modified().map(|t| t.to_string()),
                });
            }
            match page.next_continuation_token() {
                Some(next) if page.is_truncated().unwrap_or(false) => {
                    token = Some(next.to_string())
                }
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let full = self.full_key(key)?;
        self.client()
            .await
            .delete_object()
            .bucket(&self.settings.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| self.classify("delete of", key, e))?;
        Ok(())
    }

    async fn read_versioned(&self, key: &str) -> Result<Option<Versioned>, StorageError> {
        let full = self.full_key(key)?;
        let out = match self
            .client()
            .await
            .get_object()
            .bucket(&self.settings.bucket)
            .key(&full)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) => {
                return match self.classify("read of", key, e) {
                    StorageError::NotFound { .. } => Ok(None),
                    other => Err(other),
                };
            }
        };
        let etag = out.e_tag().unwrap_or_default().to_string();
        let bytes = out
            .body
            .collect()
            .await
            .map_err(|e| StorageError::Transient {
                store: self.settings.name.clone(),
                message: format!("read of {key}: {}", describe(&e)),
            })?
            .into_bytes();
        Ok(Some(Versioned { bytes, etag }))
    }

    async fn put_if(
        &self,
        key: &str,
        bytes: bytes::Bytes,
        condition: Condition,
    ) -> Result<String, ConditionalError> {
        let full = self.full_key(key)?;
        let request = self
            .client()
            .await
            .put_object()
            .bucket(&self.settings.bucket)
            .key(&full)
            .content_length(bytes.len() as i64)
            .body(SdkStream::from(bytes));
        let request = match &condition {
            Condition::Absent | Condition::AbsentCopy => request.if_none_match("*"),
            Condition::Matches(tag) => request.if_match(tag),
        };
        let error = match request.send().await {
            Ok(out) => {
                if let Some(tag) = out.e_tag() {
                    return Ok(tag.to_string());
                }
                // A store that does not say the new version: read it.
                return match self.read_versioned(key).await? {
                    Some(read) => Ok(read.etag),
                    None => Err(ConditionalError::Refused {
                        store: self.settings.name.clone(),
                        key: key.to_string(),
                    }),
                };
            }
            Err(error) => error,
        };
        if let SdkError::ServiceError(service) = &error {
            let http = service.raw().status().as_u16();
            let code = service.err().code().unwrap_or("");
            let refused = matches!(http, 412 | 409)
                || matches!(code, "PreconditionFailed" | "ConditionalRequestConflict")
                // If-Match on an object that is gone (moto answers 404).
                || (http == 404 && matches!(condition, Condition::Matches(_)));
            if refused {
                return Err(ConditionalError::Refused {
                    store: self.settings.name.clone(),
                    key: key.to_string(),
                });
            }
            if http == 501 || code == "NotImplemented" {
                return Err(ConditionalError::Unsupported {
                    store: self.settings.name.clone(),
                    detail: format!("HTTP {http} {code} to a conditional PUT"),
                });
            }
        }
        Err(self.classify("conditional upload of", key, error).into())
    }
}

/// A download body that fails when the store sends nothing for `limit`: the SDK's read
/// timeout covers the answer's first bytes, not a body that stalls half-way. The error
/// names the store, the object, the byte and the limit.
struct IdleTimeout<R> {
    inner: R,
    limit: Duration,
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
    store: String,
    key: String,
    at: u64,
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for IdleTimeout<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let before = buf.filled().len();
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                let got = (buf.filled().len() - before) as u64;
                this.at += got;
                let deadline = tokio::time::Instant::now() + this.limit;
                this.timer.as_mut().reset(deadline);
                Poll::Ready(result.map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!(
                            "store {} failed while sending {} at byte {}: {}",
                            this.store,
                            this.key,
                            this.at,
                            describe(&e)
                        ),
                    )
                }))
            }
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "store {} sent nothing for {} while sending {} at byte {} (the store's timeout; set timeout = \"...\" in its [[stores]] entry)",
                        this.store,
                        crate::engine::duration::format_duration(this.limit),
                        this.key,
                        this.at
                    ),
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};

    use tokio::io::AsyncReadExt;

    use super::{ObjectStore, S3Settings, S3Store};
    use crate::storage::StorageError;

    fn store(port: u16, timeout: Duration) -> S3Store {
        S3Store::new(S3Settings {
            name: "hung".into(),
            endpoint: Some(format!("http://127.0.0.1:{port}")),
            region: "us-east-1".into(),
            bucket: "backups".into(),
            prefix: String::new(),
            path_style: true,
            credentials: Some(("id".into(), "secret".into())),
            timeout,
        })
    }

    /// A server that reads each request and then answers with `reply` (possibly nothing),
    /// keeping the connection open without another byte.
    fn stalling_server(reply: &'static [u8]) -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf);
                let _ = conn.write_all(reply);
                held.push(conn);
            }
        });
        port
    }

    #[tokio::test]
    async fn a_store_that_never_answers_is_given_up_after_its_timeout_and_says_so() {
        let port = stalling_server(b"");
        let s = store(port, Duration::from_millis(800));
        let started = Instant::now();
        let Err(e) = s.get("backups/x.lzr", 0, None).await else {
            panic!("a silent store answered");
        };
        let waited = started.elapsed();
        // One SDK retry: two timeouts at most, not two of 30 s.
        assert!(waited < Duration::from_secs(4), "took {waited:?}");
        assert!(matches!(e, StorageError::Transient { .. }), "{e}");
        let text = e.to_string();
        assert!(
            text.contains("hung") && text.contains("no answer within"),
            "{text}"
        );
        assert!(!text.contains("streaming error"), "{text}");
    }

    #[tokio::test]
    async fn a_download_that_stalls_half_way_names_the_store_the_byte_and_the_timeout() {
        let port = stalling_server(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nContent-Type: application/octet-stream\r\n\r\n0123456789",
        );
        let s = store(port, Duration::from_millis(800));
        let mut body = s.get("backups/x.lzr", 0, None).await.unwrap();
        let started = Instant::now();
        let mut got = Vec::new();
        let e = body.read_to_end(&mut got).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(4));
        assert_eq!(got, b"0123456789");
        let text = e.to_string();
        assert!(
            text.contains("store hung sent nothing for 800ms")
                && text.contains("backups/x.lzr at byte 10")
                && text.contains("timeout"),
            "{text}"
        );
    }
}
