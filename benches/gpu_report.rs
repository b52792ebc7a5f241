//! The GPU report run by scripts/gpu-check.sh: measures the device-to-device copy bandwidth,
//! then for every CUDA case checks the kernel against the CPU reference (max abs/rel error
//! under the op's named tolerance) and times it (median of 10 event-timed batches), and prints
//! one table: op, type, shape, max error, time, GB/s and GB/s as a fraction of the copy
//! bandwidth (both count bytes read plus bytes written), TFLOP/s where it computes.
//! `--json PATH` also writes the numbers as JSON. Exits 1 if any check failed.
//!
//! Without a device (or without `--features cuda`) it prints `skipped:` and exits 0.

#[cfg(feature = "cuda")]
#[path = "shared/gpu.rs"]
mod gpu;
#[path = "shared/ops.rs"]
mod ops;

#[cfg(feature = "cuda")]
fn main() {
    use std::fmt::Write as _;

    use strata_kernels::check::compare;

    let args: Vec<String> = std::env::args().collect();
    let json_path = args.iter().position(|a| a == "--json").and_then(|i| args.get(i + 1)).cloned();
    let filter = args.iter().skip(1).find(|a| !a.starts_with("--") && Some(*a) != json_path.as_ref()).cloned();
    let dev = match gpu::open() {
        Ok(d) => d,
        Err(why) => {
            println!("skipped: GPU report: {why}");
            return;
        }
    };
    let d2d = match dev.d2d_bandwidth(1 << 30, 10) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("cannot measure the copy bandwidth: {e}");
            std::process::exit(1);
        }
    };
    println!("device: {}", dev.name);
    println!("device-to-device copy: {:.0} GB/s (1 GiB, read + write counted, median of 10)", d2d / 1e9);
    let header = format!(
        "{:<18} {:<8} {:<24} {:>10} {:>10} {:>11} {:>9} {:>6} {:>8}  {}",
        "op", "type", "shape", "max abs", "max rel", "time us", "GB/s", "of cp", "TFLOP/s", "check"
    );
    println!("{header}");
    let mut rows = Vec::new();
    let mut json = String::from("{\n");
    let _ = writeln!(json, "  \"device\": {:?},\n  \"d2d_bytes_per_s\": {d2d:.0},\n  \"cases\": [", dev.name);
    let (mut failed, mut total) = (0, 0);
    for op in ops::cuda_cases() {
        if filter.as_ref().is_some_and(|f| !op.label().contains(f.as_str())) {
            continue;
        }
        total += 1;
        let inputs = op.inputs(7);
        let want = op.run_cpu(&inputs);
        let result = dev.prepare(op, &inputs, 512 << 20).and_then(|p| {
            let got = dev.run_once(&p)?;
            // Batches long enough (~2 ms) that launch gaps and event resolution stay small.
            let first = gpu::median(&mut dev.time(&p, 3, 5, 3)?);
            let per_batch = ((2e-3 / first.max(1e-7)) as usize).clamp(5, 2000);
            let secs = gpu::median(&mut dev.time(&p, 0, per_batch, 10)?);
            Ok((got, secs))
        });
        match result {
            Ok((got, secs)) => {
                let c = compare(&got.to_f64(), &want.to_f64(), op.tolerance());
                let gbs = op.bytes() as f64 / secs / 1e9;
                let tflops =
                    if op.flops() > 0 { format!("{:.2}", op.flops() as f64 / secs / 1e12) } else { "-".into() };
                let verdict = if c.passed() { "ok".to_string() } else { format!("FAILED: {c}") };
                failed += usize::from(!c.passed());
                println!(
                    "{:<18} {:<8} {:<24} {:>10.2e} {:>10.2e} {:>11.2} {:>9.1} {:>6.2} {:>8}  {}",
                    op.name(),
                    op.dtype(),
                    op.shape(),
                    c.max_abs,
                    c.max_rel,
                    secs * 1e6,
                    gbs,
                    gbs * 1e9 / d2d,
                    tflops,
                    verdict
                );
                let _ = writeln!(
                    json,
                    "    {{\"op\": {:?}, \"type\": {:?}, \"shape\": {:?}, \"max_abs_err\": {:e}, \"max_rel_err\": {:e}, \"tolerance\": {:?}, \"passed\": {}, \"seconds\": {:e}, \"bytes\": {}, \"flops\": {}, \"gb_per_s\": {:.3}, \"fraction_of_d2d\": {:.4}}},",
                    op.name(),
                    op.dtype(),
                    op.shape(),
                    c.max_abs,
                    c.max_rel,
                    op.tolerance().name,
                    c.passed(),
                    secs,
                    op.bytes(),
                    op.flops(),
                    gbs,
                    gbs * 1e9 / d2d
                );
                rows.push((op, secs));
            }
            Err(e) => {
                failed += 1;
                println!("{:<18} {:<8} {:<24} FAILED: {e}", op.name(), op.dtype(), op.shape());
            }
        }
    }
    // The prefill matmul must beat the same number of matvecs by far.
    for (op, secs) in &rows {
        if let ops::Op::Matmul { dt, rows: r, cols, tokens } = *op
            && let Some((_, mv)) = rows.iter().find(|(o, _)| *o == ops::Op::Matvec { dt, rows: r, cols })
        {
            println!(
                "matmul {dt} {r}x{cols}: T={tokens} in {:.1} us vs {tokens} matvecs {:.1} us: {:.1}x faster",
                secs * 1e6,
                mv * 1e6 * tokens as f64,
                mv * tokens as f64 / secs
            );
        }
    }
    if json.ends_with(",\n") {
        json.truncate(json.len() - 2);
        json.push('\n');
    }
    let _ = writeln!(json, "  ],\n  \"failed\": {failed}\n}}");
    if let Some(p) = json_path
        && let Err(e) = std::fs::write(&p, &json)
    {
        eprintln!("cannot write {p}: {e}");
    }
    println!("{total} cases, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}

#[cfg(not(feature = "cuda"))]
fn main() {
    let _ = ops::cuda_cases;
    println!("skipped: GPU report: built without cuda (rebuild with --features cuda)");
}
