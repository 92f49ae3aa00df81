//! The queue of pending instances, indexed so that a pass over it reads only what can
//! change something.
//!
//! A pass ([`crate::Scheduler::serve_queue`]) walks the queue in its order (priority
//! descending, then arrival) and only places, never frees: once a need finds no room, the
//! requests behind it that ask for the same thing find none either and are passed over,
//! unless their deadline passed (they are then failed). So a pass has to look only at the
//! first request of each need, at the next one of a need whose request it just placed, and
//! at the requests whose deadline passed: [`Queue::first_of_each_need`],
//! [`Queue::next_of_need`] and [`Queue::due`] give them, and the pass takes them in queue
//! order. What it decides is what a walk over every request would decide, in the same
//! order.

use std::collections::{BTreeSet, HashMap};
use std::hash::BuildHasherDefault;
use std::ops::Bound;

use neocloud_allocator::Request;
use neocloud_types::Timestamp;

use crate::{NeedHasher, Place, Queued, same_request};

/// The requests of the queue that ask for one thing (ids aside), in queue order.
#[derive(Clone, Debug)]
struct NeedGroup {
    req: Request,
    models: Vec<String>,
    places: BTreeSet<Place>,
}

impl NeedGroup {
    fn holds(&self, q: &Queued) -> bool {
        same_request(&self.req, &q.req) && self.models == q.models
    }
}

/// A need of the queue during one pass: its [`crate::need_hash`] and its index among the
/// needs of that hash. Valid while the queue does not change (a pass changes it only at its
/// end).
pub(crate) type NeedId = (u64, usize);

/// Pending instances by place, by need and by deadline.
#[derive(Clone, Debug, Default)]
pub(crate) struct Queue {
    entries: BTreeSet<Queued>,
    needs: HashMap<u64, Vec<NeedGroup>, BuildHasherDefault<NeedHasher>>,
    /// (deadline, place) of every entry that has a deadline.
    deadlines: BTreeSet<(Timestamp, Place)>,
}

impl Queue {
    /// Adds an entry; one whose place is taken already is left out.
    pub(crate) fn insert(&mut self, q: Queued) {
        if self.entries.contains(&q.place) {
            return;
        }
        let groups = self.needs.entry(q.need).or_default();
        match groups.iter_mut().find(|g| g.holds(&q)) {
            Some(g) => {
                g.places.insert(q.place);
            }
            None => groups.push(NeedGroup {
                req: q.req.clone(),
                models: q.models.clone(),
                places: BTreeSet::from([q.place]),
            }),
        }
        if let Some(t) = q.wait_until {
            self.deadlines.insert((t, q.place));
        }
        self.entries.insert(q);
    }

    /// Removes the entry at `place`, if any.
    pub(crate) fn remove(&mut self, place: &Place) {
        let Some(q) = self.entries.take(place) else {
            return;
        };
        if let Some(groups) = self.needs.get_mut(&q.need) {
            if let Some(i) = groups.iter().position(|g| g.holds(&q)) {
                groups[i].places.remove(place);
                if groups[i].places.is_empty() {
                    groups.swap_remove(i);
                }
            }
            if groups.is_empty() {
                self.needs.remove(&q.need);
            }
        }
        if let Some(t) = q.wait_until {
            self.deadlines.remove(&(t, *place));
        }
    }

    /// Entries in queue order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Queued> {
        self.entries.iter()
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn get(&self, place: &Place) -> Option<&Queued> {
        self.entries.get(place)
    }

    /// The need of an entry of the queue.
    pub(crate) fn need_of(&self, q: &Queued) -> Option<NeedId> {
        let groups = self.needs.get(&q.need)?;
        let i = groups.iter().position(|g| g.holds(q))?;
        Some((q.need, i))
    }

    /// The first entry of each need.
    pub(crate) fn first_of_each_need(&self) -> impl Iterator<Item = Place> + '_ {
        self.needs
            .values()
            .flatten()
            .filter_map(|g| g.places.first().copied())
    }

    /// The entry of need `need` after `place`.
    pub(crate) fn next_of_need(&self, need: NeedId, place: &Place) -> Option<Place> {
        let g = self.needs.get(&need.0)?.get(need.1)?;
        g.places
            .range((Bound::Excluded(place), Bound::Unbounded))
            .next()
            .copied()
    }

    /// Entries whose deadline is `now` or earlier.
    pub(crate) fn due(&self, now: Timestamp) -> impl Iterator<Item = Place> + '_ {
        self.deadlines
            .iter()
            .take_while(move |(t, _)| *t <= now)
            .map(|(_, p)| *p)
    }
}

#[cfg(test)]
mod tests {
    use std::cmp::Reverse;

    use neocloud_types::{Class, InstanceId, Shape, TenantId};

    use super::*;

    fn entry(id: u128, prio: u8, gpus: u32, deadline: Option<i64>) -> Queued {
        let req = Request {
            id: InstanceId::from_u128(id),
            tenant: TenantId::from_u128(1),
            class: Class::OnDemand,
            gpu_model: "H100".into(),
            shape: Shape::Gpus { gpus },
            site: None,
            pool: None,
            cpu_milli: None,
            memory_mib: None,
        };
        Queued {
            place: (Reverse(prio), req.id),
            wait_until: deadline.map(Timestamp::from_micros),
            // Every need in one bucket: needs are told apart in full.
            need: 7,
            req,
            models: Vec::new(),
        }
    }

    #[test]
    fn the_queue_is_indexed_by_need_and_deadline_and_forgets_what_leaves() {
        let mut q = Queue::default();
        q.insert(entry(3, 1, 8, None));
        q.insert(entry(1, 1, 8, Some(50)));
        q.insert(entry(2, 1, 1, Some(20)));
        q.insert(entry(4, 2, 4, Some(10)));
        assert_eq!(q.len(), 4);
        let ids = |v: Vec<Place>| {
            v.into_iter()
                .map(|p| p.1.uuid().as_u128())
                .collect::<Vec<_>>()
        };
        // Queue order: priority descending, then id.
        assert_eq!(
            q.iter()
                .map(|e| e.place.1.uuid().as_u128())
                .collect::<Vec<_>>(),
            [4, 1, 2, 3]
        );
        let mut first: Vec<Place> = q.first_of_each_need().collect();
        first.sort();
        assert_eq!(ids(first), [4, 1, 2]);
        let one = q
            .get(&(Reverse(1), InstanceId::from_u128(1)))
            .cloned()
            .unwrap();
        let need = q.need_of(&one).unwrap();
        assert_eq!(
            q.next_of_need(need, &one.place)
                .map(|p| p.1.uuid().as_u128()),
            Some(3)
        );
        assert_eq!(ids(q.due(Timestamp::from_micros(20)).collect()), [4, 2]);
        q.remove(&one.place);
        q.remove(&(Reverse(1), InstanceId::from_u128(3)));
        q.remove(&(Reverse(1), InstanceId::from_u128(3)));
        assert_eq!(q.len(), 2);
        let mut first: Vec<Place> = q.first_of_each_need().collect();
        first.sort();
        assert_eq!(ids(first), [4, 2]);
        assert_eq!(ids(q.due(Timestamp::from_micros(100)).collect()), [4, 2]);
        assert_eq!(q.needs.values().map(Vec::len).sum::<usize>(), 2);
    }
}
