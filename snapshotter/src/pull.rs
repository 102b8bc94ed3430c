//! `berth-snapshotter pull REF`: pulls an image into a containerd namespace
//! the way CRI does for kubelet, so that layers berthd has indexed are
//! mounted lazily and `ctr run --snapshotter berth` starts at once — the
//! path for nodes without Kubernetes.
//!
//! It resolves the image (through the node's berthd, naming the registry in
//! `?ns=`, or with `--plain-http` straight from the registry in REF),
//! stores the manifest and config in containerd's content store, then
//! prepares each layer's snapshot with the labels the snapshotter looks
//! for. A layer the snapshotter cannot mount lazily is unpacked normally
//! (fetched into the content store, applied by containerd's differ,
//! committed). Last, the image record is created or updated. Everything
//! runs under a lease, so containerd's garbage collector leaves the pieces
//! alone until the image record holds them.

use crate::berthd::{Berthd, ClientError, Streaming};
use containerd_client::services::v1 as api;
use containerd_client::services::v1::snapshots as snap;
use containerd_client::tonic::{self, Code};
use containerd_client::types::Descriptor;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;

const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("{0:?} is not an image reference (HOST/REPO:TAG or HOST/REPO@DIGEST)")]
    BadReference(String),
    /// berthd (or, with `--plain-http`, the registry) unreachable, slow,
    /// or its URL wrong.
    #[error(transparent)]
    Berthd(#[from] ClientError),
    #[error("GET {path} answered {status}: {body}")]
    Status { path: String, status: u16, body: String },
    /// A manifest or blob that does not hash to the digest it was asked by.
    #[error("{what} {digest} arrived with digest {got}; refusing it")]
    WrongDigest { what: &'static str, digest: String, got: String },
    #[error("manifest is not JSON: {0}")]
    ManifestJson(#[source] serde_json::Error),
    #[error("{reference} has no linux/{arch} image")]
    NoPlatform { reference: String, arch: &'static str },
    #[error("manifest has no config")]
    NoConfig,
    #[error("image config: {0}")]
    ConfigJson(#[source] serde_json::Error),
    #[error("image config and manifest disagree on the number of layers")]
    LayerCount,
    #[error("cannot reach containerd at {}: {source}", socket.display())]
    ContainerdUnreachable {
        socket: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    /// A containerd call failed; `context` says which.
    #[error("{context}: {source}")]
    Containerd {
        context: String,
        #[source]
        source: tonic::Status,
    },
    /// A layer blob could not be streamed into containerd's content store.
    #[error("writing {digest} to containerd: {source}")]
    Upload {
        digest: String,
        #[source]
        source: UploadError,
    },
}

impl PullError {
    fn containerd(context: impl Into<String>) -> impl FnOnce(tonic::Status) -> PullError {
        let context = context.into();
        move |source| PullError::Containerd { context, source }
    }
}

/// Why a layer blob did not make it from berthd into containerd.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error(transparent)]
    Berthd(#[from] ClientError),
    #[error("berthd sent more than the {size} bytes of {digest}")]
    TooLong { digest: String, size: i64 },
    #[error("berthd sent {got} of the {size} bytes of {digest}")]
    TooShort { digest: String, got: i64, size: i64 },
    #[error("blob {digest} arrived with digest {got}; refusing it")]
    WrongDigest { digest: String, got: String },
    /// containerd refused the write.
    #[error(transparent)]
    Containerd(#[from] tonic::Status),
}

/// An image reference, normalised as containerd names images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub host: String,
    pub repo: String,
    /// A tag or a digest.
    pub reference: String,
}

impl ImageRef {
    pub fn parse(s: &str) -> Result<ImageRef, PullError> {
        let (name, reference) = match s.split_once('@') {
            Some((n, d)) => (n, d.to_string()),
            None => match s.rfind(':') {
                Some(i) if !s[i..].contains('/') => (&s[..i], s[i + 1..].to_string()),
                _ => (s, "latest".to_string()),
            },
        };
        let (host, repo) = match name.split_once('/') {
            Some((h, r)) if h.contains('.') || h.contains(':') || h == "localhost" => (h.to_string(), r.to_string()),
            _ => ("docker.io".to_string(), name.to_string()),
        };
        let repo = if host == "docker.io" && !repo.contains('/') { format!("library/{repo}") } else { repo };
        if repo.is_empty() || reference.is_empty() {
            return Err(PullError::BadReference(s.to_string()));
        }
        Ok(ImageRef { host, repo, reference })
    }

    /// The name containerd records (`host/repo:tag` or `host/repo@digest`).
    pub fn name(&self) -> String {
        let sep = if self.reference.contains(':') { '@' } else { ':' };
        format!("{}/{}{sep}{}", self.host, self.repo, self.reference)
    }
}

pub struct Options {
    /// containerd's socket.
    pub containerd: std::path::PathBuf,
    pub namespace: String,
    pub snapshotter: String,
    /// The node's berthd, used unless `plain_http`.
    pub berthd: String,
    /// Fetch from REF's registry itself over plain HTTP.
    pub plain_http: bool,
}

#[derive(Deserialize)]
struct Desc {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: i64,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    architecture: String,
    os: String,
}

#[derive(Deserialize)]
struct Manifest {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    #[serde(default)]
    config: Option<Desc>,
    #[serde(default)]
    layers: Vec<Desc>,
    #[serde(default)]
    manifests: Vec<Desc>,
}

#[derive(Deserialize)]
struct Config {
    rootfs: RootFs,
}

#[derive(Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        other => other,
    }
}

/// What a pull did.
#[derive(Debug, Default)]
pub struct Summary {
    pub name: String,
    pub digest: String,
    pub lazy: usize,
    pub unpacked: usize,
    pub present: usize,
}

/// How a layer came to be in the snapshotter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerOutcome {
    /// Mounted lazily: the container may start now.
    Lazy,
    /// Downloaded and unpacked the usual way.
    Unpacked,
    /// There already.
    Present,
}

/// What [`pull`] reports as it goes (`berth-snapshotter pull` draws it on
/// a terminal); the defaults say nothing.
pub trait PullProgress: Sync {
    /// The image has `total` layers.
    fn start(&self, _total: usize) {}
    /// Layer `digest` is being prepared (lazily if it can be).
    fn layer(&self, _digest: &str) {}
    /// It is done.
    fn done(&self, _digest: &str, _outcome: LayerOutcome) {}
}

/// Reports nothing.
pub struct Quiet;

impl PullProgress for Quiet {}

struct Source {
    http: Berthd,
    ns: Option<String>,
    repo: String,
}

impl Source {
    fn path(&self, kind: &str, reference: &str) -> String {
        let ns = self.ns.as_ref().map(|n| format!("?ns={n}")).unwrap_or_default();
        format!("/v2/{}/{kind}/{reference}{ns}", self.repo)
    }

    async fn get(&self, kind: &str, reference: &str, accept: &str) -> Result<(String, bytes::Bytes), PullError> {
        let (status, ctype, body) = self.http.fetch(&self.path(kind, reference), accept).await?;
        if status != 200 {
            let body = String::from_utf8_lossy(&body).into_owned();
            return Err(PullError::Status { path: self.path(kind, reference), status, body });
        }
        Ok((ctype, body))
    }

    /// A layer blob as it arrives (checked by [`Ctd::write_streaming`]).
    async fn open_blob(&self, digest: &str) -> Result<Streaming, PullError> {
        let path = self.path("blobs", digest);
        let body = self.http.open(&path, "").await?;
        if body.status != 200 {
            let status = body.status;
            return Err(PullError::Status { path, status, body: body.text().await });
        }
        Ok(body)
    }

    /// A small blob (a config), checked against its digest.
    async fn blob(&self, digest: &str) -> Result<bytes::Bytes, PullError> {
        let (_, body) = self.get("blobs", digest, "").await?;
        let got = sha256(&body);
        if got != digest {
            return Err(PullError::WrongDigest { what: "blob", digest: digest.to_string(), got });
        }
        Ok(body)
    }
}

/// containerd's gRPC clients with the namespace and lease headers.
struct Ctd {
    channel: tonic::transport::Channel,
    namespace: String,
    lease: Option<String>,
}

impl Ctd {
    fn req<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        let md = r.metadata_mut();
        md.insert("containerd-namespace", self.namespace.parse().expect("namespace is ASCII"));
        if let Some(l) = &self.lease {
            md.insert("containerd-lease", l.parse().expect("lease id is ASCII"));
        }
        r
    }

    /// Writes `data` as content `digest`; content already there is fine.
    async fn write(&self, digest: &str, data: &[u8], labels: HashMap<String, String>) -> Result<(), PullError> {
        let mut client = api::content_client::ContentClient::new(self.channel.clone());
        let reference = format!("berth-pull-{digest}");
        let total = data.len() as i64;
        let msgs = vec![
            api::WriteContentRequest {
                action: api::WriteAction::Write as i32,
                r#ref: reference.clone(),
                total,
                expected: digest.to_string(),
                offset: 0,
                data: data.to_vec(),
                labels: HashMap::new(),
            },
            api::WriteContentRequest {
                action: api::WriteAction::Commit as i32,
                r#ref: reference,
                total,
                expected: digest.to_string(),
                offset: total,
                data: Vec::new(),
                labels: labels.clone(),
            },
        ];
        match client.write(self.req(tokio_stream::iter(msgs))).await {
            Ok(resp) => {
                let mut s = resp.into_inner();
                while s.message().await.map_err(PullError::containerd(format!("writing {digest}")))?.is_some() {}
                Ok(())
            }
            Err(e) if e.code() == Code::AlreadyExists => {
                // Present already: make sure it carries our GC labels.
                let mut c = api::content_client::ContentClient::new(self.channel.clone());
                let info = api::Info { digest: digest.to_string(), labels, ..Default::default() };
                let paths = info.labels.keys().map(|k| format!("labels.{k}")).collect();
                let update =
                    api::UpdateRequest { info: Some(info), update_mask: Some(prost_types::FieldMask { paths }) };
                c.update(self.req(update)).await.map_err(PullError::containerd(format!("labelling {digest}")))?;
                Ok(())
            }
            Err(e) => Err(PullError::Containerd { context: format!("writing {digest} to containerd"), source: e }),
        }
    }
}

impl Ctd {
    /// Streams blob `digest` of `size` bytes from `body` into the content
    /// store in [`WRITE_PIECE`] messages, so a layer is never held in memory
    /// whole and no message nears containerd's 16 MiB limit. The digest is
    /// checked here before the commit, and again by containerd on commit.
    /// Content already in the store is not fetched.
    async fn write_streaming(&self, digest: &str, size: i64, body: Streaming) -> Result<(), PullError> {
        let mut content = api::content_client::ContentClient::new(self.channel.clone());
        let info = api::InfoRequest { digest: digest.to_string() };
        if content.info(self.req(info)).await.is_ok() {
            return Ok(());
        }
        let reference = format!("berth-pull-{digest}");
        let failed = std::sync::Arc::new(std::sync::Mutex::new(None::<UploadError>));
        let state = Upload {
            body,
            hash: Sha256::new(),
            offset: 0,
            finished: false,
            reference: reference.clone(),
            digest: digest.to_string(),
            size,
            failed: failed.clone(),
        };
        let messages = futures_util::stream::unfold(state, |mut st| async move {
            match st.next_message().await {
                Ok(msg) => Some((msg?, st)),
                Err(e) => {
                    *st.failed.lock().unwrap() = Some(e);
                    None
                }
            }
        });
        let written = async {
            let mut s = content.write(self.req(messages)).await?.into_inner();
            while s.message().await?.is_some() {}
            Ok::<_, UploadError>(())
        }
        .await;
        let failed = failed.lock().unwrap().take();
        match (failed, written) {
            (None, Ok(())) => Ok(()),
            (Some(e), _) | (None, Err(e)) => {
                let abort = api::AbortRequest { r#ref: reference };
                let _ = api::content_client::ContentClient::new(self.channel.clone()).abort(self.req(abort)).await;
                Err(PullError::Upload { digest: digest.to_string(), source: e })
            }
        }
    }
}

/// Uncompressed bytes per content write message.
const WRITE_PIECE: usize = 1 << 20;

/// One blob on its way from berthd into containerd's content store.
struct Upload {
    body: Streaming,
    hash: Sha256,
    offset: i64,
    finished: bool,
    reference: String,
    digest: String,
    size: i64,
    failed: std::sync::Arc<std::sync::Mutex<Option<UploadError>>>,
}

impl Upload {
    /// The next write message: up to a piece of data, then the commit once
    /// the whole blob arrived with the right digest, then `None`. `Err`
    /// ends the stream without a commit, so containerd keeps nothing.
    async fn next_message(&mut self) -> Result<Option<api::WriteContentRequest>, UploadError> {
        if self.finished {
            return Ok(None);
        }
        let mut data = Vec::with_capacity(WRITE_PIECE);
        while data.len() < WRITE_PIECE {
            match self.body.next().await? {
                Some(b) => data.extend_from_slice(&b),
                None => break,
            }
        }
        let offset = self.offset;
        self.offset += data.len() as i64;
        if self.offset > self.size {
            return Err(UploadError::TooLong { digest: self.digest.clone(), size: self.size });
        }
        self.hash.update(&data);
        let mut msg = api::WriteContentRequest {
            action: api::WriteAction::Write as i32,
            r#ref: self.reference.clone(),
            total: self.size,
            expected: self.digest.clone(),
            offset,
            data,
            labels: HashMap::new(),
        };
        if msg.data.is_empty() {
            if self.offset != self.size {
                return Err(UploadError::TooShort { digest: self.digest.clone(), got: self.offset, size: self.size });
            }
            let got = format!("sha256:{}", hex::encode(std::mem::take(&mut self.hash).finalize()));
            // Other algorithms are left to containerd's check on commit.
            if self.digest.starts_with("sha256:") && got != self.digest {
                return Err(UploadError::WrongDigest { digest: self.digest.clone(), got });
            }
            msg.action = api::WriteAction::Commit as i32;
            self.finished = true;
        }
        Ok(Some(msg))
    }
}

/// Pulls `reference` into containerd.
pub async fn pull(opts: &Options, reference: &str, progress: &dyn PullProgress) -> Result<Summary, PullError> {
    let image = ImageRef::parse(reference)?;
    let source = if opts.plain_http {
        Source { http: Berthd::parse(&format!("http://{}", image.host))?, ns: None, repo: image.repo.clone() }
    } else {
        Source { http: Berthd::parse(&opts.berthd)?, ns: Some(image.host.clone()), repo: image.repo.clone() }
    };
    // The manifest, through an index to this node's platform if need be.
    let (ctype, body) = source.get("manifests", &image.reference, MANIFEST_TYPES).await?;
    let top_digest = sha256(&body);
    let top: Manifest = serde_json::from_slice(&body).map_err(PullError::ManifestJson)?;
    let top_type = if top.media_type.is_empty() {
        ctype.split(';').next().unwrap_or("").to_string()
    } else {
        top.media_type.clone()
    };
    let mut index: Option<(String, bytes::Bytes)> = None;
    let (manifest_digest, manifest_body, manifest, manifest_type) = if !top.manifests.is_empty() {
        let pick = top
            .manifests
            .iter()
            .find(|m| m.platform.as_ref().is_some_and(|p| p.os == "linux" && p.architecture == arch()))
            .ok_or_else(|| PullError::NoPlatform { reference: reference.to_string(), arch: arch() })?;
        let (ctype, body) = source.get("manifests", &pick.digest, MANIFEST_TYPES).await?;
        let got = sha256(&body);
        if got != pick.digest {
            return Err(PullError::WrongDigest { what: "manifest", digest: pick.digest.clone(), got });
        }
        let m: Manifest = serde_json::from_slice(&body).map_err(PullError::ManifestJson)?;
        let mt = if pick.media_type.is_empty() { ctype } else { pick.media_type.clone() };
        index = Some((top_digest.clone(), body.clone()));
        (pick.digest.clone(), body, m, mt)
    } else {
        (top_digest.clone(), body.clone(), top, top_type.clone())
    };
    let config_desc = manifest.config.as_ref().ok_or(PullError::NoConfig)?;
    let config_body = source.blob(&config_desc.digest).await?;
    let config: Config = serde_json::from_slice(&config_body).map_err(PullError::ConfigJson)?;
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(PullError::LayerCount);
    }
    let mut chain = Vec::new();
    for d in &config.rootfs.diff_ids {
        let next = match chain.last() {
            None => d.clone(),
            Some(prev) => sha256(format!("{prev} {d}").as_bytes()),
        };
        chain.push(next);
    }

    let channel = containerd_client::connect(&opts.containerd)
        .await
        .map_err(|source| PullError::ContainerdUnreachable { socket: opts.containerd.clone(), source })?;
    let mut ctd = Ctd { channel, namespace: opts.namespace.clone(), lease: None };
    let lease_id = format!("berth-pull-{}", std::process::id());
    let mut leases = api::leases_client::LeasesClient::new(ctd.channel.clone());
    let expire = rfc3339_in_an_hour();
    let create = api::CreateRequest {
        id: lease_id.clone(),
        labels: HashMap::from([("containerd.io/gc.expire".to_string(), expire)]),
    };
    leases.create(ctd.req(create)).await.map_err(PullError::containerd("cannot take a containerd lease"))?;
    ctd.lease = Some(lease_id.clone());
    progress.start(manifest.layers.len());
    let layers = ImageLayers { manifest: &manifest, manifest_digest: &manifest_digest, chain: &chain };
    let result = pull_layers(&ctd, &source, opts, &image, layers, progress).await;
    let mut summary = match result {
        Ok(s) => s,
        Err(e) => {
            let _ = leases.delete(ctd.req(api::DeleteRequest { id: lease_id, sync: false })).await;
            return Err(e);
        }
    };
    // Content, labelled so that the image holds everything against GC.
    let top_chain = chain.last().cloned().unwrap_or_default();
    let config_labels = HashMap::from([(format!("containerd.io/gc.ref.snapshot.{}", opts.snapshotter), top_chain)]);
    ctd.write(&config_desc.digest, &config_body, config_labels).await?;
    // Layers too, as containerd's own pull does: an unpacked layer's blob
    // stays for `ctr image export` and `push`; a lazy one has none to keep.
    let mut manifest_labels =
        HashMap::from([("containerd.io/gc.ref.content.config".to_string(), config_desc.digest.clone())]);
    for (i, l) in manifest.layers.iter().enumerate() {
        manifest_labels.insert(format!("containerd.io/gc.ref.content.l.{i}"), l.digest.clone());
    }
    ctd.write(&manifest_digest, &manifest_body, manifest_labels).await?;
    let (target_digest, target_size) = match &index {
        Some((d, body)) => {
            let labels = HashMap::from([("containerd.io/gc.ref.content.m.0".to_string(), manifest_digest.clone())]);
            ctd.write(d, body, labels).await?;
            (d.clone(), body.len() as i64)
        }
        None => (manifest_digest.clone(), manifest_body.len() as i64),
    };
    let target = Descriptor {
        media_type: if index.is_some() { top_type } else { manifest_type },
        digest: target_digest.clone(),
        size: target_size,
        annotations: HashMap::new(),
    };
    let record = api::Image { name: image.name(), target: Some(target), ..Default::default() };
    let mut images = api::images_client::ImagesClient::new(ctd.channel.clone());
    let create = api::CreateImageRequest { image: Some(record.clone()), source_date_epoch: None };
    if let Err(e) = images.create(ctd.req(create)).await {
        if e.code() != Code::AlreadyExists {
            return Err(PullError::Containerd { context: format!("cannot record image {}", image.name()), source: e });
        }
        let update = api::UpdateImageRequest { image: Some(record), update_mask: None, source_date_epoch: None };
        images
            .update(ctd.req(update))
            .await
            .map_err(PullError::containerd(format!("cannot update image {}", image.name())))?;
    }
    let _ = leases.delete(ctd.req(api::DeleteRequest { id: lease_id, sync: false })).await;
    summary.name = image.name();
    summary.digest = target_digest;
    Ok(summary)
}

/// The image's layers: its manifest, that manifest's digest, and the chain
/// id of each layer.
struct ImageLayers<'a> {
    manifest: &'a Manifest,
    manifest_digest: &'a str,
    chain: &'a [String],
}

