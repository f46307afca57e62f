//! The fake `nvidia-cuda-mps-control` reproduces the real binary's contract (research/mps.md
//! section 4.8), so the manager's tests exercise the code paths a Jetson runs.

mod mps_support;

use std::time::Duration;

use mps_support::*;

fn start_daemon(lab: &Lab) {
    let out = lab.run(&["-d"], "", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", combined(&out));
    assert!(eventually(Duration::from_secs(10), || lab
        .ui("get_server_list")
        .status
        .success()));
}

fn quit(lab: &Lab) {
    let out = lab.ui("quit");
    assert_eq!(out.status.code(), Some(0), "{}", combined(&out));
}

#[test]
fn version_help_and_argv_commands() {
    let lab = Lab::new();
    let v = lab.run(&["-v"], "", &[("FAKE_MPS_VERSION", "12060")]);
    assert_eq!((v.status.code(), stdout(&v).trim()), (Some(0), "12060"));
    let help = lab.run(&["--help"], "", &[]);
    assert!(
        stdout(&help).starts_with("CUDA MPS Control for Linux/Unix."),
        "{}",
        stdout(&help)
    );
    // Commands as argv and the v3 verbs are refused, so nothing can drift to an untested form.
    for args in [
        &["start_server", "-uid", "0"][..],
        &["-p", "3"][..],
        &["server", "create"][..],
    ] {
        let out = lab.run(args, "", &[]);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
    }
}

/// Matrix 1, 11, 13: start, readiness, defaults read back in their odd formats, a server.
#[test]
fn daemon_answers_defaults_and_servers() {
    let lab = Lab::new();
    start_daemon(&lab);
    // 13: a final command without a newline is accepted (k8s-device-plugin sends it so).
    let out = lab.ui("get_default_active_thread_percentage");
    assert_eq!(stdout(&out), "100.0\n");
    let out = lab.ui(
        "set_default_active_thread_percentage 25\nset_default_device_pinned_mem_limit 0 1044M\n\
         get_default_active_thread_percentage\nget_default_device_pinned_mem_limit 0\nget_server_list\n",
    );
    assert_eq!(
        stdout(&out),
        "25.0\n25.0\n1G\n",
        "set echoes, 1044M reads back as 1G, empty server list"
    );
    let uid = nix::unistd::geteuid().as_raw();
    assert!(lab.ui(&format!("start_server -uid {uid}")).status.success());
    assert!(eventually(Duration::from_secs(10), || stdout(
        &lab.ui("get_server_list")
    )
    .trim()
    .parse::<u32>()
    .is_ok()));
    let server: u32 = stdout(&lab.ui("get_server_list")).trim().parse().unwrap();
    assert!(eventually(Duration::from_secs(10), || stdout(
        &lab.ui(&format!("get_server_status {server}"))
    )
    .trim()
        == "ACTIVE"));
    assert_eq!(
        count(&lab.pipe(), Kind::Server),
        1,
        "the server is a real process"
    );
    let log = lab.control_log();
    for needle in [
        "Starting control daemon using socket",
        "NEW UI",
        "Cmd:set_default_active_thread_percentage 25",
        &format!("Starting new server {server} for user {uid}"),
        &format!("NEW SERVER {server}: Ready"),
        "UI closed",
    ] {
        assert!(log.contains(needle), "control.log lacks {needle:?}:\n{log}");
    }
    let line = log.lines().next().unwrap();
    assert!(
        line.starts_with('[') && line.contains(" Control "),
        "log format: {line}"
    );
    let server_log = std::fs::read_to_string(lab.log().join("server.log")).unwrap();
    assert!(
        server_log.contains("Active Threads Percentage set to 25.0"),
        "{server_log}"
    );
    // Unknown commands are rejected on stdout with exit 0.
    let out = lab.ui("lock_server");
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("lock_server"));
    quit(&lab);
    assert!(eventually(Duration::from_secs(10), || mps_processes(
        &lab.pipe()
    )
    .is_empty()));
    assert!(
        !lab.pipe().join("nvidia-cuda-mps-control.pid").exists(),
        "clean quit removes the pid file"
    );
    assert!(
        lab.pipe().join("control").exists(),
        "clean quit leaves the socket"
    );
    assert!(log_after_quit(&lab).contains(&format!("Server {server} exited with status 0")));
}

fn log_after_quit(lab: &Lab) -> String {
    lab.control_log()
}

