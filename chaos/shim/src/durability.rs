//! fsync and its relatives, delayed when the control file says so.

use std::ffi::c_int;

use crate::{control, real};

fn delay() {
    let ms = control::current().fsync_delay_ms;
    if ms > 0 {
        real::sleep_ms(ms);
    }
}

/// `fsync(2)`, late.
#[no_mangle]
pub extern "C" fn fsync(fd: c_int) -> c_int {
    delay();
    real::fsync(fd)
}

/// `fdatasync(2)`, late.
#[no_mangle]
pub extern "C" fn fdatasync(fd: c_int) -> c_int {
    delay();
    real::fdatasync(fd)
}

/// `sync_file_range(2)`, late.
#[no_mangle]
pub extern "C" fn sync_file_range(
    fd: c_int,
    offset: libc::off64_t,
    nbytes: libc::off64_t,
    flags: u32,
) -> c_int {
    delay();
    real::sync_file_range(fd, offset, nbytes, flags)
}