async fn pull_layers(
    ctd: &Ctd,
    source: &Source,
    opts: &Options,
    image: &ImageRef,
    layers: ImageLayers<'_>,
    progress: &dyn PullProgress,
) -> Result<Summary, PullError> {
    let ImageLayers { manifest, manifest_digest, chain } = layers;
    let mut snaps = snap::snapshots_client::SnapshotsClient::new(ctd.channel.clone());
    let mut summary = Summary::default();
    let all_layers: Vec<&str> = manifest.layers.iter().map(|l| l.digest.as_str()).collect();
    for (i, layer) in manifest.layers.iter().enumerate() {
        let chain_id = &chain[i];
        let parent = if i == 0 { String::new() } else { chain[i - 1].clone() };
        let stat = snap::StatSnapshotRequest { snapshotter: opts.snapshotter.clone(), key: chain_id.clone() };
        progress.layer(&layer.digest);
        if snaps.stat(ctd.req(stat)).await.is_ok() {
            summary.present += 1;
            progress.done(&layer.digest, LayerOutcome::Present);
            continue;
        }
        let key = format!("extract-{}-{chain_id}", std::process::id());
        let labels = HashMap::from([
            ("containerd.io/snapshot.ref".to_string(), chain_id.clone()),
            ("containerd.io/snapshot/cri.image-ref".to_string(), image.name()),
            ("containerd.io/snapshot/cri.manifest-digest".to_string(), manifest_digest.to_string()),
            ("containerd.io/snapshot/cri.layer-digest".to_string(), layer.digest.clone()),
            ("containerd.io/snapshot/cri.image-layers".to_string(), all_layers[i..].join(",")),
        ]);
        let prepare =
            snap::PrepareSnapshotRequest { snapshotter: opts.snapshotter.clone(), key: key.clone(), parent, labels };
        let mounts = match snaps.prepare(ctd.req(prepare)).await {
            Err(e) if e.code() == Code::AlreadyExists => {
                summary.lazy += 1;
                progress.done(&layer.digest, LayerOutcome::Lazy);
                continue;
            }
            Err(e) => {
                return Err(PullError::Containerd { context: format!("preparing layer {}", layer.digest), source: e })
            }
            Ok(r) => r.into_inner().mounts,
        };
        // Not lazy: unpack the layer the usual way.
        let unpacked = async {
            let blob = source.open_blob(&layer.digest).await?;
            ctd.write_streaming(&layer.digest, layer.size, blob).await?;
            let mut diff = api::diff_client::DiffClient::new(ctd.channel.clone());
            let desc = Descriptor {
                media_type: layer.media_type.clone(),
                digest: layer.digest.clone(),
                size: layer.size,
                annotations: HashMap::new(),
            };
            let apply = api::ApplyRequest { diff: Some(desc), mounts, payloads: HashMap::new(), sync_fs: false };
            diff.apply(ctd.req(apply))
                .await
                .map_err(PullError::containerd(format!("applying layer {}", layer.digest)))?;
            let commit = snap::CommitSnapshotRequest {
                snapshotter: opts.snapshotter.clone(),
                name: chain_id.clone(),
                key: key.clone(),
                labels: HashMap::new(),
            };
            snaps
                .clone()
                .commit(ctd.req(commit))
                .await
                .map_err(PullError::containerd(format!("committing layer {}", layer.digest)))?;
            Ok::<_, PullError>(())
        }
        .await;
        if let Err(e) = unpacked {
            let rm = snap::RemoveSnapshotRequest { snapshotter: opts.snapshotter.clone(), key };
            let _ = snaps.remove(ctd.req(rm)).await;
            return Err(e);
        }
        summary.unpacked += 1;
        progress.done(&layer.digest, LayerOutcome::Unpacked);
    }
    Ok(summary)
}

