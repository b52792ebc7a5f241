//! What a new user hits first: units, flags that do nothing, the device line, messages said
//! twice, noisy JSON, and host memory that does not fit (a clean error, never an abort).

use std::process::Command;

use crate::{assert_clean_failure, last_json, strata, tiny_model};

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn sizes_and_rates_need_a_unit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = tiny_model(dir.path());
    let m = m.to_str().expect("p");
    let o = strata(&["plan", "-m", m, "--device", "cpu", "--gpu-memory", "1GiB", "--h2d-bandwidth", "25"]);
    assert_clean_failure(&o, "--h2d-bandwidth 25");
    let e = stderr(&o);
    assert!(e.contains("--h2d-bandwidth") && e.contains("`25` has no unit") && e.contains("25GB/s"), "{e}");
    let o = strata(&["plan", "-m", m, "--device", "cpu", "--gpu-memory", "6"]);
    assert_clean_failure(&o, "--gpu-memory 6");
    let e = stderr(&o);
    assert!(e.contains("--gpu-memory") && e.contains("6GiB"), "{e}");
}

#[test]
fn context_zero_is_an_error_and_beyond_training_warns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = tiny_model(dir.path());
    let m = m.to_str().expect("p");
    let o = strata(&["run", "-m", m, "-p", "Hi", "-n", "1", "--device", "cpu", "--context", "0"]);
    assert_eq!(o.status.code(), Some(2), "a usage error: {}", stderr(&o));
    assert!(stderr(&o).contains("at least 1 token"), "{}", stderr(&o));
    // The tiny model was trained with 256 positions.
    let o = strata(&["run", "-m", m, "-p", "Hi", "-n", "1", "--device", "cpu", "--context", "512"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("warning: --context 512 is above the 256 tokens"), "{}", stderr(&o));
    let o = strata(&["run", "-m", m, "-p", "Hi", "-n", "1", "--device", "cpu", "--context", "256"]);
    assert!(o.status.success() && !stderr(&o).contains("warning"), "{}", stderr(&o));
}

