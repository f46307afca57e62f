//! vmstat-equivalent sampling read straight from `/proc`, without a `vmstat` child.
//!
//! The pure half parses `/proc/stat`, `/proc/meminfo` and `/proc/vmstat` into [`RawCounters`]
//! and turns two of them into a [`VmstatRow`] with the arithmetic of procps-ng 4.0.2 (Debian 12's
//! `vmstat`; see `shared/research/vmstat.md`). The I/O half reads the files on a blocking thread
//! and feeds a channel without ever waiting on the consumer.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::mpsc::Sender;
use tokio_util::sync::CancellationToken;

/// Cumulative and instantaneous counters, exactly as the kernel reports them.
///
/// Tick fields are the aggregate `cpu` line of `/proc/stat` in USER_HZ ticks summed over all
/// CPUs; memory fields are KiB; `pgpgin`/`pgpgout` are KiB, `pswpin`/`pswpout` pages.
/// Stored raw so any rate can be recomputed later.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawCounters {
    pub user: u64,
    pub nice: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub irq: u64,
    pub softirq: u64,
    pub steal: u64,
    /// Already included in `user` by the kernel.
    pub guest: u64,
    /// Already included in `nice` by the kernel.
    pub guest_nice: u64,
    /// First number of the `intr` line: all interrupts since boot.
    pub intr: u64,
    pub ctxt: u64,
    pub procs_running: u64,
    pub procs_blocked: u64,
    pub mem_total_kb: u64,
    pub mem_free_kb: u64,
    /// `None` on kernels older than 3.14.
    pub mem_available_kb: Option<u64>,
    pub buffers_kb: u64,
    pub cached_kb: u64,
    pub sreclaimable_kb: u64,
    pub active_kb: u64,
    pub inactive_kb: u64,
    pub swap_total_kb: u64,
    pub swap_free_kb: u64,
    pub pgpgin: u64,
    pub pgpgout: u64,
    pub pswpin: u64,
    pub pswpout: u64,
}

/// One line of `vmstat -w` output (default unit KiB), field for field.
///
/// `r` is the kernel's `procs_running` as is: procps 4.0.0-4.0.2 print it undecremented, and the
/// sampler is not itself running when it reads the file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmstatRow {
    pub r: u64,
    pub b: u64,
    pub swpd: u64,
    pub free: u64,
    pub buff: u64,
    pub cache: u64,
    pub si: u64,
    pub so: u64,
    pub bi: u64,
    pub bo: u64,
    pub r#in: u64,
    pub cs: u64,
    pub us: u64,
    pub sy: u64,
    pub id: u64,
    pub wa: u64,
    pub st: u64,
    /// Guest share; printed by `vmstat -w` (and in narrow mode from procps 4.0.4).
    pub gu: u64,
}

/// One sample as the sampler sends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmstatReading {
    /// CLOCK_MONOTONIC in nanoseconds when the files were read.
    pub mono_ns: u64,
    /// Wall clock in Unix milliseconds when the files were read.
    pub wall_ms: i64,
    pub raw: RawCounters,
    pub row: VmstatRow,
}

#[derive(Debug, thiserror::Error)]
pub enum VmstatError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} line {line}: {reason}: {text:?}", file.display())]
    Malformed {
        file: PathBuf,
        line: usize,
        text: String,
        reason: &'static str,
    },
    #[error("{}: no `{key}` entry", file.display())]
    Missing { file: PathBuf, key: &'static str },
}

/// `USER_HZ`, the unit of `/proc/stat` ticks (100 on Linux for every architecture we run on).
pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf only reads a constant; it has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(hz).ok().filter(|&h| h > 0).unwrap_or(100)
}

/// Page size in KiB (4 on x86_64 and on Jetson L4T kernels).
pub fn page_size_kb() -> u64 {
    // SAFETY: as above.
    let bytes = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(bytes)
        .ok()
        .map(|b| b / 1024)
        .filter(|&k| k > 0)
        .unwrap_or(4)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProcFile {
    Stat,
    Meminfo,
    Vmstat,
}

impl ProcFile {
    fn name(self) -> &'static str {
        match self {
            ProcFile::Stat => "stat",
            ProcFile::Meminfo => "meminfo",
            ProcFile::Vmstat => "vmstat",
        }
    }
}

