//! `neocloud admin backup|restore` and the SQLite storage failures, through the real binary
//! and real SQLite files: an online backup while `serve` writes, a restore refused while it
//! runs and accepted after, bad input, a disk that fills up, a database that is read-only.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Value, json};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, Row, SqliteConnection};
use tokio::sync::Mutex;

use crate::ctx::temp_dir;

const BIN: &str = env!("CARGO_BIN_EXE_neocloud");

/// A `neocloud serve` process on a data directory.
pub(crate) struct Serve {
    pub(crate) child: Child,
    pub(crate) base: String,
    key: String,
    http: reqwest::Client,
}

impl Serve {
    /// Starts serve on `data` (with extra environment) and waits for its "serving" line.
    pub(crate) async fn start(data: &Path, env: &[(&str, String)]) -> Serve {
        Self::start_with(data, &[], env).await
    }

    /// [`Serve::start`] with more arguments for serve.
    async fn start_with(data: &Path, args: &[&str], env: &[(&str, String)]) -> Serve {
        let data = data.to_path_buf();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        tokio::task::spawn_blocking(move || {
            let mut cmd = Command::new(BIN);
            cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
                .arg(&data)
                .args(&args)
                .env("RUST_LOG", "warn")
                .env_remove("NEOCLOUD_DATABASE_URL")
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit());
            for (k, v) in env {
                cmd.env(k, v);
            }
            let mut child = cmd.spawn().unwrap();
            let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
            let addr = loop {
                let line = lines.next().expect("serve exited early").unwrap();
                if let Some(rest) = line.strip_prefix("neocloud is serving on http://") {
                    break rest.split_whitespace().next().unwrap().to_string();
                }
            };
            // Keep draining stdout so the server never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines {});
            let key = std::fs::read_to_string(data.join("operator.key"))
                .unwrap()
                .trim()
                .to_string();
            Serve {
                child,
                base: format!("http://{addr}"),
                key,
                http: reqwest::Client::new(),
            }
        })
        .await
        .unwrap()
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value, String) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let ctype = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::Null),
            ctype,
        )
    }

    /// POST /v1/tenants; the status and body.
    async fn create_tenant(&self, name: &str) -> (u16, Value, String) {
        self.send(
            reqwest::Method::POST,
            "/v1/tenants",
            Some(json!({
                "name": name,
                // Wide rows fill the disk-full test's few pages quickly.
                "display_name": format!("{name} {}", "x".repeat(120)),
            })),
        )
        .await
    }

    async fn tenant_status(&self, name: &str) -> u16 {
        self.send(reqwest::Method::GET, &format!("/v1/tenants/{name}"), None)
            .await
            .0
    }

    /// SIGTERM, and a clean exit.
    pub(crate) async fn stop(mut self) {
        let pid = self.child.id().to_string();
        let status = tokio::task::spawn_blocking(move || {
            Command::new("kill").arg(pid).status().unwrap();
            self.child.wait().unwrap()
        })
        .await
        .unwrap();
        assert!(status.success(), "serve exited with {status}");
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `neocloud ARGS` (off the runtime's threads).
async fn neocloud(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(&args)
            .env_remove("NEOCLOUD_DATABASE_URL")
            .env_remove("NEOCLOUD_DATA_DIR")
            .env("NEOCLOUD_CONFIG", "/nonexistent/neocloud.toml")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// Runs `neocloud serve ARGS` that must fail at start; killed (and the test failed) if it
/// serves instead.
async fn serve_must_fail(args: &[&str]) -> Output {
    serve_as_must_fail(&[], args).await
}

/// [`serve_must_fail`] with extra environment.
async fn serve_as_must_fail_env(env: &[(&str, &str)], args: &[&str]) -> Output {
    fail_run(&[], env, args).await
}

/// [`serve_must_fail`] through a program that runs it as another user (`prefix`).
async fn serve_as_must_fail(prefix: &[&str], args: &[&str]) -> Output {
    fail_run(prefix, &[], args).await
}

async fn fail_run(prefix: &[&str], env: &[(&str, &str)], args: &[&str]) -> Output {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut argv: Vec<String> = prefix.iter().map(|s| s.to_string()).collect();
    argv.push(BIN.to_string());
    argv.push("serve".to_string());
    argv.extend(args.iter().map(|s| s.to_string()));
    let args = argv.clone();
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(&argv[0])
            .args(&argv[1..])
            .envs(env)
            .env("RUST_LOG", "warn")
            .env_remove("NEOCLOUD_DATABASE_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "serve {args:?} kept running: {:?}",
                    child.wait_with_output()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap()
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Opens an SQLite file directly, as a tool other than neocloud would.
async fn open_sqlite(path: &Path) -> SqliteConnection {
    let o = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
        .unwrap()
        .create_if_missing(false);
    SqliteConnection::connect_with(&o).await.unwrap()
}

async fn integrity(path: &Path) -> String {
    let mut c = open_sqlite(path).await;
    let r: String = sqlx::query("PRAGMA integrity_check")
        .fetch_one(&mut c)
        .await
        .unwrap()
        .get(0);
    c.close().await.unwrap();
    r
}

async fn tenant_names(path: &Path) -> BTreeSet<String> {
    let mut c = open_sqlite(path).await;
    let names = sqlx::query("SELECT name FROM tenants")
        .fetch_all(&mut c)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<String, _>(0))
        .collect();
    c.close().await.unwrap();
    names
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    v.sort();
    v
}

/// The story of a backup: taken while serve writes, it holds every write acknowledged
/// before it started and is one consistent snapshot; a restore is refused while serve runs
/// and, after it stops, brings back exactly the backup's data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_while_serving_and_restore_after_stopping() {
    let dir = temp_dir();
    let data = dir.join("data");
    let server = Arc::new(Serve::start(&data, &[]).await);
    for i in 0..10 {
        let (st, body, _) = server.create_tenant(&format!("before-{i}")).await;
        assert_eq!(st, 201, "{body}");
    }

    // A writer that keeps creating tenants while the backup runs.
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (server, acked, stop) = (server.clone(), acked.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("during-{i}");
                let (st, body, _) = server.create_tenant(&name).await;
                assert_eq!(st, 201, "{body}");
                acked.lock().await.push(name);
                i += 1;
            }
        })
    };
    while acked.lock().await.len() < 5 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let acked_before: Vec<String> = acked.lock().await.clone();
    let backup = dir.join("backup.db");
    let o = neocloud(&["admin", "backup", "--data-dir", s(&data), s(&backup)]).await;
    // Writes acknowledged while the backup ran: the server was not blocked by it.
    let during = acked.lock().await.len();
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    assert!(o.status.success(), "{}", err(&o));
    let text = out(&o);
    assert!(
        text.contains(&format!("Backed up {}", data.join("neocloud.db").display()))
            && text.contains(s(&backup))
            && text.contains("integrity ok")
            && text.contains("schema version"),
        "{text}"
    );
    assert!(during >= acked_before.len());

    // An independent look at the file: whole, and every acknowledged write is in it.
    assert_eq!(integrity(&backup).await, "ok");
    let in_backup = tenant_names(&backup).await;
    for i in 0..10 {
        assert!(in_backup.contains(&format!("before-{i}")), "{in_backup:?}");
    }
    for name in &acked_before {
        assert!(
            in_backup.contains(name),
            "{name} missing from {in_backup:?}"
        );
    }
    // One snapshot: each tenant row and its audit event committed together, so the copy has
    // exactly one creation event per tenant, never a tenant without its event.
    let mut c = open_sqlite(&backup).await;
    let orphans: i64 = sqlx::query(
        "SELECT count(*) FROM tenants t WHERE (SELECT count(*) FROM events e \
         WHERE e.resource_id = t.id AND e.action = 'tenant.created') <> 1",
    )
    .fetch_one(&mut c)
    .await
    .unwrap()
    .get(0);
    let events: i64 = sqlx::query("SELECT count(*) FROM events WHERE action = 'tenant.created'")
        .fetch_one(&mut c)
        .await
        .unwrap()
        .get(0);
    c.close().await.unwrap();
    assert_eq!(orphans, 0);
    assert_eq!(events, in_backup.len() as i64);
    // The copy is a standalone file: no write-ahead log beside it.
    assert!(!dir.join("backup.db-wal").exists());

    // Restore is refused while serve holds the database, and changes nothing.
    let o = neocloud(&["admin", "restore", "--data-dir", s(&data), s(&backup)]).await;
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert!(
        err(&o).contains("a neocloud serve is running on") && err(&o).contains("stop it first"),
        "{}",
        err(&o)
    );
    assert!(!files_in(&data).iter().any(|f| f.contains("before-restore")));
    let (st, body, _) = server.create_tenant("after-backup").await;
    assert_eq!(st, 201, "{body}");

    let server = Arc::into_inner(server).unwrap();
    server.stop().await;

    // Backups are often kept read-only; the restored database must not be.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&backup, std::fs::Permissions::from_mode(0o444)).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let old_mode = mode(&data.join("neocloud.db"));
    let o = neocloud(&["admin", "restore", "--data-dir", s(&data), s(&backup)]).await;
    assert!(o.status.success(), "{}", err(&o));
    let text = out(&o);
    assert!(
        text.contains("Restored") && text.contains("integrity ok"),
        "{text}"
    );
    let files = files_in(&data);
    let kept: Vec<&String> = files
        .iter()
        .filter(|f| f.starts_with("neocloud.db.before-restore-") && !f.ends_with("-shm"))
        .collect();
    assert_eq!(kept.len(), 1, "{files:?}");
    assert!(text.contains(kept[0].as_str()), "{text}");
    // No temporary file, and no log of the old database left beside the new one.
    assert!(
        !files
            .iter()
            .any(|f| f.ends_with(".tmp") || f == "neocloud.db-wal"),
        "{files:?}"
    );
    // The replaced database is kept whole, with the write made after the backup.
    let kept = data.join(kept[0]);
    assert_eq!(mode(&data.join("neocloud.db")), old_mode);
    assert_eq!(integrity(&kept).await, "ok");
    assert!(tenant_names(&kept).await.contains("after-backup"));

    // Serve on the restored data: the backup's tenants are back, the later one is gone.
    let server = Serve::start(&data, &[]).await;
    for i in 0..10 {
        assert_eq!(server.tenant_status(&format!("before-{i}")).await, 200);
    }
    for name in &acked_before {
        assert_eq!(server.tenant_status(name).await, 200, "{name}");
    }
    assert_eq!(server.tenant_status("after-backup").await, 404);
    let (st, body, _) = server.create_tenant("after-restore").await;
    assert_eq!(st, 201, "{body}");
    server.stop().await;
    let mut expected = in_backup.clone();
    expected.insert("after-restore".to_string());
    assert_eq!(tenant_names(&data.join("neocloud.db")).await, expected);
}