/// RFC 3339 time an hour from now (the lease's expiry).
fn rfc3339_in_an_hour() -> String {
    berth_wire::time::rfc3339(std::time::SystemTime::now() + std::time::Duration::from_secs(3600))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        let r = ImageRef::parse("registry.example.test/team/app:v1").unwrap();
        assert_eq!(
            (r.host.as_str(), r.repo.as_str(), r.reference.as_str()),
            ("registry.example.test", "team/app", "v1")
        );
        assert_eq!(r.name(), "registry.example.test/team/app:v1");
        let r = ImageRef::parse("busybox").unwrap();
        assert_eq!(r.name(), "docker.io/library/busybox:latest");
        let d = format!("sha256:{}", "a".repeat(64));
        let r = ImageRef::parse(&format!("localhost:5000/x@{d}")).unwrap();
        assert_eq!((r.host.as_str(), r.reference.as_str()), ("localhost:5000", d.as_str()));
        assert_eq!(r.name(), format!("localhost:5000/x@{d}"));
        let e = ImageRef::parse("host.example/").unwrap_err().to_string();
        assert_eq!(e, r#""host.example/" is not an image reference (HOST/REPO:TAG or HOST/REPO@DIGEST)"#);
    }

    #[test]
    fn error_texts() {
        let d = format!("sha256:{}", "a".repeat(64));
        let got = format!("sha256:{}", "b".repeat(64));
        let e = PullError::Upload {
            digest: d.clone(),
            source: UploadError::WrongDigest { digest: d.clone(), got: got.clone() },
        };
        assert_eq!(
            e.to_string(),
            format!("writing {d} to containerd: blob {d} arrived with digest {got}; refusing it")
        );
        let e = PullError::Upload {
            digest: d.clone(),
            source: UploadError::TooShort { digest: d.clone(), got: 1, size: 2 },
        };
        assert_eq!(e.to_string(), format!("writing {d} to containerd: berthd sent 1 of the 2 bytes of {d}"));
        let e = PullError::from(ClientError::Timeout(std::time::Duration::from_secs(30)));
        assert_eq!(e.to_string(), "berthd did not answer in 30s");
        let e = PullError::Containerd { context: "preparing layer x".into(), source: tonic::Status::internal("boom") };
        assert!(e.to_string().starts_with("preparing layer x: "), "{e}");
        assert!(e.to_string().contains("boom"), "{e}");
    }

    #[test]
    fn lease_expiry_is_rfc3339() {
        let t = rfc3339_in_an_hour();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z') && t.as_bytes()[10] == b'T');
    }
}
