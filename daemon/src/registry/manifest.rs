//! A view of a manifest: its media type and the descriptors it references.
//! Parsing checks what the registry must enforce (schema version, media
//! types, descriptor digests); it never rewrites the bytes, which are stored
//! exactly as pushed so their digest stays valid.

use super::error::{Error, Result};
use crate::digest::Digest;
use serde::Deserialize;

pub use crate::media_types::{
    DOCKER_LIST, DOCKER_MANIFEST, DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED, MAX_MANIFEST_SIZE, OCI_INDEX, OCI_MANIFEST,
    SUPPORTED,
};

/// Layer media types that are not pushed to registries (they carry `urls`),
/// so a manifest may reference them without the blob being present.
const FOREIGN_LAYERS: [&str; 3] = [
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
];

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    media_type: Option<String>,
    digest: String,
    size: i64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<i64>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<RawDescriptor>,
    layers: Option<Vec<RawDescriptor>>,
    manifests: Option<Vec<RawDescriptor>>,
    subject: Option<RawDescriptor>,
    annotations: Option<serde_json::Map<String, serde_json::Value>>,
}

/// A referenced content descriptor.
#[derive(Debug, Clone)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: i64,
}

/// What the registry needs to know of a manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub media_type: String,
    /// `artifactType`, else the config's media type (the referrers API rule).
    pub artifact_type: Option<String>,
    /// Blobs that must exist in the repository (config and layers).
    pub blobs: Vec<Descriptor>,
    /// Child manifests that must exist in the repository (index entries).
    pub children: Vec<Descriptor>,
    pub subject: Option<Digest>,
    pub annotations: Option<serde_json::Map<String, serde_json::Value>>,
}

fn descriptor(raw: &RawDescriptor, what: &str) -> Result<Descriptor> {
    let digest =
        raw.digest.parse().map_err(|e| Error::ManifestInvalid(format!("{what} has an invalid digest: {e}")))?;
    if raw.size < 0 {
        return Err(Error::ManifestInvalid(format!("{what} has a negative size")));
    }
    Ok(Descriptor { media_type: raw.media_type.clone().unwrap_or_default(), digest, size: raw.size })
}

fn is_schema1(media_type: &str) -> bool {
    media_type == DOCKER_SCHEMA1 || media_type == DOCKER_SCHEMA1_SIGNED
}

const SCHEMA1_REFUSED: &str = "Docker schema1 manifests are not supported (deprecated since 2017); push the image as Docker schema2 or OCI, e.g. `skopeo copy --format v2s2` or `--format oci`";

impl Manifest {
    /// Parses a manifest pushed with `content_type` (the request's
    /// Content-Type, if any).
    pub fn parse(body: &[u8], content_type: Option<&str>) -> Result<Manifest> {
        let content_type = content_type.map(|c| c.split(';').next().unwrap_or(c).trim()).filter(|c| !c.is_empty());
        if content_type.is_some_and(is_schema1) {
            return Err(Error::ManifestInvalid(SCHEMA1_REFUSED.into()));
        }
        let raw: RawManifest = serde_json::from_slice(body)
            .map_err(|e| Error::ManifestInvalid(format!("body is not a valid manifest JSON document: {e}")))?;
        if raw.schema_version == Some(1) || raw.media_type.as_deref().is_some_and(is_schema1) {
            return Err(Error::ManifestInvalid(SCHEMA1_REFUSED.into()));
        }
        if raw.schema_version != Some(2) {
            return Err(Error::ManifestInvalid("schemaVersion must be 2".into()));
        }
        let media_type = match (raw.media_type.as_deref(), content_type) {
            (Some(body), Some(header)) if body != header && header != "application/json" => {
                return Err(Error::ManifestInvalid(format!(
                    "the Content-Type header {header:?} does not match the manifest's mediaType {body:?}"
                )))
            }
            (Some(body), _) => body.to_string(),
            (None, Some(header)) if header != "application/json" => header.to_string(),
            (None, _) if raw.manifests.is_some() => OCI_INDEX.to_string(),
            (None, _) => OCI_MANIFEST.to_string(),
        };
        Self::from_raw(raw, media_type)
    }

    /// Reads back a stored manifest (already validated when pushed); the
    /// media type is the one it was pushed as, inferred as registry:2 does
    /// when the body does not name it.
    pub fn parse_stored(body: &[u8]) -> Result<Manifest> {
        let raw: RawManifest = serde_json::from_slice(body)
            .map_err(|e| Error::ManifestInvalid(format!("stored manifest is not valid JSON: {e}")))?;
        let media_type = match raw.media_type.clone() {
            Some(m) => m,
            None if raw.schema_version == Some(1) => DOCKER_SCHEMA1_SIGNED.to_string(),
            None if raw.manifests.is_some() => OCI_INDEX.to_string(),
            None => OCI_MANIFEST.to_string(),
        };
        if is_schema1(&media_type) {
            return Ok(Manifest {
                media_type,
                artifact_type: None,
                blobs: vec![],
                children: vec![],
                subject: None,
                annotations: None,
            });
        }
        Self::from_raw(raw, media_type)
    }

