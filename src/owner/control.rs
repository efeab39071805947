//! One interface to a state directory's runs, whether this process owns the store
//! ([`LocalControl`]) or talks to the owner over its socket ([`RemoteControl`]).

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, mpsc};

use super::protocol::{FollowItem, Request, Response, SubmitRequest};
use crate::catalog::Manifest;
use crate::engine::{Engine, EngineError, RunReport, RunSummary, Update};
use crate::ops::Operations;
use crate::ops::actor::Actor;
use crate::ops::alerts::AlertState;
use crate::ops::audit::{AuditEntry, Verification};
use crate::ops::wal::WalQuery;

pub use crate::ops::ControlError;

/// Everything the command line does with runs, whether this process owns the store or not.
#[async_trait]
pub trait Control: Send + Sync {
    /// Submits and starts a run; returns its id.
    async fn submit(&self, request: SubmitRequest) -> Result<String, ControlError>;
    /// Resumes a run; with `force`, taking its lease from that holder before it expires.
    async fn resume(
        &self,
        run: &str,
        by: &str,
        force: Option<&str>,
    ) -> Result<String, ControlError>;
    /// Halts a run at the next boundary, or now.
    async fn halt(&self, run: &str, by: &str, now: bool) -> Result<String, ControlError>;
    /// Approves a waiting step.
    async fn approve(
        &self,
        run: &str,
        by: &str,
        comment: Option<String>,
    ) -> Result<String, ControlError>;
    /// Rolls a run back.
    async fn rollback(&self, run: &str, by: &str, reason: &str) -> Result<String, ControlError>;
    /// Cancels a run.
    async fn cancel(&self, run: &str, by: &str) -> Result<String, ControlError>;
    /// A run's report; the latest run's when `run` is `None`.
    async fn report(&self, run: Option<&str>) -> Result<RunReport, ControlError>;
    /// Every run.
    async fn runs(&self) -> Result<Vec<RunSummary>, ControlError>;
    /// A stream of reports and progress for a run, ending when nobody drives it.
    async fn follow(&self, run: &str) -> Result<mpsc::Receiver<FollowItem>, ControlError>;
    /// Backups in the catalog, oldest first.
    async fn backups(&self, database: Option<&str>) -> Result<Vec<Manifest>, ControlError>;
    /// Rebuilds the catalog from a store; returns the store used and the manifests found.
    async fn catalog_sync(&self, store: Option<&str>) -> Result<(String, usize), ControlError>;
    /// Answers a question about a WAL archive.
    async fn wal(&self, query: WalQuery) -> Result<serde_json::Value, ControlError>;
    /// Removes (or, with `dry_run`, lists) what no live run needs.
    async fn gc(&self, dry_run: bool) -> Result<serde_json::Value, ControlError>;
    /// The audit trail, oldest first.
    async fn audit(&self) -> Result<Vec<AuditEntry>, ControlError>;
    /// The audit chain recomputed and compared with every store's copy.
    async fn audit_verify(&self) -> Result<Verification, ControlError>;
    /// How alert delivery stands.
    async fn alerts(&self) -> Result<AlertState, ControlError>;
}

/// Control of an engine in this process, acting for this process's own command line.
pub struct LocalControl {
    ops: Arc<Operations>,
}

