//! One owner of `state/`. sled allows one process per store, so the process that opens it
//! (a one-shot `lazarus run`, or `lazarus serve`) serves control requests on
//! `state/control.sock`; other invocations talk to it there and open the store themselves
//! only when no owner is alive.

pub mod control;
mod fencing;
pub mod protocol;
mod server;

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::net::UnixListener;
use tokio::task::JoinHandle;

use crate::activities::{Services, registry};
use crate::catalog::Catalog;
use crate::engine::{Engine, JournalError, SledJournal};
use crate::ops::Operations;
use crate::ops::alerts::Alerts;
use crate::ops::audit::AuditLog;
use crate::wal::catalog::WalCatalog;
use control::{Control, LocalControl, RemoteControl};
use protocol::{Request, Response};

/// How long to wait for a departing owner to let go of the store.
const OWNER_WAIT: Duration = Duration::from_secs(20);

/// Why no session could be had.
#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    /// The state directory could not be created or used.
    #[error("cannot use state directory {path}: {message}")]
    StateDir { path: PathBuf, message: String },
    /// The store is held by a process that does not answer.
    #[error(
        "the state directory {path} is held by {holder} but nothing answers on {socket}; if that process is stuck, stop it and try again"
    )]
    Unresponsive {
        path: PathBuf,
        socket: PathBuf,
        holder: String,
    },
    /// The journal failed to open.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The configuration asks for something this owner cannot do.
    #[error("{0}")]
    Config(String),
}

/// How long a departing owner waits for its queued alerts to be delivered.
const ALERT_DRAIN: Duration = Duration::from_secs(5);

/// How long a departing owner waits for the audit mirror to copy its last entries.
const MIRROR_DRAIN: Duration = Duration::from_secs(10);

/// This process owns the store: it drives runs and serves the socket.
pub struct Owned {
    control: LocalControl,
    closing: Arc<AtomicBool>,
    server: JoinHandle<()>,
    mirror: JoinHandle<()>,
    delivery: Vec<JoinHandle<()>>,
    socket: PathBuf,
    pid_file: PathBuf,
}

impl Owned {
    /// The engine this process drives.
    pub fn engine(&self) -> &Arc<Engine> {
        self.control.engine()
    }

    /// The operations every transport calls (the HTTP API of `serve` among them).
    pub fn ops(&self) -> &Arc<Operations> {
        self.control.ops()
    }
}

/// A way to reach the runs of a state directory.
pub enum Session {
    /// This process owns the store.
    Owned(Owned),
    /// Another process owns it; requests go over its socket.
    Remote(RemoteControl),
}

impl Session {
    /// The control interface, wherever the store lives.
    pub fn control(&self) -> &dyn Control {
        match self {
            Session::Owned(owned) => &owned.control,
            Session::Remote(remote) => remote,
        }
    }

    /// The engine, when this process owns the store.
    pub fn engine(&self) -> Option<&Arc<Engine>> {
        match self {
            Session::Owned(owned) => Some(owned.engine()),
            Session::Remote(_) => None,
        }
    }

    /// Ends the session. An owner first finishes the runs it drives (including runs other
    /// invocations submitted to it), then stops serving and lets go of the store.
    pub async fn finish(self) {
        let Session::Owned(owned) = self else {
            return;
        };
        let others = owned.engine().active_runs();
        if !others.is_empty() {
            eprintln!(
                "this process (pid {}) still executes {}; waiting for {} to stop (follow with `lazarus status RUN --follow`)",
                std::process::id(),
                others.join(", "),
                if others.len() == 1 { "it" } else { "them" }
            );
        }
        loop {
            owned.engine().wait_idle().await;
            if owned.engine().close_if_idle() {
                break;
            }
        }
        owned.closing.store(true, Ordering::SeqCst);
        owned.server.abort();
        owned.mirror.abort();
        // Alerts of the runs just finished: a short try before the process goes; what is
        // left stays queued in the journal for the next owner.
        let ops = owned.ops();
        let deadline = Instant::now() + ALERT_DRAIN;
        while ops.alerts().has_untried() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for task in &owned.delivery {
            task.abort();
        }
        let stores = &ops.services().stores;
        if tokio::time::timeout(MIRROR_DRAIN, ops.audit().mirror_once(stores))
            .await
            .is_err()
            || ops
                .audit()
                .mirror_state(stores)
                .iter()
                .any(|m| m.behind > 0)
        {
            eprintln!(
                "the audit trail could not be copied to every store yet; the next lazarus process that owns {} copies the rest",
                owned
                    .socket
                    .parent()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            );
        }
        let _ = std::fs::remove_file(&owned.socket);
        let _ = std::fs::remove_file(&owned.pid_file);
    }
}

/// The control socket of a state directory.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("control.sock")
}

fn ensure_state_dir(state_dir: &Path) -> Result<(), OwnerError> {
    if state_dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .map_err(|e| OwnerError::StateDir {
            path: state_dir.to_path_buf(),
            message: e.to_string(),
        })
}