struct Ctx<'a> {
    root: &'a Path,
    file: ProcFile,
}

impl Ctx<'_> {
    fn path(&self) -> PathBuf {
        self.root.join(self.file.name())
    }
    fn malformed(&self, line: usize, text: &str, reason: &'static str) -> VmstatError {
        VmstatError::Malformed {
            file: self.path(),
            line,
            text: text.to_owned(),
            reason,
        }
    }
    fn missing(&self, key: &'static str) -> VmstatError {
        VmstatError::Missing {
            file: self.path(),
            key,
        }
    }
}

fn parse_u64(ctx: &Ctx<'_>, line_no: usize, line: &str, word: &str) -> Result<u64, VmstatError> {
    word.parse::<u64>()
        .map_err(|_| ctx.malformed(line_no, line, "not an unsigned integer"))
}

/// Parses the three texts; `proc_root` only names the files in error messages.
pub fn parse_counters(
    proc_root: &Path,
    stat: &str,
    meminfo: &str,
    vmstat: &str,
) -> Result<RawCounters, VmstatError> {
    let mut c = RawCounters::default();
    parse_stat(
        &Ctx {
            root: proc_root,
            file: ProcFile::Stat,
        },
        stat,
        &mut c,
    )?;
    parse_meminfo(
        &Ctx {
            root: proc_root,
            file: ProcFile::Meminfo,
        },
        meminfo,
        &mut c,
    )?;
    parse_vmstat(
        &Ctx {
            root: proc_root,
            file: ProcFile::Vmstat,
        },
        vmstat,
        &mut c,
    )?;
    Ok(c)
}

fn parse_stat(ctx: &Ctx<'_>, text: &str, c: &mut RawCounters) -> Result<(), VmstatError> {
    let (mut cpu, mut intr, mut ctxt, mut running, mut blocked) = (false, None, None, None, None);
    for (idx, line) in text.lines().enumerate() {
        let line_no = idx + 1;
        let mut words = line.split_ascii_whitespace();
        let Some(key) = words.next() else { continue };
        match key {
            "cpu" => {
                let ticks = words
                    .map(|w| parse_u64(ctx, line_no, line, w))
                    .collect::<Result<Vec<u64>, _>>()?;
                // user nice system idle exist since 2.4; later fields were added over time.
                if ticks.len() < 4 {
                    return Err(ctx.malformed(line_no, line, "fewer than 4 tick fields"));
                }
                let t = |i: usize| ticks.get(i).copied().unwrap_or(0);
                c.user = t(0);
                c.nice = t(1);
                c.system = t(2);
                c.idle = t(3);
                c.iowait = t(4);
                c.irq = t(5);
                c.softirq = t(6);
                c.steal = t(7);
                c.guest = t(8);
                c.guest_nice = t(9);
                cpu = true;
            }
            "intr" | "ctxt" | "procs_running" | "procs_blocked" => {
                let Some(first) = words.next() else {
                    return Err(ctx.malformed(line_no, line, "no value"));
                };
                let v = Some(parse_u64(ctx, line_no, line, first)?);
                match key {
                    "intr" => intr = v,
                    "ctxt" => ctxt = v,
                    "procs_running" => running = v,
                    _ => blocked = v,
                }
            }
            _ => {}
        }
    }
    if !cpu {
        return Err(ctx.missing("cpu"));
    }
    c.intr = intr.ok_or_else(|| ctx.missing("intr"))?;
    c.ctxt = ctxt.ok_or_else(|| ctx.missing("ctxt"))?;
    c.procs_running = running.ok_or_else(|| ctx.missing("procs_running"))?;
    c.procs_blocked = blocked.ok_or_else(|| ctx.missing("procs_blocked"))?;
    Ok(())
}

