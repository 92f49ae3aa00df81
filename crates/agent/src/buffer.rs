//! The bounded buffer of health events not yet acknowledged by the control plane, and their
//! sequence numbers.

use std::collections::VecDeque;

use neocloud_types::{AgentEvent, AgentEventKind, Timestamp};

/// Events waiting for the control plane's acknowledgement, oldest first, numbered with
/// strictly increasing sequence numbers. When full, the oldest event is dropped.
#[derive(Debug)]
pub struct EventBuffer {
    events: VecDeque<AgentEvent>,
    capacity: usize,
    next_seq: u64,
    dropped: u64,
}

impl EventBuffer {
    /// An empty buffer holding at most `capacity` events (at least one); numbering starts at 1.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        EventBuffer {
            events: VecDeque::new(),
            capacity,
            next_seq: 1,
            dropped: 0,
        }
    }

    /// Queues an event under the next sequence number. Returns how many events were dropped
    /// to make room (0 or 1).
    pub fn push(&mut self, gpu_uuid: Option<String>, kind: AgentEventKind, at: Timestamp) -> u64 {
        let mut dropped = 0;
        while self.events.len() >= self.capacity {
            self.events.pop_front();
            dropped += 1;
        }
        self.dropped += dropped;
        self.events.push_back(AgentEvent {
            seq: self.next_seq,
            at,
            gpu_uuid,
            kind,
        });
        self.next_seq += 1;
        dropped
    }

    /// The oldest `max` events, to send.
    pub fn batch(&self, max: usize) -> Vec<AgentEvent> {
        self.events.iter().take(max).cloned().collect()
    }

    /// Drops every event numbered `acked_seq` or lower; returns how many.
    pub fn ack(&mut self, acked_seq: u64) -> usize {
        let before = self.events.len();
        while self.events.front().is_some_and(|e| e.seq <= acked_seq) {
            self.events.pop_front();
        }
        before - self.events.len()
    }

    /// Aligns numbering with the control plane after a registration that reported
    /// `last_seq`, the highest sequence number it has stored.
    ///
    /// When `last_seq` lies within what this buffer numbered (an acknowledgement was lost),
    /// the events it covers are dropped and numbering goes on. Otherwise (the agent restarted,
    /// or the control plane forgot or replaced the node) the waiting events are numbered
    /// again from `last_seq + 1`, and so are later ones.
    pub fn on_register(&mut self, last_seq: u64) {
        let first = self.events.front().map_or(self.next_seq, |e| e.seq);
        if first.saturating_sub(1) <= last_seq && last_seq < self.next_seq {
            self.ack(last_seq);
            return;
        }
        self.next_seq = last_seq + 1;
        for e in &mut self.events {
            e.seq = self.next_seq;
            self.next_seq += 1;
        }
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether no event is waiting.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The sequence number the next event will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Events dropped so far because the buffer was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xid(code: u32) -> AgentEventKind {
        AgentEventKind::Xid { code, detail: None }
    }

    fn seqs(b: &EventBuffer) -> Vec<u64> {
        b.batch(usize::MAX).iter().map(|e| e.seq).collect()
    }

    #[test]
    fn bounded_drops_oldest() {
        let mut b = EventBuffer::new(3);
        for code in 0..5 {
            let dropped = b.push(None, xid(code), Timestamp::now());
            assert_eq!(dropped, u64::from(code >= 3));
        }
        assert_eq!(seqs(&b), [3, 4, 5]);
        assert_eq!(b.dropped(), 2);
        assert!(matches!(
            b.batch(1)[0].kind,
            AgentEventKind::Xid { code: 2, .. }
        ));
    }

    #[test]
    fn ack_removes_up_to_acked_seq() {
        let mut b = EventBuffer::new(10);
        for code in 0..5 {
            b.push(None, xid(code), Timestamp::now());
        }
        assert_eq!(b.batch(2).len(), 2);
        assert_eq!(b.ack(0), 0);
        assert_eq!(b.ack(3), 3);
        assert_eq!(seqs(&b), [4, 5]);
        assert_eq!(b.ack(3), 0);
        assert_eq!(b.ack(99), 2);
        assert!(b.is_empty());
        assert_eq!(b.next_seq(), 6);
    }

    #[test]
    fn numbering_continues_from_last_seq() {
        // Fresh agent, control plane already stored 41 events of this node.
        let mut b = EventBuffer::new(10);
        b.push(None, xid(1), Timestamp::now());
        b.on_register(41);
        assert_eq!(seqs(&b), [42]);
        b.push(None, xid(2), Timestamp::now());
        assert_eq!(seqs(&b), [42, 43]);

        // An acknowledgement was lost: the control plane has 42 already.
        b.on_register(42);
        assert_eq!(seqs(&b), [43]);
        assert_eq!(b.next_seq(), 44);

        // The node was replaced: numbering starts over.
        b.on_register(0);
        assert_eq!(seqs(&b), [1]);
        assert_eq!(b.next_seq(), 2);

        // Nothing waiting and nothing new: keep numbering.
        let mut empty = EventBuffer::new(10);
        empty.on_register(7);
        assert_eq!(empty.next_seq(), 8);
        empty.on_register(7);
        assert_eq!(empty.next_seq(), 8);
    }
}
