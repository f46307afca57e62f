//! Per-process CPU time and memory of worker processes, read from `/proc/<pid>/stat` and
//! `/proc/<pid>/statm` (two small reads; cheaper than a `sysinfo` refresh).

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::vmstat::{monotonic_ns, page_size_kb};

/// The fields of `/proc/<pid>/stat` we use (see proc(5) for numbering).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PidStat {
    pub pid: i32,
    /// Executable name, at most 15 bytes, may contain spaces and parentheses.
    pub comm: String,
    /// `R`, `S`, `D`, `Z`, ...
    pub state: char,
    /// Field 14, in clock ticks.
    pub utime_ticks: u64,
    /// Field 15, in clock ticks.
    pub stime_ticks: u64,
    /// Field 20.
    pub num_threads: u64,
    /// Field 22: start time after boot in clock ticks; tells a reused pid apart.
    pub start_ticks: u64,
}

/// `/proc/<pid>/statm`, in pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statm {
    pub size_pages: u64,
    pub resident_pages: u64,
    pub shared_pages: u64,
}

/// One reading of one process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcSample {
    pub stat: PidStat,
    pub vsize_kb: u64,
    pub rss_kb: u64,
    pub shared_kb: u64,
    /// CLOCK_MONOTONIC in nanoseconds when the files were read.
    pub mono_ns: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// The process has exited (and been reaped) or never existed.
    #[error("process {pid} not found under {}", proc_root.display())]
    NotFound { pid: i32, proc_root: PathBuf },
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {reason}: {text:?}", path.display())]
    Malformed {
        path: PathBuf,
        reason: &'static str,
        text: String,
    },
}

/// Why a text did not parse; the caller adds the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub &'static str);

/// Parses `/proc/<pid>/stat`. `comm` is taken up to the **last** `)` because the name itself
/// may contain `)` and spaces.
pub fn parse_pid_stat(text: &str) -> Result<PidStat, ParseError> {
    let open = text.find('(').ok_or(ParseError("no `(` before comm"))?;
    let close = text.rfind(')').ok_or(ParseError("no `)` after comm"))?;
    if close < open {
        return Err(ParseError("`)` before `(`"));
    }
    let pid = text[..open]
        .trim()
        .parse::<i32>()
        .map_err(|_| ParseError("pid is not an integer"))?;
    let comm = text[open + 1..close].to_owned();
    // Fields from 3 (state) on; index 0 here is field 3.
    let rest: Vec<&str> = text[close + 1..].split_ascii_whitespace().collect();
    let field = |n: usize| -> Result<&str, ParseError> {
        rest.get(n - 3)
            .copied()
            .ok_or(ParseError("fewer than 22 fields"))
    };
    let number = |n: usize| -> Result<u64, ParseError> {
        field(n)?
            .parse::<u64>()
            .map_err(|_| ParseError("a numeric field is not an unsigned integer"))
    };
    let mut state_chars = field(3)?.chars();
    let state = match (state_chars.next(), state_chars.next()) {
        (Some(c), None) => c,
        _ => return Err(ParseError("state is not one character")),
    };
    Ok(PidStat {
        pid,
        comm,
        state,
        utime_ticks: number(14)?,
        stime_ticks: number(15)?,
        num_threads: number(20)?,
        start_ticks: number(22)?,
    })
}

/// Parses `/proc/<pid>/statm` (`size resident shared text lib data dt`).
pub fn parse_statm(text: &str) -> Result<Statm, ParseError> {
    let mut nums = text.split_ascii_whitespace().map(str::parse::<u64>);
    let mut next = || match nums.next() {
        Some(Ok(v)) => Ok(v),
        Some(Err(_)) => Err(ParseError("a field is not an unsigned integer")),
        None => Err(ParseError("fewer than 3 fields")),
    };
    Ok(Statm {
        size_pages: next()?,
        resident_pages: next()?,
        shared_pages: next()?,
    })
}

/// Builds a sample from the two texts (pure).
pub fn sample_from_texts(
    stat: &str,
    statm: &str,
    page_kb: u64,
    mono_ns: u64,
) -> Result<ProcSample, (&'static str, ParseError)> {
    let stat = parse_pid_stat(stat).map_err(|e| ("stat", e))?;
    let statm = parse_statm(statm).map_err(|e| ("statm", e))?;
    Ok(ProcSample {
        stat,
        vsize_kb: statm.size_pages.saturating_mul(page_kb),
        rss_kb: statm.resident_pages.saturating_mul(page_kb),
        shared_kb: statm.shared_pages.saturating_mul(page_kb),
        mono_ns,
    })
}

