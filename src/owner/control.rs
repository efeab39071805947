//! One interface to a state directory's runs, whether this process owns the store
//! ([`LocalControl`]) or talks to the owner over its socket ([`RemoteControl`]).

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, mpsc};

use super::protocol::{FollowItem, Request, Response, SubmitRequest};
use crate::activities::Services;
use crate::catalog::Manifest;
use crate::engine::{Engine, EngineError, RunReport, RunSummary, Submission, Update, Workflow};

/// A control request that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The engine refused, with a message for the operator.
    #[error("{0}")]
    Refused(String),
    /// The owner could not be reached or went away.
    #[error("{0}")]
    Unavailable(String),
    /// The owner is shutting down; connect again.
    #[error("the owner process is shutting down")]
    Retry,
}

impl From<EngineError> for ControlError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::ShuttingDown => ControlError::Retry,
            other => ControlError::Refused(other.to_string()),
        }
    }
}

/// Everything the CLI (and later the API) does with runs.
#[async_trait]
pub trait Control: Send + Sync {
    /// Submits and starts a run; returns its id.
    async fn submit(&self, request: SubmitRequest) -> Result<String, ControlError>;
    /// Resumes a run.
    async fn resume(&self, run: &str, by: &str) -> Result<String, ControlError>;
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
    async fn wal(&self, query: super::wal::WalQuery) -> Result<serde_json::Value, ControlError>;
    /// Removes (or, with `dry_run`, lists) what no live run needs.
    async fn gc(&self, dry_run: bool) -> Result<serde_json::Value, ControlError>;
}

/// The catalog's backups, syncing from the stores first when it is empty (a new host).
pub async fn list_backups(
    services: &Services,
    database: Option<&str>,
) -> Result<Vec<Manifest>, ControlError> {
    let catalog = services
        .catalog()
        .map_err(|e| ControlError::Refused(e.message))?;
    if catalog.is_empty() {
        catalog.sync(&services.stores).await.map_err(|e| {
            ControlError::Refused(format!(
                "the catalog is empty and could not be rebuilt from the stores: {e}"
            ))
        })?;
    }
    catalog
        .list(database)
        .map_err(|e| ControlError::Refused(e.to_string()))
}

/// Rebuilds the catalog from the named store, or the first that can be listed.
pub async fn sync_catalog(
    services: &Services,
    store: Option<&str>,
) -> Result<(String, usize), ControlError> {
    let catalog = services
        .catalog()
        .map_err(|e| ControlError::Refused(e.message))?;
    let result = match store {
        Some(name) => {
            let one = services
                .stores
                .only(&[name.to_string()])
                .map_err(ControlError::Refused)?;
            catalog.sync(&one).await
        }
        None => catalog.sync(&services.stores).await,
    };
    result.map_err(|e| ControlError::Refused(e.to_string()))
}

/// Control of an engine in this process.
pub struct LocalControl {
    engine: Arc<Engine>,
    services: Arc<Services>,
}

impl LocalControl {
    /// Wraps an engine and the services its activities use.
    pub fn new(engine: Arc<Engine>, services: Arc<Services>) -> Self {
        Self { engine, services }
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }
}

/// Parses a submitted workflow, records the run and starts driving it.
pub fn launch(engine: &Arc<Engine>, request: SubmitRequest) -> Result<String, EngineError> {
    let workflow = Workflow::parse(
        &request.workflow_source,
        &request.workflow_text,
        engine.registry(),
    )?;
    engine.launch(Submission {
        workflow,
        params: request.params,
        reason: request.reason,
        operator: request.operator,
        halt_before: request.halt_before,
        halt_after: request.halt_after,
        id: request.id,
    })
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
        Ok(launch(&self.engine, request)?)
    }

    async fn resume(&self, run: &str, by: &str) -> Result<String, ControlError> {
        Ok(self.engine.resume(run, by)?)
    }

    async fn halt(&self, run: &str, by: &str, now: bool) -> Result<String, ControlError> {
        Ok(self.engine.halt(run, by, now)?)
    }

    async fn approve(
        &self,
        run: &str,
        by: &str,
        comment: Option<String>,
    ) -> Result<String, ControlError> {
        Ok(self.engine.approve(run, by, comment)?)
    }

    async fn rollback(&self, run: &str, by: &str, reason: &str) -> Result<String, ControlError> {
        Ok(self.engine.rollback(run, by, reason)?)
    }

    async fn cancel(&self, run: &str, by: &str) -> Result<String, ControlError> {
        Ok(self.engine.cancel(run, by)?)
    }

    async fn report(&self, run: Option<&str>) -> Result<RunReport, ControlError> {
        let run = match run {
            Some(run) => run.to_string(),
            None => self.engine.latest_run()?.ok_or_else(|| {
                ControlError::Refused("there are no runs in this state directory yet".into())
            })?,
        };
        Ok(self.engine.report(&run)?)
    }

    async fn runs(&self) -> Result<Vec<RunSummary>, ControlError> {
        Ok(self.engine.list()?)
    }

    async fn follow(&self, run: &str) -> Result<mpsc::Receiver<FollowItem>, ControlError> {
        Ok(follow_local(&self.engine, run)?)
    }

    async fn backups(&self, database: Option<&str>) -> Result<Vec<Manifest>, ControlError> {
        list_backups(&self.services, database).await
    }

    async fn catalog_sync(&self, store: Option<&str>) -> Result<(String, usize), ControlError> {
        sync_catalog(&self.services, store).await
    }

    async fn wal(&self, query: super::wal::WalQuery) -> Result<serde_json::Value, ControlError> {
        super::wal::answer(&self.services, query).await
    }

    async fn gc(&self, dry_run: bool) -> Result<serde_json::Value, ControlError> {
        super::gc::collect(&self.engine, &self.services, dry_run).await
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

    async fn resume(&self, run: &str, by: &str) -> Result<String, ControlError> {
        self.message(Request::Resume {
            run: run.into(),
            by: by.into(),
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

    async fn wal(&self, query: super::wal::WalQuery) -> Result<serde_json::Value, ControlError> {
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
