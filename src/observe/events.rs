//! Recent notable events (worker restarts, breaker trips, reloads, strategy switches,
//! alerts) for the dashboard and `/api/events`.
//!
//! A ring of at most [`MAX_EVENTS`]; the oldest event is dropped for a new one. Events
//! are rare (seconds apart at worst), so a mutex is fine.

use serde::Serialize;
use std::collections::VecDeque;
use std::sync::Mutex;

/// Events the ring keeps; older ones are dropped (still counted in [`Events::total`]).
pub const MAX_EVENTS: usize = 200;

/// One entry of the ring, serialized as is by `/api/events`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Event {
    /// Unix time, seconds.
    pub time: f64,
    /// `restart`, `crash_loop`, `breaker`, `reload`, `strategy`, `alert`.
    pub kind: &'static str,
    /// Human-readable description; also what was logged on the `event` target.
    pub message: String,
}

/// The ring of the newest [`MAX_EVENTS`] events; shared, so it locks internally.
#[derive(Default)]
pub struct Events {
    ring: Mutex<VecDeque<Event>>,
    /// Total events ever pushed (the ring keeps the newest).
    total: std::sync::atomic::AtomicU64,
}

/// Current Unix time in seconds with sub-second precision; 0.0 if the clock is before 1970.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Events {
    /// Appends an event stamped now, evicting the oldest when the ring is full. Only
    /// records it: `Observer::event` also logs and counts it.
    pub fn push(&self, kind: &'static str, message: impl Into<String>) {
        let ev = Event {
            time: unix_now(),
            kind,
            message: message.into(),
        };
        let mut r = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if r.len() == MAX_EVENTS {
            r.pop_front();
        }
        r.push_back(ev);
        self.total
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The newest `n` events, newest first.
    pub fn recent(&self, n: usize) -> Vec<Event> {
        let r = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        r.iter().rev().take(n).cloned().collect()
    }

    /// Events held now (at most [`MAX_EVENTS`]); 0 if the lock is poisoned.
    pub fn len(&self) -> usize {
        self.ring.lock().map(|r| r.len()).unwrap_or(0)
    }

    /// True when the ring holds no event.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Events pushed since start, including those the ring has dropped.
    pub fn total(&self) -> u64 {
        self.total.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_the_newest_events_up_to_its_cap() {
        let e = Events::default();
        for i in 0..(MAX_EVENTS + 50) {
            e.push("restart", format!("n{i}"));
        }
        assert_eq!(e.len(), MAX_EVENTS);
        assert_eq!(e.total(), (MAX_EVENTS + 50) as u64);
        let recent = e.recent(3);
        assert_eq!(recent[0].message, format!("n{}", MAX_EVENTS + 49));
        assert_eq!(recent[2].message, format!("n{}", MAX_EVENTS + 47));
        assert_eq!(e.recent(10_000).last().unwrap().message, "n50");
    }
}
