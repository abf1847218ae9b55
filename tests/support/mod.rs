//! What every test library here shares (each test binary reaches it through
//! its own library: common, store_common, run_common or tool_common): the
//! binary under test, and the one rule for a test this machine cannot run.

/// The `unionmount` binary cargo built for these tests.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_unionmount")
}

/// Is this CI's run (`CI=true`)? There a test never skips.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// The one rule: a test that needs what is `missing` here fails under
/// CI=true with one line naming `what` and the missing parts; elsewhere it
/// prints a skip line and the caller returns. True when nothing is missing.
#[must_use]
pub fn can_run(what: &str, missing: &[String]) -> bool {
    if missing.is_empty() {
        return true;
    }
    let why = missing.join("; ");
    if under_ci() {
        panic!("{what} cannot run under CI=true: {why}");
    }
    eprintln!("SKIPPING {what} (set CI=true to make this a failure): {why}");
    false
}
