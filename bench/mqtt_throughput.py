"""Delivery cost: QoS 1 event throughput with the SQLite outbox vs bare paho, and outbox replay speed.

Starts its own Mosquitto on loopback (edge_detect.broker). Modes, each sending the same event
JSON (built by edge_detect.events, about 600 bytes) until every PUBACK arrived:

* ``paho``         bare paho-mqtt, QoS 1, same in-flight window; nothing durable (the baseline)
* ``outbox_full``  Publisher + Outbox(synchronous=FULL): each event fsynced before it is sent
* ``outbox_normal`` Publisher + Outbox(synchronous=NORMAL): survives SIGKILL, not power loss
* ``replay``       N events queued during an outage, then the broker comes back: time to drain

Also reports the ms the daemon thread spends in ``publish_event`` (the outbox write) per event.

    python bench/mqtt_throughput.py [--events 2000] [--replay 5000] [--inflight 20] [--dir DIR] [--out DIR]

``--dir`` is where outbox files go (default: bench/results/tmp); put it on the device's real
disk, since fsync on tmpfs costs nothing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

ROOT = Path(__file__).resolve().parents[1]
import common  # noqa: E402

from edge_detect.broker import Mosquitto  # noqa: E402
from edge_detect.events import build_event  # noqa: E402
from edge_detect.outbox import Outbox  # noqa: E402
from edge_detect.publisher import MqttConfig, Publisher  # noqa: E402

MODEL = {"name": "casting", "version": "3", "sha256": "ab" * 32, "variant": "int8"}


def make_events(n: int) -> list:
    now = time.time()
    return [
        build_event(device="bench", camera="cam1", score=0.02 + i * 1e-6, normalised=1.3, threshold=0.0155,
                    anomalous=True, model=MODEL, captured_at=now,
                    latency_ms={"decode": 0.28, "preprocess": 0.05, "invoke": 3.1, "score": 0.2, "total": 3.7})
        for i in range(n)
    ]


def bare_paho(broker: Mosquitto, events: list, inflight: int) -> dict:
    """Baseline: paho publishes straight from memory, bounded by the same in-flight window."""
    done = threading.Event()
    acked = [0]

    def on_publish(c, u, mid, rc, p):
        acked[0] += 1
        if acked[0] == len(events):
            done.set()

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-paho")
    c.max_inflight_messages_set(inflight)
    c.on_publish = on_publish
    c.connect(broker.host, broker.port)
    c.loop_start()
    payloads = [json.dumps(e, separators=(",", ":")).encode() for e in events]
    t0 = time.perf_counter()
    call = []
    for p in payloads:
        t = time.perf_counter()
        c.publish("edge-detect/bench/event/cam1", p, qos=1)
        call.append((time.perf_counter() - t) * 1000)
    assert done.wait(120), "bare paho: not all PUBACKs arrived"
    wall = time.perf_counter() - t0
    c.disconnect()
    c.loop_stop()
    return summary("paho", len(events), wall, call)


def with_outbox(broker: Mosquitto, events: list, inflight: int, workdir: Path, sync: str) -> dict:
    cfg = MqttConfig.from_dict({"host": broker.host, "port": broker.port, "max_inflight": inflight,
                                "discovery": False})
    ob = Outbox(workdir / f"bench-{sync}.sqlite", synchronous=sync)
    pub = Publisher(cfg, "bench", ob)
    pub.start()
    assert pub.wait_connected(10)
    t0 = time.perf_counter()
    call = []
    for e in events:
        t = time.perf_counter()
        pub.publish_event(e)
        call.append((time.perf_counter() - t) * 1000)
    assert pub.flush(300), "outbox did not drain"
    wall = time.perf_counter() - t0
    pub.stop()
    ob.close()
    return summary(f"outbox_{sync.lower()}", len(events), wall, call)


def replay(broker: Mosquitto, events: list, inflight: int, workdir: Path) -> dict:
    """Queue events while the broker is down, bring it back, time the drain (from CONNACK)."""
    broker.stop()
    cfg = MqttConfig.from_dict({"host": broker.host, "port": broker.port, "max_inflight": inflight,
                                "discovery": False, "reconnect_min_s": 0.1, "reconnect_max_s": 0.2})
    ob = Outbox(workdir / "bench-replay.sqlite")
    pub = Publisher(cfg, "bench", ob)
    for e in events:
        pub.publish_event(e)
    assert ob.depth() == len(events)
    broker.start()
    pub.start()
    assert pub.wait_connected(10)
    t0 = time.perf_counter()
    assert pub.flush(300), "replay did not drain"
    wall = time.perf_counter() - t0
    pub.stop()
    ob.close()
    return summary("replay", len(events), wall, [])


def summary(mode: str, n: int, wall_s: float, call_ms: list) -> dict:
    out = {"mode": mode, "events": n, "wall_s": round(wall_s, 3), "events_per_s": round(n / wall_s, 1)}
    if call_ms:
        call_ms = sorted(call_ms)
        out["call_ms_p50"] = round(statistics.median(call_ms), 4)
        out["call_ms_p99"] = round(call_ms[int(0.99 * (len(call_ms) - 1))], 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=2000, help="events per throughput mode")
    ap.add_argument("--replay", type=int, default=5000, help="events queued during the outage")
    ap.add_argument("--inflight", type=int, default=20, help="max unacknowledged messages")
    ap.add_argument("--repeat", type=int, default=3, help="runs per mode; the best is reported")
    ap.add_argument("--dir", type=Path, default=ROOT / "bench" / "results" / "tmp",
                    help="where outbox files go (a real disk)")
    ap.add_argument("--out", type=Path, help="where the JSON result goes (default bench/results)")
    args = ap.parse_args()

    args.dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="mqtt-bench-", dir=args.dir))
    broker = Mosquitto(work / "broker", persistent=True, max_queued=100_000)
    broker.start()
    rows = []
    try:
        events = make_events(args.events)
        for fn in (
            lambda: bare_paho(broker, events, args.inflight),
            lambda: with_outbox(broker, events, args.inflight, work, "FULL"),
            lambda: with_outbox(broker, events, args.inflight, work, "NORMAL"),
        ):
            runs = []
            for _ in range(args.repeat):
                for f in work.glob("bench-*.sqlite*"):
                    f.unlink()
                runs.append(fn())
            best = max(runs, key=lambda r: r["events_per_s"])
            best["runs_events_per_s"] = [r["events_per_s"] for r in runs]
            rows.append(best)
        rows.append(replay(broker, make_events(args.replay), args.inflight, work))
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)

    base = rows[0]["events_per_s"]
    for r in rows:
        r["ratio_vs_paho"] = round(r["events_per_s"] / base, 3)
    print(f"{'mode':<14} {'events':>7} {'wall s':>8} {'events/s':>9} {'vs paho':>8} {'call p50 ms':>12} "
          f"{'call p99 ms':>12}")
    for r in rows:
        print(f"{r['mode']:<14} {r['events']:>7} {r['wall_s']:>8.3f} {r['events_per_s']:>9.1f} "
              f"{r['ratio_vs_paho']:>8.3f} {r.get('call_ms_p50', float('nan')):>12.4f} "
              f"{r.get('call_ms_p99', float('nan')):>12.4f}")
    import sqlite3
    import subprocess

    mosq = subprocess.run([broker.exe, "-h"], capture_output=True, text=True).stdout.splitlines()[:1]
    print(common.write_result("mqtt_throughput", {
        "versions": {"sqlite": sqlite3.sqlite_version, "mosquitto": mosq[0] if mosq else "?"},
        "args": {"events": args.events, "replay": args.replay, "inflight": args.inflight, "repeat": args.repeat,
                 "dir": str(args.dir)},
        "rows": rows,
    }, out_dir=args.out))


if __name__ == "__main__":
    main()
