//! Sizes and rates as people type them on the command line (`--gpu-memory 6GiB`, `1.5 GiB`,
//! `8GB`, `25GB/s`) and as strata prints them (`1.50 GiB`, `25.0 GB/s`).
//!
//! Suffixes are case-insensitive. `KiB`, `MiB`, `GiB`, `TiB` are powers of 1024 and `KB`, `MB`,
//! `GB`, `TB` powers of 1000, as the IEC/SI standards and `nvidia-smi` use them. A bare letter
//! (`K`, `M`, `G`, `T`) is binary, like `docker --memory 6g`, `ulimit` or the JVM's `-Xmx`: for a
//! memory size that is what people mean. `B` or `bytes` means bytes. A number without a unit is
//! an error that shows the expected form (`--h2d-bandwidth 25` is not 25 bytes per second):
//! only a bare `0` is accepted as a size, since it is zero in every unit.
//!
//! Sizes are parsed with exact decimal arithmetic, so `1.5GiB` is exactly 1610612736 bytes; a
//! fraction of a byte is rounded to the nearest byte. Rates are `f64` bytes per second.

/// Why a size or rate could not be parsed. Each message quotes the input and shows a valid form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    /// Nothing (or only spaces) was given.
    #[error("empty {what}: expected a number with an optional unit, e.g. {example}")]
    Empty {
        /// What was being parsed: "size" or "rate".
        what: &'static str,
        /// A valid example of that kind.
        example: &'static str,
    },
    /// The text does not start with a plain decimal number (`nan`, `inf`, `1,5`, `1e9`, `abc`).
    #[error("`{input}` is not a {what}: expected a plain decimal number with an optional unit, e.g. {example}")]
    Malformed {
        /// The text as given (trimmed).
        input: String,
        /// What was being parsed: "size" or "rate".
        what: &'static str,
        /// A valid example of that kind.
        example: &'static str,
    },
    /// The number is followed by a unit strata does not know.
    #[error(
        "`{input}` has an unknown unit `{unit}`: use B, KiB, MiB, GiB, TiB (powers of 1024) or KB, MB, GB, TB \
         (powers of 1000){per_second}"
    )]
    UnknownUnit {
        /// The text as given (trimmed).
        input: String,
        /// The unit as given.
        unit: String,
        /// Extra text for a rate (" per second, e.g. 25GB/s"), empty for a size.
        per_second: &'static str,
    },
    /// A number without a unit (other than a size of `0`): `25` could mean 25 B/s or 25 GB/s.
    #[error("`{input}` has no unit: write one after the number, e.g. {examples}")]
    MissingUnit {
        /// The text as given (trimmed).
        input: String,
        /// The number with valid units, as examples.
        examples: String,
    },
    /// A minus sign: sizes and rates cannot be negative.
    #[error("`{input}` is negative: a {what} must be zero or more, e.g. {example}")]
    Negative {
        /// The text as given (trimmed).
        input: String,
        /// What was being parsed: "size" or "rate".
        what: &'static str,
        /// A valid example of that kind.
        example: &'static str,
    },
    /// The value does not fit (a size above 16 EiB, a rate that is not a finite number).
    #[error("`{input}` is too large for a {what} (at most {max})")]
    Overflow {
        /// The text as given (trimmed).
        input: String,
        /// What was being parsed: "size" or "rate".
        what: &'static str,
        /// The largest value, in words.
        max: &'static str,
    },
    /// A rate of zero would make every transfer take forever.
    #[error("`{input}` is a rate of zero: a rate must be more than 0 B/s, e.g. 25GB/s")]
    ZeroRate {
        /// The text as given (trimmed).
        input: String,
    },
}

const SIZE: &str = "size";
const SIZE_EXAMPLE: &str = "24GiB, 1.5 GiB, 512MiB, 8GB or 1048576B";
const RATE: &str = "rate";
const RATE_EXAMPLE: &str = "25GB/s, 12.5 GiB/s or 900MB/s";
const SIZE_MAX: &str = "16 EiB, 18446744073709551615 bytes";

/// Parses a byte size: `24GiB`, `1.5 GiB`, `512MiB`, `8GB` (8·10⁹), `100M` (100 MiB), `1048576B`.
///
/// # Errors
/// [`UnitError`] for an empty string, a malformed or negative number, a missing or unknown unit,
/// or a size above `u64::MAX` bytes.
pub fn parse_size(s: &str) -> Result<u64, UnitError> {
    let (number, unit) = split(s, SIZE, SIZE_EXAMPLE)?;
    if unit.is_empty() && number.chars().any(|c| c.is_ascii_digit() && c != '0') {
        return Err(UnitError::MissingUnit {
            input: s.trim().to_string(),
            examples: format!("{number}GiB, {number}MiB or {number}B (bytes)"),
        });
    }
    let multiplier = multiplier(unit).ok_or_else(|| UnitError::UnknownUnit {
        input: s.trim().to_string(),
        unit: unit.to_string(),
        per_second: "",
    })?;
    exact_bytes(number, multiplier).ok_or_else(|| UnitError::Overflow {
        input: s.trim().to_string(),
        what: SIZE,
        max: SIZE_MAX,
    })
}