impl LocalControl {
    /// Wraps the operations of the engine this process owns.
    pub fn new(ops: Arc<Operations>) -> Self {
        Self { ops }
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<Engine> {
        self.ops.engine()
    }

    /// The operations.
    pub fn ops(&self) -> &Arc<Operations> {
        &self.ops
    }
}

fn me(by: &str) -> Actor {
    Actor::this_process(by)
}

/// This process acting under its OS user's name (requests that carry no operator).
fn os_user() -> Actor {
    me(&crate::ops::actor::os_user_name(
        nix::unistd::getuid().as_raw(),
    ))
}

/// Streams a run's reports and progress from an engine in this process.
pub fn follow_local(
    engine: &Arc<Engine>,
    run: &str,
) -> Result<mpsc::Receiver<FollowItem>, EngineError> {
    let mut updates = engine.subscribe();
    let first = engine.report(run)?;
    let (tx, rx) = mpsc::channel(256);
    let engine = Arc::clone(engine);
    let run = run.to_string();
    tokio::spawn(async move {
        let active = first.active;
        if tx
            .send(FollowItem::Report {
                report: Box::new(first),
            })
            .await
            .is_err()
        {
            return;
        }
        if !active {
            let _ = tx.send(FollowItem::End { error: None }).await;
            return;
        }
        loop {
            let item = match updates.recv().await {
                Ok(Update::Changed { run: r }) if r == run => match engine.report(&run) {
                    Ok(report) => FollowItem::Report {
                        report: Box::new(report),
                    },
                    Err(e) => FollowItem::End {
                        error: Some(e.to_string()),
                    },
                },
                Ok(Update::Progress {
                    run: r,
                    step,
                    progress,
                }) if r == run => FollowItem::Progress { step, progress },
                Ok(Update::Stopped { run: r, error }) if r == run => {
                    if let Ok(report) = engine.report(&run) {
                        let _ = tx
                            .send(FollowItem::Report {
                                report: Box::new(report),
                            })
                            .await;
                    }
                    let _ = tx.send(FollowItem::End { error }).await;
                    return;
                }
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(_)) => match engine.report(&run) {
                    // Updates were dropped, perhaps the Stopped one: look for ourselves.
                    Ok(report) if !report.active => {
                        let _ = tx
                            .send(FollowItem::Report {
                                report: Box::new(report),
                            })
                            .await;
                        FollowItem::End { error: None }
                    }
                    Ok(report) => FollowItem::Report {
                        report: Box::new(report),
                    },
                    Err(_) => continue,
                },
                Err(broadcast::error::RecvError::Closed) => FollowItem::End { error: None },
            };
            let end = matches!(item, FollowItem::End { .. });
            if tx.send(item).await.is_err() || end {
                return;
            }
        }
    });
    Ok(rx)
}

#[async_trait]
impl Control for LocalControl {
    async fn submit(&self, request: SubmitRequest) -> Result<String, ControlError> {
        let actor = me(&request.operator);
        self.ops.submit(&actor, request)
    }

    async fn resume(
        &self,
        run: &str,
        by: &str,
        force: Option<&str>,
    ) -> Result<String, ControlError> {
        self.ops.resume(&me(by), run, force).await
    }

    async fn halt(&self, run: &str, by: &str, now: bool) -> Result<String, ControlError> {
        self.ops.halt(&me(by), run, now)
    }

    async fn approve(
        &self,
        run: &str,
        by: &str,
        comment: Option<String>,
    ) -> Result<String, ControlError> {
        self.ops.approve(&me(by), run, comment)
    }

    async fn rollback(&self, run: &str, by: &str, reason: &str) -> Result<String, ControlError> {
        self.ops.rollback(&me(by), run, reason)
    }

    async fn cancel(&self, run: &str, by: &str) -> Result<String, ControlError> {
        self.ops.cancel(&me(by), run)
    }

    async fn report(&self, run: Option<&str>) -> Result<RunReport, ControlError> {
        self.ops.report(run)
    }

    async fn runs(&self) -> Result<Vec<RunSummary>, ControlError> {
        self.ops.runs()
    }

    async fn follow(&self, run: &str) -> Result<mpsc::Receiver<FollowItem>, ControlError> {
        Ok(follow_local(self.ops.engine(), run)?)
    }

    async fn backups(&self, database: Option<&str>) -> Result<Vec<Manifest>, ControlError> {
        self.ops.backups(database).await
    }

    async fn catalog_sync(&self, store: Option<&str>) -> Result<(String, usize), ControlError> {
        self.ops.catalog_sync(&os_user(), store).await
    }

    async fn wal(&self, query: WalQuery) -> Result<serde_json::Value, ControlError> {
        self.ops.wal(&os_user(), query).await
    }

    async fn gc(&self, dry_run: bool) -> Result<serde_json::Value, ControlError> {
        self.ops.gc(&os_user(), dry_run).await
    }

    async fn audit(&self) -> Result<Vec<AuditEntry>, ControlError> {
        self.ops.audit_entries(&os_user())
    }

    async fn audit_verify(&self) -> Result<Verification, ControlError> {
        self.ops.audit_verify(&os_user()).await
    }

