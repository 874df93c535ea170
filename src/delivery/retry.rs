//! Retry timing: pure functions of the schedule, the attempt number and a random draw.

use std::time::Duration;

/// When to try again after attempt number `failed_attempt` (0 = the first) failed,
/// or `None` once the schedule is used up. `jitter` is a fraction (0.2 = ±20 %)
/// and `draw` a uniform random number in [0, 1). A `Retry-After` from the
/// receiver, capped at `retry_after_max`, is honoured when it asks for longer.
pub fn next_delay(
    schedule: &[Duration],
    failed_attempt: u32,
    jitter: f64,
    draw: f64,
    retry_after: Option<Duration>,
    retry_after_max: Duration,
) -> Option<Duration> {
    let base = *schedule.get(failed_attempt as usize)?;
    let factor = 1.0 + jitter * (2.0 * draw.clamp(0.0, 1.0) - 1.0);
    let jittered = base.mul_f64(factor.max(0.0));
    Some(match retry_after {
        Some(ra) => jittered.max(ra.min(retry_after_max)),
        None => jittered,
    })
}

/// Parses a `Retry-After` value given in seconds (the HTTP-date form is not honoured).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn schedule() -> Vec<Duration> {
        vec![
            Duration::from_secs(5),
            Duration::from_secs(300),
            Duration::from_secs(1800),
        ]
    }

    #[test]
    fn follows_the_schedule_then_stops() {
        let s = schedule();
        let d = |n| next_delay(&s, n, 0.0, 0.5, None, Duration::from_secs(3600));
        assert_eq!(d(0), Some(Duration::from_secs(5)));
        assert_eq!(d(2), Some(Duration::from_secs(1800)));
        assert_eq!(d(3), None);
    }

    #[test]
    fn retry_after_is_honoured_but_bounded() {
        let s = schedule();
        let cap = Duration::from_secs(60);
        assert_eq!(
            next_delay(&s, 0, 0.0, 0.5, Some(Duration::from_secs(30)), cap),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            next_delay(&s, 0, 0.0, 0.5, Some(Duration::from_secs(9999)), cap),
            Some(cap)
        );
        // A shorter Retry-After does not shorten the schedule.
        assert_eq!(
            next_delay(&s, 1, 0.0, 0.5, Some(Duration::from_secs(1)), cap),
            Some(Duration::from_secs(300))
        );
        assert_eq!(parse_retry_after(" 120 "), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }

    proptest! {
        #[test]
        fn jitter_stays_within_bounds(n in 0u32..3, draw in 0.0f64..1.0, jitter in 0.0f64..0.99) {
            let s = schedule();
            let base = s[n as usize];
            let d = next_delay(&s, n, jitter, draw, None, Duration::ZERO).unwrap();
            prop_assert!(d >= base.mul_f64(1.0 - jitter) - Duration::from_micros(1));
            prop_assert!(d <= base.mul_f64(1.0 + jitter) + Duration::from_micros(1));
        }

        #[test]
        fn unjittered_delays_never_decrease(n in 0u32..2) {
            let s = schedule();
            let cap = Duration::from_secs(3600);
            let a = next_delay(&s, n, 0.0, 0.5, None, cap).unwrap();
            let b = next_delay(&s, n + 1, 0.0, 0.5, None, cap).unwrap();
            prop_assert!(a <= b);
        }
    }
}
