//! The async vmstat sampler over synthetic /proc trees: rows, drops, cancellation, read errors.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mpslab::telemetry::vmstat::{
    clock_ticks_per_sec, derive_row, page_size_kb, read_counters, run_sampler, VmstatReading,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const FILES: [&str; 3] = ["stat", "meminfo", "vmstat"];
const PATIENCE: Duration = Duration::from_secs(60);

fn fixture(state: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/proc/research_example")
        .join(state)
}

/// Copies a fixture state into `dir` file by file, each via rename so a read never sees half a file.
fn install(state: &str, dir: &Path) {
    for f in FILES {
        let tmp = dir.join(format!(".{f}.tmp"));
        std::fs::copy(fixture(state).join(f), &tmp).unwrap();
        std::fs::rename(&tmp, dir.join(f)).unwrap();
    }
}

async fn recv(rx: &mut mpsc::Receiver<VmstatReading>) -> VmstatReading {
    tokio::time::timeout(PATIENCE, rx.recv())
        .await
        .expect("a reading within the patience window")
        .expect("sampler still running")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_reading_is_since_boot_and_later_ones_are_deltas() {
    let dir = tempfile::tempdir().unwrap();
    install("a", dir.path());
    let (tx, mut rx) = mpsc::channel(64);
    let cancel = CancellationToken::new();
    let dropped = Arc::new(AtomicU64::new(0));
    let task = tokio::spawn(run_sampler(
        dir.path().to_path_buf(),
        Duration::from_millis(200),
        tx,
        cancel.clone(),
        dropped.clone(),
    ));

    let a = read_counters(&fixture("a")).unwrap();
    let b = read_counters(&fixture("b")).unwrap();
    let (hz, page_kb) = (clock_ticks_per_sec(), page_size_kb());
    let first = recv(&mut rx).await;
    assert_eq!(first.raw, a);
    assert_eq!(first.row, derive_row(None, &a, Duration::ZERO, hz, page_kb));
    assert!(first.wall_ms > 1_600_000_000_000, "wall clock in Unix ms");

    // Swap right after a read, so the next read (200 ms away) sees all of state B.
    install("b", dir.path());
    let mut prev = first;
    let delta = loop {
        let next = recv(&mut rx).await;
        assert!(next.mono_ns > prev.mono_ns, "monotonic stamps increase");
        if next.raw == b {
            break (prev, next);
        }
        prev = next;
    };
    let (before, after) = delta;
    assert_eq!(before.raw, a, "the reading before B is still A");
    let elapsed = Duration::from_nanos(after.mono_ns - before.mono_ns);
    assert_eq!(after.row, derive_row(Some(&a), &b, elapsed, hz, page_kb));
    // 4321 context switches over ~0.2 s: a per-second rate, not a per-interval count.
    assert!(after.row.cs > 4321, "cs is per second: {}", after.row.cs);

    cancel.cancel();
    tokio::time::timeout(PATIENCE, task)
        .await
        .expect("sampler stops on cancel")
        .unwrap();
    assert_eq!(dropped.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_channel_drops_instead_of_blocking() {
    let dir = tempfile::tempdir().unwrap();
    install("a", dir.path());
    let (tx, mut rx) = mpsc::channel(1);
    let cancel = CancellationToken::new();
    let dropped = Arc::new(AtomicU64::new(0));
    let task = tokio::spawn(run_sampler(
        dir.path().to_path_buf(),
        Duration::from_millis(10),
        tx,
        cancel.clone(),
        dropped.clone(),
    ));
    tokio::time::timeout(PATIENCE, async {
        while dropped.load(Ordering::Relaxed) < 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("drops are counted while nobody receives");
    cancel.cancel();
    tokio::time::timeout(PATIENCE, task)
        .await
        .expect("a sampler with a full channel still stops on cancel")
        .unwrap();
    let kept = rx.recv().await.expect("the one reading that fitted");
    assert_eq!(kept.raw, read_counters(&fixture("a")).unwrap());
    assert!(
        rx.recv().await.is_none(),
        "sender dropped when the sampler ends"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_proc_is_survived() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, mut rx) = mpsc::channel(8);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(run_sampler(
        dir.path().to_path_buf(),
        Duration::from_millis(10),
        tx,
        cancel.clone(),
        Arc::new(AtomicU64::new(0)),
    ));
    // Files missing for a good number of ticks: every read fails and is logged.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(rx.try_recv().is_err(), "no reading without files");
    assert!(
        !task.is_finished(),
        "the sampler keeps going after read errors"
    );
    install("a", dir.path());
    let reading = recv(&mut rx).await;
    assert_eq!(reading.raw, read_counters(&fixture("a")).unwrap());
    cancel.cancel();
    tokio::time::timeout(PATIENCE, task).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_receiver_ends_the_sampler() {
    let dir = tempfile::tempdir().unwrap();
    install("a", dir.path());
    let (tx, rx) = mpsc::channel(8);
    drop(rx);
    let task = tokio::spawn(run_sampler(
        dir.path().to_path_buf(),
        Duration::from_millis(10),
        tx,
        CancellationToken::new(),
        Arc::new(AtomicU64::new(0)),
    ));
    tokio::time::timeout(PATIENCE, task)
        .await
        .expect("sampler returns once nobody listens")
        .unwrap();
}
