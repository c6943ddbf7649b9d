//! Latency histograms, percentiles, rate pacing and process accounting from /proc.

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Highest latency the histograms track (larger values are clamped to it).
const MAX_LATENCY_US: u64 = 600_000_000;

/// Nanoseconds on the tool's monotonic clock (shared by publishers and receivers, one process).
pub fn now_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    u64::try_from(BASE.get_or_init(Instant::now).elapsed().as_nanos()).unwrap_or(u64::MAX)
}

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// Latency histogram in microseconds, sharded so that thousands of client tasks can record
/// without one lock (and without one histogram each).
pub struct ShardedHistogram {
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl ShardedHistogram {
    pub fn new(shards: usize) -> Self {
        ShardedHistogram { shards: (0..shards.max(1)).map(|_| Mutex::new(new_histogram())).collect() }
    }

    pub fn record(&self, key: usize, latency_us: u64) {
        self.shards[key % self.shards.len()].lock().saturating_record(latency_us.max(1));
    }

    pub fn merged(&self) -> Histogram<u64> {
        let mut all = new_histogram();
        for s in &self.shards {
            all.add(&*s.lock()).expect("same bounds");
        }
        all
    }

    pub fn reset(&self) {
        for s in &self.shards {
            s.lock().reset();
        }
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Latency {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            count: h.len(),
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }

    /// `p50/p90/p99/p99.9/max` in milliseconds, for the human table.
    pub fn display_ms(&self) -> String {
        if self.count == 0 {
            return "n/a".into();
        }
        let ms = |us: u64| format!("{:.2}", us as f64 / 1000.0);
        format!(
            "{} / {} / {} / {} / {} ms",
            ms(self.p50_us),
            ms(self.p90_us),
            ms(self.p99_us),
            ms(self.p999_us),
            ms(self.max_us)
        )
    }
}

/// Pacing of `total` events at `rate` per second from a start instant: event `k` is due at
/// `k / rate`. The publisher sends every due event in a batch, then sleeps until the next is due.
#[derive(Debug, Clone, Copy)]
pub struct Pacer {
    pub rate: f64,
    pub total: u64,
}

impl Pacer {
    pub fn new(rate: f64, total: u64) -> Pacer {
        assert!(rate > 0.0 && rate.is_finite(), "rate must be positive");
        Pacer { rate, total }
    }

    /// How many events are due `elapsed` after the start.
    pub fn due(&self, elapsed: Duration) -> u64 {
        let n = (elapsed.as_secs_f64() * self.rate).floor() as u64 + 1;
        n.min(self.total)
    }

    /// When event `k` is due, relative to the start.
    pub fn due_at(&self, k: u64) -> Duration {
        Duration::from_secs_f64(k as f64 / self.rate)
    }
}

/// Linux reports utime/stime in USER_HZ ticks, fixed at 100 on every mainstream architecture.
const USER_HZ: f64 = 100.0;

/// User and system CPU seconds from the text of `/proc/<pid>/stat` (or a thread's).
pub fn parse_stat_times(stat: &str) -> Option<(f64, f64)> {
    // The command name (field 2) may hold spaces and parentheses: fields restart after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime as f64 / USER_HZ, stime as f64 / USER_HZ))
}

/// Parent PID and CPU seconds of the process and of its waited-for children (utime, stime,
/// cutime, cstime) from the text of `/proc/<pid>/stat`.
pub fn parse_stat_tree_entry(stat: &str) -> Option<(u32, f64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[1] is field 4 (ppid); fields 14..=17 are utime, stime, cutime, cstime.
    let ppid: u32 = f.get(1)?.parse().ok()?;
    let mut ticks = 0u64;
    for k in 11..=14 {
        ticks += f.get(k)?.parse::<u64>().ok()?;
    }
    Some((ppid, ticks as f64 / USER_HZ))
}

/// CPU seconds of a process and all its descendants (PostgreSQL's backends, a process started
/// through `runuser`), reaped children included, so the sum only grows while the tree lives.
pub fn tree_cpu_seconds(root: u32) -> Option<f64> {
    let mut entries: Vec<(u32, u32, f64)> = Vec::new();
    for d in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = d.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if let Some((ppid, cpu)) =
            std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().as_deref().and_then(parse_stat_tree_entry)
        {
            entries.push((pid, ppid, cpu));
        }
    }
    let mut members = vec![root];
    let mut total = entries.iter().find(|e| e.0 == root)?.2;
    let mut k = 0;
    while k < members.len() {
        let parent = members[k];
        for &(pid, ppid, cpu) in &entries {
            if ppid == parent {
                members.push(pid);
                total += cpu;
            }
        }
        k += 1;
    }
    Some(total)
}

/// User+system CPU seconds from the text of `/proc/<pid>/stat`.
pub fn parse_stat_cpu(stat: &str) -> Option<f64> {
    parse_stat_times(stat).map(|(user, system)| user + system)
}

/// User and system CPU seconds of the calling thread.
pub fn this_thread_cpu() -> Option<(f64, f64)> {
    parse_stat_times(&std::fs::read_to_string("/proc/thread-self/stat").ok()?)
}

/// A `kB` field (`VmRSS`, `VmHWM`) of `/proc/<pid>/status`, in bytes.
pub fn parse_status_kb(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let v = l.strip_prefix(field)?.strip_prefix(':')?;
        let kb: u64 = v.trim().strip_suffix("kB")?.trim().parse().ok()?;
        Some(kb * 1024)
    })
}