#[test]
fn the_device_line_is_one_clause_and_gives_rebuild_advice_only_where_it_helps() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = tiny_model(dir.path());
    let o = strata(&["run", "-m", m.to_str().expect("p"), "-p", "Hi", "-n", "1", "--device", "auto"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let e = stderr(&o);
    let line = e.lines().find(|l| l.starts_with("device: ")).unwrap_or_else(|| panic!("no device line: {e}"));
    if line.starts_with("device: cpu") {
        assert!(!line.contains("(built") && line.matches('(').count() <= 1, "nested: {line}");
        let nvidia = std::path::Path::new("/proc/driver/nvidia/version").exists();
        assert!(nvidia || !line.contains("--features cuda"), "rebuild advice without a GPU: {line}");
    }
}

#[test]
fn a_missing_file_is_named_once() {
    let o = strata(&["inspect", "/nonexistent/model.gguf"]);
    assert_clean_failure(&o, "missing file");
    let e = stderr(&o);
    assert_eq!(e.matches("/nonexistent/model.gguf").count(), 1, "{e}");
}

#[test]
fn cpu_kernels_is_offered_where_it_does_something() {
    let help = |cmd: &str| String::from_utf8_lossy(&strata(&[cmd, "--help"]).stdout).into_owned();
    for cmd in ["tokenize", "synth", "inspect"] {
        assert!(!help(cmd).contains("--cpu-kernels"), "{cmd} --help offers --cpu-kernels");
    }
    for cmd in ["run", "chat", "bench", "logits", "plan", "serve"] {
        assert!(help(cmd).contains("--cpu-kernels"), "{cmd} --help lacks --cpu-kernels");
    }
    assert!(!String::from_utf8_lossy(&strata(&["--help"]).stdout).contains("--cpu-kernels"));
    let o = strata(&["tokenize", "--cpu-kernels", "fast", "hi"]);
    assert_eq!(o.status.code(), Some(2), "tokenize takes no --cpu-kernels: {}", stderr(&o));
    // The command's flag and the old form before the command give the same tokens.
    let dir = tempfile::tempdir().expect("tempdir");
    let m = tiny_model(dir.path());
    let args = ["run", "-m", m.to_str().expect("p"), "-p", "Hello", "-t", "0", "-n", "4", "--json", "--device", "cpu"];
    let own = last_json(&strata(&[&args[..], &["--cpu-kernels", "reference"]].concat()));
    let before = last_json(&strata(&[&["--cpu-kernels", "reference"][..], &args[..]].concat()));
    assert_eq!(own["generated_ids"], before["generated_ids"]);
}

#[test]
fn json_prints_f32_settings_as_typed_and_stats_explain_the_pass_count() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = tiny_model(dir.path());
    let m = m.to_str().expect("p");
    let o = strata(&["run", "-m", m, "-p", "Hello", "-n", "3", "--seed", "1", "--json", "--device", "cpu"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("\"temperature\":0.8") && out.contains("\"top_p\":0.95"), "{out}");
    assert!(!out.contains("0.800000011920929"), "{out}");
    let v = last_json(&o);
    assert_eq!(v["sampler"]["min_p"].as_f64(), Some(0.05), "{v}");
    let o = strata(&["logits", "-m", m, "--tokens", "72,105", "--top-k", "2", "--json", "--device", "cpu"]);
    let v = last_json(&o);
    for l in v["positions"][0]["logits"].as_array().expect("logits") {
        let x = l.as_f64().expect("number");
        assert_eq!(x, (x as f32).to_string().parse::<f64>().expect("f64"), "not the shortest form: {x}");
    }
    let o =
        strata(&["run", "-m", m, "-p", "Hello", "-t", "0", "-n", "8", "--ignore-eos", "--stats", "--device", "cpu"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("8 generated"), "{e}");
    assert!(e.contains("the prefill pass gives the first generated token"), "{e}");
}

/// `ulimit -v` (an address-space limit) stands in for a machine or container without the
/// memory: a KV cache that does not fit is refused before loading with the numbers and the
/// flag, exit code 1 — not `memory allocation of N bytes failed` and SIGABRT.
#[test]
fn a_kv_cache_larger_than_the_memory_limit_is_a_clean_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = tiny_model(dir.path());
    // The tiny model's f32 KV cache at 1M positions: 2 layers × 2 × 32 × 4 bytes = 512 MiB.
    let script = format!(
        "ulimit -v 400000 && exec '{}' run -m '{}' -p Hi -n 1 --device cpu --kv-type f32 --context 1000000",
        env!("CARGO_BIN_EXE_strata"),
        m.display()
    );
    let o = Command::new("bash").args(["-c", &script]).env("RUST_BACKTRACE", "0").output().expect("bash");
    let e = stderr(&o);
    // Exit code 1 with one error line (after the warning that 1M is beyond the training
    // context), not SIGABRT.
    assert_eq!(o.status.code(), Some(1), "{e}");
    let errors: Vec<&str> = e.lines().filter(|l| !l.starts_with("warning: ")).collect();
    assert_eq!(errors.len(), 1, "{e}");
    assert!(errors[0].starts_with("error: ") && !e.contains("panicked") && !e.contains("memory allocation"), "{e}");
    assert!(e.contains("--context 1000000") && e.contains("address-space limit") && e.contains("at most"), "{e}");
    // The context it names does run under the same limit.
    let fits: usize = e
        .split("at most ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no context in: {e}"));
    let script = script.replace("--context 1000000", &format!("--context {fits}"));
    let o = Command::new("bash").args(["-c", &script]).output().expect("bash");
    assert!(o.status.success(), "--context {fits} under the same limit: {}", stderr(&o));
}

