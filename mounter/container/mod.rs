//! Containers in the store: create, start, stop, list, remove; the record.
//!
//! ```text
//! STORE/containers/<id>/
//!   image          the manifest digest (keeps the image from `image prune`;
//!                  the layer store owns this file: `layerstore::store::containers`)
//!   config.json    name, image, and everything `start` needs (see `Spec`)
//!   state.json     status, the runner's pid, the container's pid 1, cgroups, exit code
//!   upper/ work/   the container's changes and the union's workdir
//!   init/          mount points (/proc, /dev, /sys, /etc files, volume targets),
//!                  a layer over the image's so that they stay out of the upper
//!   merged/        the union's mountpoint (mounted only inside the container's
//!                  mount namespace, never on the host)
//!   hostname hosts resolv.conf    bind-mounted over the container's /etc files
//! ```
//!
//! `record` owns `config.json` and `state.json`; `create` and `settings` make
//! containers, `lifecycle` starts, stops and removes them (the runner, in
//! `crate::runner`, reports to it), `list` shows them.

/// Print a line; a closed stdout (`| head`) is not an error.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

pub mod create;
pub mod lifecycle;
pub mod list;
mod procs;
pub mod record;
pub mod settings;
