//! Backups of the embedded SQLite database, and the lock that says a server is using it.
//!
//! A backup is `VACUUM INTO` on a connection of its own: SQLite copies one read transaction's
//! snapshot into a fresh file, so the copy is consistent while `serve` keeps writing (in WAL
//! mode the reader blocks no writer). The copy is checked (`PRAGMA integrity_check`, a
//! neocloud schema this binary knows) before it gets its final name.
//!
//! A restore replaces the database file under a running server's feet, so it needs proof
//! that none runs: [`DatabaseLock`], an exclusive `flock` on `<database>.lock` that `serve`
//! holds for its lifetime. The kernel drops the lock when the process ends, however it ends
//! (`kill -9` included), so a stale lock file never blocks a restore.
//!
//! PostgreSQL has its own tools for this (`pg_dump`, `pg_restore`; docs/deployment.md).

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, Row, SqliteConnection};

use crate::MIGRATIONS;

/// What went wrong in a backup or a restore. The messages are written for the operator who
/// ran the command.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The database (or backup) file is not there.
    #[error("{0}: no such file")]
    Missing(PathBuf),
    /// The output file exists and overwriting was not asked for.
    #[error("{0} already exists; choose another name or pass --force to replace it")]
    Exists(PathBuf),
    /// The file is not an SQLite database at all.
    #[error("{0} is not an SQLite database")]
    NotSqlite(PathBuf),
    /// The file is an SQLite database, but not one of neocloud's.
    #[error("{path} is an SQLite database but not a neocloud database ({why})")]
    NotNeocloud {
        /// The file.
        path: PathBuf,
        /// What is missing.
        why: String,
    },
    /// The file comes from a neocloud with migrations this binary does not know.
    #[error(
        "{path} has schema version {version}, newer than this neocloud knows ({known}); \
         use the neocloud release that wrote it"
    )]
    NewerSchema {
        /// The file.
        path: PathBuf,
        /// Its highest migration.
        version: i64,
        /// The highest migration this binary has.
        known: i64,
    },
    /// The integrity check found damage.
    #[error("{path} failed the integrity check: {detail}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// The first problems SQLite reported.
        detail: String,
    },
    /// A running server holds the database.
    #[error(
        "a neocloud serve is running on {db} (it holds the lock {lock}); stop it first \
         (a backup, `neocloud admin backup`, works while it runs)"
    )]
    InUse {
        /// The database file.
        db: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },
    /// The database can be read but not written.
    #[error("{path} is read-only ({detail})")]
    ReadOnly {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        detail: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// SQLite failed.
    #[error("{path}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// The driver's error.
        source: sqlx::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn sql_err(path: &Path) -> impl FnOnce(sqlx::Error) -> BackupError + '_ {
    move |source| {
        let code = match &source {
            sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
            _ => None,
        };
        match code.as_deref() {
            // SQLITE_NOTADB: the header is not SQLite's.
            Some("26") => BackupError::NotSqlite(path.to_path_buf()),
            // SQLITE_CORRUPT and its extended codes.
            Some("11") | Some("267") | Some("523") | Some("779") => BackupError::Damaged {
                path: path.to_path_buf(),
                detail: source.to_string(),
            },
            _ => BackupError::Sqlite {
                path: path.to_path_buf(),
                source,
            },
        }
    }
}

/// What a database file holds: the summary printed after a backup or a restore.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DatabaseSummary {
    /// The file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size_bytes: u64,
    /// The highest migration applied (`schema_migrations`).
    pub schema_version: i64,
    /// Every table and its row count, by name.
    pub tables: Vec<TableRows>,
}

/// One table of a [`DatabaseSummary`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct TableRows {
    /// Table name.
    pub table: String,
    /// Rows in it.
    pub rows: i64,
}

impl DatabaseSummary {
    /// Rows in `table`, if the table exists.
    pub fn rows(&self, table: &str) -> Option<i64> {
        self.tables
            .iter()
            .find(|t| t.table == table)
            .map(|t| t.rows)
    }
}

