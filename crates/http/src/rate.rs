//! A request budget, "N requests per period", shared by every clone, in one of two shapes:
//!
//! * spaced ([`RateLimiter::new`]): requests period / N apart with no burst (governor's GCRA),
//!   for per-second budgets where a smooth rate is what the provider wants;
//! * sliding window ([`RateLimiter::sliding_window`]): up to N at once, but never more than N in
//!   any stretch of one period, for per-minute rules like LINE WORKS' "10 requests a minute"
//!   where spacing would make every run wait period / N per request for nothing.
//!
//! Either way no stretch of one period ever holds more than N requests, whether the provider
//! counts in fixed or sliding windows. A `429`
//! can also pause the whole budget until the provider's reset ([`RateLimiter::pause_for`]):
//! providers limit per account or domain, so one caller's 429 is every caller's 429.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::collections::VecDeque;

use governor::{DefaultDirectRateLimiter, Quota};
use tokio::time::Instant;

#[derive(Clone)]
enum Budget {
    Spaced(Arc<DefaultDirectRateLimiter>),
    /// When the requests of the last period were sent; waiters queue on the lock in order.
    Window(Arc<tokio::sync::Mutex<VecDeque<Instant>>>),
}

/// How long a budget runs at half rate after a `429`.
pub const SLOW_DOWN_FOR: Duration = Duration::from_secs(60);

/// A cloneable, shared request budget.
#[derive(Clone)]
pub struct RateLimiter {
    budget: Budget,
    /// Until when the budget runs at half its rate, after a `429`.
    slowed_until: Arc<Mutex<Option<Instant>>>,
    slow_down_for: Duration,
    paused_until: Arc<Mutex<Option<Instant>>>,
    requests: NonZeroU32,
    period: Duration,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RateLimiter({} per {:?})", self.requests, self.period)
    }
}

impl RateLimiter {
    /// At most `requests` per `period`, evenly spaced. A zero `period` means no limit worth
    /// speaking of (one request per nanosecond).
    pub fn new(requests: NonZeroU32, period: Duration) -> Self {
        let spacing = (period / requests.get()).max(Duration::from_nanos(1));
        let quota = Quota::with_period(spacing)
            .expect("spacing is at least one nanosecond")
            .allow_burst(NonZeroU32::MIN);
        RateLimiter {
            budget: Budget::Spaced(Arc::new(governor::RateLimiter::direct(quota))),
            paused_until: Arc::new(Mutex::new(None)),
            slowed_until: Arc::new(Mutex::new(None)),
            slow_down_for: SLOW_DOWN_FOR,
            requests,
            period,
        }
    }

    /// At most `requests` in any stretch of `period`, bursts allowed.
    pub fn sliding_window(requests: NonZeroU32, period: Duration) -> Self {
        RateLimiter {
            budget: Budget::Window(Arc::new(tokio::sync::Mutex::new(VecDeque::with_capacity(
                requests.get() as usize,
            )))),
            paused_until: Arc::new(Mutex::new(None)),
            slowed_until: Arc::new(Mutex::new(None)),
            slow_down_for: SLOW_DOWN_FOR,
            requests,
            period,
        }
    }

    /// Sets how long the budget runs at half rate after a `429` (default [`SLOW_DOWN_FOR`]);
    /// zero for a provider whose budget is whole again at its reset.
    pub fn with_slow_down(mut self, slow_down_for: Duration) -> Self {
        self.slow_down_for = slow_down_for;
        self
    }

    /// At most `requests` a minute, evenly spaced.
    pub fn per_minute(requests: NonZeroU32) -> Self {
        RateLimiter::new(requests, Duration::from_secs(60))
    }

    /// At most `requests` a second.
    pub fn per_second(requests: NonZeroU32) -> Self {
        RateLimiter::new(requests, Duration::from_secs(1))
    }

    /// Waits until one more request fits in the budget (and any pause has passed), and takes it.
    pub async fn until_ready(&self) {
        loop {
            let paused = self.paused_until.lock().ok().and_then(|p| *p);
            match paused {
                Some(until) if until > Instant::now() => tokio::time::sleep_until(until).await,
                _ => break,
            }
        }
        let slowed = self
            .slowed_until
            .lock()
            .ok()
            .and_then(|s| *s)
            .is_some_and(|until| until > Instant::now());
        self.take_one().await;
        if slowed {
            // Half rate: every request spends two places of the budget.
            self.take_one().await;
        }
    }

    async fn take_one(&self) {
        match &self.budget {
            Budget::Spaced(limiter) => limiter.until_ready().await,
            Budget::Window(sent) => {
                let mut sent = sent.lock().await;
                loop {
                    let now = Instant::now();
                    while sent
                        .front()
                        .is_some_and(|t| now.duration_since(*t) >= self.period)
                    {
                        sent.pop_front();
                    }
                    if sent.len() < self.requests.get() as usize {
                        sent.push_back(now);
                        return;
                    }
                    let oldest = *sent.front().expect("the window is full");
                    tokio::time::sleep_until(oldest + self.period).await;
                }
            }
        }
    }

