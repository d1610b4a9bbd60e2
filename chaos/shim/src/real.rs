//! The definitions this library stands in front of (libc's), found once
//! with `dlsym(RTLD_NEXT)`, and raw system calls where that fails.

use std::ffi::{c_int, c_void, CStr};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The next definition of `name` after this library, cached in `cache`
/// (0: not found).
fn next(cache: &AtomicUsize, name: &CStr) -> usize {
    let cached = cache.load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    // SAFETY: RTLD_NEXT with a NUL-terminated name; dlsym only reads it.
    let found = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) } as usize;
    cache.store(found, Ordering::Relaxed);
    found
}

type ClockGettime = unsafe extern "C" fn(libc::clockid_t, *mut libc::timespec) -> c_int;
type GetTimeOfDay = unsafe extern "C" fn(*mut libc::timeval, *mut c_void) -> c_int;
type FdCall = unsafe extern "C" fn(c_int) -> c_int;
type SyncFileRange = unsafe extern "C" fn(c_int, libc::off64_t, libc::off64_t, u32) -> c_int;

/// libc's `clock_gettime`.
///
/// # Safety
/// `tp` must be valid for writing a `timespec`.
pub unsafe fn clock_gettime(clock: libc::clockid_t, tp: *mut libc::timespec) -> c_int {
    static CACHE: AtomicUsize = AtomicUsize::new(0);
    match next(&CACHE, c"clock_gettime") {
        0 => libc::syscall(libc::SYS_clock_gettime, clock, tp) as c_int,
        // SAFETY: the symbol dlsym found has clock_gettime's signature.
        f => std::mem::transmute::<usize, ClockGettime>(f)(clock, tp),
    }
}

/// libc's `gettimeofday`.
///
/// # Safety
/// `tv` must be null or valid for writing a `timeval`; `tz` as libc takes it.
pub unsafe fn gettimeofday(tv: *mut libc::timeval, tz: *mut c_void) -> c_int {
    static CACHE: AtomicUsize = AtomicUsize::new(0);
    match next(&CACHE, c"gettimeofday") {
        0 => libc::syscall(libc::SYS_gettimeofday, tv, tz) as c_int,
        // SAFETY: the symbol dlsym found has gettimeofday's signature.
        f => std::mem::transmute::<usize, GetTimeOfDay>(f)(tv, tz),
    }
}

/// libc's `fsync`.
pub fn fsync(fd: c_int) -> c_int {
    static CACHE: AtomicUsize = AtomicUsize::new(0);
    // SAFETY: fsync takes a plain integer; a bad fd is an EBADF, not UB.
    unsafe {
        match next(&CACHE, c"fsync") {
            0 => libc::syscall(libc::SYS_fsync, fd) as c_int,
            f => std::mem::transmute::<usize, FdCall>(f)(fd),
        }
    }
}

/// libc's `fdatasync`.
pub fn fdatasync(fd: c_int) -> c_int {
    static CACHE: AtomicUsize = AtomicUsize::new(0);
    // SAFETY: as for fsync.
    unsafe {
        match next(&CACHE, c"fdatasync") {
            0 => libc::syscall(libc::SYS_fdatasync, fd) as c_int,
            f => std::mem::transmute::<usize, FdCall>(f)(fd),
        }
    }
}

/// libc's `sync_file_range`.
pub fn sync_file_range(
    fd: c_int,
    offset: libc::off64_t,
    nbytes: libc::off64_t,
    flags: u32,
) -> c_int {
    static CACHE: AtomicUsize = AtomicUsize::new(0);
    // SAFETY: plain integers; a bad fd or range is an error return.
    unsafe {
        match next(&CACHE, c"sync_file_range") {
            0 => libc::syscall(libc::SYS_sync_file_range, fd, offset, nbytes, flags) as c_int,
            f => std::mem::transmute::<usize, SyncFileRange>(f)(fd, offset, nbytes, flags),
        }
    }
}

/// The monotonic clock, ns (never skewed).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe {
        clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// Sleeps `ms` milliseconds on the calling thread, resuming after signals.
pub fn sleep_ms(ms: u64) {
    let mut left = libc::timespec {
        tv_sec: (ms / 1000) as libc::time_t,
        tv_nsec: ((ms % 1000) * 1_000_000) as libc::c_long,
    };
    loop {
        let mut rest = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: both pointers are valid timespecs.
        let rc = unsafe { libc::nanosleep(&left, &mut rest) };
        if rc == 0 {
            return;
        }
        left = rest;
    }
}
