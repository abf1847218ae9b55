//! Processes of a container, named by pid and start time (a pid alone may
//! be reused once its process is gone).

use std::fs;

/// `/proc/PID/stat`'s state letter and start time.
fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut rest = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = rest.next()?.chars().next()?;
    Some((state, rest.nth(18)?.parse().ok()?))
}

/// `/proc/PID/stat`'s start time: with the pid, it names one process for good.
pub fn start_time(pid: i32) -> Option<u64> {
    proc_stat(pid).map(|(_, t)| t)
}

/// The process still runs: same pid and start time, and not a zombie (a
/// runner killed -9 stays one until its parent reaps it).
pub fn alive(p: Option<(i32, u64)>) -> bool {
    p.is_some_and(|(pid, t)| {
        proc_stat(pid).is_some_and(|(state, start)| start == t && !matches!(state, 'Z' | 'X'))
    })
}
