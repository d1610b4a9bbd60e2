//! Compute resources: what a task reserves and what a node offers.
//!
//! Also the human-readable memory sizes (`"64MiB"`, `"1.5GiB"`) used by spec
//! files and the CLI, parsed and printed here so every crate agrees on them.

use serde::{Deserialize, Serialize};

/// A quantity of compute resources, in the units the scheduler counts in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// CPU in millicores: 1000 is one core.
    pub cpu_millis: u64,
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// Number of whole GPUs.
    pub gpus: u32,
    /// GPU model the task needs (e.g. `"a100"`); any model when `None`.
    pub gpu_model: Option<String>,
}

/// One kibibyte (1024 bytes).
pub const KIB: u64 = 1 << 10;
/// One mebibyte (1024 KiB).
pub const MIB: u64 = 1 << 20;
/// One gibibyte (1024 MiB).
pub const GIB: u64 = 1 << 30;
/// One tebibyte (1024 GiB).
pub const TIB: u64 = 1 << 40;
/// One pebibyte (1024 TiB).
pub const PIB: u64 = 1 << 50;

/// Memory units, largest first, as `format_memory` prefers them and
/// `parse_memory` accepts them (case-insensitively, with or without the `B`).
const UNITS: &[(&str, u64)] = &[
    ("PiB", PIB),
    ("PB", 1_000_000_000_000_000),
    ("TiB", TIB),
    ("TB", 1_000_000_000_000),
    ("GiB", GIB),
    ("GB", 1_000_000_000),
    ("MiB", MIB),
    ("MB", 1_000_000),
    ("KiB", KIB),
    ("KB", 1_000),
    ("B", 1),
];

/// Fractional digits beyond this many are ignored; they are worth less than
/// a thousandth of a byte even in PiB, and it keeps the arithmetic in `u128`.
const MAX_FRACTION_DIGITS: usize = 18;

const ACCEPTED: &str = "expected a whole number of bytes (e.g. 1048576) or a number with \
     a unit: KB, MB, GB, TB, PB (powers of 1000) or KiB, MiB, GiB, TiB, PiB \
     (powers of 1024), e.g. \"64MiB\" or \"1.5GiB\"";

fn unit_multiplier(unit: &str) -> Option<u64> {
    if unit.is_empty() {
        return Some(1);
    }
    let lower = unit.to_ascii_lowercase();
    UNITS.iter().find_map(|&(name, multiplier)| {
        let name = name.to_ascii_lowercase();
        // "MiB" may be written "Mi", and "MB" as "M"; "B" alone stays "B".
        let short = name.strip_suffix('b').filter(|s| !s.is_empty());
        (lower == name || Some(lower.as_str()) == short).then_some(multiplier)
    })
}

/// Reads a memory size as written in spec files and on the command line.
///
/// Accepts a plain number of bytes (`"1048576"`), or a number, optionally
/// with a decimal fraction, followed by a unit: `KB`/`MB`/`GB`/`TB`/`PB`
/// (powers of 1000, also written `K`, `M`, ...) or `KiB`/`MiB`/`GiB`/`TiB`/`PiB`
/// (powers of 1024, also written `Ki`, `Mi`, ...). Units are case-insensitive
/// and may be separated from the number by spaces. A fraction that does not
/// come to a whole number of bytes is rounded down. Never panics: sizes that
/// do not fit in a `u64` are an error.
pub fn parse_memory(text: &str) -> Result<u64, String> {
    let invalid = || format!("invalid memory size {text:?}: {ACCEPTED}");
    let too_large = || {
        format!(
            "memory size {text:?} is too large: the most that can be represented is {} bytes",
            u64::MAX
        )
    };

    let trimmed = text.trim();
    if trimmed.starts_with('-') {
        return Err(format!(
            "invalid memory size {text:?}: must not be negative"
        ));
    }
    let number_end = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(number_end);
    let multiplier = unit_multiplier(unit.trim_start()).ok_or_else(invalid)?;
    let (whole, fraction) = match number.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (number, None),
    };
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(whole) || fraction.is_some_and(|f| !all_digits(f)) {
        return Err(invalid());
    }

    let mut bytes: u128 = 0;
    for digit in whole.bytes() {
        bytes = bytes
            .checked_mul(10)
            .and_then(|b| b.checked_add(u128::from(digit - b'0')))
            .ok_or_else(too_large)?;
    }
    bytes = bytes
        .checked_mul(u128::from(multiplier))
        .ok_or_else(too_large)?;

    if let Some(fraction) = fraction {
        if multiplier == 1 {
            return Err(format!(
                "invalid memory size {text:?}: a number of bytes must be whole; \
                 use a unit for fractions, e.g. \"1.5GiB\""
            ));
        }
        // All ASCII digits (checked above), so slicing by bytes is safe.
        let digits = &fraction[..fraction.len().min(MAX_FRACTION_DIGITS)];
        let mut numerator: u128 = 0;
        let mut denominator: u128 = 1;
        for digit in digits.bytes() {
            // At most 18 digits: both stay below 10^18, and times a u64
            // multiplier below 2^128.
            numerator = numerator * 10 + u128::from(digit - b'0');
            denominator *= 10;
        }
        bytes = bytes
            .checked_add(numerator * u128::from(multiplier) / denominator)
            .ok_or_else(too_large)?;
    }

    u64::try_from(bytes).map_err(|_| too_large())
}