    fn from_raw(raw: RawManifest, media_type: String) -> Result<Manifest> {
        let is_index = media_type == OCI_INDEX || media_type == DOCKER_LIST;
        if !SUPPORTED.contains(&media_type.as_str()) {
            return Err(Error::ManifestInvalid(format!(
                "manifest media type {media_type:?} is not supported; use one of {}",
                SUPPORTED.join(", ")
            )));
        }
        let mut blobs = Vec::new();
        let mut children = Vec::new();
        if is_index {
            let list = raw
                .manifests
                .as_ref()
                .ok_or_else(|| Error::ManifestInvalid("an index must have a `manifests` array".into()))?;
            for (i, m) in list.iter().enumerate() {
                children.push(descriptor(m, &format!("manifests[{i}]"))?);
            }
        } else {
            let config = raw
                .config
                .as_ref()
                .ok_or_else(|| Error::ManifestInvalid("an image manifest must have a `config` descriptor".into()))?;
            blobs.push(descriptor(config, "config")?);
            for (i, l) in raw.layers.iter().flatten().enumerate() {
                let d = descriptor(l, &format!("layers[{i}]"))?;
                if !FOREIGN_LAYERS.contains(&d.media_type.as_str()) {
                    blobs.push(d);
                }
            }
        }
        let subject = match &raw.subject {
            Some(s) => Some(descriptor(s, "subject")?.digest),
            None => None,
        };
        let artifact_type = raw.artifact_type.clone().or_else(|| {
            if is_index {
                None
            } else {
                raw.config.as_ref().and_then(|c| c.media_type.clone())
            }
        });
        Ok(Manifest { media_type, artifact_type, blobs, children, subject, annotations: raw.annotations })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn image_manifest_lists_config_and_layers() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":3}}],"subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":5}}}}"#,
            d('a'),
            d('b'),
            d('c')
        );
        let m = Manifest::parse(body.as_bytes(), Some(OCI_MANIFEST)).unwrap();
        assert_eq!(m.media_type, OCI_MANIFEST);
        assert_eq!(m.blobs.len(), 2);
        assert_eq!(m.subject.unwrap().to_string(), d('c'));
        assert_eq!(m.artifact_type.as_deref(), Some("application/vnd.oci.image.config.v1+json"));
    }

    #[test]
    fn schema1_and_mismatched_types_are_refused() {
        let s1 = br#"{"schemaVersion":1,"name":"x","tag":"y","fsLayers":[]}"#;
        let e = Manifest::parse(s1, None).unwrap_err();
        assert!(e.to_string().contains("schema1"), "{e}");
        let idx = format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[]}}"#);
        assert!(Manifest::parse(idx.as_bytes(), Some(OCI_MANIFEST)).is_err());
        assert!(Manifest::parse(idx.as_bytes(), Some(OCI_INDEX)).is_ok());
        assert!(Manifest::parse(b"not json", None).is_err());
        let bad = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"digest":"sha256:xyz","size":1}}"#;
        assert!(Manifest::parse(bad.as_bytes(), None).is_err());
    }

    #[test]
    fn media_type_is_inferred_when_absent() {
        let idx = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert_eq!(Manifest::parse(idx, None).unwrap().media_type, OCI_INDEX);
        assert_eq!(Manifest::parse(idx, Some(OCI_INDEX)).unwrap().media_type, OCI_INDEX);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            "sha256:[0-9a-f]{64}|application/vnd\\.oci\\.[a-z.+]{0,30}|\\PC{0,12}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                proptest::collection::btree_map(
                    "schemaVersion|mediaType|config|layers|manifests|subject|digest|size|blobs|artifactType|[a-z]{1,6}",
                    inner,
                    0..6
                )
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// Any body is parsed or refused with MANIFEST_INVALID-like errors,
        /// never a panic; what is accepted lists only valid digests.
        #[test]
        fn any_manifest_body_is_parsed_or_refused(v in json(), ct in proptest::option::of("application/vnd\\.oci\\.image\\.(manifest|index)\\.v1\\+json|\\PC{0,10}")) {
            let body = v.to_string();
            if let Ok(m) = Manifest::parse(body.as_bytes(), ct.as_deref()) {
                for d in m.blobs.iter().chain(&m.children) {
                    prop_assert_eq!(d.digest.to_string().parse::<crate::digest::Digest>().ok(), Some(d.digest.clone()));
                }
            }
            let _ = Manifest::parse_stored(body.as_bytes());
        }

        #[test]
        fn any_bytes_are_parsed_or_refused(b in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Manifest::parse(&b, None);
            let _ = Manifest::parse_stored(&b);
        }
    }
}
