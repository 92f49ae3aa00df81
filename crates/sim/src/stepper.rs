//! The simulator driven one command at a time, for differential tests against `serve`.
//!
//! A [`Stepper`] is the engine of a scenario's variant with no demand of its own: the caller
//! launches requests, terminates them, signs and cancels contracts, fails and repairs
//! nodes, and moves simulated time, and reads back what the simulator decided — each
//! request's state and placement (by node name, as `serve`'s API shows it) and the usage it
//! metered. A test feeds the same commands to `serve` over HTTP and compares.

use std::collections::HashMap;

use neocloud_billing::UsageRecord;
use neocloud_scheduler::{Refused, SchedulerConfig};
use neocloud_types::{Class, GangLevel, InstanceId, MigProfile, NodeId, Shape};

use crate::demand::Job;
use crate::engine::{Engine, State, scheduler_config};
use crate::error::SimError;
use crate::scenario::{ContractSpec, Scenario, Variant};

/// Where a request stands in the simulator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobState {
    /// Waiting for capacity.
    Queued,
    /// Placed and running.
    Running,
    /// Running under a preemption notice.
    Preempting,
    /// Ran and was terminated.
    Done,
    /// Refused at once.
    Refused,
    /// Waited past its deadline and was never placed.
    Expired,
    /// Stopped by a preemption.
    Preempted,
    /// Ran, and a node failure ended it.
    Failed,
}

/// Where one request runs on one node: the node's name, its GPU indexes there and, for a
/// MIG instance, the first memory slice.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct NodePart {
    /// Node name, as in the fleet file.
    pub node: String,
    /// GPU indexes on that node.
    pub gpus: Vec<u32>,
    /// First memory slice of a MIG instance.
    pub mig_start: Option<u32>,
}

/// The engine of one variant, stepped by hand.
pub struct Stepper<'a> {
    e: Engine<'a>,
    names: Vec<String>,
    slot_of: HashMap<NodeId, usize>,
    jobs: Vec<InstanceId>,
}

