//! The `strata` binary end to end: JSON contracts other people's scripts rely on, and clear
//! errors with exit code 1 (never a panic) on malformed model files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

mod edges;

fn strata(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_strata")).args(args).env("RUST_BACKTRACE", "0").output().expect("run strata")
}

fn tiny_model(dir: &Path) -> PathBuf {
    let path = dir.join("tiny.gguf");
    let o =
        strata(&["synth", "--preset", "tiny", "--dtype", "q8_0", "--seed", "3", "--out", path.to_str().expect("path")]);
    assert!(o.status.success(), "synth failed: {}", String::from_utf8_lossy(&o.stderr));
    path
}

fn last_json(o: &Output) -> Value {
    assert!(o.status.success(), "strata failed: {}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let line = stdout.lines().last().expect("a line of output");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

fn assert_clean_failure(o: &Output, what: &str) {
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{what}: exit code {:?}, stderr: {stderr}", o.status.code());
    assert!(stderr.starts_with("error: "), "{what}: stderr does not start with 'error: ': {stderr}");
    assert!(!stderr.contains("panicked"), "{what}: panicked: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{what}: the error is not one line: {stderr}");
}

#[test]
fn run_json_contract() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = tiny_model(dir.path());
    let o = strata(&[
        "run",
        "-m",
        m.to_str().expect("p"),
        "-p",
        "Hello",
        "-t",
        "0",
        "-n",
        "5",
        "--ignore-eos",
        "--json",
        "--device",
        "cpu",
    ]);
    let v = last_json(&o);
    for key in ["text", "prompt_ids", "generated_ids", "device", "timings", "plan", "stats"] {
        assert!(v.get(key).is_some(), "missing {key} in {v}");
    }
    for key in ["prompt_tokens", "prompt_tokens_per_second", "generated_tokens", "generation_tokens_per_second"] {
        assert!(v["timings"][key].is_number(), "timings.{key} missing in {v}");
    }
    assert_eq!(v["prompt_ids"].as_array().map(Vec::len), Some(5), "{v}");
    assert_eq!(v["generated_ids"].as_array().map(Vec::len), Some(5), "{v}");
    assert_eq!(v["device"], "cpu");
    // Same seed, same text.
    let args =
        ["run", "-m", m.to_str().expect("p"), "-p", "Hi", "-n", "8", "--seed", "42", "--json", "--device", "cpu"];
    assert_eq!(last_json(&strata(&args))["generated_ids"], last_json(&strata(&args))["generated_ids"]);
    // The kernel paths: exact (the default) and reference give the same greedy tokens (f32
    // order only); fast runs (its 8-bit rounding may break a near-tie of this random model).
    let greedy =
        ["run", "-m", m.to_str().expect("p"), "-p", "Hello", "-t", "0", "-n", "6", "--json", "--device", "cpu"];
    let want = last_json(&strata(&greedy))["generated_ids"].clone();
    assert_eq!(last_json(&strata(&[&["--cpu-kernels", "reference"][..], &greedy[..]].concat()))["generated_ids"], want);
    let fast = last_json(&strata(&[&["--cpu-kernels", "fast"][..], &greedy[..]].concat()));
    assert_eq!(fast["generated_ids"].as_array().map(Vec::len), Some(6), "{fast}");
    // A warm-up pass changes the timings, never the text, and is not in the stats: the prefill
    // pass is the prompt's.
    let cold = last_json(&strata(&[&greedy[..], &["--stats"]].concat()));
    let warm = last_json(&strata(&[&greedy[..], &["--warmup", "--stats"]].concat()));
    assert_eq!(warm["generated_ids"], want);
    for (phase, key) in [("prefill", "passes"), ("prefill", "tokens"), ("decode", "passes"), ("decode", "tokens")] {
        assert_eq!(warm["stats"][phase][key], cold["stats"][phase][key], "{phase}.{key}: {warm}");
    }
}

#[test]
fn bench_reports_both_tests() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = tiny_model(dir.path());
    let m = m.to_str().expect("p");
    let v = last_json(&strata(&["bench", "-m", m, "-p", "16", "-n", "5", "-r", "2", "--json", "--device", "cpu"]));
    assert_eq!(v["device"], "cpu", "{v}");
    let tests = v["tests"].as_array().expect("tests");
    let names: Vec<&str> = tests.iter().map(|t| t["name"].as_str().expect("name")).collect();
    assert_eq!(names, ["pp16", "tg5"], "{v}");
    for t in tests {
        let reps = t["repetitions_tokens_per_second"].as_array().expect("repetitions");
        assert_eq!(reps.len(), 2, "{v}");
        assert!(reps.iter().all(|r| r.as_f64().is_some_and(|x| x > 0.0)), "{v}");
        assert!(t["tokens_per_second"].as_f64().is_some_and(|x| x > 0.0), "{v}");
    }
    // The table, and a request that cannot fit the context is a clear error.
    let o = strata(&["bench", "-m", m, "-p", "8", "-n", "0", "-r", "1", "--device", "cpu"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && text.contains("pp8") && !text.contains("tg"), "{text}");
    let o = strata(&["bench", "-m", m, "-p", "64", "-c", "32", "--device", "cpu"]);
    assert_clean_failure(&o, "a bench larger than the context");
    assert!(String::from_utf8_lossy(&o.stderr).contains("--context"));
}

#[test]
fn tokenize_and_logits_json_contracts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = tiny_model(dir.path());
    let v = last_json(&strata(&["tokenize", "-m", m.to_str().expect("p"), "Hi!", "--json"]));
    assert_eq!(v["ids"], serde_json::json!([72, 105, 33]), "{v}");
    assert_eq!(v["pieces"], serde_json::json!(["H", "i", "!"]), "{v}");
    let v = last_json(&strata(&[
        "logits",
        "-m",
        m.to_str().expect("p"),
        "--tokens",
        "72,105,33",
        "--top-k",
        "4",
        "--json",
        "--device",
        "cpu",
    ]));
    let pos = v["positions"].as_array().expect("positions");
    assert_eq!(pos.len(), 3);
    for p in pos {
        assert_eq!(p["ids"].as_array().map(Vec::len), Some(4));
        let l: Vec<f64> = p["logits"].as_array().expect("logits").iter().filter_map(Value::as_f64).collect();
        assert_eq!(l.len(), 4);
        assert!(l.windows(2).all(|w| w[0] >= w[1]), "logits not best first: {l:?}");
    }
}

