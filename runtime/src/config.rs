//! Reading configuration from `CES_*` variables.
//!
//! A service's `Config::from_source` reads every variable it knows through a [`Vars`] accumulator, which keeps
//! going after the first problem so that one start reports every mistake. A value that is present but invalid is
//! always an error: nothing falls back silently to a default. Tests pass a `HashMap` as the [`Source`] instead
//! of touching the process environment.

use std::collections::HashMap;
use std::fmt::Display;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use ces_protocol::ConfigErrors;

use crate::error::Error;
use crate::telemetry::LogFormat;

/// Exit code for a configuration error (`EX_USAGE` from sysexits.h).
pub const EXIT_CONFIG: i32 = 64;

/// Where configuration values come from.
pub trait Source {
    /// The raw value of `key`, or `None` when it is not set.
    fn get(&self, key: &str) -> Option<String>;

    /// Every key that starts with `prefix`, sorted.
    fn keys_with_prefix(&self, prefix: &str) -> Vec<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Env;

impl Source for Env {
    fn get(&self, key: &str) -> Option<String> {
        // A value that is not UTF-8 is passed on lossily; every parser below then rejects it with the key named.
        std::env::var_os(key).map(|v| v.to_string_lossy().into_owned())
    }

    fn keys_with_prefix(&self, prefix: &str) -> Vec<String> {
        let mut keys: Vec<String> = std::env::vars_os()
            .filter_map(|(k, _)| k.into_string().ok())
            .filter(|k| k.starts_with(prefix))
            .collect();
        keys.sort();
        keys
    }
}

impl<S: std::hash::BuildHasher> Source for HashMap<String, String, S> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).cloned()
    }

    fn keys_with_prefix(&self, prefix: &str) -> Vec<String> {
        let mut keys: Vec<String> = self
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        keys.sort();
        keys
    }
}

impl<S: std::hash::BuildHasher> Source for HashMap<&'static str, String, S> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).cloned()
    }

    fn keys_with_prefix(&self, prefix: &str) -> Vec<String> {
        let mut keys: Vec<String> = self
            .keys()
            .filter(|k| k.starts_with(prefix))
            .map(|k| (*k).to_owned())
            .collect();
        keys.sort();
        keys
    }
}

/// A [`Source`] that remembers what was asked of it, to tell which `CES_*` variables are set but never read: a
/// misspelt name, or one meant for another service, would otherwise be ignored without a word.
pub struct Recording<'a> {
    inner: &'a dyn Source,
    asked: std::cell::RefCell<Vec<String>>,
    prefixes: std::cell::RefCell<Vec<String>>,
}

impl std::fmt::Debug for Recording<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recording")
            .field("asked", &self.asked)
            .field("prefixes", &self.prefixes)
            .finish_non_exhaustive()
    }
}

impl<'a> Recording<'a> {
    /// Records what is read from `inner`.
    pub fn new(inner: &'a dyn Source) -> Self {
        Self {
            inner,
            asked: Default::default(),
            prefixes: Default::default(),
        }
    }

    /// The variables starting with `prefix` that are set but were neither read by name nor under a prefix that
    /// was read (`CES_KAFKA_PROP_*`), sorted.
    pub fn unread(&self, prefix: &str) -> Vec<String> {
        let asked = self.asked.borrow();
        let prefixes = self.prefixes.borrow();
        self.inner
            .keys_with_prefix(prefix)
            .into_iter()
            .filter(|k| !asked.contains(k) && !prefixes.iter().any(|p| k.starts_with(p.as_str())))
            .collect()
    }
}

impl Source for Recording<'_> {
    fn get(&self, key: &str) -> Option<String> {
        self.asked.borrow_mut().push(key.to_owned());
        self.inner.get(key)
    }

    fn keys_with_prefix(&self, prefix: &str) -> Vec<String> {
        self.prefixes.borrow_mut().push(prefix.to_owned());
        self.inner.keys_with_prefix(prefix)
    }
}

