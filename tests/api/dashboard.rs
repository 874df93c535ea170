//! The dashboard over HTTP (issue #3): sign-in, sessions, CSRF, security
//! headers, escaping, filters, and every action.

use actix_web::http::Method;
use serde_json::json;

use crate::helpers::{Reply, Resp, TOKEN, TestApp, TestReceiver, spawn_app, spawn_app_with};

/// A browser-like client: keeps the session cookie, reads CSRF tokens from
/// pages, and does not follow redirects (tests look at each 303).
struct Browser<'a> {
    app: &'a TestApp,
    client: awc::Client,
    cookie: Option<String>,
}

impl<'a> Browser<'a> {
    fn new(app: &'a TestApp) -> Self {
        let client = awc::Client::builder()
            .disable_redirects()
            .timeout(std::time::Duration::from_secs(10))
            .finish();
        Self {
            app,
            client,
            cookie: None,
        }
    }

    async fn send(&self, method: Method, path: &str, form: Option<&[(&str, &str)]>) -> Resp {
        let url = format!("{}{path}", self.app.base_url);
        let mut req = self.client.request(method.clone(), &url);
        if let Some(c) = &self.cookie {
            req = req.insert_header(("cookie", format!("webhookd_session={c}")));
        }
        let sent = match form {
            Some(f) => req.send_form(&f).await,
            None => req.send().await,
        };
        let mut res = sent.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let body = res
            .body()
            .limit(16 * 1024 * 1024)
            .await
            .expect("reading a page");
        Resp {
            status: res.status().as_u16(),
            headers: res.headers().clone(),
            body,
        }
    }

