//! Delivery end to end through the real binaries: `neocloud serve`, `neocloud agent` (sim
//! GPUs, podman runtime) and the CLI. A tenant adds an SSH key, launches a 2-GPU container
//! from an image built offline, logs in with `neocloud ssh` and sees exactly its GPUs and
//! limits; another key is refused; the agent is killed with SIGKILL and its successor adopts
//! the running container, then stopped with SIGTERM (as an upgrade does: its node stays in
//! service) and adopted again; `neocloud instances logs` shows the output; terminate stops it,
//! removes it and frees the GPUs.
//!
//! Needs root, podman, runc, OpenSSH and a static busybox. Without them the test says why
//! and passes, unless `NEOCLOUD_REQUIRE_DELIVERY=1` (the test script sets it).

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::ctx::{Db, fresh_database_url, temp_dir, unique};

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

fn agent(addr: &str, key: &str, host: &str, state: &Path, ports: &str, extra: &[&str]) -> Proc {
    Proc(
        Command::new(BIN)
            .args(["agent", "--server", &format!("http://{addr}"), "--key", key])
            .args(["--backend", "sim", "--sim-gpus", "8", "--hostname", host])
            // The size of a real GPU server, not of the test machine: placements hold CPU
            // and memory in proportion to their GPUs.
            .args(["--cpu-cores", "224", "--ram-gib", "2048"])
            .args(["--runtime", "podman", "--state-dir"])
            .arg(state)
            .args(["--ssh-host", "127.0.0.1", "--ssh-listen", "127.0.0.1"])
            .args(["--ssh-ports", ports])
            .args(extra)
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

/// A control plane started as `neocloud serve` on a database of its own, with a tenant
/// `acme` (its admin key `tk`), an enrollment key, and the tenant's SSH key pair (plus a
/// stranger's) in `dir`.
struct Plane {
    addr: String,
    op: String,
    tk: String,
    enroll: String,
    dir: std::path::PathBuf,
    /// SSH ports of this run's agents (random, so that parallel runs rarely collide).
    ports: String,
    _serve: Proc,
}

/// A fleet of `nodes` 8-GPU H100 nodes, named after `tag` (unique per run: the simulated
/// GPUs' CDI kind is named after the host, and other tests run agents at the same time).
fn fleet_toml(tag: &str, nodes: usize) -> String {
    format!(
        r#"[[sites]]
name = "east"
region = "us-east"
power_mw = 2
pue = 1.1
[[sites.node_groups]]
gpu_model = "H100-SXM-80GB"
gpus = 8
peak_watts = 10000
idle_watts = 2000
nodes_per_block = {nodes}
layout = [{{ kind = "pod", count = 1, name = "{tag}-p{{n}}" }}]
name = "{{block}}-n{{n}}"
"#
    )
}

impl Plane {
    /// Starts serve on `db` with the fleet, `extra` serve flags, and heartbeats every 1 s;
    /// `None` when the database is not available here.
    fn start(db: Db, fleet: &str, extra: &[&str]) -> Option<Plane> {
        let dir = temp_dir();
        std::fs::write(dir.join("fleet.toml"), fleet).unwrap();
        let url = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(fresh_database_url(db))?;
        let mut serve = Command::new(BIN)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--heartbeat-interval",
                "1",
            ])
            .args(extra)
            .arg("--fleet")
            .arg(dir.join("fleet.toml"))
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--database-url", &url])
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
        let serve = Proc(serve);
        let op = std::fs::read_to_string(dir.join("data/operator.key"))
            .unwrap()
            .trim()
            .to_string();
        cli(&addr, &op, &["tenants", "create", "acme"]);
        let secret = |args: &[&str]| {
            cli(&addr, &op, args)["secret"]
                .as_str()
                .unwrap()
                .to_string()
        };
        let tk = secret(&[
            "keys",
            "create",
            "--name",
            "acme",
            "--role",
            "tenant-admin",
            "--tenant",
            "acme",
        ]);
        let enroll = secret(&["keys", "create", "--name", "enroll", "--role", "node-agent"]);
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
        let n = unique()[..4]
            .chars()
            .fold(0, |a, c| a * 16 + c.to_digit(16).unwrap_or(0));
        let base = 20_000 + (n % 1300) * 30;
        Some(Plane {
            ports: format!("{}-{}", base, base + 9),
            addr,
            op,
            tk,
            enroll,
            dir,
            _serve: serve,
        })
    }

    /// The tenant's CLI, JSON out.
    fn cli(&self, args: &[&str]) -> Value {
        cli(&self.addr, &self.tk, args)
    }

    /// The tenant's CLI, raw.
    fn run(&self, args: &[&str]) -> Output {
        run(&self.addr, &self.tk, args)
    }

    /// The agent of `host`, with its state in `state`, SSH ports of its own and `extra`
    /// flags.
    fn agent(&self, host: &str, state: &Path, extra: &[&str]) -> Proc {
        self.agent_on_ports(host, state, 0, extra)
    }

    /// An agent with the `slot`-th range of 10 ports after this run's own.
    fn agent_on_ports(&self, host: &str, state: &Path, slot: u32, extra: &[&str]) -> Proc {
        let (first, _) = self.ports.split_once('-').unwrap();
        let first: u32 = first.parse::<u32>().unwrap() + slot * 10;
        let ports = format!("{}-{}", first, first + 9);
        agent(&self.addr, &self.enroll, host, state, &ports, extra)
    }

    /// `neocloud ssh INSTANCE -i KEY -- CMD`, host keys not checked.
    fn ssh(&self, id: &str, key: &Path, cmd: &str) -> Output {
        self.run(&[
            "ssh",
            id,
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
        ])
    }

    /// Waits until the instance leaves `from` (failing on anything but `to`).
    fn wait_state(&self, id: &str, from: &[&str], to: &str, secs: u64) -> Value {
        wait_for(secs, &format!("{id} to be {to}"), || {
            let i = self.cli(&["instances", "show", id]);
            match i["state"].as_str() {
                Some(s) if s == to => Some(i),
                Some(s) if from.contains(&s) => None,
                other => panic!("instance went {other:?}, not {to}: {i}"),
            }
        })
    }

    /// Its output so far, through the control plane.
    fn logs(&self, id: &str) -> String {
        String::from_utf8_lossy(&self.run(&["instances", "logs", id]).stdout).into_owned()
    }
}

