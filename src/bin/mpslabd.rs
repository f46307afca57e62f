//! `mpslabd`: the mpslab daemon. See `mpslabd --help`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use mpslab::{config, daemon, exit, logging};

/// Runs concurrent-inference experiments with and without CUDA MPS on an NVIDIA Jetson, samples
/// tegrastats and vmstat into SQLite, and serves org.mpslab.Lab1 on D-Bus.
///
/// Normally started by systemd (mpslabd.service). Configuration: /etc/mpslab/mpslab.toml, then
/// /etc/mpslab/conf.d/*.toml in name order (later files override earlier ones).
#[derive(Parser, Debug)]
#[command(name = "mpslabd", version, about, long_about)]
struct Args {
    /// Configuration file; drop-ins are read from conf.d/ beside it.
    #[arg(long, value_name = "PATH", env = "MPSLAB_CONFIG")]
    config: Option<PathBuf>,
    /// Serve on the session bus instead of the system bus (development and tests).
    #[arg(long)]
    session_bus: bool,
    /// Validate the configuration and exit: 0 when valid, 78 with the error otherwise.
    #[arg(long)]
    check_config: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = match config::load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mpslabd: invalid configuration: {e}");
            return ExitCode::from(exit::CONFIG as u8);
        }
    };
    if args.check_config {
        let files: Vec<String> = cfg
            .sources
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        if files.is_empty() {
            println!("configuration OK (no file found; compiled-in defaults)");
        } else {
            println!("configuration OK: {}", files.join(", "));
        }
        println!(
            "{} model(s), {} experiment(s)",
            cfg.models.len(),
            cfg.experiments.len()
        );
        return ExitCode::SUCCESS;
    }
    logging::init("mpslabd", &cfg.daemon.log_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mpslabd: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILED as u8);
        }
    };
    let opts = daemon::Options {
        config_path: args.config,
        session_bus: args.session_bus,
    };
    match runtime.block_on(daemon::run(opts, cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(daemon::DaemonError::Config(e)) => {
            tracing::error!("invalid configuration: {e}");
            ExitCode::from(exit::CONFIG as u8)
        }
        Err(e) => {
            tracing::error!("mpslabd failed: {e}");
            ExitCode::from(exit::FAILED as u8)
        }
    }
}
