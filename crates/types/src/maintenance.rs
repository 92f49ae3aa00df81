//! Planned maintenance: an operator takes nodes out of service for a window, with notice.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::string_enum;

string_enum!(
    /// Where a maintenance window stands.
    MaintenanceState {
        /// Announced: its nodes take no new work; running work has its notice.
        Scheduled = "scheduled",
        /// Begun: movable work was stopped, gangs moved off, the nodes are in maintenance.
        InProgress = "in_progress",
        /// Over: its nodes went to burn-in and return to service when it passes.
        Completed = "completed",
        /// Called off before it began: its nodes were returned to service.
        Cancelled = "cancelled",
    }
);

/// A planned maintenance window over some nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MaintenanceWindow {
    /// Window id.
    pub id: crate::MaintenanceId,
    /// Why, shown to tenants in their notices.
    pub reason: String,
    /// The block it was scheduled for (name), if it was given as a block.
    pub block: Option<String>,
    /// The nodes it takes out of service, by name.
    pub nodes: Vec<String>,
    /// When it begins: movable work is stopped and gangs are moved off by then.
    pub start_at: crate::Timestamp,
    /// When it ends: its nodes go to burn-in and return to service when it passes.
    pub end_at: crate::Timestamp,
    /// Where it stands.
    pub state: MaintenanceState,
    /// Instances that had work on its nodes when it was scheduled (they got a notice).
    pub notified_instances: u32,
    /// When it was scheduled.
    pub created_at: crate::Timestamp,
    /// When it last changed state.
    pub updated_at: crate::Timestamp,
}