#[test]
fn plan_json_contract() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = tiny_model(dir.path());
    let v = last_json(&strata(&[
        "plan",
        "-m",
        m.to_str().expect("p"),
        "--gpu-memory",
        "1GiB",
        "--h2d-bandwidth",
        "25GB/s",
        "--json",
        "--device",
        "cpu",
    ]));
    for key in [
        "layers",
        "gpu_budget_bytes",
        "gpu_bytes_planned",
        "host_pinned_bytes_planned",
        "prefetch_depth",
        "predicted",
        "warnings",
    ] {
        assert!(v.get(key).is_some(), "missing {key}");
    }
    let layers = v["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 2);
    for (i, l) in layers.iter().enumerate() {
        assert_eq!(l["index"], i);
        assert!(["resident", "streamed", "cpu"].contains(&l["placement"].as_str().unwrap_or("")), "{l}");
        assert!(l["weight_bytes"].as_u64().is_some_and(|b| b > 0));
        assert!(l["kv_placement"].is_string());
    }
    assert!(v["predicted"]["decode_tokens_per_second"].is_number());
    assert!(v["predicted"]["prefill_tokens_per_second"].is_number());
}

#[test]
fn malformed_files_fail_cleanly_in_inspect_and_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = tiny_model(dir.path());
    let good = std::fs::read(&m).expect("read");
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    for cut in [0, 3, 4, 8, 16, 24, 100, 1000, good.len() / 2, good.len() - 1] {
        cases.push((format!("truncated at {cut}"), good[..cut].to_vec()));
    }
    let mut bad_magic = good.clone();
    bad_magic[..4].copy_from_slice(b"GGUX");
    cases.push(("wrong magic".into(), bad_magic));
    let mut absurd = good.clone();
    absurd[8..16].copy_from_slice(&u64::MAX.to_le_bytes()); // tensor count
    cases.push(("absurd tensor count".into(), absurd));
    let mut absurd_kv = good.clone();
    absurd_kv[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes()); // metadata count
    cases.push(("absurd metadata count".into(), absurd_kv));
    cases.push(("not a GGUF file".into(), b"hello, world\n".repeat(100)));
    for (name, bytes) in cases {
        let path = dir.path().join("bad.gguf");
        std::fs::write(&path, &bytes).expect("write");
        let p = path.to_str().expect("p");
        assert_clean_failure(&strata(&["inspect", p]), &format!("inspect, {name}"));
        assert_clean_failure(
            &strata(&["run", "-m", p, "-p", "hi", "-n", "2", "--device", "cpu"]),
            &format!("run, {name}"),
        );
    }
    assert_clean_failure(&strata(&["inspect", "/nonexistent/model.gguf"]), "missing file");
    assert_clean_failure(&strata(&["run", "-m", "/nonexistent/model.gguf", "-p", "x"]), "missing model");
}

#[test]
fn a_prompt_that_does_not_fit_the_context_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = tiny_model(dir.path());
    let o =
        strata(&["run", "-m", m.to_str().expect("p"), "-p", "Hello there", "-c", "16", "-n", "32", "--device", "cpu"]);
    assert_clean_failure(&o, "context too small");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("exceed the context of 16") && stderr.contains("--context"), "{stderr}");
}

/// `--prefill-stream-min` takes a token count, `auto` or `off`; anything else is one clear line.
#[test]
fn prefill_stream_min_garbage_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = tiny_model(dir.path());
    let m = m.to_str().expect("p");
    let base = ["plan", "-m", m, "--gpu-memory", "1GiB", "--device", "cpu", "--json"];
    for bad in ["garbage", "-3", "1.5"] {
        let flag = format!("--prefill-stream-min={bad}");
        let o = strata(&[&base[..], &[flag.as_str()]].concat());
        assert_clean_failure(&o, bad);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(stderr.contains(&format!("--prefill-stream-min `{bad}` is not a token count")), "{stderr}");
    }
    for good in ["32", "auto", "off", "0"] {
        let v = last_json(&strata(&[&base[..], &["--prefill-stream-min", good]].concat()));
        assert!(v.get("prefill_placement").is_some(), "{good}: {v}");
    }
}
