//! The S3 backend (aws-sdk-s3), in registry:2's bucket layout: the key of a
//! storage path is `<rootdirectory>/<path>` without a leading slash, so an
//! existing registry:2 bucket is served in place.
//!
//! How the storage contract maps onto S3:
//! - `put_content` is one PutObject (atomic replacement).
//! - A writer streams parts of `chunksize` into a multipart upload as data
//!   arrives; between requests only the tail smaller than a part is held in
//!   memory. The open upload lives in this process, so an upload is finished
//!   on the node that started it (its `Location` points there). Completing
//!   it never reads the data back through the node.
//! - `move_object` is a server-side copy (multipart copy above 5 GiB) then a
//!   delete, so a blob appears under its digest whole or not at all.

mod http;
mod settings;

pub use settings::{S3Config, MIN_CHUNK_SIZE};

use super::{check_path, ByteStream, FileInfo, FileWriter, Result, StorageDriver, StorageError};
use async_trait::async_trait;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream as S3Body;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use aws_sdk_s3::Client;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

const MAX_SINGLE_COPY: u64 = 5 * 1024 * 1024 * 1024;
const COPY_PART_SIZE: u64 = 1024 * 1024 * 1024;
/// How long a presigned blob URL stays valid (registry:2 uses 20 minutes).
const PRESIGN_TTL: std::time::Duration = std::time::Duration::from_secs(20 * 60);

/// An open multipart upload: the parts sent so far and the tail not yet
/// large enough to be a part.
#[derive(Default)]
struct Multipart {
    upload_id: Option<String>,
    parts: Vec<CompletedPart>,
    pending: BytesMut,
    size: u64,
}

type OpenUploads = Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<Multipart>>>>>;

#[derive(Clone)]
pub struct S3Driver {
    client: Client,
    bucket: String,
    prefix: String,
    chunk_size: usize,
    /// For error messages: what the operator configured.
    endpoint: String,
    open: OpenUploads,
}

impl S3Driver {
    /// GET of `path` from `offset`, to the end or for `len` bytes.
    async fn get_range(&self, path: &str, offset: u64, len: Option<u64>) -> Result<ByteStream> {
        let key = self.key(path)?;
        let mut req = self.client.get_object().bucket(&self.bucket).key(&key);
        match len {
            Some(n) => req = req.range(format!("bytes={offset}-{}", offset + n - 1)),
            None if offset > 0 => req = req.range(format!("bytes={offset}-")),
            None => {}
        }
        match req.send().await {
            Ok(out) => {
                // Hand on the HTTP body's chunks as they are, without copying.
                let stream = futures_util::stream::unfold(out.body, |mut body| async move {
                    match body.next().await {
                        Some(Ok(chunk)) => Some((Ok(chunk), body)),
                        Some(Err(e)) => Some((Err(std::io::Error::other(e)), body)),
                        None => None,
                    }
                });
                Ok(stream.boxed())
            }
            Err(e) => {
                let is_range = matches!(&e, SdkError::ServiceError(s) if s.err().code() == Some("InvalidRange"));
                if is_range {
                    // Reading from exactly the end is an empty read, as on a file.
                    return match self.head(path).await? {
                        Some((size, _)) if size == offset => Ok(futures_util::stream::empty().boxed()),
                        Some(_) => Err(StorageError::InvalidOffset { path: path.to_string(), offset }),
                        None => Err(StorageError::NotFound(path.to_string())),
                    };
                }
                Err(self.err(path, e))
            }
        }
    }

