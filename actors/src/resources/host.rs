//! The host's own figures: CPUs, CPU load, memory and the data dir's disk.
//!
//! The scheduler places work by what a node says it has, so these figures
//! must be the real ones, read from `/proc`, the cgroup files and `statvfs`.
//! Each parser is a pure function of the file's text, tested on samples; the
//! readers around them only open the files. Bad text is an error naming the
//! file and the field, never a panic.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::ResourceError;

const PROC_STAT: &str = "/proc/stat";
const PROC_MEMINFO: &str = "/proc/meminfo";
const PROC_LOADAVG: &str = "/proc/loadavg";
const PROC_SELF_CGROUP: &str = "/proc/self/cgroup";
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Cumulative CPU time of the whole host from the `cpu` line of `/proc/stat`,
/// in clock ticks. Kept between samples because the kernel only gives totals
/// since boot: the busy fraction *now* is the difference of two of these.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuTimes {
    /// Ticks spent doing anything but idling or waiting for I/O.
    pub busy: u64,
    /// All ticks (busy, idle and I/O wait).
    pub total: u64,
}

impl CpuTimes {
    /// Fraction of CPU time (0.0 to 1.0) that was busy between `previous`
    /// and `self`; since boot when there is no previous sample. A counter
    /// that did not move (or went backwards) gives 0.0 rather than NaN.
    pub fn busy_fraction_since(&self, previous: Option<CpuTimes>) -> f64 {
        let previous = previous.unwrap_or_default();
        let total = self.total.saturating_sub(previous.total);
        let busy = self.busy.saturating_sub(previous.busy);
        if total == 0 {
            return 0.0;
        }
        (busy as f64 / total as f64).clamp(0.0, 1.0)
    }
}

/// Parses `/proc/stat`: the aggregate `cpu` line's user, nice, system, idle,
/// iowait, irq, softirq and steal fields (guest time is already counted in
/// user). Kernels older than 2.6.11 print fewer fields; the missing ones count
/// as zero, but the first four are required.
pub fn parse_proc_stat(text: &str) -> Result<CpuTimes, ResourceError> {
    let line = text
        .lines()
        .find(|line| line.split_whitespace().next() == Some("cpu"))
        .ok_or_else(|| ResourceError::parse(PROC_STAT, "cpu", "no aggregate `cpu` line"))?;
    const NAMES: [&str; 8] = [
        "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
    ];
    let mut values = [0u64; 8];
    let mut fields = line.split_whitespace().skip(1);
    for (i, name) in NAMES.iter().enumerate() {
        match fields.next() {
            Some(field) => {
                values[i] = field.parse().map_err(|_| {
                    ResourceError::parse(
                        PROC_STAT,
                        &format!("cpu {name}"),
                        format!("not a number of ticks: {field:?}"),
                    )
                })?;
            }
            None if i < 4 => {
                return Err(ResourceError::parse(
                    PROC_STAT,
                    &format!("cpu {name}"),
                    "missing",
                ));
            }
            None => break,
        }
    }
    let idle = values[3].saturating_add(values[4]);
    let total = values.iter().fold(0u64, |sum, v| sum.saturating_add(*v));
    Ok(CpuTimes {
        busy: total.saturating_sub(idle),
        total,
    })
}

/// Memory of the host from `/proc/meminfo`, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemInfo {
    /// `MemTotal`: RAM the kernel manages.
    pub total_bytes: u64,
    /// `MemAvailable`: what new work can get without swapping (the kernel's
    /// own estimate, counting reclaimable cache).
    pub available_bytes: u64,
}

/// Parses `/proc/meminfo` for `MemTotal` and `MemAvailable` (kernel 3.14 and
/// later), given in kB (which the kernel means as KiB).
pub fn parse_meminfo(text: &str) -> Result<MemInfo, ResourceError> {
    let field = |name: &str| -> Result<u64, ResourceError> {
        let rest = text
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .ok_or_else(|| ResourceError::parse(PROC_MEMINFO, name, "missing"))?;
        let mut words = rest.split_whitespace();
        let number = words.next().unwrap_or_default();
        let kib: u64 = number.parse().map_err(|_| {
            ResourceError::parse(PROC_MEMINFO, name, format!("not a number: {number:?}"))
        })?;
        match words.next() {
            Some("kB") | None => {}
            Some(unit) => {
                return Err(ResourceError::parse(
                    PROC_MEMINFO,
                    name,
                    format!("unexpected unit {unit:?} (expected kB)"),
                ))
            }
        }
        kib.checked_mul(1024)
            .ok_or_else(|| ResourceError::parse(PROC_MEMINFO, name, "too large"))
    };
    Ok(MemInfo {
        total_bytes: field("MemTotal")?,
        available_bytes: field("MemAvailable")?,
    })
}

