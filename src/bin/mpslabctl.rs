//! `mpslabctl`: control and query mpslabd. See `mpslabctl --help`.

use std::process::ExitCode;

use clap::Parser;
use mpslab::{ctl, exit};

fn main() -> ExitCode {
    let cli = ctl::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mpslabctl: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILED as u8);
        }
    };
    match runtime.block_on(ctl::run(cli)) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("mpslabctl: {}", e.message);
            ExitCode::from(e.code as u8)
        }
    }
}