    /// A driver for registry:2's `storage.s3` settings, with berthd's
    /// outbound TLS configuration.
    pub async fn new(s: &S3Config, tls: Arc<rustls::ClientConfig>) -> S3Driver {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(s.region.clone()))
            .http_client(http::RustlsHttpClient::shared(tls));
        if let (Some(a), Some(k)) = (&s.access_key, &s.secret_key) {
            loader =
                loader.credentials_provider(aws_sdk_s3::config::Credentials::new(a, k, None, None, "berthd-config"));
        }
        let shared = loader.load().await;
        let mut cfg = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(s.force_path_style)
            .retry_config(aws_sdk_s3::config::retry::RetryConfig::standard().with_max_attempts(2));
        if let Some(ep) = &s.endpoint {
            cfg = cfg.endpoint_url(ep);
        }
        let prefix = s.root_directory.trim_matches('/').to_string();
        S3Driver {
            client: Client::from_conf(cfg.build()),
            endpoint: s.endpoint.clone().unwrap_or_else(|| format!("s3.{}.amazonaws.com", s.region)),
            bucket: s.bucket.clone(),
            prefix,
            chunk_size: s.chunk_size.max(MIN_CHUNK_SIZE),
            open: OpenUploads::default(),
        }
    }

    /// The endpoint and bucket, for messages.
    pub fn describe(&self) -> String {
        format!("s3 bucket {} at {}", self.bucket, self.endpoint)
    }

    fn key(&self, path: &str) -> Result<String> {
        check_path(path)?;
        let p = path.trim_start_matches('/');
        Ok(if self.prefix.is_empty() { p.to_string() } else { format!("{}/{p}", self.prefix) })
    }

    fn path_of(&self, key: &str) -> String {
        let rel =
            if self.prefix.is_empty() { key } else { key.strip_prefix(&format!("{}/", self.prefix)).unwrap_or(key) };
        format!("/{}", rel.trim_end_matches('/'))
    }

    /// Maps an SDK error: 404s to NotFound, connection failures to
    /// Unavailable (with the endpoint named), the rest to I/O errors.
    fn err<E>(&self, path: &str, e: SdkError<E, HttpResponse>) -> StorageError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        if let SdkError::ServiceError(s) = &e {
            let code = s.err().code().unwrap_or_default();
            if matches!(code, "NoSuchKey" | "NotFound" | "NoSuchUpload") || s.raw().status().as_u16() == 404 {
                return StorageError::NotFound(path.to_string());
            }
            let message = s.err().message().unwrap_or_default().to_string();
            return StorageError::Io {
                path: path.to_string(),
                source: std::io::Error::other(format!("S3 error {code}: {message}")),
            };
        }
        match &e {
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
                StorageError::Unavailable { backend: self.describe(), message: crate::error_chain::chain(&e) }
            }
            _ => StorageError::Io {
                path: path.to_string(),
                source: std::io::Error::other(crate::error_chain::chain(&e)),
            },
        }
    }

    async fn head(&self, path: &str) -> Result<Option<(u64, SystemTime)>> {
        let key = self.key(path)?;
        match self.client.head_object().bucket(&self.bucket).key(&key).send().await {
            Ok(o) => {
                let modified =
                    o.last_modified().and_then(|t| SystemTime::try_from(*t).ok()).unwrap_or(SystemTime::UNIX_EPOCH);
                Ok(Some((o.content_length().unwrap_or(0).max(0) as u64, modified)))
            }
            Err(e) => match self.err(path, e) {
                StorageError::NotFound(_) => Ok(None),
                other => Err(other),
            },
        }
    }

    /// Keys under `path/`, recursively. Listing without a delimiter is
    /// deliberate: some servers (SeaweedFS) keep empty "directory" entries
    /// after their last object is deleted, which a delimited listing would
    /// report as children. With `first_only` the scan stops at the first
    /// real object (used to decide whether a "directory" exists).
    async fn scan(&self, path: &str, first_only: bool) -> Result<Vec<String>> {
        let mut prefix = if path == "/" { String::new() } else { self.key(path)? };
        if !prefix.is_empty() {
            prefix.push('/');
        } else if !self.prefix.is_empty() {
            prefix = format!("{}/", self.prefix);
        }
        let mut keys = Vec::new();
        let mut token = None;
        loop {
            let out = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| self.err(path, e))?;
            keys.extend(
                out.contents().iter().filter_map(|o| o.key()).filter(|k| !k.ends_with('/')).map(str::to_string),
            );
            if first_only && !keys.is_empty() {
                break;
            }
            match out.next_continuation_token() {
                Some(t) if out.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => break,
            }
        }
        Ok(keys)
    }

    fn open_upload(&self, path: &str) -> Option<Arc<tokio::sync::Mutex<Multipart>>> {
        self.open.lock().unwrap().get(path).cloned()
    }

    async fn abort(&self, path: &str, state: &Multipart) {
        if let (Some(id), Ok(key)) = (&state.upload_id, self.key(path)) {
            let _ = self.client.abort_multipart_upload().bucket(&self.bucket).key(key).upload_id(id).send().await;
        }
    }

    async fn upload_part(&self, path: &str, state: &mut Multipart, data: Bytes) -> Result<()> {
        let key = self.key(path)?;
        let id = match &state.upload_id {
            Some(id) => id.clone(),
            None => {
                let out = self
                    .client
                    .create_multipart_upload()
                    .bucket(&self.bucket)
                    .key(&key)
                    .send()
                    .await
                    .map_err(|e| self.err(path, e))?;
                let id = out.upload_id().unwrap_or_default().to_string();
                state.upload_id = Some(id.clone());
                id
            }
        };
        let number = state.parts.len() as i32 + 1;
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&key)
            .upload_id(&id)
            .part_number(number)
            .body(S3Body::from(data))
            .send()
            .await
            .map_err(|e| self.err(path, e))?;
        state
            .parts
            .push(CompletedPart::builder().part_number(number).set_e_tag(out.e_tag().map(str::to_string)).build());
        Ok(())
    }

    async fn copy(&self, source: &str, dest: &str, size: u64) -> Result<()> {
        let (src_key, dst_key) = (self.key(source)?, self.key(dest)?);
        let copy_source = format!("{}/{}", self.bucket, src_key);
        if size <= MAX_SINGLE_COPY {
            self.client
                .copy_object()
                .bucket(&self.bucket)
                .key(&dst_key)
                .copy_source(&copy_source)
                .send()
                .await
                .map_err(|e| self.err(source, e))?;
            return Ok(());
        }
        let out = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&dst_key)
            .send()
            .await
            .map_err(|e| self.err(dest, e))?;
        let id = out.upload_id().unwrap_or_default().to_string();
        let mut parts = Vec::new();
        let mut offset = 0;
        while offset < size {
            let end = (offset + COPY_PART_SIZE).min(size) - 1;
            let number = parts.len() as i32 + 1;
            let res = self
                .client
                .upload_part_copy()
                .bucket(&self.bucket)
                .key(&dst_key)
                .upload_id(&id)
                .part_number(number)
                .copy_source(&copy_source)
                .copy_source_range(format!("bytes={offset}-{end}"))
                .send()
                .await;
            match res {
                Ok(o) => parts.push(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(o.copy_part_result().and_then(|r| r.e_tag()).map(str::to_string))
                        .build(),
                ),
                Err(e) => {
                    let _ = self
                        .client
                        .abort_multipart_upload()
                        .bucket(&self.bucket)
                        .key(&dst_key)
                        .upload_id(&id)
                        .send()
                        .await;
                    return Err(self.err(source, e));
                }
            }
            offset = end + 1;
        }
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&dst_key)
            .upload_id(&id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
            .send()
            .await
            .map_err(|e| self.err(dest, e))?;
        Ok(())
    }
}

