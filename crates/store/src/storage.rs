//! Storage failures the operator must act on, told apart from other database errors in the
//! one conversion every store method goes through (`?` on a driver error): a full disk and a
//! read-only database. Both leave the database as it was: the statement or commit that
//! failed rolls its transaction back.
//!
//! Also the failure point that lets tests fill the disk on purpose (STYLE.md habit 9).

use crate::StoreError;

/// Environment variable: when set to N, every SQLite connection runs
/// `PRAGMA max_page_count = N`, so the database "fills up" at N pages (4 KiB each) as if the
/// disk were full. SQLite never shrinks the limit below the file's current size. For tests
/// and rehearsals only.
pub const FAILPOINT_SQLITE_MAX_PAGES: &str = "NEOCLOUD_FAILPOINT_SQLITE_MAX_PAGES";

/// The page limit set through [`FAILPOINT_SQLITE_MAX_PAGES`], if any.
pub(crate) fn sqlite_max_pages_failpoint() -> Option<u64> {
    let v = std::env::var(FAILPOINT_SQLITE_MAX_PAGES).ok()?;
    match v.trim().parse::<u64>() {
        Ok(n) if n > 0 => {
            tracing::warn!(
                pages = n,
                "failure point {FAILPOINT_SQLITE_MAX_PAGES}: the database is limited to {n} pages"
            );
            Some(n)
        }
        _ => {
            tracing::warn!(value = %v, "ignoring {FAILPOINT_SQLITE_MAX_PAGES}: not a positive number");
            None
        }
    }
}

/// Driver error codes that mean the disk is full.
fn is_storage_full(code: &str) -> bool {
    // SQLITE_FULL has no extended codes; 53100 is PostgreSQL's disk_full.
    matches!(code, "13" | "53100")
}

/// SQLITE_READONLY and its extended codes (…_RECOVERY, _CANTLOCK, _ROLLBACK, _DBMOVED,
/// _CANTINIT, _DIRECTORY).
fn is_read_only(code: &str) -> bool {
    matches!(
        code,
        "8" | "264" | "520" | "776" | "1032" | "1288" | "1544" | "1800"
    )
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        let code = match &e {
            sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
            _ => None,
        };
        match (&e, code.as_deref()) {
            (_, Some(c)) if is_storage_full(c) => StoreError::StorageFull(e),
            (_, Some(c)) if is_read_only(c) => StoreError::ReadOnly(e),
            (sqlx::Error::Io(io), _) if io.kind() == std::io::ErrorKind::StorageFull => {
                StoreError::StorageFull(e)
            }
            (sqlx::Error::Io(io), _) if io.kind() == std::io::ErrorKind::ReadOnlyFilesystem => {
                StoreError::ReadOnly(e)
            }
            _ => StoreError::Database(e),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use crate::{Store, StoreError};

    /// A database SQLite opened read-only: the first write is `ReadOnly`, not a bare
    /// database error, so callers can say what to do.
    #[tokio::test]
    async fn writes_to_a_read_only_database_are_classified() {
        let dir = std::env::temp_dir().join(format!(
            "neocloud-storage-test-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("neocloud.db");
        let store = Store::open(&format!("sqlite://{}?mode=rwc", db.display()))
            .await
            .unwrap();
        store.pool().close().await;
        let first_write = async {
            let store = Store::open(&format!("sqlite://{}?mode=ro", db.display())).await?;
            let mut tx = store.begin_write().await?;
            Store::meta_put(&mut tx, "probe", "1").await?;
            tx.commit().await
        };
        let err = first_write.await.unwrap_err();
        assert!(matches!(err, StoreError::ReadOnly(_)), "{err:?}");
        assert!(err.to_string().contains("read-only"), "{err}");
    }
}
