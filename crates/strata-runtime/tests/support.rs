//! Helpers shared by the test modules.

use proptest::test_runner::Config as ProptestConfig;

/// `cases` proptest cases, or fewer when `STRATA_TEST_CASES` says so (scripts/gpu-check.sh and
/// slow machines cap it).
pub fn config(cases: u32) -> ProptestConfig {
    let cap = std::env::var("STRATA_TEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(u32::MAX);
    ProptestConfig { cases: cases.min(cap).max(1), failure_persistence: None, ..ProptestConfig::default() }
}
