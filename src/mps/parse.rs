//! Pure parsers for what `nvidia-cuda-mps-control` and the kernel print (no I/O).
//!
//! The real binary's reply formats vary between drivers (`25.0` vs `25`, `1G` vs `1044M`,
//! research/mps.md F13), so every parser here is tolerant.

use std::path::Path;

/// Longest `sun_path` a unix socket path may use (108 bytes including the NUL).
pub const SUN_PATH_MAX: usize = 107;

/// Length in bytes of `<pipe_dir>/control`, the socket the control daemon binds.
pub fn control_socket_len(pipe_dir: &Path) -> usize {
    pipe_dir.join("control").as_os_str().len()
}

/// First non-empty line of a reply, trimmed.
pub fn first_line(reply: &str) -> Option<&str> {
    reply.lines().map(str::trim).find(|l| !l.is_empty())
}

/// `100.0`, `25`, ` 25.0 ` -> percentage.
pub fn parse_percentage(reply: &str) -> Option<f64> {
    let value: f64 = first_line(reply)?.parse().ok()?;
    (value.is_finite() && (0.0..=100.0).contains(&value)).then_some(value)
}

/// Whether a read-back percentage is the one we set (the daemon prints one decimal).
pub fn percentages_match(wanted: f64, reported: f64) -> bool {
    (wanted - reported).abs() < 0.05
}

/// `1G`, `1024M`, `512m` -> MiB.
pub fn parse_mem_limit_mib(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.len().checked_sub(1)?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    match unit {
        "G" | "g" => number.checked_mul(1024),
        "M" | "m" => Some(number),
        _ => None,
    }
}

/// The daemon reports limits of 1 GiB and more as whole GiB (`1044M` reads back as `1G`), so
/// large limits are compared at GiB granularity.
pub fn mem_limits_match(wanted_mib: u64, reported_mib: u64) -> bool {
    if wanted_mib >= 1024 {
        wanted_mib / 1024 == reported_mib / 1024
    } else {
        wanted_mib == reported_mib
    }
}

/// One `<device>=<limit>` entry of a pinned-memory setting such as `0=1G,1=512M`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedLimit {
    /// Device ordinal or UUID, passed through unchanged (the daemon does not translate them).
    pub device: String,
    /// The limit as given (`1G`), which is what the daemon is sent.
    pub value: String,
    pub mib: u64,
}

/// Parses `0=1G,1=512M` (the `CUDA_MPS_PINNED_DEVICE_MEM_LIMIT` syntax).
pub fn parse_pinned_spec(spec: &str) -> Result<Vec<PinnedLimit>, String> {
    let mut limits = Vec::new();
    for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (device, value) = entry
            .split_once('=')
            .ok_or_else(|| format!("pinned memory limit entry `{entry}` is not <device>=<N>M|G"))?;
        let (device, value) = (device.trim(), value.trim());
        if device.is_empty() || device.contains(char::is_whitespace) {
            return Err(format!("pinned memory limit entry `{entry}` has no device"));
        }
        let mib = parse_mem_limit_mib(value).ok_or_else(|| {
            format!("pinned memory limit `{value}` for device {device} is not <N>M or <N>G")
        })?;
        limits.push(PinnedLimit {
            device: device.to_owned(),
            value: value.to_owned(),
            mib,
        });
    }
    if limits.is_empty() {
        return Err(format!("pinned memory limit `{spec}` names no device"));
    }
    Ok(limits)
}

/// PIDs separated by any whitespace (`get_server_list`, `get_client_list`). A token that is not
/// a PID means the daemon answered with an error line, which is returned.
pub fn parse_pid_list(reply: &str) -> Result<Vec<u32>, String> {
    reply
        .split_whitespace()
        .map(|tok| tok.parse::<u32>().map_err(|_| reply.trim().to_owned()))
        .collect()
}

/// Text of a control.log / server.log line without its `[date time Tag pid]` prefix.
pub fn log_message(line: &str) -> &str {
    match (line.starts_with('['), line.find("] ")) {
        (true, Some(end)) => &line[end + 2..],
        _ => line,
    }
}

/// `Server <pid> exited with status <n>` from control.log.
pub fn parse_server_exit(line: &str) -> Option<(u32, i32)> {
    let rest = log_message(line).strip_prefix("Server ")?;
    let (pid, rest) = rest.split_once(' ')?;
    let status = rest.strip_prefix("exited with status ")?;
    Some((pid.parse().ok()?, status.trim().parse().ok()?))
}

/// `(release, revision major)` from `/etc/nv_tegra_release`, e.g.
/// `# R36 (release), REVISION: 4.3, GCID: ...` -> `(36, 4)`.
pub fn parse_tegra_release(text: &str) -> Option<(u32, u32)> {
    let line = text.lines().find(|l| l.trim_start().starts_with("# R"))?;
    let release = line.trim_start().strip_prefix("# R")?;
    let release: u32 = release
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    let revision = line.split("REVISION:").nth(1)?.trim();
    let revision: u32 = revision
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    Some((release, revision))
}

/// MPS on Orin needs JetPack 6.1 (L4T R36.4) or later.
pub fn tegra_release_supports_mps((release, revision): (u32, u32)) -> bool {
    release > 36 || (release == 36 && revision >= 4)
}

