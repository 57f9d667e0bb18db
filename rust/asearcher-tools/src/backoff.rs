//! Retry timing shared by the HTTP clients: exponential back-off with jitter.

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

#[cfg(test)]
mod tests {
    use super::*;

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
