//! The planner for mixture-of-experts models: expert placements chosen for budgets, the flags
//! (`--cpu-moe`, `--n-cpu-moe N`, `--expert-cache SIZE`) honoured, the time arithmetic of CPU
//! experts and the expert cache, and dense models untouched by the expert flags.

use proptest::prelude::*;
use strata_runtime::plan::{
    CpuExperts, ExpertPlacement, ExpertPolicy, ExpertSpec, LayerSpec, Placement, Plan, PlanRequest, Policy, Speeds,
    plan,
};

use crate::support::{GIB, MIB, config, measured, ok, with};

/// Bytes of one Qwen3-30B-A3B expert in Q4_K: gate, up and down of 2048 × 768 at 4.5 bits.
const EXPERT: u64 = 3 * 2048 * 768 * 9 / 16;
/// Its attention part and router (Q 2048×4096, K and V 2048×512, O 4096×2048, router
/// 2048×128) at 4.5 bits.
const ATTENTION: u64 = (2048 * 4096 * 2 + 2048 * 512 * 2 + 2048 * 128) * 9 / 16;

/// A Qwen3-30B-A3B-like model: 48 layers of 128 experts, 8 routed per token, a 4096-token
/// f16 KV cache (4 KV heads of 128).
fn qwen3_30b() -> PlanRequest {
    let experts = ExpertSpec {
        bytes: 128 * EXPERT,
        n_expert: 128,
        n_expert_used: 8,
        bytes_per_expert: EXPERT,
        flops_per_token: 2 * 3 * 2048 * 768,
    };
    let layer = LayerSpec {
        weight_bytes: ATTENTION + experts.bytes,
        kv_bytes: 2 * 4 * 128 * 2 * 4096,
        flops_per_token: 2 * (2048 * 4096 * 2 + 2048 * 512 * 2 + 2048 * 128),
        experts: Some(experts),
    };
    PlanRequest {
        layers: vec![layer; 48],
        head_bytes: 151_936 * 2048 * 9 / 16,
        embedding_bytes: 151_936 * 2048 * 9 / 16,
        scratch_bytes: 64 * MIB,
        context_overhead_bytes: 300 * MIB,
        gpu_budget: Some(8 * GIB),
        host_available: 64 * GIB,
        host_margin: 2 * GIB,
        pinned_budget: 32 * GIB,
        speeds: measured(),
        ..PlanRequest::default()
    }
}

fn experts(p: &Plan) -> Vec<(Placement, ExpertPlacement, usize)> {
    p.layers
        .iter()
        .map(|l| {
            let e = l.experts.expect("a MoE layer has an expert plan");
            (l.placement, e.placement, e.cached)
        })
        .collect()
}

fn decode(p: &Plan) -> f64 {
    p.predicted.decode_tokens_per_second
}

/// Layers whose experts stay with them: `--n-cpu-moe 0` (no layer's experts on the CPU).
fn with_their_layers(req: &PlanRequest) -> PlanRequest {
    with(req, |r| r.experts = ExpertPolicy { cpu: CpuExperts::First(0), cache_bytes: None })
}

#[test]
fn a_model_that_fits_keeps_its_experts_resident() {
    let p = ok(&with(&qwen3_30b(), |r| r.gpu_budget = Some(40 * GIB)));
    assert_eq!(p.counts(), (48, 0, 0), "{}", p.render_table());
    assert!(experts(&p).iter().all(|e| e.1 == ExpertPlacement::Resident), "{}", p.render_table());
    let x = p.experts.as_ref().expect("summary");
    assert_eq!(x.resident_bytes, 48 * 128 * EXPERT);
    assert_eq!((x.cpu_bytes, x.cached_bytes, x.streamed_bytes), (0, 0, 0));
    assert_eq!(x.active_bytes_per_token, 48 * 8 * EXPERT);
}

