//! RFC 3339 times as warp writes and reads them (Go's `time.RFC3339Nano`):
//! written in UTC with nine fraction digits; read with any number of
//! fraction digits (Go trims trailing zeros) and a `Z` or `±hh:mm` offset
//! (warp writes local time).

use std::fmt::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const DAY: u64 = 86_400;

/// Appends `t` as `2026-12-01T10:15:00.123456789Z`. Times before 1970 are
/// written as the epoch: clocks here never say so.
pub fn format(t: SystemTime, out: &mut String) {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (y, m, d) = civil_from_days((secs / DAY) as i64);
    let s = secs % DAY;
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:09}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        since.subsec_nanos()
    );
}

/// Parses an RFC 3339 time; `None` if it is not one (or before 1970).
pub fn parse(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = s.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let (nanos, rest) = fraction(&s[19..])?;
    let offset = offset_secs(rest)?;
    let days = days_from_civil(i64::from(y), mo, d);
    let secs = days * DAY as i64 + i64::from(h * 3600 + mi * 60 + sec) - offset;
    let secs = u64::try_from(secs).ok()?;
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}

/// `.123` → (123_000_000, what follows).
fn fraction(s: &str) -> Option<(u32, &str)> {
    let Some(digits) = s.strip_prefix('.') else {
        return Some((0, s));
    };
    let n = digits.bytes().take_while(u8::is_ascii_digit).count();
    if n == 0 || n > 9 {
        return None;
    }
    let value: u32 = digits[..n].parse().ok()?;
    Some((value * 10u32.pow(9 - n as u32), &digits[n..]))
}

/// `Z` → 0, `+02:00` → 7200.
fn offset_secs(s: &str) -> Option<i64> {
    if s == "Z" || s == "z" {
        return Some(0);
    }
    let sign = match s.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let (h, m) = s[1..].split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
    Some(sign * (h * 3600 + m * 60))
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian
/// (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// (year, month, day) → days since 1970-01-01.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn text(t: SystemTime) -> String {
        let mut s = String::new();
        format(t, &mut s);
        s
    }

    #[test]
    fn known_instants() {
        let t = UNIX_EPOCH + Duration::new(1_764_584_100, 120_000_000);
        assert_eq!(text(t), "2025-12-01T10:15:00.120000000Z");
        assert_eq!(text(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        // A leap day.
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(text(leap), "2000-02-29T00:00:00.000000000Z");
    }

    #[test]
    fn reads_what_go_writes() {
        let t = UNIX_EPOCH + Duration::new(1_764_584_100, 120_000_000);
        // Go trims trailing zeros and writes local offsets.
        assert_eq!(parse("2025-12-01T10:15:00.12Z"), Some(t));
        assert_eq!(parse("2025-12-01T11:15:00.12+01:00"), Some(t));
        assert_eq!(parse("2025-12-01T05:15:00.12-05:00"), Some(t));
        assert_eq!(
            parse("2025-12-01T10:15:00Z"),
            Some(t - Duration::from_millis(120))
        );
        for bad in [
            "",
            "2025-12-01",
            "2025-13-01T10:15:00Z",
            "2025-12-01T10:15:00.Z",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        assert_eq!(parse("2025-12-01T10:15:00.1234567890Z"), None);
    }

    proptest! {
        #[test]
        fn round_trips(secs in 0u64..8_000_000_000, nanos in 0u32..1_000_000_000) {
            let t = UNIX_EPOCH + Duration::new(secs, nanos);
            prop_assert_eq!(parse(&text(t)), Some(t));
        }
    }
}