/// The lock file that goes with a database file.
pub fn lock_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_os_string();
    name.push(".lock");
    PathBuf::from(name)
}

/// An exclusive lock on a SQLite database file, held by `serve` while it runs and by
/// `admin restore` while it replaces the file. Released on drop or when the process ends.
#[derive(Debug)]
pub struct DatabaseLock {
    db: PathBuf,
    lock: PathBuf,
    _file: File,
}

impl DatabaseLock {
    /// Takes the lock for the database at `db` without waiting; [`BackupError::InUse`] when
    /// another process holds it.
    pub fn acquire(db: &Path) -> Result<DatabaseLock, BackupError> {
        let lock = lock_path(db);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock)
            .map_err(io_err(&lock))?;
        match file.try_lock() {
            Ok(()) => Ok(DatabaseLock {
                db: db.to_path_buf(),
                lock,
                _file: file,
            }),
            Err(std::fs::TryLockError::WouldBlock) => Err(BackupError::InUse {
                db: db.to_path_buf(),
                lock,
            }),
            Err(std::fs::TryLockError::Error(e)) => Err(io_err(&lock)(e)),
        }
    }

    /// The database file this lock guards.
    pub fn database(&self) -> &Path {
        &self.db
    }

    /// The lock file.
    pub fn lock_file(&self) -> &Path {
        &self.lock
    }
}

/// Refuses a path that is missing or not a regular file, naming which.
fn existing_file(path: &Path) -> Result<(), BackupError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(BackupError::Io {
            path: path.to_path_buf(),
            source: io::Error::other("not a regular file"),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err(BackupError::Missing(path.to_path_buf()))
        }
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Opens an existing SQLite file on a connection of its own (never creates one).
async fn connect(path: &Path) -> Result<SqliteConnection, BackupError> {
    existing_file(path)?;
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(false)
        .foreign_keys(false)
        .busy_timeout(std::time::Duration::from_secs(30));
    let mut conn = SqliteConnection::connect_with(&options)
        .await
        .map_err(sql_err(path))?;
    // The header is only read at the first statement: a file that is not SQLite fails here.
    sqlx::query("SELECT count(*) FROM sqlite_master")
        .fetch_one(&mut conn)
        .await
        .map_err(sql_err(path))?;
    Ok(conn)
}

/// The first column of every row `sql` returns.
async fn first_column<T>(
    conn: &mut SqliteConnection,
    path: &Path,
    sql: &str,
) -> Result<Vec<T>, BackupError>
where
    T: for<'r> sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
{
    sqlx::query(sql)
        .fetch_all(&mut *conn)
        .await
        .map_err(sql_err(path))?
        .iter()
        .map(|r| r.try_get::<T, _>(0))
        .collect::<Result<_, _>>()
        .map_err(sql_err(path))
}

/// Checks a database file that nothing else uses: SQLite's integrity check, a neocloud
/// schema no newer than this binary's, and what it holds.
async fn verify(path: &Path) -> Result<DatabaseSummary, BackupError> {
    let mut conn = connect(path).await?;
    let problems: Vec<String> = first_column(&mut conn, path, "PRAGMA integrity_check(20)").await?;
    if problems != ["ok"] {
        return Err(BackupError::Damaged {
            path: path.to_path_buf(),
            detail: problems.join("; "),
        });
    }
    let tables: Vec<String> = first_column(
        &mut conn,
        path,
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
         ORDER BY name",
    )
    .await?;
    if !tables.iter().any(|t| t == "schema_migrations") {
        return Err(BackupError::NotNeocloud {
            path: path.to_path_buf(),
            why: "it has no schema_migrations table".into(),
        });
    }
    let applied: Vec<i64> = first_column(
        &mut conn,
        path,
        "SELECT version FROM schema_migrations ORDER BY version",
    )
    .await?;
    let known = MIGRATIONS.iter().map(|m| m.0).max().unwrap_or(0);
    let version = applied.last().copied().unwrap_or(0);
    if version > known {
        return Err(BackupError::NewerSchema {
            path: path.to_path_buf(),
            version,
            known,
        });
    }
    // neocloud applies its migrations in the order they are listed, each in its own
    // transaction (numbers may skip: a number is reserved for each line of work).
    let expected: Vec<i64> = MIGRATIONS
        .iter()
        .map(|m| m.0)
        .filter(|v| *v <= version)
        .collect();
    if version == 0 || applied != expected {
        return Err(BackupError::NotNeocloud {
            path: path.to_path_buf(),
            why: format!("its schema_migrations lists {applied:?}"),
        });
    }
    let mut rows = Vec::with_capacity(tables.len());
    for table in tables {
        let n: i64 = sqlx::query(&format!(
            "SELECT count(*) FROM \"{}\"",
            table.replace('"', "\"\"")
        ))
        .fetch_one(&mut conn)
        .await
        .map_err(sql_err(path))?
        .try_get(0)
        .map_err(sql_err(path))?;
        rows.push(TableRows { table, rows: n });
    }
    conn.close().await.map_err(sql_err(path))?;
    let size_bytes = std::fs::metadata(path).map_err(io_err(path))?.len();
    Ok(DatabaseSummary {
        path: path.to_path_buf(),
        size_bytes,
        schema_version: version,
        tables: rows,
    })
}

/// A temporary name beside `path` (same directory, so a rename is atomic).
fn temp_beside(path: &Path, what: &str) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".{what}-{}.tmp", std::process::id()));
    path.with_file_name(name)
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Flushes a file's contents to the disk.
fn fsync_file(path: &Path) -> Result<(), BackupError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io_err(path))
}

