//! Per-process sampling: fixture /proc trees and live processes.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use mpslab::telemetry::procstat::{cpu_percent, sample, ProcError};
use mpslab::telemetry::vmstat::{clock_ticks_per_sec, page_size_kb};

fn fixture_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/proc/procstat")
}

/// Kills and reaps the child even when an assertion fails.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn fixture_worker_sample() {
    let s = sample(4242, &fixture_root()).unwrap();
    assert_eq!(s.stat.comm, "mpslab-worker");
    assert_eq!(s.stat.state, 'R');
    assert_eq!((s.stat.utime_ticks, s.stat.stime_ticks), (1234, 567));
    assert_eq!((s.stat.num_threads, s.stat.start_ticks), (14, 998877));
    let page = page_size_kb();
    assert_eq!(
        (s.vsize_kb, s.rss_kb, s.shared_kb),
        (524288 * page, 40960 * page, 8192 * page)
    );
}

#[test]
fn fixture_errors_name_the_file() {
    let err = sample(77, &fixture_root()).unwrap_err();
    assert!(matches!(err, ProcError::Malformed { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("procstat/77/stat: fewer than 22 fields"),
        "{msg}"
    );

    let err = sample(5, &fixture_root()).unwrap_err();
    assert!(matches!(err, ProcError::NotFound { pid: 5, .. }), "{err:?}");
}

#[test]
fn busy_child_uses_most_of_a_core() {
    // On a shared, overloaded box a plain busy loop gets under half a core. Its own session
    // (hence its own scheduler autogroup) with a raised priority lets it measure what it is
    // meant to: about one full core. Without root the boosts fail and the test may fail under
    // heavy load.
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "while :; do :; done"]);
    // SAFETY: setsid and nice are async-signal-safe and touch no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            libc::nice(-10);
            Ok(())
        });
    }
    // spawn() returns after exec, so the child is already in its own session here.
    let child = Reaped(cmd.spawn().unwrap());
    let pid = child.0.id() as i32;
    let group = |p: &str| std::fs::read_to_string(format!("/proc/{p}/autogroup")).ok();
    if group(&pid.to_string()).is_some() && group(&pid.to_string()) != group("self") {
        let _ = std::fs::write(format!("/proc/{pid}/autogroup"), "-10");
    }
    let proc_root = Path::new("/proc");
    let hz = clock_ticks_per_sec();
    let first = sample(pid, proc_root).unwrap();
    // A 3 s window keeps tick granularity (10 ms) and scheduler noise small.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let second = sample(pid, proc_root).unwrap();
    let pct = cpu_percent(&first, &second, hz).unwrap();
    assert!(
        pct > 50.0 && pct < 110.0,
        "busy loop at {pct:.1} % of a core"
    );
    assert_eq!(second.stat.comm, "sh");
    assert!(
        second.rss_kb > 100 && second.rss_kb < 100 * 1024,
        "sh RSS {} KiB",
        second.rss_kb
    );
}

#[test]
fn rss_follows_touched_memory() {
    let me = std::process::id() as i32;
    let before = sample(me, Path::new("/proc")).unwrap().rss_kb;
    let block = vec![1u8; 64 << 20]; // written, so every page is resident
    let during = sample(me, Path::new("/proc")).unwrap().rss_kb;
    std::hint::black_box(&block);
    drop(block);
    // Other tests in this binary may allocate too; 56 of 64 MiB must show up anyway.
    assert!(
        during >= before + 56 * 1024,
        "RSS {before} KiB -> {during} KiB after touching 64 MiB"
    );
}

#[test]
fn dead_pid_is_not_found() {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id() as i32;
    child.wait().unwrap();
    match sample(pid, Path::new("/proc")) {
        Err(ProcError::NotFound { pid: p, .. }) => assert_eq!(p, pid),
        other => panic!("reaped pid {pid} gave {other:?}"),
    }
}

#[test]
fn zombie_reads_as_state_z() {
    let mut child = Reaped(Command::new("true").spawn().unwrap());
    let pid = child.0.id() as i32;
    let deadline = Instant::now() + Duration::from_secs(60);
    let zombie = loop {
        let s = sample(pid, Path::new("/proc")).unwrap();
        if s.stat.state == 'Z' {
            break s;
        }
        assert!(Instant::now() < deadline, "child never exited: {s:?}");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(zombie.rss_kb, 0, "a zombie holds no memory");
    child.0.wait().unwrap();
}
