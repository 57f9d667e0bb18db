//! Retry timing shared by the HTTP clients: exponential back-off with jitter.

use crate::Result;
use std::future::Future;
use std::time::Duration;

/// How often and how patiently a client retries transient failures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (0 = try once).
    pub retries: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            retries: 3,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(8),
        }
    }
}

impl RetryPolicy {
    /// Delay before retry number `attempt` (1-based): base * 2^(attempt-1), capped, with up to
    /// 25% random jitter so that many clients do not retry in lockstep.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
        let capped = exp.min(self.max_delay);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        let jitter = capped.mul_f64((nanos % 1000) as f64 / 4000.0);
        capped + jitter
    }
}

impl RetryPolicy {
    /// Runs `attempt(n)` (n = 0, 1, ...) until it succeeds, fails with an error that is not
    /// transient, or the retries are spent; sleeps [`RetryPolicy::delay`] between attempts.
    pub async fn run<T, F, Fut>(&self, what: &str, mut attempt: F) -> Result<T>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut n = 0;
        loop {
            match attempt(n).await {
                Err(e) if e.is_transient() && n < self.retries => {
                    n += 1;
                    tracing::warn!(what, attempt = n, error = %e, "{what} failed; retrying");
                    tokio::time::sleep(self.delay(n)).await;
                }
                outcome => return outcome,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn run_retries_transient_errors_only() {
        let p = RetryPolicy {
            retries: 2,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
        };
        let transient = || crate::ToolError::Backend {
            backend: "b".into(),
            url: "u".into(),
            msg: "down".into(),
        };
        let mut calls = 0;
        let out: Result<u32> = p
            .run("test", |n| {
                calls += 1;
                async move {
                    if n < 2 {
                        Err(transient())
                    } else {
                        Ok(n)
                    }
                }
            })
            .await;
        assert_eq!((out.unwrap(), calls), (2, 3));
        let mut calls = 0;
        let out: Result<u32> = p
            .run("test", |_| {
                calls += 1;
                async { Err(transient()) }
            })
            .await;
        assert!(out.is_err() && calls == 3, "gives up after the retries");
        let mut calls = 0;
        let out: Result<u32> = p
            .run("test", |_| {
                calls += 1;
                async { Err(crate::ToolError::config("x", "bad")) }
            })
            .await;
        assert!(
            out.is_err() && calls == 1,
            "a non-transient error is not retried"
        );
    }

    #[test]
    fn grows_and_caps() {
        let p = RetryPolicy {
            retries: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(350),
        };
        let d1 = p.delay(1);
        assert!(
            d1 >= Duration::from_millis(100) && d1 <= Duration::from_millis(125),
            "{d1:?}"
        );
        let d2 = p.delay(2);
        assert!(
            d2 >= Duration::from_millis(200) && d2 <= Duration::from_millis(250),
            "{d2:?}"
        );
        let d9 = p.delay(9);
        assert!(
            d9 >= Duration::from_millis(350) && d9 <= Duration::from_micros(437_500),
            "{d9:?}"
        );
    }
}
