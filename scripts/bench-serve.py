#!/usr/bin/env python3
"""Throughput of `strata serve` under concurrent streams (a benchmark, not a test).

    scripts/bench-serve.py [--bin target/release/strata] [--streams 1,4,8,32] [--tokens 64]
                           [--json out.json] [-- extra serve flags]

Starts the server on a free port with the default model, then for each concurrency C runs C
clients at once, each streaming one completion of --tokens tokens (ignore_eos, greedy, a
different prompt each). Reports aggregate generated tok/s (all tokens / wall time from the
first request to the last token), time to first token (median, p99) and the inter-token
gap (p50, p99 over every gap of every stream). Standard library only.
"""

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def stream_one(port, prompt, tokens, out):
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    body = json.dumps({"prompt": prompt, "max_tokens": tokens, "temperature": 0, "stream": True, "ignore_eos": True})
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    r = conn.getresponse()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {r.read()[:200]!r}")
    times, n = [], 0
    for line in r:
        line = line.strip()
        if not line.startswith(b"data: "):
            continue
        data = line[6:]
        if data == b"[DONE]":
            break
        chunk = json.loads(data)
        if chunk["choices"] and chunk["choices"][0]["text"]:
            times.append(time.perf_counter())
        if chunk.get("usage"):
            n = chunk["usage"]["completion_tokens"]
    conn.close()
    out.append({"start": t0, "times": times, "tokens": n})


def run_level(port, c, tokens):
    out, threads = [], []
    for i in range(c):
        prompt = f"Request {i}: write a long story about the number {i}."
        threads.append(threading.Thread(target=stream_one, args=(port, prompt, tokens, out)))
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = max(r["times"][-1] for r in out) - t0
    total = sum(r["tokens"] for r in out)
    ttft = [r["times"][0] - r["start"] for r in out]
    gaps = [b - a for r in out for a, b in zip(r["times"], r["times"][1:])]
    return {
        "streams": c,
        "tokens": total,
        "wall_s": wall,
        "aggregate_tok_s": total / wall,
        "ttft_p50_ms": 1e3 * statistics.median(ttft),
        "ttft_p99_ms": 1e3 * pct(ttft, 99),
        "itl_p50_ms": 1e3 * pct(gaps, 50),
        "itl_p99_ms": 1e3 * pct(gaps, 99),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "strata"))
    ap.add_argument("--streams", default="1,4,8,32")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--json")
    ap.add_argument("extra", nargs="*")
    a = ap.parse_args()
    levels = [int(x) for x in a.streams.split(",")]
    cmd = [a.bin, "serve", "--port", "0", "--max-seqs", str(max(levels)), "--step-tokens", "512", *a.extra]
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    port = None
    for line in proc.stderr:
        sys.stderr.write(line)
        m = re.search(r"listening on http://[^:]+:(\d+)", line)
        if m:
            port = int(m.group(1))
            break
    if port is None:
        sys.exit("strata serve did not start")
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    try:
        run_level(port, 1, 8)  # warm-up: first touch of the weights
        rows = [run_level(port, c, a.tokens) for c in levels]
    finally:
        proc.terminate()
        proc.wait()
    base = rows[0]["aggregate_tok_s"]
    print("| streams | aggregate tok/s | × 1 stream | TTFT p50 ms | TTFT p99 ms | inter-token p50 ms | p99 ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['streams']} | {r['aggregate_tok_s']:.1f} | {r['aggregate_tok_s'] / base:.2f} | {r['ttft_p50_ms']:.0f} "
            f"| {r['ttft_p99_ms']:.0f} | {r['itl_p50_ms']:.1f} | {r['itl_p99_ms']:.1f} |"
        )
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"command": cmd, "tokens_per_stream": a.tokens, "levels": rows}, f, indent=1)


if __name__ == "__main__":
    main()
