//! How numbers and times read on a page.

use std::time::SystemTime;

/// Bytes in binary units with three significant digits (`1.5 MiB`).
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    let digits = if v >= 100.0 {
        0
    } else if v >= 10.0 {
        1
    } else {
        2
    };
    format!("{v:.digits$} {}", UNITS[unit])
}

/// A span of at least a minute in its largest whole unit (`3 h`); `None`
/// below a minute.
fn span(secs: u64) -> Option<String> {
    match secs {
        0..=59 => None,
        60..=3599 => Some(format!("{} min", secs / 60)),
        3600..=86_399 => Some(format!("{} h", secs / 3600)),
        _ => Some(format!("{} d", secs / 86_400)),
    }
}

/// How long ago `t` was (`3 h ago`); a time in the future (another node's
/// clock) reads as `just now`.
pub fn ago(t: SystemTime, now: SystemTime) -> String {
    let secs = now.duration_since(t).map(|d| d.as_secs()).unwrap_or(0);
    span(secs).map_or_else(|| "just now".into(), |s| format!("{s} ago"))
}

/// How far ahead `t` is (`in 3 h`).
pub fn until(t: SystemTime, now: SystemTime) -> String {
    let secs = t.duration_since(now).map(|d| d.as_secs()).unwrap_or(0);
    span(secs).map_or_else(|| "within a minute".into(), |s| format!("in {s}"))
}

/// An absolute time, for a title beside a relative one.
pub fn when(t: SystemTime) -> String {
    berth_wire::time::rfc3339(t)
}

/// A share as a percentage, or a dash when there is nothing to divide.
pub fn ratio(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "–".into();
    }
    format!("{:.1} %", part as f64 * 100.0 / whole as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn sizes_read_in_binary_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.50 KiB");
        assert_eq!(bytes(29 * 1024 * 1024 + 300_000), "29.3 MiB");
        assert_eq!(bytes(300 << 30), "300 GiB");
    }

    #[test]
    fn times_read_relative_and_never_negative() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(ago(now, now), "just now");
        assert_eq!(ago(now - Duration::from_secs(125), now), "2 min ago");
        assert_eq!(ago(now - Duration::from_secs(7200), now), "2 h ago");
        assert_eq!(ago(now - Duration::from_secs(3 * 86_400), now), "3 d ago");
        assert_eq!(ago(now + Duration::from_secs(30), now), "just now");
        assert_eq!(until(now + Duration::from_secs(7200), now), "in 2 h");
        assert_eq!(until(now, now), "within a minute");
        assert_eq!(ratio(1, 4), "25.0 %");
        assert_eq!(ratio(0, 0), "–");
    }
}
