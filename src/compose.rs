//! Docker Compose: the invocations that restart, stop and start an application's services,
//! and the wait for their health after a start — `docker compose ps --format json` until
//! every service with a healthcheck says `healthy` and every other one is `running`.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// What to do to the services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `docker compose restart`.
    Restart,
    /// `docker compose stop`: nothing writes to the old database during the restore.
    Stop,
    /// `docker compose up -d`: back after a stop.
    Start,
}

impl Action {
    /// Reads `restart`, `stop` or `start`.
    pub fn parse(text: &str) -> Result<Self, ComposeError> {
        match text.trim() {
            "" | "restart" => Ok(Self::Restart),
            "stop" => Ok(Self::Stop),
            "start" => Ok(Self::Start),
            other => Err(ComposeError::Input(format!(
                "action \"{other}\" is not restart, stop or start"
            ))),
        }
    }
}

/// Why the services did not come up healthy, or the input is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    /// A wrong input.
    #[error("{0}")]
    Input(String),
    /// `docker compose ps` could not be run or read.
    #[error("{0}")]
    Query(String),
    /// A service reported itself unhealthy or exited.
    #[error("{0}")]
    Unhealthy(String),
    /// The services were not all healthy within the limit.
    #[error("{0}")]
    Timeout(String),
}

/// The `docker` command line for an action (the program first).
pub fn command(file: &Path, action: Action, services: &[String]) -> Vec<String> {
    let mut argv = vec![
        "docker".to_string(),
        "compose".into(),
        "-f".into(),
        file.display().to_string(),
    ];
    match action {
        Action::Restart => argv.push("restart".into()),
        Action::Stop => argv.push("stop".into()),
        Action::Start => argv.extend(["up".into(), "-d".into()]),
    }
    argv.extend(services.iter().cloned());
    argv
}

/// The `docker` command line that lists the services' containers as JSON.
pub fn ps_command(file: &Path, services: &[String]) -> Vec<String> {
    let mut argv: Vec<String> = ["docker", "compose", "-f"]
        .into_iter()
        .map(String::from)
        .collect();
    argv.push(file.display().to_string());
    argv.extend(["ps", "-a", "--format", "json"].map(String::from));
    argv.extend(services.iter().cloned());
    argv
}

/// One service container as `docker compose ps --format json` describes it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Container {
    /// The compose service.
    #[serde(rename = "Service", default)]
    pub service: String,
    /// `running`, `exited`, `restarting`, ...
    #[serde(rename = "State", default)]
    pub state: String,
    /// `healthy`, `unhealthy`, `starting`, or empty when there is no healthcheck.
    #[serde(rename = "Health", default)]
    pub health: String,
}

/// Reads `ps --format json`: a JSON array (older Compose) or one object per line (newer).
pub fn parse_ps(text: &str) -> Result<Vec<Container>, ComposeError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    let bad = |e: serde_json::Error| {
        ComposeError::Query(format!(
            "docker compose ps gave output Lazarus cannot read: {e}"
        ))
    };
    if trimmed.starts_with('[') {
        return serde_json::from_str(trimmed).map_err(bad);
    }
    trimmed
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(bad))
        .collect()
}

/// Where the services stand: `Ok(true)` all up (healthy where there is a healthcheck),
/// `Ok(false)` still coming up, `Err` one failed.
pub fn judge(containers: &[Container], services: &[String]) -> Result<bool, ComposeError> {
    for wanted in services {
        if !containers.iter().any(|c| &c.service == wanted) {
            return Ok(false);
        }
    }
    if containers.is_empty() {
        return Ok(false);
    }
    let mut ready = true;
    for c in containers {
        if c.health == "unhealthy" {
            return Err(ComposeError::Unhealthy(format!(
                "service {} reports unhealthy: look at `docker compose logs {}`",
                c.service, c.service
            )));
        }
        if matches!(c.state.as_str(), "exited" | "dead") {
            return Err(ComposeError::Unhealthy(format!(
                "service {} has {} instead of running: look at `docker compose logs {}`",
                c.service, c.state, c.service
            )));
        }
        let up = c.state == "running" && (c.health.is_empty() || c.health == "healthy");
        ready &= up;
    }
    Ok(ready)
}

/// Waits until the services are up and healthy, asking `docker compose ps` every
/// `interval`, for at most `limit`.
pub async fn wait_healthy(
    file: &Path,
    services: &[String],
    interval: Duration,
    limit: Duration,
) -> Result<Vec<Container>, ComposeError> {
    let deadline = tokio::time::Instant::now() + limit;
    let last = loop {
        let argv = ps_command(file, services);
        let output = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::process::Command::new(&argv[0])
                .args(&argv[1..])
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .map_err(|_| ComposeError::Query("docker compose ps did not answer within 30 s".into()))?
        .map_err(|e| ComposeError::Query(format!("cannot run docker ({e}): the compose adapter needs docker with its compose plugin on the PATH of the process that drives the run")))?;
        if !output.status.success() {
            return Err(ComposeError::Query(format!(
                "docker compose ps failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        let containers = parse_ps(&String::from_utf8_lossy(&output.stdout))?;
        if judge(&containers, services)? {
            return Ok(containers);
        }
        if tokio::time::Instant::now() + interval > deadline {
            break containers;
        }
        tokio::time::sleep(interval).await;
    };
    let states: Vec<String> = last
        .iter()
        .map(|c| {
            if c.health.is_empty() {
                format!("{} {}", c.service, c.state)
            } else {
                format!("{} {} ({})", c.service, c.state, c.health)
            }
        })
        .collect();
    Err(ComposeError::Timeout(format!(
        "the services were not all up and healthy within {}: {}",
        crate::engine::duration::format_duration(limit),
        if states.is_empty() {
            "no container is running".to_string()
        } else {
            states.join(", ")
        }
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_action_is_its_compose_command() {
        let f = Path::new("/srv/app/compose.yaml");
        let web = vec!["web".to_string()];
        assert_eq!(
            command(f, Action::Stop, &web).join(" "),
            "docker compose -f /srv/app/compose.yaml stop web"
        );
        assert_eq!(
            command(f, Action::Start, &[]).join(" "),
            "docker compose -f /srv/app/compose.yaml up -d"
        );
        assert_eq!(
            command(f, Action::Restart, &web).join(" "),
            "docker compose -f /srv/app/compose.yaml restart web"
        );
        assert!(Action::parse("scale").is_err());
    }

    #[test]
    fn ps_output_is_read_in_both_shapes_and_judged() {
        let lines = "{\"Service\":\"web\",\"State\":\"running\",\"Health\":\"starting\"}\n{\"Service\":\"worker\",\"State\":\"running\",\"Health\":\"\"}\n";
        let containers = parse_ps(lines).unwrap();
        assert_eq!(containers.len(), 2);
        assert!(!judge(&containers, &[]).unwrap(), "web is still starting");
        let array = "[{\"Service\":\"web\",\"State\":\"running\",\"Health\":\"healthy\"}]";
        assert!(judge(&parse_ps(array).unwrap(), &["web".into()]).unwrap());
        assert!(
            !judge(&parse_ps(array).unwrap(), &["db".into()]).unwrap(),
            "a wanted service is missing"
        );
        let sick = "[{\"Service\":\"web\",\"State\":\"running\",\"Health\":\"unhealthy\"}]";
        let err = judge(&parse_ps(sick).unwrap(), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("web reports unhealthy"), "{err}");
    }
}
