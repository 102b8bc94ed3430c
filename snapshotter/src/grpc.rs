//! containerd's `Snapshots` gRPC service over [`Snapshotter`].
//!
//! containerd-snapshots (the crate with a generated server trait) still
//! pins tonic 0.9 and hyper 0.14; containerd-client 0.9 carries the same
//! messages for tonic 0.14 but no server. The ten methods are dispatched
//! here on the request path with tonic's own `Grpc` codec driver: the same
//! code tonic-build would generate, minus a second HTTP stack in the build.
//!
//! Every call runs on the blocking pool: the store and the file system are
//! synchronous, and a slow disk must not stall other calls.

use crate::error::Error;
use crate::lazy::Lazy;
use crate::snapshots::{Mount, Snapshotter};
use crate::store::Info;
use crate::store::{Kind, Time};
use containerd_client::services::v1::snapshots as pb;
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::body::Body;
use tonic::Status;

/// The service containerd's proxy plugin calls.
#[derive(Clone)]
pub struct SnapshotsService {
    inner: Arc<Snapshotter>,
    /// Remote (lazily mounted) snapshots, when enabled.
    lazy: Option<Arc<Lazy>>,
}

impl SnapshotsService {
    pub fn new(inner: Arc<Snapshotter>, lazy: Option<Arc<Lazy>>) -> SnapshotsService {
        SnapshotsService { inner, lazy }
    }
}

impl tonic::server::NamedService for SnapshotsService {
    const NAME: &'static str = "containerd.services.snapshots.v1.Snapshots";
}

