#!/usr/bin/env python3
"""Tests of `strata serve` through the official `openai` Python package (the version pinned in
scripts/test-serve.sh), on the default model.

Starts the server binary (argv[1], default target/debug/strata) on a free port, waits for
/health, runs the cases, and stops it. Every case is a plain function; the script exits
non-zero if any fails and prints a summary line `serve tests: N passed, M failed`.

Cases: completion, chat, streaming (both, ending in [DONE]), stop strings, seeds, usage
counts, the API key (401), malformed JSON / wrong-typed fields / n > 1 (400), a prompt longer
than the context (400 naming the limit), a body over the limit (413), max_tokens over the cap
(400), 300 seeded random bodies (200 or 4xx, never 5xx), a full queue (429 with Retry-After), concurrency (N parallel greedy clients get exactly
the tokens they get alone), cancelling mid-stream frees KV blocks (/metrics), and Ctrl-C
drains a request in flight.
"""

import concurrent.futures
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import openai

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target", "debug", "strata")
KEY = "test-key-123"
PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time,", "1, 2, 3, 4,"]


class Server:
    """A `strata serve` process on a free port (--port 0; the port is read from its log)."""

    def __init__(self, *args):
        cmd = [BIN, "serve", "--port", "0", *args]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
        self.log = []
        self.port = None
        deadline = time.time() + 120
        while self.port is None:
            line = self.proc.stderr.readline()
            if not line:
                raise RuntimeError("strata serve exited before listening:\n" + "".join(self.log))
            self.log.append(line)
            m = re.search(r"listening on http://[^:]+:(\d+)", line)
            if m:
                self.port = int(m.group(1))
            if time.time() > deadline:
                raise RuntimeError("strata serve did not start in 120 s")
        threading.Thread(target=self._drain, daemon=True).start()
        self.base = f"http://127.0.0.1:{self.port}"
        for _ in range(600):
            try:
                if self.get("/health")[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError("/health never answered")

    def _drain(self):
        for line in self.proc.stderr:
            self.log.append(line)

    def client(self, key=KEY):
        return openai.OpenAI(base_url=self.base + "/v1", api_key=key, max_retries=0, timeout=300)

    def get(self, path, headers=None):
        req = urllib.request.Request(self.base + path, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, r.read().decode(), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(), dict(e.headers)

    def post(self, path, body, headers=None):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        h = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}", **(headers or {})}
        req = urllib.request.Request(self.base + path, data=data, headers=h, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=300) as r:
                return r.status, r.read().decode(), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(), dict(e.headers)

    def metric(self, name):
        _, text, _ = self.get("/metrics")
        m = re.search(rf"^strata_{name} ([0-9.]+)$", text, re.M)
        if not m:
            raise AssertionError(f"/metrics has no strata_{name}:\n{text}")
        return float(m.group(1))

    def stop(self, sig=signal.SIGTERM, timeout=60):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def greedy_completion(c, prompt, n=12, **kw):
    r = c.completions.create(model="default", prompt=prompt, max_tokens=n, temperature=0, **kw)
    return r


def expect_status(e, status, *words):
    assert e.status_code == status, f"expected {status}, got {e.status_code}: {e}"
    body = e.body if isinstance(e.body, dict) else {}
    msg = json.dumps(body)
    for w in words:
        assert w in msg, f"{w!r} not in the error {msg}"


# ---- cases on the main server ----


def case_completion(s):
    r = greedy_completion(s.client(), PROMPTS[0])
    assert r.object == "text_completion"
    assert r.choices[0].finish_reason == "length", r
    assert r.usage.completion_tokens == 12 and r.usage.prompt_tokens > 0, r.usage
    assert r.usage.total_tokens == r.usage.prompt_tokens + 12
    assert "Paris" in r.choices[0].text, r.choices[0].text


def case_chat(s):
    r = s.client().chat.completions.create(
        model="default",
        messages=[{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 2+2?"}],
        max_tokens=24,
        temperature=0,
    )
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert "4" in r.choices[0].message.content, r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens >= 1 and r.usage.prompt_tokens > 10


def case_streaming(s):
    c = s.client()
    whole = greedy_completion(c, PROMPTS[1], 16).choices[0].text
    chunks = list(c.completions.create(model="m", prompt=PROMPTS[1], max_tokens=16, temperature=0, stream=True))
    text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    assert text == whole, (text, whole)
    assert chunks[-1].choices[0].finish_reason == "length"
    assert chunks[-1].usage.completion_tokens == 16
    chat = list(
        c.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "Say hello."}], max_tokens=8, temperature=0, stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chat[0].choices[0].delta.role == "assistant"
    assert chat[-1].usage.completion_tokens >= 1 and chat[-1].choices == []
    # The raw stream ends with data: [DONE].
    _, raw, headers = s.post("/v1/completions", {"prompt": "Hi", "max_tokens": 3, "stream": True})
    assert headers.get("content-type", headers.get("Content-Type", "")).startswith("text/event-stream"), headers
    events = [line for line in raw.splitlines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]", events[-3:]


def case_stop_strings(s):
    c = s.client()
    whole = greedy_completion(c, PROMPTS[3], 16).choices[0].text
    assert "," in whole, whole
    r = greedy_completion(c, PROMPTS[3], 16, stop=[","])
    assert r.choices[0].text == whole[: whole.index(",")], (r.choices[0].text, whole)
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens < 16


def case_seeds(s):
    c = s.client()
    kw = dict(model="m", prompt="My favourite colour is", max_tokens=16, temperature=1.0)
    a = c.completions.create(seed=42, **kw).choices[0].text
    b = c.completions.create(seed=42, **kw).choices[0].text
    others = {c.completions.create(seed=k, **kw).choices[0].text for k in (1, 2, 3)}
    assert a == b, (a, b)
    assert len(others | {a}) > 1, "four seeds gave the same text"


def case_models_health_metrics(s):
    models = s.client().models.list()
    assert len(models.data) == 1 and "SmolLM2" in models.data[0].id
    assert s.get("/health")[0] == 200
    status, text, headers = s.get("/metrics")
    assert status == 200 and "# TYPE strata_kv_blocks_used gauge" in text
    assert s.metric("generated_tokens_total") > 0


def case_banner_plan_and_kv(s):
    # The plan (the session flags of `run`) and the KV capacity, printed before listening. The
    # default --kv-memory 512MiB holds 23301 positions of the default model in f16 (30 layers,
    # K and V of 192 values, 2 bytes: 23040 bytes per position), so 1456 blocks of 16.
    log = "".join(s.log)
    assert "plan: every layer on the CPU" in log, log
    m = re.search(r"KV: (\d+) blocks of (\d+) positions \((\d+) positions", log)
    assert m, log
    blocks, size, positions = map(int, m.groups())
    assert (blocks, size, positions) == (1456, 16, 1456 * 16), m.group(0)
    status, text, _ = s.get("/metrics")
    assert f"strata_kv_blocks_total {blocks}" in text, "the pool in /metrics is not the one printed"


def case_api_key(s):
    try:
        greedy_completion(s.client(key="wrong"), "Hi", 2)
        raise AssertionError("a wrong key was accepted")
    except openai.AuthenticationError as e:
        expect_status(e, 401, "invalid_api_key")
    status, _, _ = s.post("/v1/completions", {"prompt": "Hi"}, headers={"Authorization": ""})
    assert status == 401


def case_bad_requests(s):
    status, body, _ = s.post("/v1/completions", b"{not json")
    assert status == 400 and "not valid JSON" in body, body
    status, body, _ = s.post("/v1/completions", {"prompt": "Hi", "temperature": "hot"})
    assert status == 400 and "temperature" in body, body
    status, body, _ = s.post("/v1/chat/completions", {"messages": "hello"})
    assert status == 400 and "messages" in body, body
    status, body, _ = s.post("/v1/completions", [1, 2])
    assert status == 400, body
    c = s.client()
    try:
        c.completions.create(model="m", prompt="Hi", max_tokens=2, n=2)
        raise AssertionError("n=2 was accepted")
    except openai.BadRequestError as e:
        expect_status(e, 400, "n = 2")
    try:
        c.completions.create(model="m", prompt="Hi", max_tokens=100000)
        raise AssertionError("max_tokens over the cap was accepted")
    except openai.BadRequestError as e:
        expect_status(e, 400, "--max-tokens-limit")
    try:
        c.completions.create(model="m", prompt="Hi", max_tokens=2, temperature=-1)
        raise AssertionError("a negative temperature was accepted")
    except openai.BadRequestError as e:
        expect_status(e, 400, "temperature")


def case_random_bodies(s):
    # 300 requests (seeded): a valid body with one to three fields set to a value of another type
    # or out of range, dropped, or unknown fields added, and one in ten with random bytes written
    # over its JSON text. Each must be answered 200 or 4xx, never 5xx or a dropped connection.
    rnd = random.Random(11)
    odd = [None, True, False, 0, -1, 1, 2**31, 2**63, -(2**63), 2**64, 1e308, -1e308, 1.5, -0.0, "", "x", "\u0000",
           "\U0001F600" * 3, [], [1], {}, {"a": 1}, [[[]]], "NaN", "Infinity", 1e-320]
    fields = ["model", "prompt", "messages", "max_tokens", "temperature", "top_p", "top_k", "seed", "stream",
              "stop", "n", "ignore_eos", "logprobs", "echo", "presence_penalty", "frequency_penalty", "min_p",
              "user", "stream_options", "tools", "response_format", "logit_bias", "max_completion_tokens"]
    seen = {}
    for i in range(300):
        chat = rnd.random() < 0.5
        path = "/v1/chat/completions" if chat else "/v1/completions"
        body = {"model": "m", "max_tokens": 3, "temperature": 0}
        body.update({"messages": [{"role": "user", "content": "Hi"}]} if chat else {"prompt": "Hello"})
        if rnd.random() < 0.1:
            raw = bytearray(json.dumps(body).encode())
            for _ in range(rnd.randint(1, 4)):
                raw[rnd.randrange(len(raw))] = rnd.randrange(256)
            body = bytes(raw)
        else:
            for _ in range(rnd.randint(1, 3)):
                key = rnd.choice(fields)
                if rnd.random() < 0.15:
                    body.pop(key, None)
                elif key == "messages" and rnd.random() < 0.5:
                    roles = ["user", "system", "assistant", "tool", "", None, 1]
                    body[key] = [{"role": rnd.choice(roles), "content": rnd.choice(odd)} for _ in range(rnd.randint(0, 3))]
                else:
                    body[key] = rnd.choice(odd)
            if isinstance(body.get("max_tokens"), int) and body["max_tokens"] > 8:
                body["max_tokens"] = 8
        try:
            status, text, _ = s.post(path, body)
        except OSError as e:
            raise AssertionError(f"request {i} to {path} dropped ({e}): {body!r}") from e
        assert status == 200 or 400 <= status < 500, f"request {i} to {path}: {status} {text[:200]} for {body!r}"
        seen[status] = seen.get(status, 0) + 1
    assert s.get("/health")[0] == 200, "the server stopped answering"
    print(f"     random bodies: {dict(sorted(seen.items()))}")


def case_context_limit(s):
    try:
        s.client().completions.create(model="m", prompt="hello " * 1200, max_tokens=4)
        raise AssertionError("a prompt longer than the context was accepted")
    except openai.BadRequestError as e:
        expect_status(e, 400, "context_length_exceeded", "maximum context length is 1024 tokens")


def case_body_limit(s):
    status, body, _ = s.post("/v1/completions", {"prompt": "x" * 300_000, "max_tokens": 1})
    assert status == 413, (status, body[:200])


def case_concurrency(s):
    """N parallel greedy clients each get exactly the tokens they get alone."""
    c = s.client()
    n = 24
    alone = [greedy_completion(c, p, n).choices[0].text for p in PROMPTS]
    before = s.metric("steps_total")
    jobs = PROMPTS * 2
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        got = list(pool.map(lambda p: greedy_completion(s.client(), p, n).choices[0].text, jobs))
    for p, g in zip(jobs, got):
        assert g == alone[PROMPTS.index(p)], f"{p!r}: batched {g!r} vs alone {alone[PROMPTS.index(p)]!r}"
    steps = s.metric("steps_total") - before
    # 8 requests of 24 tokens alone would take at least 8 * 24 steps; batched, far fewer.
    assert steps < 8 * n, f"{steps} steps for 8 parallel requests: they were not batched"


def case_cancel_frees_kv(s):
    assert s.metric("kv_blocks_used") == 0
    cancelled = s.metric("requests_cancelled_total")
    stream = s.client().completions.create(
        model="m", prompt=PROMPTS[2], max_tokens=400, temperature=0, stream=True, extra_body={"ignore_eos": True}
    )
    it = iter(stream)
    next(it)
    next(it)
    assert s.metric("kv_blocks_used") > 0, "a running stream holds no KV blocks"
    stream.close()
    for _ in range(300):
        if s.metric("kv_blocks_used") == 0:
            break
        time.sleep(0.05)
    assert s.metric("kv_blocks_used") == 0, "the cancelled stream's KV blocks were not freed"
    assert s.metric("requests_cancelled_total") == cancelled + 1


# ---- cases on a small server: one slot, a queue of one, no key ----


def case_queue_full(small):
    c = small.client(key="anything")  # no --api-key: any key is accepted
    results = {}

    def long_request(i):
        try:
            # Long enough that the second request still waits when the third arrives, even on
            # a machine several times faster than the 2-core dev VM.
            results[i] = c.completions.create(
                model="m", prompt="Count: 1, 2,", max_tokens=200, temperature=0, extra_body={"ignore_eos": True}
            )
        except openai.APIStatusError as e:
            results[i] = e

    threads = [threading.Thread(target=long_request, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.3)
    for _ in range(100):
        if small.metric("queue_length") >= 1:
            break
        time.sleep(0.05)
    status, body, headers = small.post("/v1/completions", {"prompt": "Hi", "max_tokens": 2})
    assert status == 429, (status, body)
    assert headers.get("Retry-After", headers.get("retry-after")) == "1", headers
    assert "queue_full" in body
    for t in threads:
        t.join()
    assert all(not isinstance(r, Exception) for r in results.values()), results


def case_drain_on_signal(small):
    """SIGINT while a request runs: the request completes, then the server exits 0."""
    result = {}
    # The previous case's requests are answered; the gauge must say so before this one starts,
    # or a request that has not arrived yet could be taken for the running one.
    for _ in range(200):
        if small.metric("sequences_running") == 0:
            break
        time.sleep(0.05)
    assert small.metric("sequences_running") == 0, "a finished request still counted as running"

    def run():
        result["r"] = small.client().completions.create(
            model="m", prompt="Hello", max_tokens=64, temperature=0, extra_body={"ignore_eos": True}
        )

    t = threading.Thread(target=run)
    t.start()
    for _ in range(200):
        if small.metric("sequences_running") >= 1:
            break
        time.sleep(0.05)
    code = small.stop(signal.SIGINT)
    t.join()
    assert result["r"].usage.completion_tokens == 64, result
    assert code == 0, f"exit code {code}"


def main():
    passed, failed = 0, []
    main_srv = Server("--api-key", KEY, "--context", "1024", "--max-body", "256KiB", "--max-seqs", "8")
    small = Server("--context", "512", "--max-seqs", "1", "--max-queue", "1")
    cases = [(main_srv, f) for n, f in globals().items() if n.startswith("case_") and n not in ("case_queue_full", "case_drain_on_signal")]
    cases += [(small, case_queue_full), (small, case_drain_on_signal)]
    try:
        for srv, case in cases:
            t0 = time.time()
            try:
                case(srv)
                passed += 1
                print(f"ok   {case.__name__} ({time.time() - t0:.1f} s)", flush=True)
            except Exception as e:  # noqa: BLE001 - report every failure, then fail the run
                failed.append(case.__name__)
                print(f"FAIL {case.__name__}: {type(e).__name__}: {e}", flush=True)
    finally:
        main_srv.stop()
        small.stop()
    if failed:
        print("server log (main):\n" + "".join(main_srv.log[-40:]))
    print(f"serve tests: {passed} passed, {len(failed)} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