fn parse_meminfo(ctx: &Ctx<'_>, text: &str, c: &mut RawCounters) -> Result<(), VmstatError> {
    let (mut total, mut free, mut buffers, mut cached) = (None, None, None, None);
    for (idx, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let line_no = idx + 1;
        let Some((key, rest)) = line.split_once(':') else {
            return Err(ctx.malformed(line_no, line, "no `:` after the key"));
        };
        let slot = match key {
            "MemTotal" => &mut total,
            "MemFree" => &mut free,
            "Buffers" => &mut buffers,
            "Cached" => &mut cached,
            "MemAvailable" => &mut c.mem_available_kb,
            "SReclaimable" | "Active" | "Inactive" | "SwapTotal" | "SwapFree" => {
                let value = meminfo_value(ctx, line_no, line, rest)?;
                *match key {
                    "SReclaimable" => &mut c.sreclaimable_kb,
                    "Active" => &mut c.active_kb,
                    "Inactive" => &mut c.inactive_kb,
                    "SwapTotal" => &mut c.swap_total_kb,
                    _ => &mut c.swap_free_kb,
                } = value;
                continue;
            }
            _ => continue,
        };
        *slot = Some(meminfo_value(ctx, line_no, line, rest)?);
    }
    c.mem_total_kb = total.ok_or_else(|| ctx.missing("MemTotal"))?;
    c.mem_free_kb = free.ok_or_else(|| ctx.missing("MemFree"))?;
    c.buffers_kb = buffers.ok_or_else(|| ctx.missing("Buffers"))?;
    c.cached_kb = cached.ok_or_else(|| ctx.missing("Cached"))?;
    Ok(())
}

fn meminfo_value(
    ctx: &Ctx<'_>,
    line_no: usize,
    line: &str,
    rest: &str,
) -> Result<u64, VmstatError> {
    let mut words = rest.split_ascii_whitespace();
    let Some(number) = words.next() else {
        return Err(ctx.malformed(line_no, line, "no value"));
    };
    let value = parse_u64(ctx, line_no, line, number)?;
    match words.next() {
        None | Some("kB") => Ok(value),
        Some(_) => Err(ctx.malformed(line_no, line, "unit is not kB")),
    }
}

fn parse_vmstat(ctx: &Ctx<'_>, text: &str, c: &mut RawCounters) -> Result<(), VmstatError> {
    let (mut pgpgin, mut pgpgout) = (None, None);
    for (idx, line) in text.lines().enumerate() {
        let line_no = idx + 1;
        let mut words = line.split_ascii_whitespace();
        let Some(key) = words.next() else { continue };
        let Some(number) = words.next() else {
            return Err(ctx.malformed(line_no, line, "no value"));
        };
        if words.next().is_some() {
            return Err(ctx.malformed(line_no, line, "more than one value"));
        }
        let slot = match key {
            "pgpgin" => &mut pgpgin,
            "pgpgout" => &mut pgpgout,
            // Absent on kernels built without swap; vmstat then shows 0.
            "pswpin" => {
                c.pswpin = parse_u64(ctx, line_no, line, number)?;
                continue;
            }
            "pswpout" => {
                c.pswpout = parse_u64(ctx, line_no, line, number)?;
                continue;
            }
            _ => continue,
        };
        *slot = Some(parse_u64(ctx, line_no, line, number)?);
    }
    c.pgpgin = pgpgin.ok_or_else(|| ctx.missing("pgpgin"))?;
    c.pgpgout = pgpgout.ok_or_else(|| ctx.missing("pgpgout"))?;
    Ok(())
}

/// Tick buckets as vmstat groups them.
#[derive(Debug, Clone, Copy, Default)]
struct Ticks {
    us: u64,
    sy: u64,
    id: u64,
    wa: u64,
    st: u64,
    gu: u64,
}

impl Ticks {
    fn cumulative(c: &RawCounters) -> Self {
        Ticks {
            us: c.user.saturating_add(c.nice),
            sy: c.system.saturating_add(c.irq).saturating_add(c.softirq),
            id: c.idle,
            wa: c.iowait,
            st: c.steal,
            gu: c.guest.saturating_add(c.guest_nice),
        }
    }

