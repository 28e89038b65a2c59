//! Registration cannot be used to fill Redis or lock real users out: closed unless configured, small metadata, and
//! a cap on live sessions that a refresh extends and a delete frees.

use std::process::Command;

use ces_systest::client::register;

mod common;

use common::{refresh, start};

#[test]
fn a_node_with_no_registration_configured_refuses_to_start() {
    let out = Command::new(env!("CARGO_BIN_EXE_ces-edge"))
        .env_clear()
        .env("CES_TOKEN_SECRET", common::SECRET)
        .output()
        .expect("run ces-edge");
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("registration is closed") && stderr.contains("CES_REGISTER_OPEN=true"),
        "{stderr}"
    );
}

#[tokio::test]
async fn registrations_with_a_mebibyte_of_metadata_get_413_and_store_nothing() -> anyhow::Result<()>
{
    let edge = start(&[("CES_LIMIT_REGISTRATIONS_PER_MIN", "1000")]).await?;
    let http = reqwest::Client::new();
    let metadata = serde_json::json!({ "padding": "x".repeat(1 << 20) }).to_string();
    for _ in 0..100 {
        let response = http
            .post(format!("{}/v1/sessions", edge.base))
            .header("content-type", "application/json")
            .body(metadata.clone())
            .send()
            .await?;
        assert_eq!(response.status().as_u16(), 413);
        let body: serde_json::Value = response.json().await?;
        assert_eq!(body["error"], "body_too_large");
    }
    // The default cap is 1 KiB: 2 KiB is refused too, 900 bytes are stored.
    let medium = serde_json::json!({ "plan": "x".repeat(2048) });
    let response = http
        .post(format!("{}/v1/sessions", edge.base))
        .json(&medium)
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 413);
    let small = serde_json::json!({ "plan": "x".repeat(900) });
    let response = http
        .post(format!("{}/v1/sessions", edge.base))
        .json(&small)
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 201);
    let redis = ces_runtime::redis::builder(&edge.redis.url())?.build()?;
    fred::interfaces::ClientLike::init(&redis).await?;
    let live: u64 = fred::interfaces::SortedSetsInterface::zcard(&redis, "ces:sessions").await?;
    assert_eq!(live, 1, "only the small registration was stored");
    Ok(())
}

async fn delete(base: &str, session: &str, token: &str) -> anyhow::Result<u16> {
    Ok(reqwest::Client::new()
        .delete(format!("{base}/v1/sessions/{session}"))
        .bearer_auth(token)
        .send()
        .await?
        .status()
        .as_u16())
}

#[tokio::test]
async fn the_live_session_cap_frees_a_place_on_delete() -> anyhow::Result<()> {
    let edge = start(&[("CES_MAX_SESSIONS", "2")]).await?;
    let http = reqwest::Client::new();
    let first = register(&http, &edge.base).await?;
    let _second = register(&http, &edge.base).await?;
    let refused = http
        .post(format!("{}/v1/sessions", edge.base))
        .send()
        .await?;
    assert_eq!(refused.status().as_u16(), 503);
    let body: serde_json::Value = refused.json().await?;
    assert_eq!(body["error"], "at_capacity");

    // A refresh keeps its place (and takes no new one), moved to its new token's expiry, and keeps the session's
    // record at least as long: shown from a place and a record about to lapse.
    let redis = ces_runtime::redis::builder(&edge.redis.url())?.build()?;
    fred::interfaces::ClientLike::init(&redis).await?;
    let record = ces_protocol::keys::SessionId::parse(&first.session_id)?.session_key();
    let _: i64 = fred::interfaces::KeysInterface::expire(&redis, &record, 5, None).await?;
    let _: i64 = fred::interfaces::SortedSetsInterface::zadd(
        &redis,
        "ces:sessions",
        None,
        None,
        false,
        false,
        (1.0, first.session_id.as_str()),
    )
    .await?;
    let refreshed = refresh(&edge.base, &first.session_id, &first.token).await?;
    assert_eq!(refreshed.status().as_u16(), 200);
    let body: serde_json::Value = refreshed.json().await?;
    let expires_at = time::OffsetDateTime::parse(
        body["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )?;
    let score: Option<f64> =
        fred::interfaces::SortedSetsInterface::zscore(&redis, "ces:sessions", &first.session_id)
            .await?;
    assert_eq!(
        score,
        Some((expires_at.unix_timestamp() * 1000) as f64),
        "the place lasts until the new token expires"
    );
    let ttl: i64 = fred::interfaces::KeysInterface::ttl(&redis, &record).await?;
    assert!(ttl > 800, "the record outlives the new token: TTL {ttl} s");
    let still_full = http
        .post(format!("{}/v1/sessions", edge.base))
        .send()
        .await?;
    assert_eq!(still_full.status().as_u16(), 503);

    assert_eq!(
        delete(&edge.base, &first.session_id, &first.token).await?,
        204
    );
    let third = register(&http, &edge.base).await?;
    assert_ne!(third.session_id, first.session_id);
    // A deleted session does not take its place back by refreshing.
    let again = refresh(&edge.base, &first.session_id, &first.token).await?;
    assert_eq!(again.status().as_u16(), 401);
    let full_again = http
        .post(format!("{}/v1/sessions", edge.base))
        .send()
        .await?;
    assert_eq!(full_again.status().as_u16(), 503);
    Ok(())
}

#[tokio::test]
async fn refresh_stops_at_the_session_lifetime_and_at_a_missing_record() -> anyhow::Result<()> {
    let edge = start(&[("CES_SESSION_MAX_LIFETIME_SECS", "3600")]).await?;
    let http = reqwest::Client::new();
    let redis = ces_runtime::redis::builder(&edge.redis.url())?.build()?;
    fred::interfaces::ClientLike::init(&redis).await?;
    let refresh = |session: String, token: String| {
        let base = edge.base.clone();
        async move {
            let response = refresh(&base, &session, &token).await?;
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await?;
            anyhow::Ok((status, body))
        }
    };

    // Registered two hours ago: past its hour of life, no new token.
    let old = register(&http, &edge.base).await?;
    let key = format!("ces:{{{}}}:session", old.session_id);
    let two_hours_ago = ces_runtime::now_ms() - 7_200_000;
    let _: i64 =
        fred::interfaces::HashesInterface::hset(&redis, &key, ("created_at_ms", two_hours_ago))
            .await?;
    let (status, body) = refresh(old.session_id.clone(), old.token.clone()).await?;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("expired"),
        "{body}"
    );

    // Registered half an hour before its end of life: the new token ends with the session, not a full TTL later.
    let young = register(&http, &edge.base).await?;
    let key = format!("ces:{{{}}}:session", young.session_id);
    let _: i64 = fred::interfaces::HashesInterface::hset(
        &redis,
        &key,
        ("created_at_ms", ces_runtime::now_ms() - 3_300_000),
    )
    .await?;
    let (status, body) = refresh(young.session_id.clone(), young.token.clone()).await?;
    assert_eq!(status, 200, "{body}");
    let expires = time::OffsetDateTime::parse(
        body["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )?;
    let left = expires - time::OffsetDateTime::now_utc();
    assert!(left <= time::Duration::seconds(301), "{left}");

    // A session whose record is gone cannot be refreshed.
    let gone = register(&http, &edge.base).await?;
    let _: i64 = fred::interfaces::KeysInterface::del(
        &redis,
        format!("ces:{{{}}}:session", gone.session_id),
    )
    .await?;
    let (status, body) = refresh(gone.session_id, gone.token).await?;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("revoked"),
        "{body}"
    );
    Ok(())
}
