//! Secrets never on the command line: every flag that used to take one is refused with exit 2 and a message that
//! names the environment variable and the stdin switch to use instead, before anything is contacted, and without
//! echoing the secret. The real `cesctl` binary; nothing listens where it is pointed.

mod common;

use common::{cesctl_env, cesctl_stdin, stderr};

#[tokio::test]
async fn secrets_given_as_flags_are_refused_before_anything_is_contacted() -> anyhow::Result<()> {
    // Nothing listens here: a command that got past the check would fail with exit 1 instead.
    let nowhere = format!("http://127.0.0.1:{}", ces_systest::free_port());
    let why = "every user of this machine can read the command line (ps, /proc) and shell history keeps it";
    let cases: [(Vec<&str>, String); 8] = [
        (
            vec!["watch", "--edge", &nowhere, "--token", "v1.k.sekrit.sig"],
            format!(
                "--token is refused on the command line: {why}; set CES_SESSION_TOKEN or pipe it to --token-stdin"
            ),
        ),
        (
            vec![
                "watch",
                "--edge",
                &nowhere,
                "--credential",
                "sekrit-api-key",
            ],
            format!(
                "--credential is refused on the command line: {why}; set CES_REGISTER_CREDENTIAL or pipe it to \
                 --credential-stdin"
            ),
        ),
        (
            vec![
                "session",
                "create",
                "--edge",
                &nowhere,
                "--credential",
                "sekrit-api-key",
            ],
            format!(
                "--credential is refused on the command line: {why}; set CES_REGISTER_CREDENTIAL or pipe it to \
                 --credential-stdin"
            ),
        ),
        (
            vec![
                "session",
                "create",
                "--edge",
                "http://ops:sekrit@127.0.0.1:1",
            ],
            format!(
                "--edge carries a password, which is refused on the command line: {why}; set CES_EDGE_URL"
            ),
        ),
        (
            vec![
                "session",
                "revoke",
                "s-1",
                "--redis-url",
                "redis://ces:sekrit@127.0.0.1:1",
            ],
            format!(
                "--redis-url carries a password, which is refused on the command line: {why}; set CES_REDIS_URL or \
                 pipe it to --redis-url-stdin"
            ),
        ),
        (
            vec![
                "session",
                "show",
                "s-1",
                "--admin-url",
                &nowhere,
                "--admin-token",
                "sekrit-admin-token",
            ],
            format!(
                "--admin-token is refused on the command line: {why}; set CES_ADMIN_TOKEN or pipe it to \
                 --admin-token-stdin"
            ),
        ),
        (
            vec!["nodes", "--admin-token", "sekrit-admin-token"],
            format!(
                "--admin-token is refused on the command line: {why}; set CES_ADMIN_TOKEN or pipe it to \
                 --admin-token-stdin"
            ),
        ),
        (
            vec![
                "session",
                "list",
                "--admin-url",
                "http://ops:sekrit@127.0.0.1:1",
            ],
            format!(
                "--admin-url carries a password, which is refused on the command line: {why}; set CES_ADMIN_URL"
            ),
        ),
    ];
    for (args, message) in cases {
        let o = cesctl_env(&args, &[]).await?;
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert_eq!(stderr(&o), format!("cesctl: {message}\n"), "{args:?}");
        assert!(o.stdout.is_empty());
        assert!(!stderr(&o).contains("sekrit"));
    }

    // The same secrets from the environment or stdin pass the check and reach the (absent) edge: exit 1.
    let o = cesctl_env(
        &["session", "create", "--edge", &nowhere],
        &[("CES_REGISTER_CREDENTIAL", "sekrit-api-key")],
    )
    .await?;
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).starts_with(&format!("cesctl: cannot reach the edge at {nowhere}")),
        "{}",
        stderr(&o)
    );
    let o = cesctl_env(
        &["nodes", "--admin-url", &nowhere],
        &[("CES_ADMIN_TOKEN", "sekrit-admin-token")],
    )
    .await?;
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).starts_with(&format!("cesctl: cannot reach the admin API at {nowhere}")),
        "{}",
        stderr(&o)
    );
    assert!(!stderr(&o).contains("sekrit"));
    let o = cesctl_stdin(
        &[
            "session",
            "create",
            "--edge",
            &nowhere,
            "--credential-stdin",
        ],
        &[],
        "sekrit-api-key\n",
    )
    .await?;
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let o = cesctl_stdin(
        &["watch", "--token-stdin"],
        &[("CES_EDGE_URL", &nowhere)],
        "",
    )
    .await?;
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(stderr(&o), "cesctl: --token-stdin: stdin holds nothing\n");
    // One stdin, one secret.
    let o = cesctl_env(&["watch", "--token-stdin", "--credential-stdin"], &[]).await?;
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("cannot be used with"), "{}", stderr(&o));
    Ok(())
}