/// Flushes a directory's entries (a rename in it) to the disk.
fn fsync_dir(dir: &Path) -> Result<(), BackupError> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|f| f.sync_all())
            .map_err(io_err(dir))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Removes a temporary file when dropped, unless it was [`TempFile::keep`]t.
struct TempFile(Option<PathBuf>);

impl TempFile {
    fn keep(&mut self) {
        self.0 = None;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(&p);
            for suffix in ["-journal", "-wal", "-shm"] {
                let mut side = p.as_os_str().to_os_string();
                side.push(suffix);
                let _ = std::fs::remove_file(PathBuf::from(side));
            }
        }
    }
}

/// Writes a consistent copy of the SQLite database `db` to `out`, online: a running server
/// keeps reading and writing meanwhile. The copy is checked before it gets its name; an
/// existing `out` is replaced only with `overwrite`.
pub async fn sqlite_backup(
    db: &Path,
    out: &Path,
    overwrite: bool,
) -> Result<DatabaseSummary, BackupError> {
    if !overwrite && out.exists() {
        return Err(BackupError::Exists(out.to_path_buf()));
    }
    let out_dir = parent_dir(out);
    if !out_dir.is_dir() {
        return Err(BackupError::Io {
            path: out_dir.to_path_buf(),
            source: io::Error::new(io::ErrorKind::NotFound, "no such directory"),
        });
    }
    let tmp = temp_beside(out, "backup");
    let mut guard = TempFile(Some(tmp.clone()));
    let _ = std::fs::remove_file(&tmp);
    let mut conn = connect(db).await?;
    let target = tmp
        .to_str()
        .ok_or_else(|| BackupError::Io {
            path: tmp.clone(),
            source: io::Error::other("the path is not valid UTF-8"),
        })?
        .to_string();
    // One read transaction: the copy is the database as of one commit.
    sqlx::query("VACUUM INTO $1")
        .bind(target)
        .execute(&mut conn)
        .await
        .map_err(sql_err(db))?;
    conn.close().await.map_err(sql_err(db))?;
    // A copy that fails the check names the database it came from.
    let mut summary = verify(&tmp).await.map_err(|e| rename_path(e, &tmp, db))?;
    fsync_file(&tmp)?;
    if overwrite {
        std::fs::rename(&tmp, out).map_err(io_err(out))?;
    } else {
        // A hard link never replaces an existing name: no race with another writer of `out`.
        match std::fs::hard_link(&tmp, out) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(BackupError::Exists(out.to_path_buf()));
            }
            Err(e) => return Err(io_err(out)(e)),
        }
        std::fs::remove_file(&tmp).map_err(io_err(&tmp))?;
    }
    guard.keep();
    fsync_dir(out_dir)?;
    summary.path = out.to_path_buf();
    Ok(summary)
}

