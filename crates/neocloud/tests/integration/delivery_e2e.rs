//! Delivery end to end through the real binaries: `neocloud serve`, `neocloud agent` (sim
//! GPUs, podman runtime) and the CLI. A tenant adds an SSH key, launches a 2-GPU container
//! from an image built offline, logs in with `neocloud ssh` and sees exactly its GPUs and
//! limits; another key is refused; the agent is killed with SIGKILL and its successor adopts
//! the running container; `neocloud instances logs` shows the output; terminate stops it,
//! removes it and frees the GPUs.
//!
//! Needs root, podman, runc, OpenSSH and a static busybox. Without them the test says why
//! and passes, unless `NEOCLOUD_REQUIRE_DELIVERY=1` (the test script sets it).

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::api_health::FLEET;
use crate::ctx::temp_dir;

const BIN: &str = env!("CARGO_BIN_EXE_neocloud");
/// The image every delivery test runs: busybox, imported from a local root filesystem.
pub(crate) const TEST_IMAGE: &str = "localhost/neocloud-test:busybox";

/// Why delivery cannot run here, if it cannot.
pub(crate) fn missing_prerequisite() -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("not running as root".into());
    }
    for b in ["podman", "runc", "ssh", "ssh-keygen", "busybox"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {b}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!("{b} is not installed"));
        }
    }
    if !Path::new("/usr/sbin/sshd").exists() {
        return Some("sshd (openssh-server) is not installed".into());
    }
    None
}

/// Whether to run: false (with the reason printed) where delivery cannot run and the run
/// does not require it.
pub(crate) fn delivery_available(test: &str) -> bool {
    match missing_prerequisite() {
        None => true,
        Some(why) if std::env::var("NEOCLOUD_REQUIRE_DELIVERY").is_ok_and(|v| v == "1") => {
            panic!("{test}: delivery is required here, but {why}")
        }
        Some(why) => {
            eprintln!("{test}: skipped: {why} (set NEOCLOUD_REQUIRE_DELIVERY=1 to make this fail)");
            false
        }
    }
}

