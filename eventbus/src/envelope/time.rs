//! The envelope's clock: RFC 3339 times written without allocation.

use std::time::SystemTime;

/// The length of `2026-11-23T08:17:33.945736Z`.
pub(super) const RFC3339_MICROS_LEN: usize = 27;

/// Writes `time` as a quoted RFC 3339 UTC timestamp with microseconds, as
/// `humantime::format_rfc3339_micros` does, without going through `fmt`. A clock set before
/// 1970 writes the epoch (as the event id does) and one past 9999 the last microsecond of 9999:
/// a wrong clock never fails a publish.
pub(super) fn rfc3339_micros(time: SystemTime, buf: &mut [u8; RFC3339_MICROS_LEN + 2]) -> &[u8] {
    thread_local! {
        /// The last second formatted on this thread, and its text: most events in a row fall
        /// in the same second, and then only the microseconds are written.
        static LAST: std::cell::Cell<(u64, [u8; RFC3339_MICROS_LEN + 2])> =
            const { std::cell::Cell::new((u64::MAX, [0; RFC3339_MICROS_LEN + 2])) };
    }
    let since = since_epoch_clamped(time);
    let secs = since.as_secs();
    let micros = since.subsec_micros();
    let (last_secs, last) = LAST.get();
    if last_secs == secs {
        *buf = last;
        digits(&mut buf[21..27], u64::from(micros));
        return &buf[..];
    }
    let days = secs / 86_400;
    let sod = secs % 86_400;
    // Days to civil date (Howard Hinnant's algorithm), for days since 1970-01-01 ≥ 0.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    buf[0] = b'"';
    digits(&mut buf[1..5], year);
    buf[5] = b'-';
    digits(&mut buf[6..8], month);
    buf[8] = b'-';
    digits(&mut buf[9..11], day);
    buf[11] = b'T';
    digits(&mut buf[12..14], sod / 3_600);
    buf[14] = b':';
    digits(&mut buf[15..17], sod / 60 % 60);
    buf[17] = b':';
    digits(&mut buf[18..20], sod % 60);
    buf[20] = b'.';
    digits(&mut buf[21..27], u64::from(micros));
    buf[27] = b'Z';
    buf[28] = b'"';
    LAST.set((secs, *buf));
    &buf[..]
}

/// The time since 1970, within what RFC 3339 can write: a clock set before 1970 gives zero and
/// one past 9999 the last microsecond of 9999.
pub(super) fn since_epoch_clamped(time: SystemTime) -> std::time::Duration {
    const LAST_INSTANT: std::time::Duration =
        std::time::Duration::new(253_402_300_799, 999_999_000);
    time.duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .min(LAST_INSTANT)
}

/// `time` as RFC 3339 UTC with milliseconds (`failed_at` of dead letters); never panics, whatever
/// the clock says.
pub(crate) fn rfc3339_millis(time: SystemTime) -> String {
    let time = std::time::UNIX_EPOCH + since_epoch_clamped(time);
    humantime::format_rfc3339_millis(time).to_string()
}

/// Writes `v` as decimal digits filling `out`, with leading zeros.
pub(super) fn digits(out: &mut [u8], mut v: u64) {
    for b in out.iter_mut().rev() {
        *b = b'0' + (v % 10) as u8;
        v /= 10;
    }
}