/// Writes a memory size the way a person would, exactly: the largest unit
/// that divides it evenly (67108864 is `"64MiB"`, 512000000 is `"512MB"`,
/// 1536 is `"1536B"`), so that `parse_memory(&format_memory(n)) == Ok(n)`.
pub fn format_memory(bytes: u64) -> String {
    UNITS
        .iter()
        .find(|&&(_, multiplier)| bytes != 0 && bytes.is_multiple_of(multiplier))
        .map(|&(unit, multiplier)| format!("{}{unit}", bytes / multiplier))
        .unwrap_or_else(|| format!("{bytes}B"))
}

/// Writes a memory size for a table in the largest binary unit it reaches:
/// whole when the unit divides it (`"64MiB"`), else to one decimal (a
/// host's 25,276,502,016 bytes are `"23.5GiB"`, not `"24684084KiB"`).
pub fn display_memory(bytes: u64) -> String {
    const BINARY: [(&str, u64); 4] = [("TiB", TIB), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB)];
    match BINARY.iter().find(|(_, size)| bytes >= *size) {
        Some((unit, size)) if bytes.is_multiple_of(*size) => format!("{}{unit}", bytes / size),
        Some((unit, size)) => format!("{:.1}{unit}", bytes as f64 / *size as f64),
        None => format!("{bytes}B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_show_sizes_a_person_reads_at_a_glance() {
        assert_eq!(display_memory(64 * MIB), "64MiB");
        assert_eq!(display_memory(25_276_502_016), "23.5GiB");
        assert_eq!(display_memory(1536), "1.5KiB");
        assert_eq!(display_memory(100), "100B");
        assert_eq!(display_memory(0), "0B");
    }

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!(parse_memory("64MiB"), Ok(64 * MIB));
        assert_eq!(parse_memory("1GiB"), Ok(GIB));
        assert_eq!(parse_memory("512MB"), Ok(512_000_000));
        assert_eq!(parse_memory("2G"), Ok(2_000_000_000));
        assert_eq!(parse_memory("1048576"), Ok(1_048_576));
        assert_eq!(parse_memory("1.5GiB"), Ok(GIB + GIB / 2));
        assert_eq!(parse_memory("64Mi"), Ok(64 * MIB));
        assert_eq!(parse_memory("64mib"), Ok(64 * MIB));
        assert_eq!(parse_memory(" 64 MiB "), Ok(64 * MIB));
        assert_eq!(parse_memory("10B"), Ok(10));
        assert_eq!(parse_memory("3k"), Ok(3000));
        assert_eq!(parse_memory("1TiB"), Ok(TIB));
        assert_eq!(parse_memory("2PiB"), Ok(2 * PIB));
        assert_eq!(parse_memory("0"), Ok(0));
    }

    #[test]
    fn fractions_round_down_to_whole_bytes() {
        // 0.1 GiB is 107374182.4 bytes.
        assert_eq!(parse_memory("0.1GiB"), Ok(107_374_182));
        assert_eq!(parse_memory("0.5KiB"), Ok(512));
        assert_eq!(
            parse_memory("1.000000000000000000000000000001KiB"),
            Ok(1024)
        );
        assert!(parse_memory("1.5").is_err());
        assert!(parse_memory("1.5B").is_err());
    }

    #[test]
    fn rejects_garbage_and_says_what_is_accepted() {
        for bad in [
            "",
            "   ",
            "64 potatoes",
            "MiB",
            "1.2.3GiB",
            ".5GiB",
            "5.GiB",
            "1e9",
            "0x10",
            "64MiBs",
            "6 4MiB",
            "١٢MiB",
        ] {
            let err = parse_memory(bad).expect_err(bad);
            assert!(err.contains("KiB") && err.contains("64MiB"), "{bad}: {err}");
        }
        let err = parse_memory("-1GiB").expect_err("negative");
        assert!(err.contains("negative"), "{err}");
    }

    #[test]
    fn rejects_overflow_without_panicking() {
        for big in [
            "99999999999999999999TiB",
            "18446744073709551616",
            "16384PiB",
            "9999999999999999999999999999999999999999999999999999",
            "99999999999999999999999999999999999999PiB",
            "16384.0001PiB",
        ] {
            let err = parse_memory(big).expect_err(big);
            assert!(err.contains("too large"), "{big}: {err}");
        }
        assert_eq!(parse_memory("18446744073709551615"), Ok(u64::MAX));
    }

    #[test]
    fn formats_with_the_largest_exact_unit() {
        assert_eq!(format_memory(67_108_864), "64MiB");
        assert_eq!(format_memory(GIB), "1GiB");
        assert_eq!(format_memory(512_000_000), "512MB");
        assert_eq!(format_memory(1536), "1536B");
        assert_eq!(format_memory(2048), "2KiB");
        assert_eq!(format_memory(64 * TIB), "64TiB");
        assert_eq!(format_memory(0), "0B");
        assert_eq!(format_memory(1), "1B");
        assert_eq!(format_memory(u64::MAX), "18446744073709551615B");
    }

    #[test]
    fn format_then_parse_round_trips() {
        let samples = [
            0,
            1,
            999,
            1000,
            1024,
            1536,
            MIB,
            64 * MIB,
            GIB + GIB / 2,
            512_000_000,
            3 * TIB,
            7 * PIB,
            u64::MAX,
            u64::MAX - 1,
            1 << 63,
        ];
        for bytes in samples {
            assert_eq!(parse_memory(&format_memory(bytes)), Ok(bytes), "{bytes}");
        }
        for text in ["64MiB", "1GiB", "512MB", "2GB", "1536B", "3TiB"] {
            let bytes = parse_memory(text).expect(text);
            assert_eq!(format_memory(bytes), text);
        }
    }
}