impl<'a> Stepper<'a> {
    /// The variant's engine with its scheduler settings (and parts of GPUs on when
    /// `slices`), nothing launched and no contract signed, at the scenario's start.
    pub fn new(
        sc: &'a Scenario,
        v: &'a Variant,
        seed: u64,
        slices: bool,
    ) -> Result<Stepper<'a>, SimError> {
        let config = Self::config(sc, v, slices);
        let mut e = Engine::with(sc, v, seed, config, Vec::new())?;
        // The spot price the engine meters by: the floor, at the start.
        e.hourly();
        let names = sc
            .fleet
            .sites
            .iter()
            .flat_map(|s| s.nodes.iter().map(|n| n.name.clone()))
            .collect();
        let slot_of = e
            .fleet
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id, i))
            .collect();
        Ok(Stepper {
            e,
            names,
            slot_of,
            jobs: Vec::new(),
        })
    }

    /// The scheduler settings the variant runs under: `serve` started with these decides
    /// as the simulator does.
    pub fn config(sc: &Scenario, v: &Variant, slices: bool) -> SchedulerConfig {
        let mut config = scheduler_config(sc, v);
        config.sharing.slices = slices;
        config
    }

    /// Node names in the fleet file's order (the slots of [`Stepper::fail_node`]).
    pub fn node_names(&self) -> &[String] {
        &self.names
    }

    /// GPU models of the fleet, sorted (the indexes a [`Job`]'s `model` names).
    pub fn models(&self) -> &[String] {
        &self.e.fleet.models
    }

    /// GPUs per node of each node, in slot order.
    pub fn node_gpus(&self, slot: usize) -> u32 {
        self.e.fleet.nodes[slot].gpus
    }

    /// Site names in the fleet file's order.
    pub fn site_names(&self) -> Vec<String> {
        self.e.fleet.sites.iter().map(|s| s.name.clone()).collect()
    }

    /// Each (site index, model index) of the fleet with the slots of its nodes.
    pub fn pools(&self) -> Vec<((usize, usize), Vec<usize>)> {
        self.e
            .fleet
            .pools
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect()
    }

    /// Moves simulated time to `t` seconds after the start (never backwards).
    pub fn advance(&mut self, t: i64) {
        self.e.advance(t);
    }

    /// The scheduler's periodic pass at the current time.
    pub fn tick(&mut self) -> Result<(), SimError> {
        self.e.tick()
    }

    /// A request arrives now (its `arrival` should be the current time); returns its index.
    pub fn launch(&mut self, job: Job) -> Result<usize, SimError> {
        let j = self.e.add_job(job);
        self.jobs
            .push(neocloud_allocator::synthetic::instance_id(j as u64 + 1));
        self.e.arrival(j)?;
        Ok(j)
    }

    /// The tenant ends request `j`.
    pub fn terminate(&mut self, j: usize) -> Result<(), SimError> {
        self.e.finish(j)
    }

    /// Signs a contract now; its index, or why it does not fit.
    pub fn sign(&mut self, c: &ContractSpec) -> Result<usize, String> {
        self.e.sign(c)
    }

    /// Cancels contract `c` (refused once it has ended).
    pub fn cancel(&mut self, c: usize) -> Result<Result<(), Refused>, SimError> {
        self.e.cancel(c)
    }

    /// The node in `slot` fails now.
    pub fn fail_node(&mut self, slot: usize) -> Result<(), SimError> {
        self.e.fail_node(slot)
    }

    /// The node in `slot` is repaired and back in service now.
    pub fn repair(&mut self, slot: usize) -> Result<(), SimError> {
        self.e.repair(slot)
    }

    /// Where request `j` stands.
    pub fn state(&self, j: usize) -> JobState {
        match self.e.job_state(j) {
            State::New | State::Queued => JobState::Queued,
            State::Running => JobState::Running,
            State::Preempting => JobState::Preempting,
            State::Done => JobState::Done,
            State::Refused => JobState::Refused,
            State::Expired => JobState::Expired,
            State::Preempted => JobState::Preempted,
            State::Failed => JobState::Failed,
        }
    }

    /// Where request `j` runs now, sorted by node name; empty when it holds nothing.
    pub fn placement(&self, j: usize) -> Vec<NodePart> {
        let Some(id) = self.jobs.get(j) else {
            return Vec::new();
        };
        let mut parts: Vec<NodePart> = self
            .e
            .sched
            .live()
            .filter(|i| i.id == *id)
            .flat_map(|i| i.placement.iter())
            .map(|p| NodePart {
                node: self
                    .slot_of
                    .get(&p.node_id)
                    .map_or_else(String::new, |&s| self.names[s].clone()),
                gpus: p.gpus.to_vec(),
                mig_start: p.mig_start,
            })
            .collect();
        parts.sort();
        parts
    }

    /// The request a usage record bills, by index.
    pub fn job_of(&self, id: InstanceId) -> Option<usize> {
        self.jobs.iter().position(|j| *j == id)
    }

    /// Usage metered so far (the simulator closes no month within a short run).
    pub fn usage(&self) -> &[UsageRecord] {
        self.e.usage()
    }
}

/// Every gang level, for random streams.
pub const LEVELS: [GangLevel; 4] = [
    GangLevel::Site,
    GangLevel::Pod,
    GangLevel::LeafGroup,
    GangLevel::NvlinkDomain,
];

/// Every class of service, for random streams.
pub const CLASSES: [Class; 4] = [
    Class::OnDemand,
    Class::Spot,
    Class::Internal,
    Class::Reserved,
];

/// A random shape for differential tests, drawn with `below(n)` (a number under `n`):
/// whole GPUs (1, 2, 4 or 8), a gang of 1 to 5 nodes at any level, a share of a quarter,
/// a half or a whole GPU, or a MIG 1g.10gb instance.
pub fn random_shape(below: &mut dyn FnMut(u64) -> u64) -> Shape {
    let mut pick = |n: usize| usize::try_from(below(n as u64)).unwrap_or(0);
    match pick(10) {
        0..=3 => Shape::Gpus {
            gpus: [1, 2, 4, 8][pick(4)],
        },
        4..=6 => Shape::Nodes {
            count: 1 + u32::try_from(pick(5)).unwrap_or(0),
            level: LEVELS[pick(4)],
        },
        7..=8 => Shape::Share {
            milli: [250, 500, 1000][pick(3)],
        },
        _ => Shape::Mig {
            profile: MigProfile::P1g10gb,
        },
    }
}
