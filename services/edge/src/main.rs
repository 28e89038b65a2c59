//! `ces-edge`: reads `CES_*` configuration, starts telemetry, binds the public and internal listeners and runs the
//! edge node.

use std::process::ExitCode;

use ces_edge::Config;
use ces_runtime::config::{EXIT_CONFIG, Env, Recording};

#[tokio::main]
async fn main() -> ExitCode {
    // `--check-config`: validate the environment's configuration and name what it does not read, then exit.
    if std::env::args().nth(1).as_deref() == Some("--check-config") {
        let code = ces_runtime::config::check("ces-edge", Config::from_source);
        return ExitCode::from(code as u8);
    }
    let env = Recording::new(&Env);
    let config = match Config::from_source(&env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ces-edge: {e}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    // Held to the end of `main`: dropping it flushes the traces not yet exported.
    let _telemetry = match ces_runtime::telemetry::init(
        "ces-edge",
        &config.common.log,
        config.common.log_format,
    ) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("ces-edge: {e}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    let unread = env.unread("CES_");
    if !unread.is_empty() {
        tracing::warn!(
            variables = unread.join(","),
            "set but not read by ces-edge: a misspelt name, or one meant for another CES service"
        );
    }
    let bind = |addr, backlog| {
        ces_runtime::net::bind(addr, backlog)
            .inspect_err(|e| tracing::error!(%addr, error = %e, "cannot bind"))
    };
    let (Ok(public), Ok(internal)) = (
        bind(config.listen, config.listen_backlog),
        bind(config.internal_listen, ces_edge::INTERNAL_LISTEN_BACKLOG),
    ) else {
        return ExitCode::FAILURE;
    };
    let listeners = ces_edge::Listeners { public, internal };
    match ces_edge::run(config, listeners, ces_runtime::shutdown::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "ces-edge failed");
            ExitCode::FAILURE
        }
    }
}
