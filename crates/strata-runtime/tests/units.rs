//! `parse_size`, `parse_rate`, `fmt_size`, `fmt_rate`: the examples users type, the errors they
//! get, and round trips through the printed form.

use proptest::prelude::*;
use strata_runtime::units::{UnitError, fmt_rate, fmt_size, parse_rate, parse_size};

use crate::support::config;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;

#[test]
fn sizes_people_type() {
    let cases: &[(&str, u64)] = &[
        ("24GiB", 24 * GIB),
        ("1.5 GiB", 3 * GIB / 2),
        ("512MiB", 512 * MIB),
        ("8GB", 8_000_000_000),
        ("100M", 100 * MIB),
        ("1048576B", 1_048_576),
        ("0", 0),
        ("  6gib  ", 6 * GIB),
        ("6g", 6 * GIB),
        ("6G", 6 * GIB),
        ("4k", 4 * KIB),
        ("4KB", 4_000),
        ("4 KiB", 4 * KIB),
        ("2T", 2 * TIB),
        ("2tb", 2_000_000_000_000),
        ("1.5TiB", 3 * TIB / 2),
        ("10B", 10),
        ("10 bytes", 10),
        ("+3MiB", 3 * MIB),
        (".5GiB", GIB / 2),
        ("2.B", 2),
        ("000", 0),
        ("0.0", 0),
        ("0.1KiB", 102), // 102.4 rounds down
        ("0.0009765625KiB", 1),
        ("18446744073709551615 bytes", u64::MAX),
        ("000000000000000000000000001GiB", GIB),
    ];
    for (text, want) in cases {
        assert_eq!(parse_size(text), Ok(*want), "parse_size({text:?})");
    }
}

#[test]
fn sizes_rejected_with_a_reason() {
    let is = |text: &str, pred: fn(&UnitError) -> bool| {
        let err = parse_size(text).expect_err(text);
        assert!(pred(&err), "parse_size({text:?}) gave {err:?}");
        let msg = err.to_string();
        assert!(!msg.is_empty() && (msg.contains("e.g.") || msg.contains("GiB") || msg.contains(text.trim())), "{msg}");
    };
    is("", |e| matches!(e, UnitError::Empty { .. }));
    is("   ", |e| matches!(e, UnitError::Empty { .. }));
    is("-1GiB", |e| matches!(e, UnitError::Negative { .. }));
    is("-0", |e| matches!(e, UnitError::Negative { .. }));
    is("nan", |e| matches!(e, UnitError::Malformed { .. }));
    is("NaN GiB", |e| matches!(e, UnitError::Malformed { .. }));
    is("inf", |e| matches!(e, UnitError::Malformed { .. }));
    is("GiB", |e| matches!(e, UnitError::Malformed { .. }));
    is("1.2.3GiB", |e| matches!(e, UnitError::Malformed { .. }));
    is(".", |e| matches!(e, UnitError::Malformed { .. }));
    is("1,5GiB", |e| matches!(e, UnitError::UnknownUnit { .. }));
    is("1e9", |e| matches!(e, UnitError::UnknownUnit { .. }));
    is("12 parsecs", |e| matches!(e, UnitError::UnknownUnit { .. }));
    is("5GiB/s", |e| matches!(e, UnitError::UnknownUnit { .. }));
    is("18446744073709551616B", |e| matches!(e, UnitError::Overflow { .. }));
    is("1048576", |e| matches!(e, UnitError::MissingUnit { .. }));
    is("1.5", |e| matches!(e, UnitError::MissingUnit { .. }));
    is("16777216TiB", |e| matches!(e, UnitError::Overflow { .. }));
    is("99999999999999999999999999999999999999999999999999GiB", |e| matches!(e, UnitError::Overflow { .. }));
    let msg = parse_size("12 parsecs").unwrap_err().to_string();
    assert!(msg.contains("`parsecs`") && msg.contains("GiB"), "{msg}");
    let msg = parse_size("-1GiB").unwrap_err().to_string();
    assert!(msg.contains("-1GiB") && msg.contains("negative"), "{msg}");
}

#[test]
fn rates_people_type() {
    let cases: &[(&str, f64)] = &[
        ("25GB/s", 25e9),
        ("12.5 GiB/s", 12.5 * GIB as f64),
        ("900MB/s", 900e6),
        ("900 mb/s", 900e6),
        ("25GB", 25e9),
        ("25 GB/sec", 25e9),
        ("1.5TB/s", 1.5e12),
        ("1000B/s", 1000.0),
        ("0.5B/s", 0.5),
    ];
    for (text, want) in cases {
        let got = parse_rate(text).unwrap_or_else(|e| panic!("parse_rate({text:?}): {e}"));
        assert!((got - want).abs() <= want * 1e-12, "parse_rate({text:?}) = {got}, want {want}");
    }
}

