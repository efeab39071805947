//! `command`: run a program (argv) or a shell line, with environment, working directory and
//! an optional `undo` command as its compensation. The tail of its output is journaled.
//!
//! Every command runs under the process-group supervisor (see `supervise`), so nothing it
//! starts outlives the runner.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::inputs::{self, lenient_opt_u64, opt_string_list, opt_text, string_map};
use super::supervise::{CANNOT_START, STOP_BYTE, supervisor_program};
use crate::engine::{Activity, ActivityContext, ActivityError, ActivitySpec, InputSpec, Progress};

/// How long a command gets between SIGTERM and SIGKILL when its attempt is cancelled.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Default bytes of stdout and of stderr kept in the output.
const DEFAULT_TAIL: u64 = 4096;

static SPEC: ActivitySpec = ActivitySpec {
    name: "command",
    summary: "run a program or shell line; undo = a command that reverses it",
    inputs: &[
        InputSpec {
            name: "argv",
            required: false,
            help: "program and arguments, e.g. [\"systemctl\", \"restart\", \"app\"]",
        },
        InputSpec {
            name: "shell",
            required: false,
            help: "a line for /bin/sh -c (instead of argv)",
        },
        InputSpec {
            name: "env",
            required: false,
            help: "extra environment variables",
        },
        InputSpec {
            name: "cwd",
            required: false,
            help: "working directory",
        },
        InputSpec {
            name: "undo",
            required: false,
            help: "compensation: a shell line, or an argv array",
        },
        InputSpec {
            name: "tail_bytes",
            required: false,
            help: "bytes of stdout/stderr kept in the output (default 4096)",
        },
        InputSpec {
            name: "timeout",
            required: false,
            help: "stop the command after this long, e.g. \"5m\" (the step's timeout also applies)",
        },
    ],
    outputs: &["exit_code", "stdout", "stderr", "duration_seconds"],
};

/// A command: argv, or a line for `/bin/sh -c`.
#[derive(Debug, Clone)]
enum CommandLine {
    Argv(Vec<String>),
    Shell(String),
}

impl<'de> Deserialize<'de> for CommandLine {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(line) => Ok(CommandLine::Shell(line)),
            Value::Array(items) => inputs::string_list(Value::Array(items))
                .map(CommandLine::Argv)
                .map_err(serde::de::Error::custom),
            other => Err(serde::de::Error::custom(format!(
                "undo must be a shell line or an argv array, got {other}"
            ))),
        }
    }
}