    /// A `429` answered: hold every request back for `wait` (the provider's reset), then run at
    /// half the rate for [`SLOW_DOWN_FOR`], since our pacing and the provider's count disagree
    /// (another app of the same account spends the budget too). A budget built
    /// `with_slow_down(Duration::ZERO)` is only paused.
    pub fn rate_limited(&self, wait: Duration) {
        self.pause_for(wait);
        if self.slow_down_for.is_zero() {
            return;
        }
        if let Ok(mut slowed) = self.slowed_until.lock() {
            *slowed = Some(Instant::now() + wait + self.slow_down_for);
        }
    }

    /// Holds every request of this budget back for `wait` (a provider's `429` reset). A longer
    /// pause already in place is kept.
    pub fn pause_for(&self, wait: Duration) {
        let until = Instant::now() + wait;
        if let Ok(mut paused) = self.paused_until.lock()
            && paused.is_none_or(|p| p < until)
        {
            *paused = Some(until);
        }
    }

    /// Requests per period, as configured.
    pub fn quota(&self) -> (NonZeroU32, Duration) {
        (self.requests, self.period)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn spaces_requests_evenly() {
        let rl = RateLimiter::new(NonZeroU32::new(20).unwrap(), Duration::from_secs(1));
        let start = std::time::Instant::now();
        for _ in 0..5 {
            rl.until_ready().await;
        }
        // The first is free, the next four come 50 ms apart.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(190), "{took:?}");
        // Generous: the machine may be busy, but an unlimited limiter would take ~0 ms.
        assert!(took < Duration::from_secs(2), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_sliding_window_allows_a_burst_but_never_more_than_n_per_period() {
        let rl = RateLimiter::sliding_window(NonZeroU32::new(3).unwrap(), Duration::from_secs(60));
        let start = Instant::now();
        let mut at = Vec::new();
        for _ in 0..7 {
            rl.clone().until_ready().await;
            at.push(start.elapsed().as_secs());
        }
        assert_eq!(at, [0, 0, 0, 60, 60, 60, 120]);
        for (i, t) in at.iter().enumerate() {
            let in_window = at.iter().filter(|u| **u >= *t && **u < t + 60).count();
            assert!(
                in_window <= 3,
                "request {i} at {t}s has {in_window} in its minute"
            );
        }
    }

    #[tokio::test]
    async fn a_429_pauses_the_budget_then_halves_its_rate_for_a_while() {
        let rl = RateLimiter::per_second(NonZeroU32::new(20).unwrap())
            .with_slow_down(Duration::from_millis(600));
        rl.until_ready().await;
        let start = std::time::Instant::now();
        rl.clone().rate_limited(Duration::from_millis(200));
        for _ in 0..5 {
            rl.until_ready().await;
        }
        // A 200 ms pause, then 100 ms apart instead of 50: about 0.65 s (0.4 s at full rate).
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(600), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
        tokio::time::sleep(Duration::from_millis(700)).await;
        let start = std::time::Instant::now();
        for _ in 0..5 {
            rl.until_ready().await;
        }
        let took = start.elapsed();
        assert!(
            took < Duration::from_millis(450),
            "back to full rate: {took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_slow_down_a_429_only_pauses() {
        let rl = RateLimiter::sliding_window(NonZeroU32::new(2).unwrap(), Duration::from_secs(60))
            .with_slow_down(Duration::ZERO);
        let start = Instant::now();
        rl.rate_limited(Duration::from_secs(5));
        assert!(
            rl.slowed_until.lock().unwrap().is_none(),
            "never at half rate"
        );
        // After the pause both places of the minute are there: no request spends two.
        rl.until_ready().await;
        rl.until_ready().await;
        assert_eq!(start.elapsed().as_secs(), 5);
        rl.until_ready().await;
        assert_eq!(start.elapsed().as_secs(), 65);
    }

    #[tokio::test]
    async fn clones_share_one_budget() {
        let a = RateLimiter::new(NonZeroU32::new(10).unwrap(), Duration::from_secs(1));
        let b = a.clone();
        let start = std::time::Instant::now();
        a.until_ready().await;
        b.until_ready().await;
        a.until_ready().await;
        assert!(start.elapsed() >= Duration::from_millis(190));
    }

    #[tokio::test]
    async fn a_pause_holds_every_clone_back() {
        let a = RateLimiter::per_second(NonZeroU32::new(1000).unwrap());
        let b = a.clone();
        a.pause_for(Duration::from_millis(150));
        a.pause_for(Duration::from_millis(10)); // a shorter pause does not shorten it
        let start = std::time::Instant::now();
        b.until_ready().await;
        assert!(start.elapsed() >= Duration::from_millis(140));
        assert_eq!(format!("{a:?}"), "RateLimiter(1000 per 1s)");
    }
}