/// At 8 GiB the 15 GiB of experts cannot all be resident: auto computes experts on the CPU,
/// caching as many as the spare memory holds, and beats keeping the experts with their layers
/// (whole layers streamed or on the CPU).
#[test]
fn eight_gib_puts_experts_on_the_cpu_and_caches_the_spare() {
    let req = qwen3_30b();
    let p = ok(&req);
    println!("{}\n{}", p.summary_line(), p.render_table());
    let e = experts(&p);
    assert!(e.iter().all(|(_, x, _)| matches!(x, ExpertPlacement::Cpu | ExpertPlacement::Cached)));
    assert!(e.iter().filter(|(pl, _, _)| *pl != Placement::Cpu).count() > 40, "{}", p.render_table());
    assert!(e.iter().any(|(_, x, _)| *x == ExpertPlacement::Cached), "{}", p.render_table());
    assert!(p.gpu_bytes_planned <= 8 * GIB);
    let whole = ok(&with_their_layers(&req));
    println!("{}", whole.summary_line());
    assert!(
        whole
            .layers
            .iter()
            .all(|l| l.experts.is_some_and(|x| x.placement != ExpertPlacement::Cpu) || l.placement == Placement::Cpu)
    );
    // With these speeds (a 20 GB/s CPU) whole MoE layers on the CPU are not slow either: they
    // read only the routed experts.
    assert!(decode(&p) >= 1.2 * decode(&whole), "{} vs {}", decode(&p), decode(&whole));
    // Auto tries every mode it could be told to use, so none of them is predicted faster.
    for experts in [
        ExpertPolicy { cpu: CpuExperts::All, cache_bytes: None },
        ExpertPolicy { cpu: CpuExperts::All, cache_bytes: Some(GIB) },
        ExpertPolicy { cpu: CpuExperts::First(24), cache_bytes: None },
    ] {
        let other = ok(&with(&req, |r| r.experts = experts));
        assert!(decode(&p) >= decode(&other), "{experts:?}: {} > auto's {}", decode(&other), decode(&p));
    }
}

/// `--cpu-moe` with room for everything else: decode time is the arithmetic of the module docs.
#[test]
fn cpu_moe_is_the_bandwidth_arithmetic() {
    let req = with(&qwen3_30b(), |r| {
        r.gpu_budget = Some(40 * GIB);
        r.experts = ExpertPolicy { cpu: CpuExperts::All, cache_bytes: None };
    });
    let p = ok(&req);
    assert_eq!(p.counts(), (48, 0, 0));
    assert!(experts(&p).iter().all(|e| e.1 == ExpertPlacement::Cpu && e.2 == 0));
    assert_eq!(p.host_bytes.cpu_experts, 48 * 128 * EXPERT);
    assert_eq!(p.gpu_bytes.resident_weights, 48 * ATTENTION);
    assert_eq!(p.gpu_bytes.expert_cache, 0);
    let s = measured();
    let per_layer = ATTENTION as f64 / s.gpu_bytes_per_s
        + s.layer_overhead_s
        + (8 * EXPERT) as f64 / s.cpu_bytes_per_s
        + s.cpu_handoff_s;
    let head = req.head_bytes as f64 / s.gpu_bytes_per_s + s.layer_overhead_s;
    let want = 48.0 * per_layer + head;
    let got = p.predicted.decode_seconds_per_token;
    assert!((got - want).abs() <= 1e-9 * want, "{got} vs {want}");
    assert_eq!(p.predicted.bound, "CPU");
    assert!(p.summary_line().contains("experts"), "{}", p.summary_line());
    assert!(p.render_table().contains("--cpu-moe"), "{}", p.render_table());
}

/// `--n-cpu-moe N`: the first N layers' experts on the CPU, the others with their layer.
#[test]
fn n_cpu_moe_moves_the_first_n_layers_experts() {
    let req = with(&qwen3_30b(), |r| {
        r.gpu_budget = Some(40 * GIB);
        r.experts = ExpertPolicy { cpu: CpuExperts::First(10), cache_bytes: None };
    });
    let p = ok(&req);
    for (i, (pl, x, _)) in experts(&p).into_iter().enumerate() {
        assert_eq!(pl, Placement::Resident);
        let want = if i < 10 { ExpertPlacement::Cpu } else { ExpertPlacement::Resident };
        assert_eq!(x, want, "layer {i}\n{}", p.render_table());
    }
    assert_eq!(p.host_bytes.cpu_experts, 10 * 128 * EXPERT);
    // More than the model has: every layer, and a note.
    let all = ok(&with(&req, |r| r.experts.cpu = CpuExperts::First(100)));
    assert!(experts(&all).iter().all(|e| e.1 == ExpertPlacement::Cpu));
    assert!(all.warnings.iter().any(|w| w.contains("--n-cpu-moe 100 is more than")), "{:?}", all.warnings);
}

