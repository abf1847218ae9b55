//! `unionmount snapshotter` for the tests: started on a socket of a scratch
//! directory, stopped with SIGTERM (the way containerd's systemd unit
//! stops it) when dropped, and a gRPC client of containerd's Snapshots API.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use snapshotter::api::snapshots::v1::snapshots_client::SnapshotsClient;
use snapshotter::tonic::transport::{Channel, Endpoint, Uri};

use super::bin;

/// The proxy plugin's name in containerd's config, and the snapshotter
/// field of every request.
pub const NAME: &str = "unionmount";

pub struct Snapshotter {
    pub socket: PathBuf,
    pub store: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Snapshotter {
    /// Serve the snapshots of `store` on `socket`.
    pub fn start(socket: &Path, store: &Path) -> Snapshotter {
        let mut s = Snapshotter {
            socket: socket.to_path_buf(),
            store: store.to_path_buf(),
            log: socket.with_extension("log"),
            child: None,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("snapshotter log");
        let child = Command::new(bin())
            .arg("snapshotter")
            .arg("--address")
            .arg(&self.socket)
            .arg("--store")
            .arg(&self.store)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start unionmount snapshotter");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("snapshotter exited at start ({st}): {}", self.log_text());
            }
            assert!(Instant::now() < deadline, "snapshotter: no socket in 20 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// kill -9, then wait for it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same socket and store (after `kill9` or `stop`).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "still running");
        self.spawn();
    }

    /// SIGTERM; its exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!("snapshotter ignored SIGTERM for 20 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A client on the socket, on `rt`.
    pub fn client(&self, rt: &tokio::runtime::Runtime) -> SnapshotsClient<Channel> {
        let path = self.socket.clone();
        let channel = rt
            .block_on(
                Endpoint::try_from("http://[::]:0")
                    .expect("endpoint")
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        tokio::net::UnixStream::connect(path.clone())
                    })),
            )
            .expect("connect to the snapshotter socket");
        SnapshotsClient::new(channel)
    }
}

impl Drop for Snapshotter {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
    }
}