/// The run-queue load averages from `/proc/loadavg`: a busy fraction near 1
/// with a load well above the CPU count means work is queueing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadAvg {
    /// Over the last minute.
    pub load1: f64,
    /// Over the last five minutes.
    pub load5: f64,
    /// Over the last fifteen minutes.
    pub load15: f64,
}

/// Parses `/proc/loadavg` (`"0.52 0.58 0.59 1/1234 5678"`).
pub fn parse_loadavg(text: &str) -> Result<LoadAvg, ResourceError> {
    let mut fields = text.split_whitespace();
    let mut next = |name: &str| -> Result<f64, ResourceError> {
        let field = fields
            .next()
            .ok_or_else(|| ResourceError::parse(PROC_LOADAVG, name, "missing"))?;
        field
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| {
                ResourceError::parse(PROC_LOADAVG, name, format!("not a load: {field:?}"))
            })
    };
    Ok(LoadAvg {
        load1: next("load1")?,
        load5: next("load5")?,
        load15: next("load15")?,
    })
}

/// Parses a cgroup v2 `cpu.max` (`"max 100000"` or `"150000 100000"`): the
/// number of CPUs the quota allows, `None` when unlimited.
pub fn parse_cpu_max(text: &str) -> Result<Option<f64>, ResourceError> {
    const FILE: &str = "cpu.max";
    let mut fields = text.split_whitespace();
    let quota = fields
        .next()
        .ok_or_else(|| ResourceError::parse(FILE, "quota", "missing"))?;
    if quota == "max" {
        return Ok(None);
    }
    let quota: u64 = quota
        .parse()
        .map_err(|_| ResourceError::parse(FILE, "quota", format!("not a number: {quota:?}")))?;
    let period: u64 = match fields.next() {
        None => 100_000,
        Some(period) => period.parse().map_err(|_| {
            ResourceError::parse(FILE, "period", format!("not a number: {period:?}"))
        })?,
    };
    if period == 0 {
        return Err(ResourceError::parse(FILE, "period", "zero"));
    }
    Ok(Some(quota as f64 / period as f64))
}

/// The cgroup v2 path of this process from `/proc/self/cgroup` (the `0::`
/// line), `None` on a cgroup v1 host.
pub fn parse_self_cgroup(text: &str) -> Option<&str> {
    text.lines().find_map(|line| line.strip_prefix("0::"))
}

/// CPUs this process may use: those in its affinity mask (taskset, cpusets),
/// further limited by its cgroup v2 CPU quota rounded down (a 1.5-CPU quota
/// offers 1), and never fewer than one. Offering more than that would let the
/// scheduler overcommit a node that is itself confined.
pub fn usable_cpus() -> u32 {
    let by_affinity = affinity_cpus()
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1);
    let by_affinity = u32::try_from(by_affinity).unwrap_or(u32::MAX);
    match cgroup_cpu_quota() {
        Some(quota) if quota >= 1.0 => by_affinity.min(quota.floor() as u32),
        Some(_) => 1,
        None => by_affinity.max(1),
    }
}

fn affinity_cpus() -> Option<usize> {
    // SAFETY: `set` is a plain bit set the kernel fills; its size is passed.
    let count = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return None;
        }
        libc::CPU_COUNT(&set)
    };
    usize::try_from(count).ok().filter(|n| *n > 0)
}

/// The CPU quota of this process's cgroup (v2 only), if any and readable.
fn cgroup_cpu_quota() -> Option<f64> {
    let cgroups = fs::read_to_string(PROC_SELF_CGROUP).ok()?;
    let path = parse_self_cgroup(&cgroups)?;
    let dir = Path::new(CGROUP_ROOT).join(path.trim_start_matches('/'));
    let text = fs::read_to_string(dir.join("cpu.max")).ok()?;
    parse_cpu_max(&text).ok().flatten()
}

/// Size and free space of the file system holding a directory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSpace {
    /// Size of the file system.
    pub total_bytes: u64,
    /// Space an unprivileged process can still write (`f_bavail`: blocks
    /// reserved for root are left out, since workloads must not count on them).
    pub available_bytes: u64,
}

/// `statvfs` of `dir`: what the agent's data dir can still hold.
pub fn disk_space(dir: &Path) -> Result<DiskSpace, ResourceError> {
    let shown = dir.display().to_string();
    let c_path = CString::new(dir.as_os_str().as_bytes()).map_err(|_| ResourceError::Read {
        path: shown.clone(),
        message: "path contains a NUL byte".to_string(),
    })?;
    // SAFETY: `c_path` is a valid C string and `stat` a buffer statvfs fills.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(ResourceError::read(shown, &std::io::Error::last_os_error()));
    }
    // The field types (c_ulong, fsblkcnt_t) are u64 on 64-bit Linux but
    // narrower on some 32-bit targets.
    #[allow(clippy::useless_conversion)]
    let (fragment, blocks, available) = (
        u64::from(stat.f_frsize),
        u64::from(stat.f_blocks),
        u64::from(stat.f_bavail),
    );
    Ok(DiskSpace {
        total_bytes: blocks.saturating_mul(fragment),
        available_bytes: available.saturating_mul(fragment),
    })
}

