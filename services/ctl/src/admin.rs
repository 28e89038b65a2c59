//! `cesctl session show`, `cesctl session list` and `cesctl nodes`: clients of an edge's admin API
//! (docs/admin-openapi.json), on its internal listener (`--admin-url`, `CES_ADMIN_URL`, by default
//! `http://127.0.0.1:9081`). The admin token comes from `CES_ADMIN_TOKEN` or `--admin-token-stdin`, never from the
//! command line ([`crate::secrets`]).
//!
//! `session list` pages through every cursor the API returns and drops repeated ids: over a whole listing `SCAN`
//! returns each session at least once, and may return one twice while Redis resizes its table.

use std::collections::HashSet;
use std::io::Write as _;
use std::time::Duration;

use anyhow::{Context as _, bail};
use ces_runtime::config::{Env, Source as _};
use clap::Args;
use serde_json::Value;

use crate::secrets::{self, ADMIN_TOKEN, ADMIN_URL};
use crate::table;

/// Default admin API URL: an edge's internal listener at its default address.
pub(crate) const DEFAULT_ADMIN_URL: &str = "http://127.0.0.1:9081";

/// Bound on each request: an edge that does not answer fails the command, never hangs it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the admin API is and how to authenticate, shared by its commands.
#[derive(Debug, Args)]
pub(crate) struct AdminArgs {
    /// An edge's internal listener, without a password [env: CES_ADMIN_URL] [default: http://127.0.0.1:9081].
    #[arg(long)]
    admin_url: Option<String>,
    /// Refused: the admin token goes in CES_ADMIN_TOKEN or on stdin (--admin-token-stdin).
    #[arg(long, hide = true)]
    admin_token: Option<String>,
    /// Read the admin token from stdin (else CES_ADMIN_TOKEN).
    #[arg(long)]
    admin_token_stdin: bool,
}

/// A connection to the admin API.
#[derive(Debug)]
pub(crate) struct AdminApi {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl AdminApi {
    /// The API `args` name: the URL from the flag, else `CES_ADMIN_URL`, else [`DEFAULT_ADMIN_URL`]; the token from
    /// stdin or `CES_ADMIN_TOKEN` (a token flag is a usage error).
    pub(crate) fn from_args(args: &AdminArgs) -> anyhow::Result<Self> {
        let base = ADMIN_URL
            .resolve_url(
                args.admin_url.as_deref(),
                false,
                secrets::read_stdin,
                Env.get(ADMIN_URL.env),
            )?
            .unwrap_or_else(|| DEFAULT_ADMIN_URL.to_owned());
        let token = ADMIN_TOKEN.resolve(
            args.admin_token.as_deref(),
            args.admin_token_stdin,
            secrets::read_stdin,
            Env.get(ADMIN_TOKEN.env),
        )?;
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            token,
            http,
        })
    }

    /// `GET <path>` with `query`: the JSON answer of a 200; any other answer is an error naming its status and
    /// the API's error code and message (`401 unauthorized: ...`).
    async fn get(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<Value> {
        let url = reqwest::Url::parse_with_params(&format!("{}{path}", self.base), query)
            .with_context(|| format!("the admin URL {} is not a URL", self.base))?;
        self.send(self.http.get(url)).await
    }

    async fn send(&self, mut request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let resp = request
            .send()
            .await
            .with_context(|| format!("cannot reach the admin API at {}", self.base))?;
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        if status != reqwest::StatusCode::OK {
            bail!("{}", refusal(status.as_u16(), &body));
        }
        serde_json::from_str(&body).context("the admin API's answer is not JSON")
    }
}

/// The message for a refused request: `<status> <error code>: <message>` from a CES error body, else the status
/// and the body's first line.
fn refusal(status: u16, body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    match parsed.as_ref().and_then(|v| v["error"].as_str()) {
        Some(code) => {
            let message = parsed.as_ref().and_then(|v| v["message"].as_str());
            match message {
                Some(m) => format!("{status} {code}: {m}"),
                None => format!("{status} {code}"),
            }
        }
        None => {
            let first = body.lines().next().unwrap_or_default();
            format!("{status} {}", table::escape(first))
                .trim_end()
                .to_owned()
        }
    }
}

