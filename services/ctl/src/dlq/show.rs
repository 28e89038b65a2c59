//! `cesctl dlq show P:O`: one dead letter in full — every header, the key and the whole value — as text or as
//! one JSON object.

use std::io::Write;

use super::args::ShowArgs;
use super::letter::{self, DeadLetter};
use super::render;
use super::{blocking, kafka};
use crate::kafka::Kafka;

/// Runs `cesctl dlq show` against `topic` through `kafka`.
pub(super) async fn run(kafka: Kafka, topic: String, args: ShowArgs) -> anyhow::Result<()> {
    let c = args.coord;
    let letter = blocking(move || {
        let reader = kafka::Reader::connect(&kafka, &topic)?;
        let mut found = reader.read_at(&[c].into())?;
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

/// The text form: headers one per line as `name: value`, then the key and the whole value.
fn write_letter(out: &mut impl Write, d: &DeadLetter) -> std::io::Result<()> {
    let text = |b: Option<&[u8]>| match letter::encode(b) {
        (None, _) => "(none)".to_owned(),
        (Some(s), Some("base64")) => format!(
            "(not UTF-8, {} bytes, base64) {s}",
            b.map_or(0, <[u8]>::len)
        ),
        (Some(s), _) => s.into_owned(),
    };
    writeln!(out, "dead letter {}", d.coord())?;
    if let Some(ts) = d.timestamp {
        writeln!(out, "timestamp: {ts}")?;
    }
    writeln!(out, "headers:")?;
    for (name, value) in &d.headers {
        writeln!(out, "  {name}: {}", text(value.as_deref()))?;
    }
    writeln!(out, "key: {}", text(d.key.as_deref()))?;
    match &d.value {
        Some(v) => writeln!(out, "value ({} bytes):\n{}", v.len(), text(Some(v)))?,
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
                ("ces-dlq-reason".into(), Some(b"invalid_utf8".to_vec())),
                ("empty".into(), None),
            ],
        };
        let mut out = Vec::new();
        write_letter(&mut out, &d).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "dead letter 1:9\ntimestamp: 1700000000000\nheaders:\n  ces-dlq-reason: invalid_utf8\n  \
             empty: (none)\nkey: (none)\nvalue (2 bytes):\n(not UTF-8, 2 bytes, base64) /wA=\n"
        );
    }
}
