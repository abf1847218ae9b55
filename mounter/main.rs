//! `unionmount`: the one binary. Mount invocations (`unionmount -o … MNT`, the
//! fuse-overlayfs and unionfs-fuse syntaxes, and mount.fuse3's `SRC MNT -o …`)
//! are told apart from subcommands (`umount`, `image`, …) by their first word.

#[cfg(feature = "bench")]
mod bench;
mod bundle;
mod cgroup;
mod cli;
mod confine;
mod container;
mod export;
mod image_cmd;
mod logger;
mod mount;
mod ns_mounts;
mod options;
mod progress;
mod push_cmd;
mod registry_cmd;
mod runner;
mod snapshotter_cmd;
mod store_dir;
mod sys;
mod transfer;

use std::ffi::OsString;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    logger::init(&args);
    let result = if cli::is_subcommand(args.first()) {
        cli::run(args)
    } else {
        mount::run_mount_command(&args)
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("unionmount: {err:#}");
            ExitCode::from(1)
        }
    }
}