/// `--expert-cache SIZE` shares SIZE among the layers whose experts are on the CPU; a bigger
/// cache never predicts a slower decode, and a full cache predicts a hit rate of 1.
#[test]
fn expert_cache_sizes() {
    let base = with(&qwen3_30b(), |r| r.gpu_budget = Some(40 * GIB));
    let at =
        |bytes: u64| ok(&with(&base, |r| r.experts = ExpertPolicy { cpu: CpuExperts::All, cache_bytes: Some(bytes) }));
    let two = at(2 * GIB);
    let per_layer = (2 * GIB / 48 / EXPERT) as usize;
    assert!(experts(&two).iter().all(|e| e.1 == ExpertPlacement::Cached && e.2 == per_layer));
    assert_eq!(two.gpu_bytes.expert_cache, 48 * per_layer as u64 * EXPERT);
    let x = two.experts.as_ref().expect("summary");
    assert!((x.predicted_hit_rate - per_layer as f64 / 128.0).abs() < 1e-12);
    assert!(two.render_table().contains(&format!("cached {per_layer}/128")), "{}", two.render_table());
    let mut last = 0.0;
    for bytes in [0, 256 * MIB, GIB, 4 * GIB, 16 * GIB] {
        let p = at(bytes);
        assert!(decode(&p) >= last, "{bytes}: {} < {last}", decode(&p));
        last = decode(&p);
    }
    let full = at(48 * 128 * EXPERT);
    assert!(experts(&full).iter().all(|e| e.2 == 128));
    assert_eq!(full.experts.as_ref().map(|x| x.predicted_hit_rate), Some(1.0));
    // Too small for one expert a layer: none cached, and the plan says why.
    let tiny = at(MIB);
    assert!(experts(&tiny).iter().all(|e| e.1 == ExpertPlacement::Cpu));
    assert!(tiny.warnings.iter().any(|w| w.contains("less than one expert")), "{:?}", tiny.warnings);
    // A cache that does not fit the budget is an error that names it.
    let err = plan(&with(&base, |r| {
        r.gpu_budget = Some(4 * GIB);
        r.policy = Policy::GpuLayers(48);
        r.experts = ExpertPolicy { cpu: CpuExperts::All, cache_bytes: Some(8 * GIB) };
    }))
    .expect_err("an 8 GiB cache in 4 GiB");
    assert!(err.to_string().contains("GPU expert caches"), "{err}");
}

/// Without a GPU everything is on the CPU; the expert flags say they changed nothing.
#[test]
fn no_gpu_runs_every_expert_on_the_cpu() {
    let req = with(&qwen3_30b(), |r| {
        r.gpu_budget = None;
        r.experts.cpu = CpuExperts::All;
    });
    let p = ok(&req);
    assert_eq!(p.counts(), (0, 0, 48));
    assert!(experts(&p).iter().all(|e| e.1 == ExpertPlacement::Cpu));
    assert!(p.warnings.iter().any(|w| w.contains("no GPU, so every expert runs on the CPU")), "{:?}", p.warnings);
    // Decode reads the attention part and the routed experts, not every expert.
    let s = measured();
    let want = 48.0 * (ATTENTION + 8 * EXPERT) as f64 / s.cpu_bytes_per_s + req.head_bytes as f64 / s.cpu_bytes_per_s;
    let got = p.predicted.decode_seconds_per_token;
    assert!((got - want).abs() <= 1e-9 * want, "{got} vs {want}");
}

