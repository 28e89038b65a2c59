//! `cesctl dlq show P:O`: one dead letter in full — every header, the key and the whole value — as text or as
//! one JSON object.

use std::io::Write;

use super::args::ShowArgs;
use super::letter::{self, DeadLetter, Header};
use super::render;
use super::{blocking, kafka};
use crate::kafka::Kafka;

/// Runs `cesctl dlq show` against `topic` through `kafka`.
pub(super) async fn run(kafka: Kafka, topic: String, args: ShowArgs) -> anyhow::Result<()> {
    let c = args.coord;
    let letter = blocking(move || {
        let reader = kafka::Reader::connect(&kafka, &topic)?;
        let (mut found, _) = reader.read_at(&[c].into())?;
        Ok(found.remove(&c).expect("read_at returns every coordinate"))
    })
    .await?;
    render::to_stdout(|out| {
        if args.json {
            render::json_line(out, &letter.to_json())
        } else {
            Ok(write_letter(out, &letter)?)
        }
    })
}

/// The text form: headers one per line as `name: value`, then the key and the whole value. Control characters
/// are escaped everywhere (in the value all but newlines and tabs), so a record can neither fake a line of this
/// output nor drive the terminal.
fn write_letter(out: &mut impl Write, d: &DeadLetter) -> std::io::Result<()> {
    let bytes = |b: Option<&[u8]>, keep_lines: bool| match letter::encode(b) {
        (None, _) => "(none)".to_owned(),
        (Some(s), Some("base64")) => format!(
            "(not UTF-8, {} bytes, base64) {s}",
            b.map_or(0, <[u8]>::len)
        ),
        (Some(s), _) if keep_lines => s
            .split_inclusive(['\n', '\t'])
            .map(|part| {
                let end = part.len() - part.ends_with(['\n', '\t']) as usize;
                format!("{}{}", letter::escape(&part[..end]), &part[end..])
            })
            .collect(),
        (Some(s), _) => letter::escape(&s).into_owned(),
    };
    let text = |b: Option<&[u8]>| bytes(b, false);
    writeln!(out, "dead letter {}", d.coord())?;
    if let Some(ts) = d.timestamp {
        writeln!(out, "timestamp: {ts}")?;
    }
    writeln!(out, "headers:")?;
    for h in &d.headers {
        match h {
            Header::Named(name, value) => writeln!(
                out,
                "  {}: {}",
                letter::escape(name),
                text(value.as_deref())
            )?,
            Header::Unreadable => writeln!(out, "  (a name that is not UTF-8; unreadable)")?,
        }
    }
    writeln!(out, "key: {}", text(d.key.as_deref()))?;
    match &d.value {
        Some(v) => writeln!(out, "value ({} bytes):\n{}", v.len(), bytes(Some(v), true))?,
        None => writeln!(out, "value: (none)")?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_shows_every_header_and_the_bytes() {
        let d = DeadLetter {
            partition: 1,
            offset: 9,
            timestamp: Some(1_700_000_000_000),
            key: None,
            value: Some(vec![0xff, 0x00]),
            headers: vec![
                Header::named("ces-dlq-reason", b"invalid_utf8"),
                Header::Named("empty".into(), None),
                Header::Unreadable,
                Header::named("x-evil\n  ces-dlq-reason", b"fake\x1b[2J\n\tline"),
            ],
        };
        let mut out = Vec::new();
        write_letter(&mut out, &d).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "dead letter 1:9\ntimestamp: 1700000000000\nheaders:\n  ces-dlq-reason: invalid_utf8\n  \
             empty: (none)\n  (a name that is not UTF-8; unreadable)\n  x-evil\\n  ces-dlq-reason: \
             fake\\u{1b}[2J\\n\\tline\nkey: (none)\nvalue (2 bytes):\n(not UTF-8, 2 bytes, base64) /wA=\n"
        );
    }

    #[test]
    fn a_text_value_keeps_its_lines_and_tabs_and_nothing_else() {
        let d = DeadLetter {
            partition: 0,
            offset: 0,
            timestamp: None,
            key: Some(b"k\r".to_vec()),
            value: Some(b"{\n\t\"a\": 1\r\n}\x1b[0m\n".to_vec()),
            headers: Vec::new(),
        };
        let mut out = Vec::new();
        write_letter(&mut out, &d).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "dead letter 0:0\nheaders:\nkey: k\\r\nvalue (17 bytes):\n{\n\t\"a\": 1\\r\n}\\u{1b}[0m\n\n"
        );
    }
}
