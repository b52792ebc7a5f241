//! Buffers, copies, streams and events on a real device (skipped without one), budgets on a
//! device, and the pageable fallback.

use strata_tensor::{Error, GpuOptions, HostBuffer, HostMemory, PinnedKind, Stream};

use crate::support::{gpu, skip};

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

#[test]
fn cross_stream_copies_through_pinned_and_pageable_memory() {
    let (gpu, _) = match gpu() {
        Ok(g) => g,
        Err(why) => return skip("memory::cross_stream_copies", &why),
    };
    let (copy, compute) = (gpu.stream("copy").unwrap(), gpu.stream("compute").unwrap());
    let n = (8 << 20) + 13;
    let data = pattern(n, 7);
    for kind in [PinnedKind::WriteCombined, PinnedKind::Normal] {
        let mut staging = HostBuffer::alloc(Some(gpu), n, kind, "staging").unwrap();
        staging.as_mut_slice().unwrap().copy_from_slice(&data);
        let mut dev = gpu.alloc(n, "device copy").unwrap();
        // Upload on the copy stream, then a device-to-device copy and the read-back on the
        // compute stream: the buffers' last-use tracking must order them.
        staging.copy_to_device(0..n, &mut dev, 0, &copy).unwrap();
        let mut dev2 = gpu.alloc(n, "second copy").unwrap();
        dev2.copy_from(0, &dev, 0..n, &compute).unwrap();
        let mut back = HostBuffer::alloc(Some(gpu), n, PinnedKind::Normal, "read-back").unwrap();
        back.copy_from_device(0..n, &dev2, 0, &compute).unwrap();
        // No synchronize: reading the pinned buffer waits for the copy that fills it.
        assert!(back.as_slice().unwrap() == &data[..], "{kind:?} round trip");
    }
    // Ranges and pageable memory.
    let mut dev = gpu.alloc(1000, "ranges").unwrap();
    dev.fill(0, &copy).unwrap();
    dev.upload(100, &data[..50], &copy).unwrap();
    let mut out = vec![1u8; 200];
    dev.download(50, &mut out, &compute).unwrap();
    assert!(out[..50].iter().all(|&b| b == 0) && out[50..100] == data[..50] && out[100..].iter().all(|&b| b == 0));
    assert!(dev.upload(990, &data[..20], &copy).is_err(), "a copy past the end is an error");
}

#[test]
fn device_budget_refuses_and_recovers() {
    let (g, _) = match gpu() {
        Ok(g) => g,
        Err(why) => return skip("memory::device_budget", &why),
    };
    let _ = g;
    let small =
        strata_tensor::open_gpu(0, &GpuOptions { memory_cap: Some(4 << 20), pinned_cap: Some(1 << 20) }).unwrap();
    assert_eq!(small.budget().cap(), 4 << 20);
    {
        let _first = small.alloc(3 << 20, "first block").unwrap();
        let Err(e) = small.alloc(2 << 20, "second block") else {
            panic!("2 MiB more must not fit a 4 MiB budget holding 3")
        };
        assert!(e.is_out_of_memory() && e.to_string().contains("second block needs 2.0 MiB"), "{e}");
        assert_eq!(small.budget().used(), 3 << 20, "the refused allocation left nothing behind");
    }
    assert_eq!(small.budget().used(), 0);
    let _b = small.alloc(4 << 20, "retry").unwrap();
    assert_eq!(small.budget().peak(), 4 << 20);
    // Over the pinned budget, staging falls back to pageable memory instead of failing.
    let h = HostBuffer::alloc(Some(&small), 2 << 20, PinnedKind::WriteCombined, "big staging").unwrap();
    assert_eq!(h.memory(), HostMemory::Pageable);
    // A real device refusal (far beyond the card) is the same typed error.
    let huge = strata_tensor::open_gpu(0, &GpuOptions { memory_cap: Some(u64::MAX), pinned_cap: None }).unwrap();
    match huge.alloc(usize::MAX / 2, "absurd block") {
        Err(Error::OutOfMemory { .. }) => {}
        other => panic!("expected OutOfMemory, got {:?}", other.map(|b| b.len())),
    }
}

#[test]
fn events_time_work_on_a_stream() {
    let (gpu, _) = match gpu() {
        Ok(g) => g,
        Err(why) => return skip("memory::events", &why),
    };
    let s = gpu.stream("timed").unwrap();
    let mut buf = gpu.alloc(64 << 20, "timed fill").unwrap();
    let start = s.record().unwrap();
    buf.fill(0xAB, &s).unwrap();
    let end = s.record().unwrap();
    let ms = start.elapsed_ms(&end).unwrap();
    assert!(ms > 0.0 && ms < 10_000.0, "elapsed {ms} ms");
    assert!(end.is_complete());
}

