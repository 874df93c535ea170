//! Query strings: pagination (`limit`, `iterator`, `order`), booleans,
//! integers, lists and time filters, as the list handlers read them.
//!
//! Must never panic; every error must render as a 4xx with a JSON body.

#![no_main]

use actix_web::ResponseError as _;
use actix_web::body::MessageBody as _;
use actix_web::test::TestRequest;
use libfuzzer_sys::fuzz_target;
use webhookd::api::ApiError;
use webhookd::api::extract::{Query, parse_time};
use webhookd::domain::MessageId;

fn check<T>(r: Result<T, ApiError>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            let res = e.error_response();
            assert!(
                res.status().is_client_error(),
                "{e:?} is a {}",
                res.status()
            );
            let body = res.into_body().try_into_bytes().expect("an in-memory body");
            serde_json::from_slice::<serde_json::Value>(&body).expect("an error body is JSON");
            None
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(qs) = std::str::from_utf8(data) else {
        return;
    };
    // Only what can reach a handler: a query string that makes a valid URI.
    let uri = format!("/api/v1/app/x/msg?{qs}");
    if uri.parse::<actix_web::http::Uri>().is_err() {
        return;
    }
    let req = TestRequest::with_uri(&uri).to_http_request();
    let Some(q) = check(Query::from_request(&req)) else {
        return;
    };
    if let Some(page) = check(q.page()) {
        assert!((1..=250).contains(&page.limit));
    }
    for key in ["before", "after", "since", "until"] {
        if let Some(Some(t)) = check(q.time(key)) {
            // Time filters become ID bounds (messages are listed by ID).
            let _ = MessageId::lower_bound(t);
            let _ = MessageId::lower_bound(t.saturating_add(1));
        }
    }
    let _ = check(q.bool("with_content", true));
    let _ = check(q.int("status"));
    let _ = q.list("event_types");
    let _ = q.get("channel");
    let _ = parse_time(qs);
});
