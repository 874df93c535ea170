//! Rate limits shared by the API and the dashboard: failed authentications per
//! client address, and publishes per token. Counting is `governor`'s (GCRA).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Above this many tracked clients, forgotten ones are dropped before adding more.
const PRUNE_ABOVE: usize = 10_000;

/// The address a limit is kept for: IPv6 clients by their /64, since one host
/// usually owns the whole prefix.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

fn keyed<K: Hash + Eq + Clone>(quota: Option<Quota>) -> Option<DefaultKeyedRateLimiter<K>> {
    quota.map(RateLimiter::keyed)
}

/// Limits failed sign-ins and bad API tokens per client address. Once a client
/// is over the limit, every authentication from it is refused until the wait is
/// over, right or wrong: a guesser learns nothing from the answers meanwhile.
pub struct AuthThrottle {
    failures: Option<DefaultKeyedRateLimiter<IpAddr>>,
    blocked: Mutex<HashMap<IpAddr, Instant>>,
}

impl AuthThrottle {
    /// `per_minute` failures allowed per client (in a burst, then one every
    /// 60/`per_minute` s); 0 disables the limit.
    pub fn new(per_minute: u32) -> Self {
        Self {
            failures: keyed(NonZeroU32::new(per_minute).map(Quota::per_minute)),
            blocked: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(wait)` while `ip` is blocked.
    pub fn check(&self, ip: Option<IpAddr>) -> Result<(), Duration> {
        let Some(ip) = ip.map(client_key) else {
            return Ok(());
        };
        let mut blocked = self.blocked.lock().expect("throttle lock poisoned");
        let now = Instant::now();
        match blocked.get(&ip) {
            Some(&until) if until > now => Err(until - now),
            Some(_) => {
                blocked.remove(&ip);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Counts a failed authentication from `ip`; `Err(wait)` when it crossed the
    /// limit, and the client is blocked for `wait`.
    pub fn failed(&self, ip: Option<IpAddr>) -> Result<(), Duration> {
        let (Some(limiter), Some(ip)) = (&self.failures, ip.map(client_key)) else {
            return Ok(());
        };
        if limiter.len() > PRUNE_ABOVE {
            limiter.retain_recent();
        }
        let Err(not_until) = limiter.check_key(&ip) else {
            return Ok(());
        };
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        let mut blocked = self.blocked.lock().expect("throttle lock poisoned");
        let now = Instant::now();
        if blocked.len() > PRUNE_ABOVE {
            blocked.retain(|_, until| *until > now);
        }
        blocked.insert(ip, now + wait);
        Err(wait)
    }
}

/// Limits publishes per token (the admin token and each scoped token on its own).
pub struct PublishThrottle {
    limiter: Option<DefaultKeyedRateLimiter<String>>,
}

impl PublishThrottle {
    /// `per_second` publishes allowed per token, with a burst of as many; 0: no limit.
    pub fn new(per_second: u32) -> Self {
        Self {
            limiter: keyed(NonZeroU32::new(per_second).map(Quota::per_second)),
        }
    }

    /// `Err(wait)` when the token identified by `key` is over its rate.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        if limiter.len() > PRUNE_ABOVE {
            limiter.retain_recent();
        }
        limiter
            .check_key(&key.to_owned())
            .map_err(|n| n.wait_time_from(DefaultClock::default().now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1)));
    const B: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2)));

    #[test]
    fn blocks_a_client_after_its_failures_and_only_that_client() {
        let t = AuthThrottle::new(3);
        for _ in 0..3 {
            assert!(t.check(A).is_ok());
            assert!(t.failed(A).is_ok());
        }
        let wait = t
            .failed(A)
            .expect_err("the fourth failure is over the limit");
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(20));
        assert!(t.check(A).is_err());
        assert!(t.check(B).is_ok());
        assert!(t.failed(B).is_ok());
    }

    #[test]
    fn an_ipv6_prefix_shares_one_limit() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2::ffff".parse().unwrap();
        let t = AuthThrottle::new(1);
        assert!(t.failed(Some(a)).is_ok());
        assert!(t.failed(Some(b)).is_err());
        assert!(t.check(Some(a)).is_err());
    }

    #[test]
    fn zero_disables() {
        let t = AuthThrottle::new(0);
        for _ in 0..100 {
            assert!(t.failed(A).is_ok());
        }
        let p = PublishThrottle::new(0);
        for _ in 0..100 {
            assert!(p.check("admin").is_ok());
        }
    }

    #[test]
    fn publishes_are_limited_per_token() {
        let p = PublishThrottle::new(2);
        assert!(p.check("a").is_ok());
        assert!(p.check("a").is_ok());
        assert!(p.check("a").is_err());
        assert!(p.check("b").is_ok());
    }
}
