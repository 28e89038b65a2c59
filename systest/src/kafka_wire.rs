//! Producing records by writing the Kafka protocol itself, for records no client library writes: a header whose
//! name is not UTF-8. Kafka's Java client and librdkafka (through rdkafka) only take names as strings, but the
//! protocol carries bytes and the broker stores them as they come, so a hostile or broken producer can send them.
//!
//! One `Produce` request (version 3, `acks=all`) with one record batch (magic 2, uncompressed, CRC-32C) per call,
//! over a plain TCP connection to the partition's leader; in tests the single broker is every partition's leader.

use anyhow::{Context as _, bail, ensure};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// A record to write byte for byte.
#[derive(Debug, Clone, Default)]
pub struct RawRecord {
    /// Key bytes (`None`: no key).
    pub key: Option<Vec<u8>>,
    /// Value bytes (`None`: a null value).
    pub value: Option<Vec<u8>>,
    /// Headers in order: name bytes (any, UTF-8 or not) and value bytes.
    pub headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// Produces `records` as one batch to `partition` of `topic` at `broker` (`host:port`, the partition's leader) and
/// waits for every in-sync replica; returns the offset of the first record.
pub async fn produce(
    broker: &str,
    topic: &str,
    partition: i32,
    records: &[RawRecord],
) -> anyhow::Result<i64> {
    ensure!(!records.is_empty(), "nothing to produce");
    let batch = record_batch(records, now_ms());
    let mut body = Vec::new();
    put_i16(&mut body, -1); // transactional id: null
    put_i16(&mut body, -1); // acks: all
    put_i32(&mut body, 10_000); // timeout ms
    put_i32(&mut body, 1); // one topic
    put_str(&mut body, topic.as_bytes());
    put_i32(&mut body, 1); // one partition
    put_i32(&mut body, partition);
    put_i32(&mut body, i32::try_from(batch.len())?);
    body.extend_from_slice(&batch);

    const PRODUCE: i16 = 0;
    const VERSION: i16 = 3;
    const CORRELATION: i32 = 7;
    let mut request = Vec::new();
    put_i16(&mut request, PRODUCE);
    put_i16(&mut request, VERSION);
    put_i32(&mut request, CORRELATION);
    put_str(&mut request, b"ces-systest-wire");
    request.extend_from_slice(&body);

    let mut conn = TcpStream::connect(broker)
        .await
        .with_context(|| format!("connecting to {broker}"))?;
    conn.write_all(&(i32::try_from(request.len())?).to_be_bytes())
        .await?;
    conn.write_all(&request).await?;
    let size = conn
        .read_i32()
        .await
        .context("reading the produce response")?;
    let mut answer = vec![0; usize::try_from(size)?];
    conn.read_exact(&mut answer).await?;
    let mut r = Reader(&answer);
    ensure!(r.i32()? == CORRELATION, "response to another request");
    ensure!(r.i32()? == 1, "expected one topic in the response");
    let topic_len = usize::try_from(r.i16()?)?;
    r.bytes(topic_len)?;
    ensure!(r.i32()? == 1, "expected one partition in the response");
    let _partition = r.i32()?;
    let error = r.i16()?;
    let base_offset = r.i64()?;
    if error != 0 {
        bail!("the broker refused the batch with error code {error}");
    }
    Ok(base_offset)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A record batch (magic 2) holding `records`, all stamped `timestamp`.
fn record_batch(records: &[RawRecord], timestamp: i64) -> Vec<u8> {
    // Everything the CRC covers: from the attributes to the end.
    let mut tail = Vec::new();
    put_i16(&mut tail, 0); // attributes: no compression, create time, not transactional
    put_i32(
        &mut tail,
        i32::try_from(records.len() - 1).unwrap_or(i32::MAX),
    ); // last offset delta
    put_i64(&mut tail, timestamp); // base timestamp
    put_i64(&mut tail, timestamp); // max timestamp
    put_i64(&mut tail, -1); // producer id
    put_i16(&mut tail, -1); // producer epoch
    put_i32(&mut tail, -1); // base sequence
    put_i32(&mut tail, i32::try_from(records.len()).unwrap_or(i32::MAX));
    for (delta, r) in records.iter().enumerate() {
        let mut rec = Vec::new();
        rec.push(0); // attributes
        put_varint(&mut rec, 0); // timestamp delta
        put_varint(&mut rec, i64::try_from(delta).unwrap_or(i64::MAX)); // offset delta
        put_varbytes(&mut rec, r.key.as_deref());
        put_varbytes(&mut rec, r.value.as_deref());
        put_varint(&mut rec, i64::try_from(r.headers.len()).unwrap_or(i64::MAX));
        for (name, value) in &r.headers {
            put_varbytes(&mut rec, Some(name));
            put_varbytes(&mut rec, value.as_deref());
        }
        put_varint(&mut tail, i64::try_from(rec.len()).unwrap_or(i64::MAX));
        tail.extend_from_slice(&rec);
    }
    let mut batch = Vec::new();
    put_i64(&mut batch, 0); // base offset (the broker assigns it)
    // Batch length: everything after this field (leader epoch 4, magic 1, CRC 4, the tail).
    put_i32(
        &mut batch,
        i32::try_from(4 + 1 + 4 + tail.len()).unwrap_or(i32::MAX),
    );
    put_i32(&mut batch, -1); // partition leader epoch
    batch.push(2); // magic
    batch.extend_from_slice(&crc32c(&tail).to_be_bytes());
    batch.extend_from_slice(&tail);
    batch
}

/// CRC-32C (Castagnoli), as record batches carry it.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn put_i16(out: &mut Vec<u8>, v: i16) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_i32(out: &mut Vec<u8>, v: i32) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_i64(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// A protocol string: 16-bit length, then the bytes.
fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    put_i16(out, i16::try_from(s.len()).unwrap_or(i16::MAX));
    out.extend_from_slice(s);
}

/// A zig-zag varint, as record fields are encoded.
fn put_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    loop {
        let byte = (z & 0x7f) as u8;
        z >>= 7;
        if z == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Varint length (-1 for null), then the bytes.
fn put_varbytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        None => put_varint(out, -1),
        Some(b) => {
            put_varint(out, i64::try_from(b.len()).unwrap_or(i64::MAX));
            out.extend_from_slice(b);
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn bytes(&mut self, n: usize) -> anyhow::Result<&[u8]> {
        ensure!(self.0.len() >= n, "produce response cut short");
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn i16(&mut self) -> anyhow::Result<i16> {
        Ok(i16::from_be_bytes(self.bytes(2)?.try_into()?))
    }

    fn i32(&mut self) -> anyhow::Result<i32> {
        Ok(i32::from_be_bytes(self.bytes(4)?.try_into()?))
    }

    fn i64(&mut self) -> anyhow::Result<i64> {
        Ok(i64::from_be_bytes(self.bytes(8)?.try_into()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_and_varints_match_their_specifications() {
        // RFC 3720, B.4: 32 bytes of zeros.
        assert_eq!(crc32c(&[0; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        let enc = |v| {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            out
        };
        assert_eq!(enc(0), [0]);
        assert_eq!(enc(-1), [1]);
        assert_eq!(enc(1), [2]);
        assert_eq!(enc(64), [0x80, 0x01]);
        assert_eq!(enc(-65), [0x81, 0x01]);
    }
}
