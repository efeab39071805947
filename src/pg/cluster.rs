//! Throwaway PostgreSQL clusters in temporary directories: for the demo and the tests.
//! PostgreSQL refuses to run as root, so when this process is root the server-side tools run
//! as the `postgres` user, in directories that user owns.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{PgError, Server, Tools, running_as_root, tail_lines};

/// A PostgreSQL cluster of our own, stopped and removed on drop.
pub struct Cluster {
    /// Its directory (data, socket, log).
    pub root: PathBuf,
    /// The data directory.
    pub data: PathBuf,
    /// TCP port on 127.0.0.1.
    pub port: u16,
    tools: Tools,
    running: bool,
    keep: bool,
}

/// A port nobody listens on right now.
pub fn free_port() -> Result<u16, PgError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| PgError::Io(format!("cannot find a free port: {e}")))
}

/// The `postgres` user's ids (server processes run as it when we are root).
pub fn postgres_ids() -> Result<(nix::unistd::Uid, nix::unistd::Gid), PgError> {
    let user = nix::unistd::User::from_name("postgres")
        .ok()
        .flatten()
        .ok_or_else(|| {
            PgError::Io(
                "running as root, PostgreSQL needs a `postgres` user to run as; create it (Debian: apt-get install postgresql)".into(),
            )
        })?;
    Ok((user.uid, user.gid))
}

/// Hands a path to the `postgres` user.
pub fn chown_to_postgres(path: &Path) -> Result<(), PgError> {
    let (uid, gid) = postgres_ids()?;
    nix::unistd::chown(path, Some(uid), Some(gid))
        .map_err(|e| PgError::Io(format!("cannot chown {} to postgres: {e}", path.display())))
}

impl Cluster {
    /// A server-side tool, run as `postgres` when we are root.
    pub fn server_command(tools: &Tools, tool: &str) -> Result<Command, PgError> {
        let path = tools.path(tool)?;
        if running_as_root() {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(path);
            Ok(cmd)
        } else {
            Ok(Command::new(path))
        }
    }

    fn run(cmd: &mut Command, tool: &str) -> Result<(), PgError> {
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .map_err(|e| PgError::Io(format!("cannot run {tool}: {e}")))?;
        if !out.status.success() {
            let mut both = out.stdout.clone();
            both.extend_from_slice(&out.stderr);
            return Err(PgError::Failed {
                tool: tool.to_string(),
                status: out.status.to_string(),
                detail: tail_lines(&both, 5),
            });
        }
        Ok(())
    }

    /// The tools this cluster runs with.
    pub fn tools(&self) -> &Tools {
        &self.tools
    }

    /// Creates a new cluster (initdb) in a fresh temporary directory.
    pub fn create(tools: Tools, name: &str) -> Result<Cluster, PgError> {
        let root = std::env::temp_dir().join(format!(
            "lazarus-pg-{name}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&root)
            .map_err(|e| PgError::Io(format!("cannot create {}: {e}", root.display())))?;
        if running_as_root() {
            chown_to_postgres(&root)?;
        }
        let data = root.join("data");
        Self::run(
            Self::server_command(&tools, "initdb")?
                .arg("-D")
                .arg(&data)
                .args([
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ]),
            "initdb",
        )?;
        Ok(Cluster {
            root,
            data,
            port: free_port()?,
            tools,
            running: false,
            keep: false,
        })
    }

    /// Adds lines to postgresql.conf (archive_command, wal_level, ...).
    pub fn configure(&self, lines: &[String]) -> Result<(), PgError> {
        use std::io::Write;
        let path = self.data.join("postgresql.conf");
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| PgError::Io(format!("cannot open {}: {e}", path.display())))?;
        for line in lines {
            writeln!(file, "{line}")
                .map_err(|e| PgError::Io(format!("cannot write {}: {e}", path.display())))?;
        }
        Ok(())
    }

    /// Starts the server on 127.0.0.1:port and waits until it accepts connections.
    pub fn start(&mut self) -> Result<(), PgError> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.root.display()
        );
        Self::run(
            Self::server_command(&self.tools, "pg_ctl")?
                .arg("-D")
                .arg(&self.data)
                .arg("-l")
                .arg(self.root.join("server.log"))
                .args(["-w", "-t", "60", "-o", &options, "start"]),
            "pg_ctl start",
        )?;
        self.running = true;
        Ok(())
    }

    /// Stops the server (fast shutdown).
    pub fn stop(&mut self) -> Result<(), PgError> {
        if !self.running {
            return Ok(());
        }
        Self::run(
            Self::server_command(&self.tools, "pg_ctl")?
                .arg("-D")
                .arg(&self.data)
                .args(["-m", "fast", "-w", "stop"]),
            "pg_ctl stop",
        )?;
        self.running = false;
        Ok(())
    }

    /// How to reach it.
    pub fn server(&self) -> Server {
        Server {
            host: Some("127.0.0.1".into()),
            port: Some(self.port),
            user: Some("postgres".into()),
            password: None,
        }
    }

    /// Leaves the directory behind on drop (for inspection).
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.stop();
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

/// The process id in a data directory's `postmaster.pid` when that process is alive: the
/// directory belongs to a running server, and nothing may remove it.
pub fn live_postmaster(data_dir: &std::path::Path) -> Option<i32> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    if pid <= 0 {
        return None;
    }
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) | Err(nix::errno::Errno::EPERM) => Some(pid),
        Err(_) => None,
    }
}
