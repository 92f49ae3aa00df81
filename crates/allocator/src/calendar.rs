//! The capacity calendar: GPUs promised by contracts over time, per (site, model).
//!
//! Each (site, model) line is a step function kept as its breakpoints: the committed GPU
//! count from each breakpoint until the next, zero before the first. Breakpoints where the
//! count does not change are merged away, so a line has at most two per contract and a
//! query over a window reads only the breakpoints inside it. This is what a quote asks
//! ("do 512 H100s fit from March for three years? if not, from when? how many do?") and what
//! keeps the calendar from being oversold (invariant 2 in docs/architecture.md: the caller compares against
//! healthy capacity minus the spare buffer).
//!
//! Times are microseconds since the Unix epoch; windows are half-open `[start, end)`.

use std::collections::BTreeMap;
use std::ops::Bound::{Excluded, Unbounded};

use neocloud_types::{ContractId, SiteId};

/// One line of the calendar.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CapacityKey {
    /// Site.
    pub site: SiteId,
    /// GPU model.
    pub gpu_model: String,
}

impl CapacityKey {
    /// A key.
    pub fn new(site: SiteId, gpu_model: &str) -> Self {
        CapacityKey {
            site,
            gpu_model: gpu_model.to_string(),
        }
    }
}

/// One contract's promise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commitment {
    /// The line it is on.
    pub key: CapacityKey,
    /// First microsecond.
    pub start: i64,
    /// End, exclusive.
    pub end: i64,
    /// GPUs promised.
    pub gpus: i64,
}

/// Breakpoints of one line: committed GPUs from each time until the next breakpoint.
type Line = BTreeMap<i64, i64>;

/// Committed GPUs over time, per (site, model).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Calendar {
    lines: BTreeMap<CapacityKey, Line>,
    contracts: BTreeMap<ContractId, Commitment>,
}

fn level_at(line: &Line, t: i64) -> i64 {
    line.range(..=t).next_back().map_or(0, |(_, &v)| v)
}

/// Removes the breakpoint at `t` when it does not change the count.
fn merge_at(line: &mut Line, t: i64) {
    let Some(&v) = line.get(&t) else {
        return;
    };
    let before = line.range(..t).next_back().map_or(0, |(_, &v)| v);
    if v == before {
        line.remove(&t);
    }
}

fn add(line: &mut Line, start: i64, end: i64, gpus: i64) {
    let at_end = level_at(line, end);
    line.entry(end).or_insert(at_end);
    let at_start = level_at(line, start);
    line.entry(start).or_insert(at_start);
    for (_, v) in line.range_mut(start..end) {
        *v += gpus;
    }
    // Only the two ends can have become redundant: inside, every step moved by the same.
    merge_at(line, end);
    merge_at(line, start);
}

impl Calendar {
    /// An empty calendar.
    pub fn new() -> Self {
        Calendar::default()
    }

    /// Records that `contract` promises `gpus` GPUs on `key` during `[start, end)`,
    /// replacing what the contract promised before. Capacity is not checked here: ask
    /// [`Calendar::fits`] first.
    pub fn commit(
        &mut self,
        key: &CapacityKey,
        contract: ContractId,
        start: i64,
        end: i64,
        gpus: i64,
    ) -> Result<(), String> {
        if start >= end {
            return Err(format!(
                "contract {contract}: the window must end after it starts"
            ));
        }
        if gpus <= 0 {
            return Err(format!(
                "contract {contract}: a commitment is at least one GPU"
            ));
        }
        self.remove(contract);
        add(self.lines.entry(key.clone()).or_default(), start, end, gpus);
        self.contracts.insert(
            contract,
            Commitment {
                key: key.clone(),
                start,
                end,
                gpus,
            },
        );
        Ok(())
    }

    /// Removes a contract's promise; the commitment if it had one.
    pub fn remove(&mut self, contract: ContractId) -> Option<Commitment> {
        let c = self.contracts.remove(&contract)?;
        if let Some(line) = self.lines.get_mut(&c.key) {
            add(line, c.start, c.end, -c.gpus);
            if line.is_empty() {
                self.lines.remove(&c.key);
            }
        }
        Some(c)
    }

