//! A timer kept for a connection's life and re-armed lazily, for the engine's waits.
//!
//! Every wait of the engine has a deadline: the next request head on a keep-alive
//! connection, a body chunk, a worker's response. A fresh timer per wait is one timer
//! registration per request and, with tokio, an eventfd write whenever the new timer
//! is due before the runtime's next wake-up (measured: 0.35 writes per request under
//! `ab`, a connection per request); Pingora's shared wheel avoids the write but its
//! registration costs ~1,000 instructions per request at keep-alive (callgrind).
//!
//! Deadlines of consecutive waits on one connection only move later (now + the same
//! timeout), so this keeps one tokio timer per connection and lets it run to whatever
//! deadline it was armed for: when it fires before the current wait's deadline, it is
//! re-armed for that deadline (once a timeout period at most), the way nginx's lazy
//! timers work. A wait whose deadline is earlier than the armed one (a header timeout
//! shorter than the idle one) brings the timer forward. A busy keep-alive connection
//! thus registers a timer about once a second instead of once a request.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Instant;
use tokio::time::Sleep;

/// The deadline passed before the wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

/// One connection's reusable timer (see the module doc). Not armed until a wait
/// actually has to wait.
#[derive(Debug, Default)]
pub struct Deadline {
    timer: Option<Pin<Box<Sleep>>>,
}

impl Deadline {
    /// Runs `work` until it completes, or fails with [`Elapsed`] once `deadline` has
    /// passed. The timer is touched only when `work` is not ready at once.
    pub async fn run<F: Future>(
        &mut self,
        deadline: Instant,
        work: F,
    ) -> Result<F::Output, Elapsed> {
        let mut work = std::pin::pin!(work);
        let due = tokio::time::Instant::from_std(deadline);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(v) = work.as_mut().poll(cx) {
                return Poll::Ready(Ok(v));
            }
            let timer = self
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
            if timer.deadline() > due {
                timer.as_mut().reset(due);
            }
            loop {
                match timer.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(()) if tokio::time::Instant::now() >= due => {
                        return Poll::Ready(Err(Elapsed))
                    }
                    // Armed for an earlier wait's deadline: on to this one's.
                    Poll::Ready(()) => timer.as_mut().reset(due),
                }
            }
        })
        .await
    }

    /// Gives the timer's memory back (an idle connection keeps little).
    pub fn release(&mut self) {
        self.timer = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn work_that_ends_in_time_is_returned() {
        let mut d = Deadline::default();
        let now = Instant::now();
        let r = d
            .run(now + Duration::from_secs(5), async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                7
            })
            .await;
        assert_eq!(r, Ok(7));
    }

    #[tokio::test(start_paused = true)]
    async fn ready_work_does_not_arm_the_timer() {
        let mut d = Deadline::default();
        let r = d.run(Instant::now(), async { 1 }).await;
        assert_eq!(r, Ok(1));
        assert!(d.timer.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn work_past_its_deadline_elapses() {
        let mut d = Deadline::default();
        let start = tokio::time::Instant::now();
        let r = d
            .run(
                start.into_std() + Duration::from_secs(2),
                std::future::pending::<()>(),
            )
            .await;
        assert_eq!(r, Err(Elapsed));
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_armed_for_an_earlier_wait_is_carried_on_to_the_later_deadline() {
        let mut d = Deadline::default();
        let start = tokio::time::Instant::now();
        let base = start.into_std();
        // The first wait arms the timer for +1 s and ends at once.
        let quick = d
            .run(base + Duration::from_secs(1), async {
                tokio::time::sleep(Duration::from_millis(100)).await;
            })
            .await;
        assert_eq!(quick, Ok(()));
        // The next wait's deadline is +3 s: the timer fires at +1 s, is re-armed, and
        // the wait elapses at +3 s, not earlier.
        let r = d
            .run(base + Duration::from_secs(3), std::future::pending::<()>())
            .await;
        assert_eq!(r, Err(Elapsed));
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_shorter_deadline_brings_the_timer_forward() {
        let mut d = Deadline::default();
        let start = tokio::time::Instant::now();
        let base = start.into_std();
        let quick = d.run(base + Duration::from_secs(60), async {
            tokio::time::sleep(Duration::from_millis(10)).await;
        });
        assert_eq!(quick.await, Ok(()));
        let r = d
            .run(base + Duration::from_secs(2), std::future::pending::<()>())
            .await;
        assert_eq!(r, Err(Elapsed));
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }
}
