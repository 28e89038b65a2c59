//! Plain aligned columns for human output: a header row, two spaces between columns, no borders, so the
//! output stays greppable and `awk`-friendly. Every cell is written with its control characters escaped
//! ([`escape`]): cells carry text from records (reasons, topics, details), which must neither break a row nor
//! drive the terminal.

use std::borrow::Cow;
use std::io::{self, Write};

/// `s` with every control character escaped (`\n`, `\u{1b}`), so text from a record can neither break a line of
/// output nor drive the terminal.
pub(crate) fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Writes `header` and `rows` with every column as wide as its widest cell (in characters). The last column
/// is not padded, so lines carry no trailing spaces.
pub(crate) fn write(out: &mut impl Write, header: &[&str], rows: &[Vec<String>]) -> io::Result<()> {
    let rows: Vec<Vec<Cow<'_, str>>> = rows
        .iter()
        .map(|row| row.iter().map(|c| escape(c)).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |out: &mut dyn Write, cells: &mut dyn Iterator<Item = &str>| -> io::Result<()> {
        let mut text = String::new();
        for (i, (cell, width)) in cells.zip(&widths).enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            text.push_str(cell);
            let pad = width.saturating_sub(cell.chars().count());
            text.extend(std::iter::repeat_n(' ', pad));
        }
        writeln!(out, "{}", text.trim_end())
    };
    line(out, &mut header.iter().copied())?;
    for row in &rows {
        line(out, &mut row.iter().map(|c| c.as_ref()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn aligns_columns() {
        let mut out = Vec::new();
        super::write(
            &mut out,
            &["A", "LONGER", "C"],
            &[
                vec!["wide cell".into(), "x".into(), "last".into()],
                vec!["é".into(), "".into(), "".into()],
            ],
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "A          LONGER  C\nwide cell  x       last\né\n"
        );
    }

    #[test]
    fn control_characters_in_cells_are_escaped() {
        let mut out = Vec::new();
        super::write(
            &mut out,
            &["A", "B"],
            &[vec!["x\n0:9  fake".into(), "\u{1b}[2Jy\r".into()]],
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "A             B\nx\\n0:9  fake  \\u{1b}[2Jy\\r\n"
        );
        assert_eq!(super::escape("plain"), std::borrow::Cow::Borrowed("plain"));
    }
}