    /// A contract's promise.
    pub fn commitment(&self, contract: ContractId) -> Option<&Commitment> {
        self.contracts.get(&contract)
    }

    /// The most GPUs committed at any instant of `[start, end)` (0 for an empty window).
    pub fn committed_peak(&self, key: &CapacityKey, start: i64, end: i64) -> i64 {
        let Some(line) = self.lines.get(key) else {
            return 0;
        };
        if start >= end {
            return 0;
        }
        line.range((Excluded(start), Excluded(end)))
            .map(|(_, &v)| v)
            .fold(level_at(line, start), i64::max)
    }

    /// Whether `gpus` more GPUs fit under `capacity` during all of `[start, end)`.
    pub fn fits(&self, key: &CapacityKey, start: i64, end: i64, gpus: i64, capacity: i64) -> bool {
        self.committed_peak(key, start, end).saturating_add(gpus) <= capacity
    }

    /// The most GPUs a new contract could get during all of `[start, end)`.
    pub fn max_count(&self, key: &CapacityKey, start: i64, end: i64, capacity: i64) -> i64 {
        capacity
            .saturating_sub(self.committed_peak(key, start, end))
            .max(0)
    }

    /// The earliest start at or after `not_before` such that `gpus` more GPUs fit under
    /// `capacity` for `duration` microseconds; `None` if they never do.
    pub fn earliest_start(
        &self,
        key: &CapacityKey,
        not_before: i64,
        duration: i64,
        gpus: i64,
        capacity: i64,
    ) -> Option<i64> {
        let room = capacity.checked_sub(gpus)?;
        if room < 0 {
            return None;
        }
        let Some(line) = self.lines.get(key) else {
            return Some(not_before);
        };
        if duration <= 0 {
            return Some(not_before);
        }
        let mut t = not_before;
        loop {
            if level_at(line, t) > room {
                // Blocked now: the next breakpoint where the count drops to `room` or less.
                t = line
                    .range((Excluded(t), Unbounded))
                    .find(|(_, v)| **v <= room)
                    .map(|(&k, _)| k)?;
                continue;
            }
            let end = t.saturating_add(duration);
            match line
                .range((Excluded(t), Excluded(end)))
                .find(|(_, v)| **v > room)
            {
                None => return Some(t),
                Some((&k, _)) => t = k,
            }
        }
    }

    /// The committed count over `[from, to)`: the count at `from`, then every change.
    pub fn series(&self, key: &CapacityKey, from: i64, to: i64) -> Vec<(i64, i64)> {
        if from >= to {
            return Vec::new();
        }
        let Some(line) = self.lines.get(key) else {
            return vec![(from, 0)];
        };
        let mut out = vec![(from, level_at(line, from))];
        out.extend(
            line.range((Excluded(from), Excluded(to)))
                .map(|(&t, &v)| (t, v)),
        );
        out
    }

    /// Breakpoints in one line (for tests and metrics).
    pub fn breakpoints(&self, key: &CapacityKey) -> usize {
        self.lines.get(key).map_or(0, BTreeMap::len)
    }

