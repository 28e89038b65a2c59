//! The admin API on the internal listener: who may call it, where it is not served, its contract
//! (docs/admin-openapi.json against the routes the router serves), labels in the registration body, and the node
//! heartbeat it lists.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use ces_edge::admin::ROUTES;
use fred::interfaces::{ClientLike as _, HashesInterface as _, SortedSetsInterface as _};
use serde_json::{Value, json};

const TOKEN_A: &str = "admin-token-a-0123456789abcdef0123456789";
const TOKEN_B: &str = "admin-token-b-0123456789abcdef0123456789";

fn tokens() -> String {
    format!("{TOKEN_A},{TOKEN_B}")
}

/// `GET <url>` with `token` as `Authorization: Bearer` when given: status, `WWW-Authenticate`, JSON body (`null`
/// when the body is not JSON).
async fn get(url: &str, token: Option<&str>) -> anyhow::Result<(u16, Option<String>, Value)> {
    let mut request = reqwest::Client::new().get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let resp = request.send().await?;
    let status = resp.status().as_u16();
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap_or_default().to_owned());
    let body = resp.json().await.unwrap_or(Value::Null);
    Ok((status, challenge, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_configured_admin_token_opens_the_admin_api() -> anyhow::Result<()> {
    let edge = common::start(&[("CES_ADMIN_TOKENS", &tokens())]).await?;
    let nodes = format!("{}/v1/admin/nodes", edge.internal);
    for token in [TOKEN_A, TOKEN_B] {
        let (status, challenge, body) = get(&nodes, Some(token)).await?;
        assert_eq!((status, challenge), (200, None), "{body}");
        assert!(body["nodes"].is_array(), "{body}");
    }
    let wrong = "admin-token-c-0123456789abcdef0123456789";
    for token in [None, Some(wrong), Some(""), Some(&TOKEN_A[..32])] {
        let (status, challenge, body) = get(&nodes, token).await?;
        assert_eq!(status, 401, "{token:?}: {body}");
        assert_eq!(challenge.as_deref(), Some("Bearer"));
        assert_eq!(body["error"], "unauthorized");
    }
    // Every admin route is behind the check, the DELETE too.
    let resp = reqwest::Client::new()
        .delete(format!("{}/v1/admin/sessions/s-1", edge.internal))
        .bearer_auth(wrong)
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 401);

    // The public listener has no admin route, even with the right token.
    for path in [
        "/v1/admin/sessions/x",
        "/v1/admin/sessions",
        "/v1/admin/nodes",
    ] {
        let (status, _, _) = get(&format!("{}{path}", edge.base), Some(TOKEN_A)).await?;
        assert_eq!(status, 404, "{path}");
    }
    let resp = reqwest::Client::new()
        .delete(format!("{}/v1/admin/sessions/x", edge.base))
        .bearer_auth(TOKEN_A)
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 404);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_admin_tokens_every_admin_route_is_disabled() -> anyhow::Result<()> {
    let edge = common::start(&[]).await?;
    for route in ROUTES {
        let path = route.path.replace("{id}", "s-1");
        let resp = reqwest::Client::new()
            .request(route.method.parse()?, format!("{}{path}", edge.internal))
            .bearer_auth(TOKEN_A)
            .send()
            .await?;
        assert_eq!(resp.status().as_u16(), 403, "{} {path}", route.method);
        let body: Value = resp.json().await?;
        assert_eq!(body["error"], "admin_disabled", "{body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("CES_ADMIN_TOKENS")
        );
    }
    Ok(())
}

#[test]
fn short_admin_tokens_refuse_the_start_without_showing_them() {
    let short = "too-short-admin-token";
    let env: std::collections::HashMap<&'static str, String> = [
        ("CES_TOKEN_SECRET", common::SECRET.to_owned()),
        ("CES_REGISTER_OPEN", "true".to_owned()),
        ("CES_ADMIN_TOKENS", format!("{TOKEN_A},{short}")),
    ]
    .into();
    let err = ces_edge::Config::from_source(&env).unwrap_err().to_string();
    assert!(
        err.contains("CES_ADMIN_TOKENS: token 2 of 2 is shorter than 32 bytes"),
        "{err}"
    );
    assert!(!err.contains(short) && !err.contains(TOKEN_A), "{err}");
}