/// What a service's `--check-config` does: reads its configuration with `read` from the environment, prints every
/// `CES_*` variable set but not read (`unread CES_...`, one per line, on stdout) and returns the exit code: 0 when
/// the configuration is valid, [`EXIT_CONFIG`] (with the errors on stderr) when not. Nothing is bound or
/// connected. A deployment check runs it with a container's environment.
pub fn check<T>(service: &str, read: impl FnOnce(&dyn Source) -> Result<T, Error>) -> i32 {
    let recording = Recording::new(&Env);
    let result = read(&recording);
    for name in recording.unread("CES_") {
        println!("unread {name}");
    }
    match result {
        Ok(_) => {
            eprintln!("{service}: the configuration is valid");
            0
        }
        Err(e) => {
            eprintln!("{service}: {e}");
            EXIT_CONFIG
        }
    }
}

/// Reads variables from a [`Source`], collecting every error instead of stopping at the first.
pub struct Vars<'a> {
    source: &'a dyn Source,
    errors: Vec<String>,
}

impl std::fmt::Debug for Vars<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vars")
            .field("errors", &self.errors)
            .finish()
    }
}

impl<'a> Vars<'a> {
    /// Starts reading from `source`.
    pub fn new(source: &'a dyn Source) -> Self {
        Self {
            source,
            errors: Vec::new(),
        }
    }

    fn raw(&mut self, key: &str) -> Option<String> {
        let value = self.source.get(key)?;
        let trimmed = value.trim();
        if trimmed.is_empty() {
            self.errors.push(format!("{key} is set but empty"));
            return None;
        }
        Some(trimmed.to_owned())
    }

    /// A string value, `default` when unset.
    pub fn string(&mut self, key: &str, default: &str) -> String {
        self.raw(key).unwrap_or_else(|| default.to_owned())
    }

    /// A value that may be absent: `None` when unset.
    pub fn optional(&mut self, key: &str) -> Option<String> {
        self.raw(key)
    }

    /// A value that must be given; records an error and returns an empty string when it is not.
    pub fn required(&mut self, key: &str, what: &str) -> String {
        match self.raw(key) {
            Some(v) => v,
            None => {
                if self.source.get(key).is_none() {
                    self.errors.push(format!("{key} is required ({what})"));
                }
                String::new()
            }
        }
    }

    /// A value parsed with `FromStr`, `default` when unset.
    pub fn parse<T>(&mut self, key: &str, default: T) -> T
    where
        T: FromStr,
        T::Err: Display,
    {
        match self.raw(key) {
            None => default,
            Some(v) => match v.parse() {
                Ok(parsed) => parsed,
                Err(e) => {
                    self.errors.push(format!("{key}={v:?} is invalid: {e}"));
                    default
                }
            },
        }
    }

    /// An integer within `min..=max`.
    pub fn bounded(&mut self, key: &str, default: u64, min: u64, max: u64) -> u64 {
        let v = self.parse(key, default);
        if !(min..=max).contains(&v) {
            self.errors
                .push(format!("{key}={v} is out of range {min}..={max}"));
            return default;
        }
        v
    }

    /// A duration given in milliseconds, within `min_ms..=max_ms`.
    pub fn millis(&mut self, key: &str, default_ms: u64, min_ms: u64, max_ms: u64) -> Duration {
        Duration::from_millis(self.bounded(key, default_ms, min_ms, max_ms))
    }

    /// A socket address such as `127.0.0.1:8081`.
    pub fn socket_addr(&mut self, key: &str, default: &str) -> SocketAddr {
        let fallback: SocketAddr = default.parse().expect("default socket address is valid");
        self.parse(key, fallback)
    }

    /// A comma-separated list of non-empty items, `default` when unset.
    pub fn list(&mut self, key: &str, default: &[&str]) -> Vec<String> {
        match self.raw(key) {
            None => default.iter().map(|s| (*s).to_owned()).collect(),
            Some(v) => {
                let items: Vec<String> = v.split(',').map(|s| s.trim().to_owned()).collect();
                if items.iter().any(String::is_empty) {
                    self.errors.push(format!("{key}={v:?} has an empty item"));
                }
                items.into_iter().filter(|s| !s.is_empty()).collect()
            }
        }
    }