/// Checks that the existing SQLite database behind `url` (the URL `serve` opens, with its
/// options such as `mode=ro`) takes writes, without changing it: a write statement that
/// matches no row, rolled back. SQLite opens a file it may not write read-only without
/// complaint, so without this a server would start and fail every write. Does nothing when
/// the file does not exist yet or is not a neocloud database (opening it reports that).
pub async fn sqlite_check_writable(url: &str, path: &Path) -> Result<(), BackupError> {
    use sqlx::Executor;
    use std::str::FromStr;
    if !path.is_file() {
        return Ok(());
    }
    let Ok(options) = SqliteConnectOptions::from_str(url) else {
        return Ok(());
    };
    let options = options
        .create_if_missing(false)
        .busy_timeout(std::time::Duration::from_secs(10));
    let Ok(mut conn) = SqliteConnection::connect_with(&options).await else {
        return Ok(());
    };
    let probe = conn
        .execute("BEGIN; UPDATE schema_migrations SET version = version WHERE 0")
        .await;
    let _ = conn.execute("ROLLBACK").await;
    let _ = conn.close().await;
    match probe {
        Err(sqlx::Error::Database(db))
            if db
                .code()
                .is_some_and(|c| c.parse::<u32>().is_ok_and(|n| n & 0xff == 8)) =>
        {
            Err(BackupError::ReadOnly {
                path: path.to_path_buf(),
                detail: db.message().to_string(),
            })
        }
        _ => Ok(()),
    }
}

/// What a restore did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RestoreReport {
    /// The database now in place.
    pub restored: DatabaseSummary,
    /// Where the database it replaced was kept, if there was one.
    pub previous: Option<PathBuf>,
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// Replaces the database that `lock` guards with the backup at `backup`, after checking it.
///
/// The backup is copied beside the database, checked there, flushed, and renamed over the
/// database in one step, so a crash leaves either the old or the new database, never a mix.
/// The old database (its write-ahead log folded in first) is kept as
/// `<database>.before-restore-<stamp>`; its `-wal` and `-shm` files never stay beside the
/// new one, where SQLite would replay them into it.
pub async fn sqlite_restore(
    lock: &DatabaseLock,
    backup: &Path,
    stamp: &str,
) -> Result<RestoreReport, BackupError> {
    let db = lock.database();
    // Check the backup itself first: a bad file is refused before anything is copied.
    existing_file(backup)?;
    let dir = parent_dir(db);
    let tmp = temp_beside(db, "restore");
    let mut guard = TempFile(Some(tmp.clone()));
    std::fs::copy(backup, &tmp).map_err(io_err(&tmp))?;
    // The copy takes the old database's mode and owner, not the backup's: a backup kept
    // read-only, or a restore run as root, must not leave a file the server cannot write.
    match std::fs::metadata(db) {
        Ok(old) => {
            std::fs::set_permissions(&tmp, old.permissions()).map_err(io_err(&tmp))?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::MetadataExt;
                // Only root may give a file away; for anyone else this is a no-op or refused.
                let _ = std::os::unix::fs::chown(&tmp, Some(old.uid()), Some(old.gid()));
            }
        }
        Err(_) => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))
                    .map_err(io_err(&tmp))?;
            }
        }
    }
    // A copy of a database in WAL mode would bring neither its log nor its index along; the
    // check runs on exactly the bytes that will be installed.
    let mut restored = match verify(&tmp).await {
        Ok(s) => s,
        Err(e) => return Err(rename_path(e, &tmp, backup)),
    };
    // A backup taken while serve ran holds that server's allocator lease, alive for a few
    // more seconds. No server runs now (the caller holds the lock): let the next one take
    // the lease at once instead of waiting for a holder that is gone.
    if restored.rows("leases").is_some() {
        let mut conn = connect(&tmp).await?;
        sqlx::query("UPDATE leases SET expires_at = 0")
            .execute(&mut conn)
            .await
            .map_err(sql_err(&tmp))?;
        conn.close().await.map_err(sql_err(&tmp))?;
    }
    fsync_file(&tmp)?;

    let mut previous = None;
    if db.exists() {
        // Fold the old write-ahead log into the old file so the kept copy is whole; closing
        // the last connection removes the log and its index.
        if let Ok(mut conn) = connect(db).await {
            let _ = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&mut conn)
                .await;
            let _ = conn.close().await;
        }
        let kept = with_suffix(db, &format!(".before-restore-{stamp}"));
        if std::fs::hard_link(db, &kept).is_err() {
            std::fs::copy(db, &kept).map_err(io_err(&kept))?;
            fsync_file(&kept)?;
        }
        for side in ["-wal", "-shm", "-journal"] {
            let from = with_suffix(db, side);
            if from.exists() {
                std::fs::rename(&from, with_suffix(&kept, side)).map_err(io_err(&from))?;
            }
        }
        previous = Some(kept);
    }
    std::fs::rename(&tmp, db).map_err(io_err(db))?;
    guard.keep();
    fsync_dir(dir)?;
    restored.path = db.to_path_buf();
    restored.size_bytes = std::fs::metadata(db).map_err(io_err(db))?.len();
    Ok(RestoreReport { restored, previous })
}