    /// Recomputes every line from the contracts and compares (for property tests).
    pub fn check(&self) -> Result<(), String> {
        let mut fresh: BTreeMap<CapacityKey, Line> = BTreeMap::new();
        for c in self.contracts.values() {
            add(
                fresh.entry(c.key.clone()).or_default(),
                c.start,
                c.end,
                c.gpus,
            );
        }
        fresh.retain(|_, l| !l.is_empty());
        if fresh != self.lines {
            return Err("calendar lines differ from a rebuild".to_string());
        }
        for line in self.lines.values() {
            let mut prev = 0;
            for &v in line.values() {
                if v == prev || v < 0 {
                    return Err("a line has a redundant or negative step".to_string());
                }
                prev = v;
            }
            if prev != 0 {
                return Err("a line does not return to zero".to_string());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::{contract_id, site_id};
    use proptest::prelude::*;

    fn key() -> CapacityKey {
        CapacityKey::new(site_id(1), "H100-SXM-80GB")
    }

    #[test]
    fn peaks_fits_and_earliest_start() {
        let mut c = Calendar::new();
        let k = key();
        c.commit(&k, contract_id(1), 0, 100, 60).unwrap();
        c.commit(&k, contract_id(2), 50, 150, 30).unwrap();
        assert_eq!(c.committed_peak(&k, 0, 50), 60);
        assert_eq!(c.committed_peak(&k, 0, 51), 90);
        assert_eq!(c.committed_peak(&k, 100, 200), 30);
        assert_eq!(c.committed_peak(&k, 150, 200), 0);
        assert!(c.fits(&k, 0, 200, 10, 100));
        assert!(!c.fits(&k, 0, 200, 11, 100));
        assert_eq!(c.max_count(&k, 0, 200, 100), 10);
        assert_eq!(c.max_count(&k, 0, 200, 50), 0);
        // 50 GPUs for 60 µs under 100: blocked while 60 and 90 are committed; from 100 on 30.
        assert_eq!(c.earliest_start(&k, 0, 60, 50, 100), Some(100));
        assert_eq!(c.earliest_start(&k, 0, 60, 10, 100), Some(0));
        assert_eq!(c.earliest_start(&k, 0, 60, 40, 100), Some(100));
        assert_eq!(c.earliest_start(&k, 0, 10, 200, 100), None);
        assert_eq!(
            c.series(&k, 0, 200),
            vec![(0, 60), (50, 90), (100, 30), (150, 0)]
        );
        c.check().unwrap();
        c.remove(contract_id(1)).unwrap();
        assert_eq!(c.series(&k, 0, 200), vec![(0, 0), (50, 30), (150, 0)]);
        c.remove(contract_id(2)).unwrap();
        assert_eq!(c.breakpoints(&k), 0);
        c.check().unwrap();
    }

    #[test]
    fn commit_replaces_and_rejects_empty_windows() {
        let mut c = Calendar::new();
        let k = key();
        c.commit(&k, contract_id(1), 0, 10, 5).unwrap();
        c.commit(&k, contract_id(1), 5, 10, 7).unwrap();
        assert_eq!(c.committed_peak(&k, 0, 5), 0);
        assert_eq!(c.committed_peak(&k, 0, 10), 7);
        assert!(c.commit(&k, contract_id(2), 10, 10, 1).is_err());
        assert!(c.commit(&k, contract_id(2), 0, 10, 0).is_err());
        c.check().unwrap();
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn calendar_matches_a_naive_array(
            ops in proptest::collection::vec((0u64..6, 0i64..40, 1i64..20, 1i64..9), 1..40),
            q in (0i64..50, 1i64..30, 0i64..12, 0i64..40),
        ) {
            let k = key();
            let mut c = Calendar::new();
            let mut naive: BTreeMap<u64, (i64, i64, i64)> = BTreeMap::new();
            for (id, start, len, gpus) in ops {
                if gpus % 4 == 0 {
                    c.remove(contract_id(id));
                    naive.remove(&id);
                } else {
                    c.commit(&k, contract_id(id), start, start + len, gpus).unwrap();
                    naive.insert(id, (start, start + len, gpus));
                }
                c.check().unwrap();
            }
            let at = |t: i64| naive.values().filter(|(s, e, _)| *s <= t && t < *e).map(|v| v.2).sum::<i64>();
            let (start, len, gpus, cap) = q;
            let peak = (start..start + len).map(at).max().unwrap_or(0);
            prop_assert_eq!(c.committed_peak(&k, start, start + len), peak);
            prop_assert_eq!(c.fits(&k, start, start + len, gpus, cap), peak + gpus <= cap);
            let naive_earliest = (start..200).find(|&t| (t..t + len).all(|u| at(u) + gpus <= cap));
            let got = c.earliest_start(&k, start, len, gpus, cap);
            if gpus > cap {
                prop_assert_eq!(got, None);
            } else {
                prop_assert_eq!(got, naive_earliest);
            }
        }
    }
}
