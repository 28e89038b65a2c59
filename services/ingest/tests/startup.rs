//! The `ces-ingest` binary refuses bad configuration with exit code 64 and lists every problem.

use std::process::Command;

#[test]
fn bad_configuration_exits_64_listing_every_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_ces-ingest"))
        .env_clear()
        .env("CES_KAFKA_TOPICS", "ces.events,ces.events.dlq")
        .env("CES_BATCH_MAX", "0")
        .env("CES_MAX_RECORD_BYTES", "lots")
        .env("CES_LOG_FORMAT", "xml")
        .output()
        .expect("run ces-ingest");
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "CES_DLQ_TOPIC",
        "CES_BATCH_MAX",
        "CES_MAX_RECORD_BYTES",
        "CES_LOG_FORMAT",
    ] {
        assert!(
            stderr.contains(needle),
            "{needle} not reported in:\n{stderr}"
        );
    }
}

#[test]
fn a_bad_schema_directory_exits_64_naming_every_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ok.json"), r#"{"type":"object"}"#).unwrap();
    std::fs::write(dir.path().join("broken.json"), "{").unwrap();
    std::fs::write(dir.path().join("wrong.json"), r#"{"type":"nope"}"#).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ces-ingest"))
        .env_clear()
        .env("CES_SCHEMA_DIR", dir.path())
        .env("CES_INGEST_HTTP_ADDR", "127.0.0.1:0")
        .env("CES_LOG_FORMAT", "text")
        .output()
        .expect("run ces-ingest");
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in ["broken.json: not JSON", "wrong.json: invalid schema"] {
        assert!(
            stderr.contains(needle),
            "{needle} not reported in:\n{stderr}"
        );
    }
    assert!(!stderr.contains("ok.json"), "{stderr}");
}

/// `--check-config` validates the environment without connecting to anything, and names every `CES_*` variable
/// it does not read: what a deployment check runs on each container's environment.
#[test]
fn check_config_validates_and_names_unread_variables_without_connecting() {
    let run = |env: &[(&str, &str)]| {
        Command::new(env!("CARGO_BIN_EXE_ces-ingest"))
            .arg("--check-config")
            .env_clear()
            .envs(env.iter().copied())
            .output()
            .expect("run ces-ingest --check-config")
    };
    // Nothing listens on port 1: a check that connected would fail or hang.
    let ok = run(&[
        ("CES_KAFKA_BROKERS", "127.0.0.1:1"),
        ("CES_REDIS_URL", "redis://127.0.0.1:1"),
        ("CES_KAFKA_PROP_SASL_USERNAME", "u"),
        ("CES_EDGE_LISTEN", "0.0.0.0:8080"),
        ("CES_BATCH_MAXX", "10"),
    ]);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&ok.stdout),
        "unread CES_BATCH_MAXX\nunread CES_EDGE_LISTEN\n",
        "a typo and an edge setting; the Kafka passthrough is read"
    );
    let bad = run(&[("CES_BATCH_MAX", "0")]);
    assert_eq!(bad.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("CES_BATCH_MAX"));
}
