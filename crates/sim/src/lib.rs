//! The capacity planner behind `neocloud sim` (issue "Plan it").
