//! Facts about the host: its name, CPU cores and memory (Linux `/proc`, with fallbacks).

/// The machine's host name: `/proc/sys/kernel/hostname`, else `$HOSTNAME`.
pub fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

/// CPU threads of the host: `processor` lines of `/proc/cpuinfo`, else the parallelism
/// available to this process.
pub fn cpu_cores() -> u32 {
    let from_proc = std::fs::read_to_string("/proc/cpuinfo")
        .map(|text| count_processors(&text))
        .unwrap_or(0);
    if from_proc > 0 {
        return from_proc;
    }
    std::thread::available_parallelism()
        .ok()
        .and_then(|n| u32::try_from(n.get()).ok())
        .unwrap_or(1)
}

/// Host memory in GiB (rounded) from `/proc/meminfo`, 0 when unknown.
pub fn ram_gib() -> u32 {
    std::fs::read_to_string("/proc/meminfo")
        .map(|t| mem_total_gib(&t))
        .unwrap_or(0)
}

fn count_processors(cpuinfo: &str) -> u32 {
    let n = cpuinfo
        .lines()
        .filter(|l| l.split(':').next().map(str::trim) == Some("processor"));
    u32::try_from(n.count()).unwrap_or(u32::MAX)
}

fn mem_total_gib(meminfo: &str) -> u32 {
    let kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    u32::try_from((kib + 512 * 1024) / (1024 * 1024)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let cpuinfo = "processor\t: 0\nmodel name\t: X\n\nprocessor\t: 1\nmodel name\t: X\n";
        assert_eq!(count_processors(cpuinfo), 2);
        assert_eq!(
            mem_total_gib("MemTotal:       2113389600 kB\nMemFree: 1 kB\n"),
            2015
        );
        assert_eq!(mem_total_gib("nonsense"), 0);
        assert!(cpu_cores() >= 1);
    }
}
