//! The prefill placement: prompt passes of at least a threshold stream the layers decode
//! computes on the CPU; decode keeps the hybrid split.

use strata_runtime::plan::{LayerSpec, Placement, Plan, PlanRequest, Policy, PrefillStream, Rest};

use crate::support::{GIB, MIB, measured, ok, with};

/// A Llama-2-70B-like model in Q4_0 (80 layers of 8192 wide, 28672 FFN, 8 KV heads: 481 MB a
/// layer) at --context 4096, on a 24 GiB card behind a 25 GB/s bus: the example.
fn seventy_b() -> PlanRequest {
    let params: u64 = 2 * 8192 * 8192 + 2 * 8192 * 1024 + 3 * 8192 * 28672;
    let layer = LayerSpec {
        weight_bytes: params / 32 * 18 + 2 * 8192 * 4,
        kv_bytes: 2 * 4096 * 1024 * 2,
        flops_per_token: 2 * params,
        experts: None,
    };
    PlanRequest {
        layers: vec![layer; 80],
        head_bytes: 8192 * 32000 / 32 * 18,
        embedding_bytes: 8192 * 32000 / 32 * 18,
        scratch_bytes: 256 * MIB,
        context_overhead_bytes: 256 * MIB,
        gpu_budget: Some(24 * GIB),
        host_available: 64 * GIB,
        host_margin: GIB,
        pinned_budget: 32 * GIB,
        speeds: measured(),
        policy: Policy::Auto,
        rest: Rest::Auto,
        prefill_tokens: 512,
        context: 4096,
        ..PlanRequest::default()
    }
}

fn placements(p: &Plan) -> Vec<Placement> {
    p.layers.iter().map(|l| l.placement).collect()
}

#[test]
fn a_70b_streams_its_cpu_layers_in_prefill_and_keeps_them_on_the_cpu_in_decode() {
    let req = seventy_b();
    let p = ok(&req);
    let (resident, streamed, cpu) = p.counts();
    assert!(cpu > 0 && resident > 0, "{}", p.render_table());
    let pf = p.prefill_placement.as_ref().unwrap_or_else(|| panic!("no prefill placement\n{}", p.render_table()));
    // The same resident layers; every other layer streamed, the decode cpu layers included.
    for (d, f) in placements(&p).iter().zip(&pf.placements) {
        let want = if *d == Placement::Resident { Placement::Resident } else { Placement::Streamed };
        assert_eq!(*f, want, "{:?}", pf.placements);
    }
    assert_eq!(pf.cpu_layers_streamed, cpu);
    assert_eq!(pf.threshold_from, "auto");
    assert!(pf.min_tokens >= 2 && pf.min_tokens <= req.prefill_tokens, "{}", pf.min_tokens);
    // The prompt rate is the prefill placement's, far above the decode placement's.
    assert_eq!(p.predicted.prefill_tokens_per_second, pf.tokens_per_second);
    assert!(
        pf.tokens_per_second > 5.0 * pf.decode_placement_tokens_per_second,
        "{} vs {}\n{}",
        pf.tokens_per_second,
        pf.decode_placement_tokens_per_second,
        p.render_table()
    );
    // Memory: a packed copy of the cpu layers in (pinned) host memory, one layer's KV cache and
    // any slot growth on the GPU, all within the budgets.
    let cpu_bytes: u64 = p.layers.iter().filter(|l| l.placement == Placement::Cpu).map(|l| l.weight_bytes).sum();
    assert_eq!(pf.extra_host_bytes, cpu_bytes);
    assert_eq!(p.host_bytes.prefill_weights, cpu_bytes);
    assert!(pf.pinned);
    let slot_growth = (pf.slots as u64 * pf.slot_bytes).saturating_sub(p.slots as u64 * p.slot_bytes);
    assert_eq!(pf.extra_gpu_bytes, slot_growth + req.layers[0].kv_bytes);
    assert_eq!(p.gpu_bytes.prefill_extra, pf.extra_gpu_bytes);
    assert!(p.gpu_bytes_planned <= p.gpu_budget_bytes && p.gpu_bytes_planned == p.gpu_bytes.total());
    // The advice to stream for prefill is gone: the plan already does.
    assert!(!p.warnings.iter().any(|w| w.contains("prefill would be faster")), "{:?}", p.warnings);
    // Both placements in the table and the JSON.
    let table = p.render_table();
    assert!(table.contains(&format!("prefill      passes of {}+ tokens (auto)", pf.min_tokens)), "{table}");
    assert!(
        table.contains(&format!("decode       shorter passes: {resident} resident, {streamed} streamed, {cpu} cpu"))
    );
    let v = serde_json::to_value(&p).unwrap();
    assert_eq!(v["prefill_placement"]["min_tokens"].as_u64(), Some(pf.min_tokens as u64));
    assert_eq!(v["prefill_placement"]["cpu_layers_streamed"].as_u64(), Some(cpu as u64));

    // Off: the decode placement for every pass, the same decode, and the advice is back.
    let off = ok(&with(&req, |r| r.prefill_stream = PrefillStream::Off));
    assert_eq!(off.prefill_placement, None);
    assert_eq!(placements(&off), placements(&p));
    assert_eq!(off.predicted.decode_tokens_per_second, p.predicted.decode_tokens_per_second);
    assert_eq!(off.predicted.prefill_tokens_per_second, pf.decode_placement_tokens_per_second);
    assert_eq!((off.gpu_bytes.prefill_extra, off.host_bytes.prefill_weights), (0, 0));
    assert!(off.warnings.iter().any(|w| w.contains("prefill would be faster")), "{:?}", off.warnings);
}