/// Prefill of a batch touches nearly every expert (512 tokens × 8 of 128), so streaming whole
/// layers (experts computed on the GPU) pays for prefill where CPU experts pay for decode.
#[test]
fn prefill_prefers_streamed_experts_and_decode_cpu_experts() {
    let req = with(&qwen3_30b(), |r| r.experts = ExpertPolicy { cpu: CpuExperts::All, cache_bytes: None });
    let cpu = ok(&req);
    let streamed = ok(&with(&with_their_layers(&req), |r| r.policy = Policy::AllStreamed));
    assert!(streamed.layers.iter().all(|l| l.experts.is_some_and(|x| x.placement != ExpertPlacement::Cpu)));
    let pf = |p: &Plan| p.predicted.prefill_tokens_per_second;
    assert!(pf(&streamed) > 4.0 * pf(&cpu), "prefill {} vs {}", pf(&streamed), pf(&cpu));
    assert!(decode(&cpu) > 2.0 * decode(&streamed), "decode {} vs {}", decode(&cpu), decode(&streamed));
}

/// A dense model plans exactly as before whatever the expert flags say, and says they did
/// nothing.
#[test]
fn expert_flags_on_a_dense_model_change_nothing_but_a_note() {
    let dense =
        LayerSpec { weight_bytes: 119_144_448, kv_bytes: 32 * MIB, flops_per_token: 2 * 202_383_360, experts: None };
    let req = PlanRequest {
        layers: vec![dense; 32],
        head_bytes: 107_520_000,
        gpu_budget: Some(2 * GIB),
        host_available: 24 * GIB,
        pinned_budget: 8 * GIB,
        speeds: measured(),
        ..PlanRequest::default()
    };
    let p = ok(&req);
    assert!(p.experts.is_none());
    assert!(p.layers.iter().all(|l| l.experts.is_none()));
    assert!(!p.render_table().contains("experts"), "{}", p.render_table());
    for experts in [
        ExpertPolicy { cpu: CpuExperts::All, cache_bytes: None },
        ExpertPolicy { cpu: CpuExperts::First(3), cache_bytes: Some(GIB) },
    ] {
        let q = ok(&with(&req, |r| r.experts = experts));
        assert_eq!(q.layers, p.layers);
        assert_eq!(q.predicted, p.predicted);
        assert_eq!(q.gpu_bytes, p.gpu_bytes);
        assert_eq!(q.warnings[..p.warnings.len()], p.warnings[..]);
        assert!(q.warnings.last().is_some_and(|w| w.contains("the model has no experts")), "{:?}", q.warnings);
    }
}

#[test]
fn json_round_trips_the_expert_fields() {
    let p = ok(&qwen3_30b());
    let v = serde_json::to_value(&p).unwrap();
    assert!(v["experts"]["cpu_bytes"].is_u64(), "{v}");
    assert!(v["layers"][0]["experts"]["placement"].is_string(), "{v}");
    let back: Plan = serde_json::from_value(v).unwrap();
    assert_eq!(back, p);
    // A request written before experts existed still reads.
    let mut old = serde_json::to_value(with(&qwen3_30b(), |r| r.layers[0].experts = None)).unwrap();
    old.as_object_mut().unwrap().remove("experts");
    old["layers"][0].as_object_mut().unwrap().remove("experts");
    let req: PlanRequest = serde_json::from_value(old).unwrap();
    assert_eq!(req.experts, ExpertPolicy::default());
}

prop_compose! {
    fn any_moe_request()(
        layers in 1usize..12,
        n_expert in 1usize..64,
        used in 1usize..8,
        expert in 1u64..8 * MIB,
        attention in 1u64..64 * MIB,
        budget in 0u64..4 * GIB,
        cpu in prop_oneof![Just(CpuExperts::Auto), Just(CpuExperts::All), (0usize..14).prop_map(CpuExperts::First)],
        cache in proptest::option::of(0u64..2 * GIB),
    ) -> PlanRequest {
        let e = ExpertSpec {
            bytes: n_expert as u64 * expert,
            n_expert,
            n_expert_used: used.min(n_expert),
            bytes_per_expert: expert,
            flops_per_token: 2 * expert,
        };
        let l = LayerSpec { weight_bytes: attention + e.bytes, kv_bytes: MIB, flops_per_token: 2 * attention, experts: Some(e) };
        PlanRequest {
            layers: vec![l; layers],
            head_bytes: 16 * MIB,
            gpu_budget: Some(budget),
            host_available: 64 * GIB,
            pinned_budget: 16 * GIB,
            speeds: measured(),
            experts: ExpertPolicy { cpu, cache_bytes: cache },
            ..PlanRequest::default()
        }
    }
}

