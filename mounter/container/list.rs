//! `unionmount ps`: the containers of a store and what they are doing.

use std::process::ExitCode;

use super::record::{Status, list_in, read_state};
use crate::store_dir::StoreDir;

/// `unionmount ps [-a]`.
pub fn ps(store: &StoreDir, all: bool) -> anyhow::Result<ExitCode> {
    // None: the default store, not made yet (no containers).
    let root = store.listing_root()?;
    say!(
        "{:<12}  {:<20}  {:<20}  {:<24}  STATUS",
        "ID",
        "NAME",
        "IMAGE",
        "COMMAND"
    );
    let containers = match &root {
        Some(r) => list_in(r)?,
        None => Vec::new(),
    };
    for c in containers {
        let st = read_state(&c.dir);
        let running = st.is_running();
        if !all && !running {
            continue;
        }
        let status = match (running, &st.status, st.exit_code) {
            (true, _, _) => "running".to_string(),
            (false, Status::Running, _) => "dead (runner gone; unionmount rm)".to_string(),
            (false, Status::Exited, Some(code)) => format!("exited ({code})"),
            (false, s, _) => s.to_string(),
        };
        let mut cmd = c.spec.argv.join(" ");
        if cmd.chars().count() > 24 {
            cmd = cmd.chars().take(21).collect::<String>() + "...";
        }
        say!(
            "{:<12}  {:<20}  {:<20}  {:<24}  {status}",
            c.id,
            c.name,
            c.image,
            cmd
        );
    }
    Ok(ExitCode::SUCCESS)
}