#[async_trait]
impl StorageDriver for S3Driver {
    fn name(&self) -> &'static str {
        "s3"
    }

    async fn get_content(&self, path: &str) -> Result<Bytes> {
        let key = self.key(path)?;
        let out =
            self.client.get_object().bucket(&self.bucket).key(&key).send().await.map_err(|e| self.err(path, e))?;
        let data = out.body.collect().await.map_err(|e| StorageError::Unavailable {
            backend: self.describe(),
            message: format!("reading an object broke off: {e}"),
        })?;
        Ok(data.into_bytes())
    }

    async fn put_content(&self, path: &str, content: Bytes) -> Result<()> {
        let key = self.key(path)?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .body(S3Body::from(content))
            .send()
            .await
            .map_err(|e| self.err(path, e))?;
        Ok(())
    }

    async fn reader(&self, path: &str, offset: u64) -> Result<ByteStream> {
        self.get_range(path, offset, None).await
    }

    async fn read_range(&self, path: &str, offset: u64, len: u64) -> Result<ByteStream> {
        if len == 0 {
            // An empty range is not expressible in HTTP; check the object.
            return match self.head(path).await? {
                Some((size, _)) if offset <= size => Ok(futures_util::stream::empty().boxed()),
                Some(_) => Err(StorageError::InvalidOffset { path: path.to_string(), offset }),
                None => Err(StorageError::NotFound(path.to_string())),
            };
        }
        self.get_range(path, offset, Some(len)).await
    }

    async fn writer(&self, path: &str, append: bool) -> Result<Box<dyn FileWriter>> {
        self.key(path)?;
        let state = if append {
            match self.open_upload(path) {
                Some(s) => s,
                None if self.head(path).await?.is_some() => {
                    return Err(StorageError::Io {
                        path: path.to_string(),
                        source: std::io::Error::other("cannot append to a committed S3 object"),
                    })
                }
                None => return Err(StorageError::NotFound(path.to_string())),
            }
        } else {
            let fresh = Arc::new(tokio::sync::Mutex::new(Multipart::default()));
            if let Some(old) = self.open.lock().unwrap().insert(path.to_string(), fresh.clone()) {
                let driver = self.clone();
                let path = path.to_string();
                tokio::spawn(async move { driver.abort(&path, &*old.lock().await).await });
            }
            fresh
        };
        let size = state.lock().await.size;
        Ok(Box::new(S3Writer { driver: self.clone(), path: path.to_string(), state, size }))
    }

    async fn stat(&self, path: &str) -> Result<FileInfo> {
        if let Some(open) = self.open_upload(path) {
            let size = open.lock().await.size;
            return Ok(FileInfo { path: path.to_string(), size, modified: SystemTime::now(), is_dir: false });
        }
        if let Some((size, modified)) = self.head(path).await? {
            return Ok(FileInfo { path: path.to_string(), size, modified, is_dir: false });
        }
        if self.scan(path, true).await?.is_empty() {
            return Err(StorageError::NotFound(path.to_string()));
        }
        Ok(FileInfo { path: path.to_string(), size: 0, modified: SystemTime::UNIX_EPOCH, is_dir: true })
    }

    async fn list(&self, path: &str) -> Result<Vec<String>> {
        let base = format!("{}/", path.trim_end_matches('/'));
        let base = if path == "/" { "/".to_string() } else { base };
        let mut out: Vec<String> = Vec::new();
        for key in self.scan(path, false).await? {
            let full = self.path_of(&key);
            if let Some(rest) = full.strip_prefix(&base) {
                out.push(format!("{base}{}", rest.split('/').next().unwrap_or(rest)));
            }
        }
        // Uploads still open in this process are objects too.
        for open in self.open.lock().unwrap().keys() {
            if let Some(rest) = open.strip_prefix(&base) {
                out.push(format!("{base}{}", rest.split('/').next().unwrap_or(rest)));
            }
        }
        out.sort();
        out.dedup();
        if out.is_empty() && path != "/" {
            return Err(StorageError::NotFound(path.to_string()));
        }
        Ok(out)
    }

    async fn move_object(&self, source: &str, dest: &str) -> Result<()> {
        self.key(dest)?;
        let (size, _) = self.head(source).await?.ok_or_else(|| StorageError::NotFound(source.to_string()))?;
        self.copy(source, dest, size).await?;
        let key = self.key(source)?;
        self.client.delete_object().bucket(&self.bucket).key(&key).send().await.map_err(|e| self.err(source, e))?;
        Ok(())
    }

    async fn redirect_url(&self, path: &str) -> Result<Option<String>> {
        let key = self.key(path)?;
        let cfg = aws_sdk_s3::presigning::PresigningConfig::expires_in(PRESIGN_TTL)
            .map_err(|e| StorageError::Io { path: path.to_string(), source: std::io::Error::other(e.to_string()) })?;
        let req = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&key)
            .presigned(cfg)
            .await
            .map_err(|e| self.err(path, e))?;
        Ok(Some(req.uri().to_string()))
    }

    async fn delete(&self, path: &str) -> Result<()> {
        let key = self.key(path)?;
        // Abort uploads open under this path (e.g. a cancelled blob upload).
        let base = format!("{}/", path.trim_end_matches('/'));
        let open: Vec<(String, Arc<tokio::sync::Mutex<Multipart>>)> = {
            let mut map = self.open.lock().unwrap();
            let keys: Vec<String> = map.keys().filter(|k| *k == path || k.starts_with(&base)).cloned().collect();
            keys.into_iter().filter_map(|k| map.remove(&k).map(|v| (k, v))).collect()
        };
        let had_open = !open.is_empty();
        for (p, state) in open {
            self.abort(&p, &*state.lock().await).await;
        }
        let mut keys = match self.head(path).await? {
            Some(_) => vec![key],
            None => Vec::new(),
        };
        keys.extend(self.scan(path, false).await?);
        if keys.is_empty() {
            return if had_open { Ok(()) } else { Err(StorageError::NotFound(path.to_string())) };
        }
        self.delete_keys(path, &keys).await
    }

    async fn delete_objects(&self, paths: &[String]) -> Result<()> {
        let keys = paths.iter().map(|p| self.key(p)).collect::<Result<Vec<String>>>()?;
        {
            // Uploads still open at these paths are abandoned with them.
            let open: Vec<Arc<tokio::sync::Mutex<Multipart>>> = {
                let mut map = self.open.lock().unwrap();
                paths.iter().filter_map(|p| map.remove(p)).collect()
            };
            for (p, state) in paths.iter().zip(open) {
                self.abort(p, &*state.lock().await).await;
            }
        }
        match paths.first() {
            Some(first) => self.delete_keys(first, &keys).await,
            None => Ok(()),
        }
    }
}