    /// Per-field deltas clamped at 0, all zero when any aggregate went backwards (CPU hot-unplug
    /// by nvpmodel, counter reset): procps' `stat_derive_unique` then restarts from the new values.
    fn delta(prev: &RawCounters, cur: &RawCounters) -> Self {
        let aggregates = |c: &RawCounters| {
            let xusr = c.user as u128 + c.nice as u128;
            let xsys = c.system as u128 + c.irq as u128 + c.softirq as u128;
            let xidl = c.idle as u128 + c.iowait as u128;
            let xtot =
                xusr + xsys + xidl + c.steal as u128 + c.guest as u128 + c.guest_nice as u128;
            [xusr, xsys, xidl, xtot - xidl, xtot]
        };
        let (old, new) = (aggregates(prev), aggregates(cur));
        if new.iter().zip(old.iter()).any(|(n, o)| n < o) {
            return Ticks::default();
        }
        let d = |n: u64, o: u64| n.saturating_sub(o);
        Ticks {
            us: d(cur.user, prev.user).saturating_add(d(cur.nice, prev.nice)),
            sy: d(cur.system, prev.system)
                .saturating_add(d(cur.irq, prev.irq))
                .saturating_add(d(cur.softirq, prev.softirq)),
            id: d(cur.idle, prev.idle),
            wa: d(cur.iowait, prev.iowait),
            st: d(cur.steal, prev.steal),
            gu: d(cur.guest, prev.guest).saturating_add(d(cur.guest_nice, prev.guest_nice)),
        }
    }

    /// `(us, sy, id, wa, st, gu)` percentages, each rounded on its own as procps does, so the
    /// sum may be 99-101.
    fn percentages(self) -> [u64; 6] {
        let mut id = self.id as u128;
        let mut div = [self.us, self.sy, self.id, self.wa, self.st]
            .iter()
            .map(|&v| v as u128)
            .sum::<u128>();
        if div == 0 {
            div = 1;
            id = 1;
        }
        let half = div / 2;
        let pct = |x: u128| to_u64((100 * x + half) / div);
        // Guest time is inside user time; timing skew can make it larger, then procps shows 0.
        let us = (self.us as u128).saturating_sub(self.gu as u128);
        [
            pct(us),
            pct(self.sy as u128),
            pct(id),
            pct(self.wa as u128),
            pct(self.st as u128),
            pct(self.gu as u128),
        ]
    }

    fn total(self) -> u128 {
        [self.us, self.sy, self.id, self.wa, self.st]
            .iter()
            .map(|&v| v as u128)
            .sum()
    }
}

fn to_u64(v: u128) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// Derives one vmstat row.
///
/// * `prev == None`: the "since boot" first line of procps 4.0.2: every rate is
///   `(counter * hz + Div/2) / Div` with `Div` the cumulative ticks of **all** CPUs, so these
///   rates are per CPU-second (too small by the CPU count; procps fixed it in 4.0.3). `elapsed`
///   is unused. Use delta rows for anything quantitative.
/// * `prev == Some`: rates are counter deltas per second of `elapsed`, rounded half up; for a
///   whole number of seconds this is procps' `(d + delay/2) / delay` exactly. procps divides by
///   the nominal delay; pass the measured monotonic interval to get true rates.
///
/// Counters that went backwards give a rate of 0 (procps prints a wrapped number there).
/// Memory columns and `r`/`b` always come from `cur` (procps 4.0.0-4.0.2 print stale memory on
/// later lines, a bug fixed in 4.0.3).
pub fn derive_row(
    prev: Option<&RawCounters>,
    cur: &RawCounters,
    elapsed: Duration,
    hz: u64,
    page_kb: u64,
) -> VmstatRow {
    // (numerator scale, divisor): since boot x*hz/Div, later d*1e9/elapsed_ns, rounded half up.
    let (ticks, scale, divisor) = match prev {
        None => {
            let ticks = Ticks::cumulative(cur);
            (ticks, hz as u128, ticks.total().max(1))
        }
        Some(prev) => (Ticks::delta(prev, cur), 1_000_000_000, elapsed.as_nanos()),
    };
    let rate = |x: u64| {
        (x as u128 * scale + divisor / 2)
            .checked_div(divisor)
            .map_or(0, to_u64)
    };
    let counter = |pick: fn(&RawCounters) -> u64| match prev {
        None => pick(cur),
        Some(p) => pick(cur).saturating_sub(pick(p)),
    };
    let [us, sy, id, wa, st, gu] = ticks.percentages();
    VmstatRow {
        r: cur.procs_running,
        b: cur.procs_blocked,
        swpd: cur.swap_total_kb.saturating_sub(cur.swap_free_kb),
        free: cur.mem_free_kb,
        buff: cur.buffers_kb,
        cache: cur.cached_kb.saturating_add(cur.sreclaimable_kb),
        si: rate(counter(|c| c.pswpin).saturating_mul(page_kb)),
        so: rate(counter(|c| c.pswpout).saturating_mul(page_kb)),
        bi: rate(counter(|c| c.pgpgin)),
        bo: rate(counter(|c| c.pgpgout)),
        r#in: rate(counter(|c| c.intr)),
        cs: rate(counter(|c| c.ctxt)),
        us,
        sy,
        id,
        wa,
        st,
        gu,
    }
}

