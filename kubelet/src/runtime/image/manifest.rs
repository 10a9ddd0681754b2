//! The JSON documents of an image (descriptors, manifests, indexes) as both the OCI image
//! spec and Docker's schema 2 write them, parsed leniently: the store needs only a few fields.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST_V1: &str = "application/vnd.docker.distribution.manifest.v1+json";
pub const DOCKER_MANIFEST_V1_SIGNED: &str =
    "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// The annotation containerd (and Docker ≥ 25) use for the full image name.
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
/// The OCI annotation for the reference (a tag, or a full name by some tools).
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Media types a registry may answer a manifest request with, in order of preference.
pub const ACCEPTED_MANIFEST_TYPES: &[&str] = &[
    OCI_INDEX,
    DOCKER_MANIFEST_LIST,
    OCI_MANIFEST,
    DOCKER_MANIFEST,
];

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// A content descriptor: what a blob is, its digest and size.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An image manifest (OCI or Docker schema 2; the two share this shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub media_type: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An image index or Docker manifest list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub media_type: String,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// What a manifest document turned out to be.
#[derive(Debug, Clone)]
pub enum Document {
    Manifest(Manifest),
    Index(Index),
}

/// Parses a manifest or index, by its declared media type or, lacking one, by its shape.
pub fn parse_document(bytes: &[u8], media_type_hint: Option<&str>) -> Result<Document, String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        #[serde(default)]
        schema_version: Option<u32>,
        #[serde(default)]
        media_type: Option<String>,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
        #[serde(default)]
        layers: Option<serde_json::Value>,
    }
    let probe: Probe =
        serde_json::from_slice(bytes).map_err(|e| format!("malformed manifest: {e}"))?;
    let media_type = probe
        .media_type
        .as_deref()
        .or(media_type_hint)
        .unwrap_or("");
    if probe.schema_version == Some(1)
        || media_type == DOCKER_MANIFEST_V1
        || media_type == DOCKER_MANIFEST_V1_SIGNED
    {
        return Err("Docker image manifest schema 1 is not supported (push the image again with a recent client)".into());
    }
    let is_index = match media_type {
        OCI_INDEX | DOCKER_MANIFEST_LIST => true,
        OCI_MANIFEST | DOCKER_MANIFEST => false,
        _ => probe.manifests.is_some() && probe.layers.is_none(),
    };
    if is_index {
        serde_json::from_slice(bytes)
            .map(Document::Index)
            .map_err(|e| format!("malformed image index: {e}"))
    } else {
        serde_json::from_slice(bytes)
            .map(Document::Manifest)
            .map_err(|e| format!("malformed image manifest: {e}"))
    }
}

/// The host's platform in Go's names (`linux`, `amd64`/`arm64`…), as image indexes use them.
pub fn host_platform() -> Platform {
    let architecture = oci_spec::image::Arch::default().to_string();
    let variant = match architecture.as_str() {
        "arm64" => Some("v8".to_string()),
        _ => None,
    };
    Platform {
        architecture,
        os: oci_spec::image::Os::default().to_string(),
        variant,
    }
}

/// Picks the entry of an index that runs on this host: same OS and architecture, the
/// variant if both sides name one. Attestation manifests (`unknown/unknown`) never match.
pub fn select_platform(index: &Index) -> Option<&Descriptor> {
    let host = host_platform();
    let matches = |d: &&Descriptor| {
        d.platform
            .as_ref()
            .is_some_and(|p| p.os == host.os && p.architecture == host.architecture)
    };
    let candidates: Vec<&Descriptor> = index.manifests.iter().filter(matches).collect();
    candidates
        .iter()
        .find(|d| {
            let want = host.variant.as_deref();
            let have = d.platform.as_ref().and_then(|p| p.variant.as_deref());
            want.is_some() && want == have
        })
        .or_else(|| candidates.first())
        .copied()
}

/// The layer media type for a blob, from its first bytes.
pub fn layer_media_type_for(magic: &[u8]) -> &'static str {
    match super::unpack::Compression::detect(magic) {
        super::unpack::Compression::Gzip => OCI_LAYER_GZIP,
        super::unpack::Compression::Zstd => OCI_LAYER_ZSTD,
        super::unpack::Compression::None => OCI_LAYER_TAR,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn selects_the_host_platform() {
        let host = host_platform();
        let other = if host.architecture == "amd64" {
            "arm64"
        } else {
            "amd64"
        };
        let desc = |arch: &str, os: &str, d: char| Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: format!("sha256:{}", d.to_string().repeat(64)),
            size: 1,
            platform: Some(Platform {
                architecture: arch.into(),
                os: os.into(),
                variant: None,
            }),
            annotations: BTreeMap::new(),
        };
        let index = Index {
            schema_version: 2,
            media_type: OCI_INDEX.into(),
            manifests: vec![
                desc(other, "linux", 'a'),
                desc("unknown", "unknown", 'b'),
                desc(&host.architecture, "linux", 'c'),
            ],
            annotations: BTreeMap::new(),
        };
        assert_eq!(
            select_platform(&index).map(|d| d.digest.chars().last()),
            Some(Some('c'))
        );
        let none = Index {
            manifests: vec![desc(other, "linux", 'a')],
            ..index
        };
        assert!(select_platform(&none).is_none());
    }

    #[test]
    fn parses_by_shape_and_rejects_schema1() {
        let m = br#"{"schemaVersion":2,"config":{"digest":"sha256:00","size":1},"layers":[]}"#;
        assert!(matches!(parse_document(m, None), Ok(Document::Manifest(_))));
        let i = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(matches!(parse_document(i, None), Ok(Document::Index(_))));
        let v1 = br#"{"schemaVersion":1,"name":"x","fsLayers":[]}"#;
        assert!(parse_document(v1, None).unwrap_err().contains("schema 1"));
    }
}
