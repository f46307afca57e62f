//! Process exit codes shared by `mpslabd` and `mpslabctl` (pinned in the public contract).

/// Success.
pub const OK: i32 = 0;
/// The operation was attempted and failed (e.g. a run ended `failed`).
pub const FAILED: i32 = 1;
/// Bad command line.
pub const USAGE: i32 = 2;
/// The daemon cannot be reached on the bus (`EX_UNAVAILABLE`).
pub const UNAVAILABLE: i32 = 69;
/// The caller may not perform the operation (`EX_NOPERM`).
pub const ACCESS_DENIED: i32 = 77;
/// The configuration is invalid (`EX_CONFIG`); the unit has `RestartPreventExitStatus=78`.
pub const CONFIG: i32 = 78;
