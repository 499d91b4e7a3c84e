//! Pure helpers of the benchmark: CPR numbers for the workload, latency
//! summaries, and reading a process's memory and CPU time from `/proc`.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// A valid CPR number for workload item `i`: many different citizens, each
/// with a real date of birth (day 1–28 of any month, year 90) and the
/// serial varying over all four digits.
pub fn cpr(i: u64) -> String {
    let serial = i % 10_000;
    let day = 1 + (i / 10_000) % 28;
    let month = 1 + (i / 280_000) % 12;
    format!("{day:02}{month:02}90{serial:04}")
}

/// A histogram of latencies in microseconds, from 1 µs to one hour.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// Records a duration (at least 1 µs) into a microsecond histogram.
pub fn record(h: &mut Histogram<u64>, d: Duration) {
    let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
    h.saturating_record(micros);
}

/// Percentiles of one latency distribution, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl LatencySummary {
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |micros: u64| micros as f64 / 1000.0;
        LatencySummary {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }

    /// One table row: `p50 p90 p99 p99.9 max` in milliseconds.
    pub fn row(&self) -> String {
        format!(
            "{:>9} {:>9} {:>9} {:>9} {:>9}",
            fmt_ms(self.p50_ms),
            fmt_ms(self.p90_ms),
            fmt_ms(self.p99_ms),
            fmt_ms(self.p999_ms),
            fmt_ms(self.max_ms)
        )
    }
}

/// Milliseconds with precision that suits their size.
pub fn fmt_ms(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.2}")
    } else if ms < 100.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.0}")
    }
}

/// Resident memory in KiB from the text of `/proc/PID/status`.
pub fn parse_vm_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// User plus system CPU time in clock ticks from the text of
/// `/proc/PID/stat` (fields 14 and 15; the command name may contain spaces
/// and parentheses, so count from the last `)`).
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state), so field 14 is fields[11].
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Resident memory of a process in MiB, if it is running.
pub fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss_kib(&status).map(|kib| kib as f64 / 1024.0)
}

/// CPU seconds (user + system) a process has used so far.
pub fn cpu_seconds(pid: u32, ticks_per_second: f64) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_ticks(&stat).map(|ticks| ticks as f64 / ticks_per_second)
}

/// Clock ticks per second (`getconf CLK_TCK`), 100 if that cannot be asked.
pub fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tvaers_proto::cpr::Cpr;

    #[test]
    fn generated_cprs_are_valid_and_varied() {
        let mut seen = std::collections::HashSet::new();
        for i in (0..3_360_000u64).step_by(997) {
            let text = cpr(i);
            assert!(Cpr::parse(&text).is_ok(), "item {i} gives an invalid CPR");
            seen.insert(text);
        }
        assert_eq!(seen.len(), (0..3_360_000u64).step_by(997).count());
        assert_ne!(cpr(0), cpr(1));
    }

    #[test]
    fn generated_notices_validate() {
        for i in [0, 1, 9_999, 10_000, 279_999, 3_359_999] {
            let notice = tvaers_proto::validate::sample::no_show(&cpr(i));
            assert!(tvaers_proto::validate::notice(&notice).is_ok(), "item {i}");
        }
    }

    #[test]
    fn summary_of_known_latencies() {
        let mut h = histogram();
        for ms in 1..=1000u64 {
            record(&mut h, Duration::from_millis(ms));
        }
        let s = LatencySummary::of(&h);
        assert_eq!(s.count, 1000);
        assert!((s.p50_ms - 500.0).abs() < 1.0, "{s:?}");
        assert!((s.p90_ms - 900.0).abs() < 1.0, "{s:?}");
        assert!((s.p99_ms - 990.0).abs() < 1.0, "{s:?}");
        assert!((s.max_ms - 1000.0).abs() < 1.0, "{s:?}");
        assert_eq!(
            s.row(),
            format!(
                "{:>9} {:>9} {:>9} {:>9} {:>9}",
                "500", "900", "990", "999", "1000"
            )
        );
    }

    #[test]
    fn sub_microsecond_latencies_count_as_one() {
        let mut h = histogram();
        record(&mut h, Duration::from_nanos(10));
        assert_eq!(h.len(), 1);
        assert_eq!(h.max(), 1);
    }

    #[test]
    fn milliseconds_are_formatted_by_size() {
        assert_eq!(fmt_ms(1.234), "1.23");
        assert_eq!(fmt_ms(12.34), "12.3");
        assert_eq!(fmt_ms(123.4), "123");
    }

    #[test]
    fn proc_status_and_stat_parse() {
        let status = "Name:\ttvaersd\nVmPeak:\t  100 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss_kib(status), Some(12345));
        assert_eq!(parse_vm_rss_kib("Name:\tx\n"), None);
        let stat = "4242 (tvaers d) S 1 4242 4242 0 -1 4194560 1 0 0 0 250 37 0 0 20 0 5 0";
        assert_eq!(parse_cpu_ticks(stat), Some(287));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }
}
