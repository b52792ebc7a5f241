//! The memory accountant: reservations beyond the cap fail with the typed error and change
//! nothing; dropping returns the bytes; peak tracks the high-water mark.

use proptest::prelude::*;
use strata_tensor::{Error, MemoryBudget};

#[derive(Debug, Clone)]
enum Step {
    Alloc(u64),
    Free(usize),
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(prop_oneof![(0u64..600).prop_map(Step::Alloc), (0usize..16).prop_map(Step::Free)], 0..60)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn accountant_matches_a_model(cap in 0u64..2000, steps in steps()) {
        let budget = MemoryBudget::new("GPU 0", cap);
        let mut live = Vec::new();
        let (mut used, mut peak) = (0u64, 0u64);
        for step in steps {
            match step {
                Step::Alloc(n) => match budget.reserve(n, "test block") {
                    Ok(r) => {
                        prop_assert!(used + n <= cap, "reserved {n} with {used} of {cap} used");
                        used += n;
                        peak = peak.max(used);
                        live.push(r);
                    }
                    Err(Error::OutOfMemory { requested, cap: c, in_use, peak: p, .. }) => {
                        prop_assert!(used + n > cap, "refused {n} with {used} of {cap} used");
                        prop_assert_eq!((requested, c, in_use, p), (n, cap, used, peak));
                    }
                    Err(e) => prop_assert!(false, "unexpected error {e}"),
                },
                Step::Free(i) => {
                    if !live.is_empty() {
                        let r = live.remove(i % live.len());
                        used -= r.bytes();
                    }
                }
            }
            prop_assert_eq!(budget.used(), used);
            prop_assert_eq!(budget.peak(), peak);
            prop_assert_eq!(budget.available(), cap - used);
        }
        drop(live);
        prop_assert_eq!(budget.used(), 0, "every reservation returned its bytes");
    }
}

#[test]
fn out_of_memory_message_names_the_numbers_and_the_flag() {
    let b = MemoryBudget::new("GPU 0", 6 << 30);
    let _held = b.reserve((6 << 30) - (180 << 20), "layers 0-20").unwrap();
    let e = b.reserve(402 << 20, "layer 21 weights").unwrap_err();
    assert!(e.is_out_of_memory());
    let msg = e.to_string();
    for part in ["layer 21 weights needs 402.0 MiB", "180.0 MiB of the 6.00 GiB GPU 0 budget is free", "--gpu-memory"] {
        assert!(msg.contains(part), "`{msg}` lacks `{part}`");
    }
    assert_eq!(b.used(), (6 << 30) - (180 << 20), "a refused reservation changes nothing");
}

#[test]
fn overflowing_request_is_refused_not_wrapped() {
    let b = MemoryBudget::new("pinned host", u64::MAX);
    let _r = b.reserve(u64::MAX - 1, "most").unwrap();
    assert!(b.reserve(2, "more").unwrap_err().is_out_of_memory());
}