/// Bad input gets one clear line and exit status 1, and changes no file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_refuses_bad_input_with_clear_messages() {
    let dir = temp_dir();
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let db = data.join("neocloud.db");
    // A real neocloud database, made by the store itself.
    let store = neocloud_store::Store::open(&format!("sqlite://{}?mode=rwc", db.display()))
        .await
        .unwrap();
    store.pool().close().await;
    // Everything in the main file, so its bytes are the whole database.
    let mut c = open_sqlite(&db).await;
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&mut c)
        .await
        .unwrap();
    c.close().await.unwrap();
    let original = std::fs::read(&db).unwrap();

    let fails = |o: &Output, want: &[&str]| {
        assert_eq!(
            o.status.code(),
            Some(1),
            "stdout: {}\nstderr: {}",
            out(o),
            err(o)
        );
        let e = err(o);
        assert_eq!(e.trim().lines().count(), 1, "one line: {e}");
        assert!(e.starts_with("error: "), "{e}");
        for w in want {
            assert!(e.contains(w), "{w:?} not in {e}");
        }
    };

    // No database where the data directory points.
    let nowhere = dir.join("nowhere");
    let o = neocloud(&[
        "admin",
        "backup",
        "--data-dir",
        s(&nowhere),
        s(&dir.join("b.db")),
    ])
    .await;
    fails(&o, &["no database at", s(&nowhere.join("neocloud.db"))]);
    assert!(!nowhere.exists(), "a backup must not create a database");

    // The output exists: refused without --force, the file untouched; replaced with it.
    let taken = dir.join("taken.db");
    std::fs::write(&taken, b"keep me").unwrap();
    let o = neocloud(&["admin", "backup", "--data-dir", s(&data), s(&taken)]).await;
    fails(&o, &[s(&taken), "already exists", "--force"]);
    assert_eq!(std::fs::read(&taken).unwrap(), b"keep me");
    let o = neocloud(&[
        "admin",
        "backup",
        "--data-dir",
        s(&data),
        "--force",
        s(&taken),
    ])
    .await;
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(integrity(&taken).await, "ok");

    // Restores of things that are not neocloud backups.
    let missing = dir.join("missing.db");
    let o = neocloud(&["admin", "restore", "--data-dir", s(&data), s(&missing)]).await;
    fails(&o, &[s(&missing), "no such file"]);

    let text = dir.join("notes.txt");
    std::fs::write(
        &text,
        "these are not the rows you are looking for\n".repeat(200),
    )
    .unwrap();
    let o = neocloud(&["admin", "restore", "--data-dir", s(&data), s(&text)]).await;
    fails(&o, &[s(&text), "is not an SQLite database"]);

    let other = dir.join("other.db");
    {
        let o = SqliteConnectOptions::from_str(&format!("sqlite://{}", other.display()))
            .unwrap()
            .create_if_missing(true);
        let mut c = SqliteConnection::connect_with(&o).await.unwrap();
        sqlx::query("CREATE TABLE recipes (name TEXT)")
            .execute(&mut c)
            .await
            .unwrap();
        c.close().await.unwrap();
    }
    let o = neocloud(&["admin", "restore", "--data-dir", s(&data), s(&other)]).await;
    fails(&o, &[s(&other), "not a neocloud database"]);

    // A damaged backup: the second half of the file overwritten.
    let damaged = dir.join("damaged.db");
    let mut bytes = std::fs::read(&taken).unwrap();
    let half = bytes.len() / 2;
    bytes[half..].fill(0xa5);
    std::fs::write(&damaged, &bytes).unwrap();
    let o = neocloud(&["admin", "restore", "--data-dir", s(&data), s(&damaged)]).await;
    fails(&o, &[s(&damaged), "failed the integrity check"]);

    // A backup from a newer release.
    let newer = dir.join("newer.db");
    std::fs::copy(&taken, &newer).unwrap();
    {
        let mut c = open_sqlite(&newer).await;
        sqlx::query(
            "INSERT INTO schema_migrations (version, description, applied_at) VALUES (999, 'future', 0)",
        )
        .execute(&mut c)
        .await
        .unwrap();
        c.close().await.unwrap();
    }
    let o = neocloud(&["admin", "restore", "--data-dir", s(&data), s(&newer)]).await;
    fails(&o, &[s(&newer), "schema version 999", "newer"]);

    // None of the refused restores touched the database or left a file behind.
    assert!(
        std::fs::read(&db).unwrap() == original,
        "the database changed"
    );
    let files = files_in(&data);
    assert!(
        files
            .iter()
            .all(|f| f == "neocloud.db" || f == "neocloud.db.lock"),
        "{files:?}"
    );

    // PostgreSQL: pointed to pg_dump / pg_restore, and the password is not echoed.
    let pg = "postgres://neocloud:hunter2@127.0.0.1:5432/neocloud";
    let o = neocloud(&[
        "admin",
        "backup",
        "--database-url",
        pg,
        s(&dir.join("pg.db")),
    ])
    .await;
    fails(&o, &["PostgreSQL", "pg_dump", "docs/deployment.md"]);
    assert!(!err(&o).contains("hunter2"), "{}", err(&o));
    let o = neocloud(&["admin", "restore", "--database-url", pg, s(&taken)]).await;
    fails(&o, &["PostgreSQL", "pg_restore"]);
    assert!(!dir.join("pg.db").exists());

    // --database-url sqlite://… names the file directly.
    let url = format!("sqlite://{}?mode=rwc", db.display());
    let via_url = dir.join("via-url.db");
    let o = neocloud(&["admin", "backup", "--database-url", &url, s(&via_url)]).await;
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(integrity(&via_url).await, "ok");
}

