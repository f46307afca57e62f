//! systemd readiness protocol (`Type=notify`): READY, STATUS, WATCHDOG, RELOADING, STOPPING.
//!
//! Sending is a no-op without `NOTIFY_SOCKET`, so the daemon behaves the same when started by
//! hand. The variables are left in our environment (we keep pinging) and stripped from every
//! child's environment instead; see [`CHILD_ENV_DENYLIST`].

use std::time::Duration;

use sd_notify::NotifyState;

/// Variables that belong to systemd's supervision of *this* process and must never reach a
/// child, or the child could claim our readiness or watchdog.
pub const CHILD_ENV_DENYLIST: &[&str] = &[
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
];

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

pub fn reloading() {
    send(&[NotifyState::Reloading]);
}

pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// How often to ping the watchdog: half of `WATCHDOG_USEC`, or `None` when it is off.
///
/// As `sd_watchdog_enabled(3)`: a `WATCHDOG_PID` naming another process means the watchdog is
/// not ours; an absent one means it is.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// Remove the supervision variables from a child's environment.
pub fn scrub_child_env(cmd: &mut tokio::process::Command) {
    for var in CHILD_ENV_DENYLIST {
        cmd.env_remove(var);
    }
}
