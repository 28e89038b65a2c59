//! Running the `cesctl` binary in tests and reading what it printed.

#![allow(dead_code, unreachable_pub)]

use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt as _;

/// Runs `cesctl` with `args`, with every `CES_*` variable removed so the host cannot leak in.
pub async fn cesctl(args: &[&str]) -> anyhow::Result<Output> {
    cesctl_env(args, &[]).await
}

/// Runs `cesctl` with `args` and only `env` of the `CES_*` variables.
pub async fn cesctl_env(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Output> {
    let mut cmd = command(args, env);
    cmd.stdin(Stdio::null());
    Ok(tokio::time::timeout(Duration::from_secs(60), cmd.output()).await??)
}

fn command(args: &[&str], env: &[(&str, &str)]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_cesctl"));
    cmd.args(args).kill_on_drop(true);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("CES_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts a successful run and returns its stdout.
pub fn ok(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(o));
    stdout(o)
}

/// Table output as rows of cells.
pub fn cells(out: &str) -> Vec<Vec<String>> {
    out.lines()
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .collect()
}

pub fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|c| (*c).to_owned()).collect()
}

pub fn jsonl(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// Runs `cesctl` with `args` and `env`, `stdin` written to its standard input.
pub async fn cesctl_stdin(
    args: &[&str],
    env: &[(&str, &str)],
    stdin: &str,
) -> anyhow::Result<Output> {
    let mut cmd = command(args, env);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let mut input = child.stdin.take().expect("piped stdin");
    input.write_all(stdin.as_bytes()).await?;
    drop(input);
    Ok(tokio::time::timeout(Duration::from_secs(60), child.wait_with_output()).await??)
}
