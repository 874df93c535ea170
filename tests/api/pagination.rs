//! Listings: limit, iterator, done, order.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app};

/// Follows `iterator` from the first page of `path` (which has a query string);
/// checks the page shape; returns every id in order.
async fn walk(app: &TestApp, path: &str, limit: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut iterator: Option<String> = None;
    for _ in 0..100 {
        let url = match &iterator {
            Some(it) => format!("{path}&limit={limit}&iterator={it}"),
            None => format!("{path}&limit={limit}"),
        };
        let page = app.get_ok(&url).await;
        let obj = page.as_object().unwrap();
        assert!(
            obj.contains_key("iterator"),
            "the iterator key is always present: {page}"
        );
        let data = page["data"].as_array().unwrap();
        assert!(data.len() <= limit, "{page}");
        out.extend(data.iter().map(|x| x["id"].as_str().unwrap().to_owned()));
        if page["done"] == true {
            assert_eq!(
                page["iterator"],
                Value::Null,
                "null on the last page: {page}"
            );
            return out;
        }
        assert_eq!(data.len(), limit, "only the last page is short: {page}");
        iterator = Some(
            page["iterator"]
                .as_str()
                .expect("an iterator until done")
                .to_owned(),
        );
    }
    panic!("{path} did not finish in 100 pages");
}

fn assert_complete(walked: &[String], created: &BTreeSet<String>) {
    let unique: BTreeSet<String> = walked.iter().cloned().collect();
    assert_eq!(unique.len(), walked.len(), "duplicates: {walked:?}");
    assert_eq!(&unique, created, "gaps or strays");
}

#[actix_web::test]
async fn applications_pages() {
    let app = spawn_app().await;
    let mut created = BTreeSet::new();
    for _ in 0..7 {
        created.insert(app.create_app().await);
    }
    for limit in [1, 3, 7, 50] {
        let desc = walk(&app, "/app?x=1", limit).await;
        assert_complete(&desc, &created);
        let mut sorted = desc.clone();
        sorted.sort();
        sorted.reverse();
        assert_eq!(desc, sorted, "descending by default (limit {limit})");

        let asc = walk(&app, "/app?order=ascending", limit).await;
        assert_complete(&asc, &created);
        let mut sorted = asc.clone();
        sorted.sort();
        assert_eq!(asc, sorted, "order=ascending (limit {limit})");
    }
    let first = app.get_ok("/app?limit=3").await;
    assert_eq!(first["data"].as_array().unwrap().len(), 3);
    assert_eq!(first["done"], false);
    assert!(first["iterator"].is_string(), "{first}");
}

#[actix_web::test]
async fn messages_pages() {
    let app = spawn_app().await;
    let a = app.create_app().await;
    let mut created = BTreeSet::new();
    for i in 0..9 {
        let m = app
            .publish(&a, json!({ "eventType": "e.t", "payload": { "i": i } }))
            .await;
        created.insert(m["id"].as_str().unwrap().to_owned());
    }
    for limit in [2, 4, 9, 250] {
        let walked = walk(&app, &format!("/app/{a}/msg?with_content=false"), limit).await;
        assert_complete(&walked, &created);
    }
    // Filters and pages combine.
    let walked = walk(&app, &format!("/app/{a}/msg?event_types=e.t"), 4).await;
    assert_complete(&walked, &created);
}

#[actix_web::test]
async fn limit_out_of_range_is_422() {
    let app = spawn_app().await;
    let a = app.create_app().await;
    for path in [
        "/app?limit=251".to_owned(),
        format!("/app/{a}/msg?limit=1000"),
        "/app?limit=abc".to_owned(),
    ] {
        let (status, body) = app.get(&path).await;
        assert_eq!(status, 422, "{path}: {body}");
        assert_eq!(
            body["detail"][0]["loc"],
            json!(["query", "limit"]),
            "{body}"
        );
    }
    assert_eq!(app.get("/app?limit=250").await.0, 200);
    let (status, body) = app.get("/app?order=sideways").await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["detail"][0]["loc"], json!(["query", "order"]));
}

/// `before` and `after` bound every page, not only the first: clients send
/// them again with the iterator.
#[actix_web::test]
async fn time_bounds_hold_on_every_page() {
    let app = spawn_app().await;
    let rx = crate::helpers::TestReceiver::start().await;
    let a = app.create_app().await;
    let ep = app.endpoint_to(&a, &rx).await;
    let old = app.publish_simple(&a, "e.t").await;
    app.wait_status(&a, &old, &ep, 0).await;
    // A moment strictly after the old message and its attempt, and before
    // the new ones (the clock is read, not waited on for a side effect).
    let after = chrono::Utc::now();
    while chrono::Utc::now() - after < chrono::Duration::milliseconds(2) {
        std::hint::spin_loop();
    }
    let mut created = BTreeSet::new();
    for _ in 0..5 {
        let m = app.publish_simple(&a, "e.t").await;
        app.wait_status(&a, &m, &ep, 0).await;
        created.insert(m);
    }
    let after = after.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let walked = walk(&app, &format!("/app/{a}/msg?after={after}"), 2).await;
    assert_complete(&walked, &created);
    let attempts = walk(
        &app,
        &format!("/app/{a}/attempt/endpoint/{ep}?after={after}"),
        2,
    )
    .await;
    assert_eq!(attempts.len(), 5, "{attempts:?}");
    app.stop().await;
}