proptest! {
    #![proptest_config(config(64))]

    /// Budgets kept, every expert byte accounted once, and in `auto` more GPU memory never
    /// predicts a slower decode.
    #[test]
    fn moe_plans_keep_their_promises(req in any_moe_request()) {
        let p = plan(&req).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(p.gpu_bytes_planned <= req.gpu_budget.unwrap_or(0));
        let x = p.experts.clone().expect("summary");
        let all: u64 = req.layers.iter().filter_map(|l| l.experts).map(|e| e.bytes).sum();
        prop_assert_eq!(x.resident_bytes + x.streamed_bytes + x.cpu_bytes, all);
        prop_assert!(x.cached_bytes <= x.cpu_bytes);
        prop_assert_eq!(p.gpu_bytes.expert_cache, x.cached_bytes);
        if req.experts.cpu == CpuExperts::Auto && req.experts.cache_bytes.is_none() {
            let more = plan(&with(&req, |r| r.gpu_budget = r.gpu_budget.map(|b| b * 2 + GIB)))
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(decode(&more) >= decode(&p) * (1.0 - 1e-12));
        }
    }
}

/// A model whose attention parts are as large as its experts (16 layers of 256 MiB attention
/// and 8 experts of 32 MiB, 2 routed), on a budget that holds every attention part and two
/// slots of one layer's experts but not the whole layers, with a slow CPU: `auto` keeps the
/// attention parts resident and streams the experts through expert-sized slots, which copies
/// less per token than streaming whole layers through whole-layer slots, and beats experts on
/// the CPU. The plan shows it and counts the slots.
#[test]
fn auto_streams_the_experts_of_resident_layers_when_only_attention_fits() {
    const ATT: u64 = 256 * MIB;
    const EXP: u64 = 32 * MIB;
    const KV: u64 = 16 * MIB;
    let e =
        ExpertSpec { bytes: 8 * EXP, n_expert: 8, n_expert_used: 2, bytes_per_expert: EXP, flops_per_token: 2 * EXP };
    let layer = LayerSpec { weight_bytes: ATT + e.bytes, kv_bytes: KV, flops_per_token: 2 * ATT, experts: Some(e) };
    let fixed = 300 * MIB + 64 * MIB + 64 * MIB;
    let req = PlanRequest {
        layers: vec![layer; 16],
        head_bytes: 64 * MIB,
        embedding_bytes: 64 * MIB,
        scratch_bytes: 64 * MIB,
        context_overhead_bytes: 300 * MIB,
        gpu_budget: Some(fixed + 16 * (ATT + KV) + 2 * 8 * EXP + 16 * MIB),
        host_available: 64 * GIB,
        host_margin: 2 * GIB,
        pinned_budget: 32 * GIB,
        speeds: Speeds { cpu_bytes_per_s: 1e9, cpu_flops: 10e9, ..measured() },
        ..PlanRequest::default()
    };
    let p = ok(&req);
    println!("{}\n{}", p.summary_line(), p.render_table());
    assert_eq!(p.counts(), (16, 0, 0), "{}", p.render_table());
    assert!(experts(&p).iter().all(|x| x.1 == ExpertPlacement::Streamed), "{}", p.render_table());
    assert_eq!(p.gpu_bytes.resident_weights, 16 * ATT);
    assert_eq!((p.slots, p.gpu_bytes.slots), (2, 2 * 8 * EXP), "two slots of one layer's experts");
    let x = p.experts.as_ref().expect("summary");
    assert_eq!((x.streamed_bytes, x.resident_bytes, x.cpu_bytes), (16 * 8 * EXP, 0, 0));
    assert!(p.gpu_bytes_planned <= req.gpu_budget.unwrap_or(0));
    // Decode is the copy of every layer's experts: PCIe bound, at most that plus the GPU time.
    let s = measured();
    let copy = (16 * 8 * EXP) as f64 / s.h2d_bytes_per_s;
    let got = p.predicted.decode_seconds_per_token;
    assert!(got >= copy && got <= 1.2 * copy, "{got} vs a copy of {copy}");
    assert_eq!(p.predicted.bound, "PCIe transfer");
    assert!(p.render_table().contains("streamed"), "{}", p.render_table());
    assert!(p.summary_line().contains("experts of 16 resident layers streamed"), "{}", p.summary_line());
    assert!(p.summary_line().contains("2 slots"), "{}", p.summary_line());
    // Each alternative it was chosen over predicts a slower decode.
    let whole = ok(&with(&req, |r| r.experts.cpu = CpuExperts::First(0)));
    assert!(whole.layers.iter().all(|l| l.experts.is_some_and(|x| x.placement != ExpertPlacement::Cpu)));
    assert!(decode(&p) > decode(&whole), "{} vs whole layers' {}", decode(&p), decode(&whole));
    let cpu = ok(&with(&req, |r| r.experts.cpu = CpuExperts::All));
    assert!(decode(&p) > 2.0 * decode(&cpu), "{} vs CPU experts' {}", decode(&p), decode(&cpu));
}