/// The soft "Max open files" limit of `/proc/<pid>/limits`.
pub fn parse_limits_nofile(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

/// A process observed through /proc (the gateway, nats-server, or the tool itself).
#[derive(Debug, Clone)]
pub struct Proc {
    path: String,
}

impl Proc {
    pub fn pid(pid: u32) -> Proc {
        Proc { path: format!("/proc/{pid}") }
    }

    pub fn this() -> Proc {
        Proc { path: "/proc/self".into() }
    }

    pub fn cpu_seconds(&self) -> Option<f64> {
        parse_stat_cpu(&std::fs::read_to_string(format!("{}/stat", self.path)).ok()?)
    }

    fn status(&self, field: &str) -> Option<u64> {
        parse_status_kb(&std::fs::read_to_string(format!("{}/status", self.path)).ok()?, field)
    }

    pub fn rss_bytes(&self) -> Option<u64> {
        self.status("VmRSS")
    }

    /// Peak RSS over the process lifetime.
    pub fn hwm_bytes(&self) -> Option<u64> {
        self.status("VmHWM")
    }

    pub fn nofile_limit(&self) -> Option<u64> {
        parse_limits_nofile(&std::fs::read_to_string(format!("{}/limits", self.path)).ok()?)
    }
}

/// CPU and memory of a process over one measured interval.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ProcUsage {
    pub cpu_seconds: f64,
    /// Highest VmRSS sampled during the interval (every 100 ms).
    pub peak_rss_bytes: u64,
    pub rss_end_bytes: u64,
}

/// Watches one process's CPU and RSS between `start` and `finish`.
pub struct ProcWatch {
    proc: Proc,
    cpu_start: f64,
    peak: std::sync::Arc<std::sync::atomic::AtomicU64>,
    sampler: tokio::task::JoinHandle<()>,
}