impl S3Driver {
    /// Deletes `keys` with `DeleteObjects`, 1000 per request; a key the
    /// bucket refused to delete is an error (`path` names the request).
    async fn delete_keys(&self, path: &str, keys: &[String]) -> Result<()> {
        for batch in keys.chunks(1000) {
            let objects: Vec<ObjectIdentifier> =
                batch.iter().filter_map(|k| ObjectIdentifier::builder().key(k).build().ok()).collect();
            let delete = Delete::builder().set_objects(Some(objects)).quiet(true).build().map_err(|e| {
                StorageError::Io { path: path.to_string(), source: std::io::Error::other(e.to_string()) }
            })?;
            let out = self
                .client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| self.err(path, e))?;
            if let Some(failed) = out.errors().first() {
                return Err(StorageError::Io {
                    path: self.path_of(failed.key().unwrap_or_default()),
                    source: std::io::Error::other(format!(
                        "S3 refused to delete it: {} {} ({} of {} keys in the batch failed)",
                        failed.code().unwrap_or_default(),
                        failed.message().unwrap_or_default(),
                        out.errors().len(),
                        batch.len()
                    )),
                });
            }
        }
        Ok(())
    }
}

struct S3Writer {
    driver: S3Driver,
    path: String,
    state: Arc<tokio::sync::Mutex<Multipart>>,
    size: u64,
}