/// A full disk, simulated by SQLite's page limit: the write that does not fit gets a clear
/// 507 and changes nothing, reads keep working, and after a restart without the limit the
/// database is whole with every acknowledged write in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_keeps_reads_and_loses_nothing() {
    let dir = temp_dir();
    let data = dir.join("data");
    let server = Serve::start(&data, &[]).await;
    for i in 0..3 {
        assert_eq!(server.create_tenant(&format!("early-{i}")).await.0, 201);
    }
    server.stop().await;
    let db = data.join("neocloud.db");
    let pages: i64 = {
        let mut c = open_sqlite(&db).await;
        let n = sqlx::query("PRAGMA page_count")
            .fetch_one(&mut c)
            .await
            .unwrap()
            .get(0);
        c.close().await.unwrap();
        n
    };

    // A few pages of room: the server starts, then tenants fill the rest.
    let limit = (pages + 6).to_string();
    let server = Serve::start(&data, &[("NEOCLOUD_FAILPOINT_SQLITE_MAX_PAGES", limit)]).await;
    let mut acked = vec![
        "early-0".to_string(),
        "early-1".to_string(),
        "early-2".to_string(),
    ];
    let mut refused = None;
    for i in 0..2000 {
        let name = format!("fill-{i}");
        let (st, body, ctype) = server.create_tenant(&name).await;
        match st {
            201 => acked.push(name),
            _ => {
                refused = Some((name, st, body, ctype));
                break;
            }
        }
    }
    let (name, st, body, ctype) = refused.expect("the database never filled up");
    assert!(acked.len() > 3, "some writes fit before the disk was full");
    assert_eq!(st, 507, "{body}");
    assert_eq!(ctype, "application/problem+json");
    assert_eq!(body["code"], "storage_full", "{body}");
    assert_eq!(body["status"], 507);
    assert!(
        body["detail"].as_str().unwrap().contains("disk is full")
            && body["detail"]
                .as_str()
                .unwrap()
                .contains("nothing was changed"),
        "{body}"
    );
    // Nothing changed, and reads still work.
    assert_eq!(server.tenant_status(&name).await, 404);
    assert_eq!(server.tenant_status("early-0").await, 200);
    assert_eq!(
        server.send(reqwest::Method::GET, "/readyz", None).await.0,
        200
    );
    let (st, list, _) = server
        .send(reqwest::Method::GET, "/v1/tenants?limit=1000", None)
        .await;
    assert_eq!(st, 200);
    let listed: BTreeSet<String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, acked.iter().cloned().collect());
    // It stays refused, with the same clear error (no 500 after the first failure).
    let (st, body, _) = server.create_tenant("one-more").await;
    assert_eq!(
        (st, body["code"].as_str()),
        (507, Some("storage_full")),
        "{body}"
    );
    server.stop().await;

    // The limit lifted: whole, nothing acknowledged lost, nothing refused present.
    assert_eq!(integrity(&db).await, "ok");
    let names = tenant_names(&db).await;
    assert_eq!(names, acked.iter().cloned().collect::<BTreeSet<_>>());
    let server = Serve::start(&data, &[]).await;
    assert_eq!(server.create_tenant(&name).await.0, 201);
    server.stop().await;

    // Full before it even starts: one line that says so, and exit status 1.
    let fresh = dir.join("fresh");
    let o = serve_as_must_fail_env(
        &[("NEOCLOUD_FAILPOINT_SQLITE_MAX_PAGES", "3")],
        &["--listen", "127.0.0.1:0", "--data-dir", s(&fresh)],
    )
    .await;
    let e = err(&o);
    let lines: Vec<&str> = e.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!((o.status.code(), lines.len()), (Some(1), 1), "{e}");
    assert!(
        lines[0].contains(&format!(
            "the disk holding the database {} is full",
            fresh.join("neocloud.db").display()
        )) && lines[0].contains("free space"),
        "{e}"
    );
}

