//! The PROXY protocol (v1 text and v2 binary, as HAProxy's `send-proxy`/`send-proxy-v2` and cloud load balancers
//! in TCP mode send it): a trusted proxy that forwards TCP rather than HTTP prefixes each connection with the
//! client's address. [`read_header`] takes exactly the header's bytes off the stream, so what follows (a TLS
//! handshake or an HTTP request) is read as if the header had never been there; `ppp` parses it.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt as _};

/// The v2 header's signature.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Longest v1 header, CRLF included (the specification's bound).
const V1_MAX_BYTES: usize = 107;
/// Longest v2 address block and TLVs accepted (addresses take at most 216 bytes; the rest is room for TLVs such as
/// a cloud load balancer's endpoint id).
const V2_MAX_PAYLOAD: usize = 2048;

/// Why a connection's PROXY header was refused.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    /// The connection does not start with a PROXY header.
    #[error("no PROXY protocol header")]
    Missing,
    /// It starts like one but is not valid.
    #[error("invalid PROXY protocol header: {0}")]
    Invalid(String),
    /// Reading it failed (the peer closed, a reset).
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads the PROXY header at the start of `stream` and returns the client address it carries; `None` when the
/// proxy speaks for itself (v2 `LOCAL`, v1 `UNKNOWN`: its health checks), where the connection's own peer stands.
/// The caller bounds the time it may take.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Option<SocketAddr>, HeaderError> {
    // Both versions are at least 12 bytes long (v1's shortest is `PROXY UNKNOWN\r\n`).
    let mut header = vec![0u8; 12];
    stream.read_exact(&mut header).await?;
    if header == V2_SIGNATURE {
        let mut fixed = [0u8; 4];
        stream.read_exact(&mut fixed).await?;
        header.extend_from_slice(&fixed);
        let len = usize::from(u16::from_be_bytes([fixed[2], fixed[3]]));
        if len > V2_MAX_PAYLOAD {
            return Err(HeaderError::Invalid(format!(
                "{len} bytes of addresses and TLVs (at most {V2_MAX_PAYLOAD})"
            )));
        }
        let start = header.len();
        header.resize(start + len, 0);
        stream.read_exact(&mut header[start..]).await?;
    } else if header.starts_with(b"PROXY ") {
        // Byte by byte up to the CRLF: nothing after the header may be taken off the stream.
        while !header.ends_with(b"\r\n") {
            if header.len() >= V1_MAX_BYTES {
                return Err(HeaderError::Invalid(format!(
                    "no CRLF within {V1_MAX_BYTES} bytes"
                )));
            }
            header.push(stream.read_u8().await?);
        }
    } else {
        return Err(HeaderError::Missing);
    }
    client_of(&header)
}

