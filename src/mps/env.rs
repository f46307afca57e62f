//! The one place that builds a worker's environment for MPS on and MPS off.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// How a worker process should see MPS.
#[derive(Debug, Clone, PartialEq)]
pub enum MpsClientMode {
    /// No MPS: every `CUDA_MPS_*` variable is removed so CUDA makes a plain context (F11).
    Off,
    /// Attach to our control daemon.
    On {
        pipe_dir: PathBuf,
        log_dir: PathBuf,
        /// Per-worker `CUDA_MPS_ACTIVE_THREAD_PERCENTAGE` (can only lower the daemon default).
        active_thread_percentage: Option<f64>,
        /// Per-worker `CUDA_MPS_PINNED_DEVICE_MEM_LIMIT`, e.g. `0=1G`.
        pinned_mem_limit: Option<String>,
    },
}

/// Variables a child must never inherit: CUDA MPS settings (they are set explicitly or not at
/// all) and systemd's notify/watchdog hand-over, which belongs to mpslabd alone.
pub fn is_managed_var(name: &OsStr) -> bool {
    let name = name.as_bytes();
    name.starts_with(b"CUDA_MPS_") || name == b"NOTIFY_SOCKET" || name.starts_with(b"WATCHDOG_")
}

/// Builds a worker's environment from `base` (normally the daemon's own environment).
pub fn worker_env(
    base: impl IntoIterator<Item = (OsString, OsString)>,
    mode: &MpsClientMode,
) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = base
        .into_iter()
        .filter(|(k, _)| !is_managed_var(k))
        .collect();
    if let MpsClientMode::On {
        pipe_dir,
        log_dir,
        active_thread_percentage,
        pinned_mem_limit,
    } = mode
    {
        env.push((
            "CUDA_MPS_PIPE_DIRECTORY".into(),
            pipe_dir.clone().into_os_string(),
        ));
        env.push((
            "CUDA_MPS_LOG_DIRECTORY".into(),
            log_dir.clone().into_os_string(),
        ));
        if let Some(pct) = active_thread_percentage {
            env.push((
                "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE".into(),
                pct.to_string().into(),
            ));
        }
        if let Some(limit) = pinned_mem_limit {
            env.push(("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT".into(), limit.into()));
        }
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Vec<(OsString, OsString)> {
        [
            ("PATH", "/usr/bin"),
            ("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps"),
            ("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "10"),
            ("CUDA_MPS_LOG_DIRECTORY", "/var/log/nvidia-mps"),
            ("NOTIFY_SOCKET", "/run/systemd/notify"),
            ("WATCHDOG_USEC", "30000000"),
            ("WATCHDOG_PID", "1"),
            ("CUDA_VISIBLE_DEVICES", "0"),
        ]
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect()
    }

    fn get<'a>(env: &'a [(OsString, OsString)], key: &str) -> Option<&'a OsStr> {
        env.iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_os_str())
    }

    #[test]
    fn mps_off_strips_every_mps_and_systemd_variable() {
        let env = worker_env(base(), &MpsClientMode::Off);
        for (key, _) in &env {
            let key = key.to_string_lossy();
            assert!(
                !key.starts_with("CUDA_MPS_"),
                "{key} leaked into an MPS-off worker"
            );
            assert!(
                key != "NOTIFY_SOCKET" && !key.starts_with("WATCHDOG_"),
                "{key} leaked"
            );
        }
        assert_eq!(get(&env, "PATH"), Some(OsStr::new("/usr/bin")));
        assert_eq!(get(&env, "CUDA_VISIBLE_DEVICES"), Some(OsStr::new("0")));
        assert_eq!(env.len(), 2);
    }

    #[test]
    fn mps_on_points_at_our_daemon_and_replaces_inherited_values() {
        let mode = MpsClientMode::On {
            pipe_dir: "/run/mpslab/mps".into(),
            log_dir: "/var/log/mpslab/mps".into(),
            active_thread_percentage: Some(25.0),
            pinned_mem_limit: Some("0=1G".into()),
        };
        let env = worker_env(base(), &mode);
        let mps: Vec<_> = env
            .iter()
            .filter(|(k, _)| k.to_string_lossy().starts_with("CUDA_MPS_"))
            .collect();
        assert_eq!(mps.len(), 4, "exactly one value per MPS variable: {mps:?}");
        assert_eq!(
            get(&env, "CUDA_MPS_PIPE_DIRECTORY"),
            Some(OsStr::new("/run/mpslab/mps"))
        );
        assert_eq!(
            get(&env, "CUDA_MPS_LOG_DIRECTORY"),
            Some(OsStr::new("/var/log/mpslab/mps"))
        );
        assert_eq!(
            get(&env, "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"),
            Some(OsStr::new("25"))
        );
        assert_eq!(
            get(&env, "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"),
            Some(OsStr::new("0=1G"))
        );
        assert_eq!(get(&env, "NOTIFY_SOCKET"), None);
        assert_eq!(get(&env, "WATCHDOG_USEC"), None);
    }

    #[test]
    fn mps_on_without_per_worker_limits_sets_only_directories() {
        let mode = MpsClientMode::On {
            pipe_dir: "/p".into(),
            log_dir: "/l".into(),
            active_thread_percentage: None,
            pinned_mem_limit: None,
        };
        let env = worker_env(base(), &mode);
        assert_eq!(get(&env, "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"), None);
        assert_eq!(get(&env, "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"), None);
        assert_eq!(get(&env, "CUDA_MPS_PIPE_DIRECTORY"), Some(OsStr::new("/p")));
    }
}
