//! The daemon: registration, the heartbeat loop, event buffering, burn-in checks, injected
//! faults and shutdown, driven by one task.

use std::collections::HashSet;
use std::future::Future;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use neocloud_types::{
    AgentEventKind, AgentRegister, BurnInRequest, GpuInventory, Heartbeat, HeartbeatAck, Leaving,
    LeavingReason, NodeState, Timestamp,
};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::backend::{BurnInOutcome, GpuBackend};
use crate::backoff::Backoff;
use crate::buffer::EventBuffer;
use crate::client::{CallError, ControlPlane};
use crate::delivery::{self, Delivery};
use crate::fault::{Fault, FaultSpec};
use crate::nvml::NvmlBackend;
use crate::sim::SimBackend;
use crate::{AgentArgs, BackendKind, SimBurnIn, host};

/// Most events sent in one heartbeat.
const MAX_EVENTS_PER_BEAT: usize = 1000;
/// How often the fault file and the backend's events are looked at.
const HOUSEKEEPING: Duration = Duration::from_millis(500);
/// Longest wait for the last heartbeat at shutdown.
const FINAL_BEAT: Duration = Duration::from_secs(5);
/// How soon a heartbeat follows a workload's change of phase (changes close together share it).
const EARLY_BEAT: Duration = Duration::from_millis(200);
/// Most output of a burn-in command kept, bytes.
const OUTPUT_TAIL: usize = 4096;

type SharedBackend = Arc<Mutex<Box<dyn GpuBackend>>>;

/// Runs `f` on the backend in a blocking thread.
async fn with_backend<R, F>(backend: &SharedBackend, f: F) -> Result<R>
where
    F: FnOnce(&mut dyn GpuBackend) -> R + Send + 'static,
    R: Send + 'static,
{
    let backend = backend.clone();
    tokio::task::spawn_blocking(move || {
        let mut guard = backend.lock().unwrap_or_else(PoisonError::into_inner);
        f(guard.as_mut())
    })
    .await
    .map_err(|e| anyhow!("GPU backend call failed: {e}"))
}

/// How burn-in checks are run.
#[derive(Clone)]
enum BurnInPlan {
    Sim { secs: u64 },
    Command { cmd: String, timeout: Duration },
    Builtin { timeout: Duration },
}

pub(crate) struct Daemon {
    cp: ControlPlane,
    backend: SharedBackend,
    inventory: Vec<GpuInventory>,
    register_body: AgentRegister,
    original_key: String,
    key: String,
    key_fallback_used: bool,
    registered: bool,
    state: Option<NodeState>,
    interval: Duration,
    backoff: Backoff,
    next_call: Instant,
    buffer: EventBuffer,
    silent_until: Option<Instant>,
    scheduled: Vec<(Instant, FaultSpec)>,
    fault_file: Option<PathBuf>,
    gpu_count: u32,
    burn_in_plan: BurnInPlan,
    burn_ins: HashSet<String>,
    burn_in_tasks: JoinSet<()>,
    burn_in_tx: mpsc::UnboundedSender<(String, BurnInOutcome)>,
    burn_in_rx: Option<mpsc::UnboundedReceiver<(String, BurnInOutcome)>>,
    delivery: Delivery,
    /// Seconds the agent expects to be away when stopped (`--back-within-secs`).
    back_within_secs: u32,
    /// The key the long poll calls with (`None` until registered).
    key_tx: tokio::sync::watch::Sender<Option<String>>,
    /// Sends GPU telemetry as compact rows (`gpu_rows`); off after a control plane too old
    /// to know them refused one.
    compact: bool,
}