/// The automatic threshold is where the time model's two passes cross: at `min_tokens` the
/// streamed pass is faster, one token less it is not.
#[test]
fn the_automatic_threshold_is_where_streaming_starts_to_pay() {
    let req = seventy_b();
    let m = ok(&req).prefill_placement.expect("a prefill placement").min_tokens;
    let at = |t: usize| ok(&with(&req, |r| r.prefill_tokens = t));
    let p = at(m);
    let pf = p.prefill_placement.as_ref().expect("the same placement at another batch");
    assert_eq!(pf.min_tokens, m, "the threshold does not depend on the prediction's batch");
    assert!(pf.tokens_per_second > pf.decode_placement_tokens_per_second);
    assert_eq!(p.predicted.prefill_tokens_per_second, pf.tokens_per_second);
    if m > 2 {
        let below = at(m - 1);
        let pf = below.prefill_placement.as_ref().expect("placement");
        assert!(pf.tokens_per_second <= pf.decode_placement_tokens_per_second, "{m}");
        // A pass below the threshold uses the decode placement.
        assert_eq!(below.predicted.prefill_tokens_per_second, pf.decode_placement_tokens_per_second);
    }
    // A slower bus moves the threshold up (each copy must serve more tokens).
    let slow = ok(&with(&req, |r| r.speeds.h2d_bytes_per_s = 8e9));
    if let Some(s) = slow.prefill_placement {
        assert!(s.min_tokens >= m, "{} < {m}", s.min_tokens);
    }
}

#[test]
fn the_flag_sets_the_threshold_and_off_disables_it() {
    let req = seventy_b();
    let p = ok(&with(&req, |r| {
        r.prefill_stream = PrefillStream::MinTokens(600);
    }));
    let pf = p.prefill_placement.as_ref().expect("placement");
    assert_eq!((pf.min_tokens, pf.threshold_from.as_str()), (600, "--prefill-stream-min"));
    // A 512-token batch is below it: the prompt runs with the decode placement.
    assert_eq!(p.predicted.prefill_tokens_per_second, pf.decode_placement_tokens_per_second);
    let low = ok(&with(&req, |r| r.prefill_stream = PrefillStream::MinTokens(32)));
    assert_eq!(low.prefill_placement.as_ref().map(|p| p.min_tokens), Some(32));
    assert!(low.predicted.prefill_tokens_per_second > p.predicted.prefill_tokens_per_second);
    // Plans with no cpu layer beside the GPU have nothing to stream in prefill.
    for r in [
        with(&req, |r| r.gpu_budget = None),
        with(&req, |r| r.policy = Policy::AllStreamed),
        with(&req, |r| r.gpu_budget = Some(u64::MAX)),
    ] {
        let p = ok(&r);
        assert_eq!(p.counts().2 * usize::from(p.head_on_gpu), 0, "{}", p.render_table());
        assert_eq!(p.prefill_placement, None, "{}", p.render_table());
    }
}

#[test]
fn the_flag_parses_counts_auto_and_off_and_names_garbage() {
    assert_eq!("auto".parse::<PrefillStream>(), Ok(PrefillStream::Auto));
    assert_eq!("off".parse::<PrefillStream>(), Ok(PrefillStream::Off));
    assert_eq!("0".parse::<PrefillStream>(), Ok(PrefillStream::Off));
    assert_eq!("32".parse::<PrefillStream>(), Ok(PrefillStream::MinTokens(32)));
    for bad in ["", "-1", "3x", "1.5", "many"] {
        let e = bad.parse::<PrefillStream>().expect_err(bad);
        assert!(e.contains(&format!("`{bad}` is not a token count")) && e.contains("`off`"), "{e}");
    }
}

/// When the extra GPU memory does not fit, prompts run as decode does and the plan says why.
#[test]
fn no_room_for_the_prefill_placement_is_a_note_not_an_error() {
    let req = seventy_b();
    let p = ok(&req);
    // The decode plan's GPU use plus less than one layer's KV cache: no room for the scratch.
    let tight = with(&req, |r| r.gpu_budget = Some(p.gpu_bytes_planned - p.gpu_bytes.prefill_extra + MIB));
    let t = ok(&tight);
    assert_eq!(t.counts(), p.counts(), "the same decode plan\n{}", t.render_table());
    assert_eq!(t.prefill_placement, None, "{}", t.render_table());
    assert!(
        t.warnings.iter().any(|w| w.starts_with("prompt passes run the cpu layers on the CPU as decode does")
            && w.contains("more GPU memory")),
        "{:?}",
        t.warnings
    );
}
