//! Service tests of one edge node on port 0 against a real redis-server: token checks before the upgrade,
//! registration input, and the socket protocol's answers to client frames.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ces_protocol::keys::SessionId;
use ces_protocol::token::TokenKeys;
use ces_systest::client::{Ending, WsClient, handshake_status, register, ws_url};

mod common;

use common::{Edge, SECRET, refresh, start};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn connected(edge: &Edge) -> anyhow::Result<WsClient> {
    let reg = register(&reqwest::Client::new(), &edge.base).await?;
    let mut ws = WsClient::connect(&ws_url(&edge.base, &reg.token)).await?;
    let welcome = ws
        .next_json(Duration::from_secs(5))
        .await?
        .expect("welcome");
    assert_eq!(welcome["type"], "welcome");
    Ok(ws)
}

#[tokio::test]
async fn bad_tokens_get_401_before_any_upgrade() -> anyhow::Result<()> {
    let edge = start(&[]).await?;
    let session = SessionId::parse("s-1")?;
    let right = TokenKeys::new([("default", SECRET.as_bytes())]).unwrap();
    let wrong = TokenKeys::new([("default", &[7u8; 32][..])]).unwrap();
    let ws = |q: &str| format!("{}/v1/ws{q}", edge.base.replacen("http", "ws", 1));
    let cases = [
        ("missing", ws("")),
        ("empty", ws("?token=")),
        ("garbage", ws("?token=not-a-token")),
        (
            "forged",
            ws(&format!("?token={}", wrong.sign(&session, now() + 60))),
        ),
        (
            "expired",
            ws(&format!("?token={}", right.sign(&session, now() - 1))),
        ),
    ];
    for (what, url) in cases {
        assert_eq!(handshake_status(&url).await?, Some(401), "{what} token");
    }
    // The 401 body says why, as JSON.
    let resp = reqwest::get(format!(
        "{}/v1/ws?token={}",
        edge.base,
        right.sign(&session, now() - 1)
    ))
    .await?;
    assert_eq!(resp.status(), 401);
    let body: serde_json::Value = resp.json().await?;
    assert_eq!(body["error"], "unauthorized");
    assert_eq!(body["message"], "session token expired");
    // A valid token upgrades.
    assert_eq!(
        handshake_status(&ws(&format!("?token={}", right.sign(&session, now() + 60)))).await?,
        None
    );
    Ok(())
}

#[tokio::test]
async fn registration_validates_its_body() -> anyhow::Result<()> {
    let edge = start(&[]).await?;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/sessions", edge.base);
    let ok = http
        .post(&url)
        .json(&serde_json::json!({"app": "demo", "labels": {"team": "a"}, "tags": ["a"]}))
        .send()
        .await?;
    assert_eq!(ok.status(), 201);
    let body: serde_json::Value = ok.json().await?;
    assert!(SessionId::parse(body["session_id"].as_str().unwrap()).is_ok());
    assert!(body["expires_at"].as_str().unwrap().ends_with('Z'));
    // `labels`, when present, is an object of strings (docs/protocol.md).
    for bad in ["[1]", "{oops", "\"text\"", r#"{"labels":["a"]}"#] {
        let resp = http.post(&url).body(bad).send().await?;
        assert_eq!(resp.status(), 400, "{bad}");
        let body: serde_json::Value = resp.json().await?;
        assert_eq!(body["error"], "invalid_body", "{bad}");
    }
    let too_big = http
        .post(&url)
        .body(format!("{{\"pad\":\"{}\"}}", "x".repeat(20_000)))
        .send()
        .await?;
    assert_eq!(too_big.status(), 413);
    Ok(())
}

