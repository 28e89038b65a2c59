//! `cesctl session ...`: register a session at an edge, revoke one without its token, or show and list sessions
//! through an edge's admin API ([`crate::admin`]).
//!
//! `revoke` is the operator's `DELETE /v1/sessions/{id}`: it writes the same tombstone and sends the same control
//! message through [`ces_runtime::session::revoke`], the code the edge's DELETE runs, so the live socket on
//! whichever edge holds it closes with 4003, and every edge refuses the session's token from then on (new sockets
//! and refreshes: 401 `revoked`). It talks to Redis, not to an edge: it needs `CES_REDIS_URL` (and
//! `CES_REDIS_TLS_CA_FILE`) as the edges have them, and their `CES_TOKEN_TTL_SECS`, which is how long the tombstone
//! is kept.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context as _, bail};
use ces_protocol::close::CloseCode;
use ces_protocol::keys::SessionId;
use ces_runtime::config::{Common, Env, Source, Vars};
use clap::Subcommand;
use fred::interfaces::ClientLike as _;
use serde_json::{Value, json};

use crate::secrets::{self, EDGE_URL, REDIS_URL, REGISTER_CREDENTIAL};

/// Default edge URL (`CES_EDGE_URL`).
pub(crate) const DEFAULT_EDGE: &str = "http://127.0.0.1:8080";

/// Bound on connecting to Redis and on the revocation itself: a Redis that is down fails the command, never
/// hangs it.
const REDIS_TIMEOUT: Duration = Duration::from_secs(10);

/// `cesctl session ...`
#[derive(Debug, Subcommand)]
pub(crate) enum SessionCommand {
    /// Register a session and print its id and token as JSON.
    Create {
        /// Edge (or load balancer) base URL [env: CES_EDGE_URL] [default: http://127.0.0.1:8080].
        #[arg(long)]
        edge: Option<String>,
        /// Refused: the credential goes in CES_REGISTER_CREDENTIAL or on stdin (--credential-stdin).
        #[arg(long, hide = true)]
        credential: Option<String>,
        /// Read the API key or JWT for a protected registration from stdin (else CES_REGISTER_CREDENTIAL).
        #[arg(long)]
        credential_stdin: bool,
    },
    /// Close a session for good without its token: its socket gets 4003 and every edge refuses it from then on.
    ///
    /// Writes the same tombstone as the token holder's DELETE /v1/sessions/{id}, through Redis.
    Revoke {
        /// The session id.
        #[arg(value_parser = session_id_arg)]
        session: SessionId,
        /// Redis URL, without a password (one is refused here) [env: CES_REDIS_URL] [default:
        /// redis://127.0.0.1:6379].
        #[arg(long)]
        redis_url: Option<String>,
        /// Read the Redis URL, password and all, from stdin.
        #[arg(long, conflicts_with = "redis_url")]
        redis_url_stdin: bool,
        /// How long the session stays refused: the edges' token lifetime [env: CES_TOKEN_TTL_SECS] [default: 900].
        #[arg(long)]
        token_ttl_secs: Option<u64>,
        /// One JSON object instead of a sentence.
        #[arg(long)]
        json: bool,
    },
    /// Show a session through an edge's admin API: where it is, its numbering, buffer, acknowledgement, labels.
    Show {
        /// The session id.
        #[arg(value_parser = session_id_arg)]
        session: SessionId,
        #[command(flatten)]
        admin: crate::admin::AdminArgs,
        /// The API's JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List sessions through an edge's admin API, every page, each session once.
    List {
        /// Only sessions with this label (key=value); repeat for several, all must match.
        #[arg(long = "label", value_parser = crate::admin::label_arg)]
        labels: Vec<String>,
        /// Only sessions on this node.
        #[arg(long)]
        node: Option<String>,
        /// Sessions examined per page (1-1000).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
        #[command(flatten)]
        admin: crate::admin::AdminArgs,
        /// One JSON object per session and line instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn session_id_arg(s: &str) -> Result<SessionId, String> {
    SessionId::parse(s).map_err(|e| e.to_string())
}

/// Runs `cesctl session ...`.
pub(crate) async fn run(command: SessionCommand) -> anyhow::Result<()> {
    match command {
        SessionCommand::Create {
            edge,
            credential,
            credential_stdin,
        } => {
            let edge = edge_url(edge.as_deref())?;
            let credential = REGISTER_CREDENTIAL.resolve(
                credential.as_deref(),
                credential_stdin,
                secrets::read_stdin,
                Env.get(REGISTER_CREDENTIAL.env),
            )?;
            let registered = register(&edge, credential.as_deref()).await?;
            println!("{}", serde_json::to_string_pretty(&registered)?);
            Ok(())
        }
        SessionCommand::Revoke {
            session,
            redis_url,
            redis_url_stdin,
            token_ttl_secs,
            json,
        } => {
            let url = REDIS_URL.resolve_url(
                redis_url.as_deref(),
                redis_url_stdin,
                secrets::read_stdin,
                None,
            )?;
            let (common, ttl) = revoke_config(url, token_ttl_secs, &Env)?;
            let holder = revoke(&common, &session, ttl).await?;
            if json {
                let out = json!({
                    "session_id": session.as_str(),
                    "holder": holder,
                    "refused_for_secs": ttl.as_secs(),
                });
                println!("{out}");
            } else {
                println!("{}", revoked_text(&session, ttl, holder.as_deref()));
            }
            Ok(())
        }
        SessionCommand::Show {
            session,
            admin,
            json,
        } => {
            let api = crate::admin::AdminApi::from_args(&admin)?;
            crate::admin::show(&api, session.as_str(), json).await
        }
        SessionCommand::List {
            labels,
            node,
            limit,
            admin,
            json,
        } => {
            let api = crate::admin::AdminApi::from_args(&admin)?;
            let filter = crate::admin::ListFilter {
                labels,
                node,
                limit,
            };
            crate::admin::list(&api, &filter, json).await
        }
    }
}

/// The edge URL: `--edge` (without a password), else `CES_EDGE_URL`, else [`DEFAULT_EDGE`].
pub(crate) fn edge_url(argv: Option<&str>) -> anyhow::Result<String> {
    Ok(edge_url_from(argv, Env.get(EDGE_URL.env))?)
}

/// [`edge_url`] with the variable's value given.
fn edge_url_from(argv: Option<&str>, env: Option<String>) -> Result<String, crate::usage::Usage> {
    let url = EDGE_URL.resolve_url(argv, false, secrets::read_stdin, env)?;
    Ok(url.unwrap_or_else(|| DEFAULT_EDGE.to_owned()))
}

/// Registers a session at `edge`, with `credential` as `Authorization: Bearer` when given; the edge's answer.
pub(crate) async fn register(edge: &str, credential: Option<&str>) -> anyhow::Result<Value> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let mut request = http
        .post(format!("{}/v1/sessions", edge.trim_end_matches('/')))
        .json(&json!({ "client": "cesctl" }));
    if let Some(credential) = credential {
        request = request.bearer_auth(credential);
    }
    let resp = request
        .send()
        .await
        .with_context(|| format!("cannot reach the edge at {edge}"))?;
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    if status.as_u16() != 201 {
        bail!("registration refused with {status}: {body}");
    }
    serde_json::from_str(&body).context("registration answer is not JSON")
}

/// `source` with some variables replaced (a flag wins over its variable).
struct Overlay<'a> {
    over: HashMap<&'static str, String>,
    under: &'a dyn Source,
}

