//! Bare-metal hand-off: a tenant account with the tenant's SSH keys, and first-boot user
//! data run once as that account.
//!
//! The account is named `nc` + the last 10 hex digits of the tenant id (its random part) and
//! its comment field is `neocloud=<instance id>` (useradd refuses `:` in a comment): the
//! agent never touches an account whose comment is not exactly that. At the end every process of the account is killed and the
//! account is removed with its home (`userdel -r`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use neocloud_types::{InstanceId, TenantId};

use super::{last_line, run_cmd};

/// The account of a tenant.
pub(crate) fn account_name(tenant: &TenantId) -> String {
    let hex = tenant.uuid().simple().to_string();
    format!("nc{}", &hex[hex.len().saturating_sub(10)..])
}

/// The comment that marks an account as the agent's, for one instance.
pub(crate) fn marker(instance: &InstanceId) -> String {
    format!("neocloud={instance}")
}

/// An account as `/etc/passwd` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Account {
    pub uid: u32,
    pub gid: u32,
    pub comment: String,
    pub home: PathBuf,
}

/// Looks an account up in `/etc/passwd`.
pub(crate) fn lookup(name: &str) -> Option<Account> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 7 || f[0] != name {
            return None;
        }
        Some(Account {
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            comment: f[4].to_string(),
            home: PathBuf::from(f[5]),
        })
    })
}

/// Creates the account (or finds the one made earlier for this instance) and writes its
/// `~/.ssh/authorized_keys`.
pub(crate) async fn ensure(name: &str, instance: &InstanceId, keys: &str) -> Result<Account> {
    let mark = marker(instance);
    let account = match lookup(name) {
        Some(a) if a.comment == mark => a,
        Some(_) => bail!(
            "account {name} exists and was not created by neocloud for this instance; \
             refusing to touch it"
        ),
        None => {
            let out = run_cmd(
                tokio::process::Command::new("useradd")
                    .args(["-m", "-s", "/bin/sh", "-p", "*", "-c", &mark, name]),
                Duration::from_secs(60),
            )
            .await?;
            if !out.status.success() {
                bail!("useradd {name} failed: {}", last_line(&out));
            }
            lookup(name).with_context(|| format!("account {name} missing after useradd"))?
        }
    };
    write_keys(&account, keys)?;
    Ok(account)
}

/// Writes `~/.ssh/authorized_keys` (0600, owned by the account).
pub(crate) fn write_keys(account: &Account, keys: &str) -> Result<()> {
    let ssh = account.home.join(".ssh");
    std::fs::create_dir_all(&ssh).context("cannot create ~/.ssh")?;
    std::fs::set_permissions(&ssh, std::fs::Permissions::from_mode(0o700))?;
    let file = ssh.join("authorized_keys");
    super::write_atomic(&file, keys.as_bytes(), 0o600).context("cannot write authorized_keys")?;
    for p in [&ssh, &file] {
        std::os::unix::fs::chown(p, Some(account.uid), Some(account.gid))
            .with_context(|| format!("cannot chown {}", p.display()))?;
    }
    Ok(())
}

/// Runs the user data once as the account, detached, output to `<dir>/raw.log`. The marker
/// `<dir>/user_data.started` is written first, so it never runs twice, even when the agent
/// restarts.
pub(crate) async fn run_user_data(dir: &Path, name: &str, home: &Path, script: &str) -> Result<()> {
    let marker = dir.join("user_data.started");
    if marker.exists() {
        return Ok(());
    }
    std::fs::write(&marker, b"").context("cannot write the user-data marker")?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("raw.log"))?;
    let log2 = log.try_clone()?;
    // Found before the environment is cleared: runuser lives in /usr/sbin, which the
    // account's PATH leaves out.
    let runuser = super::find_program("runuser").context("runuser (util-linux) not found")?;
    let status = tokio::process::Command::new("setsid")
        .arg("-f")
        .arg(runuser)
        .args(["-u", name, "--", "/bin/sh", "-c", script])
        .current_dir(home)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", home)
        .env("USER", name)
        .env("LOGNAME", name)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log2)
        .status()
        .await
        .context("cannot run setsid")?;
    if !status.success() {
        bail!("cannot start the user data ({status})");
    }
    Ok(())
}

/// Pids of every process of `uid`.
fn processes_of(uid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| {
                    let line = s.lines().find(|l| l.starts_with("Uid:"))?;
                    line.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(uid)
        })
        .collect()
}

/// Kills every process of the account and removes it with its home; refuses an account
/// that is not the instance's.
pub(crate) async fn remove(name: &str, instance: &InstanceId) -> Result<()> {
    let Some(account) = lookup(name) else {
        return Ok(());
    };
    if account.comment != marker(instance) {
        bail!("account {name} is not this instance's; left alone");
    }
    if account.uid == 0 {
        bail!("account {name} has uid 0; left alone");
    }
    for _ in 0..20 {
        let pids = processes_of(account.uid);
        if pids.is_empty() {
            break;
        }
        let _ = super::ssh::signal(&pids, "KILL").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = run_cmd(
        tokio::process::Command::new("userdel").args(["-r", "-f", name]),
        Duration::from_secs(60),
    )
    .await?;
    // userdel -r complains about a missing mail spool; what counts is the account gone.
    if lookup(name).is_some() {
        bail!("userdel {name} failed: {}", last_line(&out));
    }
    if account.home.starts_with("/home") && account.home.exists() {
        let _ = std::fs::remove_dir_all(&account.home);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_names_use_the_random_part_of_the_id() {
        let t = TenantId::new();
        let name = account_name(&t);
        assert_eq!(name.len(), 12);
        assert!(name.starts_with("nc"));
        assert!(t.uuid().simple().to_string().ends_with(&name[2..]));
        assert_ne!(account_name(&TenantId::new()), name);
    }
}