/// `cesctl session show <id>`: the session as the admin API shows it.
pub(crate) async fn show(api: &AdminApi, session: &str, json: bool) -> anyhow::Result<()> {
    let path = format!("/v1/admin/sessions/{session}");
    let detail = api.get(&path, &[]).await?;
    if json {
        println!("{detail}");
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    table::write(&mut out, &["FIELD", "VALUE"], &detail_rows(&detail))?;
    out.flush()?;
    Ok(())
}

/// The rows of `session show`'s table: one per field, the buffer as `<n> events, seq <first>..=<last>`, labels as
/// `k=v,...`; `-` for an unknown value.
fn detail_rows(detail: &Value) -> Vec<Vec<String>> {
    let fields = [
        "session_id",
        "status",
        "node",
        "connection",
        "created_at",
        "last_seen",
        "token_expires_at",
        "epoch",
        "last_seq",
        "last_ack",
    ];
    let mut rows: Vec<Vec<String>> = fields
        .iter()
        .map(|f| vec![(*f).to_owned(), cell(&detail[*f])])
        .collect();
    let buffer = &detail["buffer"];
    let events = buffer["events"].as_u64().unwrap_or(0);
    let range = match (buffer["first_seq"].as_u64(), buffer["last_seq"].as_u64()) {
        (Some(first), Some(last)) => format!(", seq {first}..={last}"),
        _ => String::new(),
    };
    rows.push(vec!["buffer".into(), format!("{events} events{range}")]);
    rows.push(vec!["labels".into(), labels_text(&detail["labels"])]);
    for f in ["user_agent", "ip"] {
        rows.push(vec![f.to_owned(), cell(&detail[f])]);
    }
    rows
}

/// A JSON value as a table cell: strings as they are, `-` for null or absent.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Labels as `k=v,k=v` (sorted, as the API gives them); `-` for none.
fn labels_text(labels: &Value) -> String {
    let Some(map) = labels.as_object().filter(|m| !m.is_empty()) else {
        return "-".to_owned();
    };
    map.iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect::<Vec<_>>()
        .join(",")
}

/// What `session list` asks for.
#[derive(Debug, Clone)]
pub(crate) struct ListFilter {
    /// `--label k=v`, repeatable.
    pub(crate) labels: Vec<String>,
    /// `--node N`.
    pub(crate) node: Option<String>,
    /// `--limit N`: the page size asked of the API.
    pub(crate) limit: u32,
}

/// The query of one page.
fn page_query(filter: &ListFilter, cursor: Option<&str>) -> Vec<(&'static str, String)> {
    let mut query: Vec<(&'static str, String)> =
        filter.labels.iter().map(|l| ("label", l.clone())).collect();
    if let Some(node) = &filter.node {
        query.push(("node", node.clone()));
    }
    query.push(("limit", filter.limit.to_string()));
    if let Some(cursor) = cursor {
        query.push(("cursor", cursor.to_owned()));
    }
    query
}

/// The sessions of `page` not in `seen` (which they join), and the next cursor.
fn take_page(
    page: &Value,
    seen: &mut HashSet<String>,
) -> anyhow::Result<(Vec<Value>, Option<String>)> {
    let sessions = page["sessions"]
        .as_array()
        .context("the admin API's page has no sessions array")?;
    let fresh = sessions
        .iter()
        .filter(|s| {
            s["session_id"]
                .as_str()
                .is_some_and(|id| seen.insert(id.to_owned()))
        })
        .cloned()
        .collect();
    Ok((fresh, page["cursor"].as_str().map(str::to_owned)))
}

/// `cesctl session list`: every page, each session once; JSON lines as they come, or one table at the end.
pub(crate) async fn list(api: &AdminApi, filter: &ListFilter, json: bool) -> anyhow::Result<()> {
    let mut seen = HashSet::new();
    let mut rows = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = api
            .get("/v1/admin/sessions", &page_query(filter, cursor.as_deref()))
            .await?;
        let (sessions, next) = take_page(&page, &mut seen)?;
        if json {
            let mut out = std::io::stdout().lock();
            for s in &sessions {
                writeln!(out, "{s}")?;
            }
            out.flush()?;
        } else {
            rows.extend(sessions.iter().map(summary_row));
        }
        match next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    if !json {
        let mut out = std::io::stdout().lock();
        table::write(
            &mut out,
            &["SESSION", "STATUS", "NODE", "LAST SEEN", "LABELS"],
            &rows,
        )?;
        out.flush()?;
    }
    Ok(())
}

fn summary_row(s: &Value) -> Vec<String> {
    vec![
        cell(&s["session_id"]),
        cell(&s["status"]),
        cell(&s["node"]),
        cell(&s["last_seen"]),
        labels_text(&s["labels"]),
    ]
}

/// `cesctl nodes`: every edge's heartbeat, as a table or one JSON object.
pub(crate) async fn nodes(api: &AdminApi, json: bool) -> anyhow::Result<()> {
    let answer = api.get("/v1/admin/nodes", &[]).await?;
    if json {
        println!("{answer}");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = answer["nodes"]
        .as_array()
        .context("the admin API's answer has no nodes array")?
        .iter()
        .map(node_row)
        .collect();
    let mut out = std::io::stdout().lock();
    table::write(
        &mut out,
        &[
            "NODE",
            "ALIVE",
            "LAST BEAT",
            "CONNECTIONS",
            "DRAINING",
            "STARTED",
            "VERSION",
        ],
        &rows,
    )?;
    out.flush()?;
    Ok(())
}

fn node_row(n: &Value) -> Vec<String> {
    let yes_no = |v: &Value| match v.as_bool() {
        Some(true) => "yes".to_owned(),
        Some(false) => "no".to_owned(),
        None => "-".to_owned(),
    };
    vec![
        cell(&n["node"]),
        yes_no(&n["alive"]),
        cell(&n["last_beat"]),
        cell(&n["connections"]),
        yes_no(&n["draining"]),
        cell(&n["started"]),
        cell(&n["version"]),
    ]
}

/// `--label k=v`: refused (usage) without a `=`.
pub(crate) fn label_arg(s: &str) -> Result<String, String> {
    match s.split_once('=') {
        Some((k, _)) if !k.is_empty() => Ok(s.to_owned()),
        _ => Err(format!("{s:?} is not key=value")),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn refusals_say_status_code_and_message() {
        assert_eq!(
            refusal(
                401,
                r#"{"error":"unauthorized","message":"an admin token is required"}"#
            ),
            "401 unauthorized: an admin token is required"
        );
        assert_eq!(refusal(404, r#"{"error":"not_found"}"#), "404 not_found");
        assert_eq!(refusal(404, ""), "404");
        assert_eq!(refusal(502, "bad gateway\nmore"), "502 bad gateway");
        assert_eq!(refusal(500, "\u{1b}[2J"), "500 \\u{1b}[2J");
    }

    #[test]
    fn pages_drop_sessions_already_seen() {
        let mut seen = HashSet::new();
        let page = json!({"sessions": [{"session_id": "a"}, {"session_id": "b"}], "cursor": "-/5"});
        let (fresh, next) = take_page(&page, &mut seen).unwrap();
        assert_eq!(fresh.len(), 2);
        assert_eq!(next.as_deref(), Some("-/5"));
        let page = json!({"sessions": [{"session_id": "b"}, {"session_id": "c"}, {"nope": 1}], "cursor": null});
        let (fresh, next) = take_page(&page, &mut seen).unwrap();
        assert_eq!(fresh, vec![json!({"session_id": "c"})]);
        assert_eq!(next, None);
        assert!(take_page(&json!({"cursor": null}), &mut seen).is_err());
    }

    #[test]
    fn the_page_query_carries_every_filter() {
        let filter = ListFilter {
            labels: vec!["team=blue".into(), "tier=gold".into()],
            node: Some("edge-b".into()),
            limit: 500,
        };
        assert_eq!(
            page_query(&filter, Some("-/9")),
            vec![
                ("label", "team=blue".to_owned()),
                ("label", "tier=gold".to_owned()),
                ("node", "edge-b".to_owned()),
                ("limit", "500".to_owned()),
                ("cursor", "-/9".to_owned()),
            ]
        );
        let bare = ListFilter {
            labels: vec![],
            node: None,
            limit: 100,
        };
        assert_eq!(page_query(&bare, None), vec![("limit", "100".to_owned())]);
    }

    #[test]
    fn rows_show_every_field() {
        let detail = json!({
            "session_id": "s-1", "status": "connected", "node": "edge-b", "connection": "edge-b/7",
            "created_at": "2026-01-01T00:00:00.000Z", "last_seen": null, "token_expires_at": null,
            "epoch": "e", "last_seq": 5, "last_ack": 5,
            "buffer": {"events": 5, "first_seq": 1, "last_seq": 5},
            "labels": {"team": "blue", "tier": "gold"}, "user_agent": null, "ip": "127.0.0.1"
        });
        let rows = detail_rows(&detail);
        let get = |f: &str| rows.iter().find(|r| r[0] == f).map(|r| r[1].clone());
        assert_eq!(get("last_seen").as_deref(), Some("-"));
        assert_eq!(get("last_seq").as_deref(), Some("5"));
        assert_eq!(get("buffer").as_deref(), Some("5 events, seq 1..=5"));
        assert_eq!(get("labels").as_deref(), Some("team=blue,tier=gold"));
        assert_eq!(rows.len(), 14);
        let empty =
            json!({"buffer": {"events": 0, "first_seq": null, "last_seq": null}, "labels": {}});
        let rows = detail_rows(&empty);
        assert!(rows.contains(&vec!["buffer".into(), "0 events".into()]));
        assert!(rows.contains(&vec!["labels".into(), "-".into()]));
        let summary = json!({"session_id": "s-1", "status": "closed", "node": null, "last_seen": "t",
                             "labels": {"team": "blue"}});
        assert_eq!(
            summary_row(&summary),
            ["s-1", "closed", "-", "t", "team=blue"]
        );
        let node = json!({"node": "a", "alive": true, "draining": null, "connections": 3});
        assert_eq!(node_row(&node)[..5], ["a", "yes", "-", "3", "-"]);
    }

    #[test]
    fn labels_on_the_command_line_are_key_value() {
        assert_eq!(label_arg("team=blue"), Ok("team=blue".into()));
        assert_eq!(label_arg("team="), Ok("team=".into()));
        assert!(label_arg("team").is_err());
        assert!(label_arg("=blue").is_err());
    }
}
