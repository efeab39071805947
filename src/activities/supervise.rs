//! The process-group supervisor behind the `command` activity (`lazarus __supervise -- ARGV`).
//!
//! The runner starts this small process with a pipe as its stdin and keeps the pipe's write
//! end. The supervisor starts the command in a new process group and watches the pipe:
//! a `T` byte asks for a graceful stop (SIGTERM to the group); end-of-file means the runner
//! is gone — killed with SIGKILL, crashed, or done with the attempt — and the whole group is
//! killed at once. So a command's processes never outlive the runner, and a resumed step
//! never races an orphan of the previous attempt. When the command exits, stragglers it
//! left in its group are killed too: a step's processes end with the step.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::Pid;

/// The byte that asks for a graceful stop.
pub const STOP_BYTE: u8 = b'T';

/// Exit status used when the command could not be started at all.
pub const CANNOT_START: i32 = 127;

/// Runs `argv` under supervision and returns the exit status to exit with.
pub fn supervise(argv: &[String]) -> i32 {
    let Some((program, args)) = argv.split_first() else {
        eprintln!("lazarus __supervise: no command given");
        return 2;
    };
    let mut command = Command::new(program);
    command.args(args).stdin(Stdio::null()).process_group(0);
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent. If this
    // supervisor is itself killed, the command dies with it rather than running unwatched.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
        });
    }
    let child = command.spawn();
    let child = match child {
        Ok(child) => child,
        Err(e) => {
            eprintln!("lazarus: cannot start \"{program}\": {e}");
            return CANNOT_START;
        }
    };
    let group = Pid::from_raw(child.id() as i32);

    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut byte = [0u8; 1];
        loop {
            match stdin.read(&mut byte) {
                Ok(1) if byte[0] == STOP_BYTE => {
                    let _ = killpg(group, Signal::SIGTERM);
                }
                Ok(1) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                _ => {
                    // The runner is gone: nothing of this step may outlive it.
                    let _ = killpg(group, Signal::SIGKILL);
                    std::process::exit(128 + Signal::SIGKILL as i32);
                }
            }
        }
    });

    // Wait without reaping, so the group id cannot be reused while stragglers are killed.
    let status = loop {
        match waitid(Id::Pid(group), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
            Ok(status) => break status,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                eprintln!("lazarus __supervise: waiting for \"{program}\" failed: {e}");
                let _ = killpg(group, Signal::SIGKILL);
                return 1;
            }
        }
    };
    let _ = killpg(group, Signal::SIGKILL);
    let _ = waitid(Id::Pid(group), WaitPidFlag::WEXITED);
    match status {
        WaitStatus::Exited(_, code) => code,
        WaitStatus::Signaled(_, signal, _) => 128 + signal as i32,
        _ => 1,
    }
}

/// The program that runs `__supervise`: this very executable (or `LAZARUS_SUPERVISOR`).
pub fn supervisor_program() -> PathBuf {
    std::env::var_os("LAZARUS_SUPERVISOR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/proc/self/exe"))
}

/// A program running under the supervisor, from blocking code (pg_dump, pg_restore). Its
/// process group dies with this process; dropping the handle kills it.
pub struct Supervised {
    /// The supervisor process (its stdout and stderr are the program's).
    pub child: Child,
    control: Option<std::io::PipeWriter>,
}

impl Supervised {
    /// Starts `program args` under the supervisor; `configure` sets env, stdout, stderr.
    pub fn spawn<I, S>(
        program: &std::path::Path,
        args: I,
        configure: impl FnOnce(&mut Command),
    ) -> std::io::Result<Supervised>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let (control_read, control_write) = std::io::pipe()?;
        let mut cmd = Command::new(supervisor_program());
        cmd.arg("__supervise")
            .arg("--")
            .arg(program)
            .args(args)
            .stdin(Stdio::from(control_read))
            .process_group(0);
        configure(&mut cmd);
        let child = cmd.spawn()?;
        Ok(Supervised {
            child,
            control: Some(control_write),
        })
    }

    /// Asks the program to stop (SIGTERM to its group), then kills it after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        if let Some(pipe) = self.control.as_mut() {
            let _ = pipe.write_all(&[STOP_BYTE]);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.control = None;
        let _ = self.child.wait();
    }

    /// Waits for the program to exit.
    /// A handle another thread may use to stop the program (its group) while this one
    /// waits on it: a watchdog for a program that can block without output.
    pub fn stopper(&self) -> Option<Stopper> {
        self.control
            .as_ref()
            .and_then(|pipe| pipe.try_clone().ok())
            .map(|pipe| Stopper { pipe })
    }

    /// Waits for the program to end.
    pub fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        let status = self.child.wait();
        self.control = None;
        status
    }
}

/// Stops a supervised program from another thread (see [`Supervised::stopper`]).
pub struct Stopper {
    pipe: std::io::PipeWriter,
}

impl Stopper {
    /// Asks the supervisor to stop the program's group (it escalates to SIGKILL).
    pub fn stop(&mut self) {
        let _ = self.pipe.write_all(&[STOP_BYTE]);
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        // Closing the pipe makes the supervisor kill the group if it still runs.
        self.control = None;
        let _ = self.child.try_wait();
    }
}