/// Reads `<proc_root>/<pid>/stat` and `statm`. Blocking (two small reads); call from
/// `spawn_blocking` on the runtime. A process that is gone gives [`ProcError::NotFound`].
pub fn sample(pid: i32, proc_root: &Path) -> Result<ProcSample, ProcError> {
    let dir = proc_root.join(pid.to_string());
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(|source| {
            // ESRCH: the process exited between open and read.
            if source.kind() == ErrorKind::NotFound || source.raw_os_error() == Some(libc::ESRCH) {
                ProcError::NotFound {
                    pid,
                    proc_root: proc_root.to_path_buf(),
                }
            } else {
                ProcError::Io { path, source }
            }
        })
    };
    let mono_ns = monotonic_ns();
    let stat = read("stat")?;
    let statm = read("statm")?;
    sample_from_texts(&stat, &statm, page_size_kb(), mono_ns).map_err(
        |(file, ParseError(reason))| ProcError::Malformed {
            path: dir.join(file),
            reason,
            text: if file == "stat" { stat } else { statm },
        },
    )
}

/// CPU use between two samples of the same process, in percent of one core (a process busy on
/// two cores reads 200). `None` when the samples are of different processes (pid reused), out
/// of order, or taken at the same instant.
pub fn cpu_percent(prev: &ProcSample, cur: &ProcSample, hz: u64) -> Option<f64> {
    if prev.stat.pid != cur.stat.pid || prev.stat.start_ticks != cur.stat.start_ticks || hz == 0 {
        return None;
    }
    let elapsed_ns = cur.mono_ns.checked_sub(prev.mono_ns).filter(|&ns| ns > 0)?;
    let ticks = |s: &ProcSample| s.stat.utime_ticks.saturating_add(s.stat.stime_ticks);
    let used = ticks(cur).saturating_sub(ticks(prev)) as f64 / hz as f64;
    Some(100.0 * used / (elapsed_ns as f64 / 1e9))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 (worker (gpu) 1) S 1 4242 4242 0 -1 4194560 1500 0 0 0 \
                        730 120 0 0 20 0 9 0 108781 3133440 379 18446744073709551615 1 2 3\n";

    #[test]
    fn comm_with_spaces_and_parens_does_not_shift_fields() {
        let s = parse_pid_stat(STAT).unwrap();
        assert_eq!(s.pid, 4242);
        assert_eq!(s.comm, "worker (gpu) 1");
        assert_eq!(s.state, 'S');
        assert_eq!((s.utime_ticks, s.stime_ticks), (730, 120));
        assert_eq!((s.num_threads, s.start_ticks), (9, 108781));
    }

    #[test]
    fn truncated_or_garbled_stat_is_an_error() {
        assert_eq!(
            parse_pid_stat("12 (x) S 1 2 3").unwrap_err(),
            ParseError("fewer than 22 fields")
        );
        assert_eq!(
            parse_pid_stat("12 x S").unwrap_err(),
            ParseError("no `(` before comm")
        );
        let bad = STAT.replace(" 730 ", " 7x0 ");
        assert!(parse_pid_stat(&bad).is_err());
    }

    #[test]
    fn statm_pages_become_kib() {
        let s = sample_from_texts(STAT, "765 404 375 5 0 123 0\n", 4, 7).unwrap();
        assert_eq!(
            (s.vsize_kb, s.rss_kb, s.shared_kb, s.mono_ns),
            (3060, 1616, 1500, 7)
        );
        assert_eq!(
            sample_from_texts(STAT, "765 404\n", 4, 0).unwrap_err(),
            ("statm", ParseError("fewer than 3 fields"))
        );
    }

    fn at(ticks: u64, mono_ns: u64) -> ProcSample {
        let mut s = sample_from_texts(STAT, "1 1 1", 4, mono_ns).unwrap();
        s.stat.utime_ticks = ticks;
        s.stat.stime_ticks = 0;
        s
    }

    #[test]
    fn cpu_percent_is_per_core() {
        // 150 ticks at 100 Hz over 1 s = 1.5 cores.
        let p = cpu_percent(&at(100, 1_000_000_000), &at(250, 2_000_000_000), 100).unwrap();
        assert!((p - 150.0).abs() < 1e-9, "{p}");
        let p = cpu_percent(&at(100, 0), &at(125, 500_000_000), 100).unwrap();
        assert!((p - 50.0).abs() < 1e-9, "{p}");
    }

    #[test]
    fn cpu_percent_refuses_mismatched_samples() {
        assert_eq!(cpu_percent(&at(1, 5), &at(2, 5), 100), None, "same instant");
        assert_eq!(cpu_percent(&at(1, 9), &at(2, 5), 100), None, "out of order");
        let mut reused = at(2, 10);
        reused.stat.start_ticks += 1;
        assert_eq!(cpu_percent(&at(1, 5), &reused, 100), None, "pid reused");
    }
}