/// The OpenAPI document's `paths` as (METHOD, path) pairs.
fn documented_routes(doc: &Value) -> BTreeSet<(String, String)> {
    let methods = [
        "get", "put", "post", "delete", "patch", "head", "options", "trace",
    ];
    doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, item)| {
            let item = item.as_object().expect("a path item");
            methods
                .iter()
                .filter(|m| item.contains_key(**m))
                .map(|m| (m.to_uppercase(), path.clone()))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_exactly_the_routes_served() -> anyhow::Result<()> {
    // Read at run time, next to the crate: the document is checked as it is now, not as it was when compiled.
    let dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let path = std::path::Path::new(&dir).join("../../docs/admin-openapi.json");
    let doc: Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        doc["openapi"]
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["adminToken"],
        json!({"type": "http", "scheme": "bearer"})
    );
    assert_eq!(doc["security"], json!([{"adminToken": []}]));
    let routes: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|r| (r.method.to_owned(), r.path.to_owned()))
        .collect();
    assert_eq!(documented_routes(&doc), routes);

    // And the router serves each of them: an authorised request reaches the handler (a JSON answer, never the
    // router's empty 404 or 405).
    let edge = common::start(&[("CES_ADMIN_TOKENS", &tokens())]).await?;
    for route in ROUTES {
        let path = route.path.replace("{id}", "unknown-session");
        let resp = reqwest::Client::new()
            .request(route.method.parse()?, format!("{}{path}", edge.internal))
            .bearer_auth(TOKEN_A)
            .send()
            .await?;
        let status = resp.status().as_u16();
        let body: Value = resp.json().await?;
        assert!(
            status == 200 || (status == 404 && body["error"] == "not_found"),
            "{} {path}: {status} {body}",
            route.method
        );
        // Every answer the handler gave is documented for that route.
        let documented = &doc["paths"][route.path][route.method.to_lowercase()]["responses"];
        assert!(
            documented.get(status.to_string()).is_some(),
            "{} {} answers {status}, which the document does not list",
            route.method,
            route.path
        );
    }
    Ok(())
}

