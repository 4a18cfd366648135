#!/usr/bin/env python3
"""Where a worker's CPU goes, per stage of the request path, measured with perf.

Usage:
  scripts/profile-stages.py [--binary PATH] [--students N] [--seconds S] [--perf-data FILE]
  scripts/profile-stages.py --from-data FILE [--us-per-request X]

Without --from-data it starts a rush (one worker, the binary's own `seatrush rush`) against the
servers in AMQP_URL and DATABASE_URL (`eval "$(scripts/services.sh env)"`), records the worker
with `perf record --call-graph dwarf` (software clock) for a bounded time, waits for the rush to
end (killing it by its pid if it overruns) and reads the rush's worker CPU per request from its
JSON report. Then it classifies every sample of the worker process by the functions on its
stack and prints a table: the share of the samples and the microseconds per request of each
stage (share times the rush's worker CPU per request; the samples cover a window of the rush,
the CPU figure all of it).

A sample whose innermost frame is in the allocator counts as `allocator` (and is also broken
down by the stage that called it); a sample on lapin's own I/O thread as `broker I/O`; any other
by the innermost frame that matches a stage's patterns, walking outwards.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter

# Innermost-first: the first stage whose pattern a frame contains wins.
STAGES = [
    ("ack", ["consumer::Settler", "AckHandle", "lapin::acker", "basic_ack"]),
    ("parse", ["parse_request", "serde_json::de", "serde_core::de", "domain::", "header_text"]),
    (
        "intake",
        ["amqp::consumer::Deliveries", "lapin::consumer", "worker::intake", "lapin::delivery"],
    ),
    ("serialize", ["protocol::answer", "serde_json::ser", "publisher::Batch", "Outgoing::answer"]),
    (
        "publish",
        ["amqp::outbox", "amqp::publisher", "basic_publish", "lapin::channel::Channel::send"],
    ),
    ("decide", ["course::decision", "course::instance", "metrics::decided_in"]),
    ("route", ["course::registry", "course::actor", "pipeline::", "CourseHandle"]),
    ("finalize", ["committer::finalizer"]),
    ("commit", ["store::", "committer::", "sqlx"]),
    ("broker I/O", ["lapin::", "amq_protocol"]),
    ("runtime", ["tokio::", "mio::", "flume::", "futures_util::", "parking_lot", "std::thread"]),
]

ALLOCATOR = [
    "malloc", "cfree", "_int_free", "_int_realloc", "realloc", "unlink_chunk", "tcache",
    "__libc_free", "__rust_alloc", "__rust_dealloc", "__rust_realloc", "mi_", "_mi_", "je_",
    "alloc::alloc::", "consolidate",
]


def is_allocator(symbol):
    return any(p in symbol for p in ALLOCATOR)


def stage_of(frames):
    """The first stage, innermost outwards, that a frame of the stack belongs to."""
    for symbol in frames:
        for stage, patterns in STAGES:
            if any(p in symbol for p in patterns):
                return stage
    if frames and all(f.endswith("[kernel]") or f == "[unknown]" for f in frames):
        return "runtime"
    return "other"


def samples(perf_script_output):
    """(thread name, [symbol, innermost first]) per sample of `perf script`."""
    thread, frames = None, []
    for line in perf_script_output:
        if not line.strip():
            if thread is not None:
                yield thread, frames
            thread, frames = None, []
        elif not line[0].isspace():
            thread, frames = line.split()[0], []
        else:
            parts = line.split(None, 1)
            text = parts[1] if len(parts) > 1 else "[unknown]"
            symbol = text.rsplit(" (", 1)[0]
            if "[kernel.kallsyms]" in text:
                symbol += " [kernel]"
            frames.append(symbol)
    if thread is not None:
        yield thread, frames


def classify(data_file):
    out = subprocess.run(
        ["perf", "script", "-i", data_file, "-F", "comm,tid,time,ip,sym,dso"],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()
    stages, by_caller = Counter(), Counter()
    for thread, frames in samples(out):
        user = [f for f in frames if not f.endswith("[kernel]")]
        if user and is_allocator(user[0]):
            stages["allocator"] += 1
            by_caller[stage_of([f for f in user if not is_allocator(f)])] += 1
        elif thread.startswith("lapin-io"):
            stages["broker I/O"] += 1
        else:
            stages[stage_of(frames)] += 1
    return stages, by_caller


def print_table(stages, by_caller, us_per_request):
    total = sum(stages.values()) or 1
    print(f"{sum(stages.values())} samples; worker CPU {us_per_request} µs per request")
    print(f"{'stage':<12} {'share':>7} {'µs/req':>8}")
    for stage, n in stages.most_common():
        us = f"{us_per_request * n / total:8.1f}" if us_per_request else "       -"
        print(f"{stage:<12} {100 * n / total:6.1f}% {us}")
    alloc = sum(by_caller.values())
    if alloc:
        print("allocator samples by calling stage:")
        for stage, n in by_caller.most_common():
            print(f"  {stage:<10} {100 * n / alloc:6.1f}%")


def rush_and_record(binary, students, seconds, data_file):
    """Runs a rush with one worker, records the worker, returns its CPU µs per request."""
    report = tempfile.NamedTemporaryFile(suffix=".json", delete=False).name
    rush = subprocess.Popen(
        [binary, "rush", "--courses", "300", "--seats", "30", "--students", str(students),
         "--choices", "1", "--json", report],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        worker = None
        for _ in range(120):
            found = subprocess.run(["pgrep", "-P", str(rush.pid)], capture_output=True, text=True)
            pids = found.stdout.split()
            if pids:
                worker = pids[0]
                break
            time.sleep(0.25)
        if worker is None:
            sys.exit("the rush started no worker")
        time.sleep(1.5)  # Past the worker's start-up: the crowd is being published.
        subprocess.run(
            ["timeout", str(seconds), "perf", "record", "-F", "499", "--call-graph",
             "dwarf,16384", "-o", data_file, "-p", worker],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        rush.wait(timeout=300)
    finally:
        if rush.poll() is None:
            os.kill(rush.pid, signal.SIGTERM)
            rush.wait()
    with open(report) as f:
        cpu = json.load(f).get("worker_cpu_us_per_request")
    os.unlink(report)
    return cpu


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", default="target/release/seatrush")
    ap.add_argument("--students", type=int, default=30000)
    ap.add_argument("--seconds", type=int, default=12)
    ap.add_argument("--perf-data", default="/tmp/seatrush-stages.data")
    ap.add_argument("--from-data", help="classify an existing perf.data instead of a new rush")
    ap.add_argument("--us-per-request", type=float, help="worker CPU per request, for --from-data")
    args = ap.parse_args()
    if args.from_data:
        data, cpu = args.from_data, args.us_per_request
    else:
        data = args.perf_data
        cpu = rush_and_record(args.binary, args.students, args.seconds, data)
    print_table(*classify(data), cpu)


if __name__ == "__main__":
    main()
