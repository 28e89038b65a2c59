//! `cesctl watch`: a session's events as they arrive, through the Rust client (`ces-client`). It resumes across
//! edge restarts, drains and kills, so each event is printed once and in order, or a gap line says exactly what
//! was lost; connection changes go to stderr.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use ces_client::policy::Ending;
use ces_client::{Token, Update};
use ces_runtime::config::{Env, Source as _};
use clap::Args;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::secrets::{self, REGISTER_CREDENTIAL, SESSION_TOKEN};
use crate::session;

/// Nothing from the edge for this long means the connection is dead: 2.5 of the edge's default ping intervals.
const SILENCE_LIMIT: Duration = Duration::from_secs(75);

/// `cesctl watch ...`
#[derive(Debug, Args)]
pub(crate) struct WatchArgs {
    /// Edge (or load balancer) base URL [env: CES_EDGE_URL] [default: http://127.0.0.1:8080].
    #[arg(long)]
    edge: Option<String>,
    /// Refused: the token goes in CES_SESSION_TOKEN or on stdin (--token-stdin).
    #[arg(long, hide = true)]
    token: Option<String>,
    /// Read a session's token from stdin and watch that session instead of registering a new one (else
    /// CES_SESSION_TOKEN, if set).
    #[arg(long)]
    token_stdin: bool,
    /// Refused: the credential goes in CES_REGISTER_CREDENTIAL or on stdin (--credential-stdin).
    #[arg(long, hide = true)]
    credential: Option<String>,
    /// Read the API key or JWT for a protected registration from stdin (else CES_REGISTER_CREDENTIAL).
    #[arg(long, conflicts_with = "token_stdin")]
    credential_stdin: bool,
    /// Stop after this many events (default: run until Ctrl-C).
    #[arg(long)]
    events: Option<u64>,
}

pub(crate) async fn watch(args: WatchArgs) -> anyhow::Result<()> {
    let edge = session::edge_url(args.edge.as_deref())?;
    let edge = edge.trim_end_matches('/').to_owned();
    let token = SESSION_TOKEN.resolve(
        args.token.as_deref(),
        args.token_stdin,
        secrets::read_stdin,
        Env.get(SESSION_TOKEN.env),
    )?;
    let credential = REGISTER_CREDENTIAL.resolve(
        args.credential.as_deref(),
        args.credential_stdin,
        secrets::read_stdin,
        Env.get(REGISTER_CREDENTIAL.env),
    )?;
    let get_token = match token {
        // A token from elsewhere: cesctl cannot renew it, so the watch ends when it does.
        Some(t) => {
            let token = Token::new(t);
            let get: ces_client::connection::GetToken = Arc::new(move || {
                let token = token.clone();
                Box::pin(async move { Ok(token) })
            });
            get
        }
        None => {
            let reg = session::register(&edge, credential.as_deref()).await?;
            let session = reg["session_id"].as_str().unwrap_or_default().to_owned();
            eprintln!("session {session} registered; send it an event from another terminal with:");
            let me = std::env::current_exe()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| "cesctl".into());
            eprintln!("  {me} produce --session {session} --data '{{\"hello\":\"world\"}}'");
            let token = reg["token"]
                .as_str()
                .context("registration answer has no token")?;
            renewing(&edge, session, token)
        }
    };
    let options = ces_client::Options {
        url: edge,
        get_token,
        resume_from: None,
        silence_limit: SILENCE_LIMIT,
    };
    let (tx, mut updates) = tokio::sync::mpsc::channel(256);
    let stop = CancellationToken::new();
    let client = tokio::spawn(ces_client::run(options, tx, stop.clone()));
    let mut seen = 0u64;
    let outcome = loop {
        let update = tokio::select! {
            _ = tokio::signal::ctrl_c() => break Ok(()),
            update = updates.recv() => update,
        };
        let Some(update) = update else {
            break Ok(());
        };
        match update {
            Update::Event(e) => {
                let line = json!({"type": "event", "seq": e.seq, "id": e.id, "event": e.event, "data": e.data});
                println!("{line}");
                seen += 1;
                if args.events.is_some_and(|n| seen >= n) {
                    break Ok(());
                }
            }
            Update::Gap(g) => {
                println!(
                    "{}",
                    json!({"type": "gap", "from": g.from, "to": g.to, "reason": g.reason})
                );
            }
            Update::Connected { node } => eprintln!("connected to {node}"),
            Update::Disconnected { ending, retry } => {
                let how = describe(ending);
                if retry {
                    eprintln!("{how}; reconnecting");
                } else {
                    eprintln!("{how}");
                }
            }
            Update::Stopped(why) => break Err(anyhow::anyhow!("stopped: {why}")),
        }
    };
    stop.cancel();
    let _ = client.await;
    outcome
}

/// How a connection ended, for a person.
fn describe(ending: Ending) -> String {
    match ending {
        Ending::Closed(code) => {
            let name = ces_protocol::close::CloseCode::from_code(code).map_or("", |c| c.reason());
            format!("disconnected: {code} {name}").trim_end().to_owned()
        }
        Ending::Refused { status, .. } => format!("refused: HTTP {status}"),
        Ending::Silent => "no answer from the edge".to_owned(),
    }
}

/// The tokens of a session cesctl registered: the registration's first, then each time the client asks (before
/// expiry, or after a 4001 or 401) a new one from `POST /v1/sessions/{id}/refresh`. A refresh the edge refuses
/// gives the current token back, so a session that is over (revoked, past its lifetime) is refused twice and
/// the watch stops.
fn renewing(edge: &str, session: String, token: &str) -> ces_client::connection::GetToken {
    let current = Arc::new(Mutex::new((Token::new(token), false)));
    let (edge, http) = (edge.to_owned(), reqwest::Client::new());
    Arc::new(move || {
        let (current, edge, http, session) =
            (current.clone(), edge.clone(), http.clone(), session.clone());
        Box::pin(async move {
            let (token, handed_out) = current.lock().expect("token").clone();
            if !handed_out {
                current.lock().expect("token").1 = true;
                return Ok(token);
            }
            match refresh(&http, &edge, &session, &token.value).await {
                Ok(fresh) => {
                    current.lock().expect("token").0 = fresh.clone();
                    Ok(fresh)
                }
                Err(e) => {
                    eprintln!("token refresh failed: {e:#}");
                    Ok(token)
                }
            }
        })
    })
}

async fn refresh(
    http: &reqwest::Client,
    edge: &str,
    session: &str,
    token: &str,
) -> anyhow::Result<Token> {
    let answer = http
        .post(format!("{edge}/v1/sessions/{session}/refresh"))
        .bearer_auth(token)
        .timeout(Duration::from_secs(10))
        .send()
        .await?;
    let status = answer.status();
    let body: Value = answer.json().await.unwrap_or_default();
    if !status.is_success() {
        bail!("{status}: {body}");
    }
    let token = body["token"]
        .as_str()
        .context("refresh answer has no token")?;
    Ok(Token::new(token))
}