/// Parses a transfer rate in bytes per second: `25GB/s`, `12.5 GiB/s`, `900MB/s` (the `/s` may be
/// left out or written `/sec`).
///
/// # Errors
/// [`UnitError`] for an empty string, a malformed or negative number, a missing or unknown unit, a
/// rate of zero, or one too large to be a finite `f64`.
pub fn parse_rate(s: &str) -> Result<f64, UnitError> {
    let trimmed = s.trim();
    let lower = trimmed.to_ascii_lowercase();
    let without_per_second = ["/sec", "/s"]
        .iter()
        .find_map(|suffix| lower.strip_suffix(suffix).map(|rest| &trimmed[..rest.len()]))
        .unwrap_or(trimmed);
    let (number, unit) = split(without_per_second, RATE, RATE_EXAMPLE)?;
    if unit.is_empty() {
        return Err(UnitError::MissingUnit {
            input: trimmed.to_string(),
            examples: format!("{number}GB/s, {number}MB/s or {number}B/s (bytes per second)"),
        });
    }
    let multiplier = multiplier(unit).ok_or_else(|| UnitError::UnknownUnit {
        input: trimmed.to_string(),
        unit: unit.to_string(),
        per_second: " per second, e.g. 25GB/s",
    })?;
    // `number` holds only digits and at most one dot, so this parse cannot see `nan` or `inf`.
    let value = number.parse::<f64>().unwrap_or(f64::INFINITY) * multiplier as f64;
    if !value.is_finite() {
        return Err(UnitError::Overflow { input: trimmed.to_string(), what: RATE, max: "a finite number" });
    }
    if value <= 0.0 {
        return Err(UnitError::ZeroRate { input: trimmed.to_string() });
    }
    Ok(value)
}

/// Formats a byte count with a binary unit: `512 B`, `1.5 KiB`, `402.0 MiB`, `1.50 GiB`, `2.00 TiB`.
/// One decimal below a GiB, two from there, like the budget messages of strata-tensor.
pub fn fmt_size(bytes: u64) -> String {
    let v = bytes as f64;
    match BINARY.iter().rev().find(|(_, scale, _)| v >= *scale as f64) {
        Some((name, scale, decimals)) => format!("{:.*} {name}", *decimals, v / *scale as f64),
        None => format!("{bytes} B"),
    }
}

/// Formats a rate with a decimal unit and one decimal: `900.0 MB/s`, `25.0 GB/s`, `1.5 TB/s`.
/// Decimal, because that is how PCIe and memory bandwidths are quoted.
pub fn fmt_rate(bytes_per_s: f64) -> String {
    if !bytes_per_s.is_finite() || bytes_per_s < 0.0 {
        return format!("{bytes_per_s} B/s");
    }
    match DECIMAL.iter().rev().find(|(_, scale)| bytes_per_s >= *scale as f64) {
        Some((name, scale)) => format!("{:.1} {name}/s", bytes_per_s / *scale as f64),
        None => format!("{bytes_per_s:.0} B/s"),
    }
}

/// Binary units for [`fmt_size`]: name, bytes, decimals printed.
const BINARY: [(&str, u64, usize); 4] =
    [("KiB", 1 << 10, 1), ("MiB", 1 << 20, 1), ("GiB", 1 << 30, 2), ("TiB", 1 << 40, 2)];
/// Decimal units for [`fmt_rate`].
const DECIMAL: [(&str, u64); 4] = [("KB", 1_000), ("MB", 1_000_000), ("GB", 1_000_000_000), ("TB", 1_000_000_000_000)];

/// Splits `s` into its number (digits with at most one dot, at least one digit) and its unit
/// (the rest, spaces trimmed).
fn split<'a>(s: &'a str, what: &'static str, example: &'static str) -> Result<(&'a str, &'a str), UnitError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(UnitError::Empty { what, example });
    }
    if s.starts_with('-') {
        return Err(UnitError::Negative { input: s.to_string(), what, example });
    }
    let unsigned = s.strip_prefix('+').unwrap_or(s);
    let end = unsigned.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(unsigned.len());
    let (number, unit) = unsigned.split_at(end);
    let digits = number.chars().filter(char::is_ascii_digit).count();
    if digits == 0 || number.matches('.').count() > 1 {
        return Err(UnitError::Malformed { input: s.to_string(), what, example });
    }
    Ok((number, unit.trim()))
}

/// Bytes per unit, or `None` for an unknown unit.
fn multiplier(unit: &str) -> Option<u64> {
    Some(match unit.to_ascii_lowercase().as_str() {
        // Empty only for a size of zero (checked by the callers).
        "" | "b" | "byte" | "bytes" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return None,
    })
}

/// `number × multiplier` rounded to the nearest byte, in exact decimal arithmetic; `None` when it
/// does not fit in a `u64`. `number` is digits with at most one dot (checked by [`split`]).
fn exact_bytes(number: &str, multiplier: u64) -> Option<u64> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let whole = whole.trim_start_matches('0');
    // 20 digits already exceed u64::MAX; checking the length first keeps u128 from overflowing.
    if whole.len() > 20 {
        return None;
    }
    let whole: u128 = if whole.is_empty() { 0 } else { whole.parse().ok()? };
    // Digits beyond the 18th are worth less than 10^-18 × 2^40 bytes (a millionth of a byte):
    // dropping them keeps `fraction × multiplier` inside u128 and cannot move the result by more
    // than the rounding already does.
    let fraction = &fraction[..fraction.len().min(18)];
    let denominator = 10u128.pow(fraction.len() as u32);
    let numerator: u128 = if fraction.is_empty() { 0 } else { fraction.parse().ok()? };
    let fraction_bytes = (numerator * multiplier as u128 + denominator / 2) / denominator;
    let total = whole.checked_mul(multiplier as u128)?.checked_add(fraction_bytes)?;
    u64::try_from(total).ok()
}
