//! The error type of `ces-protocol`.

use std::fmt;

/// Everything that can go wrong decoding or loading protocol data. None of these are retryable: they describe
/// bad input (tokens, envelopes, schema files), which retrying cannot fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A session token could not be accepted.
    #[error("session token rejected: {0}")]
    Token(#[from] crate::token::TokenError),
    /// A Redis envelope could not be decoded.
    #[error("malformed envelope: {0}")]
    Envelope(#[from] prost::DecodeError),
    /// A schema directory could not be loaded; every bad file is listed.
    #[error("invalid schemas in {dir}:\n{problems}")]
    Schemas {
        /// The directory.
        dir: String,
        /// What is wrong, one entry per file.
        problems: ConfigErrors,
    },
}

/// A list of configuration problems, one per line when displayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "  - {e}")?;
        }
        Ok(())
    }
}
