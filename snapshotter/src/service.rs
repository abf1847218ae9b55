//! containerd's Snapshots service over `Snapshots`. Each call runs on the
//! blocking pool: a commit syncs a filesystem and a remove or a usage
//! walks a tree, which must not stall the gRPC runtime.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use containerd_snapshots::api::types::Mount;
use containerd_snapshots::{Info, Snapshotter, Usage};
use futures::stream;

use crate::error::{Error, Result};
use crate::meta::{Kind, Record};
use crate::snapshots::Snapshots;

#[derive(Clone)]
pub struct Service(pub Arc<Snapshots>);

impl Service {
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Snapshots) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let s = Arc::clone(&self.0);
        let res = tokio::task::spawn_blocking(move || f(&s)).await;
        res.unwrap_or_else(|e| {
            Err(Error::Io {
                what: "snapshotter call".into(),
                source: std::io::Error::other(e),
            })
        })
    }
}

fn info(name: String, r: Record) -> Info {
    Info {
        kind: match r.kind {
            Kind::View => containerd_snapshots::Kind::View,
            Kind::Active => containerd_snapshots::Kind::Active,
            Kind::Committed => containerd_snapshots::Kind::Committed,
        },
        name,
        parent: r.parent,
        labels: r.labels.into_iter().collect(),
        created_at: r.created,
        updated_at: r.updated,
    }
}

fn sorted(labels: HashMap<String, String>) -> BTreeMap<String, String> {
    labels.into_iter().collect()
}

#[containerd_snapshots::tonic::async_trait]
impl Snapshotter for Service {
    type Error = Error;
    type InfoStream = stream::Iter<std::vec::IntoIter<Result<Info>>>;

    async fn stat(&self, key: String) -> Result<Info> {
        log::debug!("stat {key}");
        let k = key.clone();
        let r = self.blocking(move |s| s.stat(&k)).await?;
        Ok(info(key, r))
    }

    async fn update(&self, i: Info, fieldpaths: Option<Vec<String>>) -> Result<Info> {
        log::debug!("update {} {fieldpaths:?}", i.name);
        let name = i.name.clone();
        let labels = sorted(i.labels);
        let paths = fieldpaths.unwrap_or_default();
        let r = self
            .blocking(move |s| s.update(&name, labels, &paths))
            .await?;
        Ok(info(i.name, r))
    }

    async fn usage(&self, key: String) -> Result<Usage> {
        let (size, inodes) = self.blocking(move |s| s.usage(&key)).await?;
        Ok(Usage { inodes, size })
    }

    async fn mounts(&self, key: String) -> Result<Vec<Mount>> {
        self.blocking(move |s| s.mounts(&key)).await
    }

    async fn prepare(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>> {
        log::info!("prepare {key} over {parent:?}");
        log::debug!("prepare {key}: labels {labels:?}");
        self.blocking(move |s| s.create(Kind::Active, &key, &parent, sorted(labels)))
            .await
    }

    async fn view(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>> {
        log::info!("view {key} of {parent:?}");
        self.blocking(move |s| s.create(Kind::View, &key, &parent, sorted(labels)))
            .await
    }

    async fn commit(
        &self,
        name: String,
        key: String,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        log::info!("commit {key} as {name}");
        self.blocking(move |s| s.commit(&name, &key, sorted(labels)))
            .await
    }

    async fn remove(&self, key: String) -> Result<()> {
        log::info!("remove {key}");
        self.blocking(move |s| s.remove(&key)).await
    }

    async fn clear(&self) -> Result<()> {
        let n = self.blocking(|s| s.cleanup()).await?;
        log::info!("cleanup removed {n} orphaned entries");
        Ok(())
    }

    async fn list(&self, _snapshotter: String, filters: Vec<String>) -> Result<Self::InfoStream> {
        let all = self.blocking(move |s| s.list(&filters)).await?;
        let items: Vec<Result<Info>> = all.into_iter().map(|(n, r)| Ok(info(n, r))).collect();
        Ok(stream::iter(items))
    }
}
