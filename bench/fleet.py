"""Fleet scale on one machine: N light devices -> one Mosquitto -> a shared-subscription consumer group.

Each simulated device is the daemon's own delivery path: an ``edge_detect.publisher.Publisher``
with its own ``edge_detect.outbox.Outbox`` (SQLite WAL) and MQTT connection, publishing schema
events (``edge_detect.events.build_event``) at ``--rate`` events/s on
``edge-detect/<device>/event/<camera>``. Devices are spread over ``--procs`` worker processes
(each Publisher runs paho's network thread plus a sender thread). Consumers (``--consumers``
processes, MQTT 5) share ``$share/<group>/edge-detect/+/event/+`` at QoS 1, so the broker
hands each event to one of them.

Per fleet size N it measures, over the same ``--duration`` window:

* events/s delivered (unique event ids received) against events/s offered (put in outboxes);
* end-to-end latency p50/p99 (ms): outbox put on the device -> JSON parsed by a consumer;
* losses: events put but never received after a drain of up to ``--drain`` s, and duplicates;
* CPU per process group (broker, publishers, consumers) from /proc/<pid>/stat, in cores
  (1.0 = one core busy), and which group ran into its limit first: the broker is single-threaded
  (1 core), each Python process is bound by its GIL (about 1 core), and the machine has its cores.

Usage::

    python bench/fleet.py [--sizes 1,10,50,200] [--rate 2] [--duration 10] [--procs 4] [--consumers 2]

Loopback only; every level starts its own broker. Writes bench/results/fleet-<date>.json.
The worker and consumer roles are this same script (``worker`` / ``consumer`` subcommands).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import heapq
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, Iterator, List, Optional, Sequence

import common

from edge_detect.broker import Mosquitto, find_mosquitto

PREFIX = "edge-detect"
GROUP = "bench"
MODEL = {"name": "fleet-sim", "version": "1", "sha256": "0" * 64, "variant": "int8"}


# -- worker: a process hosting several simulated devices -------------------------------------------


def worker(a: argparse.Namespace) -> int:
    """Start ``count`` devices, print READY, wait for GO on stdin, publish for ``duration`` s, drain, report."""
    from edge_detect.events import build_event
    from edge_detect.outbox import Outbox
    from edge_detect.publisher import MqttConfig, Publisher

    cfg = MqttConfig(host="127.0.0.1", port=a.port, protocol="5", qos=1, discovery=False,
                     keepalive=60, max_inflight=a.max_inflight)
    root = Path(a.outbox_dir)
    devices = [f"dev{a.first + i:04d}" for i in range(a.count)]
    pubs: List[Any] = []
    for d in devices:
        ob = Outbox(root / f"{d}.sqlite", synchronous=a.synchronous)
        pubs.append(Publisher(dataclasses.replace(cfg, client_id=f"fleet-{d}"), d, ob, cameras=["cam0"]))
    for p in pubs:
        p.start()
    deadline = time.monotonic() + 60
    missing = [p.device for p in pubs if not p.wait_connected(max(0.1, deadline - time.monotonic()))]
    if missing:
        print(f"error: {len(missing)} devices never connected: {missing[:5]}", file=sys.stderr)
        return 1
    print("READY", flush=True)
    line = sys.stdin.readline().split()
    if not line or line[0] != "GO":
        return 1
    start = float(line[1])
    time.sleep(max(0.0, start - time.time()))

    # One scheduler thread for all devices of this process: a heap of (next due time, device).
    rng = random.Random(a.first)
    period = 1.0 / a.rate
    heap = [(start + rng.random() * period, i) for i in range(len(pubs))]
    heapq.heapify(heap)
    put = [0] * len(pubs)
    refused = 0
    late_ms: List[float] = []  # how far behind schedule each put ran: the worker's own saturation
    end = start + a.duration
    while heap:
        due, i = heapq.heappop(heap)
        if due >= end:
            continue
        now = time.time()
        if due > now:
            time.sleep(due - now)
        now = time.time()
        late_ms.append((now - due) * 1e3)
        ev = build_event(device=pubs[i].device, camera="cam0", score=1.5, normalised=1.5, threshold=1.0,
                         anomalous=True, model=MODEL, captured_at=now, published_at=now,
                         latency_ms={"preprocess": 1.0, "invoke": 2.0}, extra={"bench_t": now})
        try:
            pubs[i].publish_event(ev)
            put[i] += 1
        except Exception:  # OutboxFull under reject_new: counted, not fatal
            refused += 1
        heapq.heappush(heap, (due + period, i))
    publish_end = time.time()
    # Drain: all devices flush in parallel (each waits on its own sender thread).
    drained = [False] * len(pubs)

    def drain(i: int) -> None:
        drained[i] = pubs[i].flush(a.drain)

    threads = [threading.Thread(target=drain, args=(i,)) for i in range(len(pubs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    depth = [p.outbox.depth() for p in pubs]
    acked = [p.stats()["acked"] for p in pubs]
    for p in pubs:
        p.stop(clean=False)
        p.outbox.close()
    print("RESULT " + json.dumps({
        "devices": len(pubs), "put": sum(put), "acked": sum(acked), "left_in_outbox": sum(depth),
        "refused": refused, "undrained_devices": drained.count(False), "publish_end": publish_end,
        "drain_s": time.time() - publish_end, "late_ms": common.latency_summary(late_ms),
    }), flush=True)
    return 0


# -- consumer: one member of the shared-subscription group ----------------------------------------


def consumer(a: argparse.Namespace) -> int:
    """Subscribe to the shared group, record (event id, latency ms) per message until SIGTERM; write a file."""
    import paho.mqtt.client as mqtt

    recs: List[tuple] = []
    lock = threading.Lock()
    ready = threading.Event()
    stop = threading.Event()

    def on_connect(c: Any, u: Any, flags: Any, reason: Any, props: Any) -> None:
        c.subscribe(f"$share/{GROUP}/{PREFIX}/+/event/+", qos=1)

    def on_subscribe(c: Any, u: Any, mid: Any, reasons: Any, props: Any) -> None:
        ready.set()

    def on_message(c: Any, u: Any, msg: Any) -> None:
        now = time.time()
        ev = json.loads(msg.payload)
        with lock:
            recs.append((ev["event_id"], (now - ev["extra"]["bench_t"]) * 1e3, now))

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"fleet-consumer-{a.index}",
                    protocol=mqtt.MQTTv5)
    c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
    c.connect("127.0.0.1", a.port, keepalive=60)
    c.loop_start()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if not ready.wait(15):
        print("error: consumer could not subscribe", file=sys.stderr)
        return 1
    print("READY", flush=True)
    stop.wait(a.max_seconds)
    c.disconnect()
    c.loop_stop()
    with lock:
        Path(a.out).write_text(json.dumps(recs))
    return 0


# -- parent: one fleet size ------------------------------------------------------------------------


def _spawn(args: List[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_ready(procs: Sequence[subprocess.Popen], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for p in procs:
        while True:
            if time.monotonic() > deadline:
                raise RuntimeError("a fleet process did not get ready in time")
            line = p.stdout.readline()  # type: ignore[union-attr]
            if line.startswith("READY"):
                break
            if not line and p.poll() is not None:
                raise RuntimeError(f"fleet process exited early:\n{p.stderr.read()[-2000:]}")  # type: ignore


def _cpu(pids: Sequence[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += common.proc_cpu_seconds(pid)
        except (OSError, ValueError):
            pass
    return total


def _machine_busy_s() -> float:
    """All CPUs' busy time (s) from /proc/stat, to put the groups' shares in context."""
    v = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:8]]
    # user nice system idle iowait irq softirq: busy leaves out idle and iowait (guest time is already in user).
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / common.CLK_TCK


@contextlib.contextmanager
def _broker(a: argparse.Namespace) -> Iterator[Any]:
    """A fresh Mosquitto per level, or the one given by --port (its CPU counted if --broker-pid is given)."""
    if a.port:
        yield SimpleNamespace(port=a.port, pid=a.broker_pid)
    else:
        with Mosquitto(log=False) as m:
            yield m


def run_level(n: int, rate: float, a: argparse.Namespace) -> Dict[str, Any]:
    """One fleet size at ``rate`` events/s per device on a fresh broker; returns its row plus details."""
    procs = max(1, min(a.procs, n))
    per = [n // procs + (1 if i < n % procs else 0) for i in range(procs)]
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-fleet-{n}-"))
    workers: List[subprocess.Popen] = []
    consumers: List[subprocess.Popen] = []
    try:
        with _broker(a) as broker:
            max_s = str(a.duration + a.drain + 120)
            for k in range(a.consumers):
                consumers.append(_spawn(["consumer", "--port", str(broker.port), "--index", str(k),
                                         "--out", str(tmp / f"consumer{k}.json"), "--max-seconds", max_s]))
            _wait_ready(consumers, 30)
            first = 0
            for cnt in per:
                workers.append(_spawn(["worker", "--port", str(broker.port), "--first", str(first),
                                       "--count", str(cnt), "--rate", str(rate), "--duration", str(a.duration),
                                       "--drain", str(a.drain), "--outbox-dir", str(tmp / "outbox"),
                                       "--synchronous", a.synchronous, "--max-inflight", str(a.max_inflight)]))
                first += cnt
            _wait_ready(workers, 90)
            groups = {"broker": [broker.pid] if broker.pid else [], "publishers": [w.pid for w in workers],
                      "consumers": [c.pid for c in consumers]}
            start = time.time() + 0.5
            for w in workers:
                w.stdin.write(f"GO {start}\n")  # type: ignore[union-attr]
                w.stdin.flush()  # type: ignore[union-attr]
            # CPU is measured over the publishing window only (start-up and drain excluded).
            time.sleep(max(0.0, start - time.time()))
            cpu0 = {g: _cpu(p) for g, p in groups.items()}
            busy0, t0 = _machine_busy_s(), time.monotonic()
            time.sleep(max(0.0, start + a.duration - time.time()))
            cpu1 = {g: _cpu(p) for g, p in groups.items()}
            busy1, t1 = _machine_busy_s(), time.monotonic()
            wall = t1 - t0
            results = []
            for w in workers:
                out, err = w.communicate(timeout=a.drain + 60)
                line = next((ln for ln in out.splitlines() if ln.startswith("RESULT ")), None)
                if line is None:
                    raise RuntimeError(f"worker failed:\n{err[-2000:]}")
                results.append(json.loads(line[len("RESULT "):]))
            time.sleep(0.5)  # the last PUBACKed messages still travel broker -> consumer
            for c in consumers:
                c.send_signal(signal.SIGTERM)
            for c in consumers:
                c.wait(30)
    finally:
        for p in workers + consumers:
            if p.poll() is None:
                p.kill()
                p.wait()
    recs: List[list] = []
    for k in range(a.consumers):
        f = tmp / f"consumer{k}.json"
        if f.exists():
            recs += json.loads(f.read_text())
    shutil.rmtree(tmp, ignore_errors=True)
    put = sum(r["put"] for r in results)
    ids = {r[0] for r in recs}
    window_end = start + a.duration
    in_window = {r[0] for r in recs if r[2] <= window_end}
    lat = [r[1] for r in recs]
    cores = {g: (cpu1[g] - cpu0[g]) / wall for g in groups}
    per_worker = cores["publishers"] / len(workers)
    per_consumer = cores["consumers"] / max(1, len(consumers))
    st = common.latency_summary(lat)
    row = {
        "devices": n, "rate": rate, "offered_ev_s": round(put / a.duration, 1),
        "delivered_ev_s": round(len(in_window) / a.duration, 1),
        "p50_ms": st.get("p50"), "p99_ms": st.get("p99"), "max_ms": st.get("max"),
        "lost": put - len(ids), "dups": len(recs) - len(ids),
        "broker_cpu": round(cores["broker"], 2), "pub_cpu": round(cores["publishers"], 2),
        "cons_cpu": round(cores["consumers"], 2), "machine_cpu": round((busy1 - busy0) / wall, 2),
        "sched_late_p99_ms": max(r["late_ms"].get("p99", 0.0) for r in results),
    }
    # CPU ms per delivered event: comparable across sizes and rates, and free of the window length.
    per_ev = max(1, len(in_window))
    for g, key in (("broker", "broker_ms_ev"), ("publishers", "pub_ms_ev"), ("consumers", "cons_ms_ev")):
        row[key] = round((cpu1[g] - cpu0[g]) * 1e3 / per_ev, 3)
    # Each group's use against its own ceiling: the broker is one thread, and a Python process holds
    # one GIL, so about 1 core each. The whole machine (others' work included) is reported beside it.
    limits = {"broker": cores["broker"], "publisher_proc": per_worker, "consumer_proc": per_consumer}
    row["busiest"] = max(limits, key=limits.get)  # type: ignore[arg-type]
    row["busiest_util"] = round(limits[row["busiest"]], 2)
    row["machine_util"] = round(row["machine_cpu"] / (os.cpu_count() or 1), 2)
    return {"row": row, "workers": results, "cores": cores, "utilisation": limits, "received": len(recs)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("worker", "consumer"):
        return _role(argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1,10,50,200", help="fleet sizes N (devices), comma list")
    ap.add_argument("--rate", type=float, default=2.0, help="events/s per device")
    ap.add_argument("--stress-rates", default="",
                    help="after the sizes, rerun the largest N at these events/s per device (comma list), "
                         "stopping once under 90%% of the offered load is delivered in the window")
    ap.add_argument("--duration", type=float, default=10.0, help="publishing window per size, s")
    ap.add_argument("--drain", type=float, default=20.0, help="max s to wait for outboxes to empty after it")
    ap.add_argument("--procs", type=int, default=4, help="worker processes hosting the devices")
    ap.add_argument("--consumers", type=int, default=2, help="consumer processes in the shared group")
    ap.add_argument("--synchronous", default="NORMAL", choices=("FULL", "NORMAL"),
                    help="outbox fsync mode; NORMAL by default because all simulated devices share one disk")
    ap.add_argument("--max-inflight", type=int, default=20, help="per-device unacknowledged messages")
    ap.add_argument("--port", type=int, help="use the broker already listening on 127.0.0.1:PORT")
    ap.add_argument("--broker-pid", type=int, help="its process id, to measure its CPU")
    ap.add_argument("--out", type=Path, help="results directory (default bench/results)")
    a = ap.parse_args(argv)
    sizes = [int(s) for s in a.sizes.split(",") if s]
    if not sizes or min(sizes) < 1 or max(sizes) > 1000 or a.duration <= 0 or a.rate <= 0:
        ap.error("sizes must be 1..1000 devices; duration and rate > 0")
    if not a.port and find_mosquitto() is None:
        print("error: mosquitto not found (sudo apt-get install mosquitto)", file=sys.stderr)
        return 2
    info = common.machine_info()
    print(common.machine_line(info))
    print(f"rate {a.rate} events/s per device, {a.duration} s window, {a.procs} worker processes, "
          f"{a.consumers} consumers in $share/{GROUP}, outbox synchronous={a.synchronous}")
    plan = [(n, a.rate) for n in sizes] + [(max(sizes), float(r)) for r in a.stress_rates.split(",") if r]
    levels = []
    for n, rate in plan:
        levels.append(run_level(n, rate, a))
        r = levels[-1]["row"]
        print(f"  N={n} at {rate} ev/s each: {r['delivered_ev_s']} ev/s delivered of {r['offered_ev_s']} offered, "
              f"p99 {r['p99_ms']} ms, lost {r['lost']}, busiest {r['busiest']} ({r['busiest_util']})", flush=True)
        if (n, rate) in plan[len(sizes):] and r["delivered_ev_s"] < 0.9 * r["offered_ev_s"]:
            break  # saturated: higher rates only pile up backlog
    info["load_avg_after"] = common.load_average()
    rows = [lv["row"] for lv in levels]
    cols = ["devices", "rate", "offered_ev_s", "delivered_ev_s", "p50_ms", "p99_ms", "lost", "dups", "broker_cpu",
            "pub_cpu", "cons_cpu", "machine_cpu", "broker_ms_ev", "pub_ms_ev", "cons_ms_ev", "busiest"]
    common.print_table(rows, cols, title="fleet (CPU in cores over the publishing window; ms of CPU per event)",
                       digits=2)
    out = common.write_result("fleet", {"config": {k: (str(v) if isinstance(v, Path) else v)
                                                   for k, v in vars(a).items()},
                                        "rows": rows, "levels": levels}, out_dir=a.out, machine=info)
    print(f"results: {out}")
    return 0


def _role(argv: List[str]) -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="role", required=True)
    w = sub.add_parser("worker")
    for k, t in (("--port", int), ("--first", int), ("--count", int), ("--rate", float), ("--duration", float),
                 ("--drain", float), ("--outbox-dir", str), ("--synchronous", str), ("--max-inflight", int)):
        w.add_argument(k, type=t, required=True)
    c = sub.add_parser("consumer")
    for k, t in (("--port", int), ("--index", int), ("--out", str), ("--max-seconds", float)):
        c.add_argument(k, type=t, required=True)
    a = ap.parse_args(argv)
    return worker(a) if a.role == "worker" else consumer(a)


if __name__ == "__main__":
    sys.exit(main())