/// The client address in a complete header.
fn client_of(header: &[u8]) -> Result<Option<SocketAddr>, HeaderError> {
    use ppp::{HeaderResult, v1, v2};
    let invalid = |e: &dyn std::fmt::Debug| HeaderError::Invalid(format!("{e:?}"));
    match HeaderResult::parse(header) {
        HeaderResult::V2(Ok(h)) => match (h.command, h.addresses) {
            (v2::Command::Local, _) => Ok(None),
            (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
                Ok(Some(SocketAddr::from((a.source_address, a.source_port))))
            }
            (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
                Ok(Some(SocketAddr::from((a.source_address, a.source_port))))
            }
            // A UNIX socket or an unspecified family carries no client IP address.
            (v2::Command::Proxy, v2::Addresses::Unix(_) | v2::Addresses::Unspecified) => Ok(None),
        },
        HeaderResult::V1(Ok(h)) => match h.addresses {
            v1::Addresses::Unknown => Ok(None),
            v1::Addresses::Tcp4(a) => Ok(Some(SocketAddr::from((a.source_address, a.source_port)))),
            v1::Addresses::Tcp6(a) => Ok(Some(SocketAddr::from((a.source_address, a.source_port)))),
        },
        HeaderResult::V2(Err(e)) => Err(invalid(&e)),
        HeaderResult::V1(Err(e)) => Err(invalid(&e)),
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt as _;

    use super::*;

    /// Writes `parts` into one end of a pipe, with a pause between them, and reads the header from the other;
    /// returns what it found and the bytes left after it.
    async fn read(parts: &[&[u8]]) -> (Result<Option<SocketAddr>, String>, Vec<u8>) {
        let (mut client, mut server) = tokio::io::duplex(4096);
        let parts: Vec<Vec<u8>> = parts.iter().map(|p| p.to_vec()).collect();
        let writer = tokio::spawn(async move {
            for part in parts {
                client.write_all(&part).await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        let found = read_header(&mut server).await.map_err(|e| e.to_string());
        writer.await.unwrap();
        let mut rest = Vec::new();
        if found.is_ok() {
            let _ = tokio::time::timeout(
                std::time::Duration::from_millis(50),
                server.read_to_end(&mut rest),
            )
            .await;
        }
        (found, rest)
    }

    fn v2(command: u8, family: u8, addresses: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
        h.extend_from_slice(addresses);
        h
    }

    #[tokio::test]
    async fn a_v1_header_gives_the_client_and_leaves_the_request_whole() {
        let (found, rest) =
            read(&[b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 8080\r\nGET / HTTP/1.1\r\n"]).await;
        assert_eq!(found, Ok(Some("203.0.113.7:51234".parse().unwrap())));
        assert_eq!(rest, b"GET / HTTP/1.1\r\n");
        // Split anywhere, IPv6.
        let (found, rest) = read(&[
            b"PROXY TCP6 2001:db8::1 ",
            b"2001:db8::2 443 8",
            b"080\r\nX",
        ])
        .await;
        assert_eq!(found, Ok(Some("[2001:db8::1]:443".parse().unwrap())));
        assert_eq!(rest, b"X");
        let (found, rest) = read(&[b"PROXY UNKNOWN\r\nGET"]).await;
        assert_eq!((found, rest), (Ok(None), b"GET".to_vec()));
    }

    #[tokio::test]
    async fn a_v2_header_gives_the_client_and_a_local_one_none() {
        let mut ipv4 = vec![198, 51, 100, 9, 10, 0, 0, 1];
        ipv4.extend_from_slice(&40000u16.to_be_bytes());
        ipv4.extend_from_slice(&8080u16.to_be_bytes());
        let mut with_tlv = ipv4.clone();
        with_tlv.extend_from_slice(&[0x04, 0x00, 0x01, 0x00]); // a NOOP TLV
        let header = v2(1, 0x11, &with_tlv);
        let (first, second) = header.split_at(14);
        let (found, rest) = read(&[first, second, b"\x16\x03\x01"]).await;
        assert_eq!(found, Ok(Some("198.51.100.9:40000".parse().unwrap())));
        assert_eq!(
            rest, b"\x16\x03\x01",
            "a TLS handshake after it is untouched"
        );
        let mut ipv6 = vec![0u8; 32];
        ipv6[0] = 0x20;
        ipv6[1] = 0x01;
        ipv6[15] = 5;
        ipv6.extend_from_slice(&1234u16.to_be_bytes());
        ipv6.extend_from_slice(&443u16.to_be_bytes());
        let (found, _) = read(&[&v2(1, 0x21, &ipv6)]).await;
        assert_eq!(found, Ok(Some("[2001::5]:1234".parse().unwrap())));
        let (found, rest) = read(&[&v2(0, 0x00, &[]), b"GET"]).await;
        assert_eq!((found, rest), (Ok(None), b"GET".to_vec()));
    }

    #[tokio::test]
    async fn anything_else_is_refused() {
        let (found, _) = read(&[b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"]).await;
        assert_eq!(found, Err("no PROXY protocol header".into()));
        let (found, _) = read(&[b"PROXY TCP4 not-an-address 10.0.0.1 1 2\r\n"]).await;
        assert!(
            found
                .unwrap_err()
                .starts_with("invalid PROXY protocol header")
        );
        let long = format!("PROXY TCP4 {}\r\n", "1".repeat(200));
        let (found, _) = read(&[long.as_bytes()]).await;
        assert_eq!(
            found,
            Err("invalid PROXY protocol header: no CRLF within 107 bytes".into())
        );
        // The largest payload accepted, and one byte more.
        let mut largest = vec![0u8; V2_MAX_PAYLOAD];
        largest[..4].copy_from_slice(&[203, 0, 113, 1]);
        largest[8..10].copy_from_slice(&7u16.to_be_bytes());
        let (found, _) = read(&[&v2(1, 0x11, &largest)]).await;
        assert_eq!(found, Ok(Some("203.0.113.1:7".parse().unwrap())));
        let (found, _) = read(&[&v2(1, 0x11, &vec![0u8; V2_MAX_PAYLOAD + 1])]).await;
        assert!(found.unwrap_err().contains("2049 bytes"));
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        let (found, _) = read(&[&huge]).await;
        assert!(found.unwrap_err().contains("65535 bytes"));
        let (found, _) = read(&[b"PROXY TCP4"]).await;
        assert!(
            found
                .unwrap_err()
                .starts_with("reading the PROXY protocol header")
        );
    }
}