/// Matrix 2: a second daemon on the same pipe dir is refused; the first is unharmed.
#[test]
fn double_start_is_refused() {
    let lab = Lab::new();
    start_daemon(&lab);
    for stream in ["stdout", "stderr"] {
        let out = lab.run(&["-d"], "", &[("FAKE_MPS_ERR_STREAM", stream)]);
        assert_eq!(out.status.code(), Some(1));
        assert!(combined(&out).contains("An instance of this daemon is already running"));
        let fg = lab.run(&["-f"], "", &[("FAKE_MPS_ERR_STREAM", stream)]);
        assert_eq!(fg.status.code(), Some(1));
    }
    assert_eq!(
        stdout(&lab.ui("get_default_active_thread_percentage")),
        "100.0\n"
    );
    assert_eq!(count(&lab.pipe(), Kind::Daemon), 1);
    quit(&lab);
}

/// Matrix 3 and 12: after kill -9 the files stay, the UI says "Cannot find..." (on either
/// stream), and a new `-d` reclaims the directory.
#[test]
fn stale_directory_after_kill_is_reclaimed() {
    let lab = Lab::new();
    start_daemon(&lab);
    let pid: i32 = std::fs::read_to_string(lab.pipe().join("nvidia-cuda-mps-control.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL).unwrap();
    assert!(eventually(Duration::from_secs(10), || count(
        &lab.pipe(),
        Kind::Daemon
    ) == 0));
    assert!(
        lab.pipe().join("control").exists()
            && lab.pipe().join("nvidia-cuda-mps-control.pid").exists()
    );
    for (stream, on_stdout) in [("stdout", true), ("stderr", false)] {
        let out = lab.run(&[], "get_server_list\n", &[("FAKE_MPS_ERR_STREAM", stream)]);
        assert_eq!(out.status.code(), Some(1));
        let text = if on_stdout {
            stdout(&out)
        } else {
            String::from_utf8_lossy(&out.stderr).into_owned()
        };
        assert_eq!(text.trim(), "Cannot find MPS control daemon process");
    }
    start_daemon(&lab);
    quit(&lab);
}

/// Matrix 4: Tegra has no default pipe directory.
#[test]
fn tegra_without_pipe_directory_refuses_to_start() {
    let lab = Lab::new();
    let mut cmd = std::process::Command::new(lab.control());
    cmd.arg("-d")
        .env_remove("CUDA_MPS_PIPE_DIRECTORY")
        .env("FAKE_MPS_TEGRA", "1");
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(combined(&out).contains("CUDA_MPS_PIPE_DIRECTORY"));
    let multi = lab.run(&["-d", "-multiuser-server"], "", &[("FAKE_MPS_TEGRA", "1")]);
    assert_eq!(
        multi.status.code(),
        Some(1),
        "-multiuser-server is not supported on Tegra"
    );
}

/// Matrix 5: a pipe path over 107 bytes: `-d` "succeeds" but nothing answers.
#[test]
fn overlong_pipe_path_starts_but_never_answers() {
    let lab = Lab::new();
    let long = lab.path().join("x".repeat(110));
    let pipe = long.display().to_string();
    let out = lab.run(&["-d"], "", &[("CUDA_MPS_PIPE_DIRECTORY", &pipe)]);
    assert_eq!(out.status.code(), Some(0));
    let ui = lab.run(
        &[],
        "get_server_list",
        &[("CUDA_MPS_PIPE_DIRECTORY", &pipe)],
    );
    assert_eq!(ui.status.code(), Some(1));
    assert!(combined(&ui).contains("Cannot find MPS control daemon process"));
    assert!(
        eventually(Duration::from_secs(10), || count(&long, Kind::Daemon) == 0),
        "the daemon exits"
    );
}

/// Matrix 6 (fake side): bare `quit` hangs on a wedged client; `quit -t` ends it.
#[test]
fn bare_quit_hangs_on_a_wedged_client() {
    let lab = Lab::new();
    start_daemon(&lab);
    let client = Sleeper::new();
    let out = lab.ui(&format!("fake_attach {}", client.pid()));
    assert_eq!(stdout(&out).trim(), "queued");
    assert!(eventually(Duration::from_secs(10), || {
        let server = stdout(&lab.ui("get_server_list"));
        !server.trim().is_empty()
            && stdout(&lab.ui(&format!("get_client_list {}", server.trim()))).trim()
                == client.pid().to_string()
    }));
    assert!(lab
        .ui(&format!("fake_wedge_client {}", client.pid()))
        .status
        .success());
    let mut hung = std::process::Command::new(lab.control())
        .env("CUDA_MPS_PIPE_DIRECTORY", lab.pipe())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut hung.stdin.take().unwrap(), b"quit\n").unwrap();
    let server_log = lab.log().join("server.log");
    assert!(eventually(Duration::from_secs(10), || {
        std::fs::read_to_string(&server_log)
            .unwrap_or_default()
            .contains("will not shutdown")
    }));
    assert!(
        hung.try_wait().unwrap().is_none(),
        "bare quit returned although a client is wedged"
    );
    let forced = lab.ui("quit -t 1");
    assert_eq!(forced.status.code(), Some(0));
    assert!(
        eventually(Duration::from_secs(10), || hung
            .try_wait()
            .unwrap()
            .is_some()),
        "the daemon exited"
    );
    assert!(eventually(Duration::from_secs(10), || mps_processes(
        &lab.pipe()
    )
    .is_empty()));
}

/// Matrix 9: a client of another UID is queued until the first UID's clients are gone.
#[test]
fn other_uid_is_queued_until_the_server_drains() {
    let lab = Lab::new();
    start_daemon(&lab);
    let (a, b) = (Sleeper::new(), Sleeper::new());
    assert_eq!(
        stdout(&lab.ui(&format!("fake_attach {} 1000", a.pid()))).trim(),
        "queued"
    );
    assert!(eventually(Duration::from_secs(10), || stdout(
        &lab.ui(&format!("ps -p {}", a.pid()))
    )
    .lines()
    .count()
        == 2));
    assert_eq!(
        stdout(&lab.ui(&format!("fake_attach {} 2000", b.pid()))).trim(),
        "queued"
    );
    let first = stdout(&lab.ui("get_server_list")).trim().to_owned();
    assert!(lab.ui(&format!("fake_detach {}", a.pid())).status.success());
    assert!(eventually(Duration::from_secs(15), || {
        let server = stdout(&lab.ui("get_server_list")).trim().to_owned();
        !server.is_empty()
            && server != first
            && stdout(&lab.ui(&format!("get_client_list {server}"))).trim() == b.pid().to_string()
    }));
    assert!(lab.control_log().contains(&format!(
        "NEW CLIENT {} from user 2000: Server is not ready",
        b.pid()
    )));
    quit_with_clients(&lab);
}

fn quit_with_clients(lab: &Lab) {
    assert_eq!(lab.ui("quit -t 1").status.code(), Some(0));
    assert!(eventually(Duration::from_secs(10), || mps_processes(
        &lab.pipe()
    )
    .is_empty()));
}

/// Matrix 10: a faulted server refuses new clients (807) until its clients are gone.
#[test]
fn fault_refuses_new_clients_until_the_group_exits() {
    let lab = Lab::new();
    start_daemon(&lab);
    let (a, b) = (Sleeper::new(), Sleeper::new());
    lab.ui(&format!("fake_attach {}", a.pid()));
    let server = wait_server(&lab);
    assert!(eventually(Duration::from_secs(10), || stdout(
        &lab.ui(&format!("get_client_list {server}"))
    )
    .trim()
        == a.pid().to_string()));
    assert!(lab.ui(&format!("fake_fault {server}")).status.success());
    assert_eq!(
        stdout(&lab.ui(&format!("get_server_status {server}"))).trim(),
        "FAULT"
    );
    let refused = lab.run(&["--fake-attach", &b.pid().to_string()], "", &[]);
    assert_ne!(refused.status.code(), Some(0));
    assert_eq!(stdout(&refused).trim(), "807");
    lab.ui(&format!("fake_detach {}", a.pid()));
    assert!(eventually(Duration::from_secs(10), || stdout(
        &lab.ui(&format!("get_server_status {server}"))
    )
    .trim()
        == "ACTIVE"));
    assert_eq!(
        stdout(&lab.ui(&format!("fake_attach {}", b.pid()))).trim(),
        "attached"
    );
    quit_with_clients(&lab);
}

fn wait_server(lab: &Lab) -> u32 {
    let mut server = 0;
    assert!(eventually(Duration::from_secs(10), || {
        server = stdout(&lab.ui("get_server_list"))
            .trim()
            .parse()
            .unwrap_or(0);
        server != 0 && stdout(&lab.ui(&format!("get_server_status {server}"))).trim() == "ACTIVE"
    }));
    server
}

/// A client whose process died is dropped by the daemon (it polls /proc).
#[test]
fn dead_clients_are_dropped() {
    let lab = Lab::new();
    start_daemon(&lab);
    let mut a = Sleeper::new();
    lab.ui(&format!("fake_attach {}", a.pid()));
    let server = wait_server(&lab);
    assert!(eventually(Duration::from_secs(10), || !stdout(
        &lab.ui(&format!("get_client_list {server}"))
    )
    .trim()
    .is_empty()));
    a.0.kill().unwrap();
    a.0.wait().unwrap();
    assert!(eventually(Duration::from_secs(10), || stdout(
        &lab.ui(&format!("get_client_list {server}"))
    )
    .trim()
    .is_empty()));
    quit(&lab);
}