/// The live owner of `state_dir`, if one answers on its socket.
pub async fn find_owner(state_dir: &Path) -> Option<RemoteControl> {
    ping(&socket_path(state_dir)).await
}

async fn ping(socket: &Path) -> Option<RemoteControl> {
    let probe = RemoteControl::new(socket.to_path_buf(), 0);
    match probe.call(&Request::Ping).await {
        Ok(Response::Pong { pid }) => Some(RemoteControl::new(socket.to_path_buf(), pid)),
        _ => None,
    }
}

/// Reaches the owner of `state_dir`, or becomes it.
pub async fn connect_or_own(
    state_dir: &Path,
    services: Arc<Services>,
) -> Result<Session, OwnerError> {
    ensure_state_dir(state_dir)?;
    let socket = socket_path(state_dir);
    let pid_file = state_dir.join("owner.pid");
    let started = Instant::now();
    loop {
        if let Some(remote) = ping(&socket).await {
            return Ok(Session::Remote(remote));
        }
        match SledJournal::open(state_dir) {
            Ok(journal) => {
                services.attach_catalog(Catalog::new(journal.tree("catalog")?));
                services.attach_wal_catalog(WalCatalog::new(journal.tree("wal")?));
                let audit = Arc::new(AuditLog::new(
                    journal.tree("audit")?,
                    journal.tree("audit_mirror")?,
                ));
                let journal_alerts = (journal.tree("alert_queue")?, journal.tree("alert_seen")?);
                let registry = Arc::new(registry(Arc::clone(&services)));
                let engine = Engine::new(Arc::new(journal), registry);
                engine.set_state_dir(state_dir);
                if let Some(tracer) = crate::telemetry::installed() {
                    engine.set_tracer(tracer);
                }
                let loaded = services
                    .config_file
                    .as_deref()
                    .and_then(|f| crate::config::Loaded::load(Some(f)).ok());
                let (fence, journal_mirror) = fencing::from_config(
                    loaded.as_ref().map(|l| &l.config),
                    &services.stores,
                    state_dir,
                )
                .map_err(OwnerError::Config)?;
                if let Some(fence) = fence {
                    engine.set_fence(fence);
                }
                if let Some(journal_mirror) = journal_mirror {
                    engine.set_mirror(journal_mirror);
                }
                let mirror = audit.spawn_mirror(services.stores.clone());
                let configs = loaded.map(|l| l.config.alerts).unwrap_or_default();
                let alerts = Arc::new(Alerts::new(journal_alerts.0, journal_alerts.1, &configs));
                let ops = Arc::new(Operations::new(
                    Arc::clone(&engine),
                    Arc::clone(&services),
                    audit,
                    Arc::clone(&alerts),
                ));
                let auditor = Arc::downgrade(&ops);
                let delivery = alerts.spawn(
                    Arc::clone(&engine),
                    Arc::new(move |what: &str, failed: bool, message: &str| {
                        if let Some(ops) = auditor.upgrade() {
                            ops.audit_alert(what, failed, message);
                        }
                    }),
                );
                let listener = bind(&socket, state_dir)?;
                let _ = std::fs::write(&pid_file, format!("{}\n", std::process::id()));
                let closing = Arc::new(AtomicBool::new(false));
                let server = tokio::spawn(server::serve(
                    listener,
                    Arc::clone(&ops),
                    Arc::clone(&closing),
                ));
                return Ok(Session::Owned(Owned {
                    control: LocalControl::new(ops),
                    closing,
                    server,
                    mirror,
                    delivery,
                    socket,
                    pid_file,
                }));
            }
            Err(JournalError::InUse(_)) if started.elapsed() < OWNER_WAIT => {
                // Short: a one-shot owner (a `status`) holds the store for milliseconds, and
                // a caller polling every 50 ms could lose every race to a stream of them.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(JournalError::InUse(path)) => {
                let holder = std::fs::read_to_string(&pid_file)
                    .map(|pid| format!("process {}", pid.trim()))
                    .unwrap_or_else(|_| "another process".to_string());
                return Err(OwnerError::Unresponsive {
                    path,
                    socket,
                    holder,
                });
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn bind(socket: &Path, state_dir: &Path) -> Result<UnixListener, OwnerError> {
    let limit = 107;
    if socket.as_os_str().len() > limit {
        return Err(OwnerError::StateDir {
            path: state_dir.to_path_buf(),
            message: format!(
                "the control socket path {} is longer than the {limit} bytes a Unix socket allows; use a shorter --state path",
                socket.display()
            ),
        });
    }
    // We hold the store, so any socket file left here is stale.
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket).map_err(|e| OwnerError::StateDir {
        path: state_dir.to_path_buf(),
        message: format!("cannot listen on {}: {e}", socket.display()),
    })?;
    let _ = std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600));
    Ok(listener)
}
