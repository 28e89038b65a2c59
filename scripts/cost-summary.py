#!/usr/bin/env python3
"""The `cost` scenario's figures beside their floors from the same `make bench` run, one line each.

    scripts/cost-summary.py DIR

Reads DIR/cost.json (CES at 5,000 events/s over 2,000 sessions) and the floors measured right after it on the
same stack: DIR/cost-broker.json (the broker alone, producer -> bare consumer), DIR/cost-redis.json (Redis's
Pub/Sub alone) and DIR/cost-raw-ws.json (a bare WebSocket server at the same rate). Exits 1 if one is missing.
"""
import json
import sys
from pathlib import Path


def load(path):
    return json.loads(path.read_text())


def main(out):
    cost = load(out / "cost.json")
    broker = load(out / "cost-broker.json")
    redis = load(out / "cost-redis.json")
    ws = load(out / "cost-raw-ws.json")
    us = cost["cpu_us_per_event"]
    print(
        f"cost: CES {us['ces']:.1f} us per delivered event (edges {us['edges']:.1f}, ingest {us['ingest']:.1f}, "
        f"redis {us['redis']:.1f}); {cost['delivered']} delivered, {cost['lost']} lost, {cost['duplicated']} duplicated"
    )
    print(
        f"floors: redis {redis['cpu_us_per_event']['redis']:.1f} us per event (Pub/Sub alone), WebSocket server "
        f"{ws['cpu_us_per_event']['ws_server']:.1f} us per frame (two edges: {us['edges']:.1f})"
    )
    print(
        f"latency: CES p50 {cost['p50_ms']:.2f} ms, p99 {cost['p99_ms']:.2f} ms; the broker alone p50 "
        f"{broker['p50_ms']:.2f} ms, p99 {broker['p99_ms']:.2f} ms"
    )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    try:
        main(Path(sys.argv[1]))
    except (OSError, KeyError, ValueError) as e:
        sys.exit(f"cost-summary: {e}")