#[async_trait]
impl FileWriter for S3Writer {
    async fn write(&mut self, data: &[u8]) -> Result<()> {
        let mut state = self.state.lock().await;
        state.pending.extend_from_slice(data);
        state.size += data.len() as u64;
        self.size = state.size;
        while state.pending.len() >= self.driver.chunk_size {
            let part = state.pending.split_to(self.driver.chunk_size).freeze();
            self.driver.upload_part(&self.path, &mut state, part).await?;
        }
        Ok(())
    }

    fn size(&self) -> u64 {
        self.size
    }

    async fn close(self: Box<Self>) -> Result<()> {
        // Parts are already uploaded; the tail waits in memory for more data.
        Ok(())
    }

    async fn cancel(self: Box<Self>) -> Result<()> {
        self.driver.open.lock().unwrap().remove(&self.path);
        let state = self.state.lock().await;
        self.driver.abort(&self.path, &state).await;
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        let mut state = self.state.lock().await;
        let tail = std::mem::take(&mut state.pending).freeze();
        let result = async {
            if state.upload_id.is_none() {
                // Small enough for one request.
                return self.driver.put_content(&self.path, tail).await;
            }
            if !tail.is_empty() {
                self.driver.upload_part(&self.path, &mut state, tail).await?;
            }
            let key = self.driver.key(&self.path)?;
            self.driver
                .client
                .complete_multipart_upload()
                .bucket(&self.driver.bucket)
                .key(&key)
                .upload_id(state.upload_id.clone().unwrap_or_default())
                .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(state.parts.clone())).build())
                .send()
                .await
                .map_err(|e| self.driver.err(&self.path, e))?;
            Ok(())
        }
        .await;
        self.driver.open.lock().unwrap().remove(&self.path);
        if result.is_err() {
            self.driver.abort(&self.path, &state).await;
        }
        result
    }
}
