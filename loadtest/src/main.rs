//! `ces-loadtest <scenario> [options]`: see `ces-loadtest --help` and docs/performance.md.

use clap::Parser as _;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = ces_loadtest::cli::Cli::parse();
    match ces_loadtest::scenario::run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ces-loadtest: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