#[test]
fn a_tenant_launches_a_container_logs_in_and_terminates_it_sqlite() {
    container_test(Db::Sqlite);
}

#[test]
fn a_tenant_launches_a_container_logs_in_and_terminates_it_postgres() {
    container_test(Db::Postgres);
}

fn container_test(db: Db) {
    if !delivery_available("delivery_e2e") {
        return;
    }
    ensure_test_image();
    let tag = format!("d{}", &unique()[..6]);
    let Some(plane) = Plane::start(db, &fleet_toml(&tag, 4), &[]) else {
        return;
    };
    let (addr, tk, dir) = (plane.addr.clone(), plane.tk.clone(), plane.dir.clone());
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
    let state = dir.join("agent");
    let mut a = plane.agent(&host, &state, &[]);
    let running = plane.wait_state(&id, &["provisioning"], "running", 90);
    assert_eq!(running["access"]["host"], "127.0.0.1");
    let ctr = format!("nc-{id}");
    let started = podman(&["inspect", "-f", "{{.State.StartedAt}}", &ctr]);
    assert!(!started.is_empty(), "container {ctr} runs");

    // `neocloud ssh` with the tenant's key lands in the container: its 2 GPUs, its memory.
    let key = dir.join("id_tenant");
    let ssh = |key: &Path, cmd: &str| plane.ssh(&id, key, cmd);
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
    // The successor holds no long poll: the terminate below reaches it through heartbeat
    // answers alone.
    a.0.kill().unwrap();
    a.0.wait().unwrap();
    drop(a);
    let a2 = plane.agent(&host, &state, &["--no-long-poll"]);
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

    // SIGTERM, as an upgrade of the agent does: a clean exit that says it is restarting.
    // The container runs on, the node stays in service (never `unreachable`), and the
    // agent started again adopts the container.
    let mut a2 = a2;
    let pid = a2.0.id().to_string();
    assert!(Command::new("kill").arg(&pid).status().unwrap().success());
    assert!(a2.0.wait().unwrap().success(), "a clean exit");
    drop(a2);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        podman(&["inspect", "-f", "{{.State.Status}}", &ctr]),
        "running"
    );
    let a2 = plane.agent(&host, &state, &["--no-long-poll"]);
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
    let st = cli(&addr, &plane.op, &["nodes", "show", &host])["state"].clone();
    assert!(st == "available" || st == "allocated", "{st}");
    let history = cli(&addr, &plane.op, &["nodes", "health", &host]);
    assert!(
        history
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "agent_leaving"),
        "{history}"
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

#[test]
fn bare_metal_shares_mig_and_preemption_on_one_node_sqlite() {
    one_node_test(Db::Sqlite);
}

#[test]
fn bare_metal_shares_mig_and_preemption_on_one_node_postgres() {
    one_node_test(Db::Postgres);
}

