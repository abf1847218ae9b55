//! `unionmount snapshotter`: containerd's snapshotter service (a proxy
//! plugin), with its snapshots in the store's `snapshots/` directory.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::store_dir::StoreDir;

pub struct SnapshotterRequest {
    pub address: PathBuf,
    pub store: StoreDir,
    pub log_level: log::LevelFilter,
}

pub fn serve(req: SnapshotterRequest) -> anyhow::Result<ExitCode> {
    log::set_max_level(req.log_level);
    // The store is made if need be, then let go: a service that held its
    // shared lock for its whole life would keep `image prune` (which takes
    // it exclusively) waiting forever. Its snapshots/ is the snapshotter's
    // own, which prune never touches.
    let root = req.store.open_or_create()?.root().join("snapshots");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the service runtime")?;
    rt.block_on(snapshotter::serve(&root, &req.address))
        .with_context(|| format!("snapshotter on {}", req.address.display()))?;
    Ok(ExitCode::SUCCESS)
}