impl CommandLine {
    fn argv(&self) -> Vec<String> {
        match self {
            CommandLine::Argv(argv) => argv.clone(),
            CommandLine::Shell(line) => vec!["/bin/sh".into(), "-c".into(), line.clone()],
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Inputs {
    #[serde(default, deserialize_with = "opt_string_list")]
    argv: Option<Vec<String>>,
    #[serde(default, deserialize_with = "opt_text")]
    shell: Option<String>,
    #[serde(default, deserialize_with = "string_map")]
    env: BTreeMap<String, String>,
    cwd: Option<PathBuf>,
    undo: Option<CommandLine>,
    #[serde(default, deserialize_with = "lenient_opt_u64")]
    tail_bytes: Option<u64>,
    #[serde(default, deserialize_with = "inputs::opt_duration")]
    timeout: Option<Duration>,
}

impl Inputs {
    fn command(&self) -> Result<CommandLine, ActivityError> {
        match (&self.argv, &self.shell) {
            (Some(argv), None) if !argv.is_empty() => Ok(CommandLine::Argv(argv.clone())),
            (None, Some(line)) => Ok(CommandLine::Shell(line.clone())),
            _ => Err(ActivityError::bad_input(
                "command",
                "give exactly one of argv (a non-empty array) or shell",
            )),
        }
    }
}

/// The `command` activity.
pub struct CommandActivity;

/// Runs a program under the supervisor, as a `command` step would (for adapters built on
/// commands, such as restarting an application).
pub async fn run_program(
    ctx: &ActivityContext,
    argv: Vec<String>,
    shell: Option<String>,
    timeout: Option<Duration>,
) -> Result<Value, ActivityError> {
    let inputs = Inputs {
        argv: (!argv.is_empty()).then_some(argv),
        shell,
        timeout,
        ..Inputs::default()
    };
    let line = inputs.command()?;
    run_command(ctx, &line, &inputs).await
}

/// Keeps the last `limit` bytes of a stream.
struct Tail {
    limit: usize,
    bytes: VecDeque<u8>,
    total: u64,
    /// Reading stopped because a process outside the step held the pipe open.
    cut_short: bool,
}

impl Tail {
    fn new(limit: usize) -> Self {
        Self {
            limit,
            bytes: VecDeque::new(),
            total: 0,
            cut_short: false,
        }
    }

    fn push(&mut self, chunk: &[u8]) {
        self.total += chunk.len() as u64;
        let chunk = &chunk[chunk.len().saturating_sub(self.limit)..];
        self.bytes.extend(chunk);
        while self.bytes.len() > self.limit {
            self.bytes.pop_front();
        }
    }

    fn text(&self) -> String {
        let (a, b) = self.bytes.as_slices();
        let mut all = a.to_vec();
        all.extend_from_slice(b);
        let mut text = String::from_utf8_lossy(&all).trim_end().to_string();
        if self.total > self.bytes.len() as u64 {
            text = format!("…{text}");
        }
        if self.cut_short {
            text.push_str("\n[output no longer read: a process that left the step's process group still holds it open]");
        }
        text
    }

    fn last_line(&self) -> Option<String> {
        let text = self.text();
        text.lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(|l| l.chars().take(120).collect())
    }
}

/// How long output is still read after the command exits: a process that left the group
/// (daemonised with `setsid`) may hold the pipes open for ever.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// Bytes of stdout and stderr kept at most, whatever `tail_bytes` asks.
const MAX_TAIL: u64 = 64 * 1024;

async fn drain(
    mut stream: impl AsyncRead + Unpin,
    limit: usize,
    ctx: &ActivityContext,
    report_lines: bool,
    mut exited: tokio::sync::watch::Receiver<bool>,
) -> Tail {
    let mut tail = Tail::new(limit);
    let mut buf = vec![0u8; 8192];
    let mut last_report = Instant::now() - Duration::from_secs(1);
    let grace = async {
        let _ = exited.wait_for(|done| *done).await;
        tokio::time::sleep(OUTPUT_GRACE).await;
    };
    tokio::pin!(grace);
    loop {
        let n = tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            _ = &mut grace => {
                tail.cut_short = true;
                break;
            }
        };
        tail.push(&buf[..n]);
        if report_lines && last_report.elapsed() > Duration::from_millis(200) {
            last_report = Instant::now();
            ctx.progress(Progress {
                unit: "lines".into(),
                message: tail.last_line(),
                ..Progress::default()
            });
        }
    }
    tail
}

/// Runs one command line under the supervisor until it exits or the attempt is cancelled.
async fn run_command(
    ctx: &ActivityContext,
    line: &CommandLine,
    inputs: &Inputs,
) -> Result<Value, ActivityError> {
    let argv = line.argv();
    let started = Instant::now();
    let (control_read, control_write) = std::io::pipe()
        .map_err(|e| ActivityError::retryable(format!("cannot create a pipe: {e}")))?;
    let mut cmd = tokio::process::Command::new(supervisor_program());
    cmd.arg("__supervise")
        .arg("--")
        .args(&argv)
        .stdin(Stdio::from(control_read))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .envs(&inputs.env)
        .env("LAZARUS_RUN_ID", &ctx.run_id)
        .env("LAZARUS_STEP_ID", &ctx.step_id)
        .env("LAZARUS_ATTEMPT", ctx.attempt.to_string());
    if let Some(cwd) = &inputs.cwd {
        if !cwd.is_dir() {
            return Err(ActivityError::permanent(format!(
                "working directory {} does not exist",
                cwd.display()
            )));
        }
        cmd.current_dir(cwd);
    }
    let mut child = cmd.spawn().map_err(|e| {
        ActivityError::permanent(format!("cannot start the command supervisor: {e}"))
    })?;
    drop(cmd);
    // Dropping this write end (on return, or when the runner dies) is the supervisor's cue
    // to kill the command's process group.
    let mut control = Some(control_write);

    let limit = usize::try_from(inputs.tail_bytes.unwrap_or(DEFAULT_TAIL).min(MAX_TAIL))
        .unwrap_or(usize::MAX);
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let (exited_tx, exited_rx) = tokio::sync::watch::channel(false);
    // Output is drained while the command runs (a full pipe would stall it), and for a
    // short grace after it exits.
    let outputs = async {
        let out = async {
            match stdout {
                Some(s) => drain(s, limit, ctx, true, exited_rx.clone()).await,
                None => Tail::new(0),
            }
        };
        let err = async {
            match stderr {
                Some(s) => drain(s, limit, ctx, false, exited_rx.clone()).await,
                None => Tail::new(0),
            }
        };
        tokio::join!(out, err)
    };

    // The command stops on the attempt's cancellation, or on its own timeout.
    let cancel = ctx.cancellation().child_token();
    let timer = inputs.timeout.map(|limit| {
        let stop = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            stop.cancel();
        })
    });
    let waiting = async {
        let mut stopping = false;
        let status = loop {
            tokio::select! {
                status = child.wait() => break status,
                _ = cancel.cancelled(), if !stopping => {
                    stopping = true;
                    if let Some(pipe) = control.as_mut() {
                        // One byte into an otherwise empty pipe never blocks.
                        let _ = std::io::Write::write_all(pipe, &[STOP_BYTE]);
                    }
                    match tokio::time::timeout(STOP_GRACE, child.wait()).await {
                        Ok(status) => break status,
                        Err(_) => {
                            // Closing the pipe makes the supervisor kill the whole group.
                            control = None;
                        }
                    }
                }
            }
        };
        drop(control);
        let _ = exited_tx.send(true);
        status
    };
    let (status, (stdout, stderr)) = tokio::join!(waiting, outputs);
    let status = status
        .map_err(|e| ActivityError::retryable(format!("waiting for the command failed: {e}")))?;
    if let Some(signal) = std::os::unix::process::ExitStatusExt::signal(&status) {
        return Err(ActivityError::retryable(format!(
            "the command supervisor was killed by signal {signal}; the command was stopped with it"
        )));
    }
    let code = status.code().unwrap_or(-1);
    let elapsed = started.elapsed().as_secs_f64();
    if let Some(timer) = timer {
        timer.abort();
    }
    if ctx.cancellation().is_cancelled() {
        return Err(ActivityError::cancelled(format!(
            "command stopped after {elapsed:.1}s"
        )));
    }
    if cancel.is_cancelled() {
        return Err(ActivityError::retryable(format!(
            "command timed out after {}",
            crate::engine::duration::format_duration(inputs.timeout.unwrap_or_default())
        )));
    }
    if code == 0 {
        return Ok(json!({
            "exit_code": code,
            "stdout": stdout.text(),
            "stderr": stderr.text(),
            "duration_seconds": elapsed,
        }));
    }
    let shown = match line {
        CommandLine::Argv(argv) => argv.first().cloned().unwrap_or_default(),
        CommandLine::Shell(_) => "shell command".to_string(),
    };
    let detail = stderr
        .text()
        .lines()
        .rev()
        .take(5)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    let message = if detail.is_empty() {
        format!("{shown} exited with status {code}")
    } else {
        format!("{shown} exited with status {code}: {detail}")
    };
    if code == CANNOT_START || code == 126 {
        Err(ActivityError::permanent(message))
    } else {
        Err(ActivityError::retryable(message))
    }
}