#[tokio::test]
async fn client_frames_get_answers_and_violations_get_close_codes() -> anyhow::Result<()> {
    let edge = start(&[("CES_WS_MAX_MESSAGE_BYTES", "1024")]).await?;

    let mut ws = connected(&edge).await?;
    ws.send_text(r#"{"type":"ping"}"#).await?;
    assert_eq!(
        ws.next_json(Duration::from_secs(5)).await?.unwrap()["type"],
        "pong"
    );
    // The counts the end of this test expects back at zero do count a live socket.
    let m = ces_systest::Metrics::scrape(&edge.internal).await?;
    assert_eq!(
        (
            m.get("ces_edge_connections", &[]),
            m.get("ces_edge_subscribed_channels", &[])
        ),
        (1.0, 1.0)
    );
    ws.send_text("{nope").await?;
    let err = ws.next_json(Duration::from_secs(5)).await?.unwrap();
    assert_eq!(
        (err["type"].as_str(), err["code"].as_str()),
        (Some("error"), Some("invalid_json"))
    );
    ws.send_text(r#"{"type":"launch"}"#).await?;
    assert_eq!(
        ws.next_json(Duration::from_secs(5)).await?.unwrap()["code"],
        "unknown_type"
    );
    ws.send_text(r#"{"type":"ack","seq":3}"#).await?;
    ws.send_binary(vec![0, 1, 2]).await?;
    assert_eq!(
        ws.ending(Duration::from_secs(5)).await,
        Some(Ending::Closed(1003))
    );

    let mut ws = connected(&edge).await?;
    ws.send_text(&"x".repeat(2048)).await?;
    assert_eq!(
        ws.ending(Duration::from_secs(5)).await,
        Some(Ending::Closed(1009))
    );

    // Garbage answered with error frames, up to a limit: then 1008.
    let mut ws = connected(&edge).await?;
    for _ in 0..ces_edge::ws::MAX_INVALID_FRAMES - 1 {
        ws.send_text(r#"{"type":"launch"}"#).await?;
        assert_eq!(
            ws.next_json(Duration::from_secs(5)).await?.unwrap()["code"],
            "unknown_type"
        );
    }
    ws.send_text("{nope").await?;
    assert_eq!(
        ws.ending(Duration::from_secs(5)).await,
        Some(Ending::Closed(1008))
    );

    let mut ws = connected(&edge).await?;
    ws.send_raw_text(vec![b'{', 0xff, 0xfe, b'}']).await?;
    assert_eq!(
        ws.ending(Duration::from_secs(5)).await,
        Some(Ending::Closed(1007))
    );

    // Half-open and garbage connections: a TCP connection that never finishes its handshake, and one that sends
    // bytes that are not HTTP, cost nothing lasting.
    let addr = edge.base.trim_start_matches("http://").to_owned();
    let idle = tokio::net::TcpStream::connect(&addr).await?;
    let mut garbage = tokio::net::TcpStream::connect(&addr).await?;
    tokio::io::AsyncWriteExt::write_all(&mut garbage, b"\x16\x03\x01 not http at all\r\n\r\n")
        .await?;
    drop((idle, garbage));

    // Every socket above is gone: no connection or subscription outlives its socket.
    let mut settled = None;
    for _ in 0..100 {
        let m = ces_systest::Metrics::scrape(&edge.internal).await?;
        let counts = (
            m.get("ces_edge_connections", &[]),
            m.get("ces_edge_subscribed_channels", &[]),
        );
        settled = Some(counts);
        if counts == (0.0, 0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        settled,
        Some((0.0, 0.0)),
        "connections and subscriptions back to zero"
    );
    Ok(())
}

#[tokio::test]
async fn a_second_connection_for_a_session_takes_over() -> anyhow::Result<()> {
    let edge = start(&[]).await?;
    let reg = register(&reqwest::Client::new(), &edge.base).await?;
    let mut first = WsClient::connect(&ws_url(&edge.base, &reg.token)).await?;
    first
        .next_json(Duration::from_secs(5))
        .await?
        .expect("welcome");
    let mut second = WsClient::connect(&ws_url(&edge.base, &reg.token)).await?;
    second
        .next_json(Duration::from_secs(5))
        .await?
        .expect("welcome");
    assert_eq!(
        first.ending(Duration::from_secs(5)).await,
        Some(Ending::Closed(4009))
    );
    second.send_text(r#"{"type":"ping"}"#).await?;
    assert_eq!(
        second.next_json(Duration::from_secs(5)).await?.unwrap()["type"],
        "pong"
    );
    Ok(())
}

#[tokio::test]
async fn silent_clients_are_closed_after_missed_pings() -> anyhow::Result<()> {
    // tungstenite answers pings only while the client reads; a client that never reads looks dead.
    let edge = start(&[
        ("CES_WS_PING_INTERVAL_MS", "100"),
        ("CES_WS_MAX_MISSED_PONGS", "2"),
    ])
    .await?;
    let reg = register(&reqwest::Client::new(), &edge.base).await?;
    let (mut raw, _) = tokio_tungstenite::connect_async(ws_url(&edge.base, &reg.token)).await?;
    tokio::time::sleep(Duration::from_millis(600)).await;
    use futures::StreamExt as _;
    let mut saw_close = None;
    while let Some(msg) = raw.next().await {
        if let tokio_tungstenite::tungstenite::Message::Close(f) = msg? {
            saw_close = f.map(|f| u16::from(f.code));
            break;
        }
    }
    assert_eq!(saw_close, Some(4000));
    Ok(())
}

#[tokio::test]
async fn protected_registration_needs_an_api_key_or_an_upstream_jwt() -> anyhow::Result<()> {
    let api_key = "backend-api-key-0123456789abcdef-0123";
    let dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let public = format!("{dir}/tests/data/jwt_rs256_public.pem");
    let public = public.as_str();
    let private = std::fs::read(format!("{dir}/tests/data/jwt_rs256_private.pem"))?;
    let edge = start(&[
        ("CES_REGISTER_API_KEYS", api_key),
        ("CES_REGISTER_JWT_RS256_PUBLIC_KEY_FILE", public),
        ("CES_REGISTER_JWT_AUDIENCE", "ces"),
        ("CES_REGISTER_JWT_ISSUER", "https://id.example.com"),
    ])
    .await?;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/sessions", edge.base);
    let jwt = |aud: &str, exp: u64| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
            &serde_json::json!({
                "sub": "user-42", "aud": aud, "exp": exp, "iss": "https://id.example.com"
            }),
            &jsonwebtoken::EncodingKey::from_rsa_pem(&private).unwrap(),
        )
        .unwrap()
    };
    for (credential, reason) in [
        (None, "missing"),
        (Some("not-a-key".to_owned()), "invalid"),
        (Some(jwt("ces", now() - 600)), "expired"),
        (
            Some(jwt("billing", now() + 600)),
            "wrong_issuer_or_audience",
        ),
    ] {
        let mut request = http.post(&url);
        if let Some(c) = &credential {
            request = request.bearer_auth(c);
        }
        let refused = request.send().await?;
        assert_eq!(refused.status(), 401, "{reason}");
        let body: serde_json::Value = refused.json().await?;
        assert_eq!(body["error"], "unauthorized");
        assert!(body["message"].as_str().unwrap().contains(reason), "{body}");
    }
    let by_key = http.post(&url).bearer_auth(api_key).send().await?;
    assert_eq!(by_key.status(), 201);
    let by_jwt = http
        .post(&url)
        .bearer_auth(jwt("ces", now() + 600))
        .send()
        .await?;
    assert_eq!(by_jwt.status(), 201);
    let reg: ces_systest::client::Registered = by_jwt.json().await?;
    // The JWT's subject is stored with the session.
    let redis = ces_runtime::redis::builder(&edge.redis.url())?.build()?;
    fred::interfaces::ClientLike::init(&redis).await?;
    let subject: Option<String> = fred::interfaces::HashesInterface::hget(
        &redis,
        SessionId::parse(&reg.session_id)?.session_key(),
        "subject",
    )
    .await?;
    assert_eq!(subject.as_deref(), Some("user-42"));
    let m = ces_systest::Metrics::scrape(&edge.internal).await?;
    assert_eq!(
        m.get(
            "ces_edge_registrations_refused_total",
            &[("reason", "expired")]
        ),
        1.0
    );
    Ok(())
}

#[tokio::test]
async fn registration_stops_at_the_session_cap() -> anyhow::Result<()> {
    let edge = start(&[("CES_MAX_SESSIONS", "2")]).await?;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/sessions", edge.base);
    for _ in 0..2 {
        assert_eq!(http.post(&url).send().await?.status(), 201);
    }
    let refused = http.post(&url).send().await?;
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: serde_json::Value = refused.json().await?;
    assert_eq!(body["error"], "at_capacity");
    Ok(())
}

fn keys(spec: &[(&str, &str)]) -> TokenKeys {
    TokenKeys::new(spec.iter().map(|(k, s)| (*k, s.as_bytes()))).unwrap()
}

const OLD_SECRET: &str = "old-secret-old-secret-old-secret-0000";
const NEW_SECRET: &str = "new-secret-new-secret-new-secret-1111";

/// Rotation: while the old key is still listed its tokens work, new tokens are signed with the first key, and a
/// key that is no longer listed is refused as `unknown_key`.
#[tokio::test]
async fn tokens_of_every_listed_key_work_and_the_first_key_signs() -> anyhow::Result<()> {
    let spec = format!("new={NEW_SECRET},old={OLD_SECRET}");
    let edge = start(&[("CES_TOKEN_KEYS", &spec)]).await?;
    let reg = register(&reqwest::Client::new(), &edge.base).await?;
    assert!(reg.token.starts_with("v1.new."), "{}", reg.token);
    let session = SessionId::parse(&reg.session_id)?;
    let old_token = keys(&[("old", OLD_SECRET)]).sign(&session, now() + 60);
    let mut ws = WsClient::connect(&ws_url(&edge.base, &old_token)).await?;
    assert_eq!(
        ws.next_json(Duration::from_secs(5)).await?.unwrap()["type"],
        "welcome"
    );
    ws.close().await;
    let retired = keys(&[("older", OLD_SECRET)]).sign(&session, now() + 60);
    let r = reqwest::get(format!("{}/v1/ws?token={retired}", edge.base)).await?;
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<serde_json::Value>().await?["message"],
        "session token unknown_key"
    );
    Ok(())
}

/// A socket whose token expires is closed with 4001; one that refreshes in-band stays open past the old expiry.
#[tokio::test]
async fn expiry_closes_with_4001_unless_refreshed_in_band() -> anyhow::Result<()> {
    let edge = start(&[]).await?;
    let k = keys(&[("default", SECRET)]);
    let reg = register(&reqwest::Client::new(), &edge.base).await?;
    let session = SessionId::parse(&reg.session_id)?;

    let short = k.sign(&session, now() + 2);
    let mut expiring = WsClient::connect(&ws_url(&edge.base, &short)).await?;
    assert_eq!(
        expiring.ending(Duration::from_secs(5)).await,
        Some(Ending::Closed(4001))
    );

    let short = k.sign(&session, now() + 2);
    let mut ws = WsClient::connect(&ws_url(&edge.base, &short)).await?;
    assert_eq!(
        ws.next_json(Duration::from_secs(5)).await?.unwrap()["type"],
        "welcome"
    );
    let fresh: serde_json::Value = refresh(&edge.base, &reg.session_id, &short)
        .await?
        .json()
        .await?;
    let token = fresh["token"].as_str().unwrap();
    ws.send_text(&serde_json::json!({"type": "refresh", "token": token}).to_string())
        .await?;
    let reply = ws.next_json(Duration::from_secs(5)).await?.unwrap();
    assert_eq!(reply["type"], "refreshed");
    assert!(
        reply["expires_at"].as_u64().unwrap() > now() + 60,
        "{reply}"
    );
    // Past the old expiry, the socket still answers.
    tokio::time::sleep(Duration::from_secs(3)).await;
    ws.send_text(r#"{"type":"ping"}"#).await?;
    assert_eq!(
        ws.next_json(Duration::from_secs(5)).await?.unwrap()["type"],
        "pong"
    );

    // A token of another session or a forged one is refused in-band, and the socket stays open.
    let other = k.sign(&SessionId::parse("someone-else")?, now() + 60);
    for bad in [other.as_str(), "v1.default.x.y"] {
        ws.send_text(&serde_json::json!({"type": "refresh", "token": bad}).to_string())
            .await?;
        let reply = ws.next_json(Duration::from_secs(5)).await?.unwrap();
        assert_eq!(reply["code"], "invalid_token", "{reply}");
    }
    Ok(())
}

/// The refresh endpoint: a new token for the token's own session, never for another, never after DELETE.
#[tokio::test]
async fn refresh_needs_the_sessions_own_live_token() -> anyhow::Result<()> {
    let edge = start(&[]).await?;
    let http = reqwest::Client::new();
    let a = register(&http, &edge.base).await?;
    let b = register(&http, &edge.base).await?;
    let r = refresh(&edge.base, &a.session_id, &a.token).await?;
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await?;
    assert!(body["token"].as_str().unwrap().starts_with("v1.default."));
    assert!(body["expires_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        refresh(&edge.base, &b.session_id, &a.token).await?.status(),
        403
    );
    assert_eq!(refresh(&edge.base, &a.session_id, "").await?.status(), 401);
    let deleted = http
        .delete(format!("{}/v1/sessions/{}", edge.base, a.session_id))
        .bearer_auth(&a.token)
        .send()
        .await?;
    assert_eq!(deleted.status(), 204);
    let r = refresh(&edge.base, &a.session_id, &a.token).await?;
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<serde_json::Value>().await?["message"],
        "session token revoked"
    );
    Ok(())
}

fn from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(Some(ip.parse().unwrap()))
        .build()
        .unwrap()
}

/// Registrations per IP: past the limit 429 with Retry-After, while another address still registers.
#[tokio::test]
async fn registrations_past_the_per_ip_limit_get_429_and_others_are_served() -> anyhow::Result<()> {
    let edge = start(&[("CES_LIMIT_REGISTRATIONS_PER_MIN", "3")]).await?;
    let flood = from("127.0.0.1");
    for _ in 0..3 {
        register(&flood, &edge.base).await?;
    }
    let r = flood
        .post(format!("{}/v1/sessions", edge.base))
        .send()
        .await?;
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"].to_str()?.parse()?;
    assert!((1..=20).contains(&retry), "retry after {retry} s");
    assert_eq!(
        r.json::<serde_json::Value>().await?["error"],
        "rate_limited"
    );
    register(&from("127.0.0.2"), &edge.base).await?;
    Ok(())
}

/// Connection attempts per IP: past the limit the handshake gets 429 before any token or Redis work; another
/// address is not limited.
#[tokio::test]
async fn connection_attempts_past_the_per_ip_limit_get_429() -> anyhow::Result<()> {
    let edge = start(&[("CES_LIMIT_CONNECTS_PER_MIN", "2")]).await?;
    let reg = register(&reqwest::Client::new(), &edge.base).await?;
    let url = ws_url(&edge.base, &reg.token);
    let mut first = WsClient::connect(&url).await?;
    assert_eq!(
        first.next_json(Duration::from_secs(5)).await?.unwrap()["type"],
        "welcome"
    );
    first.close().await;
    assert_eq!(
        handshake_status(&url).await?,
        None,
        "second attempt admitted"
    );
    assert_eq!(handshake_status(&url).await?, Some(429));
    let other = from("127.0.0.2")
        .get(format!("{}/v1/ws?token={}", edge.base, reg.token))
        .send()
        .await?;
    assert_ne!(other.status(), 429, "another address is not limited");
    Ok(())
}

/// A socket that floods is closed with 4029; its neighbour keeps being served.
#[tokio::test]
async fn an_inbound_flood_is_closed_with_4029() -> anyhow::Result<()> {
    let edge = start(&[("CES_LIMIT_MESSAGES_PER_SEC", "5")]).await?;
    let mut calm = connected(&edge).await?;
    let mut flood = connected(&edge).await?;
    for _ in 0..20 {
        if flood.send_text(r#"{"type":"ping"}"#).await.is_err() {
            break;
        }
    }
    assert_eq!(
        flood.ending(Duration::from_secs(5)).await,
        Some(Ending::Closed(4029))
    );
    calm.send_text(r#"{"type":"ping"}"#).await?;
    assert_eq!(
        calm.next_json(Duration::from_secs(5)).await?.unwrap()["type"],
        "pong"
    );
    Ok(())
}

/// A full node answers 503 with Retry-After before the upgrade, and admits again once a socket leaves.
#[tokio::test]
async fn a_full_node_refuses_new_sockets_with_503() -> anyhow::Result<()> {
    let edge = start(&[("CES_MAX_CONNECTIONS", "1")]).await?;
    let first = connected(&edge).await?;
    let reg = register(&reqwest::Client::new(), &edge.base).await?;
    let url = ws_url(&edge.base, &reg.token);
    assert_eq!(handshake_status(&url).await?, Some(503));
    first.close().await;
    let mut admitted = false;
    for _ in 0..50 {
        if handshake_status(&url).await?.is_none() {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(admitted, "a socket is admitted once the node has room");
    Ok(())
}

async fn register_as(base: &str, forwarded_for: &str) -> anyhow::Result<u16> {
    Ok(reqwest::Client::new()
        .post(format!("{base}/v1/sessions"))
        .header("x-forwarded-for", forwarded_for)
        .send()
        .await?
        .status()
        .as_u16())
}

/// Behind a trusted proxy the limits apply per client named in `X-Forwarded-For`; from anyone else the header is
/// ignored, so a client cannot dodge its limit by inventing addresses.
#[tokio::test]
async fn per_ip_limits_follow_x_forwarded_for_only_from_trusted_proxies() -> anyhow::Result<()> {
    let trusting = start(&[
        ("CES_LIMIT_REGISTRATIONS_PER_MIN", "2"),
        ("CES_TRUSTED_PROXIES", "127.0.0.1"),
    ])
    .await?;
    for _ in 0..2 {
        assert_eq!(register_as(&trusting.base, "9.9.9.1").await?, 201);
    }
    assert_eq!(register_as(&trusting.base, "9.9.9.1").await?, 429);
    assert_eq!(
        register_as(&trusting.base, "9.9.9.2").await?,
        201,
        "another client behind the proxy"
    );

    // Connection attempts too.
    let trusting = start(&[
        ("CES_LIMIT_CONNECTS_PER_MIN", "1"),
        ("CES_TRUSTED_PROXIES", "127.0.0.1"),
    ])
    .await?;
    let reg = register(&reqwest::Client::new(), &trusting.base).await?;
    let url = ws_url(&trusting.base, &reg.token);
    let handshake = |client: &'static str| {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
        let mut request = url.as_str().into_client_request().unwrap();
        request
            .headers_mut()
            .insert("x-forwarded-for", client.parse().unwrap());
        async move {
            match tokio_tungstenite::connect_async(request).await {
                Ok(_) => None,
                Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Some(r.status().as_u16()),
                Err(e) => panic!("{e}"),
            }
        }
    };
    assert_eq!(handshake("9.9.9.1").await, None);
    assert_eq!(handshake("9.9.9.1").await, Some(429));
    assert_eq!(
        handshake("9.9.9.2").await,
        None,
        "another client behind the proxy"
    );

    let wary = start(&[("CES_LIMIT_REGISTRATIONS_PER_MIN", "2")]).await?;
    let statuses = [
        register_as(&wary.base, "9.9.9.1").await?,
        register_as(&wary.base, "9.9.9.2").await?,
        register_as(&wary.base, "9.9.9.3").await?,
    ];
    assert_eq!(
        statuses,
        [201, 201, 429],
        "untrusted X-Forwarded-For is ignored"
    );
    Ok(())
}

/// With an allowlist, a browser page of another origin cannot open a socket; listed origins and clients that send
/// no `Origin` (native apps) can.
#[tokio::test]
async fn sockets_from_unlisted_browser_origins_get_403() -> anyhow::Result<()> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let edge = start(&[("CES_ALLOWED_ORIGINS", "https://app.example.com")]).await?;
    let reg = register(&reqwest::Client::new(), &edge.base).await?;
    let url = ws_url(&edge.base, &reg.token);
    let with_origin = |origin: &str| {
        let mut request = url.as_str().into_client_request().unwrap();
        request
            .headers_mut()
            .insert("origin", origin.parse().unwrap());
        request
    };
    match tokio_tungstenite::connect_async(with_origin("https://evil.example.net")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
        other => panic!("expected 403, got {:?}", other.map(|_| ())),
    }
    let (mut ok, _) =
        tokio_tungstenite::connect_async(with_origin("https://app.example.com")).await?;
    futures::SinkExt::close(&mut ok).await?;
    assert_eq!(
        handshake_status(&url).await?,
        None,
        "no Origin: not a browser"
    );
    Ok(())
}
