//! ingest's and the edges' Prometheus `/metrics` (an edge's on its internal listener, as given in `--edges`):
//! scraping them over HTTP, and the pure parsing of the text exposition (a counter summed over its labels, per-hop
//! latency sums and counts, and their means between two scrapes).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;

use crate::cli::Common;

/// The edge's gauge of WebSockets it holds.
const EDGE_CONNECTIONS: &str = "ces_edge_connections";

/// The WebSockets the edge whose internal listener is `edge` (host:port) holds, from its `/metrics`; `None` when it
/// does not answer.
pub(super) async fn edge_connections(edge: &str) -> Option<u64> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .ok()?;
    let n = scrape(&http, &format!("http://{edge}/metrics"), EDGE_CONNECTIONS)
        .await
        .ok()?;
    Some(n as u64)
}

/// The sum of `metric` over its labels at the `/metrics` endpoint `url`.
pub(super) async fn scrape(http: &reqwest::Client, url: &str, metric: &str) -> anyhow::Result<f64> {
    let text = http
        .get(url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?
        .text()
        .await?;
    Ok(metric_sum(&text, metric))
}

/// Per hop, `(sum of seconds, count)` of `ces_hop_latency_seconds` and `ces_e2e_latency_seconds`, added up over
/// ingest and the edges (whichever answer).
pub(super) async fn hop_totals(c: &Common) -> BTreeMap<String, (f64, f64)> {
    let http = reqwest::Client::new();
    let mut urls = vec![c.ingest_metrics.clone()];
    urls.extend(c.edges.iter().map(|e| format!("http://{e}/metrics")));
    let mut totals = BTreeMap::new();
    for url in urls {
        let Ok(resp) = http.get(&url).timeout(Duration::from_secs(5)).send().await else {
            continue;
        };
        let Ok(text) = resp.text().await else {
            continue;
        };
        for (hop, sum, count) in parse_hops(&text) {
            let t = totals.entry(hop).or_insert((0.0, 0.0));
            t.0 += sum;
            t.1 += count;
        }
    }
    totals
}

/// Sum of every sample of `metric` in a Prometheus text exposition.
fn metric_sum(text: &str, metric: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `(hop, sum, count)` from a Prometheus exposition: `ces_hop_latency_seconds_{sum,count}{hop="..."}` and the
/// end-to-end histogram as hop `e2e`.
fn parse_hops(text: &str) -> Vec<(String, f64, f64)> {
    let mut found: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for line in text.lines() {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (hop, is_sum) = if let Some(rest) = name.strip_prefix("ces_hop_latency_seconds_") {
            let (kind, labels) = rest.split_once('{').unwrap_or((rest, ""));
            let Some(hop) = labels
                .split(',')
                .find_map(|l| l.strip_prefix("hop=\""))
                .map(|h| h.trim_end_matches('}').trim_end_matches('"'))
            else {
                continue;
            };
            match kind {
                "sum" => (hop.to_owned(), true),
                "count" => (hop.to_owned(), false),
                _ => continue,
            }
        } else if name == "ces_e2e_latency_seconds_sum" {
            ("e2e".to_owned(), true)
        } else if name == "ces_e2e_latency_seconds_count" {
            ("e2e".to_owned(), false)
        } else {
            continue;
        };
        let e = found.entry(hop).or_insert((0.0, 0.0));
        if is_sum {
            e.0 += value;
        } else {
            e.1 += value;
        }
    }
    found.into_iter().map(|(h, (s, c))| (h, s, c)).collect()
}

/// Mean per hop (ms) of what was observed between two [`hop_totals`].
pub(super) fn hop_means(
    before: &BTreeMap<String, (f64, f64)>,
    after: &BTreeMap<String, (f64, f64)>,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .filter_map(|(hop, &(sum, count))| {
            let (s0, c0) = before.get(hop).copied().unwrap_or_default();
            (count > c0).then(|| (hop.clone(), (sum - s0) / (count - c0) * 1000.0))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(text: &str) -> BTreeMap<String, (f64, f64)> {
        parse_hops(text)
            .into_iter()
            .map(|(h, s, c)| (h, (s, c)))
            .collect()
    }

    #[test]
    fn sums_a_metric_over_its_labels() {
        let text = "# HELP x\nces_ingest_records_total{topic=\"a\"} 3\nces_ingest_records_total{topic=\"b\"} 4\n\
                    ces_ingest_records_total_other 9\n";
        assert_eq!(metric_sum(text, "ces_ingest_records_total"), 7.0);
        assert_eq!(metric_sum("ces_x 1\n", "ces_ingest_records_total"), 0.0);
    }

    #[test]
    fn a_metric_without_labels_counts_and_garbage_does_not() {
        let text = "# TYPE ces_ingest_records_total counter\nces_ingest_records_total 12\n\
                    ces_ingest_records_total{topic=\"a\"} NaNx\nces_ingest_records_total\n\n\
                    xces_ingest_records_total 5\n";
        assert_eq!(metric_sum(text, "ces_ingest_records_total"), 12.0);
        assert_eq!(metric_sum("", "ces_ingest_records_total"), 0.0);
    }

    #[test]
    fn hop_means_come_from_the_sums_and_counts_observed_in_between() {
        let before = "ces_hop_latency_seconds_sum{hop=\"kafka_to_ingest\"} 1.0\n\
                      ces_hop_latency_seconds_count{hop=\"kafka_to_ingest\"} 10\n\
                      ces_hop_latency_seconds_bucket{hop=\"kafka_to_ingest\",le=\"0.005\"} 3\n";
        let after = "ces_hop_latency_seconds_sum{hop=\"kafka_to_ingest\"} 1.5\n\
                     ces_hop_latency_seconds_count{hop=\"kafka_to_ingest\"} 110\n\
                     ces_e2e_latency_seconds_sum 0.4\nces_e2e_latency_seconds_count 100\n";
        let means = hop_means(&totals(before), &totals(after));
        assert_eq!(means.len(), 2);
        assert!((means["kafka_to_ingest"] - 5.0).abs() < 1e-9, "{means:?}");
        assert!((means["e2e"] - 4.0).abs() < 1e-9, "{means:?}");
    }

    #[test]
    fn hops_add_up_over_label_sets_and_skip_what_is_not_a_hop() {
        let text = "# HELP ces_hop_latency_seconds per hop\n\
                    ces_hop_latency_seconds_sum{node=\"a\",hop=\"redis_to_edge\"} 0.25\n\
                    ces_hop_latency_seconds_sum{node=\"b\",hop=\"redis_to_edge\"} 0.75\n\
                    ces_hop_latency_seconds_count{node=\"a\",hop=\"redis_to_edge\"} 4\n\
                    ces_hop_latency_seconds_count{node=\"b\",hop=\"redis_to_edge\"} 6\n\
                    ces_hop_latency_seconds_bucket{hop=\"redis_to_edge\",le=\"+Inf\"} 10\n\
                    ces_hop_latency_seconds_sum{node=\"c\"} 9\n\
                    ces_hop_latency_seconds_sum{hop=\"x\"} not-a-number\n\
                    ces_e2e_latency_seconds_bucket{le=\"0.1\"} 7\n\
                    ces_other_seconds_sum 3\nno-value-line\n";
        assert_eq!(
            parse_hops(text),
            vec![("redis_to_edge".to_owned(), 1.0, 10.0)]
        );
        assert!(parse_hops("").is_empty());
    }

    #[test]
    fn a_hop_without_new_observations_has_no_mean() {
        let t = totals(
            "ces_hop_latency_seconds_sum{hop=\"h\"} 2\nces_hop_latency_seconds_count{hop=\"h\"} 8\n",
        );
        assert!(hop_means(&t, &t).is_empty());
        // A hop first seen after the run started is measured from zero.
        let means = hop_means(&BTreeMap::new(), &t);
        assert!((means["h"] - 250.0).abs() < 1e-9, "{means:?}");
    }
}
