//! `neocloud admin`: operator chores on the control plane's own files, run on the host that
//! holds the data directory (not through the API): backups and restores of the embedded
//! SQLite database. Also the start-up checks `serve` shares with them: the lock that tells a
//! restore a server is running, and clear messages for a full or read-only disk.

use std::path::{Path, PathBuf};

use crate::cli::out::{Buf, write_stdout};
use anyhow::{Result, anyhow, bail};
use neocloud_service::ErrorCode;
use neocloud_store::backup::{self, BackupError, DatabaseLock, DatabaseSummary};

const PG_ROUTE: &str = "for PostgreSQL use pg_dump and pg_restore (docs/deployment.md, \
                        \"Backups and restore\"), e.g. \
                        pg_dump --format=custom --file neocloud.dump \"$NEOCLOUD_DATABASE_URL\"";

/// Where the database is: the same flags and environment as `serve`.
#[derive(clap::Args, Debug)]
pub struct DatabaseArgs {
    /// The data directory of `serve`; its database is DIR/neocloud.db.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "./neocloud-data",
        env = "NEOCLOUD_DATA_DIR"
    )]
    pub data_dir: PathBuf,
    /// The database instead, as `serve` was given it: sqlite://PATH. A postgres:// URL is
    /// refused (use pg_dump / pg_restore).
    #[arg(
        long,
        value_name = "URL",
        env = "NEOCLOUD_DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,
}

/// Operator chores on the data directory.
#[derive(clap::Subcommand, Debug)]
pub enum AdminCmd {
    /// Write a consistent copy of the SQLite database to OUT_FILE, while `serve` runs.
    ///
    /// The copy is one transaction's snapshot (SQLite's VACUUM INTO on a connection of its
    /// own), checked with PRAGMA integrity_check before it gets its name. Keep backups on
    /// another disk. PostgreSQL: use pg_dump (docs/deployment.md).
    Backup {
        #[command(flatten)]
        db: DatabaseArgs,
        /// Replace OUT_FILE if it exists.
        #[arg(long)]
        force: bool,
        /// The backup file to write (a standalone SQLite database).
        #[arg(value_name = "OUT_FILE")]
        out: PathBuf,
    },
    /// Replace the SQLite database with a backup; `serve` must be stopped.
    ///
    /// The backup is checked first (integrity, a neocloud schema this release knows). The
    /// database it replaces is kept beside it as neocloud.db.before-restore-<UTC time>. The
    /// new file is put in place with one atomic rename, so a crash leaves the old or the new
    /// database, never a mix. PostgreSQL: use pg_restore (docs/deployment.md).
    Restore {
        #[command(flatten)]
        db: DatabaseArgs,
        /// The backup to restore (written by `neocloud admin backup`).
        #[arg(value_name = "BACKUP_FILE")]
        backup: PathBuf,
    },
}

/// The SQLite file a `sqlite:` URL names; `None` for an in-memory database.
pub fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return None;
    }
    Some(PathBuf::from(path))
}

fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres:") || url.starts_with("postgresql:")
}

/// The SQLite database file the arguments name.
fn database_file(db: &DatabaseArgs, verb: &str) -> Result<PathBuf> {
    match &db.database_url {
        None => Ok(db.data_dir.join("neocloud.db")),
        Some(url) if is_postgres(url) => bail!(
            "admin {verb} works on the embedded SQLite database, and {} is PostgreSQL; {PG_ROUTE}",
            neocloud_service::redact_database_url(url)
        ),
        Some(url) => match sqlite_path(url) {
            Some(p) => Ok(p),
            None if url.starts_with("sqlite:") => {
                bail!("{url} is an in-memory database; there is no file to {verb}")
            }
            None => bail!(
                "unsupported database URL '{}': use sqlite://PATH (or --data-dir)",
                neocloud_service::redact_database_url(url)
            ),
        },
    }
}

