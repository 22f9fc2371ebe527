//! Hand-written parsers for the two kinds of time a trace carries: calendar timestamps
//! (Azure: `2023-11-16 18:15:46.6805900`, `2024-05-10 00:00:00.00993+00:00`) and decimal
//! offsets from the start (BurstGPT seconds, Mooncake milliseconds). Both are parsed as
//! exact integers of nanoseconds, because going through `f64` would lose nanoseconds on
//! week-long traces and make byte-identical replays depend on float rounding.

use crate::request::Nanos;

/// Nanoseconds since the Unix epoch (UTC) of a `YYYY-MM-DD[ T]HH:MM:SS[.f…][Z|±HH:MM]`
/// timestamp. Fractions may have any number of digits; digits beyond the ninth are
/// dropped. A missing offset means UTC.
pub fn parse_datetime_ns(s: &str) -> Result<i64, String> {
    let bad = |why: &str| format!("bad timestamp \"{s}\": {why}");
    let b = s.trim().as_bytes();
    if b.len() < 19 {
        return Err(bad("expected YYYY-MM-DD HH:MM:SS"));
    }
    let year = digits(&b[0..4]).ok_or_else(|| bad("year"))? as i64;
    let month = digits(&b[5..7]).ok_or_else(|| bad("month"))?;
    let day = digits(&b[8..10]).ok_or_else(|| bad("day"))?;
    let hour = digits(&b[11..13]).ok_or_else(|| bad("hour"))?;
    let minute = digits(&b[14..16]).ok_or_else(|| bad("minute"))?;
    let second = digits(&b[17..19]).ok_or_else(|| bad("second"))?;
    if b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b' ' | b'T')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(bad("expected YYYY-MM-DD HH:MM:SS"));
    }
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return Err(bad("no such date"));
    }
    // 60 allows a leap second; the trace clock would have stamped it that way.
    if hour > 23 || minute > 59 || second > 60 {
        return Err(bad("no such time of day"));
    }
    let mut rest = &b[19..];
    let mut frac_ns: i64 = 0;
    if let Some((&b'.', tail)) = rest.split_first() {
        let n = tail.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return Err(bad("empty fraction of a second"));
        }
        let mut scale = 100_000_000;
        for &c in &tail[..n.min(9)] {
            frac_ns += i64::from(c - b'0') * scale;
            scale /= 10;
        }
        rest = &tail[n..];
    }
    let offset_s: i64 = match rest {
        [] | [b'Z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let h = digits(&[*h1, *h2]).ok_or_else(|| bad("offset hours"))? as i64;
            let m = digits(&[*m1, *m2]).ok_or_else(|| bad("offset minutes"))? as i64;
            let off = h * 3600 + m * 60;
            if *sign == b'+' {
                off
            } else {
                -off
            }
        }
        _ => return Err(bad("trailing characters (expected Z or ±HH:MM)")),
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + i64::from(hour) * 3600 + i64::from(minute) * 60 + i64::from(second)
        - offset_s;
    // i64 nanoseconds reach from 1677-09-21 00:12:43 to 2262-04-11 23:47:16 UTC; a year
    // outside that used to wrap silently in a release build.
    secs.checked_mul(1_000_000_000)
        .and_then(|ns| ns.checked_add(frac_ns))
        .ok_or_else(|| {
            bad("outside the representable range, 1677-09-21 00:12:44 to 2262-04-11 UTC")
        })
}

/// A non-negative decimal such as `12`, `12.5` or `0.000001` times `unit_ns` (a power
/// of ten: seconds or milliseconds), exactly, rounded to the nearest nanosecond. Exponent notation (`1.5e3`) is accepted through
/// `f64` for tools that write it.
pub fn parse_decimal_ns(s: &str, unit_ns: Nanos) -> Result<Nanos, String> {
    debug_assert!(unit_ns > 0 && 10u64.pow(unit_ns.ilog10()) == unit_ns);
    let t = s.trim();
    if t.starts_with('-') {
        return Err(format!("negative time \"{t}\""));
    }
    if t.contains(['e', 'E']) {
        return match t.parse::<f64>() {
            Ok(v) if v.is_finite() && v >= 0.0 && v * (unit_ns as f64) < u64::MAX as f64 => {
                Ok((v * unit_ns as f64).round() as Nanos)
            }
            _ => Err(format!("invalid time \"{t}\"")),
        };
    }
    let (int, frac) = t.split_once('.').unwrap_or((t, ""));
    let int = int.strip_prefix('+').unwrap_or(int);
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().all(|c| c.is_ascii_digit())
        || !frac.bytes().all(|c| c.is_ascii_digit())
    {
        return Err(format!("invalid time \"{t}\""));
    }
    let overflow = || format!("time \"{t}\" is too large");
    let whole: u64 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| overflow())?
    };
    let mut ns = whole.checked_mul(unit_ns).ok_or_else(overflow)?;
    // unit_ns = 10^places: the first `places` fraction digits are whole nanoseconds and
    // the next one rounds.
    let mut scale = unit_ns;
    for c in frac.bytes() {
        let d = u64::from(c - b'0');
        if scale > 1 {
            scale /= 10;
            ns = ns.checked_add(d * scale).ok_or_else(overflow)?;
        } else {
            if d >= 5 {
                ns = ns.checked_add(1).ok_or_else(overflow)?;
            }
            break;
        }
    }
    Ok(ns)
}

