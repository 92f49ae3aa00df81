//! The podman command line, as the reconciler uses it. Every call runs with
//! `CONTAINERS_CONF` set to the agent's `containers.conf` (or `--containers-conf`).

use std::ffi::OsString;
use std::time::Duration;

use anyhow::{Result, bail};
use serde::Deserialize;

use super::{Config, last_line, run_cmd};

/// Label every container of the agent carries.
pub(crate) const AGENT_LABEL: &str = "neocloud.agent=1";
/// Label naming the node (host name) whose agent made the container.
pub(crate) const NODE_LABEL: &str = "neocloud.node";

const QUICK: Duration = Duration::from_secs(60);

/// A container as `podman ps -a --format json` lists it.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct Listed {
    #[serde(rename = "Id")]
    pub id: String,
    #[serde(rename = "Names", default)]
    pub names: Vec<String>,
    #[serde(rename = "State", default)]
    pub state: String,
    #[serde(rename = "ExitCode", default)]
    pub exit_code: i32,
}

/// What the reconciler needs of `podman container inspect`.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct Inspected {
    #[serde(rename = "Id")]
    pub id: String,
    #[serde(rename = "State")]
    pub state: InspectedState,
    #[serde(rename = "Config")]
    pub config: InspectedConfig,
}

#[derive(Clone, Debug, Deserialize)]
pub(crate) struct InspectedState {
    #[serde(rename = "Status", default)]
    pub status: String,
    #[serde(rename = "ExitCode", default)]
    pub exit_code: i32,
}

#[derive(Clone, Debug, Deserialize)]
pub(crate) struct InspectedConfig {
    #[serde(rename = "Env", default)]
    pub env: Vec<String>,
}

/// The podman client of one agent.
#[derive(Clone, Debug)]
pub(crate) struct Podman {
    cfg: std::sync::Arc<Config>,
}

impl Podman {
    pub(crate) fn new(cfg: std::sync::Arc<Config>) -> Podman {
        Podman { cfg }
    }

    fn cmd(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.cfg.podman);
        c.env("CONTAINERS_CONF", &self.cfg.containers_conf);
        c
    }

    async fn call(&self, args: &[&str], limit: Duration) -> Result<std::process::Output> {
        run_cmd(self.cmd().args(args), limit).await
    }

    /// Whether the image is on the node.
    pub(crate) async fn image_exists(&self, image: &str) -> Result<bool> {
        let out = self.call(&["image", "exists", "--", image], QUICK).await?;
        Ok(out.status.success())
    }

    /// Pulls an image; the error is podman's last line.
    pub(crate) async fn pull(&self, image: &str) -> Result<(), String> {
        let out = self
            .call(&["pull", "--quiet", "--", image], Duration::from_secs(900))
            .await
            .map_err(|e| format!("{e:#}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(last_line(&out))
        }
    }

    /// `podman create` with these arguments; the error is podman's last line.
    pub(crate) async fn create(&self, args: Vec<OsString>) -> Result<(), String> {
        let out = run_cmd(self.cmd().arg("create").args(args), QUICK)
            .await
            .map_err(|e| format!("{e:#}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(last_line(&out))
        }
    }

    /// `podman start`; the error is podman's last line.
    pub(crate) async fn start(&self, name: &str) -> Result<(), String> {
        let out = self
            .call(&["start", name], QUICK)
            .await
            .map_err(|e| format!("{e:#}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(last_line(&out))
        }
    }

    /// `podman stop -t GRACE` (SIGTERM, SIGKILL after the grace period).
    pub(crate) async fn stop(&self, name: &str, grace: u32) -> Result<()> {
        let limit = Duration::from_secs(u64::from(grace) + 30);
        let out = self
            .call(&["stop", "--ignore", "-t", &grace.to_string(), name], limit)
            .await?;
        if !out.status.success() {
            bail!("podman stop {name}: {}", last_line(&out));
        }
        Ok(())
    }

    /// `podman rm -f` (no error when it does not exist).
    pub(crate) async fn remove(&self, name: &str) -> Result<()> {
        let out = self
            .call(&["rm", "-f", "--ignore", "-t", "0", name], QUICK)
            .await?;
        if !out.status.success() {
            bail!("podman rm {name}: {}", last_line(&out));
        }
        Ok(())
    }

    /// The container, or `None` when there is none of that name.
    pub(crate) async fn inspect(&self, name: &str) -> Result<Option<Inspected>> {
        let out = self
            .call(&["container", "inspect", "--format", "json", name], QUICK)
            .await?;
        if !out.status.success() {
            let err = last_line(&out).to_lowercase();
            if err.contains("no such") {
                return Ok(None);
            }
            bail!("podman inspect {name}: {err}");
        }
        let mut list: Vec<Inspected> = serde_json::from_slice(&out.stdout)?;
        Ok(list.pop())
    }

    /// Every container this node's agent made.
    pub(crate) async fn list(&self) -> Result<Vec<Listed>> {
        let node = format!("label={NODE_LABEL}={}", self.cfg.hostname);
        let agent = format!("label={AGENT_LABEL}");
        let out = self
            .call(
                &[
                    "ps", "-a", "--filter", &agent, "--filter", &node, "--format", "json",
                ],
                QUICK,
            )
            .await?;
        if !out.status.success() {
            bail!("podman ps: {}", last_line(&out));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        if text.trim().is_empty() {
            return Ok(Vec::new());
        }
        Ok(serde_json::from_str(&text)?)
    }
}
