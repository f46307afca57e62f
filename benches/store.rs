//! Writer throughput: tegrastats samples per second through the batching writer into a WAL
//! database with synchronous=FULL (what the daemon does), against the baseline of inserting the
//! same rows one transaction each, as a naive logger would.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mpslab::store::{self, Tag, TegraRow, WriteOp};

const LINE: &[u8] = b"RAM 6982/7620MB (lfb 2x1MB) SWAP 2640/16384MB (cached 202MB) CPU [97%@1984,96%@1984,95%@1984,97%@1984,98%@1984,96%@1984] EMC_FREQ 18%@3199 GR3D_FREQ 84%@[713] cpu@65.562C tj@65.562C VDD_IN 17946mW/15710mW";

fn row(i: u64) -> TegraRow {
    TegraRow {
        mono_ns: i,
        wall_ms: i as i64,
        tag: Tag::default(),
        raw: LINE.to_vec(),
        parsed_json: Some("{\"ram\":{\"used_mb\":6982,\"total_mb\":7620}}".into()),
        parse_error: None,
        gr3d_pct: Some(84.0),
        emc_pct: Some(18.0),
        ram_used_mb: Some(6982),
        power_mw: Some(17946.0),
    }
}

fn writer(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("store");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    const N: u64 = 2000;
    g.throughput(Throughput::Elements(N));
    g.bench_function("batching_writer_samples", |b| {
        let dir = tempfile::tempdir().unwrap();
        let (conn, _) = store::open(&dir.path().join("b.db")).unwrap();
        let (w, _join) = store::spawn_writer(conn);
        b.iter(|| {
            rt.block_on(async {
                for i in 0..N {
                    w.send(WriteOp::Tegra(row(i))).await.unwrap();
                }
                w.flush().await.unwrap();
            })
        });
    });
    g.bench_function("one_transaction_per_sample_baseline", |b| {
        let dir = tempfile::tempdir().unwrap();
        let (conn, _) = store::open(&dir.path().join("b.db")).unwrap();
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                for i in 0..N / 20 {
                    let r = row(i);
                    conn.execute(
                        "INSERT INTO tegrastats_samples(mono_ns, wall_ms, raw, parsed, gr3d_pct) VALUES(?1,?2,?3,?4,?5)",
                        rusqlite::params![r.mono_ns as i64, r.wall_ms, r.raw, r.parsed_json, r.gr3d_pct],
                    )
                    .unwrap();
                }
            }
            // Scaled to N rows so both lines report samples/s for the same element count.
            t.elapsed() * 20
        });
    });
    g.finish();
}

criterion_group!(benches, writer);
criterion_main!(benches);
