//! The shipped Grafana dashboard and Prometheus alert rules refer only to metrics CES exports: every `ces_*` name
//! in them (minus a histogram's `_bucket`/`_sum`/`_count`) is a metric-name constant in the services' source.
//! (`make test` also runs `promtool check rules` and `promtool test rules` on the alert rules.)

use std::collections::BTreeSet;
use std::path::PathBuf;

fn root() -> PathBuf {
    ces_systest::workspace_root()
}

/// Every `ces_...` identifier in `text`.
fn names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("ces_") {
        let starts_word = at == 0
            || !rest[..at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let tail = &rest[at..];
        let len = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        if starts_word {
            names.insert(tail[..len].to_owned());
        }
        rest = &tail[len..];
    }
    names
}

/// The metric names the services define (string constants `"ces_..."` in their metric modules).
fn exported() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for file in [
        "services/ingest/src/metrics.rs",
        "services/edge/src/metrics.rs",
        "runtime/src/telemetry.rs",
    ] {
        let source = std::fs::read_to_string(root().join(file)).expect(file);
        for quoted in source.split('"').skip(1).step_by(2) {
            if quoted.starts_with("ces_") && names_in(quoted).contains(quoted) {
                names.insert(quoted.to_owned());
            }
        }
    }
    names
}

fn unknown(used: &BTreeSet<String>, known: &BTreeSet<String>) -> Vec<String> {
    used.iter()
        .filter(|name| {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            !known.contains(*name) && !known.contains(base)
        })
        .cloned()
        .collect()
}

#[test]
fn the_dashboard_parses_and_uses_only_exported_metrics() {
    let known = exported();
    assert!(known.contains("ces_e2e_latency_seconds") && known.contains("ces_ingest_consumer_lag"));
    let text = std::fs::read_to_string(root().join("deploy/grafana/ces.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(!panels.is_empty());
    let mut used = BTreeSet::new();
    for panel in panels {
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {} has no query", panel["title"]);
        for target in targets {
            let expr = target["expr"].as_str().expect("expr");
            let names = names_in(expr);
            assert!(!names.is_empty(), "{expr} uses no CES metric");
            used.extend(names);
        }
    }
    assert_eq!(unknown(&used, &known), Vec::<String>::new());
}

#[test]
fn the_alert_rules_use_only_exported_metrics() {
    let known = exported();
    let text = std::fs::read_to_string(root().join("deploy/prometheus/alerts.yml")).unwrap();
    let used: BTreeSet<String> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("expr:") || l.starts_with("          "))
        .flat_map(names_in)
        .collect();
    assert!(used.len() >= 6, "{used:?}");
    assert_eq!(unknown(&used, &known), Vec::<String>::new());
}

#[test]
fn a_misspelled_metric_would_be_caught() {
    let known = exported();
    let used = names_in("rate(ces_edge_delivered_totl[5m]) + ces_e2e_latency_seconds_bucket");
    assert_eq!(unknown(&used, &known), vec!["ces_edge_delivered_totl"]);
}

#[test]
fn every_exported_metric_is_documented_in_the_operations_guide() {
    let guide = std::fs::read_to_string(root().join("docs/operations.md")).unwrap();
    let documented = names_in(&guide);
    let missing: Vec<String> = exported()
        .into_iter()
        .filter(|name| !documented.contains(name))
        .collect();
    assert_eq!(
        missing,
        Vec::<String>::new(),
        "add them to docs/operations.md"
    );
}