/// Reads and parses `<proc_root>/{stat,meminfo,vmstat}`. Blocking: call it from
/// `spawn_blocking` on the runtime.
pub fn read_counters(proc_root: &Path) -> Result<RawCounters, VmstatError> {
    let read = |name: &str| {
        let path = proc_root.join(name);
        std::fs::read_to_string(&path).map_err(|source| VmstatError::Io { path, source })
    };
    let stat = read("stat")?;
    let meminfo = read("meminfo")?;
    let vmstat = read("vmstat")?;
    parse_counters(proc_root, &stat, &meminfo, &vmstat)
}

/// CLOCK_MONOTONIC in nanoseconds (the clock the other samplers stamp with too).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        // CLOCK_MONOTONIC cannot fail on Linux; 0 keeps the signature simple if it ever did.
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// Samples every `interval` until `cancel` fires or the receiver is dropped.
///
/// Never waits on the consumer: a full channel drops the reading and increments `dropped`.
/// A failed read is logged and the loop goes on; the next good reading then derives its rates
/// from the last good one, over the real elapsed time.
pub async fn run_sampler(
    proc_root: PathBuf,
    interval: Duration,
    tx: Sender<VmstatReading>,
    cancel: CancellationToken,
    dropped: Arc<AtomicU64>,
) {
    let hz = clock_ticks_per_sec();
    let page_kb = page_size_kb();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut prev: Option<(u64, RawCounters)> = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let root = proc_root.clone();
        let read = tokio::task::spawn_blocking(move || {
            let raw = read_counters(&root);
            (monotonic_ns(), chrono::Utc::now().timestamp_millis(), raw)
        })
        .await;
        let (mono_ns, wall_ms, raw) = match read {
            Ok((mono, wall, Ok(raw))) => (mono, wall, raw),
            Ok((_, _, Err(err))) => {
                tracing::warn!(error = %err, "vmstat sample skipped");
                continue;
            }
            Err(err) => {
                tracing::error!(error = %err, "vmstat read task failed");
                continue;
            }
        };
        let row = match &prev {
            None => derive_row(None, &raw, Duration::ZERO, hz, page_kb),
            Some((prev_ns, prev_raw)) => derive_row(
                Some(prev_raw),
                &raw,
                Duration::from_nanos(mono_ns.saturating_sub(*prev_ns)),
                hz,
                page_kb,
            ),
        };
        prev = Some((mono_ns, raw));
        let reading = VmstatReading {
            mono_ns,
            wall_ms,
            raw,
            row,
        };
        match tx.try_send(reading) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Closed(_)) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  10000 500 3000 80000 700 200 100 50 400 0\n\
