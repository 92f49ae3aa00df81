//! The real binaries end to end: `neocloud serve` and `neocloud agent --backend sim` as
//! processes talking HTTP. An injected XID 79 fails the node and refills the contract's
//! pool from the same block; the control plane goes down and comes back, and the events the
//! agent buffered meanwhile arrive exactly once.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::ctx::temp_dir;

const BIN: &str = env!("CARGO_BIN_EXE_neocloud");

use crate::api_health::FLEET;

/// A `neocloud serve` process.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    /// Starts serve on `listen` and waits for its "serving" line.
    fn start(dir: &Path, listen: &str) -> Server {
        let mut child = Command::new(BIN)
            .args([
                "serve",
                "--listen",
                listen,
                "--heartbeat-interval",
                "1",
                "--fleet",
            ])
            .arg(dir.join("fleet.toml"))
            .arg("--data-dir")
            .arg(dir.join("data"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let addr = loop {
            let line = lines.next().expect("serve exited early").unwrap();
            if let Some(rest) = line.strip_prefix("neocloud is serving on http://") {
                break rest.split_whitespace().next().unwrap().to_string();
            }
        };
        Server { child, addr }
    }

    /// SIGTERM, and a clean exit.
    fn stop(mut self) {
        sigterm(&self.child);
        assert!(self.child.wait().unwrap().success());
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sigterm(child: &Child) {
    Command::new("kill")
        .arg(child.id().to_string())
        .status()
        .unwrap();
}

/// Runs a client subcommand and returns its JSON output.
fn cli(addr: &str, key: &str, args: &[&str]) -> Value {
    let o = Command::new(BIN)
        .args([
            "--url",
            &format!("http://{addr}"),
            "--api-key",
            key,
            "-o",
            "json",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "neocloud {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

/// The operator key `serve` wrote in its data directory.
fn operator_key(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("data/operator.key"))
        .unwrap()
        .trim()
        .to_string()
}

/// A new enrollment key (node-agent, bound to no node).
fn enrollment_key(addr: &str, op: &str) -> String {
    cli(
        addr,
        op,
        &["keys", "create", "--name", "enroll", "--role", "node-agent"],
    )["secret"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Polls `f` every 100 ms until it returns Some, or panics after `secs`.
fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn history(addr: &str, key: &str, node: &str) -> Vec<Value> {
    cli(addr, key, &["nodes", "health", node, "--limit", "1000"])
        .as_array()
        .unwrap()
        .clone()
}

fn xids(h: &[Value], code: u64) -> usize {
    h.iter()
        .filter(|e| e["kind"] == "xid" && e["code"] == code)
        .count()
}

fn write_fault(path: &PathBuf, spec: &str) {
    // Written beside the watched file and renamed, so the agent never reads half a line.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{spec}\n")).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn agents_heartbeat_fail_on_xid_79_and_deliver_buffered_events_once() {
    let dir = temp_dir();
    std::fs::write(dir.join("fleet.toml"), FLEET).unwrap();
    let server = Server::start(&dir, "127.0.0.1:0");
    let addr = server.addr.clone();
    let op = operator_key(&dir);

    // A tenant leases two nodes and runs reserved work on one of them.
    cli(&addr, &op, &["tenants", "create", "acme"]);
    let tk = cli(
        &addr,
        &op,
        &[
            "keys",
            "create",
            "--name",
            "acme",
            "--role",
            "tenant-admin",
            "--tenant",
            "acme",
        ],
    )["secret"]
        .as_str()
        .unwrap()
        .to_string();
    let end = neocloud_types::Timestamp::now()
        .plus_seconds(30 * 86_400)
        .to_string();
    let c = cli(
        &addr,
        &tk,
        &[
            "contracts",
            "sign",
            "--gpu-model",
            "H100-SXM-80GB",
            "--gpus",
            "16",
            "--end",
            &end,
            "--site",
            "east",
        ],
    );
    let cid = c["id"].as_str().unwrap().to_string();
    let inst = cli(
        &addr,
        &tk,
        &[
            "instances",
            "launch",
            "--class",
            "reserved",
            "--contract",
            &cid,
            "--gpu-model",
            "H100-SXM-80GB",
            "--gpus",
            "8",
        ],
    );
    let host = inst["placement"][0]["node"].as_str().unwrap().to_string();

    // The agent on that node enrolls with an enrollment key and starts heartbeating.
    let enroll = enrollment_key(&addr, &op);
    let faults = dir.join("faults");
    let mut agent = Command::new(BIN)
        .args([
            "agent",
            "--server",
            &format!("http://{addr}"),
            "--key",
            &enroll,
        ])
        .args([
            "--backend",
            "sim",
            "--sim-gpus",
            "8",
            "--sim-model",
            "H100-SXM-80GB",
        ])
        .args(["--hostname", &host, "--sim-fault-file"])
        .arg(&faults)
        // Health only: no workloads, and its state apart from other runs.
        .args(["--runtime", "none", "--state-dir"])
        .arg(dir.join("agent"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let node = wait_for(20, "telemetry from the agent", || {
        let n = cli(&addr, &op, &["nodes", "show", &host]);
        n["gpus"][7]["telemetry"]["temperature_c"]
            .is_number()
            .then_some(n)
    });
    assert!(
        node["gpus"][0]["uuid"]
            .as_str()
            .unwrap()
            .starts_with("GPU-")
    );
    assert_eq!(
        node["state"], "allocated",
        "its 8 GPUs run the reserved instance"
    );

    // GPU 3 falls off the bus: the node fails, its work ends, a spare from the same leaf
    // group refills the pool, and the outage is recorded.
    write_fault(&faults, "xid:79:3");
    wait_for(20, "the node to fail", || {
        (cli(&addr, &op, &["nodes", "show", &host])["state"] == "failed").then_some(())
    });
    let i = cli(
        &addr,
        &tk,
        &["instances", "show", inst["id"].as_str().unwrap()],
    );
    assert_eq!(i["state"], "failed");
    let ev = cli(
        &addr,
        &op,
        &["events", "list", "--action", "contract.pool_node_replaced"],
    );
    let spare = ev["items"][0]["after"]["node"]
        .as_str()
        .unwrap()
        .to_string();
    let leaf = |n: &str| n.rsplit_once('-').unwrap().0.to_string();
    assert_eq!(leaf(&spare), leaf(&host));
    let outages = cli(&addr, &tk, &["contracts", "outages", &cid]);
    assert_eq!(outages[0]["gpus"], 8);
    assert!(outages[0]["end_at"].is_string(), "{outages}");
    assert_eq!(xids(&history(&addr, &op, &host), 79), 1);

    // The control plane goes down; the agent keeps what it sees meanwhile.
    server.stop();
    write_fault(&faults, "xid:13:1");
    wait_for(10, "the agent to read the fault", || {
        (!faults.exists()).then_some(())
    });
    write_fault(&faults, "xid:31:2");
    wait_for(10, "the agent to read the fault", || {
        (!faults.exists()).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    let server = Server::start(&dir, &addr);
    // Back: the buffered events arrive, each once, however many heartbeats follow.
    wait_for(90, "the buffered events", || {
        let h = history(&addr, &op, &host);
        (xids(&h, 13) == 1 && xids(&h, 31) == 1).then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    let h = history(&addr, &op, &host);
    assert_eq!(
        (xids(&h, 79), xids(&h, 13), xids(&h, 31)),
        (1, 1, 1),
        "{h:?}"
    );
    assert_eq!(
        json!(h.iter().find(|e| e["code"] == 13).unwrap()["action"]),
        json!("ignore")
    );

    // The operator's side through the CLI: repair, then the agent's burn-in passes and the
    // node is back; the GPU that failed keeps its history; cordon and the XID policy.
    let n = cli(
        &addr,
        &op,
        &[
            "nodes",
            "repair-complete",
            &host,
            "--reason",
            "GPU 3 reseated",
        ],
    );
    assert_eq!(n["state"], "burn_in");
    wait_for(20, "the burn-in to pass", || {
        (cli(&addr, &op, &["nodes", "show", &host])["state"] == "available").then_some(())
    });
    let uuid = node["gpus"][3]["uuid"].as_str().unwrap();
    let g = cli(&addr, &op, &["gpus", "history", uuid]);
    assert_eq!(
        (g["node"].as_str(), g["failures"].as_u64()),
        (Some(host.as_str()), Some(1))
    );
    assert_eq!(
        cli(&addr, &op, &["nodes", "cordon", &spare])["state"],
        "cordoned"
    );
    assert_ne!(
        cli(&addr, &op, &["nodes", "uncordon", &spare])["state"],
        "cordoned"
    );
    let rules = cli(
        &addr,
        &op,
        &["health", "set-rule", "31", "--action", "drain"],
    );
    let rule = |rules: &Value, code: u64| {
        rules
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["code"] == code)
            .cloned()
            .unwrap()
    };
    assert_eq!(rule(&rules, 31)["source"], "override");
    let rules = cli(&addr, &op, &["health", "reset-rule", "31"]);
    assert_eq!(rule(&rules, 31)["action"], "ignore");
    assert_eq!(
        rule(&cli(&addr, &op, &["health", "rules"]), 79)["action"],
        "fail"
    );

    // SIGTERM stops the agent cleanly.
    sigterm(&agent);
    assert!(agent.wait().unwrap().success());
    server.stop();
}

/// A `neocloud relay` process.
struct RelayProc {
    child: Child,
    addr: String,
}

impl RelayProc {
    fn start(server: &str, key: &str, log: &Path) -> RelayProc {
        let mut child = Command::new(BIN)
            .args(["relay", "--listen", "127.0.0.1:0", "--server", server])
            .args(["--key", key, "--max-wait-ms", "50"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let addr = loop {
            let line = lines.next().expect("relay exited early").unwrap();
            if let Some(rest) = line.strip_prefix("neocloud relay is listening on http://") {
                break rest.trim().to_string();
            }
        };
        RelayProc { child, addr }
    }
}

impl Drop for RelayProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The counters a relay logs when it stops: (heartbeats, batches, passed through).
fn relay_counts(log: &Path) -> (u64, u64, u64) {
    let text = std::fs::read_to_string(log).unwrap();
    let stopped = text
        .lines()
        .find(|l| l.contains("relay stopped"))
        .unwrap_or_else(|| panic!("{text}"));
    let count = |name: &str| -> u64 {
        stopped
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{stopped}"))
    };
    (
        count("heartbeats"),
        count("batches"),
        count("passed_through"),
    )
}

/// Agents that send their heartbeats through two relays: registered through them, failed
/// by an XID 79 a relayed heartbeat carries, and all heard from through the other relay
/// once one stops.
#[test]
fn agents_heartbeat_through_relays_and_fail_over_when_one_stops() {
    let dir = temp_dir();
    std::fs::write(dir.join("fleet.toml"), FLEET).unwrap();
    let server = Server::start(&dir, "127.0.0.1:0");
    let addr = server.addr.clone();
    let op = operator_key(&dir);
    let enroll = enrollment_key(&addr, &op);
    let cp = format!("http://{addr}");
    let logs = [dir.join("relay-1.log"), dir.join("relay-2.log")];
    let mut first = RelayProc::start(&cp, &enroll, &logs[0]);
    let mut second = RelayProc::start(&cp, &enroll, &logs[1]);
    let relays = format!("http://{},http://{}", first.addr, second.addr);
    let hosts = ["e-p1-l1-n1", "e-p1-l1-n2", "e-p1-l1-n3", "e-p1-l1-n4"];
    let mut agents = Vec::new();
    for h in hosts {
        let agent = Command::new(BIN)
            .args(["agent", "--key", &enroll, "--server", &relays])
            .args(["--backend", "sim", "--hostname", h, "--sim-fault-file"])
            .arg(dir.join(format!("faults-{h}")))
            .args(["--runtime", "none", "--no-long-poll", "--state-dir"])
            .arg(dir.join(format!("agent-{h}")))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        agents.push(agent);
    }
    let show = |h: &str| cli(&addr, &op, &["nodes", "show", h]);
    for h in hosts {
        wait_for(20, "telemetry through a relay", || {
            let n = show(h);
            (n["gpus"][7]["telemetry"]["temperature_c"].is_number() && n["state"] == "available")
                .then_some(())
        });
    }
    // News in a relayed heartbeat: GPU 3 of the second node falls off the bus.
    write_fault(&dir.join(format!("faults-{}", hosts[1])), "xid:79:3");
    wait_for(20, "the node to fail", || {
        (show(hosts[1])["state"] == "failed").then_some(())
    });
    assert_eq!(xids(&history(&addr, &op, hosts[1]), 79), 1);

    // One relay stops: every agent is heard from again, through the other.
    sigterm(&first.child);
    assert!(first.child.wait().unwrap().success());
    let before: Vec<Value> = hosts
        .iter()
        .map(|h| show(h)["last_heartbeat_at"].clone())
        .collect();
    for (h, b) in hosts.iter().zip(&before) {
        wait_for(20, "a heartbeat through the other relay", || {
            (show(h)["last_heartbeat_at"] != *b).then_some(())
        });
    }
    for h in [hosts[0], hosts[2], hosts[3]] {
        assert_eq!(show(h)["state"], "available", "nothing falsely failed");
    }
    assert_eq!(xids(&history(&addr, &op, hosts[1]), 79), 1);
    sigterm(&second.child);
    assert!(second.child.wait().unwrap().success());
    // What the relays say they did: every heartbeat went in a batch, registrations went
    // through unchanged.
    let (h1, b1, p1) = relay_counts(&logs[0]);
    let (h2, b2, p2) = relay_counts(&logs[1]);
    assert!(h1 + h2 >= 8, "{h1} + {h2} heartbeats");
    assert!(
        h2 >= 4,
        "the second relay took every agent: {h2} heartbeats"
    );
    assert!(b1 <= h1 && b2 <= h2 && b1 + b2 >= 1);
    assert!(p1 + p2 >= 4, "{p1} + {p2} passed through");
    for a in &agents {
        sigterm(a);
    }
    for mut a in agents {
        assert!(a.wait().unwrap().success());
    }
    server.stop();
}

/// A relay started with bad options says what is wrong and exits non-zero.
#[test]
fn a_relay_with_bad_options_says_why_and_exits() {
    let cases: [(&[&str], &str); 4] = [
        (
            &["--server", "ftp://cp.internal", "--key", "k"],
            "not an http:// or https:// URL",
        ),
        (
            &["--server", " , ", "--key", "k"],
            "give the control plane's URL",
        ),
        (
            &[
                "--server",
                "http://cp.internal",
                "--key",
                "k",
                "--max-batch",
                "0",
            ],
            "--max-batch",
        ),
        (
            &[
                "--server",
                "http://cp.internal",
                "--key",
                "k",
                "--max-wait-ms",
                "5000",
            ],
            "--max-wait-ms",
        ),
    ];
    for (args, says) in cases {
        let o = Command::new(BIN)
            .args(["relay", "--listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("NEOCLOUD_RELAY_SERVER")
            .env_remove("NEOCLOUD_RELAY_KEY")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
