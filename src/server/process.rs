//! The standard `process_*` families (CPU, memory, file descriptors, start
//! time), read from /proc/self at scrape time and rendered as Prometheus
//! text, as the Go and Python clients do. Linux only; empty elsewhere.

/// The `process_*` families in the text format, HELP and TYPE included.
pub fn render() -> String {
    #[cfg(target_os = "linux")]
    {
        linux::render()
    }
    #[cfg(not(target_os = "linux"))]
    String::new()
}

#[cfg(target_os = "linux")]
mod linux {
    use std::fmt::Write as _;

    pub fn render() -> String {
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, value: Option<f64>| {
            if let Some(v) = value {
                let _ = write!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
                );
            }
        };
        let stat = std::fs::read_to_string("/proc/self/stat").ok();
        let stat = stat.as_deref().and_then(StatFields::parse);
        // SAFETY: sysconf only reads a configuration value.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        // SAFETY: as above.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as f64;
        family(
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            stat.as_ref()
                .filter(|_| ticks > 0.0)
                .map(|s| (s.utime + s.stime) as f64 / ticks),
        );
        family(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            stat.as_ref().map(|s| s.rss_pages as f64 * page),
        );
        family(
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            stat.as_ref().map(|s| s.vsize as f64),
        );
        family(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|d| d.count() as f64),
        );
        family(
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            max_fds(),
        );
        family(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            stat.as_ref()
                .zip(boot_time())
                .filter(|_| ticks > 0.0)
                .map(|(s, boot)| boot + s.starttime as f64 / ticks),
        );
        out
    }

    /// The fields of /proc/self/stat this module reads (proc(5)).
    #[derive(Debug, PartialEq)]
    pub(super) struct StatFields {
        pub utime: u64,
        pub stime: u64,
        pub starttime: u64,
        pub vsize: u64,
        pub rss_pages: u64,
    }

    impl StatFields {
        pub fn parse(stat: &str) -> Option<StatFields> {
            // The command name (field 2) may hold spaces and parentheses:
            // the fields after it start past its last ')'.
            let rest = &stat[stat.rfind(')')? + 1..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            // `rest` starts at field 3 (state): field n is f[n - 3].
            let n = |i: usize| f.get(i - 3).and_then(|v| v.parse::<u64>().ok());
            Some(StatFields {
                utime: n(14)?,
                stime: n(15)?,
                starttime: n(22)?,
                vsize: n(23)?,
                rss_pages: n(24)?,
            })
        }
    }

    /// Seconds since the epoch at boot (`btime` of /proc/stat).
    fn boot_time() -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        stat.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse().ok())
    }

    /// The soft limit of open files (`Max open files` of /proc/self/limits).
    fn max_fds() -> Option<f64> {
        let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
        let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
        line["Max open files".len()..]
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::linux::StatFields;

    #[test]
    fn stat_fields_are_read_past_a_command_name_with_spaces() {
        let line = "42 (gru (w) x) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 \
                    12345 1048576 300 18446744073709551615";
        assert_eq!(
            StatFields::parse(line),
            Some(StatFields {
                utime: 250,
                stime: 50,
                starttime: 12345,
                vsize: 1048576,
                rss_pages: 300
            })
        );
        assert_eq!(StatFields::parse("garbage"), None);
    }

    #[test]
    fn the_families_of_this_process_render() {
        let text = super::render();
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_start_time_seconds",
        ] {
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} missing:\n{text}"
            );
        }
    }
}
