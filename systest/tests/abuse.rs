//! Attacks on an internet-facing edge, each through the real parts an attacker would meet (HAProxy, TCP, HTTP):
//! every test here failed before its defence existed.

mod common;

use std::net::{IpAddr, Ipv4Addr};

use ces_systest::Redis;
use ces_systest::haproxy::Haproxy;

/// An HTTP client whose connections come from `ip` (another address of the loopback network): a host of its own.
fn host(ip: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::from(ip)))
        .build()
        .expect("client")
}

/// HAProxy adds the client's address as a header line of its own, after whatever the client sent: a client that
/// writes its own `X-Forwarded-For` must not get a budget per invented address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_forwarded_for_through_haproxy_gets_one_budget_per_real_host() -> anyhow::Result<()>
{
    let redis = Redis::start().await?;
    let budget = 20;
    let edge = common::start_edge(
        &redis.url(),
        "edge-a",
        &[
            ("CES_TRUSTED_PROXIES", "127.0.0.1".to_owned()),
            ("CES_LIMIT_REGISTRATIONS_PER_MIN", budget.to_string()),
        ],
    )
    .await?;
    let proxy = Haproxy::start(&[edge.base.trim_start_matches("http://")]).await?;
    let attacker = host([127, 0, 0, 2]);
    let (mut created, mut limited) = (0, 0);
    for _ in 0..500 {
        let spoofed: [u8; 4] = rand::random();
        let response = attacker
            .post(format!("{}/v1/sessions", proxy.base))
            .header("x-forwarded-for", IpAddr::from(spoofed).to_string())
            .send()
            .await?;
        match response.status().as_u16() {
            201 => created += 1,
            429 => {
                let retry: u64 = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .expect("a 429 says when to come back");
                assert!((1..=60).contains(&retry), "Retry-After {retry}");
                limited += 1;
            }
            other => panic!("unexpected status {other}: {}", response.text().await?),
        }
    }
    assert!(
        (1..=budget).contains(&created),
        "{created} registrations succeeded from one host; its budget is {budget}"
    );
    assert_eq!(created + limited, 500);
    // Another host keeps its own budget, spoofing or not.
    let neighbour = host([127, 0, 0, 3]);
    let response = neighbour
        .post(format!("{}/v1/sessions", proxy.base))
        .header("x-forwarded-for", "127.0.0.2")
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 201);
    edge.stop().await
}
