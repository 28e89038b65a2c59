//! The `ces-edge` binary refuses bad configuration with exit code 64 and lists every problem.

use std::process::Command;

#[test]
fn bad_configuration_exits_64_listing_every_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_ces-edge"))
        .env_clear()
        .env("CES_TOKEN_SECRET", "too-short")
        .env("CES_EDGE_LISTEN", "not-an-address")
        .env("CES_REDIS_URL", "localhost:6379")
        .env("CES_WS_PING_INTERVAL_MS", "ten")
        .output()
        .expect("run ces-edge");
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "CES_TOKEN_SECRET",
        "CES_EDGE_LISTEN",
        "CES_REDIS_URL",
        "CES_WS_PING_INTERVAL_MS",
    ] {
        assert!(
            stderr.contains(needle),
            "{needle} not reported in:\n{stderr}"
        );
    }
}

/// Probes and metrics on the public port would show them to the internet: refused before anything is bound.
#[test]
fn an_internal_listener_on_the_public_port_exits_64() {
    let out = Command::new(env!("CARGO_BIN_EXE_ces-edge"))
        .env_clear()
        .env("CES_TOKEN_SECRET", "startup-test-secret-0123456789abcdef")
        .env("CES_REGISTER_OPEN", "true")
        .env("CES_EDGE_LISTEN", "0.0.0.0:18443")
        .env("CES_EDGE_INTERNAL_LISTEN", "127.0.0.1:18443")
        .output()
        .expect("run ces-edge");
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("CES_EDGE_INTERNAL_LISTEN=127.0.0.1:18443")
            && stderr.contains("of their own"),
        "{stderr}"
    );
}

/// A Redis that may evict keys would silently undo revocations and dedup: the edge refuses it unless told to warn.
/// One that will not say (`INFO` denied to the edge's user) is not checked: the edge starts and says so.
#[tokio::test]
async fn a_redis_that_evicts_keys_is_refused_unless_the_operator_says_warn() -> anyhow::Result<()> {
    let redis = ces_systest::Redis::start().await?;
    let admin = ces_runtime::redis::builder(&redis.url())?.build()?;
    fred::interfaces::ClientLike::init(&admin).await?;
    let _: fred::types::Value = fred::interfaces::ClientLike::custom(
        &admin,
        fred::types::CustomCommand::new_static("CONFIG", fred::types::ClusterHash::Random, false),
        vec!["SET", "maxmemory-policy", "allkeys-lru"],
    )
    .await?;
    let run_as = |url: String, eviction: &'static str| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_ces-edge"));
        command
            .env_clear()
            .env("CES_TOKEN_SECRET", "startup-test-secret-0123456789abcdef")
            .env("CES_REGISTER_OPEN", "true")
            .env("CES_REDIS_URL", url)
            .env(
                "CES_EDGE_LISTEN",
                format!("127.0.0.1:{}", ces_systest::free_port()),
            )
            .env(
                "CES_EDGE_INTERNAL_LISTEN",
                format!("127.0.0.1:{}", ces_systest::free_port()),
            )
            .env("CES_LOG_FORMAT", "text")
            .env("CES_REDIS_EVICTION", eviction)
            .kill_on_drop(true);
        command
    };
    let run = |eviction: &'static str| run_as(redis.url(), eviction);
    let out =
        tokio::time::timeout(std::time::Duration::from_secs(20), run("refuse").output()).await??;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("maxmemory-policy must be noeviction") && stderr.contains("allkeys-lru"),
        "{stderr}"
    );
    // Told to warn, it starts and keeps running.
    let mut child = run("warn")
        .stderr(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()?;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert!(
        child.try_wait()?.is_none(),
        "the edge runs with CES_REDIS_EVICTION=warn"
    );
    child.kill().await?;

    // A user that may not run INFO: nothing to check with, so the edge starts and warns.
    let _: fred::types::Value = fred::interfaces::ClientLike::custom(
        &admin,
        fred::types::CustomCommand::new_static("ACL", fred::types::ClusterHash::Random, false),
        vec![
            "SETUSER",
            "noinfo",
            "on",
            ">noinfo-password",
            "~*",
            "&*",
            "+@all",
            "-info",
        ],
    )
    .await?;
    let url = redis
        .url()
        .replace("redis://", "redis://noinfo:noinfo-password@");
    let mut child = run_as(url, "refuse")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()?;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert!(
        child.try_wait()?.is_none(),
        "the edge runs when Redis will not tell its eviction policy"
    );
    child.kill().await?;
    let out = child.wait_with_output().await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("eviction not checked"), "{stderr}");
    Ok(())
}

/// `--check-config` validates the environment without binding or connecting, and names every `CES_*` variable it
/// does not read.
#[test]
fn check_config_validates_and_names_unread_variables_without_binding() {
    let run = |env: &[(&str, &str)]| {
        Command::new(env!("CARGO_BIN_EXE_ces-edge"))
            .arg("--check-config")
            .env_clear()
            .envs(env.iter().copied())
            .output()
            .expect("run ces-edge --check-config")
    };
    let ok = run(&[
        ("CES_TOKEN_SECRET", "startup-test-secret-0123456789abcdef"),
        ("CES_REGISTER_OPEN", "true"),
        ("CES_REDIS_URL", "redis://127.0.0.1:1"),
        ("CES_KAFKA_TOPICS", "ces.events"),
        ("CES_WS_PING_INTERVAL", "30000"),
    ]);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&ok.stdout),
        "unread CES_KAFKA_TOPICS\nunread CES_WS_PING_INTERVAL\n"
    );
    let bad = run(&[("CES_TOKEN_SECRET", "short"), ("CES_REGISTER_OPEN", "true")]);
    assert_eq!(bad.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("CES_TOKEN_SECRET"));
}