/// An image that exists nowhere fails its instance with the reason, nothing held. Then, on
/// one node: a bare-metal hand-off (account with the keys, user data run once, gone
/// after terminate); a share and a MIG instance side by side (MPS limits, the MIG slot's
/// CDI device); a spot container preempted by on-demand work (it reads the notice, gets
/// SIGTERM at the deadline, ends `preempted` with metering stopped there).
fn one_node_test(db: Db) {
    if !delivery_available("delivery_e2e") {
        return;
    }
    ensure_test_image();
    let tag = format!("m{}", &unique()[..6]);
    // Two nodes, an agent on each (a site of one node could not sell a whole node on
    // demand: 2% of it is kept spare, rounded up).
    let Some(plane) = Plane::start(db, &fleet_toml(&tag, 2), &["--preemption-grace", "4"]) else {
        return;
    };
    let _agents: Vec<Proc> = (1..=2)
        .map(|n| {
            let host = format!("{tag}-p1-n{n}");
            plane.agent_on_ports(&host, &plane.dir.join(&host), n, &[])
        })
        .collect();
    let pubkey = std::fs::read_to_string(plane.dir.join("id_tenant.pub")).unwrap();
    let key = plane.dir.join("id_tenant");

    // An image no node has and no registry serves: failed with the reason, nothing held,
    // nothing metered.
    let missing = plane.cli(&[
        "instances",
        "launch",
        "--gpu-model",
        "H100-SXM-80GB",
        "--gpus",
        "8",
        "--image",
        "localhost/neocloud-missing:1",
    ]);
    let missing_id = missing["id"].as_str().unwrap().to_string();
    let failed = plane.wait_state(&missing_id, &["provisioning", "stopping"], "failed", 120);
    let reason = failed["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("image not found: localhost/neocloud-missing:1"),
        "{failed}"
    );
    assert!(
        failed["started_at"].is_null(),
        "never ran, never metered: {failed}"
    );
    let nodes = cli(&plane.addr, &plane.op, &["nodes", "list"]);
    assert!(
        nodes["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["state"] == "available"),
        "nothing left allocated: {nodes}"
    );
    // Bare metal: the whole node, an account of the tenant's with its key, user data once.
    let ud = plane.dir.join("user-data.sh");
    std::fs::write(
        &ud,
        "#!/bin/sh\necho \"user data ran as $(id -un) in $HOME\"\n",
    )
    .unwrap();
    let bm = plane.cli(&[
        "instances",
        "launch",
        "--gpu-model",
        "H100-SXM-80GB",
        "--nodes",
        "1",
        "--bare-metal",
        "--user-data-file",
        ud.to_str().unwrap(),
        "--ssh-key",
        "laptop",
    ]);
    let bm_id = bm["id"].as_str().unwrap().to_string();
    let running = plane.wait_state(&bm_id, &["provisioning"], "running", 60);
    let user = running["access"]["user"].as_str().unwrap().to_string();
    assert!(user.starts_with("nc"), "{running}");
    let passwd = |name: &str| {
        let o = Command::new("getent")
            .args(["passwd", name])
            .output()
            .unwrap();
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let entry = passwd(&user).expect("the tenant's account exists");
    assert!(entry.contains(&format!("neocloud={bm_id}")), "{entry}");
    let home = entry.split(':').nth(5).unwrap().to_string();
    let keys = std::fs::read_to_string(format!("{home}/.ssh/authorized_keys")).unwrap();
    assert!(
        keys.contains(pubkey.split_whitespace().nth(1).unwrap()),
        "{keys}"
    );
    let o = plane.ssh(&bm_id, &key, "id -un");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        user,
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        !plane
            .ssh(&bm_id, &plane.dir.join("id_stranger"), "true")
            .status
            .success(),
        "a stranger's key logs in"
    );
    wait_for(20, "the user data's output", || {
        plane
            .logs(&bm_id)
            .contains(&format!("user data ran as {user} in {home}"))
            .then_some(())
    });
    plane.cli(&["instances", "terminate", &bm_id]);
    plane.wait_state(&bm_id, &["stopping"], "terminated", 60);
    assert_eq!(passwd(&user), None, "the account is gone");
    assert!(!Path::new(&home).exists(), "its home is gone");
    assert_eq!(plane.logs(&bm_id).matches("user data ran").count(), 1);

    // A share of a GPU and a MIG instance, side by side.
    let show_env = "env | sort; ls /dev; sleep 100000";
    let launch = |shape: &[&str]| {
        let mut args = vec!["instances", "launch", "--gpu-model", "H100-SXM-80GB"];
        args.extend_from_slice(shape);
        args.extend_from_slice(&["--image", TEST_IMAGE, "--", "sh", "-c", show_env]);
        plane.cli(&args)
    };
    let share = launch(&["--share", "250"]);
    let mig = launch(&["--mig", "3g.40gb"]);
    let share_id = share["id"].as_str().unwrap().to_string();
    let mig_id = mig["id"].as_str().unwrap().to_string();
    plane.wait_state(&share_id, &["provisioning"], "running", 60);
    plane.wait_state(&mig_id, &["provisioning"], "running", 60);
    let share_out = wait_for(20, "the share's output", || {
        let l = plane.logs(&share_id);
        l.contains("CUDA_MPS").then_some(l)
    });
    assert!(
        share_out
            .lines()
            .any(|l| l == "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=25"),
        "{share_out}"
    );
    // A quarter of the simulated 80 GB GPU's memory.
    assert!(
        share_out
            .lines()
            .any(|l| l.starts_with("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=") && l.ends_with('M')),
        "{share_out}"
    );
    let g = share["placement"][0]["gpus"][0].as_u64().unwrap();
    assert!(
        share_out.lines().any(|l| l == format!("nvidia{g}")),
        "{share_out}"
    );
    let mig_out = wait_for(20, "the MIG instance's output", || {
        let l = plane.logs(&mig_id);
        l.contains("NEOCLOUD_MIG_").then_some(l)
    });
    let p = &mig["placement"][0];
    let (g, start) = (
        p["gpus"][0].as_u64().unwrap(),
        p["mig_start"].as_u64().unwrap(),
    );
    let mig_vars: Vec<&str> = mig_out
        .lines()
        .filter(|l| l.starts_with("NEOCLOUD_MIG_"))
        .collect();
    assert_eq!(mig_vars.len(), 1, "{mig_out}");
    assert!(
        mig_vars[0].starts_with(&format!("NEOCLOUD_MIG_{g}_{start}=")),
        "the MIG device of its slot: {mig_out}"
    );
    assert!(
        !mig_out.lines().any(|l| l.starts_with("CUDA_MPS")),
        "{mig_out}"
    );
    for id in [&share_id, &mig_id] {
        plane.cli(&["instances", "terminate", id]);
    }
    for id in [&share_id, &mig_id] {
        plane.wait_state(id, &["stopping"], "terminated", 60);
    }

    // Preemption: on-demand work holds half of one node, a spot container the whole other
    // one; more on-demand work can only have the spot container's node.
    cli(&plane.addr, &plane.op, &["tenants", "create", "lab"]);
    let lab = |gpus: &str| {
        cli(
            &plane.addr,
            &plane.op,
            &[
                "instances",
                "launch",
                "--gpu-model",
                "H100-SXM-80GB",
                "--gpus",
                gpus,
                "--tenant",
                "lab",
            ],
        )
    };
    assert_eq!(lab("4")["state"], "running");
    let spot = plane.cli(&[
        "instances",
        "launch",
        "--gpu-model",
        "H100-SXM-80GB",
        "--gpus",
        "8",
        "--class",
        "spot",
        "--image",
        TEST_IMAGE,
        "--",
        "sh",
        "-c",
        "trap 'echo got SIGTERM; exit 0' TERM; \
         while true; do [ -s $NEOCLOUD_NOTICE_FILE ] && echo \"notice: $(cat $NEOCLOUD_NOTICE_FILE)\" && break; sleep 0.2; done; \
         while true; do sleep 0.2; done",
    ]);
    let spot_id = spot["id"].as_str().unwrap().to_string();
    plane.wait_state(&spot_id, &["provisioning"], "running", 60);
    let od = lab("8");
    assert_eq!(od["state"], "pending", "{od}");
    let noticed = plane.cli(&["instances", "show", &spot_id]);
    assert_eq!(noticed["state"], "preempting", "{noticed}");
    let deadline = noticed["preempt_at"].as_str().unwrap().to_string();
    wait_for(20, "the workload to read its notice", || {
        plane.logs(&spot_id).contains("notice: ").then_some(())
    });
    let ended = plane.wait_state(&spot_id, &["preempting", "stopping"], "preempted", 60);
    assert_eq!(
        ended["ended_at"].as_str(),
        Some(deadline.as_str()),
        "{ended}"
    );
    let out = plane.logs(&spot_id);
    assert!(out.contains("got SIGTERM"), "{out}");
    let od_id = od["id"].as_str().unwrap();
    wait_for(20, "the on-demand instance to start", || {
        (cli(&plane.addr, &plane.op, &["instances", "show", od_id])["state"] == "running")
            .then_some(())
    });
}
