//! A token bucket, for answers that must not become a reflection amplifier. Pure.

/// Allows `rate` events per second on average and bursts of `burst`.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate_per_ms: f64,
    burst: f64,
    tokens: f64,
    last_ms: Option<u64>,
}

impl TokenBucket {
    /// A full bucket refilled at `rate_per_s` tokens a second, holding at most `burst`
    /// (at least 1).
    pub fn new(rate_per_s: f64, burst: f64) -> Self {
        TokenBucket {
            rate_per_ms: rate_per_s.max(0.0) / 1000.0,
            burst: burst.max(1.0),
            tokens: burst.max(1.0),
            last_ms: None,
        }
    }

    /// Takes one token at `now_ms` if there is one.
    pub fn take(&mut self, now_ms: u64) -> bool {
        if let Some(last) = self.last_ms {
            let elapsed = now_ms.saturating_sub(last) as f64;
            self.tokens = (self.tokens + elapsed * self.rate_per_ms).min(self.burst);
        }
        self.last_ms = Some(now_ms.max(self.last_ms.unwrap_or(0)));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let mut b = TokenBucket::new(10.0, 5.0);
        let granted = (0..20).filter(|_| b.take(1000)).count();
        assert_eq!(granted, 5, "burst");
        assert!(!b.take(1050), "half a token after 50 ms");
        assert!(b.take(1100), "one token after 100 ms");
        let granted = (0..20).filter(|_| b.take(2100)).count();
        assert_eq!(granted, 5, "refilled to the burst, not beyond");
    }
}
