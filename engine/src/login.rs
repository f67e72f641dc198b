//! Login protection: a growing back-off after failed logins, counted per
//! user name and per client address, so that neither guessing one user's
//! password nor spraying many users from one address goes fast.
//!
//! The first [`ThrottlePolicy::free_attempts`] failures cost nothing; each
//! later failure blocks further attempts for `backoff * 2^(n - free - 1)`,
//! up to `max_backoff`. A success clears the user's count (never the
//! address's, so one valid account cannot launder guesses at others); a
//! count is forgotten after `forget_after` without failures.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How failed logins are throttled.
#[derive(Debug, Clone)]
pub struct ThrottlePolicy {
    /// Failures allowed before any back-off.
    pub free_attempts: u32,
    /// The first back-off; it doubles with every further failure.
    pub backoff: Duration,
    /// The longest back-off.
    pub max_backoff: Duration,
    /// A count with no failure for this long is forgotten.
    pub forget_after: Duration,
}

impl Default for ThrottlePolicy {
    fn default() -> Self {
        Self {
            free_attempts: 5,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            forget_after: Duration::from_secs(900),
        }
    }
}

#[derive(Debug)]
struct Failures {
    count: u32,
    last: Instant,
    blocked_until: Option<Instant>,
}

/// Most counts kept; past it, forgotten and expired ones are dropped first.
const MAX_ENTRIES: usize = 100_000;

/// Failed-login counts by key (`user:<name>`, `addr:<ip>`).
#[derive(Debug, Default)]
pub struct LoginThrottle {
    policy: ThrottlePolicy,
    entries: Mutex<HashMap<String, Failures>>,
}

/// The keys a login attempt is counted under.
pub fn keys(user: &str, client: Option<&str>) -> Vec<String> {
    let mut keys = vec![format!("user:{user}")];
    if let Some(c) = client {
        keys.push(format!("addr:{c}"));
    }
    keys
}

impl LoginThrottle {
    /// A throttle with `policy`.
    pub fn new(policy: ThrottlePolicy) -> Self {
        Self {
            policy,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// How long the caller must still wait, if any key is blocked.
    pub fn blocked(&self, keys: &[String]) -> Option<Duration> {
        let now = Instant::now();
        let entries = self.entries.lock().ok()?;
        keys.iter()
            .filter_map(|k| entries.get(k)?.blocked_until)
            .filter(|until| *until > now)
            .map(|until| until - now)
            .max()
    }

    /// Counts a failure under every key; returns the back-off it starts.
    pub fn failed(&self, keys: &[String]) -> Option<Duration> {
        let now = Instant::now();
        let Ok(mut entries) = self.entries.lock() else {
            return None;
        };
        if entries.len() >= MAX_ENTRIES {
            let forget = self.policy.forget_after;
            entries.retain(|_, f| {
                now.duration_since(f.last) < forget || f.blocked_until.is_some_and(|u| u > now)
            });
        }
        let mut longest = None;
        for key in keys {
            let f = entries.entry(key.clone()).or_insert(Failures {
                count: 0,
                last: now,
                blocked_until: None,
            });
            if now.duration_since(f.last) >= self.policy.forget_after {
                f.count = 0;
            }
            f.count = f.count.saturating_add(1);
            f.last = now;
            if let Some(over) = f.count.checked_sub(self.policy.free_attempts + 1) {
                let factor = 2u32.saturating_pow(over.min(30));
                let wait = self
                    .policy
                    .backoff
                    .saturating_mul(factor)
                    .min(self.policy.max_backoff);
                f.blocked_until = Some(now + wait);
                longest = longest.max(Some(wait));
            }
        }
        longest
    }

    /// Clears a key's count after a successful login.
    pub fn succeeded(&self, key: &str) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle() -> LoginThrottle {
        LoginThrottle::new(ThrottlePolicy {
            free_attempts: 2,
            backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(25),
            forget_after: Duration::from_secs(900),
        })
    }

    #[test]
    fn back_off_starts_after_the_free_attempts_and_doubles_to_the_cap() {
        let t = throttle();
        let k = keys("bob", Some("10.0.0.1"));
        assert_eq!(t.failed(&k), None);
        assert_eq!(t.failed(&k), None);
        assert!(t.blocked(&k).is_none(), "two free attempts");
        assert_eq!(t.failed(&k), Some(Duration::from_secs(10)));
        assert!(t.blocked(&k).is_some());
        assert_eq!(t.failed(&k), Some(Duration::from_secs(20)));
        assert_eq!(t.failed(&k), Some(Duration::from_secs(25)), "capped");
    }

    #[test]
    fn user_and_address_are_counted_apart_and_success_clears_only_the_user() {
        let t = throttle();
        for user in ["a", "b", "c"] {
            t.failed(&keys(user, Some("10.0.0.9")));
        }
        // The address is blocked for every user, a fresh user included.
        assert!(t.blocked(&keys("d", Some("10.0.0.9"))).is_some());
        assert!(t.blocked(&keys("d", Some("10.0.0.8"))).is_none());
        t.succeeded("user:d");
        assert!(t.blocked(&keys("d", Some("10.0.0.9"))).is_some());
        for _ in 0..3 {
            t.failed(&keys("e", None));
        }
        assert!(t.blocked(&keys("e", Some("10.0.0.7"))).is_some());
        t.succeeded("user:e");
        assert!(t.blocked(&keys("e", Some("10.0.0.7"))).is_none());
    }
}