    async fn alerts(&self) -> Result<AlertState, ControlError> {
        Ok(self.ops.alert_state())
    }
}

/// Control through the owner's socket.
pub struct RemoteControl {
    socket: PathBuf,
    owner_pid: u32,
}

impl RemoteControl {
    /// A client for the owner listening on `socket`.
    pub fn new(socket: PathBuf, owner_pid: u32) -> Self {
        Self { socket, owner_pid }
    }

    /// The owner's process id.
    pub fn owner_pid(&self) -> u32 {
        self.owner_pid
    }

    async fn open(&self, request: &Request) -> Result<BufReader<UnixStream>, ControlError> {
        let mut stream = UnixStream::connect(&self.socket).await.map_err(|e| {
            // The owner went away between finding it and this request (a `status` that
            // owned the store for a moment): nothing was sent, so try again — this
            // process may now become the owner.
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) {
                return ControlError::Retry;
            }
            ControlError::Unavailable(format!(
                "the lazarus process that owns this state directory (pid {}) stopped answering on {}: {e}; run the command again",
                self.owner_pid,
                self.socket.display()
            ))
        })?;
        let mut line = serde_json::to_vec(request)
            .map_err(|e| ControlError::Unavailable(format!("cannot encode request: {e}")))?;
        line.push(b'\n');
        stream.write_all(&line).await.map_err(lost)?;
        Ok(BufReader::new(stream))
    }

    /// Sends one request and reads one response.
    pub async fn call(&self, request: &Request) -> Result<Response, ControlError> {
        let mut reader = self.open(request).await?;
        let mut line = String::new();
        reader.read_line(&mut line).await.map_err(lost)?;
        if line.is_empty() {
            return Err(ControlError::Retry);
        }
        let response: Response = serde_json::from_str(&line).map_err(|e| {
            ControlError::Unavailable(format!("owner sent an unreadable answer: {e}"))
        })?;
        match response {
            Response::Error { retry: true, .. } => Err(ControlError::Retry),
            Response::Error { message, .. } => Err(ControlError::Refused(message)),
            other => Ok(other),
        }
    }

    async fn message(&self, request: Request) -> Result<String, ControlError> {
        match self.call(&request).await? {
            Response::Done { message } => Ok(message),
            other => Err(unexpected(&other)),
        }
    }
}

/// A connection the owner dropped without answering: like an answer that never came (an
/// owner going away closes its connections), the caller connects again.
fn lost(e: std::io::Error) -> ControlError {
    match e.kind() {
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => ControlError::Retry,
        _ => ControlError::Unavailable(format!("owner connection lost: {e}")),
    }
}

fn unexpected(response: &Response) -> ControlError {
    ControlError::Unavailable(format!("owner sent an unexpected answer: {response:?}"))
}

#[async_trait]
impl Control for RemoteControl {
    async fn submit(&self, request: SubmitRequest) -> Result<String, ControlError> {
        match self.call(&Request::Submit(request)).await? {
            Response::RunId { run } => Ok(run),
            other => Err(unexpected(&other)),
        }
    }

    async fn resume(
        &self,
        run: &str,
        by: &str,
        force: Option<&str>,
    ) -> Result<String, ControlError> {
        self.message(Request::Resume {
            run: run.into(),
            by: by.into(),
            force: force.map(str::to_string),
        })
        .await
    }

    async fn halt(&self, run: &str, by: &str, now: bool) -> Result<String, ControlError> {
        self.message(Request::Halt {
            run: run.into(),
            by: by.into(),
            now,
        })
        .await
    }

    async fn approve(
        &self,
        run: &str,
        by: &str,
        comment: Option<String>,
    ) -> Result<String, ControlError> {
        self.message(Request::Approve {
            run: run.into(),
            by: by.into(),
            comment,
        })
        .await
    }

    async fn rollback(&self, run: &str, by: &str, reason: &str) -> Result<String, ControlError> {
        self.message(Request::Rollback {
            run: run.into(),
            by: by.into(),
            reason: reason.into(),
        })
        .await
    }

    async fn cancel(&self, run: &str, by: &str) -> Result<String, ControlError> {
        self.message(Request::Cancel {
            run: run.into(),
            by: by.into(),
        })
        .await
    }

