//! Helpers for end-to-end tests that drive the real `lazarus` binary.
#![allow(dead_code)]

pub mod kube_api;
pub mod otlp;
pub mod pg;
pub mod s3;
pub mod serve;
pub mod wal;
pub mod webdriver;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The longest any single lazarus command may take in a test.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(120);

/// A throwaway project directory with its own state directory.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Self {
        // Short paths: the control socket must fit in 107 bytes.
        let dir = tempfile::Builder::new()
            .prefix("lz")
            .tempdir_in("/tmp")
            .expect("temp dir");
        Sandbox { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn state(&self) -> PathBuf {
        self.path().join("state")
    }

    /// A `lazarus` command in the sandbox, with its state directory and an operator.
    pub fn cmd(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lazarus"));
        cmd.current_dir(self.path())
            .env("LAZARUS_STATE", self.state())
            .env("LAZARUS_OPERATOR", "tester")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `lazarus ARGS` to completion; a hang fails the test instead of stalling CI.
    pub fn run(&self, args: &[&str]) -> Output {
        Self::run_in(self.cmd(), args)
    }

    /// Runs a prepared `lazarus` command (extra environment, say) like [`Sandbox::run`].
    pub fn run_in(mut cmd: Command, args: &[&str]) -> Output {
        let mut child = cmd
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run lazarus");
        let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        let out_reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = std::io::Read::read_to_end(&mut out, &mut buf);
            buf
        });
        let err_reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = std::io::Read::read_to_end(&mut err, &mut buf);
            buf
        });
        let deadline = Instant::now() + COMMAND_LIMIT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("lazarus {args:?} hung for {COMMAND_LIMIT:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Output {
            status,
            stdout: out_reader.join().unwrap_or_default(),
            stderr: err_reader.join().unwrap_or_default(),
        }
    }

    /// Runs `lazarus ARGS` and insists on success.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "lazarus {args:?} failed ({:?})\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `lazarus ARGS` in the background.
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.cmd()
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn lazarus")
    }

    /// Writes a file in the sandbox and returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&path, text).expect("write");
        path
    }

    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path().join(name)).unwrap_or_default()
    }

    /// `lazarus status RUN --json`.
    pub fn status(&self, run: &str) -> Value {
        let out = self.ok(&["status", run, "--json"]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("status json: {e}\n{out}"))
    }

    /// The status of one step of a run.
    pub fn step<'a>(report: &'a Value, id: &str) -> &'a Value {
        report["steps"]
            .as_array()
            .and_then(|steps| steps.iter().find(|s| s["id"] == id))
            .unwrap_or_else(|| panic!("no step {id} in {report}"))
    }

    /// Polls until `check` holds, or panics after `timeout` with `what`.
    pub fn wait_for(&self, what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// An HTTP server (a webhook, a health endpoint) on 127.0.0.1 in a thread of its own;
/// returns its address.
pub fn http_server(app: axum::Router) -> std::net::SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            tx.send(listener.local_addr().expect("addr")).expect("send");
            axum::serve(listener, app).await.expect("serve");
        });
    });
    rx.recv().expect("server address")
}

/// Sends SIGKILL to a child and reaps it.
pub fn kill9(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Whether any live process has `marker` (a literal string) in its command line.
pub fn process_with(marker: &str) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        panic!("/proc is needed by this test");
    };
    entries.filter_map(Result::ok).any(|entry| {
        let is_pid = entry
            .file_name()
            .to_string_lossy()
            .chars()
            .all(|c| c.is_ascii_digit());
        if !is_pid || entry.file_name().to_string_lossy() == std::process::id().to_string() {
            return false;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let state = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let zombie = state
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z'));
        !zombie
            && String::from_utf8_lossy(&cmdline)
                .replace('\0', " ")
                .contains(marker)
    })
}

/// The combined output of a command, for messages.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Five command steps on target `shop`, each appending its name to `DIR/effects` once
/// (the torture that shows every effect exactly once); the third logs `s3-start` to
/// `DIR/log` and waits for `DIR/go`, so a test can kill its runner inside it.
pub fn five_effects_workflow(name: &str, dir: &Path) -> String {
    let mut text = format!("name = \"{name}\"\ntarget = \"shop\"\n");
    for i in 1..=5 {
        let wait = if i == 3 {
            "echo s3-start >> \"$D/log\"; while [ ! -f \"$D/go\" ]; do sleep 0.05; done; "
        } else {
            ""
        };
        text.push_str(&format!(
            "[[steps]]\nid = \"s{i}\"\nactivity = \"command\"\nwith = {{ shell = '{wait}echo s{i} >> \"$D/effects\"', env = {{ D = \"{}\" }} }}\n",
            dir.display()
        ));
    }
    text
}
