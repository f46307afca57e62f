//! The floor for `mpslab-worker`'s harness overhead: the same `ort` session setup and `run` call
//! in a plain loop, nothing else. Used by benches/worker_vs_python.sh.
//!
//! Usage: bare_ort_loop ORT_LIB MODEL SHAPE(1,3,48,192) THREADS ITERATIONS WARMUP
//! Prints one JSON object: median_ns (per iteration) and period_ns (loop wall time / iterations).

use std::time::Instant;

use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::Tensor;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, lib, model, shape, threads, iterations, warmup] = args.as_slice() else {
        return Err("usage: bare_ort_loop ORT_LIB MODEL SHAPE THREADS ITERATIONS WARMUP".into());
    };
    let shape: Vec<i64> = shape.split(',').map(str::parse).collect::<Result<_, _>>()?;
    let (threads, iterations, warmup): (usize, usize, usize) =
        (threads.parse()?, iterations.parse()?, warmup.parse()?);
    let env = ort::init_from(lib)?.build()?;
    let mut session = Session::builder(&env)?
        .with_optimization_level(GraphOptimizationLevel::All)?
        .with_intra_threads(threads)?
        .commit_from_file(model)?;
    let len = shape.iter().product::<i64>() as usize;
    let data: Vec<f32> = (0..len).map(|i| (i % 251) as f32 / 251.0).collect();
    let input = Tensor::from_array((shape, data))?;
    for _ in 0..warmup {
        session.run(ort::inputs![&input])?;
    }
    let mut times = vec![0u64; iterations];
    let loop_start = Instant::now();
    for t in times.iter_mut() {
        let t0 = Instant::now();
        session.run(ort::inputs![&input])?;
        *t = t0.elapsed().as_nanos() as u64;
    }
    let period = loop_start.elapsed().as_nanos() as u64 / iterations.max(1) as u64;
    times.sort_unstable();
    println!(
        "{{\"median_ns\":{},\"period_ns\":{}}}",
        times.get(iterations / 2).copied().unwrap_or(0),
        period
    );
    Ok(())
}
