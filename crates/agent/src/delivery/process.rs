//! The process runtime: a workload's command as a plain process on the host, in a session
//! of its own (`setsid -f`), so that it outlives the agent. It isolates NOTHING (it runs as
//! root, sees every GPU and file) and ignores the image; memory is limited with
//! `ulimit -v` (RLIMIT_AS) when the workload has a limit. For development machines only.
//!
//! A small shell parent records the process's pid (`pid`, also its process group) and exit
//! status (`exit`) in the instance directory.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::ssh::signal;

/// Starts `command` with `env` in `<dir>/work`, output to `<dir>/raw.log`; returns its pid.
pub(crate) async fn spawn(
    dir: &Path,
    command: &[String],
    env: &[(String, String)],
    memory_mib: Option<u64>,
) -> Result<u32> {
    if command.is_empty() {
        bail!(
            "the process runtime needs a command (without a container runtime the image's own \
             command cannot be run)"
        );
    }
    let work = dir.join("work");
    std::fs::create_dir_all(&work).context("cannot create the work directory")?;
    let _ = std::fs::remove_file(dir.join("pid"));
    let _ = std::fs::remove_file(dir.join("exit"));
    let limit = memory_mib.map_or(String::new(), |m| {
        format!("ulimit -v {} || exit 126; ", m.saturating_mul(1024))
    });
    let script = format!("echo $$ > \"$0/pid\"; {limit}\"$@\"; echo $? > \"$0/exit\"");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("raw.log"))
        .context("cannot open the output file")?;
    let log2 = log.try_clone()?;
    let mut cmd = tokio::process::Command::new("setsid");
    cmd.args(["-f", "/bin/sh", "-c", &script])
        .arg(dir)
        .args(command)
        .current_dir(&work)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log2);
    let status = cmd.status().await.context("cannot run setsid")?;
    if !status.success() {
        bail!("cannot start the process ({status})");
    }
    for _ in 0..100 {
        if let Some(pid) = read_pid(dir) {
            return Ok(pid);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("the process did not start")
}

fn read_pid(dir: &Path) -> Option<u32> {
    std::fs::read_to_string(dir.join("pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The workload's pid while it runs: its recorded parent is alive and carries the
/// instance's id in its environment (so a reused pid is not mistaken for it).
pub(crate) fn running(dir: &Path, instance: &str) -> Option<u32> {
    let pid = read_pid(dir)?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat.rsplit(')').next()?.split_whitespace().next()?;
    if state == "Z" {
        return None;
    }
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let needle = format!("NEOCLOUD_INSTANCE_ID={instance}");
    environ
        .split(|b| *b == 0)
        .any(|v| v == needle.as_bytes())
        .then_some(pid)
}

/// The exit status the workload recorded; `None` when it was killed by a signal.
pub(crate) fn exit_code(dir: &Path) -> Option<i32> {
    std::fs::read_to_string(dir.join("exit"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Stops the workload's process group: SIGTERM, SIGKILL after `grace` seconds.
pub(crate) async fn stop(dir: &Path, instance: &str, grace: u32) {
    let Some(pid) = running(dir, instance) else {
        return;
    };
    let group = format!("-{pid}");
    let _ = signal_group(&group, "TERM").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(u64::from(grace));
    while tokio::time::Instant::now() < deadline {
        if running(dir, instance).is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = signal_group(&group, "KILL").await;
    let _ = signal(&[pid], "KILL").await;
}

async fn signal_group(group: &str, sig: &str) -> Result<()> {
    let mut cmd = tokio::process::Command::new("kill");
    cmd.arg(format!("-{sig}")).arg("--").arg(group);
    super::run_cmd(&mut cmd, Duration::from_secs(10)).await?;
    Ok(())
}
