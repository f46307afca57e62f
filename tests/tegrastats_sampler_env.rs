//! The tegrastats child must not inherit the daemon's systemd notify socket or watchdog, gets
//! `--interval N` only, and reads nothing from stdin. Own test binary: it changes our environment.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use mpslab::telemetry::tegrastats_sampler::{spawn, TegraSamplerConfig};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn child_gets_clean_env_interval_and_null_stdin() {
    std::env::set_var("NOTIFY_SOCKET", "/run/systemd/notify");
    std::env::set_var("WATCHDOG_USEC", "30000000");
    std::env::set_var("WATCHDOG_PID", "1");
    std::env::set_var("MPSLAB_TEST_MARKER", "kept");

    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report");
    let fake = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake-tegrastats");
    let script = dir.path().join("tegrastats");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n{{ echo \"args=$*\"; echo \"stdin=$(readlink /proc/self/fd/0)\"; env; }} > '{0}.tmp'\n\
             mv '{0}.tmp' '{0}'\nexec '{1}' \"$@\"\n",
            report.display(),
            fake.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();

    let (rtx, mut readings) = mpsc::channel(16);
    let (etx, _events) = mpsc::channel(16);
    let cancel = CancellationToken::new();
    let handle = spawn(
        TegraSamplerConfig::new(&script, 150),
        rtx,
        etx,
        cancel.clone(),
    );
    let r = tokio::time::timeout(Duration::from_secs(20), readings.recv())
        .await
        .expect("no reading")
        .unwrap();
    assert!(r.parsed.is_ok());

    let text = std::fs::read_to_string(&report).unwrap();
    assert!(text.lines().any(|l| l == "args=--interval 150"), "{text}");
    assert!(text.lines().any(|l| l == "stdin=/dev/null"), "{text}");
    assert!(text.contains("MPSLAB_TEST_MARKER=kept"), "{text}");
    for banned in ["NOTIFY_SOCKET=", "WATCHDOG_USEC=", "WATCHDOG_PID="] {
        assert!(
            !text.contains(banned),
            "{banned} leaked to the child:\n{text}"
        );
    }
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(20), handle.join)
        .await
        .unwrap()
        .unwrap();
}
