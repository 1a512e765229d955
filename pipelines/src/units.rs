//! Durations (`90s`, `10m`, `1h30m`) and sizes (`512MiB`, `1G`) as pipeline authors write them.
//!
//! Small enough to own: the crates that parse "human" durations accept many more forms (`1 hour`,
//! `2 weeks`, fractions) than we want to document and support forever.

use std::time::Duration;

/// The longest duration accepted anywhere (a week): a larger value is a typo.
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Parse `90s`, `10m`, `1h30m`, `1h 30m 10s` (`1 h` too). Every number needs a unit (`s`, `m`, `h`), each unit
/// at most once, largest first.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty duration".into());
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("`{t}` has no unit"));
    }
    let mut total: u64 = 0;
    let mut last_rank = u8::MAX;
    let mut rest = t;
    while !rest.is_empty() {
        rest = rest.trim_start();
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("`{t}` is not a duration"));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("`{t}` is too large"))?;
        rest = rest[digits..].trim_start();
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (rank, secs) = match &rest[..unit_len] {
            "h" => (3, 3600),
            "m" => (2, 60),
            "s" => (1, 1),
            "" => return Err(format!("`{t}`: a number without a unit")),
            other => return Err(format!("`{t}`: unknown unit `{other}`")),
        };
        if rank >= last_rank {
            return Err(format!("`{t}`: write units largest first, each once"));
        }
        last_rank = rank;
        rest = &rest[unit_len..];
        total = number
            .checked_mul(secs)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(|| format!("`{t}` is too large"))?;
    }
    let d = Duration::from_secs(total);
    if d.is_zero() {
        return Err("a duration must be longer than zero".into());
    }
    if d > MAX_DURATION {
        return Err(format!("`{t}` is longer than the maximum of 7 days"));
    }
    Ok(d)
}

/// What a valid duration looks like, for hints.
pub const DURATION_HINT: &str = "write a number with a unit: 90s, 10m, 1h30m";

/// Parse `512MiB`, `1G`, `1.5GiB`, `100MB`, `4096B`. Binary units (`K`, `M`, `G`, `T`, with or
/// without `i`/`iB`, case-insensitive for the single letter as Docker accepts `512m`) are powers
/// of 1024; `KB`, `MB`, `GB`, `TB` are powers of 1000.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let number_len = t
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b'.')
        .count();
    let (number, unit) = t.split_at(number_len);
    let unit = unit.trim_start();
    if number.is_empty() {
        return Err(format!("`{t}` is not a size"));
    }
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{number}` is not a number"))?;
    let multiplier: u64 = match unit {
        "" => return Err(format!("`{t}` has no unit")),
        "B" | "b" => 1,
        "K" | "k" | "Ki" | "KiB" => 1 << 10,
        "M" | "m" | "Mi" | "MiB" => 1 << 20,
        "G" | "g" | "Gi" | "GiB" => 1 << 30,
        "T" | "t" | "Ti" | "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        other => return Err(format!("`{t}`: unknown unit `{other}`")),
    };
    let bytes = value * multiplier as f64;
    if bytes < 1.0 {
        return Err("a size must be at least 1 byte".into());
    }
    // 2^53 bytes (8 PiB) is far beyond any machine and still exact in an f64.
    if bytes > (1u64 << 53) as f64 {
        return Err(format!("`{t}` is too large"));
    }
    Ok(bytes.round() as u64)
}

/// What a valid size looks like, for hints.
pub const SIZE_HINT: &str = "write a number with a unit: 512MiB, 1G, 2GiB, 100MB";

/// Render a duration the way it would be written: `1h30m`, `90s` stays `1m30s`.
pub fn format_duration(d: Duration) -> String {
    let mut secs = d.as_secs();
    if secs == 0 {
        return format!("{}ms", d.as_millis());
    }
    let mut out = String::new();
    for (unit, size) in [("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out
}

/// Render a byte count with the largest binary unit that divides it evenly.
pub fn format_size(bytes: u64) -> String {
    for (unit, size) in [
        ("TiB", 1u64 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ] {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1h 30m 5s"), Ok(Duration::from_secs(5405)));
        for bad in [
            "", "90", "10x", "m", "1m1h", "1m1m", "0s", "8760h", "1.5h", "-1s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad} accepted");
        }
        assert!(parse_duration("99999999999999999999h").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("512m"), Ok(512 << 20));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("100MB"), Ok(100_000_000));
        assert_eq!(parse_size("4096B"), Ok(4096));
        for bad in ["", "512", "1X", "MiB", "1..2G", "0B", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn formatting_round_trips() {
        for text in ["1h30m", "90s", "10m", "1h", "2h5s"] {
            let d = parse_duration(text).unwrap();
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_size(512 << 20), "512MiB");
        assert_eq!(format_size(1000), "1000B");
    }
}
