//! `mpslab-worker`: runs one ONNX model in a timed loop for the mpslab phase executor.
//! All logic lives in `mpslab::experiment::worker`; see `mpslab-worker --help`.

use clap::Parser;
use mpslab::experiment::worker::{self, WorkerArgs};

fn main() {
    std::process::exit(worker::main(WorkerArgs::parse()));
}