#[test]
fn rates_rejected_with_a_reason() {
    for (text, ok) in [
        ("", matches!(parse_rate(""), Err(UnitError::Empty { .. }))),
        ("/s", matches!(parse_rate("/s"), Err(UnitError::Empty { .. }) | Err(UnitError::Malformed { .. }))),
        ("0GB/s", matches!(parse_rate("0GB/s"), Err(UnitError::ZeroRate { .. }))),
        ("-5GB/s", matches!(parse_rate("-5GB/s"), Err(UnitError::Negative { .. }))),
        ("nan GB/s", matches!(parse_rate("nan GB/s"), Err(UnitError::Malformed { .. }))),
        ("5 furlongs/s", matches!(parse_rate("5 furlongs/s"), Err(UnitError::UnknownUnit { .. }))),
    ] {
        assert!(ok, "parse_rate({text:?}) = {:?}", parse_rate(text));
    }
    let huge = format!("{}TB/s", "9".repeat(400));
    assert!(matches!(parse_rate(&huge), Err(UnitError::Overflow { .. })));
    // `--h2d-bandwidth 25` is not 25 bytes per second: the error shows the forms to write.
    for text in ["25", "25/s", " 12.5 "] {
        let err = parse_rate(text).expect_err(text);
        assert!(matches!(err, UnitError::MissingUnit { .. }), "parse_rate({text:?}) gave {err:?}");
    }
    let msg = parse_rate("25").unwrap_err().to_string();
    assert_eq!(msg, "`25` has no unit: write one after the number, e.g. 25GB/s, 25MB/s or 25B/s (bytes per second)");
    let msg = parse_size("6").unwrap_err().to_string();
    assert!(msg.contains("6GiB") && msg.contains("6B (bytes)"), "{msg}");
    let msg = parse_rate("5 furlongs/s").unwrap_err().to_string();
    assert!(msg.contains("furlongs") && msg.contains("per second"), "{msg}");
}

#[test]
fn formats() {
    assert_eq!(fmt_size(0), "0 B");
    assert_eq!(fmt_size(1023), "1023 B");
    assert_eq!(fmt_size(1536), "1.5 KiB");
    assert_eq!(fmt_size(402 * MIB), "402.0 MiB");
    assert_eq!(fmt_size(3 * GIB / 2), "1.50 GiB");
    assert_eq!(fmt_size(2 * TIB), "2.00 TiB");
    assert_eq!(fmt_size(u64::MAX), "16777216.00 TiB");
    assert_eq!(fmt_rate(25e9), "25.0 GB/s");
    assert_eq!(fmt_rate(900e6), "900.0 MB/s");
    assert_eq!(fmt_rate(1.5e12), "1.5 TB/s");
    assert_eq!(fmt_rate(12.0), "12 B/s");
    assert_eq!(fmt_rate(f64::NAN), "NaN B/s");
}

/// Half a unit of the last printed digit: how far the printed form may be from the value.
fn size_rounding(bytes: u64) -> f64 {
    match bytes {
        b if b >= GIB => 0.005 * (if b >= TIB { TIB } else { GIB }) as f64,
        b if b >= KIB => 0.05 * (if b >= MIB { MIB } else { KIB }) as f64,
        _ => 0.0,
    }
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn size_round_trips_within_rounding(bytes in prop_oneof![0u64..4096, 0u64..(1 << 34), any::<u64>()]) {
        let text = fmt_size(bytes);
        let back = parse_size(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        let err = (back as f64 - bytes as f64).abs();
        // One byte for the parser's rounding; f64 relative slack for values near u64::MAX.
        prop_assert!(err <= size_rounding(bytes) + 1.0 + bytes as f64 * 1e-15, "{bytes} -> {text} -> {back}");
    }

    #[test]
    fn exact_sizes_parse_exactly(value in 0u64..(1 << 20), unit in 0usize..5, spaced in any::<bool>()) {
        let (name, scale) = [("B", 1u64), ("KiB", KIB), ("MiB", MIB), ("GiB", GIB), ("TiB", TIB)][unit];
        let text = format!("{value}{}{name}", if spaced { " " } else { "" });
        prop_assert_eq!(parse_size(&text), Ok(value * scale));
    }

    #[test]
    fn rate_round_trips_within_rounding(rate in prop_oneof![1.0f64..1e3, 1e3f64..1e13]) {
        let text = fmt_rate(rate);
        let back = parse_rate(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        let unit = [1e12, 1e9, 1e6, 1e3].into_iter().find(|u| rate >= *u).unwrap_or(1.0);
        let half_digit = if unit > 1.0 { 0.05 * unit } else { 0.5 };
        prop_assert!((back - rate).abs() <= half_digit * (1.0 + 1e-9), "{rate} -> {text} -> {back}");
    }

    #[test]
    fn parsers_never_panic(text in "\\PC{0,24}") {
        let _ = parse_size(&text);
        let _ = parse_rate(&text);
    }
}