    /// Every `<prefix>NAME=value` as (`name`, `value`), for settings passed through to a library: `NAME` is
    /// lowercased and its `_` become `.` (`CES_KAFKA_PROP_SECURITY_PROTOCOL` → `security.protocol`). Names
    /// in `reserved` are refused: the service sets them itself and relies on their values.
    pub fn passthrough(&mut self, prefix: &str, reserved: &[&str]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for key in self.source.keys_with_prefix(prefix) {
            let name = key[prefix.len()..].to_ascii_lowercase().replace('_', ".");
            let Some(value) = self.raw(&key) else {
                continue;
            };
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.') {
                self.errors.push(format!("{key} does not name a property"));
            } else if reserved.contains(&name.as_str()) {
                self.errors
                    .push(format!("{key} sets {name}, which CES manages itself"));
            } else {
                out.push((name, value));
            }
        }
        out
    }

    /// Records an error unless `ok`.
    pub fn check(&mut self, ok: bool, message: impl FnOnce() -> String) {
        if !ok {
            self.errors.push(message());
        }
    }

    /// `Ok` when every variable read so far was valid, otherwise every error.
    pub fn finish(self) -> Result<(), Error> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(Error::Config(ConfigErrors(self.errors)))
        }
    }
}

/// Settings every service reads: where Redis is and how to log.
#[derive(Debug, Clone)]
pub struct Common {
    /// Redis URL (`redis://` or `rediss://` for TLS, `[user:password@]host:port[/db]`; for Redis Cluster
    /// `redis-cluster://` or `rediss-cluster://`, `[user:password@]host:port?node=host:port&node=...` naming
    /// several seed nodes). It may hold a password:
    /// print [`Common::redis_url_redacted`] instead.
    pub redis_url: String,
    /// TLS to Redis trusting only this CA (`CES_REDIS_TLS_CA_FILE`); `rediss://` without it trusts the system's
    /// roots.
    pub redis_tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// `CES_REDIS_DURABLE_RESTARTS`: the operator states that Redis runs with `appendonly yes` and `appendfsync
    /// always` and never fails over to a replica, so a restart keeps every acknowledged write and sessions keep
    /// their epoch across it. Off (the default), any restart or failover starts new epochs (docs/scaling.md).
    pub redis_durable_restarts: bool,
    /// `CES_REDIS_EVICTION`: what to do at start when a Redis primary may evict keys (`maxmemory-policy` other than
    /// `noeviction`): `refuse` to start (the default) or `warn` and go on.
    pub redis_refuse_eviction: bool,
    /// Log filter in `RUST_LOG` syntax.
    pub log: String,
    /// Log line format.
    pub log_format: LogFormat,
}

