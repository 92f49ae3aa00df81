//! One dedicated OpenSSH server per running instance.
//!
//! Each instance gets its own `sshd` (`sshd -D -e -f <instance dir>/sshd_config`) on a port
//! of `--ssh-ports`, started in a session of its own (`setsid -f`) so that it outlives the
//! agent (a restarted agent finds it through its pid file). It accepts only the instance's
//! keys (`AuthorizedKeysFile` is the instance's own file), no passwords, no forwarding of
//! any kind, no tunnels, no user rc files. In container and process mode the tenant logs in
//! as `root`, but every key carries `restrict,pty,command="<wrapper>"` and the config has
//! `ForceCommand <wrapper>`: the wrapper enters the container (`podman exec`); in bare-metal
//! mode the tenant logs in to its own account with a normal shell (`AllowUsers`).

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::{Config, run_cmd, shell_quote};

/// How the tenant logs in.
#[derive(Clone, Debug)]
pub(crate) enum Login {
    /// As root, confined to the wrapper script.
    Forced { wrapper: PathBuf },
    /// As this account, with its own shell.
    Account { name: String },
}

/// The node's host key, generated on first use.
pub(crate) async fn host_key(state_dir: &Path) -> Result<PathBuf> {
    let key = state_dir.join("ssh_host_ed25519_key");
    if key.exists() {
        return Ok(key);
    }
    let out = run_cmd(
        tokio::process::Command::new("ssh-keygen")
            .args([
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "neocloud-agent",
                "-f",
            ])
            .arg(&key),
        Duration::from_secs(30),
    )
    .await?;
    if !out.status.success() {
        bail!("ssh-keygen failed: {}", super::last_line(&out));
    }
    Ok(key)
}

/// Only lines that are plain public keys (`ssh-…`, `ecdsa-…`, `sk-…` then base64); options
/// and anything on several lines are refused.
pub(crate) fn clean_keys(keys: &[String]) -> Vec<String> {
    keys.iter()
        .map(|k| k.trim())
        .filter(|k| {
            let ok = !k.contains(['\n', '\r', '\0'])
                && (k.starts_with("ssh-") || k.starts_with("ecdsa-") || k.starts_with("sk-"))
                && k.split_whitespace().count() >= 2;
            if !ok && !k.is_empty() {
                tracing::warn!("ignoring an authorized key that is not a plain public key");
            }
            ok
        })
        .map(str::to_string)
        .collect()
}

/// The `authorized_keys` text: forced logins get each key restricted to the wrapper.
pub(crate) fn authorized_keys(keys: &[String], login: &Login) -> String {
    let mut text = String::new();
    for k in clean_keys(keys) {
        if let Login::Forced { wrapper } = login {
            let cmd = wrapper.to_string_lossy().replace('"', "");
            text.push_str(&format!("restrict,pty,command=\"{cmd}\" "));
        }
        text.push_str(&k);
        text.push('\n');
    }
    text
}

/// Writes the instance's `sshd_config`.
pub(crate) fn write_config(
    cfg: &Config,
    dir: &Path,
    port: u16,
    host_key: &Path,
    login: &Login,
) -> Result<()> {
    let d = dir.display();
    let mut text = format!(
        "# Written by neocloud-agent for one instance; rewritten at each start.\n\
         Port {port}\n\
         ListenAddress {listen}\n\
         HostKey {key}\n\
         PidFile {d}/sshd.pid\n\
         PubkeyAuthentication yes\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         HostbasedAuthentication no\n\
         UsePAM no\n\
         DisableForwarding yes\n\
         PermitTunnel no\n\
         PermitUserRC no\n\
         PermitUserEnvironment no\n\
         StrictModes no\n\
         PrintMotd no\n\
         ClientAliveInterval 30\n",
        listen = fmt_listen(cfg.ssh_listen),
        key = host_key.display(),
    );
    match login {
        Login::Forced { wrapper } => text.push_str(&format!(
            "AuthorizedKeysFile {d}/authorized_keys\n\
             PermitRootLogin forced-commands-only\n\
             AllowUsers root\n\
             ForceCommand {}\n",
            wrapper.display()
        )),
        Login::Account { name } => text.push_str(&format!(
            "AuthorizedKeysFile {d}/authorized_keys .ssh/authorized_keys\n\
             PermitRootLogin no\n\
             AllowUsers {name}\n"
        )),
    }
    super::write_atomic(&dir.join("sshd_config"), text.as_bytes(), 0o600)
        .context("cannot write sshd_config")
}

