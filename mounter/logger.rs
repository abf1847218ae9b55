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