impl Common {
    /// Reads `CES_REDIS_URL`, `CES_REDIS_TLS_CA_FILE`, `CES_LOG` and `CES_LOG_FORMAT`.
    pub fn read(v: &mut Vars<'_>) -> Self {
        let redis_url = v.string("CES_REDIS_URL", "redis://127.0.0.1:6379");
        let ca_file = v.optional("CES_REDIS_TLS_CA_FILE");
        let redis_durable_restarts = v.parse("CES_REDIS_DURABLE_RESTARTS", false);
        let eviction = v.string("CES_REDIS_EVICTION", "refuse");
        v.check(eviction == "refuse" || eviction == "warn", || {
            format!("CES_REDIS_EVICTION={eviction:?} must be refuse or warn")
        });
        let log = v.string("CES_LOG", "info");
        let log_format = v.parse("CES_LOG_FORMAT", LogFormat::Auto);
        let shown = redact_url(&redis_url);
        let tls = ["rediss://", "rediss-cluster://"]
            .iter()
            .any(|s| redis_url.starts_with(s));
        let plain = ["redis://", "redis-cluster://"]
            .iter()
            .any(|s| redis_url.starts_with(s));
        v.check(tls || plain, || {
            format!(
                "CES_REDIS_URL={shown:?} must start with redis://, rediss:// (TLS), redis-cluster:// or \
                 rediss-cluster:// (Redis Cluster)"
            )
        });
        if tls || plain {
            // Host, port and the cluster seeds are checked here, not at the first connection attempt.
            v.check(
                fred::types::config::Config::from_url(&redis_url).is_ok(),
                || format!("CES_REDIS_URL={shown:?} is not a valid Redis URL"),
            );
        }
        let redis_tls = match &ca_file {
            None => None,
            Some(_) if !tls => {
                v.check(false, || {
                    "CES_REDIS_TLS_CA_FILE is set but CES_REDIS_URL is not rediss:// or rediss-cluster://"
                        .into()
                });
                None
            }
            Some(path) => match crate::tls::client_config(std::path::Path::new(path)) {
                Ok(config) => Some(config),
                Err(e) => {
                    v.check(false, || format!("CES_REDIS_TLS_CA_FILE: {e}"));
                    None
                }
            },
        };
        Self {
            redis_url,
            redis_tls,
            redis_durable_restarts,
            redis_refuse_eviction: eviction != "warn",
            log,
            log_format,
        }
    }

    /// A Redis client builder for this configuration (URL, credentials, TLS).
    pub fn redis_builder(&self) -> Result<fred::types::Builder, fred::error::Error> {
        crate::redis::builder_with_tls(&self.redis_url, self.redis_tls.clone())
    }

    /// The Redis URL with its password replaced by `***`, for logs and error messages.
    pub fn redis_url_redacted(&self) -> String {
        redact_url(&self.redis_url)
    }
}

