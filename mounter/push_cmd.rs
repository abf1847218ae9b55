//! `unionmount push`: an image of the store to a registry.

use std::process::ExitCode;

use anyhow::Context;
use registry::Reference;
use registry::client::Options;

use crate::image_cmd::parse_compression;
use crate::store_dir::StoreDir;

/// What `unionmount push` was asked.
pub struct PushRequest {
    pub image: String,
    /// Where to (default: the image's own name as a reference).
    pub destination: Option<String>,
    pub compression: Option<String>,
    pub tls_verify: Option<bool>,
    pub quiet: bool,
    pub store: StoreDir,
}

/// `unionmount push IMAGE [REF]`.
pub fn push(req: PushRequest) -> anyhow::Result<ExitCode> {
    let store = req.store.open()?;
    let target = Reference::parse(req.destination.as_deref().unwrap_or(&req.image))?;
    // gzip unless told otherwise: what every registry client reads.
    let compression = parse_compression(req.compression.as_deref())?;
    let opts = Options {
        tls_verify: req.tls_verify,
        ..Options::default()
    };
    // Blobs may be mounted from the repository the image is named after
    // (where it was pulled from or pushed to before), on the same registry.
    let source = store
        .resolve(&req.image)
        .ok()
        .and_then(|info| info.name)
        .and_then(|name| Reference::parse(&name).ok());
    let pushed = runtime()?
        .block_on(registry::push::push(
            &store,
            &req.image,
            &target,
            Some(compression),
            source.as_ref(),
            &opts,
        ))
        .map_err(anyhow::Error::msg)?;
    if req.quiet {
        println!("{}", pushed.manifest);
    } else {
        // Docker's word for a layer it leaves to its urls.
        let foreign = match pushed.foreign {
            0 => String::new(),
            n => format!(", {n} foreign skipped"),
        };
        println!(
            "Pushed {} ({}): {} blobs sent ({}), {} already there, {} mounted{foreign}",
            target,
            pushed.manifest,
            pushed.sent,
            size(pushed.bytes_sent),
            pushed.present,
            pushed.mounted,
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the network runtime")
}

fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}
