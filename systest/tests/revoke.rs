//! Operator revocation: `cesctl session revoke <id>`, run as a process, closes a session without its token through
//! Redis, with the same code as the token holder's `DELETE /v1/sessions/{id}` (`ces_runtime::session`). Two edges
//! in-process on a real `redis-server`; the socket is on the edge the test did not name to `cesctl` (it names
//! none: it never talks to an edge).

mod common;

use std::time::Duration;

use ces_protocol::keys::SessionId;
use ces_systest::Redis;
use ces_systest::client::{Ending, Registered, handshake_status, register, ws_url};
use fred::interfaces::{ClientLike as _, HashesInterface as _, KeysInterface as _};
use serde_json::Value;

use common::{cesctl, connect, text};

/// `POST /v1/sessions/{id}/refresh` at `edge` with the session's token: status and JSON body.
async fn refresh(
    http: &reqwest::Client,
    edge: &str,
    reg: &Registered,
) -> anyhow::Result<(u16, Value)> {
    let resp = http
        .post(format!("{edge}/v1/sessions/{}/refresh", reg.session_id))
        .bearer_auth(&reg.token)
        .send()
        .await?;
    Ok((resp.status().as_u16(), resp.json().await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_revokes_a_session_on_whichever_edge_holds_it() -> anyhow::Result<()> {
    ces_systest::init_logs();
    let redis = Redis::start().await?;
    let a = common::start_edge(&redis.url(), "edge-a", &[]).await?;
    let b = common::start_edge(&redis.url(), "edge-b", &[]).await?;
    let http = reqwest::Client::new();
    // Registered at edge a, connected to edge b; a second session stays on edge a.
    let target = register(&http, &a.base).await?;
    let bystander = register(&http, &a.base).await?;
    let idle = register(&http, &a.base).await?;
    let (mut ws, welcome) = connect(&ws_url(&b.base, &target.token)).await?;
    assert_eq!(welcome["node"], "edge-b", "{welcome}");
    let (mut other, _) = connect(&ws_url(&a.base, &bystander.token)).await?;
    let url = redis.url();
    let env = [("CES_REDIS_URL", url.as_str())];

    let o = cesctl(
        &[
            "session",
            "revoke",
            &target.session_id,
            "--token-ttl-secs",
            "120",
        ],
        &env,
        "",
    )
    .await?;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    let prefix = format!(
        "revoked session {}: sockets and refreshes are refused for 120 s; connection edge-b/",
        target.session_id
    );
    assert!(
        out.starts_with(&prefix) && out.ends_with(" was told to close (4003 session closed)\n"),
        "{out}"
    );

    // The socket on edge b is closed with 4003 within a second of the command's end.
    assert_eq!(
        ws.ending(Duration::from_secs(1)).await,
        Some(Ending::Closed(4003))
    );
    // Its token is refused everywhere: a refresh answers 401 revoked, a new socket 401.
    for edge in [&a.base, &b.base] {
        let (status, body) = refresh(&http, edge, &target).await?;
        assert_eq!(status, 401, "{edge}: {body}");
        assert_eq!(body["error"], "unauthorized");
        assert_eq!(body["message"], "session token revoked");
        assert_eq!(
            handshake_status(&ws_url(edge, &target.token)).await?,
            Some(401),
            "{edge}"
        );
    }
    // The tombstone is the DELETE's: status closed, no holder, kept as long as a token lives (120 s here).
    let client = ces_runtime::redis::builder(&url)?.build()?;
    client.init().await?;
    let key = SessionId::parse(&target.session_id)?.session_key();
    let status: Option<String> = client.hget(&key, "status").await?;
    let conn: Option<String> = client.hget(&key, "conn").await?;
    let ttl_ms: i64 = client.pttl(&key).await?;
    assert_eq!((status.as_deref(), conn), (Some("closed"), None));
    assert!((110_000..=120_000).contains(&ttl_ms), "{ttl_ms}");

    // The other session is untouched.
    assert_eq!(other.ending(Duration::from_millis(300)).await, None);
    assert_eq!(refresh(&http, &a.base, &bystander).await?.0, 200);

    // A session nobody holds is revoked too (nobody to tell); JSON output; the token comes through stdin to watch.
    let o = cesctl(&["session", "revoke", &idle.session_id, "--json"], &env, "").await?;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let j: Value = serde_json::from_slice(&o.stdout)?;
    assert_eq!(j["session_id"], idle.session_id.as_str());
    assert_eq!(j["holder"], Value::Null);
    assert_eq!(j["refused_for_secs"], 900);
    let edge = [("CES_EDGE_URL", b.base.as_str())];
    let o = cesctl(
        &["watch", "--token-stdin"],
        &edge,
        &format!("{}\n", idle.token),
    )
    .await?;
    // Refused, asked once more (a fresh token might help), refused again: over.
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        text(&o.stderr),
        "refused: HTTP 401; reconnecting\nrefused: HTTP 401\ncesctl: stopped: unauthorized\n"
    );
    let _ = client.quit().await;
    other.close().await;
    a.stop().await?;
    b.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_needs_a_reachable_redis_and_its_password_stays_off_the_command_line()
-> anyhow::Result<()> {
    ces_systest::init_logs();
    let cert = ces_systest::tls::TestCert::new()?;
    let password = "revoke-test-password";
    let redis = Redis::start_secured(&cert, "ces", password).await?;
    let secure = redis.secure_url().expect("secured");
    let ca = cert.ca_file().display().to_string();
    let tls = [("CES_REDIS_TLS_CA_FILE", ca.as_str())];
    let api_key = "an-api-key-of-at-least-32-bytes-for-the-test";
    let edge = common::start_edge(
        &secure,
        "edge-tls",
        &[
            ("CES_REDIS_TLS_CA_FILE", ca.clone()),
            ("CES_REGISTER_API_KEYS", api_key.to_owned()),
        ],
    )
    .await?;
    // Registration is protected: `cesctl session create` takes the key from stdin; without it the edge refuses.
    let at_edge = [("CES_EDGE_URL", edge.base.as_str())];
    let o = cesctl(&["session", "create"], &at_edge, "").await?;
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).starts_with("cesctl: registration refused with 401 Unauthorized: "),
        "{}",
        text(&o.stderr)
    );
    let o = cesctl(
        &["session", "create", "--credential-stdin"],
        &at_edge,
        &format!("{api_key}\n"),
    )
    .await?;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let reg: Registered = serde_json::from_slice(&o.stdout)?;
    let (mut ws, _) = connect(&ws_url(&edge.base, &reg.token)).await?;

    // The URL with its password on the command line is refused before anything is contacted.
    let o = cesctl(
        &["session", "revoke", &reg.session_id, "--redis-url", &secure],
        &tls,
        "",
    )
    .await?;
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
    assert_eq!(
        err,
        "cesctl: --redis-url carries a password, which is refused on the command line: every user of this \
         machine can read the command line (ps, /proc) and shell history keeps it; set CES_REDIS_URL or pipe \
         it to --redis-url-stdin\n"
    );
    assert_eq!(
        ws.ending(Duration::from_millis(300)).await,
        None,
        "not revoked"
    );

    // Through stdin it works, over TLS as the ACL user.
    let o = cesctl(
        &["session", "revoke", &reg.session_id, "--redis-url-stdin"],
        &tls,
        &format!("{secure}\n"),
    )
    .await?;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(!text(&o.stdout).contains(password));
    assert_eq!(
        ws.ending(Duration::from_secs(1)).await,
        Some(Ending::Closed(4003))
    );

    // Unreachable Redis: exit 1, the URL named without its password. Bad input: exit 2.
    let down = format!(
        "redis://ces:{password}@127.0.0.1:{}",
        ces_systest::free_port()
    );
    let o = cesctl(
        &["session", "revoke", &reg.session_id],
        &[("CES_REDIS_URL", down.as_str())],
        "",
    )
    .await?;
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.starts_with(&format!(
            "cesctl: cannot reach Redis at {}",
            down.replace(password, "***")
        )),
        "{err}"
    );
    assert!(!err.contains(password), "{err}");
    for (args, needle) in [
        (
            vec!["session", "revoke", "not a session id"],
            "session id contains ' '",
        ),
        (
            vec!["session", "revoke", "s-1", "--token-ttl-secs", "5"],
            "CES_TOKEN_TTL_SECS=5 is out of range 10..=604800",
        ),
    ] {
        let o = cesctl(&args, &[], "").await?;
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(text(&o.stderr).contains(needle), "{}", text(&o.stderr));
    }
    edge.stop().await
}
