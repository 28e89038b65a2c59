//! Usage errors: the command cannot be run as given (a secret on the command line, an invalid `CES_*`
//! variable), as opposed to a failure while running it. `main` exits with [`EXIT_USAGE`] for them, as clap does for
//! the errors it finds itself, and with 1 for every other error.

use std::fmt;

/// Exit code of a usage error (clap's own code for bad arguments).
pub(crate) const EXIT_USAGE: u8 = 2;

/// Exit code of any other failure.
pub(crate) const EXIT_FAILURE: u8 = 1;

/// A usage error; its message says what to do instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Usage(pub(crate) String);

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

impl From<ces_runtime::Error> for Usage {
    /// Invalid `CES_*` variables, every one listed.
    fn from(e: ces_runtime::Error) -> Self {
        Self(e.to_string())
    }
}

/// The exit code for `e`: [`EXIT_USAGE`] when it is (or wraps) a [`Usage`], else [`EXIT_FAILURE`].
pub(crate) fn exit_code(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<Usage>().is_some() {
        EXIT_USAGE
    } else {
        EXIT_FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context as _;

    #[test]
    fn usage_errors_exit_2_even_with_context_and_others_1() {
        let usage = anyhow::Error::new(Usage("no".into()));
        assert_eq!(exit_code(&usage), 2);
        let wrapped = Err::<(), _>(Usage("no".into()))
            .context("while reading")
            .unwrap_err();
        assert_eq!(exit_code(&wrapped), 2);
        assert_eq!(exit_code(&anyhow::anyhow!("broker down")), 1);
        assert_eq!(Usage("x y".into()).to_string(), "x y");
    }
}