/// `url` with the password of its `user:password@` part replaced by `***`.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let user = rest[..at].split_once(':').map_or("", |(user, _)| user);
            format!("{scheme}://{user}:***{}", &rest[at..])
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(pairs: &[(&'static str, &str)]) -> HashMap<&'static str, String> {
        pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
    }

    #[test]
    fn redis_passwords_never_reach_messages() {
        assert_eq!(
            redact_url("rediss://ces:s3cret@redis:6380/0"),
            "rediss://ces:***@redis:6380/0"
        );
        assert_eq!(redact_url("redis://:s3cret@redis"), "redis://:***@redis");
        assert_eq!(redact_url("redis://redis:6379"), "redis://redis:6379");
        let src = source(&[("CES_REDIS_URL", "http://u:s3cret@redis")]);
        let mut vars = Vars::new(&src);
        let _ = Common::read(&mut vars);
        let err = vars.finish().unwrap_err().to_string();
        assert!(
            err.contains("u:***@redis") && !err.contains("s3cret"),
            "{err}"
        );
        let src = source(&[
            ("CES_REDIS_URL", "redis://redis"),
            ("CES_REDIS_TLS_CA_FILE", "/nonexistent.pem"),
        ]);
        let mut vars = Vars::new(&src);
        let _ = Common::read(&mut vars);
        let err = vars.finish().unwrap_err().to_string();
        assert!(err.contains("not rediss://"), "{err}");
    }

    #[test]
    fn cluster_urls_are_accepted_with_every_seed_and_anything_else_is_refused() {
        for url in [
            "redis://r:6379",
            "rediss://u:p@r:6380/0",
            "redis-cluster://127.0.0.1:7001?node=127.0.0.1:7002&node=127.0.0.1:7003",
            "rediss-cluster://u:p@r1:7001?node=r2:7001",
        ] {
            let src = source(&[("CES_REDIS_URL", url)]);
            let mut vars = Vars::new(&src);
            let common = Common::read(&mut vars);
            vars.finish().unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(common.redis_url, url);
        }
        let config = fred::types::config::Config::from_url(
            "redis-cluster://127.0.0.1:7001?node=127.0.0.1:7002&node=127.0.0.1:7003",
        )
        .unwrap();
        assert!(config.server.is_clustered());
        assert_eq!(config.server.hosts().len(), 3);
        assert_eq!(
            redact_url("redis-cluster://u:s3cret@r1:7001?node=r2:7001"),
            "redis-cluster://u:***@r1:7001?node=r2:7001"
        );
        for bad in [
            "http://r:6379",
            "redis-sentinel://r:26379",
            "redis-cluster://",
            "redis://r:notaport",
        ] {
            let src = source(&[("CES_REDIS_URL", bad)]);
            let mut vars = Vars::new(&src);
            let _ = Common::read(&mut vars);
            assert!(vars.finish().is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn defaults_apply_only_when_unset() {
        let src = source(&[]);
        let mut vars = Vars::new(&src);
        assert_eq!(vars.string("CES_A", "x"), "x");
        assert_eq!(vars.bounded("CES_B", 5, 1, 10), 5);
        assert_eq!(vars.list("CES_C", &["a", "b"]), vec!["a", "b"]);
        vars.finish().unwrap();
    }

    #[test]
    fn every_error_is_reported_not_just_the_first() {
        let src = source(&[
            ("CES_N", "abc"),
            ("CES_R", "99"),
            ("CES_E", "  "),
            ("CES_L", "a,,b"),
        ]);
        let mut vars = Vars::new(&src);
        let _ = vars.bounded("CES_N", 1, 0, 10);
        let _ = vars.bounded("CES_R", 1, 0, 10);
        let _ = vars.string("CES_E", "d");
        let _ = vars.list("CES_L", &[]);
        let _ = vars.required("CES_SECRET", "the signing key");
        let Err(Error::Config(ConfigErrors(errors))) = vars.finish() else {
            panic!("expected config errors");
        };
        assert_eq!(errors.len(), 5, "{errors:?}");
        assert!(errors[0].contains("CES_N=\"abc\" is invalid"));
        assert!(errors[1].contains("CES_R=99 is out of range 0..=10"));
        assert!(errors[2].contains("CES_E is set but empty"));
        assert!(errors[3].contains("empty item"));
        assert!(errors[4].contains("CES_SECRET is required"));
    }

    #[test]
    fn invalid_value_never_falls_back_silently() {
        let src = source(&[("CES_ADDR", "not-an-addr")]);
        let mut vars = Vars::new(&src);
        let _ = vars.socket_addr("CES_ADDR", "127.0.0.1:1");
        assert!(vars.finish().is_err());
    }

    #[test]
    fn values_are_trimmed_and_lists_split() {
        let src = source(&[("CES_L", " a , b "), ("CES_D", " 250 ")]);
        let mut vars = Vars::new(&src);
        assert_eq!(vars.list("CES_L", &[]), vec!["a", "b"]);
        assert_eq!(vars.millis("CES_D", 1, 1, 1000), Duration::from_millis(250));
        vars.finish().unwrap();
    }

    #[test]
    fn a_recording_source_names_what_is_set_but_never_read() {
        let env: HashMap<&'static str, String> = [
            ("CES_READ", "1"),
            ("CES_TYPO", "1"),
            ("CES_KAFKA_PROP_SASL_USERNAME", "u"),
            ("OTHER", "1"),
        ]
        .into_iter()
        .map(|(k, v)| (k, v.to_owned()))
        .collect();
        let recording = Recording::new(&env);
        assert_eq!(
            recording.unread("CES_"),
            ["CES_KAFKA_PROP_SASL_USERNAME", "CES_READ", "CES_TYPO"]
        );
        let mut v = Vars::new(&recording);
        assert_eq!(v.string("CES_READ", "0"), "1");
        assert_eq!(v.string("CES_UNSET", "d"), "d");
        assert_eq!(recording.keys_with_prefix("CES_KAFKA_PROP_").len(), 1);
        assert_eq!(
            recording.unread("CES_"),
            ["CES_TYPO"],
            "read by name or under a read prefix"
        );
    }
}
