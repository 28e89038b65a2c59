//! Output shared by the `dlq` subcommands: where it goes (stdout, locked once and flushed at the end), the JSON
//! line every `--json` form is written as, and the placeholder for what a dead letter does not say. Tables are
//! [`crate::table`]; what each subcommand puts in them lives beside the subcommand.

use std::io::{StdoutLock, Write};

use serde::Serialize;

/// The text of a cell whose value is unknown or absent.
pub(super) const NONE: &str = "-";

/// Runs `write` over stdout, locked for the whole output so lines never interleave, and flushes it.
pub(super) fn to_stdout(
    write: impl FnOnce(&mut StdoutLock<'static>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    write(&mut out)?;
    out.flush()?;
    Ok(())
}

/// Writes `value` as one line of JSON.
pub(super) fn json_line(out: &mut impl Write, value: &impl Serialize) -> anyhow::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    writeln!(out)?;
    Ok(())
}

/// `s`, or [`NONE`] when absent.
pub(super) fn or_none(s: Option<&str>) -> String {
    s.unwrap_or(NONE).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_one_line() {
        let mut out = Vec::new();
        json_line(&mut out, &serde_json::json!({"a": [1, 2], "b": "x\ny"})).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"a\":[1,2],\"b\":\"x\\ny\"}\n"
        );
    }

    #[test]
    fn absent_is_a_dash() {
        assert_eq!(or_none(None), "-");
        assert_eq!(or_none(Some("x")), "x");
    }
}