#[test]
fn speculative_flags_refuse_zero_values_and_report_in_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = tiny_model(dir.path());
    let m = m.to_str().expect("p");
    let run = |extra: &[&str]| {
        let mut args = vec!["run", "-m", m, "-p", "a b c a b c a b", "-n", "8", "--device", "cpu", "-t", "0"];
        args.extend_from_slice(extra);
        strata(&args)
    };
    for (extra, want) in [
        (&["--lookup", "0"][..], "--lookup 0 is invalid"),
        (&["--lookup", "2", "--draft-max", "0"][..], "--draft-max 0 is invalid"),
        (&["--draft-model", m, "--draft-max", "0"][..], "--draft-max 0 is invalid"),
        (&["--draft-max", "4"][..], "--draft-max needs a drafter"),
    ] {
        let o = run(extra);
        assert_clean_failure(&o, want);
        assert!(stderr(&o).contains(want), "{extra:?}: {}", stderr(&o));
    }
    // The model as its own draft, and prompt lookup (with N, and the default without): the plain
    // greedy tokens, with the counts.
    let plain = last_json(&run(&["--json"]));
    for (extra, drafter) in [
        (&["--lookup", "1"][..], "lookup 1"),
        (&["--lookup"][..], "lookup longest 4..2"),
        (&["--draft-model", m][..], "draft model"),
    ] {
        let mut args = extra.to_vec();
        args.push("--json");
        let v = last_json(&run(&args));
        assert_eq!(v["generated_ids"], plain["generated_ids"], "{extra:?}");
        let s = &v["speculative"];
        assert_eq!(s["drafter"], drafter, "{s}");
        for key in [
            "draft_rounds",
            "target_passes",
            "acceptance_rate",
            "tokens_per_target_pass",
            "draft_seconds",
            "verify_seconds",
        ] {
            assert!(s[key].is_number(), "{key} missing: {s}");
        }
        for key in ["draft_lengths", "accepted_lengths", "pass_tokens", "pass_seconds"] {
            assert!(s[key].is_array(), "{key} missing: {s}");
        }
        // Every target pass is counted once by its draft length and once by its size.
        let sum = |key: &str| s[key].as_array().map_or(0, |a| a.iter().filter_map(|v| v.as_u64()).sum::<u64>());
        assert_eq!(sum("draft_lengths"), s["target_passes"].as_u64().unwrap_or(0), "{s}");
        assert_eq!(sum("pass_tokens"), s["target_passes"].as_u64().unwrap_or(0), "{s}");
        assert_eq!(sum("accepted_lengths"), s["draft_rounds"].as_u64().unwrap_or(0), "{s}");
    }
    assert!(plain.get("speculative").is_none(), "plain decoding reports no speculative counts");
}

#[test]
fn serve_refuses_settings_it_cannot_honour_before_listening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = tiny_model(dir.path());
    let m = m.to_str().expect("p");
    // Too little KV memory for one block: named, before any socket is opened.
    let o = strata(&["serve", "-m", m, "--port", "0", "--kv-memory", "1KiB"]);
    assert_clean_failure(&o, "--kv-memory 1KiB");
    assert!(stderr(&o).contains("KV pool needs at least one block"), "{}", stderr(&o));
    // A step that cannot hold a row for every sequence.
    let o = strata(&["serve", "-m", m, "--port", "0", "--max-seqs", "64", "--step-tokens", "64"]);
    assert_clean_failure(&o, "--step-tokens 64 --max-seqs 64");
    assert!(stderr(&o).contains("more rows (64) than sequences (64)"), "{}", stderr(&o));
    // `run`'s offload flags: streamed layers need a GPU, and --device cpu uses none.
    let o = strata(&["serve", "-m", m, "--port", "0", "--kv-memory", "16MiB", "--device", "cpu", "--stream"]);
    assert_clean_failure(&o, "--device cpu --stream");
    assert!(stderr(&o).contains("need a GPU"), "{}", stderr(&o));
    let o = strata(&["serve", "-m", m, "--host", "not an address", "--port", "0"]);
    assert_clean_failure(&o, "--host");
    assert!(stderr(&o).contains("not an address to listen on"), "{}", stderr(&o));
}

/// The expert flags on a dense model: a documented no-op that the plan notes (llama.cpp ignores
/// them silently); contradictory or unitless values are usage errors.
#[test]
fn expert_flags_on_a_dense_model_are_noted_not_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = tiny_model(dir.path());
    let m = m.to_str().expect("p");
    let plan = |extra: &[&str]| {
        let mut args = vec!["plan", "-m", m, "--device", "cpu", "--gpu-memory", "1GiB"];
        args.extend_from_slice(extra);
        strata(&args)
    };
    let o = plan(&["--cpu-moe", "--expert-cache", "256MiB"]);
    let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
    assert!(o.status.success(), "{out}");
    assert!(out.contains("--cpu-moe --expert-cache 256.0 MiB: the model has no experts"), "{out}");
    let o = plan(&["--n-cpu-moe", "1"]);
    let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
    assert!(o.status.success() && out.contains("--n-cpu-moe 1: the model has no experts"), "{out}");
    let o = plan(&["--cpu-moe", "--n-cpu-moe", "2"]);
    assert_eq!(o.status.code(), Some(2), "a usage error: {}", stderr(&o));
    let o = plan(&["--expert-cache", "12"]);
    assert_clean_failure(&o, "--expert-cache 12");
    assert!(stderr(&o).contains("--expert-cache"), "{}", stderr(&o));
}
