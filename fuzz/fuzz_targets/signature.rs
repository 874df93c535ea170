//! The signature header: `verify` must never panic on any header, and a header
//! made by `signature_header` must verify for each of its secrets.

#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use webhookd::domain::Secret;
use webhookd::signing::{signature_header, verify};

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    secret: &'a str,
    key: Vec<u8>,
    msg_id: &'a str,
    timestamp: i64,
    body: &'a [u8],
    header: &'a str,
}

fuzz_target!(|input: Input<'_>| {
    let parsed = Secret::parse(input.secret);
    if let Some(s) = &parsed {
        assert_eq!(Secret::parse(&s.expose()).as_ref(), Some(s));
    }
    let key = Secret::from_bytes(input.key);
    let _ = verify(
        &key,
        input.msg_id,
        input.timestamp,
        input.body,
        input.header,
    );
    let secrets: Vec<&Secret> = std::iter::once(&key).chain(parsed.as_ref()).collect();
    let header = signature_header(
        secrets.iter().copied(),
        input.msg_id,
        input.timestamp,
        input.body,
    );
    for s in &secrets {
        assert!(verify(
            s,
            input.msg_id,
            input.timestamp,
            input.body,
            &header
        ));
    }
    // Appending garbage keeps the good signatures valid.
    let noisy = format!("{} {}", input.header, header);
    assert!(verify(
        &key,
        input.msg_id,
        input.timestamp,
        input.body,
        &noisy
    ));
});