/// `POST /v1/sessions` at `base` with `body`: status and JSON answer.
async fn register(base: &str, body: Value) -> anyhow::Result<(u16, Value)> {
    let resp = reqwest::Client::new()
        .post(format!("{base}/v1/sessions"))
        .json(&body)
        .send()
        .await?;
    Ok((resp.status().as_u16(), resp.json().await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_are_checked_at_registration_and_shown_by_the_admin_api() -> anyhow::Result<()> {
    let edge = common::start(&[("CES_ADMIN_TOKENS", &tokens())]).await?;
    let many: serde_json::Map<String, Value> =
        (0..17).map(|i| (format!("k{i}"), json!("v"))).collect();
    for (labels, needle) in [
        (
            json!({"bad key": "v"}),
            "label \"bad key\": a key is 1-64 characters",
        ),
        (json!({"": "v"}), "label \"\": a key is"),
        (json!({"k".repeat(65): "v"}), "a key is 1-64"),
        (
            json!({"team": 7}),
            "label \"team\": the value must be a string",
        ),
        (
            json!({"team": "v".repeat(129)}),
            "label \"team\": the value is longer than 128",
        ),
        (json!(["team"]), "labels must be an object of strings"),
        (Value::Object(many), "labels has 17 members, at most 16"),
    ] {
        let (status, body) = register(&edge.base, json!({ "labels": labels })).await?;
        assert_eq!(status, 400, "{labels}: {body}");
        assert_eq!(body["error"], "invalid_body");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{labels}: {message}");
    }

    let (status, reg) = register(
        &edge.base,
        json!({"client": "web", "labels": {"team": "blue", "tier": "gold"}}),
    )
    .await?;
    assert_eq!(status, 201, "{reg}");
    let id = reg["session_id"].as_str().unwrap();
    let (status, _, shown) = get(
        &format!("{}/v1/admin/sessions/{id}", edge.internal),
        Some(TOKEN_B),
    )
    .await?;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["session_id"], id);
    assert_eq!(shown["labels"], json!({"team": "blue", "tier": "gold"}));
    assert_eq!(shown["status"], "disconnected");
    assert_eq!(shown["node"], "edge-t");
    assert_eq!(shown["connection"], Value::Null);
    assert_eq!(shown["last_seq"], Value::Null);
    assert_eq!(
        shown["buffer"],
        json!({"events": 0, "first_seq": null, "last_seq": null})
    );
    assert!(
        shown["token_expires_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{shown}"
    );

    let page = format!("{}/v1/admin/sessions?label=team=blue", edge.internal);
    let (status, _, listed) = get(&page, Some(TOKEN_A)).await?;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["sessions"][0]["session_id"], id, "{listed}");
    assert_eq!(listed["cursor"], Value::Null);
    let (_, _, none) = get(&format!("{page}&label=tier=silver"), Some(TOKEN_A)).await?;
    assert_eq!(none["sessions"], json!([]));
    let (status, _, bad) = get(&format!("{page}&limit=5000"), Some(TOKEN_A)).await?;
    assert_eq!((status, &bad["error"]), (400, &json!("invalid_query")));

    for unknown in ["no-such-session", "not%20an%20id"] {
        let (status, _, body) = get(
            &format!("{}/v1/admin/sessions/{unknown}", edge.internal),
            Some(TOKEN_A),
        )
        .await?;
        assert_eq!(
            (status, &body["error"]),
            (404, &json!("not_found")),
            "{unknown}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_beats_while_it_runs_and_leaves_at_a_graceful_stop() -> anyhow::Result<()> {
    let mut edge = common::start(&[
        ("CES_ADMIN_TOKENS", &tokens()),
        ("CES_NODE_HEARTBEAT_MS", "100"),
    ])
    .await?;
    let redis = ces_runtime::redis::builder(&edge.redis.url())?.build()?;
    redis.init().await?;
    let info_key = ces_protocol::keys::node_info_key("edge-t");
    let mut beats = Vec::new();
    for _ in 0..50 {
        let score: Option<f64> = redis.zscore("ces:nodes", "edge-t").await?;
        if let Some(s) = score
            && beats.last() != Some(&(s as i64))
        {
            beats.push(s as i64);
        }
        if beats.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(beats.len() >= 2, "the beat moves on: {beats:?}");
    let info: std::collections::HashMap<String, String> = redis.hgetall(&info_key).await?;
    assert_eq!(info["connections"], "0");
    assert_eq!(info["draining"], "0");
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    let ttl: i64 = fred::interfaces::KeysInterface::pttl(&redis, &info_key).await?;
    assert!((1..=300).contains(&ttl), "expires after 3 beats: {ttl}");

    let (status, _, nodes) =
        get(&format!("{}/v1/admin/nodes", edge.internal), Some(TOKEN_A)).await?;
    assert_eq!(status, 200);
    let node = &nodes["nodes"][0];
    assert_eq!(node["node"], "edge-t", "{nodes}");
    assert_eq!(node["alive"], true);
    assert_eq!(node["draining"], false);
    assert_eq!(node["connections"], 0);
    assert_eq!(node["version"], env!("CARGO_PKG_VERSION"));
    assert!(node["started"].as_str().is_some_and(|t| t.ends_with('Z')));

    edge.shut_down().await??;
    let score: Option<f64> = redis.zscore("ces:nodes", "edge-t").await?;
    let exists: i64 = fred::interfaces::KeysInterface::exists(&redis, &info_key).await?;
    assert_eq!((score, exists), (None, 0), "gone after a graceful stop");
    Ok(())
}
