//! Real S3 protocol servers for tests: `moto_server` (Python moto) as a child process, and
//! `s3s-fs` served in-process over TCP. Plus a throttling TCP proxy, so a download lasts
//! long enough to be interrupted at a chosen moment.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Credentials the test servers accept.
pub const ACCESS_KEY: &str = "AKIATESTLAZARUS";
/// Secret the test servers accept.
pub const SECRET_KEY: &str = "test-secret-key-lazarus";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not start listening on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A moto_server child process.
pub struct Moto {
    child: Child,
    /// Its port.
    pub port: u16,
}

impl Moto {
    /// Starts moto_server on a free port; fails with a message naming the tool if missing.
    pub fn start() -> Moto {
        let port = free_port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("this test needs moto_server (pip install 'moto[server]'): {e}")
            });
        wait_for_port(port, "moto_server");
        Moto { child, port }
    }

    /// moto's S3 answering one request at a time, as a real S3 applies a conditional write:
    /// moto checks `If-Match` / `If-None-Match`, then writes, in a threaded server, so two
    /// writers racing from the same read can (rarely: once in about a thousand races on this
    /// machine under load) both pass the check.
    pub fn start_serialized() -> Moto {
        let port = free_port();
        let serve = format!(
            "from werkzeug.serving import run_simple\n\
             from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app\n\
             run_simple('127.0.0.1', {port}, DomainDispatcherApplication(create_backend_app), threaded=False)\n"
        );
        let child = Command::new("python3")
            .args(["-c", &serve])
            .env("MOTO_PORT", port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("this test needs python3 with moto (pip install 'moto[server]'): {e}")
            });
        wait_for_port(port, "moto (python3 -c, single-threaded)");
        Moto { child, port }
    }

    /// Its endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops it the hard way, mid-request if need be.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An s3s-fs server running in its own thread.
pub struct S3sFs {
    /// Its address.
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The directory it serves, removed when it is dropped (however the test ends).
    root: std::path::PathBuf,
}

impl S3sFs {
    /// Serves the directory `root` (each subdirectory is a bucket) over S3.
    pub fn start(root: &Path) -> S3sFs {
        Self::serve(root, |fs| fs)
    }

    /// The same, with every PUT applied one at a time and no read in the middle of one, as
    /// a real S3 does: s3s-fs alone checks a condition, then writes (two writers racing
    /// from the same read can both pass the check), and renames a body into place before
    /// it saves its ETag (a GET can pair an old body with the new ETag).
    pub fn start_serialized(root: &Path) -> S3sFs {
        Self::serve(root, |fs| Serialized {
            inner: fs,
            puts: tokio::sync::RwLock::new(()),
            conditions: true,
        })
    }

    /// A store that cannot condition a write, as Backblaze B2: a PUT with `If-Match` or
    /// `If-None-Match` is answered 501 NotImplemented.
    pub fn start_unconditional(root: &Path) -> S3sFs {
        Self::serve(root, |fs| Serialized {
            inner: fs,
            puts: tokio::sync::RwLock::new(()),
            conditions: false,
        })
    }

    fn serve<S: s3s::S3>(
        root: &Path,
        wrap: impl FnOnce(s3s_fs::FileSystem) -> S + Send + 'static,
    ) -> S3sFs {
        std::fs::create_dir_all(root).expect("s3s root");
        let kept = root.to_path_buf();
        let root = root.to_path_buf();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let fs = wrap(s3s_fs::FileSystem::new(&root).expect("s3s-fs"));
                let mut builder = s3s::service::S3ServiceBuilder::new(fs);
                builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
                let service = builder.build();
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                addr_tx.send(listener.local_addr().expect("addr")).expect("send addr");
                let http = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                );
                let mut tasks = tokio::task::JoinSet::new();
                loop {
                    tokio::select! {
                        accepted = listener.accept() => {
                            let Ok((socket, _)) = accepted else { continue };
                            let conn = http
                                .serve_connection(hyper_util::rt::TokioIo::new(socket), service.clone())
                                .into_owned();
                            tasks.spawn(async move { let _ = conn.await; });
                        }
                        _ = &mut stop_rx => break,
                    }
                }
                tasks.abort_all();
            });
        });
        let addr = addr_rx.recv().expect("s3s-fs address");
        S3sFs {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
            root: kept,
        }
    }

    /// Its endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops serving and drops every open connection.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for S3sFs {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// s3s-fs with its PUTs serialized (see [`S3sFs::start_serialized`]); the other calls a
/// lease and a journal mirror make go straight through.
struct Serialized {
    inner: s3s_fs::FileSystem,
    puts: tokio::sync::RwLock<()>,
    /// Whether conditional PUTs are honoured (else refused as NotImplemented).
    conditions: bool,
}