impl Source for Overlay<'_> {
    fn get(&self, key: &str) -> Option<String> {
        self.over.get(key).cloned().or_else(|| self.under.get(key))
    }

    fn keys_with_prefix(&self, prefix: &str) -> Vec<String> {
        let mut keys = self.under.keys_with_prefix(prefix);
        keys.extend(
            self.over
                .keys()
                .filter(|k| k.starts_with(prefix))
                .map(|k| (*k).to_owned()),
        );
        keys.sort();
        keys.dedup();
        keys
    }
}

/// What `revoke` needs, read as the edges read it: the Redis settings (`url`, else `CES_REDIS_URL`; TLS) and the
/// tombstone's lifetime (`ttl_secs`, else `CES_TOKEN_TTL_SECS`, 900 s by default, 10 s to 7 days). Every problem
/// is a usage error, all listed at once.
fn revoke_config(
    url: Option<String>,
    ttl_secs: Option<u64>,
    env: &dyn Source,
) -> Result<(Common, Duration), crate::usage::Usage> {
    let mut over = HashMap::new();
    if let Some(url) = url {
        over.insert(REDIS_URL.env, url);
    }
    if let Some(secs) = ttl_secs {
        over.insert("CES_TOKEN_TTL_SECS", secs.to_string());
    }
    let source = Overlay { over, under: env };
    let mut v = Vars::new(&source);
    let common = Common::read(&mut v);
    let ttl = Duration::from_secs(v.bounded("CES_TOKEN_TTL_SECS", 900, 10, 7 * 86_400));
    v.finish()?;
    Ok((common, ttl))
}

/// Connects to Redis as `common` says and revokes `session`; the connection that held it, if one did.
async fn revoke(
    common: &Common,
    session: &SessionId,
    ttl: Duration,
) -> anyhow::Result<Option<String>> {
    let shown = common.redis_url_redacted();
    let client = common
        .redis_builder()
        .and_then(|b| b.build())
        .with_context(|| format!("redis client for {shown}"))?;
    match tokio::time::timeout(REDIS_TIMEOUT, client.init()).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => bail!("cannot reach Redis at {shown}: {e}"),
        Err(_) => bail!(
            "cannot reach Redis at {shown}: no connection within {} s",
            REDIS_TIMEOUT.as_secs()
        ),
    }
    let result = tokio::time::timeout(
        REDIS_TIMEOUT,
        ces_runtime::session::revoke(&client, session, ttl),
    )
    .await;
    ces_runtime::redis::quit(&client, Duration::from_secs(1)).await;
    match result {
        Ok(Ok(holder)) => Ok(holder),
        Ok(Err(e)) => bail!("revoking {} at {shown}: {e}", session.as_str()),
        Err(_) => bail!(
            "revoking {} at {shown}: no answer within {} s",
            session.as_str(),
            REDIS_TIMEOUT.as_secs()
        ),
    }
}

