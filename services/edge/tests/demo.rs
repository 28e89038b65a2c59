//! The demo page (`CES_DEMO_DIR`): absent unless configured, then exactly three routes with their security
//! headers and nothing else from the directory; a directory missing one of its two files refuses the start.

mod common;

use std::path::Path;

use common::start;
use reqwest::StatusCode;

const PAGE: &str =
    "<!doctype html><title>demo</title><script type=\"module\">import './ces-client.js';</script>";
const SCRIPT: &str = "export class CesClient {}";

/// A demo directory with the two files, and one more that must never be served.
fn demo_dir() -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("index.html"), PAGE)?;
    std::fs::write(dir.path().join("ces-client.js"), SCRIPT)?;
    std::fs::write(dir.path().join("secret.txt"), "not for the web")?;
    Ok(dir)
}

/// A client that shows redirects instead of following them.
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("{name} missing from {:?}", r.headers()))
}

#[tokio::test]
async fn without_a_demo_dir_every_demo_path_is_404() -> anyhow::Result<()> {
    let edge = start(&[]).await?;
    for path in ["/demo", "/demo/", "/demo/ces-client.js", "/demo/index.html"] {
        let r = http().get(format!("{}{path}", edge.base)).send().await?;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
    }
    Ok(())
}

#[tokio::test]
async fn the_demo_page_and_its_script_are_served_with_their_headers_and_nothing_else()
-> anyhow::Result<()> {
    let dir = demo_dir()?;
    let edge = start(&[("CES_DEMO_DIR", &dir.path().display().to_string())]).await?;
    let get = |path: &str| http().get(format!("{}{path}", edge.base)).send();

    let r = get("/demo").await?;
    assert_eq!(r.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(header(&r, "location"), "/demo/");

    // Read once at start: a change on disk is not served until the next start.
    std::fs::write(dir.path().join("index.html"), "changed")?;
    for (path, content_type, body) in [
        ("/demo/", "text/html; charset=utf-8", PAGE),
        (
            "/demo/ces-client.js",
            "text/javascript; charset=utf-8",
            SCRIPT,
        ),
    ] {
        let r = get(path).await?;
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert_eq!(header(&r, "content-type"), content_type, "{path}");
        assert_eq!(header(&r, "cache-control"), "no-cache", "{path}");
        assert_eq!(header(&r, "x-content-type-options"), "nosniff", "{path}");
        let csp = header(&r, "content-security-policy").to_owned();
        assert!(csp.starts_with("default-src 'none';"), "{csp}");
        assert!(csp.contains("connect-src 'self' ws: wss:;"), "{csp}");
        // The page's one inline module script, by its hash; no inline code otherwise.
        assert!(csp.contains("script-src 'self' 'sha256-"), "{csp}");
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(r.text().await?, body, "{path}");
    }

    for path in [
        "/demo/secret.txt",
        "/demo/index.html",
        "/demo/../Cargo.toml",
        "/demo/%2e%2e/secret.txt",
        "/demo//ces-client.js",
        "/demo/ces-client.js/",
    ] {
        let r = get(path).await?;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
    }
    // The API is where it was.
    let r = http()
        .post(format!("{}/v1/sessions", edge.base))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::CREATED);
    Ok(())
}

/// The binary with `CES_DEMO_DIR=dir` and an otherwise valid configuration.
fn run_edge(dir: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ces-edge"))
        .env_clear()
        .env("CES_TOKEN_SECRET", "startup-test-secret-0123456789abcdef")
        .env("CES_REGISTER_OPEN", "true")
        .env("CES_REDIS_URL", "redis://127.0.0.1:1")
        .env("CES_DEMO_DIR", dir)
        .output()
        .expect("run ces-edge")
}

#[test]
fn a_demo_dir_without_one_of_its_files_refuses_the_start_naming_it() -> anyhow::Result<()> {
    for (missing, present) in [
        ("ces-client.js", "index.html"),
        ("index.html", "ces-client.js"),
    ] {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join(present), "x")?;
        let out = run_edge(dir.path());
        assert_eq!(out.status.code(), Some(64), "{missing} missing");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("CES_DEMO_DIR") && stderr.contains(&format!("cannot read {missing}")),
            "{stderr}"
        );
        assert!(
            !stderr.contains(&format!("cannot read {present}")),
            "{stderr}"
        );
    }
    let out = run_edge(Path::new("/nonexistent/ces-demo"));
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot read index.html") && stderr.contains("cannot read ces-client.js"),
        "{stderr}"
    );
    Ok(())
}