/// At 14 GiB most of Qwen3-30B-A3B's 15 GiB of experts fit beside the attention parts, but not
/// all: `auto` keeps most layers whole and resident and sends only the first layers' experts to
/// the CPU
/// (what `--n-cpu-moe k` asks), which reads fewer expert bytes on the CPU per token than any
/// cache of 1, 2, 4, ... experts per layer (64 of 128 is the largest that fits) and hands off
/// fewer layers. The plan names the mode, and `--n-cpu-moe k` plans the same decode.
#[test]
fn auto_mixes_whole_resident_layers_with_cpu_experts_when_most_fit() {
    let req = with(&qwen3_30b(), |r| r.gpu_budget = Some(14 * GIB));
    let p = ok(&req);
    println!("{}\n{}", p.summary_line(), p.render_table());
    let e = experts(&p);
    let k = e.iter().take_while(|x| x.1 == ExpertPlacement::Cpu).count();
    assert!(k > 0 && k < 24, "k = {k}\n{}", p.render_table());
    // The rest: whole layers, resident with their experts (most of them), or whole cpu layers.
    let whole = (Placement::Resident, ExpertPlacement::Resident, 0);
    assert!(
        e[k..].iter().all(|x| x == &whole || x == &(Placement::Cpu, ExpertPlacement::Cpu, 0)),
        "{}",
        p.render_table()
    );
    assert!(e[k..].iter().filter(|x| **x == whole).count() >= 36, "{}", p.render_table());
    assert!(e[..k].iter().all(|x| x.0 == Placement::Resident && x.2 == 0), "{}", p.render_table());
    let x = p.experts.as_ref().expect("summary");
    assert_eq!(x.policy, format!("auto (as --n-cpu-moe {k})"));
    let on_cpu = e.iter().filter(|x| x.1 == ExpertPlacement::Cpu).count() as u64;
    assert_eq!(x.cpu_bytes, on_cpu * 128 * EXPERT, "the first {k} layers' experts and the cpu layers'");
    assert!(p.render_table().contains(&format!("auto (as --n-cpu-moe {k})")), "{}", p.render_table());
    let same = ok(&with(&req, |r| r.experts.cpu = CpuExperts::First(k)));
    assert!((decode(&same) - decode(&p)).abs() <= 1e-9 * decode(&p), "{} vs {}", decode(&same), decode(&p));
    // Faster than every pure mode: whole layers, every layer's experts on the CPU with or
    // without a cache.
    for experts in [
        ExpertPolicy { cpu: CpuExperts::First(0), cache_bytes: None },
        ExpertPolicy { cpu: CpuExperts::All, cache_bytes: None },
        ExpertPolicy { cpu: CpuExperts::All, cache_bytes: Some(4 * GIB) },
        ExpertPolicy { cpu: CpuExperts::All, cache_bytes: Some(8 * GIB) },
    ] {
        let other = ok(&with(&req, |r| r.experts = experts));
        assert!(decode(&p) > decode(&other), "{experts:?}: {} >= auto's {}", decode(&other), decode(&p));
    }
}
