//! `Retry-After` from a receiver, and the retry delay it feeds into: any value
//! a hostile receiver sends must give a delay within the configured bound.

#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use webhookd::delivery::retry::{next_delay, parse_retry_after};

fuzz_target!(|data: &[u8]| {
    let Some((&draw, rest)) = data.split_first() else {
        return;
    };
    let Ok(value) = std::str::from_utf8(rest) else {
        return;
    };
    let retry_after = parse_retry_after(value);
    let schedule = [Duration::from_secs(5), Duration::from_secs(300)];
    let max = Duration::from_secs(3600);
    for attempt in 0..3 {
        let d = next_delay(
            &schedule,
            attempt,
            0.2,
            f64::from(draw) / 256.0,
            retry_after,
            max,
        );
        if let Some(d) = d {
            assert!(d <= max.max(Duration::from_secs(360)), "{d:?}");
            // The worker adds it to the clock in milliseconds.
            assert!(i64::try_from(d.as_millis()).is_ok());
        }
    }
});