/// Before mounts go to containerd: the lazy layers they stack on are served.
fn served(s: &Snapshotter, lazy: Option<&Lazy>, key: &str) -> crate::error::Result<()> {
    match lazy {
        Some(l) => l.ensure_served(&s.parent_dirs(key)?),
        None => Ok(()),
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl tower::Service<http::Request<Body>> for SnapshotsService {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let s = self.inner.clone();
        let lazy = self.lazy.clone();
        Box::pin(async move {
            let method = req.uri().path().rsplit('/').next().unwrap_or_default().to_owned();
            let resp = match method.as_str() {
                "Prepare" => {
                    let rt = tokio::runtime::Handle::current();
                    unary(req, s, move |s, r: pb::PrepareSnapshotRequest| {
                        let labels = labels(r.labels);
                        if let Some(exists) = lazy.as_ref().and_then(|l| l.prepare(s, &r.parent, &labels, &rt)) {
                            return Err(exists);
                        }
                        let mounts = s.create(Kind::Active, &r.key, &r.parent, labels)?;
                        served(s, lazy.as_deref(), &r.key)?;
                        Ok(pb::PrepareSnapshotResponse { mounts: mounts_pb(mounts) })
                    })
                    .await
                }
                "View" => {
                    unary(req, s, move |s, r: pb::ViewSnapshotRequest| {
                        let mounts = s.create(Kind::View, &r.key, &r.parent, labels(r.labels))?;
                        served(s, lazy.as_deref(), &r.key)?;
                        Ok(pb::ViewSnapshotResponse { mounts: mounts_pb(mounts) })
                    })
                    .await
                }
                "Mounts" => {
                    unary(req, s, move |s, r: pb::MountsRequest| {
                        let mounts = s.mounts(&r.key)?;
                        served(s, lazy.as_deref(), &r.key)?;
                        Ok(pb::MountsResponse { mounts: mounts_pb(mounts) })
                    })
                    .await
                }
                "Commit" => {
                    unary(req, s, |s, r: pb::CommitSnapshotRequest| s.commit(&r.name, &r.key, labels(r.labels))).await
                }
                "Remove" => unary(req, s, |s, r: pb::RemoveSnapshotRequest| s.remove(&r.key)).await,
                "Stat" => {
                    unary(req, s, |s, r: pb::StatSnapshotRequest| {
                        tracing::debug!(key = %r.key, "stat");
                        Ok(pb::StatSnapshotResponse { info: Some(info_pb(s.stat(&r.key)?)) })
                    })
                    .await
                }
                "Update" => {
                    unary(req, s, |s, r: pb::UpdateSnapshotRequest| {
                        let info = r.info.ok_or_else(|| Error::InvalidArgument("Update needs info".into()))?;
                        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
                        let updated = s.update(&info.name, labels(info.labels), &paths)?;
                        Ok(pb::UpdateSnapshotResponse { info: Some(info_pb(updated)) })
                    })
                    .await
                }
                "Usage" => {
                    unary(req, s, |s, r: pb::UsageRequest| {
                        let (size, inodes) = s.usage(&r.key)?;
                        Ok(pb::UsageResponse { size, inodes })
                    })
                    .await
                }
                "Cleanup" => unary(req, s, |s, _: pb::CleanupRequest| s.cleanup().map(|_| ())).await,
                "List" => list(req, s).await,
                other => Status::unimplemented(format!("snapshots method {other:?} is not implemented")).into_http(),
            };
            Ok(resp)
        })
    }
}

/// One unary call: decode, run `f` on the blocking pool, encode.
async fn unary<Req, Resp, F>(req: http::Request<Body>, s: Arc<Snapshotter>, f: F) -> http::Response<Body>
where
    Req: prost::Message + Default + Send + 'static,
    Resp: prost::Message + Send + 'static,
    F: FnOnce(&Snapshotter, Req) -> Result<Resp, Error> + Send + 'static,
{
    let mut f = Some(f);
    let svc = tower::service_fn(move |r: tonic::Request<Req>| {
        let f = f.take().expect("one message per unary call");
        let s = s.clone();
        async move {
            let out = tokio::task::spawn_blocking(move || f(&s, r.into_inner()))
                .await
                .map_err(|e| Status::internal(format!("snapshot call panicked: {e}")))?;
            out.map(tonic::Response::new).map_err(Status::from)
        }
    });
    tonic::server::Grpc::new(tonic_prost::ProstCodec::default()).unary(svc, req).await
}

/// Walk, streamed in batches so a node with thousands of snapshots does not
/// build one huge message.
async fn list(req: http::Request<Body>, s: Arc<Snapshotter>) -> http::Response<Body> {
    let svc = tower::service_fn(move |r: tonic::Request<pb::ListSnapshotsRequest>| {
        let s = s.clone();
        async move {
            let filters = r.into_inner().filters;
            let infos = tokio::task::spawn_blocking(move || s.walk(&filters))
                .await
                .map_err(|e| Status::internal(format!("snapshot walk panicked: {e}")))?
                .map_err(Status::from)?;
            let batches: Vec<Result<pb::ListSnapshotsResponse, Status>> = infos
                .chunks(100)
                .map(|c| Ok(pb::ListSnapshotsResponse { info: c.iter().cloned().map(info_pb).collect() }))
                .collect();
            Ok::<_, Status>(tonic::Response::new(tokio_stream::iter(batches)))
        }
    });
    tonic::server::Grpc::new(tonic_prost::ProstCodec::default()).server_streaming(svc, req).await
}

fn labels(m: HashMap<String, String>) -> BTreeMap<String, String> {
    m.into_iter().collect()
}

fn mounts_pb(mounts: Vec<Mount>) -> Vec<containerd_client::types::Mount> {
    mounts
        .into_iter()
        .map(|m| containerd_client::types::Mount {
            r#type: m.kind,
            source: m.source,
            options: m.options,
            ..Default::default()
        })
        .collect()
}

fn time_pb(t: Time) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t.secs, nanos: t.nanos }
}

fn info_pb(i: Info) -> pb::Info {
    let kind = match i.record.kind {
        Kind::View => pb::Kind::View,
        Kind::Active => pb::Kind::Active,
        Kind::Committed => pb::Kind::Committed,
    };
    pb::Info {
        name: i.name,
        parent: i.record.parent.unwrap_or_default(),
        kind: kind as i32,
        created_at: Some(time_pb(i.record.created)),
        updated_at: Some(time_pb(i.record.updated)),
        labels: i.record.labels.into_iter().collect(),
    }
}