    async fn report(&self, run: Option<&str>) -> Result<RunReport, ControlError> {
        match self
            .call(&Request::Report {
                run: run.map(String::from),
            })
            .await?
        {
            Response::Report { report } => Ok(*report),
            other => Err(unexpected(&other)),
        }
    }

    async fn runs(&self) -> Result<Vec<RunSummary>, ControlError> {
        match self.call(&Request::Runs).await? {
            Response::Runs { runs } => Ok(runs),
            other => Err(unexpected(&other)),
        }
    }

    async fn backups(&self, database: Option<&str>) -> Result<Vec<Manifest>, ControlError> {
        match self
            .call(&Request::Backups {
                database: database.map(String::from),
            })
            .await?
        {
            Response::Backups { backups } => Ok(backups),
            other => Err(unexpected(&other)),
        }
    }

    async fn catalog_sync(&self, store: Option<&str>) -> Result<(String, usize), ControlError> {
        match self
            .call(&Request::CatalogSync {
                store: store.map(String::from),
            })
            .await?
        {
            Response::Synced { store, count } => Ok((store, count)),
            other => Err(unexpected(&other)),
        }
    }

    async fn wal(&self, query: WalQuery) -> Result<serde_json::Value, ControlError> {
        match self.call(&Request::Wal { query }).await? {
            Response::Wal { answer } => Ok(answer),
            other => Err(unexpected(&other)),
        }
    }

    async fn gc(&self, dry_run: bool) -> Result<serde_json::Value, ControlError> {
        match self.call(&Request::Gc { dry_run }).await? {
            Response::Gc { answer } => Ok(answer),
            other => Err(unexpected(&other)),
        }
    }

    async fn audit(&self) -> Result<Vec<AuditEntry>, ControlError> {
        match self.call(&Request::Audit).await? {
            Response::Audit { entries } => Ok(entries),
            other => Err(unexpected(&other)),
        }
    }

    async fn audit_verify(&self) -> Result<Verification, ControlError> {
        match self.call(&Request::AuditVerify).await? {
            Response::AuditVerify { verification } => Ok(*verification),
            other => Err(unexpected(&other)),
        }
    }

    async fn alerts(&self) -> Result<AlertState, ControlError> {
        match self.call(&Request::Alerts).await? {
            Response::Alerts { state } => Ok(state),
            other => Err(unexpected(&other)),
        }
    }

    async fn follow(&self, run: &str) -> Result<mpsc::Receiver<FollowItem>, ControlError> {
        let mut reader = self.open(&Request::Follow { run: run.into() }).await?;
        let (tx, rx) = mpsc::channel(256);
        let pid = self.owner_pid;
        tokio::spawn(async move {
            let mut line = String::new();
            loop {
                line.clear();
                let item = match reader.read_line(&mut line).await {
                    Ok(0) | Err(_) => FollowItem::End {
                        error: Some(format!(
                            "lost contact with the owner process (pid {pid}); `lazarus status` shows where the run stands"
                        )),
                    },
                    Ok(_) => match serde_json::from_str::<FollowItem>(&line) {
                        Ok(item) => item,
                        Err(_) => match serde_json::from_str::<Response>(&line) {
                            Ok(Response::Error { message, .. }) => FollowItem::End {
                                error: Some(message),
                            },
                            _ => continue,
                        },
                    },
                };
                let end = matches!(item, FollowItem::End { .. });
                if tx.send(item).await.is_err() || end {
                    return;
                }
            }
        });
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_owner_gone_before_it_answered_means_connect_again() {
        let dir = tempfile::tempdir().unwrap();
        // The socket file is gone: the owner exited after it was found.
        let gone = RemoteControl::new(dir.path().join("control.sock"), 1);
        assert!(matches!(
            gone.call(&Request::Ping).await,
            Err(ControlError::Retry)
        ));
        // The owner accepts, then drops the connection without an answer.
        let socket = dir.path().join("closing.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let closer = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            drop(stream);
        });
        let closing = RemoteControl::new(socket, 1);
        assert!(matches!(
            closing.call(&Request::Ping).await,
            Err(ControlError::Retry)
        ));
        closer.await.unwrap();
    }
}