/// Everything read from the host in one sample. Kept by the monitor so a
/// part that fails to read keeps its previous figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct HostFigures {
    /// See [`usable_cpus`].
    pub cpus: u32,
    /// The cumulative counters this sample read, for the next one's delta.
    pub cpu_times: Option<CpuTimes>,
    /// Busy fraction (0.0 to 1.0) since the previous sample.
    pub cpu_busy_fraction: f64,
    /// From `/proc/meminfo`.
    pub memory: MemInfo,
    /// From `/proc/loadavg`.
    pub load: LoadAvg,
    /// Of the data dir.
    pub disk: DiskSpace,
}

fn read(path: &str) -> Result<String, ResourceError> {
    fs::read_to_string(path).map_err(|e| ResourceError::read(path, &e))
}

/// Reads every figure of the host. A part that cannot be read keeps its
/// value from `previous`, and its error is returned for the caller to log:
/// one unreadable file must not blank the whole report.
pub fn sample_host(data_dir: &Path, previous: &HostFigures) -> (HostFigures, Vec<ResourceError>) {
    let mut errors = Vec::new();
    let mut figures = *previous;
    figures.cpus = usable_cpus();
    match read(PROC_STAT).and_then(|text| parse_proc_stat(&text)) {
        Ok(times) => {
            figures.cpu_busy_fraction = times.busy_fraction_since(previous.cpu_times);
            figures.cpu_times = Some(times);
        }
        Err(e) => errors.push(e),
    }
    match read(PROC_MEMINFO).and_then(|text| parse_meminfo(&text)) {
        Ok(memory) => figures.memory = memory,
        Err(e) => errors.push(e),
    }
    match read(PROC_LOADAVG).and_then(|text| parse_loadavg(&text)) {
        Ok(load) => figures.load = load,
        Err(e) => errors.push(e),
    }
    match disk_space(data_dir) {
        Ok(disk) => figures.disk = disk,
        Err(e) => errors.push(e),
    }
    (figures, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  4705 356 584 3699176 23060 0 277 12 0 0\n\
                        cpu0 1393280 32966 572056 13343292 6130 0 17875 0 23933 0\n\
                        intr 114930548 113199788 3 0 5 263 0 4\n";

    #[test]
    fn proc_stat_counts_busy_and_total_ticks() {
        let times = parse_proc_stat(STAT).expect("valid");
        let total = 4705 + 356 + 584 + 3_699_176 + 23_060 + 277 + 12;
        assert_eq!(times.total, total);
        assert_eq!(times.busy, total - 3_699_176 - 23_060);
        // Old kernels print only four fields.
        let old = parse_proc_stat("cpu 10 0 10 80\n").expect("four fields");
        assert_eq!(
            old,
            CpuTimes {
                busy: 20,
                total: 100
            }
        );
    }

    #[test]
    fn busy_fraction_is_the_delta_between_samples() {
        let before = CpuTimes {
            busy: 100,
            total: 1000,
        };
        let after = CpuTimes {
            busy: 175,
            total: 1100,
        };
        assert!((after.busy_fraction_since(Some(before)) - 0.75).abs() < 1e-9);
        assert!((after.busy_fraction_since(None) - 175.0 / 1100.0).abs() < 1e-9);
        assert_eq!(before.busy_fraction_since(Some(before)), 0.0);
        // Counters going backwards (should not happen) give 0, not garbage.
        assert_eq!(before.busy_fraction_since(Some(after)), 0.0);
    }

    #[test]
    fn malformed_proc_stat_names_file_and_field() {
        let err = parse_proc_stat("cpu  12 x 3 4\n").expect_err("bad nice");
        assert_eq!(
            err,
            ResourceError::parse("/proc/stat", "cpu nice", "not a number of ticks: \"x\"")
        );
        let err = parse_proc_stat("cpu 1 2\n").expect_err("short");
        assert!(
            err.to_string().contains("/proc/stat: field cpu system"),
            "{err}"
        );
        let err = parse_proc_stat("cpu0 1 2 3 4\n").expect_err("no aggregate");
        assert!(err.to_string().contains("/proc/stat: field cpu"), "{err}");
        assert!(parse_proc_stat("").is_err());
    }

    const MEMINFO: &str = "MemTotal:       16318156 kB\n\
                           MemFree:          542348 kB\n\
                           MemAvailable:    9120544 kB\n\
                           Buffers:          473336 kB\n";

    #[test]
    fn meminfo_gives_total_and_available_in_bytes() {
        let mem = parse_meminfo(MEMINFO).expect("valid");
        assert_eq!(mem.total_bytes, 16_318_156 * 1024);
        assert_eq!(mem.available_bytes, 9_120_544 * 1024);
    }

    #[test]
    fn malformed_meminfo_names_file_and_field() {
        let err = parse_meminfo("MemTotal: 100 kB\nMemFree: 5 kB\n").expect_err("no available");
        assert_eq!(
            err,
            ResourceError::parse("/proc/meminfo", "MemAvailable", "missing")
        );
        let err = parse_meminfo("MemTotal: lots kB\nMemAvailable: 5 kB\n").expect_err("bad");
        assert_eq!(
            err.to_string(),
            "/proc/meminfo: field MemTotal: not a number: \"lots\""
        );
        let err = parse_meminfo("MemTotal: 1 MB\nMemAvailable: 5 kB\n").expect_err("unit");
        assert!(err.to_string().contains("unexpected unit"), "{err}");
        let err = parse_meminfo("MemTotal: 99999999999999999999 kB\nMemAvailable: 5 kB\n")
            .expect_err("overflow");
        assert!(err.to_string().contains("MemTotal"), "{err}");
        // A field whose name only starts like the wanted one does not count.
        let err = parse_meminfo("MemTotalX: 1 kB\nMemAvailable: 5 kB\n").expect_err("prefix");
        assert!(err.to_string().contains("MemTotal: missing"), "{err}");
    }

    #[test]
    fn loadavg_parses_and_rejects_garbage() {
        let load = parse_loadavg("0.52 0.58 1.59 1/1234 5678\n").expect("valid");
        assert_eq!(
            load,
            LoadAvg {
                load1: 0.52,
                load5: 0.58,
                load15: 1.59
            }
        );
        let err = parse_loadavg("0.52 abc 0.1 1/2 3").expect_err("bad load5");
        assert_eq!(
            err.to_string(),
            "/proc/loadavg: field load5: not a load: \"abc\""
        );
        let err = parse_loadavg("").expect_err("empty");
        assert_eq!(err.to_string(), "/proc/loadavg: field load1: missing");
        assert!(parse_loadavg("NaN 1 1").is_err());
    }

    #[test]
    fn cpu_max_gives_the_quota_in_cpus() {
        assert_eq!(parse_cpu_max("max 100000\n"), Ok(None));
        assert_eq!(parse_cpu_max("150000 100000\n"), Ok(Some(1.5)));
        assert_eq!(parse_cpu_max("200000"), Ok(Some(2.0)));
        assert!(parse_cpu_max("").is_err());
        assert!(parse_cpu_max("lots 100000").is_err());
        assert!(parse_cpu_max("100 0").is_err());
    }

    #[test]
    fn self_cgroup_finds_the_v2_path() {
        assert_eq!(
            parse_self_cgroup("0::/system.slice/herd.service\n"),
            Some("/system.slice/herd.service")
        );
        assert_eq!(parse_self_cgroup("12:cpu,cpuacct:/\n0::/\n"), Some("/"));
        assert_eq!(parse_self_cgroup("12:cpu,cpuacct:/docker/abc\n"), None);
    }

    #[test]
    fn this_host_has_cpus_memory_and_disk() {
        assert!(usable_cpus() >= 1);
        let dir = tempfile::tempdir().expect("tempdir");
        let (figures, errors) = sample_host(dir.path(), &HostFigures::default());
        assert!(errors.is_empty(), "{errors:?}");
        assert!(figures.memory.total_bytes > 0);
        assert!(figures.memory.available_bytes <= figures.memory.total_bytes);
        assert!(figures.disk.total_bytes > 0);
        assert!((0.0..=1.0).contains(&figures.cpu_busy_fraction));
        assert!(figures.cpu_times.is_some());
    }

    #[test]
    fn an_unreadable_part_keeps_its_previous_figures() {
        let previous = HostFigures {
            disk: DiskSpace {
                total_bytes: 7,
                available_bytes: 3,
            },
            ..HostFigures::default()
        };
        let missing = Path::new("/nonexistent/herd/data/dir");
        let (figures, errors) = sample_host(missing, &previous);
        assert_eq!(figures.disk, previous.disk);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].to_string().contains("/nonexistent/herd/data/dir"),
            "{}",
            errors[0]
        );
        assert!(
            figures.memory.total_bytes > 0,
            "the other parts were still read"
        );
    }
}
