//! Secrets never come from the command line: every user of the machine can read a process's arguments (`ps`,
//! `/proc/<pid>/cmdline`), and shell history and audit logs keep them. Each secret `cesctl` takes is read from an
//! environment variable or, with `--<flag>-stdin`, from standard input. The flag itself still parses, only to be
//! refused with a message that names both ways. A URL flag (`--redis-url`, `--edge`) is accepted on the command
//! line as long as it carries no password.
//!
//! Kafka credentials (`sasl.password`, `ssl.key.password`, ...) only ever come from `CES_KAFKA_PROP_*`
//! ([`crate::kafka`]); there is no flag for them.

use std::io::Read as _;

use crate::usage::Usage;

/// Most bytes read from stdin for a secret: a token, a credential or a URL is far shorter.
const STDIN_MAX_BYTES: u64 = 64 * 1024;

/// A secret `cesctl` takes: the flag that is refused, the variable it is read from, and the stdin switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Secret {
    /// The command-line flag (refused, or for a URL accepted without a password).
    pub(crate) flag: &'static str,
    /// The environment variable.
    pub(crate) env: &'static str,
    /// The switch that reads it from stdin, where there is one.
    pub(crate) stdin: Option<&'static str>,
}

/// API key or JWT for a protected registration (`session create`, `watch`).
pub(crate) const REGISTER_CREDENTIAL: Secret = Secret {
    flag: "--credential",
    env: "CES_REGISTER_CREDENTIAL",
    stdin: Some("--credential-stdin"),
};

/// A session's token (`watch`).
pub(crate) const SESSION_TOKEN: Secret = Secret {
    flag: "--token",
    env: "CES_SESSION_TOKEN",
    stdin: Some("--token-stdin"),
};

/// The Redis URL, which may carry an ACL user's password (`session revoke`).
pub(crate) const REDIS_URL: Secret = Secret {
    flag: "--redis-url",
    env: "CES_REDIS_URL",
    stdin: Some("--redis-url-stdin"),
};

/// The edge's URL (`session create`, `watch`): the edge takes no password, but one in the URL would be sent.
pub(crate) const EDGE_URL: Secret = Secret {
    flag: "--edge",
    env: "CES_EDGE_URL",
    stdin: None,
};

/// A token of the edges' admin API (`session show`, `session list`, `nodes`).
pub(crate) const ADMIN_TOKEN: Secret = Secret {
    flag: "--admin-token",
    env: "CES_ADMIN_TOKEN",
    stdin: Some("--admin-token-stdin"),
};

/// The admin API's URL (an edge's internal listener): no password in it on the command line.
pub(crate) const ADMIN_URL: Secret = Secret {
    flag: "--admin-url",
    env: "CES_ADMIN_URL",
    stdin: None,
};

/// Why the command line is no place for a secret, ending every refusal.
const WHY: &str =
    "every user of this machine can read the command line (ps, /proc) and shell history keeps it";

impl Secret {
    /// Where the secret goes instead.
    fn instead(&self) -> String {
        match self.stdin {
            Some(stdin) => format!("set {} or pipe it to {stdin}", self.env),
            None => format!("set {}", self.env),
        }
    }

    /// The secret: refused when given on the command line (`argv`); else the first line of stdin when
    /// `from_stdin` (read by `read_stdin`, only then); else `env`'s value; `None` when none was given.
    pub(crate) fn resolve(
        &self,
        argv: Option<&str>,
        from_stdin: bool,
        read_stdin: impl FnOnce() -> std::io::Result<String>,
        env: Option<String>,
    ) -> Result<Option<String>, Usage> {
        if argv.is_some() {
            return Err(Usage(format!(
                "{} is refused on the command line: {WHY}; {}",
                self.flag,
                self.instead()
            )));
        }
        self.rest(from_stdin, read_stdin, env)
    }

    /// A URL: accepted on the command line (`argv`) unless it carries a password; else as [`Self::resolve`].
    pub(crate) fn resolve_url(
        &self,
        argv: Option<&str>,
        from_stdin: bool,
        read_stdin: impl FnOnce() -> std::io::Result<String>,
        env: Option<String>,
    ) -> Result<Option<String>, Usage> {
        match argv {
            Some(url) if has_password(url) => Err(Usage(format!(
                "{} carries a password, which is refused on the command line: {WHY}; {}",
                self.flag,
                self.instead()
            ))),
            Some(url) => Ok(Some(url.to_owned())),
            None => self.rest(from_stdin, read_stdin, env),
        }
    }

    fn rest(
        &self,
        from_stdin: bool,
        read_stdin: impl FnOnce() -> std::io::Result<String>,
        env: Option<String>,
    ) -> Result<Option<String>, Usage> {
        let switch = self.stdin.unwrap_or(self.flag);
        if from_stdin {
            let text = read_stdin().map_err(|e| Usage(format!("{switch}: reading stdin: {e}")))?;
            let first = text.lines().next().unwrap_or_default().trim();
            if first.is_empty() {
                return Err(Usage(format!("{switch}: stdin holds nothing")));
            }
            return Ok(Some(first.to_owned()));
        }
        match env {
            Some(v) if v.trim().is_empty() => Err(Usage(format!("{} is set but empty", self.env))),
            Some(v) => Ok(Some(v.trim().to_owned())),
            None => Ok(None),
        }
    }
}

