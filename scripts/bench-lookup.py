#!/usr/bin/env python3
"""Plain greedy decoding against prompt-lookup speculative decoding (`--lookup N`), one model,
the CPU, interleaved rounds: each round runs plain, then every `--lookup N`, for each prompt,
so a busy minute slows all of them alike.

    scripts/bench-lookup.py [--strata target/release/strata] [--rounds 3] [--lookup 2,3]
                            [--tokens 128] [--threads 2] [--kernels exact] [-- extra strata args]

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


def run(args, prompt, lookup):
    cmd = [args.strata, "--cpu-kernels", args.kernels, "run", "--device", "cpu", "--chat", "-p", prompt,
           "-t", "0", "-n", str(args.tokens), "--json"] + args.extra
    if lookup:
        cmd += ["--lookup", str(lookup)]
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
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--strata", default="target/release/strata")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--lookup", default="2,3", help="comma-separated N of --lookup N")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--kernels", default="exact", choices=["exact", "fast", "reference"])
    p.add_argument("extra", nargs="*", help="more strata run arguments (after --)")
    args = p.parse_args()
    lookups = [int(n) for n in args.lookup.split(",") if n]
    print(f"machine: {cpu_model()}; {args.threads} threads, --cpu-kernels {args.kernels}, "
          f"{args.tokens} tokens, {args.rounds} interleaved rounds")
    results = {(name, n): [] for name in PROMPTS for n in [0] + lookups}
    for r in range(args.rounds):
        for name, prompt in PROMPTS.items():
            for n in [0] + lookups:
                res = run(args, prompt, n)
                results[(name, n)].append(res)
                label = "plain" if n == 0 else f"--lookup {n}"
                acc = "" if res["accept"] is None else f", {res['per_pass']:.2f} tok/pass, {100 * res['accept']:.0f}% accepted"
                print(f"round {r + 1} {name:8} {label:11} {res['tps']:7.1f} tok/s ({len(res['ids'])} tokens{acc})")
    bad = 0
    print("\n| prompt | decoding | tok/s (median) | vs plain | tokens / target pass | acceptance | ids = plain |")
    print("| --- | --- | ---: | ---: | ---: | ---: | --- |")
    for name in PROMPTS:
        plain = statistics.median(x["tps"] for x in results[(name, 0)])
        want = results[(name, 0)][0]["ids"]
        for n in [0] + lookups:
            rs = results[(name, n)]
            tps = statistics.median(x["tps"] for x in rs)
            same = all(x["ids"] == want for x in rs)
            bad += not same
            if n == 0:
                print(f"| {name} | plain | {tps:.1f} | | | | {'yes' if same else 'NO'} |")
            else:
                per_pass = statistics.median(x["per_pass"] for x in rs)
                acc = statistics.median(x["accept"] or 0.0 for x in rs)
                print(f"| {name} | --lookup {n} | {tps:.1f} | {tps / plain:.2f}x | {per_pass:.2f} | "
                      f"{100 * acc:.0f}% | {'yes' if same else 'NO'} |")
    if bad:
        sys.exit(f"{bad} configuration(s) generated other tokens than plain greedy decoding")


if __name__ == "__main__":
    main()