fn digits(b: &[u8]) -> Option<u32> {
    let mut v = 0u32;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u32::from(c - b'0');
    }
    Some(v)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn epoch_and_known_dates() {
        assert_eq!(parse_datetime_ns("1970-01-01 00:00:00").unwrap(), 0);
        // 2023-11-16T18:15:46Z is 1700158546 s after the epoch.
        assert_eq!(
            parse_datetime_ns("2023-11-16 18:15:46.6805900").unwrap(),
            1_700_158_546 * S + 680_590_000
        );
        assert_eq!(
            parse_datetime_ns("2024-02-29T23:59:59Z").unwrap(),
            1_709_251_199 * S
        );
    }

    #[test]
    fn azure_2024_offsets_and_fraction_lengths() {
        let base = parse_datetime_ns("2024-05-10 00:00:00+00:00").unwrap();
        assert_eq!(
            parse_datetime_ns("2024-05-10 00:00:00.00993+00:00").unwrap() - base,
            9_930_000
        );
        assert_eq!(
            parse_datetime_ns("2024-05-10 00:00:00.5+00:00").unwrap() - base,
            500_000_000
        );
        assert_eq!(
            parse_datetime_ns("2024-05-10 00:00:00.1234567891+00:00").unwrap() - base,
            123_456_789
        );
        assert_eq!(
            parse_datetime_ns("2024-05-10 08:00:00+08:00").unwrap(),
            base
        );
        assert_eq!(
            parse_datetime_ns("2024-05-09 22:30:00-01:30").unwrap(),
            base
        );
    }

    #[test]
    fn rejects_malformed_timestamps() {
        for bad in [
            "2023-11-16",
            "2023-13-01 00:00:00",
            "2023-02-29 00:00:00",
            "2023-11-16 24:00:00",
            "2023-11-16 18:15:46.",
            "2023-11-16 18:15:46.5 UTC",
            "2023/11/16 18:15:46",
        ] {
            assert!(parse_datetime_ns(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn timestamps_outside_i64_nanoseconds_are_errors_not_wraps() {
        assert_eq!(
            parse_datetime_ns("2262-04-11 23:47:16.854775807").unwrap(),
            i64::MAX
        );
        // The earliest whole second whose product fits.
        assert!(parse_datetime_ns("1677-09-21 00:12:44").unwrap() < 0);
        for bad in [
            "2262-04-11 23:47:16.854775808",
            "2300-01-01 00:00:00",
            "9999-12-31 23:59:59",
            "1677-09-21 00:12:43",
            "0001-01-01 00:00:00",
        ] {
            let e = parse_datetime_ns(bad).unwrap_err();
            assert!(e.contains("outside the representable range"), "{bad}: {e}");
        }
    }

    #[test]
    fn decimals_are_exact() {
        let sec = 1_000_000_000;
        assert_eq!(parse_decimal_ns("12", sec).unwrap(), 12 * sec);
        assert_eq!(parse_decimal_ns("0.000000001", sec).unwrap(), 1);
        assert_eq!(parse_decimal_ns("0.0000000015", sec).unwrap(), 2);
        assert_eq!(parse_decimal_ns("3.25", 1_000_000).unwrap(), 3_250_000);
        assert_eq!(parse_decimal_ns(".5", 1_000_000).unwrap(), 500_000);
        assert_eq!(parse_decimal_ns("1.5e3", 1_000_000).unwrap(), 1_500_000_000);
        assert_eq!(
            parse_decimal_ns("604799.123456789", sec).unwrap(),
            604_799_123_456_789
        );
        assert!(parse_decimal_ns("-1", sec).is_err());
        assert!(parse_decimal_ns("1x", sec).is_err());
        assert!(parse_decimal_ns("", sec).is_err());
        assert!(parse_decimal_ns("99999999999999999999", sec).is_err());
    }
}
