//! The owner's side of the control socket.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::control::{ControlError, follow_local, launch, list_backups, sync_catalog};
use super::protocol::{FollowItem, Request, Response};
use crate::activities::Services;
use crate::engine::{Engine, EngineError};

/// Serves control requests for an engine until `closing` is set.
pub async fn serve(
    listener: UnixListener,
    engine: Arc<Engine>,
    services: Arc<Services>,
    closing: Arc<AtomicBool>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let engine = Arc::clone(&engine);
        let services = Arc::clone(&services);
        let closing = Arc::clone(&closing);
        tokio::spawn(async move {
            if let Err(e) = handle(stream, engine, services, closing).await {
                tracing::debug!(error = %e, "control connection ended");
            }
        });
    }
}

async fn write_line<T: serde::Serialize>(
    stream: &mut (impl AsyncWriteExt + Unpin),
    value: &T,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line).await
}

fn answer<T>(result: Result<T, EngineError>, ok: impl FnOnce(T) -> Response) -> Response {
    match result {
        Ok(v) => ok(v),
        Err(EngineError::ShuttingDown) => Response::Error {
            message: EngineError::ShuttingDown.to_string(),
            retry: true,
        },
        Err(e) => Response::Error {
            message: e.to_string(),
            retry: false,
        },
    }
}

fn control_answer<T>(result: Result<T, ControlError>, ok: impl FnOnce(T) -> Response) -> Response {
    match result {
        Ok(v) => ok(v),
        Err(e) => Response::Error {
            retry: matches!(e, ControlError::Retry),
            message: e.to_string(),
        },
    }
}

async fn handle(
    stream: UnixStream,
    engine: Arc<Engine>,
    services: Arc<Services>,
    closing: Arc<AtomicBool>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let request: Request = match serde_json::from_str(&line) {
        Ok(r) => r,
        Err(e) => {
            return write_line(
                &mut write,
                &Response::Error {
                    message: format!("unreadable request: {e}"),
                    retry: false,
                },
            )
            .await;
        }
    };
    let starts_work = matches!(
        request,
        Request::Submit(_) | Request::Resume { .. } | Request::Rollback { .. }
    );
    if closing.load(Ordering::SeqCst) && starts_work {
        return write_line(
            &mut write,
            &Response::Error {
                message: "the owner process is shutting down".into(),
                retry: true,
            },
        )
        .await;
    }
    let response = match request {
        Request::Ping => Response::Pong {
            pid: std::process::id(),
        },
        Request::Submit(submission) => {
            answer(launch(&engine, submission), |run| Response::RunId { run })
        }
        Request::Resume { run, by } => answer(engine.resume(&run, &by), |message| Response::Done {
            message,
        }),
        Request::Halt { run, by, now } => answer(engine.halt(&run, &by, now), |message| {
            Response::Done { message }
        }),
        Request::Approve { run, by, comment } => {
            answer(engine.approve(&run, &by, comment), |message| {
                Response::Done { message }
            })
        }
        Request::Rollback { run, by, reason } => {
            answer(engine.rollback(&run, &by, &reason), |message| {
                Response::Done { message }
            })
        }
        Request::Cancel { run, by } => answer(engine.cancel(&run, &by), |message| Response::Done {
            message,
        }),
        Request::Report { run } => {
            let run = match run {
                Some(run) => Ok(Some(run)),
                None => engine.latest_run(),
            };
            match run {
                Ok(Some(run)) => answer(engine.report(&run), |report| Response::Report {
                    report: Box::new(report),
                }),
                Ok(None) => Response::Error {
                    message: "there are no runs in this state directory yet".into(),
                    retry: false,
                },
                Err(e) => Response::Error {
                    message: e.to_string(),
                    retry: false,
                },
            }
        }
        Request::Runs => answer(engine.list(), |runs| Response::Runs { runs }),
        Request::Backups { database } => control_answer(
            list_backups(&services, database.as_deref()).await,
            |backups| Response::Backups { backups },
        ),
        Request::CatalogSync { store } => control_answer(
            sync_catalog(&services, store.as_deref()).await,
            |(store, count)| Response::Synced { store, count },
        ),
        Request::Wal { query } => {
            control_answer(super::wal::answer(&services, query).await, |answer| {
                Response::Wal { answer }
            })
        }
        Request::Gc { dry_run } => control_answer(
            super::gc::collect(&engine, &services, dry_run).await,
            |answer| Response::Gc { answer },
        ),
        Request::Follow { run } => {
            let mut items = match follow_local(&engine, &run) {
                Ok(items) => items,
                Err(e) => {
                    return write_line(
                        &mut write,
                        &Response::Error {
                            message: e.to_string(),
                            retry: false,
                        },
                    )
                    .await;
                }
            };
            while let Some(item) = items.recv().await {
                let end = matches!(item, FollowItem::End { .. });
                write_line(&mut write, &item).await?;
                if end {
                    break;
                }
            }
            return Ok(());
        }
    };
    write_line(&mut write, &response).await
}