/// `(soft, hard)` open-file limits from `/proc/self/limits`; `None` means unlimited.
pub fn parse_nofile_limits(limits: &str) -> Option<(Option<u64>, Option<u64>)> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut fields = line["Max open files".len()..].split_whitespace();
    let parse = |f: Option<&str>| -> Option<Option<u64>> {
        match f? {
            "unlimited" => Some(None),
            n => n.parse().ok().map(Some),
        }
    };
    Some((parse(fields.next())?, parse(fields.next())?))
}

/// Fields of `/proc/<pid>/stat` that identify a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub state: char,
    pub pgrp: i32,
    /// Start time in clock ticks since boot (field 22): with the PID it survives PID reuse.
    pub start_time: u64,
}

/// Parses `/proc/<pid>/stat`; the command name may contain spaces and parentheses, so fields
/// are counted after the last `)`.
pub fn parse_proc_stat(stat: &str) -> Option<ProcStat> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentage_accepts_float_and_integer_forms() {
        assert_eq!(parse_percentage("25.0\n"), Some(25.0));
        assert_eq!(parse_percentage("\n 100 \n"), Some(100.0));
        assert_eq!(parse_percentage("Invalid arguments"), None);
        assert_eq!(parse_percentage(""), None);
        assert_eq!(parse_percentage("250.0"), None);
        assert!(percentages_match(25.0, 25.04));
        assert!(!percentages_match(25.0, 26.0));
    }

    #[test]
    fn mem_limits_read_back_at_gib_granularity() {
        assert_eq!(parse_mem_limit_mib("1G"), Some(1024));
        assert_eq!(parse_mem_limit_mib(" 512M\n"), Some(512));
        assert_eq!(parse_mem_limit_mib("1044"), None);
        assert_eq!(parse_mem_limit_mib(""), None);
        assert_eq!(parse_mem_limit_mib("G"), None);
        assert!(mem_limits_match(1044, 1024)); // "1044M" reads back as "1G"
        assert!(!mem_limits_match(2048, 1024));
        assert!(mem_limits_match(512, 512));
        assert!(!mem_limits_match(512, 500));
    }

    #[test]
    fn pinned_spec_lists_devices() {
        let limits = parse_pinned_spec("0=1G, GPU-abc=512M").unwrap();
        assert_eq!(limits.len(), 2);
        assert_eq!(
            limits[0],
            PinnedLimit {
                device: "0".into(),
                value: "1G".into(),
                mib: 1024
            }
        );
        assert_eq!(limits[1].device, "GPU-abc");
        assert_eq!(limits[1].mib, 512);
        assert!(parse_pinned_spec("0=1T").unwrap_err().contains("1T"));
        assert!(parse_pinned_spec("1G").is_err());
        assert!(parse_pinned_spec("").is_err());
        assert!(parse_pinned_spec("=1G").is_err());
    }

    #[test]
    fn pid_lists_accept_any_whitespace_and_empty() {
        assert_eq!(parse_pid_list(""), Ok(vec![]));
        assert_eq!(parse_pid_list("17\n"), Ok(vec![17]));
        assert_eq!(parse_pid_list("17 18\n19"), Ok(vec![17, 18, 19]));
        assert_eq!(
            parse_pid_list("Server 5 not found\n"),
            Err("Server 5 not found".into())
        );
    }

    #[test]
    fn server_exit_lines_are_recognised() {
        let line = "[2024-04-23 06:04:59.389 Control    72] Server 4428 exited with status 1";
        assert_eq!(parse_server_exit(line), Some((4428, 1)));
        assert_eq!(
            parse_server_exit("Server 9 exited with status -9"),
            Some((9, -9))
        );
        assert_eq!(
            parse_server_exit("[x Control 1] NEW SERVER 4428: Ready"),
            None
        );
        assert_eq!(
            log_message("[2024-04-23 06:04:59.389 Control    72] NEW UI"),
            "NEW UI"
        );
    }

    #[test]
    fn tegra_release_gates_mps() {
        let r36_4 = "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64";
        assert_eq!(parse_tegra_release(r36_4), Some((36, 4)));
        assert!(tegra_release_supports_mps((36, 4)));
        assert!(!tegra_release_supports_mps(
            parse_tegra_release("# R36 (release), REVISION: 3.0").unwrap()
        ));
        assert!(!tegra_release_supports_mps((35, 6)));
        assert!(tegra_release_supports_mps((38, 2)));
        assert_eq!(parse_tegra_release("garbage"), None);
    }

    #[test]
    fn nofile_limits_parse() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(
            parse_nofile_limits(limits),
            Some((Some(1024), Some(524288)))
        );
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_nofile_limits(unlimited), Some((None, None)));
        assert_eq!(
            parse_nofile_limits("Max cpu time unlimited unlimited seconds"),
            None
        );
    }

    #[test]
    fn proc_stat_survives_odd_command_names() {
        let stat = "4428 (nvidia-cuda-mps) S 1 4428 4428 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 3 0 987654 1000 100";
        assert_eq!(
            parse_proc_stat(stat),
            Some(ProcStat {
                state: 'S',
                pgrp: 4428,
                start_time: 987654
            })
        );
        let odd = "77 (a) b (c)) Z 1 70 70 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 55 0 0";
        assert_eq!(
            parse_proc_stat(odd),
            Some(ProcStat {
                state: 'Z',
                pgrp: 70,
                start_time: 55
            })
        );
        assert_eq!(parse_proc_stat("12 (short) S 1"), None);
    }

    #[test]
    fn socket_length_counts_control_suffix() {
        assert_eq!(
            control_socket_len(Path::new("/run/mpslab/mps")),
            "/run/mpslab/mps/control".len()
        );
    }
}
