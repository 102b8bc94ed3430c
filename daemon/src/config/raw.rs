//! The config file as written: registry:2's `config.yml` keys and Berth's
//! own beside them, field for field. Every key berthd reads is a field
//! here — that is the list of known keys; a key that is not one is
//! reported by its path and ignored. Some registry:2 keys are fields only
//! so that they are not reported (`log.fields`, `storage.s3.v4auth`, …).
//! The section modules turn these into [`super::Config`], checking values
//! that depend on each other.

use super::values::{ByteSize, Flag, GoDuration, List, Text};
use serde::Deserialize;

/// A registry:2 key berthd accepts and has no use for: read whole so that
/// it is not reported (serde's `IgnoredAny` would count as ignored).
pub type Accepted = yaml_serde::Value;

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct Raw {
    pub version: Option<Text>,
    pub log: Log,
    pub storage: Storage,
    pub http: Http,
    /// Read per method (`auth.htpasswd` or `auth.token`); anything else is
    /// refused rather than ignored, since ignoring it would open the door.
    pub auth: Option<yaml_serde::Mapping>,
    pub listeners: Option<Vec<Listener>>,
    pub cache: Cache,
    pub tls: OutboundTls,
    pub mirrors: Option<Vec<Mirror>>,
    pub proxy: Option<Proxy>,
    pub containerd: Containerd,
    pub layerindex: LayerIndex,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct Log {
    pub level: Option<Text>,
    pub formatter: Option<Text>,
    pub fields: Option<Accepted>,
    pub accesslog: AccessLog,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct AccessLog {
    pub disabled: Option<Flag>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct Storage {
    pub filesystem: Option<Filesystem>,
    pub s3: Option<S3>,
    pub delete: Enabled,
    pub maintenance: Maintenance,
    pub redirect: Redirect,
    pub gc: Gc,
    pub retention: Retention,
}

/// `storage.retention`: zot's tag retention policies.
#[derive(Deserialize, Default)]
#[serde(default)]
pub struct Retention {
    pub policies: Vec<RetentionPolicy>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct RetentionPolicy {
    pub repositories: Option<List>,
    pub deletereferrers: Option<Flag>,
    pub keeptags: Option<Vec<KeepTags>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct KeepTags {
    pub patterns: Option<List>,
    pub mostrecentlypushedcount: Option<u64>,
    pub mostrecentlypulledcount: Option<u64>,
    pub pushedwithin: Option<GoDuration>,
    pub pulledwithin: Option<GoDuration>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct Gc {
    pub interval: Option<GoDuration>,
    pub delay: Option<GoDuration>,
    pub dryrun: Option<Flag>,
    pub deleteuntagged: Option<Flag>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct Filesystem {
    pub rootdirectory: Option<Text>,
    pub maxthreads: Option<Accepted>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct S3 {
    pub accesskey: Option<Text>,
    pub secretkey: Option<Text>,
    pub region: Option<Text>,
    pub regionendpoint: Option<Text>,
    pub bucket: Option<Text>,
    pub rootdirectory: Option<Text>,
    pub secure: Option<Flag>,
    pub v4auth: Option<Flag>,
    pub chunksize: Option<ByteSize>,
    pub forcepathstyle: Option<Flag>,
    pub skipverify: Option<Flag>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct Enabled {
    pub enabled: Option<Flag>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct Maintenance {
    pub readonly: Enabled,
    pub uploadpurging: UploadPurging,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct UploadPurging {
    pub enabled: Option<Flag>,
    pub age: Option<GoDuration>,
    pub interval: Option<GoDuration>,
    pub dryrun: Option<Flag>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct Redirect {
    pub disable: Option<Flag>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct Http {
    pub addr: Option<Text>,
    pub net: Option<Text>,
    pub host: Option<Text>,
    /// Header name → value or list of values, in file order.
    pub headers: Option<yaml_serde::Mapping>,
    pub tls: Option<Tls>,
    pub debug: Debug,
    pub timeouts: Timeouts,
    pub maxconnections: Option<Text>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct Tls {
    pub certificate: Option<Text>,
    pub key: Option<Text>,
    pub minimumtls: Option<Text>,
    pub clientcas: Option<List>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct Debug {
    pub addr: Option<Text>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct Timeouts {
    pub header: Option<GoDuration>,
    pub body: Option<GoDuration>,
    pub send: Option<GoDuration>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct Htpasswd {
    pub realm: Option<Text>,
    pub path: Option<Text>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct Token {
    pub realm: Option<Text>,
    pub service: Option<Text>,
    pub issuer: Option<Text>,
    pub rootcertbundle: Option<Text>,
    pub autoredirect: Option<Accepted>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct Listener {
    pub addr: Option<Text>,
    pub tls: Option<Tls>,
    pub access: Access,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct Access {
    pub anonymous: Option<List>,
    pub authenticated: Option<List>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct Cache {
    pub enabled: Option<Flag>,
    pub path: Option<Text>,
    pub maxsize: Option<ByteSize>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct OutboundTls {
    pub cacerts: Option<List>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct Mirror {
    pub name: Option<Text>,
    pub url: Option<Text>,
    pub username: Option<Text>,
    pub password: Option<Text>,
    pub tagttl: Option<GoDuration>,
    pub allow: Option<List>,
    pub timeout: Option<GoDuration>,
    pub tokenhosts: Option<List>,
    pub plainhttpcredentials: Option<Flag>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct Proxy {
    pub remoteurl: Option<Text>,
    pub username: Option<Text>,
    pub password: Option<Text>,
    pub ttl: Option<GoDuration>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct Containerd {
    pub registries: Option<List>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct LayerIndex {
    pub key: Option<Text>,
    pub keyfile: Option<Text>,
}
