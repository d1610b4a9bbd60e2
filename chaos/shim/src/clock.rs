//! Wall-clock reads, shifted when the control file says so.

use std::ffi::{c_int, c_void};

use crate::{control, real};

const NS_PER_SEC: i128 = 1_000_000_000;

/// `(sec, nsec)` moved by `offset_ms`, normalised (0 <= nsec < 1 s).
fn shifted(sec: i64, nsec: i64, offset_ms: i64) -> (i64, i64) {
    let total = i128::from(sec) * NS_PER_SEC + i128::from(nsec) + i128::from(offset_ms) * 1_000_000;
    let sec = total.div_euclid(NS_PER_SEC);
    let nsec = total.rem_euclid(NS_PER_SEC);
    (
        i64::try_from(sec).unwrap_or(if sec < 0 { i64::MIN } else { i64::MAX }),
        nsec as i64,
    )
}

fn is_wall_clock(clock: libc::clockid_t) -> bool {
    clock == libc::CLOCK_REALTIME || clock == libc::CLOCK_REALTIME_COARSE
}

/// `clock_gettime(2)`: wall clocks skewed, the others untouched.
///
/// # Safety
/// `tp` must be valid for writing a `timespec`, as for libc's.
#[no_mangle]
pub unsafe extern "C" fn clock_gettime(clock: libc::clockid_t, tp: *mut libc::timespec) -> c_int {
    let rc = real::clock_gettime(clock, tp);
    if rc == 0 && !tp.is_null() && is_wall_clock(clock) {
        let offset = control::current().clock_offset_ms;
        if offset != 0 {
            let (sec, nsec) = shifted((*tp).tv_sec, (*tp).tv_nsec, offset);
            (*tp).tv_sec = sec;
            (*tp).tv_nsec = nsec;
        }
    }
    rc
}

/// `gettimeofday(2)`, skewed.
///
/// # Safety
/// As for libc's: `tv` null or valid for writing a `timeval`.
#[no_mangle]
pub unsafe extern "C" fn gettimeofday(tv: *mut libc::timeval, tz: *mut c_void) -> c_int {
    let rc = real::gettimeofday(tv, tz);
    if rc == 0 && !tv.is_null() {
        let offset = control::current().clock_offset_ms;
        if offset != 0 {
            let (sec, nsec) = shifted((*tv).tv_sec, (*tv).tv_usec * 1000, offset);
            (*tv).tv_sec = sec;
            (*tv).tv_usec = nsec / 1000;
        }
    }
    rc
}

/// `time(2)`, skewed.
///
/// # Safety
/// As for libc's: `out` null or valid for writing a `time_t`.
#[no_mangle]
pub unsafe extern "C" fn time(out: *mut libc::time_t) -> libc::time_t {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    if clock_gettime(libc::CLOCK_REALTIME, &mut ts) != 0 {
        return -1;
    }
    if !out.is_null() {
        *out = ts.tv_sec;
    }
    ts.tv_sec
}

#[cfg(test)]
mod tests {
    use super::shifted;

    #[test]
    fn shifts_carry_across_seconds_both_ways() {
        assert_eq!(shifted(10, 900_000_000, 200), (11, 100_000_000));
        assert_eq!(shifted(10, 100_000_000, -200), (9, 900_000_000));
        assert_eq!(shifted(10, 0, -3_600_000), (-3590, 0));
        assert_eq!(shifted(10, 5, 0), (10, 5));
    }
}
