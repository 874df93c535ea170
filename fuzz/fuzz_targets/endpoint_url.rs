//! Endpoint URLs and custom request headers, as a client sets them: an
//! accepted URL must be one the delivery client can POST to.

#![no_main]

use libfuzzer_sys::fuzz_target;
use webhookd::domain::{EndpointUrl, check_custom_header};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(url) = EndpointUrl::parse(s) {
        let uri: actix_web::http::Uri = url.as_str().parse().expect("an accepted URL parses");
        assert!(matches!(uri.scheme_str(), Some("http" | "https")));
        assert!(uri.host().is_some_and(|h| !h.is_empty()));
    }
    if let Some((name, value)) = s.split_once(':') {
        let _ = check_custom_header(name, value);
    }
});