cpu0 5000 250 1500 40000 350 100 50 25 200 0\n\
intr 5000000 1 2 3\n\
ctxt 9000000\n\
btime 1700000000\n\
processes 4242\n\
procs_running 3\n\
procs_blocked 1\n";
    const MEMINFO: &str = "MemTotal:        8000000 kB\n\
MemFree:         2000000 kB\n\
MemAvailable:    5000000 kB\n\
Buffers:          100000 kB\n\
Cached:          2500000 kB\n\
Active:          3000000 kB\n\
Inactive:        1000000 kB\n\
SwapTotal:       4000000 kB\n\
SwapFree:        3900000 kB\n\
SReclaimable:     200000 kB\n\
HugePages_Total:       0\n";
    const VMSTAT: &str =
        "nr_free_pages 500000\npgpgin 123456\npgpgout 654321\npswpin 1000\npswpout 2000\n";

    fn root() -> &'static Path {
        Path::new("/proc")
    }

    fn a() -> RawCounters {
        parse_counters(root(), STAT, MEMINFO, VMSTAT).unwrap()
    }

    #[test]
    fn parses_every_field_vmstat_needs() {
        let c = a();
        assert_eq!(
            (c.user, c.nice, c.system, c.idle, c.iowait),
            (10000, 500, 3000, 80000, 700)
        );
        assert_eq!(
            (c.irq, c.softirq, c.steal, c.guest, c.guest_nice),
            (200, 100, 50, 400, 0)
        );
        assert_eq!(
            (c.intr, c.ctxt, c.procs_running, c.procs_blocked),
            (5000000, 9000000, 3, 1)
        );
        assert_eq!(
            (c.mem_total_kb, c.mem_free_kb, c.mem_available_kb),
            (8000000, 2000000, Some(5000000))
        );
        assert_eq!(
            (c.buffers_kb, c.cached_kb, c.sreclaimable_kb),
            (100000, 2500000, 200000)
        );
        assert_eq!((c.active_kb, c.inactive_kb), (3000000, 1000000));
        assert_eq!((c.swap_total_kb, c.swap_free_kb), (4000000, 3900000));
        assert_eq!(
            (c.pgpgin, c.pgpgout, c.pswpin, c.pswpout),
            (123456, 654321, 1000, 2000)
        );
    }

    /// The first line of the research note's worked example, as Debian's vmstat 4.0.2 printed it.
    #[test]
    fn first_line_matches_research_example() {
        let row = derive_row(None, &a(), Duration::ZERO, 100, 4);
        let got = [
            row.r, row.b, row.swpd, row.free, row.buff, row.cache, row.si, row.so, row.bi, row.bo,
            row.r#in, row.cs, row.us, row.sy, row.id, row.wa, row.st, row.gu,
        ];
        assert_eq!(
            got,
            [
                3, 1, 100000, 2000000, 100000, 2700000, 4, 8, 131, 692, 5288, 9519, 11, 3, 85, 1,
                0, 0
            ]
        );
    }

    #[test]
    fn delta_line_matches_research_example() {
        let prev = a();
        let mut cur = prev;
        cur.user += 150;
        cur.nice += 10;
        cur.system += 40;
        cur.idle += 80;
        cur.iowait += 20;
        cur.irq += 5;
        cur.softirq += 3;
        cur.steal += 2;
        cur.guest += 30;
        cur.intr += 1234;
        cur.ctxt += 4321;
        cur.pgpgin += 4000;
        cur.pgpgout += 9000;
        cur.pswpin += 30;
        cur.pswpout += 70;
        let row = derive_row(Some(&prev), &cur, Duration::from_secs(2), 100, 4);
        let got = [
            row.si, row.so, row.bi, row.bo, row.r#in, row.cs, row.us, row.sy, row.id, row.wa,
            row.st, row.gu,
        ];
        assert_eq!(got, [60, 140, 2000, 4500, 617, 2161, 42, 15, 26, 6, 1, 10]);
    }

    #[test]
    fn fractional_elapsed_gives_true_rates() {
        let prev = a();
        let mut cur = prev;
        cur.ctxt += 1500;
        let row = derive_row(Some(&prev), &cur, Duration::from_millis(1500), 100, 4);
        assert_eq!(row.cs, 1000);
        let row = derive_row(Some(&prev), &cur, Duration::ZERO, 100, 4);
        assert_eq!(row.cs, 0, "zero elapsed must not divide by zero");
    }

    #[test]
    fn zero_tick_delta_reads_as_fully_idle() {
        let row = derive_row(Some(&a()), &a(), Duration::from_secs(1), 100, 4);
        assert_eq!(
            (row.us, row.sy, row.id, row.wa, row.st, row.gu),
            (0, 0, 100, 0, 0, 0)
        );
        assert_eq!((row.r#in, row.cs, row.bi, row.si), (0, 0, 0, 0));
    }

    #[test]
    fn ticks_going_backwards_restart_instead_of_wrapping() {
        let prev = a();
        let mut cur = prev;
        cur.user -= 1000; // a CPU went offline
        cur.idle += 500;
        let row = derive_row(Some(&prev), &cur, Duration::from_secs(1), 100, 4);
        assert_eq!((row.us, row.sy, row.id), (0, 0, 100));
        let mut cur = prev;
        cur.ctxt -= 10;
        cur.pgpgin -= 10;
        let row = derive_row(Some(&prev), &cur, Duration::from_secs(1), 100, 4);
        assert_eq!((row.cs, row.bi), (0, 0));
    }

    #[test]
    fn guest_above_user_clamps_us_at_zero() {
        let prev = a();
        let mut cur = prev;
        cur.user += 10;
        cur.guest += 50;
        cur.idle += 40;
        let row = derive_row(Some(&prev), &cur, Duration::from_secs(1), 100, 4);
        assert_eq!((row.us, row.id, row.gu), (0, 80, 100));
    }

    #[test]
    fn huge_counters_do_not_overflow() {
        let mut c = a();
        c.intr = u64::MAX / 2;
        c.user = u64::MAX / 4;
        let row = derive_row(None, &c, Duration::ZERO, 100, 4);
        assert!(row.us >= 99);
        assert!(row.r#in > 0);
    }

    #[test]
    fn old_kernel_cpu_line_without_steal_parses_as_zero() {
        let stat = STAT.replace(
            "cpu  10000 500 3000 80000 700 200 100 50 400 0",
            "cpu  10 0 5 85",
        );
        let c = parse_counters(root(), &stat, MEMINFO, VMSTAT).unwrap();
        assert_eq!(
            (c.user, c.idle, c.iowait, c.steal, c.guest),
            (10, 85, 0, 0, 0)
        );
        let row = derive_row(None, &c, Duration::ZERO, 100, 4);
        assert_eq!((row.us, row.sy, row.id, row.wa, row.st), (10, 5, 85, 0, 0));
    }

    #[test]
    fn optional_meminfo_and_vmstat_keys_default_to_zero() {
        let meminfo = "MemTotal: 100 kB\nMemFree: 50 kB\nBuffers: 1 kB\nCached: 2 kB\n";
        let c = parse_counters(root(), STAT, meminfo, "pgpgin 1\npgpgout 2\n").unwrap();
        assert_eq!(
            (
                c.sreclaimable_kb,
                c.swap_total_kb,
                c.pswpin,
                c.mem_available_kb
            ),
            (0, 0, 0, None)
        );
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let bad = STAT.replace("ctxt 9000000", "ctxt 9x");
        let err = parse_counters(Path::new("/p"), &bad, MEMINFO, VMSTAT).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/p/stat line 4: not an unsigned integer: \"ctxt 9x\""
        );

        let err = parse_counters(
            root(),
            STAT,
            &MEMINFO.replace("Buffers:", "Bufers:"),
            VMSTAT,
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "/proc/meminfo: no `Buffers` entry");

        let err = parse_counters(root(), STAT, "MemTotal: 5 MB\n", VMSTAT).unwrap_err();
        assert!(
            err.to_string()
                .contains("/proc/meminfo line 1: unit is not kB"),
            "{err}"
        );

        let err = parse_counters(root(), STAT, MEMINFO, "pgpgin\n").unwrap_err();
        assert!(
            err.to_string().starts_with("/proc/vmstat line 1: no value"),
            "{err}"
        );

        let err = parse_counters(root(), "cpu 1 2 3\nintr 1\n", MEMINFO, VMSTAT).unwrap_err();
        assert!(
            err.to_string().contains("fewer than 4 tick fields"),
            "{err}"
        );

        let err = parse_counters(root(), "intr 1\n", MEMINFO, VMSTAT).unwrap_err();
        assert_eq!(err.to_string(), "/proc/stat: no `cpu` entry");
    }

    #[test]
    fn row_serializes_with_vmstat_column_names() {
        let v = serde_json::to_value(derive_row(None, &a(), Duration::ZERO, 100, 4)).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        for col in [
            "r", "b", "swpd", "free", "buff", "cache", "si", "so", "bi", "bo", "in", "cs", "us",
            "sy", "id", "wa", "st",
        ] {
            assert!(keys.contains(&col), "missing {col} in {keys:?}");
        }
    }
}
