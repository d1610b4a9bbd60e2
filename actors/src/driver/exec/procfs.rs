//! Process identity from `/proc` and the few signals the driver sends.
//!
//! A pid alone does not identify a process: once it exits and is reaped the
//! kernel may hand the number to another one. A process is identified by its
//! pid, its start time (field 22 of `/proc/PID/stat`, clock ticks after boot)
//! and the boot it runs in; all three are recorded when a run starts.

use std::fs;
use std::io;

/// What `/proc/PID/stat` says about a process that we need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// Field 3: `R`, `S`, `D`, `Z` (zombie), `X` (dead)...
    pub state: char,
    /// Field 5: process group.
    pub pgrp: i32,
    /// Field 6: session.
    pub session: i32,
    /// Field 22: start time, clock ticks after boot.
    pub start_ticks: u64,
}

impl Stat {
    /// Whether the process still runs code (zombies and dead entries do not:
    /// they only wait to be reaped).
    pub fn running(&self) -> bool {
        !matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parses the contents of `/proc/PID/stat`. The command name (field 2) is in
/// parentheses and may itself contain spaces and parentheses, so fields are
/// counted from the *last* `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let after = &text[text.rfind(')')? + 1..];
    // Fields 3, 4, 5... ; field N is at index N - 3.
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).copied();
    Some(Stat {
        state: field(3)?.chars().next()?,
        pgrp: field(5)?.parse().ok()?,
        session: field(6)?.parse().ok()?,
        start_ticks: field(22)?.parse().ok()?,
    })
}

/// `/proc/PID/stat` of `pid`; `Ok(None)` when there is no such process.
pub fn stat(pid: u32) -> io::Result<Option<Stat>> {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(text) => parse_stat(&text).map(Some).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("cannot parse /proc/{pid}/stat: {text:?}"),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        // ESRCH: the process went away while being read.
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(None),
        Err(e) => Err(e),
    }
}

/// This boot's id (empty when unreadable, which then matches only itself).
pub fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Whether the process recorded as (`pid`, `start_ticks`, `boot`) is still
/// running code. False for a zombie, for another process that got the same pid,
/// and after a reboot.
pub fn is_running(pid: u32, start_ticks: u64, boot: &str) -> io::Result<bool> {
    if boot != boot_id() {
        return Ok(false);
    }
    Ok(stat(pid)?.is_some_and(|s| s.start_ticks == start_ticks && s.running()))
}

/// Sends `signal` to the process `pid`. A process already gone is not an error.
pub fn signal_process(pid: u32, signal: i32) -> io::Result<()> {
    let pid = to_pid(pid)?;
    // SAFETY: kill has no memory-safety preconditions.
    check_kill(unsafe { libc::kill(pid, signal) })
}

/// Sends `signal` to every process of the group led by `pgid`. A group
/// already empty is not an error.
pub fn signal_group(pgid: u32, signal: i32) -> io::Result<()> {
    let pgid = to_pid(pgid)?;
    // SAFETY: as above; a negative pid addresses the process group.
    check_kill(unsafe { libc::kill(-pgid, signal) })
}

fn to_pid(pid: u32) -> io::Result<libc::pid_t> {
    // 0 and 1 would address our own group or every process: never wanted.
    match libc::pid_t::try_from(pid) {
        Ok(p) if p > 1 => Ok(p),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("refusing to signal pid {pid}"),
        )),
    }
}

fn check_kill(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ESRCH) {
        Ok(())
    } else {
        Err(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A real line from a `sleep` process, and one whose name has ") (" in it.
    const SLEEP: &str = "4242 (sleep) S 4200 4242 4100 34816 4242 4194304 95 0 0 0 0 0 0 0 \
                         20 0 1 0 987654 8486912 226 18446744073709551615 1 1 0 0 0 0 0 0 0 0 \
                         0 0 17 1 0 0 0 0 0";
    const ODD: &str = "77 (a) b (c ) d) Z 1 70 70 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 \
                       31337 0 0 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let s = parse_stat(SLEEP).expect("parses");
        assert_eq!(
            s,
            Stat {
                state: 'S',
                pgrp: 4242,
                session: 4100,
                start_ticks: 987654
            }
        );
        assert!(s.running());
        let odd = parse_stat(ODD).expect("parses");
        assert_eq!((odd.state, odd.pgrp, odd.session), ('Z', 70, 70));
        assert_eq!(odd.start_ticks, 31337);
        assert!(!odd.running(), "a zombie runs no code");
    }

    #[test]
    fn truncated_or_garbled_stat_lines_are_rejected() {
        assert_eq!(parse_stat(""), None);
        assert_eq!(parse_stat("12 (x) S 1 2 3"), None);
        assert_eq!(parse_stat(&SLEEP.replace("987654", "nope")), None);
    }

    #[test]
    fn this_process_is_running_and_a_wrong_start_time_or_boot_is_not() {
        let me = std::process::id();
        let s = stat(me).expect("stat").expect("we exist");
        let boot = boot_id();
        assert!(is_running(me, s.start_ticks, &boot).expect("check"));
        assert!(!is_running(me, s.start_ticks + 1, &boot).expect("check"));
        assert!(!is_running(me, s.start_ticks, "another-boot").expect("check"));
    }

    #[test]
    fn signalling_pid_0_or_1_is_refused() {
        assert!(signal_process(0, 0).is_err());
        assert!(signal_group(1, 0).is_err());
        signal_process(std::process::id(), 0).expect("signal 0 probes only");
    }
}