/// The sentence `revoke` prints.
fn revoked_text(session: &SessionId, ttl: Duration, holder: Option<&str>) -> String {
    let told = match holder {
        Some(h) => format!(
            "connection {h} was told to close ({})",
            CloseCode::SessionClosed
        ),
        None => "no connection held it".to_owned(),
    };
    format!(
        "revoked session {}: sockets and refreshes are refused for {} s; {told}",
        session.as_str(),
        ttl.as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&'static str, &str)]) -> HashMap<&'static str, String> {
        pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
    }

    #[test]
    fn flags_win_over_variables_and_variables_over_defaults() {
        let none = env(&[]);
        let (common, ttl) = revoke_config(None, None, &none).unwrap();
        assert_eq!(common.redis_url, "redis://127.0.0.1:6379");
        assert_eq!(ttl, Duration::from_secs(900));
        let vars = env(&[
            ("CES_REDIS_URL", "redis://u:p@r:7000"),
            ("CES_TOKEN_TTL_SECS", "60"),
        ]);
        let (common, ttl) = revoke_config(None, None, &vars).unwrap();
        assert_eq!(common.redis_url, "redis://u:p@r:7000");
        assert_eq!(ttl, Duration::from_secs(60));
        let (common, ttl) =
            revoke_config(Some("redis://other:1".into()), Some(3600), &vars).unwrap();
        assert_eq!(common.redis_url, "redis://other:1");
        assert_eq!(ttl, Duration::from_secs(3600));
    }

    #[test]
    fn bad_settings_are_usage_errors_that_hide_the_password() {
        let vars = env(&[("CES_REDIS_URL", "http://u:s3cret@r")]);
        let err = revoke_config(None, Some(5), &vars).unwrap_err().0;
        assert!(err.contains("u:***@r") && !err.contains("s3cret"), "{err}");
        assert!(
            err.contains("CES_TOKEN_TTL_SECS=5 is out of range 10..=604800"),
            "{err}"
        );
        let err = revoke_config(None, Some(7 * 86_400 + 1), &env(&[]))
            .unwrap_err()
            .0;
        assert!(err.contains("out of range"), "{err}");
        assert!(revoke_config(None, Some(7 * 86_400), &env(&[])).is_ok());
        assert!(revoke_config(None, Some(10), &env(&[])).is_ok());
    }

    #[test]
    fn the_edge_url_comes_from_the_flag_then_the_variable_then_the_default() {
        assert_eq!(edge_url_from(None, None).unwrap(), DEFAULT_EDGE);
        assert_eq!(
            edge_url_from(None, Some("http://e:1".into())).unwrap(),
            "http://e:1"
        );
        assert_eq!(
            edge_url_from(Some("http://f:2"), Some("http://e:1".into())).unwrap(),
            "http://f:2"
        );
        assert!(edge_url_from(Some("http://u:p@f:2"), None).is_err());
    }

    #[test]
    fn overlay_lists_keys_of_both_once() {
        let under = env(&[("CES_A", "1"), ("CES_B", "2"), ("OTHER", "3")]);
        let o = Overlay {
            over: [("CES_B", "x".to_owned()), ("CES_C", "y".to_owned())].into(),
            under: &under,
        };
        assert_eq!(o.keys_with_prefix("CES_"), ["CES_A", "CES_B", "CES_C"]);
        assert_eq!(o.get("CES_B").as_deref(), Some("x"));
        assert_eq!(o.get("CES_A").as_deref(), Some("1"));
        assert_eq!(o.get("CES_D"), None);
    }

    #[test]
    fn the_sentence_names_the_holder_and_the_code() {
        let s = SessionId::parse("s-1").unwrap();
        assert_eq!(
            revoked_text(&s, Duration::from_secs(900), Some("edge-b/7")),
            "revoked session s-1: sockets and refreshes are refused for 900 s; connection edge-b/7 was told to \
             close (4003 session closed)"
        );
        assert_eq!(
            revoked_text(&s, Duration::from_secs(60), None),
            "revoked session s-1: sockets and refreshes are refused for 60 s; no connection held it"
        );
        assert!(session_id_arg("bad id").is_err());
        assert_eq!(
            session_id_arg("ok.id").map(|s| s.as_str().to_owned()),
            Ok("ok.id".into())
        );
    }
}
