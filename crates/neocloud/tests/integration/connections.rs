//! Many clients at once, through the real binary: every agent of a large fleet keeps its own
//! connection open, so what one connection costs the server is multiplied by the fleet.

use std::io::{Read, Write};
use std::net::TcpStream;

use crate::admin::Serve;
use crate::ctx::temp_dir;

/// The server's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// 400 connections, each kept open after one request, cost the server little memory.
/// Serving the router itself copied its whole route table (the OpenAPI document among it)
/// into each new connection: about 640 KB each, 250 MB for these 400.
#[tokio::test(flavor = "multi_thread")]
async fn an_open_connection_costs_the_server_little_memory() {
    let data = temp_dir();
    let serve = Serve::start(&data, &[]).await;
    let pid = serve.child.id();
    let addr = serve.base.trim_start_matches("http://").to_string();
    let (before, after) = tokio::task::spawn_blocking(move || {
        let one = |s: &mut TcpStream| {
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).unwrap();
            assert!(
                buf[..n].starts_with(b"HTTP/1.1 200"),
                "{}",
                String::from_utf8_lossy(&buf[..n])
            );
        };
        // Warm up: the first connections grow the runtime's and allocator's pools.
        let mut warm: Vec<TcpStream> = (0..50)
            .map(|_| TcpStream::connect(&addr).unwrap())
            .collect();
        warm.iter_mut().for_each(one);
        let before = rss_kib(pid);
        let mut open: Vec<TcpStream> = (0..400)
            .map(|_| TcpStream::connect(&addr).unwrap())
            .collect();
        open.iter_mut().for_each(one);
        let after = rss_kib(pid);
        drop((warm, open));
        (before, after)
    })
    .await
    .unwrap();
    let grew = after.saturating_sub(before);
    assert!(
        grew < 40 * 1024,
        "400 open connections grew the server by {grew} KiB ({before} → {after} KiB)"
    );
    serve.stop().await;
}

/// `serve` started with a low soft limit on open files raises it to the hard limit, so a
/// replica can hold its agents' connections.
#[tokio::test(flavor = "multi_thread")]
async fn serve_raises_its_open_files_limit() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    const BIN: &str = env!("CARGO_BIN_EXE_neocloud");
    let data = temp_dir();
    let hard: u64 = {
        let o = Command::new("sh")
            .args(["-c", "ulimit -Hn"])
            .output()
            .unwrap();
        let s = String::from_utf8_lossy(&o.stdout).trim().to_string();
        if s == "unlimited" {
            u64::MAX
        } else {
            s.parse().unwrap()
        }
    };
    if hard <= 512 {
        eprintln!("the hard open-files limit is {hard}: nothing to raise");
        return;
    }
    let mut child = Command::new("sh")
        .args([
            "-c",
            "ulimit -Sn 512 && exec \"$0\" serve --listen 127.0.0.1:0 --data-dir \"$1\"",
            BIN,
        ])
        .arg(&data)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env_remove("NEOCLOUD_DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(data.join("serve.log")).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        let mut seen = Vec::new();
        for line in BufReader::new(out).lines() {
            let line = line.unwrap();
            let done = line.contains("neocloud is serving");
            seen.push(line);
            if done {
                break;
            }
        }
        seen
    })
    .await
    .unwrap();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let row = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .to_string();
    let soft: u64 = row.split_whitespace().nth(3).unwrap().parse().unwrap();
    assert!(soft > 512, "soft limit not raised: {row}");
    assert!(lines.iter().any(|l| l.contains("neocloud is serving")));
    let log = std::fs::read_to_string(data.join("serve.log")).unwrap();
    assert!(
        log.contains("raised the open-files limit"),
        "no log line says so: {log}"
    );
}
