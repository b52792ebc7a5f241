#!/usr/bin/env python3
"""Summarize `scripts/gpu-check.sh stream` output (the JSON lines of each `strata run`) as
Markdown tables for docs/gpu-results.md.

    scripts/gpu-stream-summary.py DIR          # DIR holds stream/*.json (unpacked stream.tgz)
"""
import json
import pathlib
import sys


def load(path):
    text = path.read_text().strip().splitlines()
    return json.loads(text[-1]) if text else None


def main(d):
    d = pathlib.Path(d)
    runs = {p.stem: load(p) for p in sorted((d / "stream").glob("*.json"))}
    runs = {k: v for k, v in runs.items() if v}
    print("| run | device | plan (res/str/cpu) | prefill tok/s | decode tok/s | predicted decode | predicted prefill | decode overlap | copy GB/s (decode) | tokens = CPU? |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    ref = {"smol": runs.get("smol-cpu", {}).get("generated_ids"), "l7b": runs.get("l7b-cpu", {}).get("generated_ids")}
    for name, r in runs.items():
        plan = r.get("plan") or {}
        layers = plan.get("layers") or []
        counts = [sum(1 for l in layers if l["placement"] == p) for p in ("resident", "streamed", "cpu")]
        t = r["timings"]
        st = r.get("stats") or {}
        dec = st.get("decode") or {}
        pred = plan.get("predicted") or {}
        base = ref.get(name.split("-")[0])
        same = "—" if base is None or name.endswith("-cpu") and name.count("-") == 1 else ("yes" if r["generated_ids"] == base else "**no**")
        print(
            f"| {name} | {r['device']} | {'/'.join(map(str, counts)) if layers else 'cpu'} "
            f"| {t['prompt_tokens_per_second']:.1f} | {t['generation_tokens_per_second']:.2f} "
            f"| {pred.get('decode_tokens_per_second', 0):.2f} | {pred.get('prefill_tokens_per_second', 0):.1f} "
            f"| {dec.get('overlap_efficiency', 0):.2f} | {dec.get('copy_gb_per_s', 0):.1f} | {same} |"
        )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "gpu-out")
