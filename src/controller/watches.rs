//! The watches that drive reconciles, each retried on its own schedule.
//!
//! A watch that fails waits before its next attempt: 0.5 s doubling to 4 s. Short enough to be
//! back within seconds of an API server's return, long enough not to hammer one that is down
//! (about eight attempts per watch in 30 s). A watch the server answers with "resource version
//! too old" (410 Expired, what every watch meets after an API server restart) relists at once:
//! the server is up, and waiting would only delay the repairs the relist triggers.
//!
//! Each watch keeps its own schedule, so five watches coming back from an outage relist side by
//! side instead of one after another. Whether any watch is failing is published for `/readyz`.

use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt, stream};
use kube::runtime::watcher;

use crate::telemetry::Metrics;

/// Retry delays of one failed watch.
#[derive(Default)]
pub struct WatchBackoff {
    failures: u32,
}

impl WatchBackoff {
    /// The delay before the next attempt after one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let delay = Duration::from_millis(500) * 2u32.pow(self.failures.min(3));
        self.failures = self.failures.saturating_add(1);
        delay
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// The controller's own pause after a watch error: none, each watch paces itself.
#[derive(Default)]
pub struct NoPause;

impl Iterator for NoPause {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(Duration::ZERO)
    }
}

impl kube::runtime::utils::Backoff for NoPause {
    fn reset(&mut self) {}
}

/// What to do after one item of a watch.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    Continue,
    Wait(Duration),
}

fn next_step(result: Result<(), &watcher::Error>, backoff: &mut WatchBackoff) -> Next {
    match result {
        Ok(()) => {
            backoff.reset();
            Next::Continue
        }
        Err(e) if is_expired(e) => {
            backoff.reset();
            Next::Continue
        }
        Err(_) => Next::Wait(backoff.next_delay()),
    }
}

/// The server answered that our resource version is too old: it is up, relist now.
fn is_expired(e: &watcher::Error) -> bool {
    matches!(e, watcher::Error::WatchError(status) if status.code == 410)
}

/// Paces one watch: errors still flow on (they are counted and logged where the controller's
/// results are read), but the next attempt of this watch waits its own backoff. The watch's
/// failing state is kept in `metrics` for `/readyz`.
pub fn paced<S, T>(watch: S, metrics: Arc<Metrics>) -> impl Stream<Item = S::Item> + Send + 'static
where
    S: Stream<Item = Result<T, watcher::Error>> + Send + 'static,
    T: Send + 'static,
{
    struct State<T> {
        watch: futures::stream::BoxStream<'static, Result<T, watcher::Error>>,
        backoff: WatchBackoff,
        wait: Option<Duration>,
        failing: FailingMark,
    }
    let state = State {
        watch: watch.boxed(),
        backoff: WatchBackoff::default(),
        wait: None,
        failing: FailingMark {
            metrics,
            set: false,
        },
    };
    stream::unfold(state, |mut state| async move {
        if let Some(delay) = state.wait.take() {
            tokio::time::sleep(delay).await;
        }
        let item = state.watch.next().await?;
        let step = next_step(item.as_ref().map(|_| ()), &mut state.backoff);
        state.failing.set(matches!(step, Next::Wait(_)));
        if let Next::Wait(delay) = step {
            state.wait = Some(delay);
        }
        Some((item, state))
    })
}

/// One watch's contribution to the failing-watch count; withdrawn when the watch ends.
struct FailingMark {
    metrics: Arc<Metrics>,
    set: bool,
}

impl FailingMark {
    fn set(&mut self, failing: bool) {
        if failing != self.set {
            self.set = failing;
            self.metrics.mark_watch_failing(failing);
        }
    }
}

impl Drop for FailingMark {
    fn drop(&mut self) {
        self.set(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn expired() -> watcher::Error {
        let mut status = Status::failure("too old resource version", "Expired");
        status.code = 410;
        watcher::Error::WatchError(Box::new(status))
    }

    fn refused() -> watcher::Error {
        watcher::Error::NoResourceVersion
    }

    #[test]
    fn failures_wait_longer_up_to_four_seconds() {
        let mut b = WatchBackoff::default();
        let delays: Vec<Next> = (0..6).map(|_| next_step(Err(&refused()), &mut b)).collect();
        let ms = |n| Next::Wait(Duration::from_millis(n));
        assert_eq!(
            delays,
            vec![ms(500), ms(1000), ms(2000), ms(4000), ms(4000), ms(4000)]
        );
    }

    #[test]
    fn expired_relists_at_once_and_forgets_the_outage() {
        let mut b = WatchBackoff::default();
        for _ in 0..5 {
            next_step(Err(&refused()), &mut b);
        }
        assert_eq!(next_step(Err(&expired()), &mut b), Next::Continue);
        assert_eq!(
            next_step(Err(&refused()), &mut b),
            Next::Wait(Duration::from_millis(500))
        );
    }

    #[test]
    fn success_resets() {
        let mut b = WatchBackoff::default();
        next_step(Err(&refused()), &mut b);
        next_step(Err(&refused()), &mut b);
        assert_eq!(next_step(Ok(()), &mut b), Next::Continue);
        assert_eq!(
            next_step(Err(&refused()), &mut b),
            Next::Wait(Duration::from_millis(500))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_watch_waits_and_is_reported_until_it_recovers() {
        let metrics = Arc::new(Metrics::default());
        let items: Vec<Result<u8, watcher::Error>> = vec![
            Err(refused()),
            Err(refused()),
            Err(expired()),
            Ok(1),
            Err(refused()),
        ];
        let mut watch = Box::pin(paced(stream::iter(items), metrics.clone()));
        let start = tokio::time::Instant::now();
        let mut seen = Vec::new();
        while let Some(item) = watch.next().await {
            seen.push((item.is_ok(), start.elapsed(), metrics.watches_failing()));
        }
        let at = Duration::from_millis;
        assert_eq!(
            seen,
            vec![
                (false, at(0), 1),
                (false, at(500), 1),
                // Expired: the server is up; the relist follows at once.
                (false, at(1500), 0),
                (true, at(1500), 0),
                (false, at(1500), 1),
            ]
        );
        drop(watch);
        assert_eq!(
            metrics.watches_failing(),
            0,
            "an ended watch withdraws its mark"
        );
    }
}
