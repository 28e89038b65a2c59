//! The live demo page at `/demo/`, served when `CES_DEMO_DIR` is set (local use and demos; docs/configuration.md).
//!
//! Exactly two files are read from that directory, once, at start: `index.html` (the page) and `ces-client.js`
//! (the browser build of the TypeScript client). They are held in memory and served from there, so nothing else
//! in the directory is ever reachable and no request path is ever joined to a file name: there is nothing to
//! traverse. A missing or unreadable file refuses the start, naming the file.
//!
//! The page's Content-Security-Policy allows scripts and styles from the edge itself only, plus the page's own
//! inline `<script>` and `<style>` elements by their SHA-256 hashes, computed here from the file that is served:
//! an edited page is allowed as it is, and nothing injected into it runs. Sockets may go to the same origin (and
//! `ws:`/`wss:`, for a browser that does not count a same-host socket as `'self'`).

use std::path::Path;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use base64::Engine as _;
use bytes::Bytes;
use sha2::{Digest as _, Sha256};

/// The page, as `CES_DEMO_DIR/index.html`.
pub const PAGE_FILE: &str = "index.html";

/// The browser client the page imports (`./ces-client.js`), as `CES_DEMO_DIR/ces-client.js`.
pub const SCRIPT_FILE: &str = "ces-client.js";

/// The demo page and its script, read once at start.
#[derive(Clone)]
pub struct DemoPage {
    page: Bytes,
    script: Bytes,
    /// The `Content-Security-Policy` of both answers.
    csp: HeaderValue,
}

impl std::fmt::Debug for DemoPage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DemoPage")
            .field("page_bytes", &self.page.len())
            .field("script_bytes", &self.script.len())
            .field("csp", &self.csp)
            .finish()
    }
}

