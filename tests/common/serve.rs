//! A real `lazarus serve` for tests, and API tokens made the way a user makes them.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Sandbox, text};

/// A running `lazarus serve` with its address and everything it printed.
pub struct Server {
    child: Child,
    pub base: String,
    output: Arc<Mutex<String>>,
}

impl Server {
    pub fn start(sb: &Sandbox) -> Server {
        Server::start_with(sb, &[])
    }

    /// `serve` with extra environment variables.
    pub fn start_with(sb: &Sandbox, env: &[(&str, &str)]) -> Server {
        let mut child = sb
            .cmd()
            .envs(env.iter().copied())
            .args(["serve", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start lazarus serve");
        let stderr = child.stderr.take().unwrap();
        let output = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = Arc::clone(&output);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("HTTP API on ").nth(1) {
                    let base = rest.split("/api").next().unwrap_or_default().to_string();
                    let _ = tx.send(base);
                }
                sink.lock().unwrap().push_str(&line);
                sink.lock().unwrap().push('\n');
            }
        });
        let base = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("serve printed no address: {}", output.lock().unwrap()));
        Server {
            child,
            base,
            output,
        }
    }

    pub fn stop(mut self) -> String {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
        self.output.lock().unwrap().clone()
    }
}

impl Drop for Server {
    /// A test that fails leaves no server behind.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `lazarus token create`; returns the token (printed once, on stdout alone).
pub fn token(sb: &Sandbox, name: &str, role: &str) -> String {
    let out = sb.run(&["token", "create", "--name", name, "--role", role]);
    assert!(out.status.success(), "{}", text(&out));
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains(&token),
        "the token goes to stdout alone"
    );
    token
}