/// A small tmpfs mounted for one test, unmounted when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    /// Mounts a 2 MiB tmpfs at a fresh directory, if this process may (root with the
    /// right to mount); None elsewhere.
    fn mount() -> Option<SmallDisk> {
        let dir = temp_dir().join("small-disk");
        std::fs::create_dir_all(&dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
            .arg(&dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(SmallDisk(dir))
    }

    /// Free bytes on it.
    fn free(&self) -> u64 {
        let o = Command::new("df")
            .args(["-B1", "--output=avail"])
            .arg(&self.0)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .last()
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Two nodes of 8 GPUs (15 sellable: one is the spare buffer).
const TWO_NODES: &str = r#"
[[sites]]
name = "lab"
region = "us-east"
power_mw = 1
pue = 1.1
[[sites.node_groups]]
gpu_model = "H100-SXM-80GB"
gpus = 8
peak_watts = 10000
idle_watts = 2000
nodes_per_block = 2
layout = [ { kind = "pod", count = 1, name = "p{n}" } ]
name = "{block}-n{n}"
"#;

/// The same on a disk that is really full (a 2 MiB tmpfs, where this process may mount
/// one; skipped elsewhere): 507 and nothing changed — a refused launch leaves its GPUs
/// free — reads and readiness keep working, and once space is freed writes work again
/// without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_really_full_disk_refuses_writes_until_space_is_freed() {
    let Some(disk) = SmallDisk::mount() else {
        eprintln!("skipping: cannot mount a tmpfs here");
        return;
    };
    let data = disk.0.join("data");
    let fleet = temp_dir().join("fleet.toml");
    std::fs::write(&fleet, TWO_NODES).unwrap();
    let server = Serve::start_with(&data, &["--fleet", s(&fleet)], &[]).await;
    let (st, tenant, _) = server.create_tenant("early").await;
    assert_eq!(st, 201, "{tenant}");
    let launch = json!({"tenant_id": tenant["id"], "gpu_model": "H100-SXM-80GB", "gpus": 8});
    // Leave about 40 KiB free.
    let filler = disk.0.join("filler");
    let room = disk.free().saturating_sub(40 * 1024);
    std::fs::write(&filler, vec![0u8; usize::try_from(room).unwrap()]).unwrap();
    let mut acked = vec!["early".to_string()];
    let mut refused = None;
    for i in 0..500 {
        let name = format!("fill-{i}");
        let (st, body, _) = server.create_tenant(&name).await;
        if st == 201 {
            acked.push(name);
        } else {
            refused = Some((name, st, body));
            break;
        }
    }
    let (name, st, body) = refused.expect("the disk never filled up");
    assert_eq!(
        (st, body["code"].as_str()),
        (507, Some("storage_full")),
        "{body}"
    );
    assert_eq!(server.tenant_status(&name).await, 404);
    assert_eq!(server.tenant_status("early").await, 200);
    assert_eq!(
        server.send(reqwest::Method::GET, "/readyz", None).await.0,
        200
    );
    // A launch takes a node's 8 GPUs in memory first; refused on the disk, it must give
    // them back, or the launch after freeing space would find 7 sellable GPUs, not 15.
    let (st, body, _) = server
        .send(reqwest::Method::POST, "/v1/instances", Some(launch.clone()))
        .await;
    assert_eq!(
        (st, body["code"].as_str()),
        (507, Some("storage_full")),
        "{body}"
    );
    let (st, list, _) = server
        .send(reqwest::Method::GET, "/v1/instances", None)
        .await;
    assert_eq!(st, 200);
    assert_eq!(list["items"].as_array().unwrap().len(), 0, "{list}");
    // Space again: the same writes now succeed, no restart needed.
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(server.create_tenant(&name).await.0, 201);
    acked.push(name);
    let (st, inst, _) = server
        .send(reqwest::Method::POST, "/v1/instances", Some(launch))
        .await;
    assert_eq!(
        (st, inst["state"].as_str()),
        (201, Some("running")),
        "{inst}"
    );
    server.stop().await;
    let db = data.join("neocloud.db");
    assert_eq!(integrity(&db).await, "ok");
    assert_eq!(
        tenant_names(&db).await,
        acked.iter().cloned().collect::<BTreeSet<_>>()
    );
    drop(disk);
}

/// A database serve cannot write stops the start with one line that names the file and
/// what to do. Tests run as root, where file modes do not stop writes, so the database is
/// opened read-only through its URL (`mode=ro`): SQLite then fails writes with the same
/// SQLITE_READONLY it returns for a file the user may not write or a read-only mount.
/// A data directory path that is a regular file is the other honest case root cannot
/// write through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_a_read_only_database_with_a_clear_error() {
    let dir = temp_dir();
    let data = dir.join("data");
    let server = Serve::start(&data, &[]).await;
    assert_eq!(server.create_tenant("kept").await.0, 201);
    server.stop().await;
    let db = data.join("neocloud.db");
    let before = tenant_names(&db).await;

    let url = format!("sqlite://{}?mode=ro", db.display());
    let o = serve_must_fail(&[
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        s(&data),
        "--database-url",
        &url,
    ])
    .await;
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    let e = err(&o);
    let line: Vec<&str> = e.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(line.len(), 1, "{e}");
    assert!(
        line[0].contains(&format!("the database {} is read-only", db.display()))
            && line[0].contains("writable"),
        "{e}"
    );
    assert!(!out(&o).contains("serving"), "{}", out(&o));
    assert_eq!(integrity(&db).await, "ok");
    assert_eq!(tenant_names(&db).await, before);

    // The data directory is a file.
    let file = dir.join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let o = serve_must_fail(&["--listen", "127.0.0.1:0", "--data-dir", s(&file)]).await;
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    let e = err(&o);
    assert!(
        e.lines().filter(|l| l.starts_with("error:")).count() == 1
            && e.contains(s(&file))
            && e.contains("data directory"),
        "{e}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"x");

    // Real permissions: as root, run serve as the unprivileged user `nobody` (where
    // setpriv exists and nobody may run the binary; skipped elsewhere, the cases above
    // stand). A directory nobody may not write stops it at the lock file; a database file
    // it may not write, in a directory it may, is opened read-only by SQLite and caught by
    // the start-up write check.
    let as_nobody = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
    ];
    let can = Command::new(as_nobody[0])
        .args(&as_nobody[1..])
        .arg(BIN)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !(can && is_root) {
        eprintln!("skipping the run as nobody (needs root and setpriv)");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let closed = dir.join("closed");
    std::fs::create_dir_all(&closed).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = serve_as_must_fail(
        &as_nobody,
        &["--listen", "127.0.0.1:0", "--data-dir", s(&closed)],
    )
    .await;
    let e = err(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains(&format!(
            "cannot write {}",
            closed.join("neocloud.db.lock").display()
        )) && e.contains("Permission denied")
            && e.contains("must be writable"),
        "{e}"
    );
    assert!(!closed.join("neocloud.db").exists());

    // The database of the first part, its file (and log) the user may not write.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).unwrap();
    for f in files_in(&data) {
        std::fs::set_permissions(data.join(&f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    std::fs::remove_file(data.join("neocloud.db.lock")).unwrap();
    let o = serve_as_must_fail(
        &as_nobody,
        &["--listen", "127.0.0.1:0", "--data-dir", s(&data)],
    )
    .await;
    let e = err(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains(&format!("the database {} is read-only", db.display())),
        "{e}"
    );
    assert_eq!(integrity(&db).await, "ok");
    assert_eq!(tenant_names(&db).await, before);
}
