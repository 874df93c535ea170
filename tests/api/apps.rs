//! Applications: `/api/v1/app`.

use serde_json::json;

use crate::helpers::spawn_app;

#[actix_web::test]
async fn create_get_by_id_and_uid_list() {
    let app = spawn_app().await;
    let (status, a) = app
        .post(
            "/app",
            json!({ "name": "Acme", "uid": "acme", "metadata": { "plan": "pro" } }),
        )
        .await;
    assert_eq!(status, 201, "{a}");
    let id = a["id"].as_str().unwrap();
    assert!(id.starts_with("app_"), "{id}");
    assert_eq!(a["name"], "Acme");
    assert_eq!(a["uid"], "acme");
    assert_eq!(a["metadata"], json!({ "plan": "pro" }));
    assert!(
        a["createdAt"].is_string() && a["updatedAt"].is_string(),
        "{a}"
    );

    // uid is optional.
    let (status, b) = app.post("/app", json!({ "name": "No uid" })).await;
    assert_eq!(status, 201, "{b}");
    assert!(b["uid"].is_null(), "{b}");
    assert_eq!(b["metadata"], json!({}));

    assert_eq!(app.get_ok(&format!("/app/{id}")).await, a);
    assert_eq!(app.get_ok("/app/acme").await, a);

    let list = app.get_ok("/app").await;
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{list}");
    assert!(ids.contains(&id) && ids.contains(&b["id"].as_str().unwrap()));
    assert_eq!(list["done"], true);
    assert!(list["iterator"].is_null(), "{list}");
}

#[actix_web::test]
async fn duplicate_uid_is_409_and_get_if_exists_returns_it() {
    let app = spawn_app().await;
    let (_, first) = app.post("/app", json!({ "name": "A", "uid": "dup" })).await;
    let (status, body) = app.post("/app", json!({ "name": "B", "uid": "dup" })).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "conflict");
    assert!(body["detail"].is_string(), "{body}");

    let (status, existing) = app
        .post(
            "/app?get_if_exists=true",
            json!({ "name": "B", "uid": "dup" }),
        )
        .await;
    assert_eq!(status, 200, "{existing}");
    assert_eq!(existing["id"], first["id"]);
    assert_eq!(
        existing["name"], "A",
        "the existing app is returned unchanged"
    );

    let (status, created) = app
        .post(
            "/app?get_if_exists=true",
            json!({ "name": "C", "uid": "fresh" }),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["uid"], "fresh");
    assert_ne!(created["id"], first["id"]);
}

#[actix_web::test]
async fn put_patch_delete() {
    let app = spawn_app().await;
    let (_, a) = app
        .post(
            "/app",
            json!({ "name": "Old", "uid": "u1", "metadata": { "k": "v" } }),
        )
        .await;
    let id = a["id"].as_str().unwrap();

    let (status, put) = app
        .put(&format!("/app/{id}"), json!({ "name": "New", "uid": "u2" }))
        .await;
    assert_eq!(status, 200, "{put}");
    assert_eq!(put["id"], a["id"]);
    assert_eq!(put["name"], "New");
    assert_eq!(put["uid"], "u2");
    assert_eq!(put["metadata"], json!({}), "PUT replaces metadata");
    assert_eq!(put["createdAt"], a["createdAt"]);
    assert_eq!(app.get("/app/u1").await.0, 404, "the old uid is gone");
    assert_eq!(app.get_ok("/app/u2").await["id"], a["id"]);

    // PUT of an unknown uid creates the app.
    let (status, upserted) = app
        .put("/app/brand-new", json!({ "name": "Upserted" }))
        .await;
    assert_eq!(status, 201, "{upserted}");
    assert_eq!(upserted["uid"], "brand-new");
    // Not with a path no uid could be.
    for path in [
        "/app/brand%20new".to_owned(),
        format!("/app/{}", "u".repeat(257)),
    ] {
        let (status, body) = app.put(&path, json!({ "name": "No" })).await;
        assert_eq!(status, 404, "{path}: {body}");
    }

    let (status, patched) = app
        .patch(&format!("/app/{id}"), json!({ "metadata": { "a": "b" } }))
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(
        patched["name"], "New",
        "PATCH keeps fields it does not name"
    );
    assert_eq!(patched["uid"], "u2");
    assert_eq!(patched["metadata"], json!({ "a": "b" }));
    assert_eq!(app.get_ok(&format!("/app/{id}")).await, patched);

    let (status, body) = app.delete(&format!("/app/{id}")).await;
    assert_eq!(status, 204, "{body}");
    assert!(body.is_null(), "204 has no body: {body}");
    let (status, body) = app.get(&format!("/app/{id}")).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["code"], "not_found");
    assert_eq!(app.delete(&format!("/app/{id}")).await.0, 404);
    assert_eq!(app.get("/app/u2").await.0, 404, "the uid went with the app");
}