impl Daemon {
    /// Checks the arguments, starts the backend and takes the inventory.
    pub(crate) async fn start(args: AgentArgs) -> Result<Self> {
        let hostname = match args.hostname.clone() {
            Some(h) => h,
            None => {
                host::hostname().context("cannot find this machine's host name; pass --hostname")?
            }
        };
        let sim = args.backend == BackendKind::Sim;
        if !sim && (!args.sim_faults.is_empty() || args.sim_fault_file.is_some()) {
            anyhow::bail!("--sim-fault and --sim-fault-file need --backend sim");
        }
        if sim && args.burn_in_cmd.is_some() {
            tracing::warn!("--burn-in-cmd is not used with --backend sim");
        }
        for spec in &args.sim_faults {
            spec.check_gpu(args.sim_gpus).map_err(|e| anyhow!(e))?;
        }
        let backend: Box<dyn GpuBackend> = match args.backend {
            BackendKind::Nvml => Box::new(NvmlBackend::new()?),
            BackendKind::Sim => Box::new(SimBackend::new(
                &hostname,
                args.sim_gpus,
                &args.sim_model,
                args.sim_burn_in == SimBurnIn::Pass,
            )),
        };
        let backend: SharedBackend = Arc::new(Mutex::new(backend));
        let (inventory, driver_version, name) = with_backend(&backend, |b| {
            b.inventory().map(|inv| (inv, b.driver_version(), b.name()))
        })
        .await??;
        let gpu_count = u32::try_from(inventory.len()).unwrap_or(u32::MAX);
        let delivery_config = delivery::Config::from_args(&args, &hostname, inventory.clone())?;
        let register_body = AgentRegister {
            hostname: hostname.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            backend: name.to_string(),
            driver_version,
            cpu_cores: args.cpu_cores.unwrap_or_else(host::cpu_cores),
            ram_gib: args.ram_gib.unwrap_or_else(host::ram_gib),
            gpus: inventory.clone(),
        };
        tracing::info!(
            hostname = %hostname,
            backend = name,
            gpus = inventory.len(),
            server = %args.server,
            "agent starting"
        );
        let burn_in_timeout = Duration::from_secs(args.burn_in_timeout_secs);
        let burn_in_plan = match (&args.burn_in_cmd, sim) {
            (_, true) => BurnInPlan::Sim {
                secs: args.sim_burn_in_secs,
            },
            (Some(cmd), false) => BurnInPlan::Command {
                cmd: cmd.clone(),
                timeout: burn_in_timeout,
            },
            (None, false) => BurnInPlan::Builtin {
                timeout: burn_in_timeout,
            },
        };
        let now = Instant::now();
        let (burn_in_tx, burn_in_rx) = mpsc::unbounded_channel();
        let key = args.key.expose().to_string();
        Ok(Daemon {
            cp: ControlPlane::new(&args.server)?.starting_at(&hostname),
            backend: backend.clone(),
            inventory,
            compact: true,
            register_body,
            original_key: key.clone(),
            key,
            key_fallback_used: false,
            registered: false,
            state: None,
            interval: Duration::from_secs(10),
            backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(60)),
            next_call: now,
            buffer: EventBuffer::new(args.max_buffered_events),
            silent_until: None,
            scheduled: args
                .sim_faults
                .into_iter()
                .map(|spec| (now + spec.delay.unwrap_or_default(), spec))
                .collect(),
            fault_file: args.sim_fault_file,
            gpu_count,
            burn_in_plan,
            burn_ins: HashSet::new(),
            burn_in_tasks: JoinSet::new(),
            burn_in_tx,
            burn_in_rx: Some(burn_in_rx),
            delivery: Delivery::start(delivery_config, backend),
            back_within_secs: args.back_within_secs,
            key_tx: tokio::sync::watch::channel(None).0,
        })
    }

    /// The loop: until `shutdown`, housekeeping every 500 ms and a call to the control plane
    /// (registration or heartbeat) whenever one is due.
    pub(crate) async fn run(mut self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        tokio::pin!(shutdown);
        let mut burn_in_rx = self.burn_in_rx.take().context("daemon already ran")?;
        let mut tick = tokio::time::interval(HOUSEKEEPING);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let changed = self.delivery.changed();
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                _ = tick.tick() => self.housekeep().await,
                // A workload changed phase: tell the control plane soon, not a whole
                // interval later (never while heartbeats are failing and backing off).
                () = changed.notified() => self.beat_soon(),
                Some((id, outcome)) = burn_in_rx.recv() => self.burn_in_done(id, outcome),
                () = tokio::time::sleep_until(self.next_call) => tokio::select! {
                    () = &mut shutdown => break,
                    () = self.step() => {}
                },
            }
        }
        while let Ok((id, outcome)) = burn_in_rx.try_recv() {
            self.burn_in_done(id, outcome);
        }
        self.stop().await;
        Ok(())
    }

    async fn stop(&mut self) {
        tracing::info!("stopping");
        self.burn_in_tasks.abort_all();
        self.collect_events().await;
        let silent = self.silent_until.is_some_and(|t| t > Instant::now());
        // The last heartbeat says the agent is leaving on purpose and when it expects to be
        // back: its node is not marked unreachable meanwhile, and what runs there stays.
        let leaving = Leaving {
            reason: LeavingReason::Restart,
            back_within_secs: self.back_within_secs,
        };
        if self.registered
            && !silent
            && tokio::time::timeout(FINAL_BEAT, self.heartbeat_with(Some(leaving)))
                .await
                .is_err()
        {
            tracing::warn!("the last heartbeat got no answer within 5 s");
        }
        if self.buffer.is_empty() {
            tracing::info!("agent stopped");
        } else {
            tracing::warn!(
                undelivered = self.buffer.len(),
                "agent stopped with events not delivered"
            );
        }
    }

    /// Reads the fault file, applies faults that are due, and moves the backend's events
    /// into the buffer.
    async fn housekeep(&mut self) {
        if let Some(path) = self.fault_file.clone() {
            self.read_fault_file(&path).await;
        }
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.scheduled)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        self.scheduled = later;
        for (_, spec) in due {
            self.apply_fault(spec).await;
        }
        self.collect_events().await;
    }

    async fn read_fault_file(&mut self, path: &PathBuf) {
        let text = match tokio::fs::read_to_string(path).await {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the fault file");
                return;
            }
        };
        if let Err(e) = tokio::fs::remove_file(path).await {
            tracing::warn!(path = %path.display(), error = %e, "cannot delete the fault file");
        }
        let now = Instant::now();
        for line in text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            match line
                .parse::<FaultSpec>()
                .and_then(|s| s.check_gpu(self.gpu_count).map(|()| s))
            {
                Ok(spec) => self
                    .scheduled
                    .push((now + spec.delay.unwrap_or_default(), spec)),
                Err(e) => tracing::warn!(path = %path.display(), "ignoring fault: {e}"),
            }
        }
    }

    async fn apply_fault(&mut self, spec: FaultSpec) {
        if let Fault::Miss { secs } = spec.fault {
            tracing::warn!(fault = %spec, "fault injected: no heartbeats for {secs} s");
            self.silent_until = Some(Instant::now() + Duration::from_secs(secs));
            return;
        }
        let fault = spec.fault.clone();
        match with_backend(&self.backend, move |b| b.inject(&fault))
            .await
            .and_then(|r| r)
        {
            Ok(()) => tracing::warn!(fault = %spec, "fault injected"),
            Err(e) => tracing::warn!(fault = %spec, "cannot inject fault: {e:#}"),
        }
        self.collect_events().await;
    }

    async fn collect_events(&mut self) {
        let events = with_backend(&self.backend, |b| b.take_events())
            .await
            .unwrap_or_default();
        // Health evidence (an XID, a flag turning on) goes out at once, not a whole interval
        // later: a failed node in a gang is replaced that much sooner.
        if !events.is_empty() {
            self.beat_soon();
        }
        for (gpu_uuid, kind, at) in events {
            self.queue(gpu_uuid, kind, at);
        }
    }

    /// Brings the next heartbeat forward to [`EARLY_BEAT`] from now: something the control
    /// plane should hear of soon happened (never while heartbeats are failing and backing
    /// off, nor before registration).
    fn beat_soon(&mut self) {
        let soon = Instant::now() + EARLY_BEAT;
        if self.registered && self.backoff.attempts() == 0 && soon < self.next_call {
            self.next_call = soon;
        }
    }

    fn queue(&mut self, gpu_uuid: Option<String>, kind: AgentEventKind, at: Timestamp) {
        if self.buffer.push(gpu_uuid, kind, at) > 0 {
            tracing::warn!(
                capacity = self.buffer.len(),
                dropped_total = self.buffer.dropped(),
                "event buffer full; dropped the oldest event"
            );
        }
    }

    /// One call to the control plane: a registration or a heartbeat.
    async fn step(&mut self) {
        if let Some(until) = self.silent_until {
            if Instant::now() < until {
                self.next_call = until;
                return;
            }
            self.silent_until = None;
            tracing::info!("miss fault over; heartbeats resume");
        }
        if self.registered {
            self.heartbeat().await;
        } else {
            self.register().await;
        }
    }

    async fn register(&mut self) {
        let result = self.cp.register(&self.key, &self.register_body).await;
        let now = Instant::now();
        match result {
            Ok(reg) => {
                if let Some(key) = reg.node_key {
                    tracing::info!("received a key bound to this node; using it from now on");
                    self.key = key;
                }
                self.key_fallback_used = false;
                self.registered = true;
                self.interval = interval(reg.heartbeat_interval_secs);
                self.buffer.on_register(reg.last_seq);
                tracing::info!(
                    node = %reg.node,
                    node_id = %reg.node_id,
                    state = %reg.state,
                    heartbeat_interval_secs = reg.heartbeat_interval_secs,
                    last_seq = reg.last_seq,
                    "registered with the control plane"
                );
                self.state = Some(reg.state);
                self.next_call = now;
                self.key_tx.send_replace(Some(self.key.clone()));
                self.delivery
                    .start_polling(self.cp.clone(), self.key_tx.subscribe());
                if let Some(req) = reg.burn_in {
                    self.start_burn_in(req);
                }
            }
            Err(e)
                if e.status() == Some(401)
                    && self.key != self.original_key
                    && !self.key_fallback_used =>
            {
                tracing::warn!(error = %e, "the node key was refused; registering with --key");
                self.key = self.original_key.clone();
                self.key_fallback_used = true;
                self.next_call = now;
            }
            Err(e) => {
                let delay = match e.status() {
                    Some(s) if (400..500).contains(&s) && ![401, 408, 429].contains(&s) => {
                        self.backoff.cap()
                    }
                    _ => self.backoff.next_delay(),
                };
                tracing::warn!(error = %e, retry_in = ?delay, "registration failed");
                self.next_call = now + delay;
            }
        }
    }

    async fn heartbeat(&mut self) {
        self.heartbeat_with(None).await;
    }

    /// A heartbeat; `leaving` in the last one before the agent stops.
    async fn heartbeat_with(&mut self, leaving: Option<Leaving>) {
        self.collect_events().await;
        let gpus = match with_backend(&self.backend, |b| b.sample())
            .await
            .and_then(|r| r)
        {
            Ok(gpus) => gpus,
            Err(e) => {
                tracing::warn!("cannot read GPU telemetry: {e:#}");
                Vec::new()
            }
        };
        let events = self.buffer.batch(MAX_EVENTS_PER_BEAT);
        let sent = events.len();
        let last_sent = events.last().map(|e| e.seq);
        let mut beat = self.delivery.beat();
        let mut body = Heartbeat {
            generation: beat.generation,
            workloads: std::mem::take(&mut beat.workloads),
            sent_at: Timestamp::now(),
            gpus,
            gpu_rows: Vec::new(),
            events,
            leaving,
        };
        if self.compact {
            body.compact(&self.inventory);
        }
        match self.cp.heartbeat(&self.key, &body).await {
            Ok(mut ack) => {
                self.delivery.acked(beat, ack.desired.take());
                self.on_ack(ack, sent);
            }
            Err(e) => self.on_heartbeat_error(&e, last_sent),
        }
    }

    fn on_ack(&mut self, ack: HeartbeatAck, sent: usize) {
        let delivered = self.buffer.ack(ack.acked_seq);
        if self.backoff.attempts() > 0 {
            tracing::info!(
                delivered,
                waiting = self.buffer.len(),
                "heartbeats accepted again"
            );
        } else if delivered > 0 {
            tracing::debug!(delivered, "events acknowledged");
        }
        self.backoff.reset();
        if self.state != Some(ack.state) {
            let from = self.state.map_or("unknown", NodeState::as_str);
            tracing::info!(from, to = %ack.state, "node state changed");
            self.state = Some(ack.state);
        }
        let interval = interval(ack.heartbeat_interval_secs);
        if interval != self.interval {
            tracing::info!(
                secs = ack.heartbeat_interval_secs,
                "heartbeat interval changed"
            );
            self.interval = interval;
        }
        if let Some(req) = ack.burn_in {
            self.start_burn_in(req);
        }
        // More waiting than one beat carries: send the rest right away.
        let more = sent == MAX_EVENTS_PER_BEAT && delivered > 0 && !self.buffer.is_empty();
        self.next_call = Instant::now() + if more { Duration::ZERO } else { self.interval };
    }

    fn on_heartbeat_error(&mut self, e: &CallError, last_sent: Option<u64>) {
        let delay = self.backoff.next_delay();
        self.next_call = Instant::now() + delay;
        match e {
            CallError::Status { status: 401, .. } => {
                tracing::warn!(error = %e, "heartbeat key refused; registering again");
            }
            CallError::Status {
                status: 404 | 409, ..
            } => {
                tracing::warn!(error = %e, "node unknown or replaced; registering again");
            }
            // A control plane older than the compact telemetry: the full form from now on.
            CallError::Status {
                status: 400,
                detail,
            } if self.compact && detail.contains("gpu_rows") => {
                tracing::warn!(error = %e, "the control plane does not take compact telemetry; sending the full form");
                self.compact = false;
                self.next_call = Instant::now();
                return;
            }
            // The control plane refuses events it finds invalid; sending them again would
            // block every later heartbeat, so they are dropped.
            CallError::Status {
                status: 400 | 422,
                detail,
            } if detail.starts_with("events[") => {
                let dropped = self.buffer.ack(last_sent.unwrap_or(0));
                tracing::error!(error = %e, dropped, "the control plane refused events; dropped");
                return;
            }
            _ => {
                let waiting = self.buffer.len();
                tracing::warn!(error = %e, waiting, retry_in = ?delay, "heartbeat failed");
                return;
            }
        }
        self.registered = false;
    }

    fn start_burn_in(&mut self, req: BurnInRequest) {
        if !self.burn_ins.insert(req.id.clone()) {
            return;
        }
        tracing::info!(id = %req.id, "burn-in requested; running it");
        let (plan, backend, inventory, tx) = (
            self.burn_in_plan.clone(),
            self.backend.clone(),
            self.inventory.clone(),
            self.burn_in_tx.clone(),
        );
        self.burn_in_tasks.spawn(async move {
            let outcome = run_burn_in(plan, &backend, inventory).await;
            // The daemon may be stopping; then the result is lost with it.
            let _ = tx.send((req.id, outcome));
        });
    }

    fn burn_in_done(&mut self, id: String, outcome: BurnInOutcome) {
        tracing::info!(id = %id, passed = outcome.passed, "burn-in finished");
        let BurnInOutcome { passed, output } = outcome;
        // The control plane refuses control characters (terminal escapes) in text.
        let output: String = output
            .chars()
            .map(|c| {
                if c.is_control() && !matches!(c, '\n' | '\t' | '\r') {
                    '?'
                } else {
                    c
                }
            })
            .collect();
        let output = tail(&output, OUTPUT_TAIL);
        self.queue(
            None,
            AgentEventKind::BurnIn { id, passed, output },
            Timestamp::now(),
        );
        if self.registered && self.backoff.attempts() == 0 {
            self.next_call = Instant::now();
        }
    }
}