/// With STRATA_NO_PINNED=1 everything still works, on pageable memory: runs this test binary
/// again with the variable set (environment changes inside a multi-threaded test process
/// would race).
#[test]
fn no_pinned_fallback() {
    if std::env::var_os("STRATA_NO_PINNED_CHILD").is_some() {
        return no_pinned_child();
    }
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args(["--exact", "memory::no_pinned_fallback", "--nocapture"])
        .env("STRATA_NO_PINNED", "1")
        .env("STRATA_NO_PINNED_CHILD", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed:\n{text}");
    assert!(text.contains("1 passed"), "the child ran the test:\n{text}");
    if let Some(line) = text.lines().find(|l| l.starts_with("skipped:")) {
        println!("{line}");
    }
}

fn no_pinned_child() {
    assert!(strata_tensor::pinning_disabled());
    assert_eq!(HostBuffer::alloc(None, 10, PinnedKind::Normal, "x").unwrap().memory(), HostMemory::Pageable);
    let (gpu, stream) = match gpu() {
        Ok(g) => g,
        Err(why) => return skip("memory::no_pinned_fallback (GPU part)", &why),
    };
    let Stream::Gpu(s) = stream else { unreachable!("gpu() returns a GPU stream") };
    let data = pattern(1 << 20, 3);
    let mut h = HostBuffer::alloc(Some(gpu), data.len(), PinnedKind::WriteCombined, "staging").unwrap();
    assert_eq!(h.memory(), HostMemory::Pageable, "STRATA_NO_PINNED forces pageable memory");
    h.as_mut_slice().unwrap().copy_from_slice(&data);
    let mut d = gpu.alloc(data.len(), "dev").unwrap();
    h.copy_to_device(0..data.len(), &mut d, 0, s).unwrap();
    let mut back = HostBuffer::alloc(Some(gpu), data.len(), PinnedKind::Normal, "back").unwrap();
    back.copy_from_device(0..data.len(), &d, 0, s).unwrap();
    assert!(back.as_slice().unwrap() == &data[..]);
}

/// The `next` kernel set keeps freed device blocks for reuse (the session's temporaries are
/// allocated once, not once per op): a block of the same size comes back with nothing new
/// reserved, its new owner's stream is ordered after the previous owner's last user without the
/// host waiting at the free (the bytes read back are the new owner's, not the old owner's
/// late fill), and a request the budget refuses while blocks are kept empties the pool and
/// succeeds. It can fail: a freed block handed out while its old stream still writes it, kept
/// blocks that never go back under pressure (an out-of-memory error), or no reuse at all.
#[test]
fn pool_reuse_and_trim_next_cuda() {
    if let Err(why) = gpu() {
        return skip("memory::pool_reuse_and_trim_next_cuda", &why);
    }
    let options = GpuOptions { memory_cap: Some(16 << 20), pinned_cap: Some(1 << 20) };
    let g = strata_tensor::ops::with_gpu_kernels(strata_tensor::ops::GpuKernels::Next, || {
        strata_tensor::open_gpu(0, &options)
    })
    .unwrap();
    let (a, b) = (g.stream("old owner").unwrap(), g.stream("new owner").unwrap());
    let n = 6 << 20;
    let data = pattern(n, 3);
    {
        let mut d = g.alloc(n, "first owner").unwrap();
        d.upload(0, &data, &a).unwrap();
        d.fill(0xab, &a).unwrap(); // still queued on `a` when the buffer drops
    }
    assert_eq!(g.budget().used(), n as u64, "a freed block is kept and stays counted");
    {
        let mut d = g.alloc(n, "second owner").unwrap();
        assert_eq!(g.budget().used(), n as u64, "the kept block came back: nothing new reserved");
        d.upload(0, &data, &b).unwrap();
        let mut back = vec![0u8; n];
        d.download(0, &mut back, &b).unwrap();
        assert!(back == data, "the new owner's bytes, written after the old owner's fill");
    }
    // 12 MiB with 6 MiB kept on a 16 MiB budget: the pool gives its block back first.
    let _big = g.alloc(12 << 20, "larger block").unwrap();
    assert_eq!(g.budget().used(), 12 << 20, "the kept block went back to the driver");
}
