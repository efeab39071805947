//! The owner's side of the control socket: each request becomes a call of one operation
//! (`crate::ops`) as the calling OS user.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::control::{ControlError, follow_local};
use super::protocol::{FollowItem, Request, Response};
use crate::ops::Operations;
use crate::ops::actor::{Actor, os_user_name};

/// Serves control requests until `closing` is set.
pub async fn serve(listener: UnixListener, ops: Arc<Operations>, closing: Arc<AtomicBool>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let ops = Arc::clone(&ops);
        let closing = Arc::clone(&closing);
        tokio::spawn(async move {
            if let Err(e) = handle(stream, ops, closing).await {
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

fn answer<T>(result: Result<T, ControlError>, ok: impl FnOnce(T) -> Response) -> Response {
    match result {
        Ok(v) => ok(v),
        Err(e) => Response::Error {
            retry: matches!(e, ControlError::Retry),
            message: e.to_string(),
        },
    }
}

fn done(message: String) -> Response {
    Response::Done { message }
}

async fn handle(
    stream: UnixStream,
    ops: Arc<Operations>,
    closing: Arc<AtomicBool>,
) -> std::io::Result<()> {
    let (os_user, pid) = match stream.peer_cred() {
        Ok(cred) => (os_user_name(cred.uid()), cred.pid()),
        Err(_) => ("unknown".to_string(), None),
    };
    let as_caller = |by: &str| Actor::cli(by, os_user.clone(), pid);
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
            let actor = as_caller(&submission.operator);
            answer(ops.submit(&actor, submission), |run| Response::RunId {
                run,
            })
        }
        Request::Resume { run, by, force } => answer(
            ops.resume(&as_caller(&by), &run, force.as_deref()).await,
            done,
        ),
        Request::Halt { run, by, now } => answer(ops.halt(&as_caller(&by), &run, now), done),
        Request::Approve { run, by, comment } => {
            answer(ops.approve(&as_caller(&by), &run, comment), done)
        }
        Request::Rollback { run, by, reason } => {
            answer(ops.rollback(&as_caller(&by), &run, &reason), done)
        }
        Request::Cancel { run, by } => answer(ops.cancel(&as_caller(&by), &run), done),
        Request::Report { run } => answer(ops.report(run.as_deref()), |report| Response::Report {
            report: Box::new(report),
        }),
        Request::Runs => answer(ops.runs(), |runs| Response::Runs { runs }),
        Request::Backups { database } => {
            answer(ops.backups(database.as_deref()).await, |backups| {
                Response::Backups { backups }
            })
        }
        Request::CatalogSync { store } => answer(
            ops.catalog_sync(&as_caller(&os_user), store.as_deref())
                .await,
            |(store, count)| Response::Synced { store, count },
        ),
        Request::Wal { query } => answer(ops.wal(&as_caller(&os_user), query).await, |answer| {
            Response::Wal { answer }
        }),
        Request::Gc { dry_run } => answer(ops.gc(&as_caller(&os_user), dry_run).await, |answer| {
            Response::Gc { answer }
        }),
        Request::Audit => answer(ops.audit_entries(&as_caller(&os_user)), |entries| {
            Response::Audit { entries }
        }),
        Request::AuditVerify => answer(ops.audit_verify(&as_caller(&os_user)).await, |v| {
            Response::AuditVerify {
                verification: Box::new(v),
            }
        }),
        Request::Alerts => Response::Alerts {
            state: ops.alert_state(),
        },
        Request::Follow { run } => {
            let mut items = match follow_local(ops.engine(), &run) {
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
