//! How much host memory this process may still take: `MemAvailable`, the cgroup's memory limit
//! (a container's `--memory`) and the address-space limit (`ulimit -v`), read from `/proc` and
//! `/sys/fs/cgroup`. Memory is planned against the smallest of them, so a request that cannot
//! fit is refused with the numbers before anything is allocated, instead of the allocator
//! aborting the process or the kernel's OOM killer ending it.

use crate::error::fmt_bytes;

/// The limits that apply to this process now; `None` where there is no limit or it cannot be
/// read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostLimits {
    /// `MemAvailable` of /proc/meminfo.
    pub mem_available: Option<u64>,
    /// The cgroup's memory limit (v2 `memory.max`, v1 `memory.limit_in_bytes`).
    pub cgroup_limit: Option<u64>,
    /// What the cgroup uses now (v2 `memory.current`, v1 `memory.usage_in_bytes`).
    pub cgroup_used: u64,
    /// The soft address-space limit (`ulimit -v`, RLIMIT_AS).
    pub address_space_limit: Option<u64>,
    /// This process's address space now (VmSize).
    pub address_space_used: u64,
}

impl HostLimits {
    /// Reads the limits of this process.
    pub fn read() -> HostLimits {
        let cgroup = read_cgroup();
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        HostLimits {
            mem_available: crate::device::mem_available(),
            cgroup_limit: cgroup.map(|(limit, _)| limit),
            cgroup_used: cgroup.map_or(0, |(_, used)| used),
            address_space_limit: std::fs::read_to_string("/proc/self/limits")
                .ok()
                .and_then(|t| address_space_limit(&t)),
            address_space_used: status_kib(&status, "VmSize:").unwrap_or(0),
        }
    }

    /// The most this process can still allocate: the smallest of what is available, what the
    /// cgroup has left and what the address-space limit has left. `None` when nothing could be
    /// read.
    pub fn usable(&self) -> Option<u64> {
        [
            self.mem_available,
            self.cgroup_limit.map(|l| l.saturating_sub(self.cgroup_used)),
            self.address_space_limit.map(|l| l.saturating_sub(self.address_space_used)),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// "MemAvailable 2.10 GiB, cgroup limit none, address-space limit 2.86 GiB (312.0 MiB used)".
    pub fn describe(&self) -> String {
        let avail = self.mem_available.map_or("unknown".to_string(), fmt_bytes);
        let cgroup = self
            .cgroup_limit
            .map_or("none".to_string(), |l| format!("{} ({} used)", fmt_bytes(l), fmt_bytes(self.cgroup_used)));
        let aspace = self
            .address_space_limit
            .map_or("none".to_string(), |l| format!("{} ({} used)", fmt_bytes(l), fmt_bytes(self.address_space_used)));
        format!("MemAvailable {avail}, cgroup limit {cgroup}, address-space limit {aspace}")
    }
}

/// (limit, usage) of this process's memory cgroup, v2 first, then v1; None without a limit.
fn read_cgroup() -> Option<(u64, u64)> {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    // v2: "0::/some/path" in /proc/self/cgroup; in a container usually "0::/".
    let own = read("/proc/self/cgroup")
        .and_then(|t| t.lines().find_map(|l| l.strip_prefix("0::").map(|p| p.trim().to_string())))
        .unwrap_or_default();
    for dir in [format!("/sys/fs/cgroup{own}"), "/sys/fs/cgroup".to_string()] {
        let dir = dir.trim_end_matches('/');
        if let Some(max) = read(&format!("{dir}/memory.max")) {
            let limit = cgroup_value(&max)?;
            let used = read(&format!("{dir}/memory.current")).and_then(|t| cgroup_value(&t)).unwrap_or(0);
            return Some((limit, used));
        }
    }
    let limit = cgroup_value(&read("/sys/fs/cgroup/memory/memory.limit_in_bytes")?)?;
    let used = read("/sys/fs/cgroup/memory/memory.usage_in_bytes").and_then(|t| cgroup_value(&t)).unwrap_or(0);
    Some((limit, used))
}

/// A cgroup memory value: bytes, or None for "max" (v2) and the near-2^63 "unlimited" of v1.
pub fn cgroup_value(text: &str) -> Option<u64> {
    let v: u64 = text.trim().parse().ok()?;
    (v < 1 << 62).then_some(v)
}

/// The soft limit of "Max address space" in /proc/self/limits (None when unlimited).
pub fn address_space_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max address space"))?;
    line.trim_start_matches("Max address space").split_whitespace().next()?.parse().ok()
}

/// A "Key:   123 kB" line of /proc/self/status, in bytes.
fn status_kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse::<u64>().ok()?.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_limits_as_the_kernel_writes_them() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max stack size            8388608              unlimited            bytes     \n\
                      Max address space         3072000000           unlimited            bytes     \n";
        assert_eq!(address_space_limit(limits), Some(3_072_000_000));
        let unlimited = "Max address space         unlimited            unlimited            bytes     \n";
        assert_eq!(address_space_limit(unlimited), None);
        assert_eq!(cgroup_value("max\n"), None);
        assert_eq!(cgroup_value("9223372036854771712\n"), None, "v1's unlimited");
        assert_eq!(cgroup_value("2147483648\n"), Some(2 << 30));
        assert_eq!(status_kib("Name:\tstrata\nVmSize:\t  123 kB\n", "VmSize:"), Some(123 * 1024));
    }

    #[test]
    fn usable_is_the_smallest_limit_left() {
        let l = HostLimits {
            mem_available: Some(8 << 30),
            cgroup_limit: Some(4 << 30),
            cgroup_used: 1 << 30,
            address_space_limit: None,
            address_space_used: 5 << 30,
        };
        assert_eq!(l.usable(), Some(3 << 30));
        let l = HostLimits { address_space_limit: Some(6 << 30), ..l };
        assert_eq!(l.usable(), Some(1 << 30));
        assert_eq!(HostLimits::default().usable(), None);
        let d = HostLimits { cgroup_limit: None, ..l }.describe();
        assert!(d.starts_with("MemAvailable 8.00 GiB, cgroup limit none, address-space limit 6.00 GiB"), "{d}");
    }
}
