//! Sizes and durations as people write them: `64MiB`, `1GiB`, `30s`, `10m`.
//! A bare number keeps its old meaning (bytes; seconds), so existing
//! configurations read the same. Also fractions and listen addresses.

use std::net::SocketAddr;
use std::time::Duration;

const BYTE_UNITS: [(&str, u64); 9] = [
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("TiB", 1 << 40),
    ("kB", 1_000),
    ("KB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("B", 1),
];

/// `1048576`, `1MiB`, `1.5GiB`, `64MB` (decimal), `512B`.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = BYTE_UNITS
        .iter()
        .find_map(|(u, m)| t.strip_suffix(u).map(|n| (n.trim(), *m)))
        .unwrap_or((t, 1));
    let bad = || format!("'{s}': expected a size like 1048576, 64MiB, 1GiB or 500MB");
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(mult).ok_or_else(bad);
    }
    match num.parse::<f64>() {
        Ok(f) if f.is_finite() && f >= 0.0 && mult > 1 => {
            let v = f * mult as f64;
            (v < u64::MAX as f64)
                .then_some(v.round() as u64)
                .ok_or_else(bad)
        }
        _ => Err(bad()),
    }
}

/// [`parse_bytes`] for `usize` settings.
pub fn parse_bytes_usize(s: &str) -> Result<usize, String> {
    parse_bytes(s)
        .and_then(|b| usize::try_from(b).map_err(|_| format!("'{s}': too large for this machine")))
}

/// The shortest exact form: `64MiB`, `1GiB`, `1000` (not a power of 1024).
pub fn format_bytes(b: u64) -> String {
    for (u, m) in [
        ("TiB", 1u64 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ] {
        if b >= m && b.is_multiple_of(m) {
            return format!("{}{u}", b / m);
        }
    }
    b.to_string()
}

/// `30` (seconds), `30s`, `500ms`, `10m`, `2h`, `1.5s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let bad = || {
        format!(
            "'{s}': expected a duration like 30s, 500ms, 200us, 10m or 2h (a bare number is seconds)"
        )
    };
    let units = [
        ("us", 1e-6),
        ("µs", 1e-6),
        ("ms", 1e-3),
        ("s", 1.0),
        ("m", 60.0),
        ("h", 3600.0),
    ];
    let (num, secs_per_unit) = units
        .iter()
        .find_map(|(u, m)| t.strip_suffix(u).map(|n| (n.trim(), *m)))
        .unwrap_or((t, 1.0));
    match num.parse::<f64>() {
        Ok(f) if f.is_finite() && f >= 0.0 => {
            Duration::try_from_secs_f64(f * secs_per_unit).map_err(|_| bad())
        }
        _ => Err(bad()),
    }
}

/// The shortest exact form: `10m`, `30s`, `250ms`, `200us`, `0s`.
pub fn format_duration(d: Duration) -> String {
    let us = d.as_micros();
    if !us.is_multiple_of(1000) {
        return format!("{us}us");
    }
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let s = d.as_secs();
    match s {
        0 => "0s".into(),
        s if s.is_multiple_of(3600) => format!("{}h", s / 3600),
        s if s.is_multiple_of(60) => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// A number from 0 to 1.
pub(super) fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("'{s}': expected a number from 0 to 1")),
    }
}

/// "off" or a socket address.
pub(super) fn parse_listen(s: &str) -> Result<String, String> {
    if s == "off" || s.parse::<SocketAddr>().is_ok() {
        Ok(s.to_string())
    } else {
        Err(format!(
            "'{s}' is neither \"off\" nor an address like 0.0.0.0:9090"
        ))
    }
}

/// None for "off", else the address (checked by [`parse_listen`]).
pub(super) fn listen_addr(s: &str) -> Option<SocketAddr> {
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_and_without_units_and_print_back() {
        for (s, v) in [
            ("67108864", 64 << 20),
            ("64MiB", 64 << 20),
            ("64 MiB", 64 << 20),
            ("1GiB", 1 << 30),
            ("1.5KiB", 1536),
            ("500MB", 500_000_000),
            ("2kB", 2000),
            ("512B", 512),
            ("0", 0),
        ] {
            assert_eq!(parse_bytes(s), Ok(v), "{s}");
        }
        for bad in [
            "",
            "MiB",
            "-1",
            "1.5",
            "abc",
            "1XiB",
            "99999999999TiB",
            "NaNMiB",
        ] {
            let e = parse_bytes(bad).unwrap_err();
            assert!(e.contains("expected a size"), "{bad}: {e}");
        }
        for v in [64u64 << 20, 1 << 30, 2 << 30, 1000, 4096, 0] {
            assert_eq!(parse_bytes(&format_bytes(v)), Ok(v));
        }
        assert_eq!(format_bytes(64 << 20), "64MiB");
        assert_eq!(format_bytes(1 << 30), "1GiB");
        assert_eq!(format_bytes(1000), "1000");
    }

    #[test]
    fn durations_parse_with_and_without_units_and_print_back() {
        for (s, ms) in [
            ("30", 30_000),
            ("30s", 30_000),
            ("500ms", 500),
            ("10m", 600_000),
            ("2h", 7_200_000),
            ("1.5s", 1_500),
            ("0", 0),
        ] {
            assert_eq!(parse_duration(s), Ok(Duration::from_millis(ms)), "{s}");
        }
        for bad in ["", "s", "-1s", "ten", "1d", "infs", "1e300h"] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.contains("expected a duration"), "{bad}: {e}");
        }
        assert_eq!(format_duration(Duration::from_secs(600)), "10m");
        assert_eq!(format_duration(Duration::from_secs(30)), "30s");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(Duration::from_secs(7200)), "2h");
        assert_eq!(format_duration(Duration::ZERO), "0s");
        for s in ["200us", "200µs", "0.2ms"] {
            assert_eq!(parse_duration(s), Ok(Duration::from_micros(200)), "{s}");
        }
        assert_eq!(format_duration(Duration::from_micros(200)), "200us");
        assert_eq!(format_duration(Duration::from_micros(1500)), "1500us");
    }
}