#[async_trait::async_trait]
impl s3s::S3 for Serialized {
    async fn create_bucket(
        &self,
        req: s3s::S3Request<s3s::dto::CreateBucketInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::CreateBucketOutput>> {
        self.inner.create_bucket(req).await
    }
    async fn put_object(
        &self,
        req: s3s::S3Request<s3s::dto::PutObjectInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::PutObjectOutput>> {
        if !self.conditions && (req.input.if_match.is_some() || req.input.if_none_match.is_some()) {
            return Err(s3s::s3_error!(
                NotImplemented,
                "conditional writes are not supported"
            ));
        }
        let _one_at_a_time = self.puts.write().await;
        self.inner.put_object(req).await
    }
    async fn get_object(
        &self,
        req: s3s::S3Request<s3s::dto::GetObjectInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::GetObjectOutput>> {
        // The file is opened and its ETag read under the lock: never a new body with an
        // old ETag, or the other way round.
        let _between_puts = self.puts.read().await;
        self.inner.get_object(req).await
    }
    async fn head_object(
        &self,
        req: s3s::S3Request<s3s::dto::HeadObjectInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::HeadObjectOutput>> {
        let _between_puts = self.puts.read().await;
        self.inner.head_object(req).await
    }
    async fn list_objects_v2(
        &self,
        req: s3s::S3Request<s3s::dto::ListObjectsV2Input>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::ListObjectsV2Output>> {
        self.inner.list_objects_v2(req).await
    }
    async fn delete_object(
        &self,
        req: s3s::S3Request<s3s::dto::DeleteObjectInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::DeleteObjectOutput>> {
        self.inner.delete_object(req).await
    }
}

/// A TCP proxy that slows the server-to-client direction to `bytes_per_second`.
pub struct Throttle {
    /// Where clients connect.
    pub addr: SocketAddr,
    _thread: std::thread::JoinHandle<()>,
}

impl Throttle {
    /// Starts a proxy to `upstream`.
    pub fn start(upstream: SocketAddr, bytes_per_second: u64) -> Throttle {
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                tx.send(listener.local_addr().expect("addr")).expect("send");
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(upstream).await else {
                            return;
                        };
                        let (mut cr, mut cw) = client.into_split();
                        let (mut sr, mut sw) = server.into_split();
                        let up = tokio::spawn(async move {
                            let _ = tokio::io::copy(&mut cr, &mut sw).await;
                            let _ = sw.shutdown().await;
                        });
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match sr.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            if cw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                            let pause = Duration::from_secs_f64(n as f64 / bytes_per_second as f64);
                            tokio::time::sleep(pause).await;
                        }
                        up.abort();
                    });
                }
            });
        });
        Throttle {
            addr: rx.recv().expect("proxy address"),
            _thread: thread,
        }
    }

    /// Its endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// A TCP proxy that can hang like a frozen storage service: while hung, every byte sent
/// either way is swallowed (the server never sees a request, the client never gets an
/// answer), and a connection that swallowed anything stays dead afterwards.
pub struct Blackhole {
    /// Where clients connect.
    pub addr: SocketAddr,
    hung: std::sync::Arc<std::sync::atomic::AtomicBool>,
    _thread: std::thread::JoinHandle<()>,
}

impl Blackhole {
    /// Starts a proxy to `upstream`, passing everything.
    pub fn start(upstream: SocketAddr) -> Blackhole {
        use std::sync::atomic::{AtomicBool, Ordering};
        let hung = std::sync::Arc::new(AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&hung);
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                tx.send(listener.local_addr().expect("addr")).expect("send");
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    let hung = std::sync::Arc::clone(&flag);
                    tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(upstream).await else {
                            return;
                        };
                        let dead = std::sync::Arc::new(AtomicBool::new(false));
                        let (cr, cw) = client.into_split();
                        let (sr, sw) = server.into_split();
                        let pass =
                            |mut from: tokio::net::tcp::OwnedReadHalf,
                             mut to: tokio::net::tcp::OwnedWriteHalf| {
                                let (hung, dead) =
                                    (std::sync::Arc::clone(&hung), std::sync::Arc::clone(&dead));
                                async move {
                                    let mut buf = vec![0u8; 64 * 1024];
                                    loop {
                                        let n = match from.read(&mut buf).await {
                                            Ok(0) | Err(_) => break,
                                            Ok(n) => n,
                                        };
                                        if hung.load(Ordering::SeqCst) {
                                            dead.store(true, Ordering::SeqCst);
                                        }
                                        if dead.load(Ordering::SeqCst) {
                                            continue;
                                        }
                                        if to.write_all(&buf[..n]).await.is_err() {
                                            break;
                                        }
                                    }
                                }
                            };
                        let up = tokio::spawn(pass(cr, sw));
                        pass(sr, cw).await;
                        up.abort();
                    });
                }
            });
        });
        Blackhole {
            addr: rx.recv().expect("proxy address"),
            hung,
            _thread: thread,
        }
    }

    /// Its endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Swallows everything from now on.
    pub fn hang(&self) {
        self.hung.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Passes new traffic again.
    pub fn restore(&self) {
        self.hung.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

fn client(endpoint: &str) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "test"))
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// Creates a bucket on a test server.
pub fn create_bucket(endpoint: &str, bucket: &str) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        client(endpoint)
            .create_bucket()
            .bucket(bucket)
            .send()
            .await
            .unwrap_or_else(|e| panic!("create bucket {bucket} at {endpoint}: {e:?}"));
    });
}

/// Writes an object straight to a test server (bypassing Lazarus).
pub fn put_object(endpoint: &str, bucket: &str, key: &str, bytes: Vec<u8>) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        client(endpoint)
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(bytes.into())
            .send()
            .await
            .unwrap_or_else(|e| panic!("put {key} at {endpoint}: {e:?}"));
    });
}
