//! The event type catalog: `/api/v1/event-type`.

use serde_json::{Value, json};

use crate::helpers::spawn_app;

fn names(list: &Value) -> Vec<String> {
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

#[actix_web::test]
async fn create_duplicate_invalid_get() {
    let app = spawn_app().await;
    let schemas = json!({ "1": { "type": "object", "examples": [{ "id": 1 }] } });
    let (status, et) = app
        .post(
            "/event-type",
            json!({ "name": "user.created", "description": "A user signed up", "schemas": schemas }),
        )
        .await;
    assert_eq!(status, 201, "{et}");
    assert_eq!(et["name"], "user.created");
    assert_eq!(et["description"], "A user signed up");
    assert_eq!(et["archived"], false);
    assert_eq!(et["deprecated"], false);
    assert_eq!(et["schemas"], schemas);
    assert!(et["createdAt"].is_string() && et["updatedAt"].is_string());

    let (status, body) = app
        .post(
            "/event-type",
            json!({ "name": "user.created", "description": "again" }),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "conflict");

    let (status, body) = app
        .post(
            "/event-type",
            json!({ "name": "not valid!", "description": "x" }),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["detail"][0]["loc"], json!(["body", "name"]), "{body}");
    assert!(body["detail"][0]["msg"].is_string(), "{body}");
    assert!(body["detail"][0]["type"].is_string(), "{body}");

    assert_eq!(app.get_ok("/event-type/user.created").await, et);
    let (status, body) = app.get("/event-type/no.such.type").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["code"], "not_found");
}

#[actix_web::test]
async fn list_hides_archived_unless_asked() {
    let app = spawn_app().await;
    for (name, archived) in [("a.one", false), ("b.two", true), ("c.three", false)] {
        let (status, body) = app
            .post(
                "/event-type",
                json!({ "name": name, "description": name, "archived": archived }),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let list = app.get_ok("/event-type").await;
    assert_eq!(names(&list), ["a.one", "c.three"]);
    assert_eq!(list["done"], true);
    assert!(list.as_object().unwrap().contains_key("iterator"), "{list}");

    let all = app.get_ok("/event-type?include_archived=true").await;
    assert_eq!(names(&all), ["a.one", "b.two", "c.three"]);
}

#[actix_web::test]
async fn put_patch_and_delete_archives_or_expunges() {
    let app = spawn_app().await;
    app.post(
        "/event-type",
        json!({ "name": "order.paid", "description": "v1" }),
    )
    .await;

    let (status, put) = app
        .put(
            "/event-type/order.paid",
            json!({ "description": "v2", "deprecated": true }),
        )
        .await;
    assert_eq!(status, 200, "{put}");
    assert_eq!(put["name"], "order.paid");
    assert_eq!(put["description"], "v2");
    assert_eq!(put["deprecated"], true);

    let (status, created) = app
        .put(
            "/event-type/order.refunded",
            json!({ "description": "new" }),
        )
        .await;
    assert_eq!(status, 201, "PUT creates a missing type: {created}");

    let (status, patched) = app
        .patch("/event-type/order.paid", json!({ "deprecated": false }))
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["description"], "v2", "PATCH keeps unnamed fields");
    assert_eq!(patched["deprecated"], false);

    // DELETE archives: still readable, hidden from the default list.
    let (status, body) = app.delete("/event-type/order.paid").await;
    assert_eq!(status, 204, "{body}");
    let et = app.get_ok("/event-type/order.paid").await;
    assert_eq!(et["archived"], true);
    assert_eq!(names(&app.get_ok("/event-type").await), ["order.refunded"]);
    assert_eq!(
        names(&app.get_ok("/event-type?include_archived=true").await),
        ["order.paid", "order.refunded"]
    );

    // expunge=true removes it for good.
    let (status, _) = app.delete("/event-type/order.paid?expunge=true").await;
    assert_eq!(status, 204);
    assert_eq!(app.get("/event-type/order.paid").await.0, 404);
    assert_eq!(
        names(&app.get_ok("/event-type?include_archived=true").await),
        ["order.refunded"]
    );
    assert_eq!(app.delete("/event-type/order.paid").await.0, 404);
}
