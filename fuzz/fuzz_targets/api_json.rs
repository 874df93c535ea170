//! The API's JSON bodies: parsing (`parse_json`) then validation into domain
//! values, for every request type. The first byte picks the type.
//!
//! Must never panic; every error must render as a 4xx with a JSON body.

#![no_main]

use std::collections::BTreeMap;

use actix_web::ResponseError as _;
use actix_web::body::MessageBody as _;
use libfuzzer_sys::fuzz_target;
use webhookd::api::ApiError;
use webhookd::api::extract::parse_json;
use webhookd::api::model::{
    ApplicationIn, ApplicationPatch, EndpointHeadersIn, EndpointHeadersPatchIn, EndpointIn,
    EndpointPatch, EndpointSecretRotateIn, EventExampleIn, EventTypeIn, EventTypePatch, MessageIn,
    Problems, RecoverIn, parse_secret, validate_feature_flag, validate_headers, validate_schemas,
};
use webhookd::domain::{AppId, EndpointId, EndpointUrl, Secret};
use webhookd::store::{AppRecord, EndpointRecord};

/// A client error must be a 4xx whose body is JSON.
fn client_error(e: ApiError) {
    let res = e.error_response();
    assert!(
        res.status().is_client_error(),
        "{e:?} is a {}",
        res.status()
    );
    let body = res
        .into_body()
        .try_into_bytes()
        .expect("an error body is in memory");
    serde_json::from_slice::<serde_json::Value>(&body).expect("an error body is JSON");
}

fn check(r: Result<(), ApiError>) {
    if let Err(e) = r {
        client_error(e);
    }
}

fn app() -> AppRecord {
    AppRecord {
        id: AppId::new(1),
        uid: None,
        name: "app".into(),
        rate_limit: None,
        metadata: BTreeMap::new(),
        created_ms: 1,
        updated_ms: 1,
    }
}

fn endpoint() -> EndpointRecord {
    EndpointRecord {
        id: EndpointId::new(1),
        app_id: AppId::new(1),
        uid: None,
        url: EndpointUrl::parse("https://example.com/hook").expect("a valid URL"),
        description: String::new(),
        version: 1,
        rate_limit: None,
        disabled: false,
        event_types: Vec::new(),
        channels: Vec::new(),
        headers: BTreeMap::new(),
        metadata: BTreeMap::new(),
        secret: Secret::from_bytes(vec![7; 24]),
        retired_secrets: Vec::new(),
        created_ms: 1,
        updated_ms: 1,
        credentials: None,
        client_cert: None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    match kind % 12 {
        0 => check(parse_json::<MessageIn>(body, 64).and_then(|m| {
            m.validate()?;
            let _ = m.retention_ms();
            if let Some(a) = &m.application {
                a.validate()?;
            }
            Ok(())
        })),
        1 => check(parse_json::<ApplicationIn>(body, 64).and_then(|a| a.validate())),
        2 => check(parse_json::<ApplicationPatch>(body, 64).and_then(|p| p.apply(&mut app()))),
        3 => check(parse_json::<EventTypeIn>(body, 64).and_then(|e| {
            let mut p = Problems::default();
            validate_schemas(&e.schemas, &mut p);
            validate_feature_flag(&e.feature_flag, &mut p);
            p.finish()
        })),
        4 => check(parse_json::<EventTypePatch>(body, 64).and_then(|e| {
            let mut p = Problems::default();
            if let Some(s) = &e.schemas {
                validate_schemas(s, &mut p);
            }
            if let Some(f) = &e.feature_flag {
                validate_feature_flag(f, &mut p);
            }
            p.finish()
        })),
        5 => check(parse_json::<EndpointIn>(body, 64).and_then(|mut e| {
            let fields = e.validate()?;
            e.apply(fields, &mut endpoint());
            Ok(())
        })),
        6 => check(parse_json::<EndpointPatch>(body, 64).and_then(|p| p.apply(&mut endpoint()))),
        7 => check(parse_json::<EndpointSecretRotateIn>(body, 64).and_then(|r| {
            let mut p = Problems::default();
            if let Some(k) = &r.key {
                parse_secret(k, &mut p, &["body", "key"]);
            }
            p.finish()
        })),
        8 => check(parse_json::<EndpointHeadersIn>(body, 64).and_then(|h| {
            let mut p = Problems::default();
            validate_headers(&h.headers, "headers", &mut p);
            p.finish()
        })),
        9 => check(parse_json::<EndpointHeadersPatchIn>(body, 64).and_then(|h| {
            let set: BTreeMap<String, String> = h
                .headers
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| (k, v)))
                .collect();
            let mut p = Problems::default();
            validate_headers(&set, "headers", &mut p);
            p.finish()
        })),
        10 => check(parse_json::<RecoverIn>(body, 64).map(|_| ())),
        _ => check(parse_json::<EventExampleIn>(body, 64).map(|_| ())),
    }
});