impl DemoPage {
    /// Reads [`PAGE_FILE`] and [`SCRIPT_FILE`] from `dir`; the error names the file that could not be read.
    pub fn load(dir: &Path) -> Result<Self, String> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path)
                .map(Bytes::from)
                .map_err(|e| format!("cannot read {name} ({}): {e}", path.display()))
        };
        let (page, script) = (read(PAGE_FILE), read(SCRIPT_FILE));
        let (page, script) = match (page, script) {
            (Ok(page), Ok(script)) => (page, script),
            (page, script) => {
                let problems: Vec<String> =
                    [page.err(), script.err()].into_iter().flatten().collect();
                return Err(problems.join("; "));
            }
        };
        let html =
            std::str::from_utf8(&page).map_err(|e| format!("{PAGE_FILE} is not UTF-8: {e}"))?;
        let csp = HeaderValue::from_str(&content_security_policy(html))
            .map_err(|e| format!("{PAGE_FILE}: {e}"))?;
        Ok(Self { page, script, csp })
    }

    /// `GET /demo` (308 to `/demo/`), `GET /demo/` (the page) and `GET /demo/ces-client.js`; any other path under
    /// `/demo` is left to the router's 404.
    pub fn routes<S: Clone + Send + Sync + 'static>(&self) -> Router<S> {
        let page = self.clone();
        let script = self.clone();
        Router::new()
            .route("/demo", get(|| async { Redirect::permanent("/demo/") }))
            .route(
                "/demo/",
                get(move || async move { page.answer(&page.page, "text/html; charset=utf-8") }),
            )
            .route(
                "/demo/ces-client.js",
                get(move || async move {
                    script.answer(&script.script, "text/javascript; charset=utf-8")
                }),
            )
    }

    fn answer(&self, body: &Bytes, content_type: &'static str) -> Response {
        (
            [
                (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
                // Revalidated on every load: a rebuilt page or client is picked up at once.
                (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
                (
                    header::X_CONTENT_TYPE_OPTIONS,
                    HeaderValue::from_static("nosniff"),
                ),
                (header::CONTENT_SECURITY_POLICY, self.csp.clone()),
            ],
            body.clone(),
        )
            .into_response()
    }
}

/// The policy for `html`: same-origin scripts, styles and sockets, and the page's own inline elements by hash.
fn content_security_policy(html: &str) -> String {
    let hashes = |tag| -> String {
        inline_bodies(html, tag)
            .iter()
            .map(|body| {
                let digest = Sha256::digest(body.as_bytes());
                let b64 = base64::engine::general_purpose::STANDARD.encode(digest);
                format!(" 'sha256-{b64}'")
            })
            .collect()
    };
    format!(
        "default-src 'none'; script-src 'self'{}; style-src 'self'{}; connect-src 'self' ws: wss:; \
         img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        hashes("script"),
        hashes("style")
    )
}

/// The text of every inline `<tag ...>` element of `html` (for `script`, those without a `src`), as a browser
/// hashes it: everything between the start tag's `>` and the next `</tag`. Comments (`<!-- -->`) are skipped, so a
/// comment that mentions a tag does not start an element.
fn inline_bodies<'a>(html: &'a str, tag: &str) -> Vec<&'a str> {
    // ASCII lower-casing keeps byte offsets, so positions found in `lower` index `html` as well.
    let lower = html.to_ascii_lowercase();
    let (open, close) = (format!("<{tag}"), format!("</{tag}"));
    let mut bodies = Vec::new();
    let mut at = 0;
    while let Some(found) = lower[at..].find(&open) {
        let start = at + found;
        if let Some(comment) = lower[at..start].find("<!--") {
            match lower[at + comment + 4..].find("-->") {
                Some(end) => at += comment + 4 + end + 3,
                None => break,
            }
            continue;
        }
        let after_name = start + open.len();
        // `<scripts>` or `<style-x>` is another element.
        if !lower[after_name..].starts_with(|c: char| c == '>' || c.is_ascii_whitespace()) {
            at = after_name;
            continue;
        }
        let Some(gt) = lower[after_name..].find('>') else {
            break;
        };
        let attributes = &lower[after_name..after_name + gt];
        let body_start = after_name + gt + 1;
        let Some(end) = lower[body_start..].find(&close) else {
            break;
        };
        if !(tag == "script" && attributes.contains("src=")) {
            bodies.push(&html[body_start..body_start + end]);
        }
        at = body_start + end + close.len();
    }
    bodies
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_elements_are_found_and_external_scripts_skipped() {
        let html = "<!-- a <style> and a <script> named --><html><head><STYLE>p{}</STYLE><!-- <script>x</script> --><script src=\"x.js\"></script>\
                    <scripts>no</scripts><script type=\"module\">\nimport './a.js';\n</Script>\
                    <style media=\"print\">b{}</style></head></html>";
        assert_eq!(inline_bodies(html, "script"), vec!["\nimport './a.js';\n"]);
        assert_eq!(inline_bodies(html, "style"), vec!["p{}", "b{}"]);
        assert!(inline_bodies("<p>no elements", "script").is_empty());
        assert!(inline_bodies("<!-- <script>x</script>", "script").is_empty());
        assert!(
            inline_bodies("<script>unterminated", "script").is_empty(),
            "a body without its end tag is not a script a browser would run as written"
        );
    }

    #[test]
    fn the_policy_allows_the_pages_own_inline_code_by_hash_and_nothing_else_inline() {
        // echo -n 'alert(1)' | openssl dgst -sha256 -binary | base64
        let csp = content_security_policy("<script>alert(1)</script><style></style>");
        assert!(
            csp.contains(
                "script-src 'self' 'sha256-bhHHL3z2vDgxUt0W3dWQOrprscmda2Y5pLsLg4GF+pI=';"
            ),
            "{csp}"
        );
        // The hash of the empty string: an empty style element.
        assert!(
            csp.contains("style-src 'self' 'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=';"),
            "{csp}"
        );
        assert!(csp.contains("connect-src 'self' ws: wss:;"), "{csp}");
        assert!(csp.starts_with("default-src 'none';"), "{csp}");
        assert!(!csp.contains("unsafe"), "{csp}");
    }

    #[test]
    fn a_missing_file_is_named() {
        let dir = std::env::temp_dir().join(format!("ces-demo-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(PAGE_FILE), "<p>hi</p>").unwrap();
        let _ = std::fs::remove_file(dir.join(SCRIPT_FILE));
        let err = DemoPage::load(&dir).unwrap_err();
        assert!(
            err.contains("ces-client.js") && !err.contains("index.html"),
            "{err}"
        );
        std::fs::write(dir.join(SCRIPT_FILE), "export {}").unwrap();
        let page = DemoPage::load(&dir).unwrap();
        assert_eq!(&page.page[..], b"<p>hi</p>");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
