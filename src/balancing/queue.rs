//! Backpressure: with `max_inflight_per_backend` set and every backend full, requests
//! wait here for a free slot, bounded in number and in time; beyond either bound the
//! proxy answers 503 with `Retry-After` instead of piling work onto full backends.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::Notify;

/// The backpressure queue shared by a pool and its backends: counts waiting requests and wakes one
/// when a backend releases a slot.
#[derive(Default)]
pub struct QueueSignal {
    notify: Notify,
    waiting: AtomicUsize,
}

/// Why a request could not wait for a free backend; the proxy answers 503 with `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueRejection {
    /// The queue already holds `size` requests.
    Full,
    /// The request waited `timeout` without a slot freeing up.
    TimedOut,
}

impl QueueRejection {
    /// Label for the metrics and logs: `full` or `timeout`.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueRejection::Full => "full",
            QueueRejection::TimedOut => "timeout",
        }
    }
}

/// A place in the queue; leaving (drop) frees it.
pub struct Place<'a> {
    q: &'a QueueSignal,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.q.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

impl QueueSignal {
    /// Requests waiting for a free backend now (shown as `queue_length` in the admin API).
    pub fn len(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// Whether no request is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Called whenever a backend slot is released. Costs one atomic load when nobody waits.
    pub fn slot_released(&self) {
        if self.waiting.load(Ordering::Acquire) > 0 {
            self.notify.notify_one();
        }
    }

    /// Takes a place if fewer than `size` requests wait.
    pub fn enter(&self, size: usize) -> Result<Place<'_>, QueueRejection> {
        let mut cur = self.waiting.load(Ordering::Acquire);
        loop {
            if cur >= size {
                return Err(QueueRejection::Full);
            }
            match self
                .waiting
                .compare_exchange(cur, cur + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(Place { q: self }),
                Err(actual) => cur = actual,
            }
        }
    }

    /// Waits until a slot is released or `timeout` passes. Returns false on timeout.
    pub async fn wait(&self, _place: &Place<'_>, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.notify.notified())
            .await
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn flooding_the_queue_rejects_beyond_its_size() {
        let q = QueueSignal::default();
        let places: Vec<_> = (0..100).map(|_| q.enter(100).unwrap()).collect();
        assert_eq!(q.len(), 100);
        for _ in 0..1000 {
            assert_eq!(q.enter(100).err(), Some(QueueRejection::Full));
        }
        assert_eq!(q.len(), 100, "rejections do not leak places");
        drop(places);
        assert_eq!(q.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_time_out_or_wake_on_release() {
        let q = Arc::new(QueueSignal::default());
        let place = q.enter(10).unwrap();
        assert!(
            !q.wait(&place, Duration::from_secs(5)).await,
            "nobody released a slot"
        );
        let q2 = q.clone();
        let waker = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            q2.slot_released();
        });
        assert!(q.wait(&place, Duration::from_secs(5)).await);
        waker.await.unwrap();
    }
}
