//! Diagnostics on stderr: warnings always, debug lines with `-d` / `-o debug` or
//! `UNIONMOUNT_LOG=debug`. A healthy mount prints nothing.

use std::ffi::OsString;

struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, meta: &log::Metadata<'_>) -> bool {
        meta.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        if (is_unwanted_reply(record) || is_network_stack(record))
            && log::max_level() < log::LevelFilter::Debug
        {
            return;
        }
        let line = format!(
            "unionmount: {}: {}\n",
            record.level().as_str().to_lowercase(),
            record.args()
        );
        // A daemon's stderr may be gone; UNIONMOUNT_LOG_FILE keeps its lines.
        if let Some(path) = std::env::var_os("UNIONMOUNT_LOG_FILE") {
            use std::io::Write;
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                let _ = f.write_all(line.as_bytes());
                return;
            }
        }
        eprint!("{line}");
    }

    fn flush(&self) {}
}

/// fuser reports a reply the kernel no longer takes as an error. libfuse
/// stays silent there, as we do unless debugging: ENOENT means the request
/// was interrupted, or ended with the connection while it was answered (an
/// unmount racing an answer in flight); ENODEV, that the connection is gone.
/// Nothing is lost: nobody waits for that answer.
fn is_unwanted_reply(record: &log::Record<'_>) -> bool {
    if !record.target().starts_with("fuser") {
        return false;
    }
    let msg = record.args().to_string();
    msg.starts_with("Failed to send FUSE reply")
        && (msg.ends_with("(os error 2)") || msg.ends_with("(os error 19)"))
}

/// The HTTP and TLS crates under `pull` log their failures (a certificate
/// refused) as errors, and the same failure comes back to the command,
/// which reports it in its one line: theirs are shown only when debugging.
fn is_network_stack(record: &log::Record<'_>) -> bool {
    const CRATES: &[&str] = &[
        "rustls",
        "rustls_platform_verifier",
        "reqwest",
        "hyper",
        "hyper_util",
        "h2",
        "oci_client",
        "tokio",
        "tower",
        "http_auth",
    ];
    let root = record.target().split("::").next().unwrap_or("");
    CRATES.contains(&root)
}

static LOGGER: StderrLogger = StderrLogger;

pub fn init(args: &[OsString]) {
    let debug_flag = args
        .iter()
        .any(|a| a == "-d" || a.to_string_lossy().split(',').any(|o| o == "debug"));
    let debug_env = std::env::var("UNIONMOUNT_LOG").is_ok_and(|v| v == "debug");
    let level = if debug_flag || debug_env {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Warn
    };
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unwanted(target: &str, msg: &str) -> bool {
        is_unwanted_reply(
            &log::Record::builder()
                .level(log::Level::Error)
                .target(target)
                .args(format_args!("{msg}"))
                .build(),
        )
    }

    #[test]
    fn the_network_stack_is_quiet_unless_debugging() {
        let rec = |target: &'static str| {
            is_network_stack(
                &log::Record::builder()
                    .level(log::Level::Error)
                    .target(target)
                    .args(format_args!("failed to verify TLS certificate"))
                    .build(),
            )
        };
        assert!(rec("rustls::conn"));
        assert!(rec("hyper_util::client"));
        assert!(rec("oci_client::client"));
        assert!(!rec("unionmount::mount"));
        assert!(!rec("fuser::reply"));
    }

    #[test]
    fn only_replies_the_kernel_no_longer_takes_are_quiet() {
        let enoent = "Failed to send FUSE reply: No such file or directory (os error 2)";
        let enodev = "Failed to send FUSE reply: No such device (os error 19)";
        let einval = "Failed to send FUSE reply: Invalid argument (os error 22)";
        assert!(unwanted("fuser::reply", enoent));
        assert!(unwanted("fuser::reply", enodev));
        assert!(!unwanted("fuser::reply", einval));
        assert!(!unwanted("unionmount::mount", enoent));
    }
}
