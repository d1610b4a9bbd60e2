//! `libherd_chaos_shim.so`: faults below the process, for `herd chaos`.
//!
//! The chaos harness starts coordinators with `LD_PRELOAD` pointing here and
//! `HERD_SHIM_CONTROL` naming a control file of their own. The library
//! interposes on libc's durability and wall-clock calls and, as the control
//! file says, makes them misbehave the way real machines do:
//!
//! * `fsync_delay_ms=N`: `fsync`, `fdatasync` and `sync_file_range` sleep N
//!   ms before doing their work, as on a disk whose cache is full or whose
//!   controller is retrying: the data still reaches the disk, only late.
//! * `clock_offset_ms=N` (signed): `CLOCK_REALTIME` reads, `gettimeofday`
//!   and `time` are shifted by N ms, as on a machine whose NTP daemon is
//!   broken or that resumed from a snapshot. Monotonic clocks are left
//!   alone: a skewed wall clock must not change how long a timeout lasts.
//!
//! Everything else passes straight through to the next definition (libc's),
//! found with `dlsym(RTLD_NEXT)`. Without `HERD_SHIM_CONTROL` nothing is
//! changed. The harness rewrites the file atomically (a rename) and the
//! library re-reads it at most every 25 ms, so a fault starts or heals
//! within that.
//!
//! This is a shared object only: linked into a binary, its exported symbols
//! would replace libc's for that whole binary.

mod clock;
mod control;
mod durability;
mod real;