/// Builds the test image from the host's static busybox, once per machine.
pub(crate) fn ensure_test_image() {
    let exists = Command::new("podman")
        .args(["image", "exists", TEST_IMAGE])
        .status()
        .is_ok_and(|s| s.success());
    if exists {
        return;
    }
    let root = temp_dir().join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    let busybox = String::from_utf8(
        Command::new("sh")
            .args(["-c", "command -v busybox"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    std::fs::copy(busybox.trim(), root.join("bin/busybox")).unwrap();
    let s = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd {} && for a in $(./bin/busybox --list); do [ -e bin/$a ] || ln -s busybox bin/$a; done \
             && mkdir -p tmp etc root && tar -c . | podman import - {TEST_IMAGE}",
            root.display()
        ))
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(s.success(), "building {TEST_IMAGE}");
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(addr: &str, key: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["--url", &format!("http://{addr}"), "--api-key", key])
        .args(args)
        .output()
        .unwrap()
}

fn cli(addr: &str, key: &str, args: &[&str]) -> Value {
    let mut a = vec!["-o", "json"];
    a.extend_from_slice(args);
    let o = run(addr, key, &a);
    assert!(
        o.status.success(),
        "neocloud {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn agent(addr: &str, key: &str, host: &str, state: &Path, ports: &str) -> Proc {
    Proc(
        Command::new(BIN)
            .args(["agent", "--server", &format!("http://{addr}"), "--key", key])
            .args(["--backend", "sim", "--sim-gpus", "8", "--hostname", host])
            .args(["--runtime", "podman", "--state-dir"])
            .arg(state)
            .args(["--ssh-host", "127.0.0.1", "--ssh-listen", "127.0.0.1"])
            .args(["--ssh-ports", ports])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    )
}

fn podman(args: &[&str]) -> String {
    let o = Command::new("podman").args(args).output().unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[test]
fn a_tenant_launches_a_container_logs_in_and_terminates_it() {
    if !delivery_available("delivery_e2e") {
        return;
    }
    ensure_test_image();
    let dir = temp_dir();
    // Node names of this run only: the simulated GPUs' CDI kind is named after the host, and
    // other tests run agents for the shared test fleet's names at the same time.
    let tag = format!("d{}", std::process::id());
    std::fs::write(
        dir.join("fleet.toml"),
        FLEET.replace("\"e-p{n}\"", &format!("\"{tag}-p{{n}}\"")),
    )
    .unwrap();
    let mut serve = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--heartbeat-interval",
            "1",
        ])
        .arg("--fleet")
        .arg(dir.join("fleet.toml"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = {
        use std::io::{BufRead, BufReader};
        let mut lines = BufReader::new(serve.stdout.take().unwrap()).lines();
        loop {
            let line = lines.next().expect("serve exited early").unwrap();
            if let Some(rest) = line.strip_prefix("neocloud is serving on http://") {
                break rest.split_whitespace().next().unwrap().to_string();
            }
        }
    };
    let _serve = Proc(serve);
    let op = std::fs::read_to_string(dir.join("data/operator.key"))
        .unwrap()
        .trim()
        .to_string();
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
    // The tenant's key pair, and a stranger's.
    for k in ["id_tenant", "id_stranger"] {
        let s = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(dir.join(k))
            .status()
            .unwrap();
        assert!(s.success());
    }
    let pubkey = dir.join("id_tenant.pub");
    cli(
        &addr,
        &tk,
        &[
            "ssh-keys",
            "add",
            "laptop",
            "--public-key-file",
            pubkey.to_str().unwrap(),
        ],
    );

    let inst = cli(
        &addr,
        &tk,
        &[
            "instances",
            "launch",
            "--gpu-model",
            "H100-SXM-80GB",
            "--gpus",
            "2",
            "--memory",
            "2G",
            "--image",
            TEST_IMAGE,
            "--ssh-key",
            "laptop",
            "--env",
            "GREETING=hello-from-neocloud",
            "--",
            "sh",
            "-c",
            "echo $GREETING; trap 'echo got SIGTERM; exit 0' TERM; while true; do sleep 1; done",
        ],
    );
    assert_eq!(inst["state"], "provisioning", "{inst}");
    let id = inst["id"].as_str().unwrap().to_string();
    let host = inst["placement"][0]["node"].as_str().unwrap().to_string();
    let gpus: Vec<u64> = inst["placement"][0]["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_u64().unwrap())
        .collect();
    assert_eq!(gpus.len(), 2);

    // The node's agent: a unique host name keeps its CDI kind apart from other tests'.
    let enroll = cli(
        &addr,
        &op,
        &["keys", "create", "--name", "enroll", "--role", "node-agent"],
    )["secret"]
        .as_str()
        .unwrap()
        .to_string();
    let state = dir.join("agent");
    let port_base = 20_000 + (std::process::id() % 2000) * 10;
    let ports = format!("{}-{}", port_base, port_base + 9);
    let mut a = agent(&addr, &enroll, &host, &state, &ports);
    let running = wait_for(90, "the instance to run", || {
        let i = cli(&addr, &tk, &["instances", "show", &id]);
        match i["state"].as_str() {
            Some("running") => Some(i),
            Some("provisioning") => None,
            other => panic!("instance went {other:?}: {i}"),
        }
    });
    assert_eq!(running["access"]["host"], "127.0.0.1");
    let ctr = format!("nc-{id}");
    let started = podman(&["inspect", "-f", "{{.State.StartedAt}}", &ctr]);
    assert!(!started.is_empty(), "container {ctr} runs");

    // `neocloud ssh` with the tenant's key lands in the container: its 2 GPUs, its memory.
    let key = dir.join("id_tenant");
    let ssh = |key: &Path, cmd: &str| {
        run(
            &addr,
            &tk,
            &[
                "ssh",
                &id,
                "-i",
                key.to_str().unwrap(),
                "--ssh-option",
                "StrictHostKeyChecking=no",
                "--ssh-option",
                "UserKnownHostsFile=/dev/null",
                "--ssh-option",
                "BatchMode=yes",
                "--",
                cmd,
            ],
        )
    };
    let o = ssh(
        &key,
        "env; ls /dev; cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max",
    );
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "ssh: {out} {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let gpu_vars: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("NEOCLOUD_GPU_"))
        .collect();
    assert_eq!(gpu_vars.len(), 2, "exactly its GPUs: {out}");
    for g in &gpus {
        assert!(
            out.lines().any(|l| l.trim() == format!("nvidia{g}")),
            "{out}"
        );
    }
    assert!(out.contains("GREETING=hello-from-neocloud"), "{out}");
    assert!(out.contains(&format!("NEOCLOUD_INSTANCE_ID={id}")), "{out}");
    assert!(
        out.lines().any(|l| l.trim() == "2147483648"),
        "2 GiB limit: {out}"
    );
    // Another key is refused.
    let o = ssh(&dir.join("id_stranger"), "true");
    assert!(!o.status.success(), "a stranger's key logs in");

    // SIGKILL the agent; its successor adopts the container instead of starting it again.
    a.0.kill().unwrap();
    a.0.wait().unwrap();
    drop(a);
    let a2 = agent(&addr, &enroll, &host, &state, &ports);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        podman(&["inspect", "-f", "{{.State.StartedAt}}", &ctr]),
        started,
        "the container was not restarted"
    );
    let o = ssh(&key, "echo still-here");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("still-here"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        cli(&addr, &tk, &["instances", "show", &id])["state"],
        "running"
    );

    // The output, through the control plane.
    wait_for(20, "the output", || {
        let o = run(&addr, &tk, &["instances", "logs", &id]);
        String::from_utf8_lossy(&o.stdout)
            .contains("hello-from-neocloud")
            .then_some(())
    });

    // Terminate: stopping until the agent confirms, then terminated and gone.
    let t = cli(&addr, &tk, &["instances", "terminate", &id]);
    assert_eq!(t["state"], "stopping", "{t}");
    wait_for(60, "the stop", || {
        (cli(&addr, &tk, &["instances", "show", &id])["state"] == "terminated").then_some(())
    });
    assert_eq!(
        podman(&["ps", "-a", "-q", "--filter", &format!("name={ctr}")]),
        ""
    );
    let logs = run(&addr, &tk, &["instances", "logs", &id]);
    assert!(
        String::from_utf8_lossy(&logs.stdout).contains("got SIGTERM"),
        "the workload saw SIGTERM"
    );
    assert!(
        !ssh(&key, "true").status.success(),
        "nothing to log into any more"
    );
    drop(a2);
}
