//! The vocabulary of placement: classes of service, fleet policy, shapes and gang levels.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::string_enum;

string_enum!(
    /// Class of an instance; decides who may take capacity from whom (DESIGN.md §3.3).
    Class {
        /// Runs in a contract's reserved pool. Highest priority.
        Reserved = "reserved",
        /// The operator's own lab.
        Internal = "internal",
        /// Pay-as-you-go customers.
        OnDemand = "on-demand",
        /// Cheapest, preemptible with notice. Lowest priority.
        Spot = "spot",
    }
);

string_enum!(
    /// Who wins between the operator's lab and on-demand customers when capacity is short.
    FleetPolicy {
        /// Internal work outranks on-demand.
        LabFirst = "lab-first",
        /// On-demand outranks internal work.
        CloudFirst = "cloud-first",
    }
);

impl Class {
    /// Priority under a fleet policy: larger wins. Reserved 3, spot 0; internal and
    /// on-demand are 2 and 1 in the order the policy says.
    pub fn priority(self, policy: FleetPolicy) -> u8 {
        match (self, policy) {
            (Class::Reserved, _) => 3,
            (Class::Internal, FleetPolicy::LabFirst)
            | (Class::OnDemand, FleetPolicy::CloudFirst) => 2,
            (Class::Internal, FleetPolicy::CloudFirst)
            | (Class::OnDemand, FleetPolicy::LabFirst) => 1,
            (Class::Spot, _) => 0,
        }
    }

    /// Whether an instance of this class may be preempted by one of `other` (a class only
    /// takes capacity from a lower class).
    pub fn can_preempt(self, other: Class, policy: FleetPolicy) -> bool {
        self.priority(policy) > other.priority(policy)
    }
}

string_enum!(
    /// The topology level a gang of whole nodes must stay inside.
    GangLevel {
        /// One NVLink domain (e.g. one GB200 NVL72 rack).
        NvlinkDomain = "nvlink_domain",
        /// One leaf group.
        LeafGroup = "leaf_group",
        /// One pod.
        Pod = "pod",
        /// Anywhere in the site.
        Site = "site",
    }
);

/// What an instance asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Shape {
    /// 1, 2, 4 or 8 GPUs inside one node, on an aligned group of GPU indexes.
    Gpus {
        /// Number of GPUs: 1, 2, 4 or 8.
        gpus: u32,
    },
    /// A gang of whole nodes inside one block of the given level.
    Nodes {
        /// Number of whole nodes (at least 1).
        count: u32,
        /// The block level the gang must fit in.
        level: GangLevel,
    },
}
