//! `unionmount push`: an image of the store to a registry. Blobs the
//! registry has are not sent again (a HEAD first, then a cross-repository
//! mount from a repository of the same registry that holds the image, such
//! as the one it was pulled from); the others go up in parallel, streamed
//! from their files. The manifest goes last, so an interrupted push never
//! leaves a tag naming missing blobs.

use std::path::PathBuf;

use futures_util::{StreamExt, TryStreamExt, stream};
use layerstore::Store;
use layerstore::image::{OutBlob, outgoing};
use layerstore::unpack::Compression;
use oci_client::errors::OciDistributionError;
use oci_client::{Client, RegistryOperation};

use crate::client::{self, Options};
use crate::pull::manifest::describe;
use crate::reference::Reference;

/// Blobs sent at once.
const PARALLEL_UPLOADS: usize = 4;
/// Bytes read from a blob's file per chunk of an upload.
const READ_CHUNK: usize = 1 << 20;

/// What a push did, for its summary line.
#[derive(Default, Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// Blobs uploaded, and their bytes.
    pub sent: usize,
    pub bytes_sent: u64,
    /// Blobs the registry had already in the target repository.
    pub present: usize,
    /// Blobs mounted from another repository of the registry.
    pub mounted: usize,
    /// Foreign layers, not sent (as Docker skips them): their urls serve them.
    pub foreign: usize,
    /// The manifest's digest in the registry.
    pub manifest: String,
}

/// What happened to one blob.
enum Fate {
    Sent(u64),
    Present,
    Mounted,
    Foreign,
}

/// Push image `image` of `store` to `target`, its layers in `compress`
/// (None: as the store keeps them). `mount_from`: a repository that may
/// hold the image's blobs; used when it is on the target's registry.
pub async fn push(
    store: &Store,
    image: &str,
    target: &Reference,
    compress: Option<Compression>,
    mount_from: Option<&Reference>,
    opts: &Options,
) -> Result<Pushed, String> {
    let info = store.resolve(image).map_err(|e| e.to_string())?;
    let out = outgoing(store, &info, compress).map_err(|e| e.to_string())?;
    let session = client::connect(target, RegistryOperation::Push, opts).await?;
    let dest = &session.reference;
    let source = mount_from
        .filter(|s| s.registry == target.registry && s.repository != target.repository)
        .map(Reference::to_oci);
    let fates: Vec<Fate> = stream::iter(out.blobs())
        .map(|blob| push_blob(&session.client, dest, blob, source.as_ref()))
        .buffer_unordered(PARALLEL_UPLOADS)
        .try_collect()
        .await?;
    let media_type = out
        .manifest
        .media_type
        .parse()
        .map_err(|_| format!("manifest media type {:?}", out.manifest.media_type))?;
    session
        .client
        .push_manifest_raw(dest, out.manifest_bytes.clone(), media_type)
        .await
        .map_err(|e| format!("{}: manifest: {}", target, describe(&e)))?;
    let mut pushed = Pushed {
        manifest: out.manifest.digest.to_string(),
        ..Pushed::default()
    };
    for f in fates {
        match f {
            Fate::Sent(n) => {
                pushed.sent += 1;
                pushed.bytes_sent += n;
            }
            Fate::Present => pushed.present += 1,
            Fate::Mounted => pushed.mounted += 1,
            Fate::Foreign => pushed.foreign += 1,
        }
    }
    Ok(pushed)
}

/// One blob: nothing when it is a foreign layer or the registry has it, a
/// mount when a sibling repository has it, else an upload streamed from
/// its file.
async fn push_blob(
    client: &Client,
    dest: &oci_client::Reference,
    blob: &OutBlob,
    source: Option<&oci_client::Reference>,
) -> Result<Fate, String> {
    if blob.desc.is_foreign() {
        return Ok(Fate::Foreign);
    }
    let digest = blob.desc.digest.to_string();
    let what =
        |e: &OciDistributionError| format!("{}: blob {digest}: {}", dest.whole(), describe(e));
    if client
        .blob_exists(dest, &digest)
        .await
        .map_err(|e| what(&e))?
    {
        return Ok(Fate::Present);
    }
    // A mount the registry refuses (it lacks the blob there, or mounts are
    // off) answers with an upload session instead: then upload.
    if let Some(src) = source
        && client.mount_blob(dest, src, &digest).await.is_ok()
        && client.blob_exists(dest, &digest).await.unwrap_or(false)
    {
        return Ok(Fate::Mounted);
    }
    let size = blob.desc.size;
    client
        .push_blob_stream(dest, file_chunks(blob.path.clone()), &digest, Some(size))
        .await
        .map_err(|e| what(&e))?;
    Ok(Fate::Sent(size))
}

/// The bytes of `path` as a stream of chunks, read as they are sent.
fn file_chunks(
    path: PathBuf,
) -> impl futures_util::Stream<Item = oci_client::errors::Result<bytes::Bytes>> + Send + 'static {
    stream::try_unfold(None::<tokio::fs::File>, move |file| {
        let path = path.clone();
        async move {
            use tokio::io::AsyncReadExt;
            let mut file = match file {
                Some(f) => f,
                None => tokio::fs::File::open(&path).await?,
            };
            let mut buf = vec![0u8; READ_CHUNK];
            let n = file.read(&mut buf).await?;
            if n == 0 {
                return Ok(None);
            }
            buf.truncate(n);
            Ok(Some((bytes::Bytes::from(buf), Some(file))))
        }
    })
}