/// Reads stdin to its end (at most [`STDIN_MAX_BYTES`]), for a `--<flag>-stdin` switch.
pub(crate) fn read_stdin() -> std::io::Result<String> {
    read_bounded(std::io::stdin())
}

/// `input` to its end, or its first [`STDIN_MAX_BYTES`] bytes: a runaway pipe cannot fill memory.
fn read_bounded(input: impl std::io::Read) -> std::io::Result<String> {
    let mut text = String::new();
    input.take(STDIN_MAX_BYTES).read_to_string(&mut text)?;
    Ok(text)
}

/// Whether `url` carries a password: a non-empty one after `:` in a `user:password@` part of its authority.
pub(crate) fn has_password(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    authority
        .rsplit_once('@')
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .is_some_and(|(_, password)| !password.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_stdin() -> std::io::Result<String> {
        panic!("stdin must not be read")
    }

    #[test]
    fn a_secret_on_the_command_line_is_refused_naming_where_it_goes() {
        let err = SESSION_TOKEN
            .resolve(Some("v1.k.p.s"), false, no_stdin, Some("from-env".into()))
            .unwrap_err();
        assert_eq!(
            err.0,
            "--token is refused on the command line: every user of this machine can read the command line \
             (ps, /proc) and shell history keeps it; set CES_SESSION_TOKEN or pipe it to --token-stdin"
        );
        // Refused even with --token-stdin, before stdin is read.
        assert!(
            SESSION_TOKEN
                .resolve(Some("t"), true, no_stdin, None)
                .is_err()
        );
        let err = EDGE_URL
            .resolve_url(Some("http://u:pw@edge"), false, no_stdin, None)
            .unwrap_err();
        assert!(
            err.0.starts_with("--edge carries a password") && err.0.ends_with("; set CES_EDGE_URL"),
            "{err}"
        );
        assert!(!err.0.contains("pw"), "{err}");
    }

    #[test]
    fn stdin_then_environment() {
        let stdin = || Ok("  secret-1 \nignored\n".to_owned());
        assert_eq!(
            REGISTER_CREDENTIAL.resolve(None, true, stdin, Some("env".into())),
            Ok(Some("secret-1".into()))
        );
        assert_eq!(
            REGISTER_CREDENTIAL.resolve(None, false, no_stdin, Some(" env \n".into())),
            Ok(Some("env".into()))
        );
        assert_eq!(
            REGISTER_CREDENTIAL.resolve(None, false, no_stdin, None),
            Ok(None)
        );
        assert_eq!(
            REGISTER_CREDENTIAL
                .resolve(None, true, || Ok("\n".into()), None)
                .unwrap_err()
                .0,
            "--credential-stdin: stdin holds nothing"
        );
        assert_eq!(
            REGISTER_CREDENTIAL
                .resolve(
                    None,
                    true,
                    || Err(std::io::ErrorKind::InvalidData.into()),
                    None
                )
                .unwrap_err()
                .0,
            "--credential-stdin: reading stdin: invalid data"
        );
        assert_eq!(
            REGISTER_CREDENTIAL
                .resolve(None, false, no_stdin, Some(" ".into()))
                .unwrap_err()
                .0,
            "CES_REGISTER_CREDENTIAL is set but empty"
        );
    }

    #[test]
    fn stdin_is_read_up_to_its_bound() {
        let long = "t".repeat(70_000);
        assert_eq!(read_bounded(long.as_bytes()).unwrap().len(), 65_536);
        assert_eq!(read_bounded(&b"tok\n"[..]).unwrap(), "tok\n");
        assert!(read_bounded(&[0xff_u8][..]).is_err());
    }

    #[test]
    fn urls_without_a_password_may_stand_on_the_command_line() {
        for url in [
            "redis://127.0.0.1:6379",
            "rediss://ces@redis:6380/0",
            "redis://ces:@redis",
            "redis://redis/0?user=a:b@c",
            "http://edge:8080/path@x:y",
        ] {
            assert!(!has_password(url), "{url}");
            assert_eq!(
                REDIS_URL.resolve_url(Some(url), false, no_stdin, None),
                Ok(Some(url.to_owned()))
            );
        }
        for url in [
            "rediss://ces:s3cret@redis:6380",
            "redis://:s3cret@redis",
            "redis-cluster://u:p@r1:7001?node=r2:7001",
            "u:p@host",
        ] {
            assert!(has_password(url), "{url}");
        }
        assert_eq!(
            REDIS_URL.resolve_url(
                None,
                true,
                || Ok("redis://u:p@r\n".into()),
                Some("redis://x".into())
            ),
            Ok(Some("redis://u:p@r".into()))
        );
        assert_eq!(
            REDIS_URL.resolve_url(None, false, no_stdin, Some("redis://u:p@r".into())),
            Ok(Some("redis://u:p@r".into()))
        );
        let err = REDIS_URL
            .resolve_url(Some("redis://u:p@r"), false, no_stdin, None)
            .unwrap_err();
        assert!(
            err.0
                .ends_with("set CES_REDIS_URL or pipe it to --redis-url-stdin"),
            "{err}"
        );
    }
}
