#!/usr/bin/env python3
"""Plain greedy decoding against prompt-lookup speculative decoding (`--lookup N`), one model,
the CPU, interleaved rounds: each round runs plain, then every `--lookup N`, for each prompt,
so a busy minute slows all of them alike.

    scripts/bench-lookup.py [--strata target/release/strata] [--rounds 3] [--lookup 2,3]
                            [--tokens 128] [--threads 2] [--kernels exact] [--detail]
                            [-- extra strata args]

`--lookup` takes comma-separated settings: `N` runs `--lookup N`, `N/K` runs `--lookup N
--draft-max K`, and `default` runs `--lookup` with no N (the CLI's default setting).
`--detail` also prints, per prompt and setting (summed over the rounds), the histograms of
drafted and kept tokens per round, the rounds with no draft, and the mean wall time of a
target pass by its number of tokens (the forward pass alone) next to plain decoding's.

Prints every run, then per prompt the medians: decode tok/s, the speed-up over plain, tokens
per target pass and the acceptance rate, and whether the generated ids equal plain greedy's
(they must: a mismatch is reported and the script exits 1). The CPU model is printed with the
numbers. The prompts ask for text the answer copies from the prompt (extraction) and for a
small code edit (the model may or may not copy the code back).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

PROMPTS = {
    "extract": (
        "Copy every sentence that contains a number from the text below, word for word, one per "
        "line.\n\nThe Aurora X2 kettle holds 1.7 litres of water. It is made of brushed steel and "
        "glass. The base turns a full circle so it can be lifted from any side. It boils a full "
        "load in 4 minutes at 2200 watts. A blue light shows while it heats. The lid opens with "
        "one button. It switches off by itself after 30 seconds at the boil. The filter can be "
        "taken out and rinsed. The cord is 75 centimetres long and winds into the base."
    ),
    "code": (
        "Rename the function `area` to `circle_area` and the variable `r` to `radius` in this "
        "Python code, and print the whole code again.\n\n"
        "import math\n\n"
        "def area(r):\n"
        "    if r < 0:\n"
        "        raise ValueError(\"negative radius\")\n"
        "    return math.pi * r * r\n\n"
        "def describe(r):\n"
        "    a = area(r)\n"
        "    return f\"a circle of radius {r} has area {a:.2f}\"\n\n"
        "for r in [1, 2, 3]:\n"
        "    print(describe(r))\n"
    ),
}


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return "unknown CPU"
    name = next((l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith("model name")), "unknown")
    flags = next((l.split(":", 1)[1].split() for l in info.splitlines() if l.startswith("flags")), [])
    simd = [f for f in ("avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f in flags]
    return f"{name} ({' '.join(simd)})"


def lookup_args(setting):
    """strata arguments of one `--lookup` setting: "" (plain), "N", "N/K" or "default"."""
    if not setting:
        return []
    if setting == "default":
        return ["--lookup"]
    n, _, k = setting.partition("/")
    return ["--lookup", n] + (["--draft-max", k] if k else [])


def run(args, prompt, lookup):
    cmd = [args.strata, "--cpu-kernels", args.kernels, "run", "--device", "cpu", "--chat", "-p", prompt,
           "-t", "0", "-n", str(args.tokens), "--json"] + args.extra + lookup_args(lookup)
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"strata failed ({' '.join(cmd[:6])} ...): {out.stderr.strip()[-500:]}")
    d = json.loads(out.stdout)
    spec = d.get("speculative") or {}
    return {
        "tps": d["timings"]["generation_tokens_per_second"],
        "ids": d["generated_ids"],
        "per_pass": spec.get("tokens_per_target_pass", 1.0),
        "accept": spec.get("acceptance_rate"),
        "spec": spec,
        "decode_s": d.get("stats", {}).get("decode", {}).get("wall_s"),
        "decode_passes": d.get("stats", {}).get("decode", {}).get("passes"),
        "decode_layers_s": d.get("stats", {}).get("decode", {}).get("compute_s"),
    }


def add_hist(total, hist):
    for i, v in enumerate(hist or []):
        total[i] = total.get(i, 0) + v


def detail(name, label, rs):
    """Histograms and pass times of one prompt and setting, summed over its rounds."""
    drafted, kept, passes, seconds, layers = {}, {}, {}, {}, {}
    for x in rs:
        s = x["spec"]
        add_hist(drafted, s.get("draft_lengths"))
        add_hist(kept, s.get("accepted_lengths"))
        add_hist(passes, s.get("pass_tokens"))
        add_hist(seconds, s.get("pass_seconds"))
        add_hist(layers, s.get("pass_layer_seconds"))
    fmt = lambda h: " ".join(f"{k}:{v}" for k, v in sorted(h.items()) if v)
    none = sum(x["spec"].get("rounds_without_draft", 0) for x in rs)
    total = sum(x["spec"].get("target_passes", 0) for x in rs)
    ms = " ".join(f"{t}:{1e3 * seconds[t] / passes[t]:.1f}({1e3 * layers.get(t, 0.0) / passes[t]:.1f})"
                  for t in sorted(passes) if passes[t])
    check = sum(x["spec"].get("check_seconds", 0.0) for x in rs) / max(total, 1)
    print(f"{name:8} {label:14} no draft {none}/{total} passes; drafted {{{fmt(drafted)}}}; "
          f"kept {{{fmt(kept)}}}; ms per pass by tokens (layers) {{{ms}}}; check {1e3 * check:.2f} ms/pass")


def label_of(setting):
    return "plain" if not setting else " ".join(lookup_args(setting))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--strata", default="target/release/strata")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--lookup", default="2,3", help="comma-separated settings: N, N/K (--draft-max K), default")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--kernels", default="exact", choices=["exact", "fast", "reference"])
    p.add_argument("--detail", action="store_true", help="print draft histograms and pass times")
    p.add_argument("extra", nargs="*", help="more strata run arguments (after --)")
    args = p.parse_args()
    lookups = [n.strip() for n in args.lookup.split(",") if n.strip()]
    print(f"machine: {cpu_model()}; {args.threads} threads, --cpu-kernels {args.kernels}, "
          f"{args.tokens} tokens, {args.rounds} interleaved rounds")
    results = {(name, n): [] for name in PROMPTS for n in [""] + lookups}
    for r in range(args.rounds):
        for name, prompt in PROMPTS.items():
            for n in [""] + lookups:
                res = run(args, prompt, n)
                results[(name, n)].append(res)
                label = label_of(n)
                acc = "" if res["accept"] is None else f", {res['per_pass']:.2f} tok/pass, {100 * res['accept']:.0f}% accepted"
                print(f"round {r + 1} {name:8} {label:11} {res['tps']:7.1f} tok/s ({len(res['ids'])} tokens{acc})")
    bad = 0
    print("\n| prompt | decoding | tok/s (median) | vs plain | tokens / target pass | acceptance | ids = plain |")
    print("| --- | --- | ---: | ---: | ---: | ---: | --- |")
    for name in PROMPTS:
        plain = statistics.median(x["tps"] for x in results[(name, "")])
        want = results[(name, "")][0]["ids"]
        for n in [""] + lookups:
            rs = results[(name, n)]
            tps = statistics.median(x["tps"] for x in rs)
            same = all(x["ids"] == want for x in rs)
            bad += not same
            if n == "":
                print(f"| {name} | plain | {tps:.1f} | | | | {'yes' if same else 'NO'} |")
            else:
                per_pass = statistics.median(x["per_pass"] for x in rs)
                acc = statistics.median(x["accept"] or 0.0 for x in rs)
                print(f"| {name} | {label_of(n)} | {tps:.1f} | {tps / plain:.2f}x | {per_pass:.2f} | "
                      f"{100 * acc:.0f}% | {'yes' if same else 'NO'} |")
    if args.detail:
        print()
        for name in PROMPTS:
            plain = results[(name, "")]
            s = sum(x["decode_s"] or 0.0 for x in plain)
            k = sum(x["decode_passes"] or 0 for x in plain)
            if k:
                c = sum(x["decode_layers_s"] or 0.0 for x in plain)
                print(f"{name:8} {'plain':14} ms per one-token pass {1e3 * s / k:.1f} (layers {1e3 * c / k:.1f})")
            for n in lookups:
                detail(name, label_of(n), results[(name, n)])
    if bad:
        sys.exit(f"{bad} configuration(s) generated other tokens than plain greedy decoding")


if __name__ == "__main__":
    main()