fn fmt_listen(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// A free port of the range, skipping `taken`.
pub(crate) fn free_port(cfg: &Config, taken: &[u16]) -> Option<u16> {
    (cfg.ssh_ports.first..=cfg.ssh_ports.last)
        .filter(|p| !taken.contains(p))
        .find(|p| TcpListener::bind(SocketAddr::new(cfg.ssh_listen, *p)).is_ok())
}

/// The pid of the instance's sshd, when it runs.
pub(crate) fn running(dir: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(dir.join("sshd.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmdline = String::from_utf8_lossy(&cmdline);
    let ours = cmdline.contains("sshd") && cmdline.contains(&*dir.to_string_lossy());
    ours.then_some(pid)
}

/// Starts the instance's sshd (its config must be written) and waits until it listens.
pub(crate) async fn start(cfg: &Config, dir: &Path, port: u16) -> Result<()> {
    std::fs::create_dir_all("/run/sshd").context("cannot create /run/sshd")?;
    let pid_file = dir.join("sshd.pid");
    let _ = std::fs::remove_file(&pid_file);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("sshd.log"))
        .context("cannot open sshd.log")?;
    let log2 = log.try_clone()?;
    let config = dir.join("sshd_config");
    let status = tokio::process::Command::new("setsid")
        .arg("-f")
        .arg(&cfg.sshd)
        .args(["-D", "-e", "-f"])
        .arg(&config)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log2)
        .status()
        .await
        .context("cannot run setsid")?;
    if !status.success() {
        bail!("cannot start sshd ({status})");
    }
    let addr = SocketAddr::new(
        if cfg.ssh_listen.is_unspecified() {
            IpAddr::from([127, 0, 0, 1])
        } else {
            cfg.ssh_listen
        },
        port,
    );
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if running(dir).is_some()
            && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        {
            return Ok(());
        }
    }
    let log = std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default();
    let tail = log.lines().last().unwrap_or("no output").to_string();
    stop(dir).await;
    bail!("sshd did not start on port {port}: {tail}")
}

/// Stops the instance's sshd (SIGTERM, then SIGKILL after 2 s).
pub(crate) async fn stop(dir: &Path) {
    let Some(pid) = running(dir) else { return };
    let _ = signal(&[pid], "TERM").await;
    for _ in 0..40 {
        if running(dir).is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = signal(&[pid], "KILL").await;
}

/// Sends a signal to processes (`-N` for the process group N) with `kill(1)`.
pub(crate) async fn signal(targets: &[u32], sig: &str) -> Result<()> {
    if targets.is_empty() {
        return Ok(());
    }
    let mut cmd = tokio::process::Command::new("kill");
    cmd.arg(format!("-{sig}")).arg("--");
    for t in targets {
        cmd.arg(t.to_string());
    }
    run_cmd(&mut cmd, Duration::from_secs(10)).await?;
    Ok(())
}

/// The login wrapper of a container: `podman exec` into it, with a terminal when the
/// client has one, running `$SSH_ORIGINAL_COMMAND` or an interactive shell. `podman exec`
/// does not give the CDI devices' environment, so it is passed from `exec.env`.
pub(crate) fn container_wrapper(cfg: &Config, dir: &Path, container: &str) -> String {
    let podman = shell_quote(&cfg.podman.to_string_lossy());
    let conf = shell_quote(&cfg.containers_conf.to_string_lossy());
    let env = shell_quote(&dir.join("exec.env").to_string_lossy());
    let name = shell_quote(container);
    format!(
        "#!/bin/sh\n\
         # Written by neocloud-agent: the only command a tenant's key may run.\n\
         PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n\
         export PATH\n\
         CONTAINERS_CONF={conf}\n\
         export CONTAINERS_CONF\n\
         tty=\n\
         if [ -t 0 ]; then tty=-t; fi\n\
         if [ -n \"$SSH_ORIGINAL_COMMAND\" ]; then\n  \
           exec {podman} exec -i $tty --env-file {env} {name} /bin/sh -c \"$SSH_ORIGINAL_COMMAND\"\n\
         fi\n\
         exec {podman} exec -i $tty --env-file {env} {name} /bin/sh\n"
    )
}

/// The login wrapper of a process workload: a shell with its environment in its directory
/// (on the host: the process runtime isolates nothing).
pub(crate) fn process_wrapper(dir: &Path) -> String {
    let env = shell_quote(&dir.join("env.sh").to_string_lossy());
    let work = shell_quote(&dir.join("work").to_string_lossy());
    format!(
        "#!/bin/sh\n\
         # Written by neocloud-agent (process runtime: this shell runs on the host).\n\
         . {env}\n\
         cd {work} || exit 1\n\
         if [ -n \"$SSH_ORIGINAL_COMMAND\" ]; then exec /bin/sh -c \"$SSH_ORIGINAL_COMMAND\"; fi\n\
         exec /bin/sh -i\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_restricted_to_the_wrapper() {
        let keys = vec![
            "ssh-ed25519 AAAAC3 alice@laptop".to_string(),
            "command=\"sh\" ssh-ed25519 AAAA x".to_string(),
            "ssh-rsa AAAAB3\nssh-ed25519 AAAA".to_string(),
        ];
        let forced = Login::Forced {
            wrapper: PathBuf::from("/s/enter.sh"),
        };
        assert_eq!(
            authorized_keys(&keys, &forced),
            "restrict,pty,command=\"/s/enter.sh\" ssh-ed25519 AAAAC3 alice@laptop\n"
        );
        let account = Login::Account { name: "nc1".into() };
        assert_eq!(
            authorized_keys(&keys, &account),
            "ssh-ed25519 AAAAC3 alice@laptop\n"
        );
    }
}