fn interval(secs: u32) -> Duration {
    Duration::from_secs(u64::from(secs.max(1)))
}

fn failed(output: String) -> BurnInOutcome {
    BurnInOutcome {
        passed: false,
        output,
    }
}

async fn run_burn_in(
    plan: BurnInPlan,
    backend: &SharedBackend,
    inventory: Vec<GpuInventory>,
) -> BurnInOutcome {
    let check = move |b: &mut dyn GpuBackend| b.burn_in_check(&inventory);
    match plan {
        BurnInPlan::Sim { secs } => {
            tokio::time::sleep(Duration::from_secs(secs)).await;
            with_backend(backend, check)
                .await
                .unwrap_or_else(|e| failed(format!("{e:#}")))
        }
        BurnInPlan::Builtin { timeout } => {
            match tokio::time::timeout(timeout, with_backend(backend, check)).await {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(e)) => failed(format!("{e:#}")),
                Err(_) => failed(format!(
                    "burn-in check timed out after {} s",
                    timeout.as_secs()
                )),
            }
        }
        BurnInPlan::Command { cmd, timeout } => run_command(&cmd, timeout).await,
    }
}

/// Runs a burn-in command with `sh -c`; passes on exit status 0.
async fn run_command(cmd: &str, timeout: Duration) -> BurnInOutcome {
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let child = match child {
        Ok(child) => child,
        Err(e) => return failed(format!("cannot start the burn-in command: {e}")),
    };
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Err(_) => failed(format!(
            "burn-in command timed out after {} s",
            timeout.as_secs()
        )),
        Ok(Err(e)) => failed(format!("burn-in command failed: {e}")),
        Ok(Ok(out)) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            if !out.status.success() {
                text.push_str(&format!("\n(burn-in command {})", out.status));
            }
            BurnInOutcome {
                passed: out.status.success(),
                output: tail(&text, OUTPUT_TAIL),
            }
        }
    }
}

/// The last `max` bytes of `text`, cut at a character boundary.
fn tail(text: &str, max: usize) -> String {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_end_at_a_char_boundary() {
        assert_eq!(tail("hello", 10), "hello");
        assert_eq!(tail("hello", 3), "llo");
        assert_eq!(tail("añb", 2), "b");
    }

    #[tokio::test]
    async fn burn_in_command_passes_fails_and_times_out() {
        let ok = run_command("echo fine; echo warn >&2", Duration::from_secs(10)).await;
        assert!(ok.passed);
        assert_eq!(ok.output, "fine\nwarn\n");
        let bad = run_command("echo broken; exit 3", Duration::from_secs(10)).await;
        assert!(!bad.passed && bad.output.starts_with("broken"), "{bad:?}");
        let slow = run_command("sleep 5", Duration::from_millis(200)).await;
        assert!(
            !slow.passed && slow.output.contains("timed out"),
            "{slow:?}"
        );
        let long = run_command("yes x | head -c 10000", Duration::from_secs(10)).await;
        assert_eq!(long.output.len(), OUTPUT_TAIL);
    }
}
