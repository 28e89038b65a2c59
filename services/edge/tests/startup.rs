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
