//! The fuse module's `enable_uring` switch, on for the tests that mount with
//! `-o io_uring` and put back as it was once the last of them is done (the
//! tests of one binary run in parallel; binaries run one after another).

use std::fs;
use std::sync::Mutex;

const SWITCH: &str = "/sys/module/fuse/parameters/enable_uring";

/// How many tests hold the switch on, and what it said before the first.
static HOLDERS: Mutex<(usize, Option<String>)> = Mutex::new((0, None));

/// Held while a test needs FUSE over io_uring.
pub struct IoUringOn(());

/// Held while a test needs the kernel not to offer it.
pub struct IoUringOff(String);

/// Turn the switch off until the guard goes (None, after saying why, when
/// the kernel has no switch). Not for a binary whose other tests turn it on.
#[must_use]
pub fn io_uring_off() -> Option<IoUringOff> {
    let holders = HOLDERS.lock().unwrap_or_else(|e| e.into_inner());
    assert_eq!(holders.0, 0, "a test of this binary holds io_uring on");
    let before = match fs::read_to_string(SWITCH) {
        Ok(v) => v,
        Err(e) => {
            let _ = super::can_run("FUSE over io_uring", &[format!("{SWITCH}: {e}")]);
            return None;
        }
    };
    fs::write(SWITCH, "N").expect("turning enable_uring off");
    Some(IoUringOff(before))
}

impl Drop for IoUringOff {
    fn drop(&mut self) {
        let _ = fs::write(SWITCH, self.0.trim());
    }
}

/// Turn the switch on, or say why not (a loud failure under CI=true: the
/// machines run kernels that have it).
#[must_use]
pub fn io_uring_on() -> Option<IoUringOn> {
    let mut holders = HOLDERS.lock().unwrap_or_else(|e| e.into_inner());
    if holders.0 == 0 {
        let before = match fs::read_to_string(SWITCH) {
            Ok(v) => v,
            Err(e) => {
                let missing = [format!("{SWITCH}: {e} (Linux 6.14 or later has it)")];
                let _ = super::can_run("FUSE over io_uring", &missing);
                return None;
            }
        };
        if let Err(e) = fs::write(SWITCH, "Y") {
            let _ = super::can_run("FUSE over io_uring", &[format!("turning {SWITCH} on: {e}")]);
            return None;
        }
        holders.1 = Some(before);
    }
    holders.0 += 1;
    Some(IoUringOn(()))
}

impl Drop for IoUringOn {
    fn drop(&mut self) {
        let mut holders = HOLDERS.lock().unwrap_or_else(|e| e.into_inner());
        holders.0 -= 1;
        if holders.0 == 0
            && let Some(before) = holders.1.take()
        {
            let _ = fs::write(SWITCH, before.trim());
        }
    }
}
