//! The JSON Schemas ingest validates against, reloadable while it runs (SIGHUP).
//!
//! A reload replaces the whole set atomically, or, if any file is bad, keeps the previous set and logs every
//! problem: a typo in one schema never leaves ingest without the others, nor dead-letters events wholesale.
//! Each batch takes the set current when it starts, so one batch is judged by one set.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use ces_protocol::schema::{Schemas, UnknownTypes};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::{Error, metrics as m};

/// The current schema set and where it comes from.
#[derive(Debug)]
pub struct SchemaStore {
    dir: Option<PathBuf>,
    unknown: UnknownTypes,
    current: RwLock<Arc<Schemas>>,
}

impl SchemaStore {
    /// Loads `dir` (no directory: no schemas). Fails on any bad file.
    pub fn load(dir: Option<PathBuf>, unknown: UnknownTypes) -> Result<Self, Error> {
        let schemas = read(dir.as_ref(), unknown)?;
        Ok(Self {
            dir,
            unknown,
            current: RwLock::new(Arc::new(schemas)),
        })
    }

    /// The set to judge the next batch by.
    pub fn current(&self) -> Arc<Schemas> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Reads the directory again and swaps the new set in; on error the previous set stays.
    pub fn reload(&self) -> Result<usize, Error> {
        let result = read(self.dir.as_ref(), self.unknown);
        let outcome = if result.is_ok() {
            m::reload::OK
        } else {
            m::reload::ERROR
        };
        ::metrics::counter!(m::SCHEMA_RELOADS, "result" => outcome).increment(1);
        let schemas = result?;
        let types = schemas.types().len();
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(schemas);
        Ok(types)
    }
}

fn read(dir: Option<&PathBuf>, unknown: UnknownTypes) -> Result<Schemas, Error> {
    let schemas = match dir {
        Some(dir) => load_dir(dir, unknown)?,
        None => Schemas::new(unknown),
    };
    ::metrics::gauge!(m::SCHEMAS_LOADED).set(schemas.types().len() as f64);
    info!(types = ?schemas.types(), unknown = ?unknown, "schemas loaded");
    Ok(schemas)
}

/// Reads every file of `dir` and compiles the `<type>.json` ones ([`Schemas::from_files`]); a directory or a
/// file that cannot be read is one more problem in the list.
fn load_dir(dir: &Path, unknown: UnknownTypes) -> Result<Schemas, ces_protocol::Error> {
    let source = dir.display().to_string();
    let mut files = Vec::new();
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries {
                match entry {
                    Ok(e) => {
                        let path = e.path();
                        let name = e.file_name().to_string_lossy().into_owned();
                        let contents = if e.file_name().to_str().is_none() {
                            Err("file name is not UTF-8".to_owned())
                        } else if name.ends_with(".json") {
                            std::fs::read(&path).map_err(|e| e.to_string())
                        } else {
                            // Not a schema: never read.
                            Ok(Vec::new())
                        };
                        files.push((name, contents));
                    }
                    Err(e) => {
                        files.push(("(a directory entry).json".to_owned(), Err(e.to_string())))
                    }
                }
            }
        }
        Err(e) => {
            return Err(ces_protocol::Error::Schemas {
                dir: source,
                problems: ces_protocol::ConfigErrors(vec![e.to_string()]),
            });
        }
    }
    Schemas::from_files(&source, files, unknown)
}

/// Reloads `store` on every SIGHUP until `cancel`.
pub async fn reload_on_hangup(store: Arc<SchemaStore>, cancel: CancellationToken) {
    let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGHUP; schemas will not be reloaded");
            return;
        }
    };
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            got = hangups.recv() => {
                if got.is_none() {
                    return;
                }
                match store.reload() {
                    Ok(types) => info!(types, "SIGHUP: schemas reloaded"),
                    Err(e) => error!(error = %e, "SIGHUP: schema reload failed; the previous schemas stay in force"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_reload_keeps_the_previous_schemas() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.json"), r#"{"type":"integer"}"#).unwrap();
        let store = SchemaStore::load(Some(dir.path().to_owned()), UnknownTypes::Reject).unwrap();
        assert_eq!(store.current().types(), ["a"]);

        std::fs::write(dir.path().join("b.json"), r#"{"type":"string"}"#).unwrap();
        assert_eq!(store.reload().unwrap(), 2);
        assert_eq!(store.current().types(), ["a", "b"]);

        std::fs::write(dir.path().join("c.json"), "{").unwrap();
        assert!(store.reload().is_err());
        assert_eq!(
            store.current().types(),
            ["a", "b"],
            "the previous set stays"
        );
    }

    #[test]
    fn a_directory_loads_whole_or_reports_every_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.json"), r#"{"type":"integer"}"#).unwrap();
        std::fs::write(dir.path().join("README.md"), "ignored").unwrap();
        let s = load_dir(dir.path(), UnknownTypes::Reject).unwrap();
        assert_eq!(s.types(), ["a"]);

        std::fs::write(dir.path().join("b.json"), "{").unwrap();
        std::fs::write(dir.path().join("c.json"), r#"{"type": 7}"#).unwrap();
        std::fs::write(dir.path().join(".hidden.json"), "{}").unwrap();
        let err = load_dir(dir.path(), UnknownTypes::Reject)
            .unwrap_err()
            .to_string();
        for needle in [
            "b.json: not JSON",
            "c.json: invalid schema",
            ".hidden.json: ",
        ] {
            assert!(err.contains(needle), "{needle} missing from {err}");
        }
        let missing = load_dir(&dir.path().join("nope"), UnknownTypes::Allow)
            .unwrap_err()
            .to_string();
        assert!(missing.contains("No such file"), "{missing}");
    }
}