impl ProcWatch {
    pub fn start(proc: &Proc) -> Option<ProcWatch> {
        use std::sync::atomic::{AtomicU64, Ordering};
        let cpu_start = proc.cpu_seconds()?;
        let peak = std::sync::Arc::new(AtomicU64::new(proc.rss_bytes().unwrap_or(0)));
        let (p, pk) = (proc.clone(), peak.clone());
        let sampler = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                if let Some(r) = p.rss_bytes() {
                    pk.fetch_max(r, Ordering::Relaxed);
                }
            }
        });
        Some(ProcWatch { proc: proc.clone(), cpu_start, peak, sampler })
    }

    pub fn finish(self) -> ProcUsage {
        self.sampler.abort();
        let rss_end = self.proc.rss_bytes().unwrap_or(0);
        let peak = self.peak.load(std::sync::atomic::Ordering::Relaxed).max(rss_end);
        ProcUsage {
            cpu_seconds: self.proc.cpu_seconds().map_or(0.0, |c| (c - self.cpu_start).max(0.0)),
            peak_rss_bytes: peak,
            rss_end_bytes: rss_end,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_from_known_distribution() {
        let h = ShardedHistogram::new(4);
        // 1..=1000 µs, one each: p50 ≈ 500, p99 ≈ 990, p99.9 ≈ 999, max 1000.
        for v in 1..=1000u64 {
            h.record(v as usize, v);
        }
        let l = Latency::of(&h.merged());
        assert_eq!(l.count, 1000);
        assert_eq!(l.p50_us, 500);
        assert_eq!(l.p90_us, 900);
        assert_eq!(l.p99_us, 990);
        assert_eq!(l.p999_us, 999);
        assert_eq!(l.max_us, 1000);
        assert!((l.mean_us - 500.5).abs() < 0.5);
        h.reset();
        assert_eq!(Latency::of(&h.merged()), Latency::default());
    }

    #[test]
    fn outliers_and_zero_are_recorded_not_lost() {
        let h = ShardedHistogram::new(2);
        h.record(0, 0);
        h.record(1, u64::MAX);
        let m = h.merged();
        assert_eq!(m.len(), 2);
        assert_eq!(m.min(), 1);
        assert!(m.max() >= MAX_LATENCY_US);
    }

    #[test]
    fn pacer_schedule() {
        let p = Pacer::new(1000.0, 10_000);
        assert_eq!(p.due(Duration::ZERO), 1);
        assert_eq!(p.due(Duration::from_micros(999)), 1);
        assert_eq!(p.due(Duration::from_millis(1)), 2);
        assert_eq!(p.due(Duration::from_secs(5)), 5001);
        assert_eq!(p.due(Duration::from_secs(60)), 10_000);
        assert_eq!(p.due_at(0), Duration::ZERO);
        assert_eq!(p.due_at(2500), Duration::from_millis(2500));
        let slow = Pacer::new(0.5, 3);
        assert_eq!(slow.due(Duration::from_secs(1)), 1);
        assert_eq!(slow.due(Duration::from_secs(2)), 2);
    }

    #[test]
    fn proc_parsing() {
        let stat = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 50 0 0 20 0 9 0 100 \
                    123456 789 18446744073709551615";
        assert_eq!(parse_stat_cpu(stat), Some(3.0));
        assert_eq!(parse_stat_times(stat), Some((2.5, 0.5)));
        assert_eq!(parse_stat_cpu("garbage"), None);
        assert_eq!(parse_stat_tree_entry(stat), Some((1, 3.0)));
        assert!(tree_cpu_seconds(std::process::id()).is_some());
        let status = "Name:\tresgate\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(parse_status_kb(status, "VmRSS"), Some(10 * 1024 * 1024));
        assert_eq!(parse_status_kb(status, "VmHWM"), Some(20 * 1024 * 1024));
        assert_eq!(parse_status_kb(status, "VmSwap"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 20000                files\n";
        assert_eq!(parse_limits_nofile(limits), Some(1024));
    }

    #[test]
    fn own_process_is_readable() {
        let me = Proc::this();
        assert!(me.cpu_seconds().is_some());
        assert!(this_thread_cpu().is_some());
        assert!(me.rss_bytes().unwrap() > 0);
        assert!(me.hwm_bytes().unwrap() >= me.rss_bytes().unwrap() / 2);
    }
}
