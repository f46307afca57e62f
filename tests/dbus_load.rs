//! Issue 6, acceptance 2: the real mpslabd under 20 concurrent D-Bus clients answers every call,
//! and telemetry keeps flowing meanwhile: no gap between stored tegrastats samples (100 ms
//! interval) exceeds two intervals during the load.

mod common;

use std::time::{Duration, Instant};

use common::*;
use mpslab::ctl::ManagerProxy;
use mpslab::telemetry::vmstat::monotonic_ns;

const CLIENTS: usize = 20;
const CALLS_PER_CLIENT: usize = 500;
const INTERVAL_MS: u64 = 100;
const MAX_GAP_NS: u64 = 2 * INTERVAL_MS * 1_000_000;

async fn proxy(address: &str) -> ManagerProxy<'static> {
    let conn = zbus::connection::Builder::address(address)
        .unwrap()
        .build()
        .await
        .unwrap();
    // Every property read must reach the daemon, not a client-side cache.
    ManagerProxy::builder(&conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap()
}

/// One call of the mix; `Err` names the call that failed.
async fn call(p: &ManagerProxy<'static>, i: usize) -> Result<(), String> {
    let since = mpslab::store::now_ms() - 2000;
    let r = match i % 7 {
        0 => p.version().await.map(|v| assert!(!v.is_empty())),
        1 => p.mps_state().await.map(drop),
        2 => p.samplers().await.map(drop),
        3 => p.queue_length().await.map(drop),
        4 => p.list_runs(20).await.map(drop),
        5 => p.get_status().await.map(|s| assert!(s.starts_with('{'))),
        _ => p.get_samples("tegrastats", since, 5).await.map(drop),
    };
    r.map_err(|e| format!("call kind {}: {e}", i % 7))
}

#[test]
fn twenty_clients_do_not_starve_telemetry() {
    let bus = Bus::session();
    let cfg = TestConfig::new("");
    let fake = repo().join("tests/fixtures/fake-tegrastats");
    let text = std::fs::read_to_string(&cfg.path).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("tegrastats_path"))
        .unwrap()
        .to_string();
    cfg.rewrite(&text.replacen(
        &line,
        &format!(
            "tegrastats_path = \"{}\"\ntegrastats_interval_ms = {INTERVAL_MS}",
            fake.display()
        ),
        1,
    ));
    let mut daemon = Daemon::spawn(&bus, &cfg, None, &[]);
    daemon.wait_ready(&bus);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let address = bus.address.clone();
    let (failures, calls, window) = rt.block_on(async move {
        // Telemetry must be flowing before the load starts, or the gap check proves nothing.
        let p = proxy(&address).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let lines = p.get_samples("tegrastats", 0, 10).await.unwrap_or_default();
            if lines.lines().filter(|l| !l.trim().is_empty()).count() >= 3 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no tegrastats samples stored within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        let mut clients = Vec::new();
        for _ in 0..CLIENTS {
            clients.push(proxy(&address).await);
        }
        let start_ns = monotonic_ns();
        let started = Instant::now();
        let mut tasks = Vec::new();
        for (c, p) in clients.into_iter().enumerate() {
            tasks.push(tokio::spawn(async move {
                let mut failures = Vec::new();
                for i in 0..CALLS_PER_CLIENT {
                    if let Err(e) = call(&p, i + c).await {
                        failures.push(format!("client {c} call {i}: {e}"));
                    }
                }
                failures
            }));
        }
        let mut failures = Vec::new();
        for t in tasks {
            failures.extend(t.await.unwrap());
        }
        let end_ns = monotonic_ns();
        eprintln!(
            "{} calls in {:.1} s ({:.0} calls/s)",
            CLIENTS * CALLS_PER_CLIENT,
            started.elapsed().as_secs_f64(),
            (CLIENTS * CALLS_PER_CLIENT) as f64 / started.elapsed().as_secs_f64()
        );
        (failures, CLIENTS * CALLS_PER_CLIENT, (start_ns, end_ns))
    });
    assert!(
        failures.is_empty(),
        "{} of {calls} calls failed, first: {:?}\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        daemon.log_text()
    );

    // A clean stop flushes every sample the writer still holds.
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    let status = daemon
        .wait_exit(Duration::from_secs(60))
        .expect("mpslabd did not exit on SIGTERM");
    assert!(status.success(), "{status}\n{}", daemon.log_text());

    let conn = rusqlite::Connection::open(cfg.db()).unwrap();
    let (start_ns, end_ns) = window;
    let mut stmt = conn
        .prepare(
            "SELECT mono_ns FROM tegrastats_samples WHERE mono_ns > ?1 AND mono_ns < ?2 ORDER BY mono_ns",
        )
        .unwrap();
    let inside: Vec<u64> = stmt
        .query_map([start_ns as i64, end_ns as i64], |r| r.get::<_, i64>(0))
        .unwrap()
        .map(|r| r.unwrap() as u64)
        .collect();
    // The window's edges count too: a sampler that stalled for the whole load leaves no
    // samples inside, and the edges then make one gap of the full window.
    let points: Vec<u64> = std::iter::once(start_ns)
        .chain(inside.iter().copied())
        .chain(std::iter::once(end_ns))
        .collect();
    let (worst_at, worst) = points
        .windows(2)
        .map(|w| w[1] - w[0])
        .enumerate()
        .max_by_key(|&(_, g)| g)
        .unwrap();
    eprintln!(
        "{} samples in a {:.1} s load window; largest gap {:.0} ms",
        inside.len(),
        (end_ns - start_ns) as f64 / 1e9,
        worst as f64 / 1e6
    );
    assert!(
        worst <= MAX_GAP_NS,
        "gap of {:.0} ms between stored samples {} and {} of the load window (limit {} ms)\n{}",
        worst as f64 / 1e6,
        worst_at,
        worst_at + 1,
        MAX_GAP_NS / 1_000_000,
        daemon.log_text()
    );
}