#[async_trait]
impl Activity for CommandActivity {
    fn spec(&self) -> &'static ActivitySpec {
        &SPEC
    }

    fn check_inputs(&self, inputs: &Value) -> Result<(), String> {
        let has = |k: &str| inputs.get(k).is_some();
        match (has("argv"), has("shell")) {
            (true, true) => Err("give argv or shell, not both".into()),
            (false, false) => Err("give argv (an array) or shell (a string)".into()),
            _ => Ok(()),
        }
    }

    async fn run(&self, ctx: &ActivityContext, inputs: Value) -> Result<Value, ActivityError> {
        let inputs: Inputs = inputs::parse("command", inputs)?;
        let line = inputs.command()?;
        run_command(ctx, &line, &inputs).await
    }

    fn compensates_itself(&self, inputs: &Value) -> bool {
        inputs.get("undo").is_some()
    }

    async fn compensate(
        &self,
        ctx: &ActivityContext,
        inputs: Value,
        _output: Value,
    ) -> Result<Value, ActivityError> {
        let inputs: Inputs = inputs::parse("command", inputs)?;
        let Some(undo) = inputs.undo.clone() else {
            return Err(ActivityError::permanent("this command step has no undo"));
        };
        run_command(ctx, &undo, &inputs).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_bytes_and_marks_truncation() {
        let mut t = Tail::new(8);
        t.push(b"hello ");
        t.push(b"world\nbye\n");
        assert_eq!(t.text(), "…rld\nbye");
        assert_eq!(t.last_line().as_deref(), Some("bye"));
        let mut small = Tail::new(100);
        small.push(b"ok\n");
        assert_eq!(small.text(), "ok");
    }

    #[test]
    fn argv_or_shell_but_not_both() {
        let a = CommandActivity;
        assert!(
            a.check_inputs(&serde_json::json!({"argv": ["true"]}))
                .is_ok()
        );
        assert!(
            a.check_inputs(&serde_json::json!({"shell": "true"}))
                .is_ok()
        );
        assert!(
            a.check_inputs(&serde_json::json!({"argv": ["true"], "shell": "x"}))
                .is_err()
        );
        assert!(a.check_inputs(&serde_json::json!({})).is_err());
    }
}
