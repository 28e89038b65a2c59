//! `ces-ingest`: reads `CES_*` configuration, starts telemetry, binds the HTTP port and runs ingest.

use std::process::ExitCode;

use ces_ingest::Config;
use ces_runtime::config::{EXIT_CONFIG, Env, Recording};

/// mimalloc instead of the system allocator: per-thread free lists without arena locks (see docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    // `--check-config`: validate the environment's configuration and name what it does not read, then exit.
    if std::env::args().nth(1).as_deref() == Some("--check-config") {
        let code = ces_runtime::config::check("ces-ingest", Config::from_source);
        return ExitCode::from(code as u8);
    }
    let env = Recording::new(&Env);
    let config = match Config::from_source(&env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ces-ingest: {e}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    // Held to the end of `main`: dropping it flushes the traces not yet exported.
    let _telemetry = match ces_runtime::telemetry::init(
        "ces-ingest",
        &config.common.log,
        config.common.log_format,
    ) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("ces-ingest: {e}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    let unread = env.unread("CES_");
    if !unread.is_empty() {
        tracing::warn!(
            variables = unread.join(","),
            "set but not read by ces-ingest: a misspelt name, or one meant for another CES service"
        );
    }
    let listener = match tokio::net::TcpListener::bind(config.http_addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(addr = %config.http_addr, error = %e, "cannot bind http port");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(addr = %config.http_addr, "ces-ingest starting");
    match ces_ingest::run(config, listener, ces_runtime::shutdown::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ (ces_ingest::Error::Runtime(_) | ces_ingest::Error::Protocol(_))) => {
            // Bad configuration (the schema directory, say): not worth a restart loop.
            tracing::error!(error = %e, "ces-ingest cannot start");
            ExitCode::from(EXIT_CONFIG as u8)
        }
        Err(e) => {
            tracing::error!(error = %e, "ces-ingest failed");
            ExitCode::FAILURE
        }
    }
}
