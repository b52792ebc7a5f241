//! Host-to-device copy bandwidth from pinned, write-combined and pageable memory (and
//! device-to-host into pinned and pageable memory), 1 MiB to 1 GiB, timed with CUDA events:
//! the number the streaming runtime is held to (a good PCIe Gen5 host gives about 55 GB/s from
//! pinned memory). Also the device-to-device copy rate for scale. `--json PATH` writes the
//! table as JSON. Without a device it prints `skipped:` and exits 0.

use std::fmt::Write as _;

use strata_tensor::{GpuOptions, HostBuffer, HostMemory, PinnedKind};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let json_path = args.iter().position(|a| a == "--json").and_then(|i| args.get(i + 1)).cloned();
    let gpu = match strata_tensor::open_gpu(0, &GpuOptions { memory_cap: None, pinned_cap: Some(4 << 30) }) {
        Ok(g) => g,
        Err(e) => {
            println!("skipped: copy bandwidth: {e}");
            return;
        }
    };
    if let Err(e) = run(&gpu, json_path) {
        eprintln!("copy bandwidth failed: {e}");
        std::process::exit(1);
    }
}

fn run(gpu: &strata_tensor::Gpu, json_path: Option<String>) -> strata_tensor::Result<()> {
    println!("{}", gpu.info());
    let s = gpu.stream("copy")?;
    let sizes: Vec<usize> = [1usize, 4, 16, 64, 256, 1024].iter().map(|m| m << 20).collect();
    let max = *sizes.last().unwrap_or(&0);
    let mut dev = gpu.alloc(max, "copy target")?;
    let mut json = String::from("{\n  \"rows\": [\n");
    println!("{:<10} {:<14} {:<16} {:>9} {:>9}", "size", "direction", "host memory", "GB/s", "ms");
    let kinds =
        [("pinned", Some(PinnedKind::Normal)), ("write-combined", Some(PinnedKind::WriteCombined)), ("pageable", None)];
    for (label, kind) in kinds {
        let mut host = match kind {
            Some(k) => HostBuffer::alloc(Some(gpu), max, k, label)?,
            None => HostBuffer::pageable(max),
        };
        if kind.is_some() && host.memory() == HostMemory::Pageable {
            println!("{label}: pinning refused, skipped");
            continue;
        }
        host.as_mut_slice()?.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
        for &size in &sizes {
            let reps = if size >= 256 << 20 { 4 } else { 12 };
            let mut directions = vec!["host->device"];
            if kind != Some(PinnedKind::WriteCombined) {
                directions.push("device->host");
            }
            for dir in directions {
                let mut times = Vec::new();
                for i in 0..reps + 1 {
                    let start = s.record()?;
                    if dir == "host->device" {
                        host.copy_to_device(0..size, &mut dev, 0, &s)?;
                    } else {
                        host.copy_from_device(0..size, &dev, 0, &s)?;
                    }
                    let end = s.record()?;
                    let ms = start.elapsed_ms(&end)? as f64;
                    if i > 0 {
                        times.push(ms);
                    }
                }
                let ms = median(times);
                let gbs = size as f64 / (ms / 1e3) / 1e9;
                println!(
                    "{:<10} {:<14} {:<16} {:>9.1} {:>9.3}",
                    strata_tensor::fmt_bytes(size as u64),
                    dir,
                    label,
                    gbs,
                    ms
                );
                let _ = writeln!(
                    json,
                    "    {{\"bytes\": {size}, \"direction\": \"{dir}\", \"host\": \"{label}\", \"gb_per_s\": {gbs:.3}, \"ms\": {ms:.4}}},"
                );
            }
        }
    }
    // Device-to-device, counting bytes read plus written, for scale.
    let half = max / 2;
    let (a, mut b) = (gpu.alloc(half, "d2d a")?, gpu.alloc(half, "d2d b")?);
    let mut times = Vec::new();
    for i in 0..6 {
        let start = s.record()?;
        b.copy_from(0, &a, 0..half, &s)?;
        let end = s.record()?;
        if i > 0 {
            times.push(start.elapsed_ms(&end)? as f64);
        }
    }
    let d2d = 2.0 * half as f64 / (median(times) / 1e3) / 1e9;
    println!("device->device {} (read + write counted): {d2d:.0} GB/s", strata_tensor::fmt_bytes(half as u64));
    if json.ends_with(",\n") {
        json.truncate(json.len() - 2);
        json.push('\n');
    }
    let _ = write!(json, "  ],\n  \"device\": {:?},\n  \"d2d_gb_per_s\": {d2d:.1}\n}}\n", gpu.info().name);
    if let Some(p) = json_path {
        std::fs::write(&p, json)
            .map_err(|e| strata_tensor::Error::Driver { what: format!("writing {p}"), code: e.to_string() })?;
    }
    Ok(())
}
