//! Plain aligned columns for human output: a header row, two spaces between columns, no borders, so the
//! output stays greppable and `awk`-friendly. Cells are expected on one line (callers escape control
//! characters).

use std::io::{self, Write};

/// Writes `header` and `rows` with every column as wide as its widest cell (in characters). The last column
/// is not padded, so lines carry no trailing spaces.
pub(crate) fn write(out: &mut impl Write, header: &[&str], rows: &[Vec<String>]) -> io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
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
    for row in rows {
        line(out, &mut row.iter().map(String::as_str))?;
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
}