/// Names the backup the user gave, not the temporary copy, in a verification error.
fn rename_path(e: BackupError, tmp: &Path, backup: &Path) -> BackupError {
    let fix = |p: PathBuf| if p == tmp { backup.to_path_buf() } else { p };
    match e {
        BackupError::NotSqlite(p) => BackupError::NotSqlite(fix(p)),
        BackupError::NotNeocloud { path, why } => BackupError::NotNeocloud {
            path: fix(path),
            why,
        },
        BackupError::NewerSchema {
            path,
            version,
            known,
        } => BackupError::NewerSchema {
            path: fix(path),
            version,
            known,
        },
        BackupError::Damaged { path, detail } => BackupError::Damaged {
            path: fix(path),
            detail,
        },
        BackupError::Sqlite { path, source } => BackupError::Sqlite {
            path: fix(path),
            source,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn temp_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "neocloud-backup-test-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn the_lock_is_exclusive_and_released_on_drop() {
        let dir = temp_dir();
        let db = dir.join("neocloud.db");
        let first = DatabaseLock::acquire(&db).unwrap();
        assert_eq!(first.lock_file(), dir.join("neocloud.db.lock"));
        let err = DatabaseLock::acquire(&db).unwrap_err();
        assert!(matches!(err, BackupError::InUse { .. }), "{err}");
        drop(first);
        DatabaseLock::acquire(&db).unwrap();
    }

    #[tokio::test]
    async fn a_backup_of_a_fresh_store_verifies_and_restores() {
        let dir = temp_dir();
        let db = dir.join("neocloud.db");
        let url = format!("sqlite://{}?mode=rwc", db.display());
        let store = crate::Store::open(&url).await.unwrap();
        let out = dir.join("copy.db");
        let s = sqlite_backup(&db, &out, false).await.unwrap();
        assert_eq!(s.schema_version, MIGRATIONS.last().unwrap().0);
        assert_eq!(s.rows("schema_migrations"), Some(MIGRATIONS.len() as i64));
        assert!(matches!(
            sqlite_backup(&db, &out, false).await.unwrap_err(),
            BackupError::Exists(_)
        ));
        sqlite_backup(&db, &out, true).await.unwrap();
        store.pool().close().await;
        let lock = DatabaseLock::acquire(&db).unwrap();
        let r = sqlite_restore(&lock, &out, "20261201T000000Z")
            .await
            .unwrap();
        assert_eq!(
            r.previous.unwrap(),
            dir.join("neocloud.db.before-restore-20261201T000000Z")
        );
        assert!(!dir.join("neocloud.db-wal").exists());
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}