    async fn get(&self, path: &str) -> Resp {
        self.send(Method::GET, path, None).await
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> Resp {
        self.send(Method::POST, path, Some(form)).await
    }

    /// A browser signed in with the admin token.
    async fn signed_in(app: &'a TestApp) -> Self {
        let mut b = Self::new(app);
        b.sign_in().await;
        b
    }

    async fn sign_in(&mut self) {
        let res = self
            .post("/login", &[("token", TOKEN), ("next", "/")])
            .await;
        assert_eq!(res.status, 303);
        let set = res
            .header("set-cookie")
            .expect("sign-in sets a cookie")
            .to_owned();
        assert!(set.contains("HttpOnly"), "{set}");
        assert!(set.contains("SameSite=Strict"), "{set}");
        let value = set.split(';').next().unwrap().split_once('=').unwrap().1;
        self.cookie = Some(value.to_owned());
    }

    /// A page that must render (200); returns its HTML.
    async fn page(&self, path: &str) -> String {
        let res = self.get(path).await;
        assert_eq!(res.status, 200, "GET {path}: {}", text(&res));
        assert!(res.header("content-type").unwrap().starts_with("text/html"));
        text(&res)
    }

    /// The CSRF token in the forms of a page.
    async fn csrf(&self) -> String {
        let html = self.page("/").await;
        let start = html
            .find("name=\"csrf\" value=\"")
            .expect("a page with a CSRF field")
            + 19;
        html[start..start + html[start..].find('"').unwrap()].to_owned()
    }

    /// Follows a 303 and returns the page it leads to.
    async fn follow(&self, res: Resp) -> String {
        assert_eq!(
            res.status,
            303,
            "expected a redirect, got {}: {}",
            res.status,
            text(&res)
        );
        let to = res.header("location").unwrap().to_owned();
        self.page(&to).await
    }
}

/// An app with one endpoint delivering to a new receiver, and a browser
/// signed in: the receiver, app and endpoint IDs, the endpoint's page, the
/// browser and its CSRF token.
async fn endpoint_page(
    app: &TestApp,
) -> (TestReceiver, String, String, String, Browser<'_>, String) {
    let rx = TestReceiver::start().await;
    let app_id = app.create_app().await;
    let ep = app.endpoint_to(&app_id, &rx).await;
    let path = format!("/apps/{app_id}/endpoints/{ep}");
    let b = Browser::signed_in(app).await;
    let csrf = b.csrf().await;
    (rx, app_id, ep, path, b, csrf)
}

fn text(r: &Resp) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// An app with one endpoint at `rx` and one message that failed there.
async fn failed_message(app: &TestApp, rx: &mut TestReceiver) -> (String, String, String) {
    rx.script([Reply::status(500), Reply::status(500), Reply::status(500)]);
    let app_id = app.create_app().await;
    let ep = app.endpoint_to(&app_id, rx).await;
    let msg = app.publish_simple(&app_id, "order.created").await;
    app.wait_status(&app_id, &msg, &ep, 2).await;
    rx.take(3).await;
    (app_id, ep, msg)
}

#[actix_web::test]
async fn pages_need_a_session_and_sign_in_works() {
    let app = spawn_app().await;
    let mut b = Browser::new(&app);
    for path in [
        "/",
        "/apps",
        "/messages",
        "/failed",
        "/event-types",
        "/messages/msg_x",
    ] {
        let res = b.get(path).await;
        assert_eq!(res.status, 303, "{path} without a session");
        assert!(
            res.header("location").unwrap().starts_with("/login?next="),
            "{path}"
        );
    }
    let login = b.get("/login").await;
    assert_eq!(login.status, 200);
    let wrong = b
        .post("/login", &[("token", "not-the-token"), ("next", "/")])
        .await;
    assert_eq!(wrong.status, 401);
    assert!(text(&wrong).contains("not the admin token"));
    assert!(wrong.header("set-cookie").is_none());
    // An off-site `next` is not followed, nor one that a browser would
    // read as off-site once it dropped a tab or a line break.
    for next in ["//evil.example/", "/\t/evil.example", "/\n/evil.example"] {
        let res = b.post("/login", &[("token", TOKEN), ("next", next)]).await;
        assert_eq!(res.header("location"), Some("/"), "{next:?}");
    }
    // A form sent after the session ended leads, after sign-in, to the
    // page it was on (its own route shows nothing).
    let res = b
        .post("/messages/msg_x/redeliver", &[("endpoint", "ep_x")])
        .await;
    assert_eq!(res.status, 303);
    assert_eq!(
        res.header("location"),
        Some("/login?next=%2Fmessages%2Fmsg_x")
    );
    b.sign_in().await;
    for path in ["/", "/apps", "/messages", "/failed", "/event-types"] {
        b.page(path).await;
    }
    // Signing out ends the session.
    let csrf = b.csrf().await;
    let res = b.post("/logout", &[("csrf", &csrf)]).await;
    assert_eq!(res.status, 303);
    assert_eq!(b.get("/").await.status, 303);
    app.stop().await;
}

/// Behind a TLS proxy (which says so in `X-Forwarded-Proto`) the session
/// cookie is `Secure`, so that the browser never sends it in clear.
#[actix_web::test]
async fn the_session_cookie_is_secure_behind_https() {
    let app = spawn_app().await;
    let b = Browser::new(&app);
    for (proto, secure) in [(None, false), (Some("https"), true)] {
        let mut req = b.client.post(format!("{}/login", app.base_url));
        if let Some(p) = proto {
            req = req.insert_header(("x-forwarded-proto", p));
        }
        let res = req
            .send_form(&[("token", TOKEN), ("next", "/")])
            .await
            .unwrap();
        assert_eq!(res.status(), 303);
        let set = res.headers().get("set-cookie").unwrap().to_str().unwrap();
        assert_eq!(set.contains("; Secure"), secure, "{proto:?}: {set}");
    }
    app.stop().await;
}

#[actix_web::test]
async fn security_headers_on_every_page() {
    let app = spawn_app().await;
    let b = Browser::signed_in(&app).await;
    for path in ["/login", "/", "/messages", "/no-such-page"] {
        let res = b.get(path).await;
        let csp = res
            .header("content-security-policy")
            .unwrap_or_else(|| panic!("{path} has no CSP"));
        assert!(
            csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self'"),
            "{csp}"
        );
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(res.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(res.header("x-frame-options"), Some("DENY"));
    }
    let missing = b.get("/no-such-page").await;
    assert_eq!(missing.status, 404);
    assert!(text(&missing).contains("There is no such page"));
    let css = b.get("/static/style.css").await;
    assert_eq!(css.status, 200);
    assert!(css.header("content-type").unwrap().starts_with("text/css"));
    app.stop().await;
}

#[actix_web::test]
async fn forms_without_the_csrf_token_are_refused() {
    let app = spawn_app().await;
    let mut rx = TestReceiver::start().await;
    let (app_id, ep, msg) = failed_message(&app, &mut rx).await;
    let b = Browser::signed_in(&app).await;
    let ep_path = format!("/apps/{app_id}/endpoints/{ep}");
    for (path, form) in [
        (
            format!("/messages/{msg}/redeliver"),
            vec![("endpoint", ep.as_str())],
        ),
        (format!("{ep_path}/toggle"), vec![("disabled", "true")]),
        (format!("{ep_path}/rotate"), vec![]),
        ("/failed/redeliver".to_owned(), vec![("all", "1")]),
        ("/logout".to_owned(), vec![]),
    ] {
        let none = b.post(&path, &form).await;
        assert_eq!(none.status, 403, "{path} without a token");
        let mut bad = form.clone();
        bad.push(("csrf", "forged"));
        assert_eq!(
            b.post(&path, &bad).await.status,
            403,
            "{path} with a forged token"
        );
    }
    // Nothing happened: still failed, still enabled, no new attempt.
    assert_eq!(app.destination(&app_id, &msg, &ep).await["status"], 2);
    assert_eq!(app.attempts_of_msg(&app_id, &msg).await.len(), 3);
    let (_, e) = app.get(&format!("/app/{app_id}/endpoint/{ep}")).await;
    assert_eq!(e["disabled"], false);
    app.stop().await;
}

#[actix_web::test]
async fn untrusted_content_renders_as_text() {
    let app = spawn_app().await;
    let mut rx = TestReceiver::start().await;
    rx.set_default(Reply::status(200).header("x-evil", "<script>alert('h')</script>"));
    let app_id = app.create_app().await;
    let ep = app
        .create_endpoint(
            &app_id,
            &rx.url(),
            json!({"description": "<img src=x onerror=alert(1)>", "uid": "ep-1"}),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let payload = json!({"eventType": "a.b", "payload": {"html": "<script>alert(\"x\")</script>", "q": "'\"&"}});
    let msg = app.publish(&app_id, payload).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    rx.next().await;
    app.wait_status(&app_id, &msg, &ep, 0).await;
    let b = Browser::signed_in(&app).await;
    for path in [
        format!("/messages/{msg}"),
        format!("/apps/{app_id}"),
        format!("/apps/{app_id}/endpoints/{ep}"),
        "/messages".into(),
    ] {
        let html = b.page(&path).await;
        assert!(
            !html.contains("<script>alert"),
            "{path} has a live script tag"
        );
        assert!(!html.contains("<img src=x"), "{path} has a live img tag");
    }
    let html = b.page(&format!("/messages/{msg}")).await;
    assert!(
        html.contains("&#60;script&#62;alert") || html.contains("&lt;script&gt;alert"),
        "the payload is shown escaped"
    );
    // The raw download is the exact published body.
    let raw = b.get(&format!("/messages/{msg}/raw")).await;
    assert_eq!(raw.status, 200);
    assert_eq!(
        text(&raw),
        r#"{"html":"<script>alert(\"x\")</script>","q":"'\"&"}"#
    );
    assert!(
        raw.header("content-disposition")
            .unwrap()
            .starts_with("attachment")
    );
    app.stop().await;
}

#[actix_web::test]
async fn redeliver_creates_the_attempt_before_the_page_returns() {
    let app = spawn_app().await;
    let mut rx = TestReceiver::start().await;
    let (_app_id, ep, msg) = failed_message(&app, &mut rx).await;
    let b = &Browser::signed_in(&app).await;
    let before = b.page(&format!("/messages/{msg}")).await;
    assert_eq!(before.matches("data-status=\"500\"").count(), 3);
    let csrf = b.csrf().await;
    let res = b
        .post(
            &format!("/messages/{msg}/redeliver"),
            &[("csrf", &csrf), ("endpoint", &ep)],
        )
        .await;
    let after = b.follow(res).await;
    assert!(
        after.contains("data-status=\"200\""),
        "the new attempt is on the page"
    );
    assert!(after.contains("Redelivered to 1 endpoint"));
    assert_eq!(rx.next().await.msg_id(), msg);
    app.stop().await;
}

#[actix_web::test]
async fn failed_page_lists_dead_letters_and_redelivers_in_bulk() {
    let app = spawn_app().await;
    let mut rx = TestReceiver::start().await;
    rx.script((0..6).map(|_| Reply::status(503)));
    let app_id = app.create_app().await;
    let ep = app.endpoint_to(&app_id, &rx).await;
    let m1 = app.publish_simple(&app_id, "one").await;
    let m2 = app.publish_simple(&app_id, "two").await;
    app.wait_status(&app_id, &m1, &ep, 2).await;
    app.wait_status(&app_id, &m2, &ep, 2).await;
    rx.take(6).await;
    let b = Browser::signed_in(&app).await;
    let html = b.page("/failed").await;
    assert!(html.contains(&m1) && html.contains(&m2));
    let filtered = b.page("/messages?status=failed").await;
    assert!(filtered.contains(&m1) && filtered.contains(&m2));
    // Redeliver only the first one selected.
    let csrf = b.csrf().await;
    let pick = format!("{m1}:{ep}");
    let page = b
        .follow(
            b.post(
                "/failed/redeliver",
                &[("csrf", &csrf), ("pick", &pick), ("selected", "1")],
            )
            .await,
        )
        .await;
    assert!(page.contains("Redelivered 1 deliveries"));
    assert!(!page.contains(&m1) && page.contains(&m2));
    // To a disabled endpoint nothing goes, and the page says why.
    let shown = format!("{m2}:{ep}");
    let set_disabled = |disabled: bool| {
        let path = format!("/app/{app_id}/endpoint/{ep}");
        let app = &app;
        async move {
            let (status, _) = app.patch(&path, json!({ "disabled": disabled })).await;
            assert_eq!(status, 200);
        }
    };
    let redeliver_shown = || async {
        let form = [("csrf", csrf.as_str()), ("all", "1"), ("shown", &shown)];
        b.follow(b.post("/failed/redeliver", &form).await).await
    };
    set_disabled(true).await;
    let page = redeliver_shown().await;
    assert!(
        page.contains("Nothing redelivered. Left 1 to a disabled endpoint"),
        "{page}"
    );
    assert!(
        page.contains(&m2) && page.contains("badge off\">disabled"),
        "{page}"
    );
    set_disabled(false).await;
    // Then everything shown.
    let page = redeliver_shown().await;
    assert!(page.contains("Nothing has failed"), "{page}");
    app.wait_status(&app_id, &m2, &ep, 0).await;
    app.stop().await;
}

#[actix_web::test]
async fn message_filters_and_search() {
    let app = spawn_app().await;
    let mut rx = TestReceiver::start().await;
    let a1 = app.create_app().await;
    let a2 = app.create_app().await;
    let ep1 = app.endpoint_to(&a1, &rx).await;
    let m1 = app
        .publish(
            &a1,
            json!({"eventType": "user.created", "eventId": "evt-one", "payload": {}}),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let m2 = app.publish_simple(&a2, "order.paid").await;
    rx.next().await;
    app.wait_status(&a1, &m1, &ep1, 0).await;
    let b = Browser::signed_in(&app).await;
    let all = b.page("/messages").await;
    assert!(all.contains(&m1) && all.contains(&m2));
    let by_app = b.page(&format!("/messages?app={a2}")).await;
    assert!(!by_app.contains(&m1) && by_app.contains(&m2));
    let by_type = b.page("/messages?event_type=user.created").await;
    assert!(by_type.contains(&m1) && !by_type.contains(&m2));
    let by_ep = b.page(&format!("/messages?endpoint={ep1}")).await;
    assert!(by_ep.contains(&m1) && !by_ep.contains(&m2));
    let delivered = b.page("/messages?status=delivered").await;
    assert!(delivered.contains(&m1) && !delivered.contains(&m2));
    let by_event_id = b.page("/messages?q=evt-one").await;
    assert!(by_event_id.contains(&m1) && !by_event_id.contains(&m2));
    let by_id = b.page(&format!("/messages?q={m2}")).await;
    assert!(by_id.contains(&m2) && !by_id.contains(&m1));
    assert!(
        b.page("/messages?q=nothing-like-it")
            .await
            .contains("No message has that ID")
    );
    let future = b.page("/messages?from=2999-01-01T00:00").await;
    assert!(!future.contains(&m1) && !future.contains(&m2));
    let bad_time = b.page("/messages?from=yesterday").await;
    assert!(bad_time.contains("is not a date and time"));
    app.stop().await;
}

/// A page of 50 links to the next, whatever the filter, and the next
/// keeps the filter.
#[actix_web::test]
async fn every_message_list_goes_on_to_older_messages() {
    let app = spawn_app().await;
    let rx = TestReceiver::start().await;
    let a = app.create_app().await;
    let ep = app.endpoint_to(&a, &rx).await;
    let oldest = app.publish_simple(&a, "order.created").await;
    for _ in 0..50 {
        app.publish_simple(&a, "order.created").await;
    }
    let b = Browser::signed_in(&app).await;
    for filter in [
        String::new(),
        format!("app={a}"),
        format!("endpoint={ep}"),
        "event_type=order.created".to_owned(),
    ] {
        let first = b.page(&format!("/messages?{filter}")).await;
        assert!(!first.contains(&oldest), "{filter}: the newest 50 only");
        let start = first
            .find("href=\"/messages?")
            .unwrap_or_else(|| panic!("{filter}: no link to older messages"))
            + 6;
        let next = first[start..start + first[start..].find('"').unwrap()]
            .replace("&#38;", "&")
            .replace("&amp;", "&");
        assert!(next.contains(&filter), "{filter}: {next}");
        let second = b.page(&next).await;
        assert!(second.contains(&oldest), "{filter}: {next}");
    }
    app.stop().await;
}

#[actix_web::test]
async fn endpoint_settings_secret_and_actions() {
    let app = spawn_app().await;
    let (mut rx, app_id, ep, path, b, csrf) = endpoint_page(&app).await;

    // Edit and save.
    let form = [
        ("csrf", csrf.as_str()),
        ("url", &rx.url()),
        ("description", "Orders service"),
        ("event_types", "order.created, order.paid"),
        ("channels", "eu"),
        ("headers", "X-Tenant: acme\nX-Env: test"),
    ];
    let page = b.follow(b.post(&path, &form).await).await;
    assert!(page.contains("Endpoint saved."));
    let (_, e) = app.get(&format!("/app/{app_id}/endpoint/{ep}")).await;
    assert_eq!(e["eventTypes"], json!(["order.created", "order.paid"]));
    assert_eq!(e["channels"], json!(["eu"]));
    assert_eq!(e["description"], "Orders service");
    let (_, h) = app
        .get(&format!("/app/{app_id}/endpoint/{ep}/headers"))
        .await;
    assert_eq!(h["headers"], json!({"X-Env": "test", "X-Tenant": "acme"}));

    // A bad value is a readable message, and nothing is saved.
    let bad = [
        ("csrf", csrf.as_str()),
        ("url", "ftp://nope"),
        ("headers", ""),
    ];
    let res = b.post(&path, &bad).await;
    assert_eq!(res.status, 422);
    assert!(text(&res).contains("URL scheme must be http or https"));
    let (_, e) = app.get(&format!("/app/{app_id}/endpoint/{ep}")).await;
    assert_eq!(e["url"], rx.url());

    // Reveal and rotate the secret.
    let old = app.secret(&app_id, &ep).await.expose();
    assert!(b.page(&format!("{path}?reveal=1")).await.contains(&old));
    let page = b
        .follow(b.post(&format!("{path}/rotate"), &[("csrf", &csrf)]).await)
        .await;
    let new = app.secret(&app_id, &ep).await.expose();
    assert_ne!(old, new);
    assert!(page.contains(&new) && page.contains("Secret rotated"));

    // Send a test event: the outcome is on the page.
    let page = b
        .follow(
            b.post(
                &format!("{path}/test"),
                &[("csrf", &csrf), ("event_type", "order.created")],
            )
            .await,
        )
        .await;
    assert!(page.contains("the endpoint answered 200"), "{page}");
    let arrival = rx.next().await;
    assert_eq!(arrival.header("x-tenant"), "acme");

    // Disable, then enable.
    let toggle = |disabled: &'static str| {
        let (b, path, csrf) = (&b, &path, &csrf);
        async move {
            b.follow(
                b.post(
                    &format!("{path}/toggle"),
                    &[("csrf", csrf), ("disabled", disabled)],
                )
                .await,
            )
            .await
        }
    };
    let disabled =
        || async { app.get_ok(&format!("/app/{app_id}/endpoint/{ep}")).await["disabled"].clone() };
    let page = toggle("true").await;
    assert!(page.contains("Endpoint disabled"));
    assert_eq!(disabled().await, true);
    toggle("false").await;
    assert_eq!(disabled().await, false);

    // A page from before the endpoint was disabled elsewhere (the health
    // job, a 410, someone else) asks for what is already so: nothing turns.
    let (status, _) = app
        .patch(
            &format!("/app/{app_id}/endpoint/{ep}"),
            json!({"disabled": true}),
        )
        .await;
    assert_eq!(status, 200);
    let page = toggle("true").await;
    assert!(page.contains("was disabled already"), "{page}");
    assert_eq!(disabled().await, true);
    app.stop().await;
}

/// The edit form keeps the bounds the API keeps (`limits.max_endpoint_*`).
#[actix_web::test]
async fn endpoint_form_keeps_the_configured_limits() {
    let app = spawn_app_with(&[
        ("WEBHOOKD_LIMITS__MAX_ENDPOINT_EVENT_TYPES", "2"),
        ("WEBHOOKD_LIMITS__MAX_ENDPOINT_HEADERS", "1"),
    ])
    .await;
    let (rx, app_id, ep, path, b, csrf) = endpoint_page(&app).await;
    let url = rx.url();
    let form = |types, headers| {
        [
            ("csrf", csrf.as_str()),
            ("url", url.as_str()),
            ("event_types", types),
            ("headers", headers),
        ]
    };

    let res = b.post(&path, &form("a, b, c", "")).await;
    assert_eq!(res.status, 422);
    assert!(
        text(&res).contains("Event types: at most 2"),
        "{}",
        text(&res)
    );
    let res = b.post(&path, &form("a", "X-A: 1\nX-B: 2")).await;
    assert_eq!(res.status, 422);
    assert!(text(&res).contains("Headers: at most 1"), "{}", text(&res));
    // The refused form shows what was typed, to be corrected, not the
    // settings it would have replaced.
    assert!(
        text(&res).contains(">X-A: 1\nX-B: 2</textarea>") && text(&res).contains("value=\"a\""),
        "{}",
        text(&res)
    );
    let (_, e) = app.get(&format!("/app/{app_id}/endpoint/{ep}")).await;
    assert_eq!(e["eventTypes"], serde_json::Value::Null, "{e}");

    // At the bounds it saves.
    let res = b.post(&path, &form("a, b", "X-A: 1")).await;
    assert!(b.follow(res).await.contains("Endpoint saved."));
    let (_, e) = app.get(&format!("/app/{app_id}/endpoint/{ep}")).await;
    assert_eq!(e["eventTypes"], json!(["a", "b"]));

    // The throttle rate, as the API bounds it; empty clears it.
    let with_rate = |rate| {
        [
            ("csrf", csrf.as_str()),
            ("url", url.as_str()),
            ("throttle_rate", rate),
        ]
    };
    for bad in ["-1", "70000", "fast"] {
        let res = b.post(&path, &with_rate(bad)).await;
        assert_eq!(res.status, 422, "{bad}");
        assert!(text(&res).contains("Throttle rate: "), "{}", text(&res));
    }
    for (rate, typed) in [(25, "25"), (0, "0")] {
        let res = b.post(&path, &with_rate(typed)).await;
        assert!(b.follow(res).await.contains(&format!("value=\"{rate}\"")));
        let (_, e) = app.get(&format!("/app/{app_id}/endpoint/{ep}")).await;
        assert_eq!(e["throttleRate"], rate, "{e}");
    }
    let res = b.post(&path, &with_rate("")).await;
    b.follow(res).await;
    let (_, e) = app.get(&format!("/app/{app_id}/endpoint/{ep}")).await;
    assert!(e["throttleRate"].is_null(), "{e}");
    app.stop().await;
}

/// A form or an address the dashboard cannot read (no page of it sends
/// one) gets the dashboard's error page with a message, not plain text,
/// and changes nothing.
#[actix_web::test]
async fn unreadable_forms_and_addresses_get_a_readable_page() {
    let app = spawn_app().await;
    let (rx, app_id, ep, path, b, csrf) = endpoint_page(&app).await;

    let missing = b.post(&format!("{path}/test"), &[("csrf", &csrf)]).await;
    assert_eq!(missing.status, 400);
    assert!(
        text(&missing).contains("The form could not be read"),
        "{}",
        text(&missing)
    );
    let huge = "x".repeat(300 * 1024);
    let large = b
        .post(
            &path,
            &[("csrf", &csrf), ("url", &rx.url()), ("description", &huge)],
        )
        .await;
    assert_eq!(large.status, 413);
    assert!(
        text(&large).contains("larger than the dashboard accepts (256 KiB)"),
        "{}",
        text(&large)
    );
    let query = b.get("/failed?cursor=a&cursor=b").await;
    assert_eq!(query.status, 400);
    assert!(
        text(&query).contains("The address could not be read"),
        "{}",
        text(&query)
    );
    for res in [missing, large, query] {
        assert!(res.header("content-type").unwrap().starts_with("text/html"));
    }
    let (_, msgs) = app.get(&format!("/app/{app_id}/msg")).await;
    assert_eq!(msgs["data"], json!([]), "no test event was published");
    let (_, e) = app.get(&format!("/app/{app_id}/endpoint/{ep}")).await;
    assert_eq!(e["description"], "", "{e}");
    app.stop().await;
}

#[actix_web::test]
async fn recover_form_requeues_failed_messages() {
    let app = spawn_app().await;
    let mut rx = TestReceiver::start().await;
    let (app_id, ep, msg) = failed_message(&app, &mut rx).await;
    let b = Browser::signed_in(&app).await;
    let csrf = b.csrf().await;
    let path = format!("/apps/{app_id}/endpoints/{ep}/recover");
    let res = b
        .post(&path, &[("csrf", &csrf), ("since", "not a time")])
        .await;
    assert_eq!(res.status, 422);
    assert!(text(&res).contains("is not a date and time"));
    let page = b
        .follow(
            b.post(&path, &[("csrf", &csrf), ("since", "2000-01-01T00:00")])
                .await,
        )
        .await;
    assert!(page.contains("1 failed message(s)"), "{page}");
    assert_eq!(rx.next().await.msg_id(), msg);
    app.wait_status(&app_id, &msg, &ep, 0).await;
    app.stop().await;
}

#[actix_web::test]
async fn overview_apps_and_catalog_show_the_state() {
    let app = spawn_app().await;
    let mut rx = TestReceiver::start().await;
    let (app_id, ep, _msg) = failed_message(&app, &mut rx).await;
    let (status, _) = app
        .post("/event-type", json!({"name": "order.created", "description": "An order was placed", "schemas": {"1": {"type": "object"}}}))
        .await;
    assert_eq!(status, 201);
    let b = Browser::signed_in(&app).await;
    let overview = b.page("/").await;
    assert!(overview.contains("<svg"), "a chart");
    assert!(overview.contains("3 failed attempts"), "{overview}");
    assert!(overview.contains(&ep), "the failing endpoint is listed");
    let apps = b.page("/apps").await;
    assert!(apps.contains(&app_id));
    let one = b.page(&format!("/apps/{app_id}")).await;
    assert!(one.contains(&rx.url()) && one.contains("0.0 %"));
    let catalog = b.page("/event-types").await;
    assert!(catalog.contains("order.created") && catalog.contains("An order was placed"));
    app.stop().await;
}

#[actix_web::test]
async fn tokens_are_created_shown_once_and_revoked() {
    let app = spawn_app().await;
    let (_, created) = app
        .post("/app", json!({"name": "Billing <b>", "uid": "billing"}))
        .await;
    let a = created["id"].as_str().unwrap().to_owned();
    let b = Browser::signed_in(&app).await;
    let csrf = b.csrf().await;
    let html = b.page("/tokens").await;
    assert!(html.contains("No application tokens"), "{html}");
    assert!(html.contains("Billing &#60;b&#62; (billing)"), "{html}");

    // Without the CSRF token nothing is created.
    let res = b
        .post("/tokens", &[("app", a.as_str()), ("description", "x")])
        .await;
    assert_eq!(res.status, 403);
    assert_eq!(app.get_ok("/webhookd/token").await["data"], json!([]));

    let res = b
        .post(
            "/tokens",
            &[
                ("csrf", &csrf),
                ("app", &a),
                ("description", "billing service"),
            ],
        )
        .await;
    assert_eq!(res.status, 200);
    let html = text(&res);
    let start = html
        .find("id=\"new-token\">")
        .expect("the new token is shown")
        + 15;
    let token = html[start..start + html[start..].find('<').unwrap()].to_owned();
    assert!(token.starts_with("whd_app_"), "{token}");
    // It works through the API, and is never shown again.
    let list_as_token = || async {
        let url = app.url(&format!("/app/{a}/msg"));
        app.raw(Method::GET, &url, Some(&token), &[], None)
            .await
            .status
    };
    assert_eq!(list_as_token().await, 200);
    let html = b.page("/tokens").await;
    assert!(!html.contains(&token));
    assert!(html.contains("billing service"));

    let id = app.get_ok("/webhookd/token").await["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = b
        .post(&format!("/tokens/{id}/revoke"), &[("csrf", &csrf)])
        .await;
    let html = b.follow(res).await;
    assert!(html.contains("Token revoked."), "{html}");
    assert_eq!(list_as_token().await, 401);

    // An unknown application is a readable error, not a token.
    let res = b
        .post("/tokens", &[("csrf", &csrf), ("app", "app_nope")])
        .await;
    assert_eq!(res.status, 404);
    assert!(text(&res).contains("no such application"));
}

/// The operational application's endpoint is shown but not changed from
/// the dashboard: its configuration sets it at every start.
#[actix_web::test]
async fn the_operational_endpoint_is_not_changed_from_the_dashboard() {
    let ops = TestReceiver::start().await;
    let url = ops.url();
    let app = spawn_app_with(&[("WEBHOOKD_OPERATIONAL__URL", url.as_str())]).await;
    let a = app.get_ok("/app/webhookd-operational").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let e = app
        .get_ok("/app/webhookd-operational/endpoint/operator")
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/apps/{a}/endpoints/{e}");
    let b = Browser::signed_in(&app).await;
    b.page(&path).await;
    let csrf = b.csrf().await;
    for (to, form) in [
        (
            path.clone(),
            vec![("csrf", csrf.as_str()), ("url", "https://example.com/")],
        ),
        (
            format!("{path}/toggle"),
            vec![("csrf", csrf.as_str()), ("disabled", "true")],
        ),
        (format!("{path}/rotate"), vec![("csrf", csrf.as_str())]),
    ] {
        let res = b.post(&to, &form).await;
        assert_eq!(res.status, 400, "{to}");
        assert!(
            text(&res).contains("operational application is set from"),
            "{}",
            text(&res)
        );
    }
    let ep = app
        .get_ok("/app/webhookd-operational/endpoint/operator")
        .await;
    assert_eq!(ep["url"], url.as_str());
    assert_eq!(ep["disabled"], false);
    app.stop().await;
}
