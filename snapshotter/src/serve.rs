//! The socket: containerd's proxy plugin dials it. A stale socket of a
//! dead snapshotter is replaced; SIGTERM or SIGINT stops accepting, lets
//! calls in flight finish and removes the socket.

use std::path::Path;
use std::sync::Arc;

use containerd_snapshots::tonic::transport::Server;
use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_stream::wrappers::UnixListenerStream;

use crate::error::{Context, Result};
use crate::service::Service;
use crate::snapshots::Snapshots;

/// Serve the snapshots under `root` on `socket` until SIGTERM or SIGINT.
pub async fn serve(root: &Path, socket: &Path) -> Result<()> {
    // The store is the snapshot area's parent (STORE/snapshots).
    let snaps = Arc::new(Snapshots::open(root, root.parent())?);
    let removed = snaps.cleanup()?;
    if removed > 0 {
        log::info!("removed {removed} entries a crash left behind");
    }
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).at(dir.display())?;
    }
    match std::fs::remove_file(socket) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).at(socket.display());
        }
        _ => {}
    }
    let listener = UnixListener::bind(socket).at(socket.display())?;
    log::info!(
        "serving snapshots of {} on {}",
        root.display(),
        socket.display()
    );
    let mut term = signal(SignalKind::terminate()).at("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).at("SIGINT handler")?;
    let stop = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        log::info!("stopping");
    };
    let served = Server::builder()
        .add_service(containerd_snapshots::server(Arc::new(Service(snaps))))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), stop)
        .await;
    let _ = std::fs::remove_file(socket);
    served.map_err(std::io::Error::other).at(socket.display())
}