/// A UTC time for file names: 20261201T203015Z.
fn file_stamp() -> String {
    let s = neocloud_types::Timestamp::now().to_string();
    let mut out: String = s
        .chars()
        .take(19)
        .filter(|c| *c != '-' && *c != ':')
        .collect();
    out.push('Z');
    out
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["bytes", "KiB", "MiB", "GiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// The tables an operator recognises, in the order they read best.
const HEADLINE_TABLES: &[&str] = &[
    "sites",
    "nodes",
    "gpus",
    "tenants",
    "api_keys",
    "contracts",
    "instances",
    "usage_records",
    "invoices",
    "events",
];

fn print_summary(b: &mut Buf, s: &DatabaseSummary) {
    let total: i64 = s.tables.iter().map(|t| t.rows).sum();
    b.line(format_args!(
        "  {}, schema version {}, integrity ok",
        human_size(s.size_bytes),
        s.schema_version
    ));
    let headline: Vec<String> = HEADLINE_TABLES
        .iter()
        .filter_map(|t| s.rows(t).map(|n| format!("{t} {n}")))
        .collect();
    b.line(format_args!(
        "  {} tables, {total} rows: {}",
        s.tables.len(),
        headline.join(", ")
    ));
}

fn backup_err(e: BackupError) -> anyhow::Error {
    anyhow!("{e}")
}

/// Runs an `admin` subcommand.
pub async fn run(cmd: AdminCmd, json: bool) -> Result<()> {
    // Written at the end, so that a reader that went away (`| head`) ends it quietly.
    let mut b = Buf::default();
    match cmd {
        AdminCmd::Backup { db, force, out } => {
            let file = database_file(&db, "backup")?;
            if !file.exists() {
                bail!(
                    "no database at {} (is --data-dir right? `serve` creates it at its first start)",
                    file.display()
                );
            }
            let summary = backup::sqlite_backup(&file, &out, force)
                .await
                .map_err(backup_err)?;
            if json {
                b.line(serde_json::to_string_pretty(&summary)?);
            } else {
                b.line(format_args!(
                    "Backed up {} to {}",
                    file.display(),
                    out.display()
                ));
                print_summary(&mut b, &summary);
            }
        }
        AdminCmd::Restore { db, backup } => {
            let file = database_file(&db, "restore")?;
            if !backup.exists() {
                bail!("{}: no such file", backup.display());
            }
            let dir = file
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            std::fs::create_dir_all(dir)
                .map_err(|e| anyhow!("creating the data directory {}: {e}", dir.display()))?;
            // Held until the new file is in place: no `serve` can start meanwhile.
            let lock = DatabaseLock::acquire(&file).map_err(backup_err)?;
            let report = backup::sqlite_restore(&lock, &backup, &file_stamp())
                .await
                .map_err(backup_err)?;
            if json {
                b.line(serde_json::to_string_pretty(&report)?);
            } else {
                b.line(format_args!(
                    "Restored {} from {}",
                    file.display(),
                    backup.display()
                ));
                print_summary(&mut b, &report.restored);
                match &report.previous {
                    Some(p) => b.line(format_args!(
                        "  the database it replaced is kept as {}",
                        p.display()
                    )),
                    None => b.line("  there was no database before"),
                }
                b.line("  API keys are the backup's: operator.key still works if it existed then");
            }
        }
    }
    write_stdout(b.0.as_bytes())
}

/// Takes the lock that tells `admin restore` (and a second `serve`) that this server uses
/// the SQLite database at `url`, and checks the database takes writes; the lock is held
/// while the returned value lives. None for PostgreSQL.
pub async fn lock_for_serve(url: &str) -> Result<Option<DatabaseLock>> {
    let Some(file) = sqlite_path(url) else {
        return Ok(None);
    };
    let lock = DatabaseLock::acquire(&file);
    if lock.is_ok()
        && let Err(BackupError::ReadOnly { path, detail }) =
            backup::sqlite_check_writable(url, &file).await
    {
        bail!(
            "the database {} is read-only ({detail}); make it and its directory writable by \
             the user running neocloud, remount the disk read-write, or drop mode=ro from \
             the URL",
            path.display()
        );
    }
    match lock {
        Ok(lock) => Ok(Some(lock)),
        Err(BackupError::InUse { db, lock }) => bail!(
            "another neocloud serve is running on {} (it holds the lock {}); stop it, or \
             give this one another --data-dir",
            db.display(),
            lock.display()
        ),
        Err(BackupError::Io { path, source }) => bail!(
            "cannot write {}: {source}; the data directory must be writable by the user \
             running neocloud (and its disk mounted read-write)",
            path.display()
        ),
        Err(e) => Err(backup_err(e)),
    }
}

/// The one-line message for a database that `serve` cannot open.
pub fn open_error(e: neocloud_service::Error, url: &str) -> anyhow::Error {
    let place = sqlite_path(url)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| neocloud_service::redact_database_url(url));
    let detail = e.internal.clone().unwrap_or_else(|| e.message.clone());
    match e.code {
        ErrorCode::StorageReadOnly => anyhow!(
            "the database {place} is read-only ({detail}); make it and its directory \
             writable by the user running neocloud, remount the disk read-write, or drop \
             mode=ro from the URL"
        ),
        ErrorCode::StorageFull => anyhow!(
            "the disk holding the database {place} is full ({detail}); free space there and \
             start again"
        ),
        _ => anyhow!("{detail}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_name_their_file() {
        assert_eq!(
            sqlite_path("sqlite:///var/lib/neocloud/neocloud.db?mode=rwc"),
            Some(PathBuf::from("/var/lib/neocloud/neocloud.db"))
        );
        assert_eq!(
            sqlite_path("sqlite://data/neocloud.db"),
            Some(PathBuf::from("data/neocloud.db"))
        );
        assert_eq!(sqlite_path("sqlite:x.db"), Some(PathBuf::from("x.db")));
        assert_eq!(sqlite_path("sqlite::memory:"), None);
        assert_eq!(sqlite_path("postgres://u@h/db"), None);
    }

    #[test]
    fn stamps_are_compact_utc() {
        let s = file_stamp();
        assert_eq!(s.len(), 16, "{s}");
        assert!(s.ends_with('Z') && s.as_bytes()[8] == b'T', "{s}");
    }
}
