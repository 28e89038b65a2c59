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
