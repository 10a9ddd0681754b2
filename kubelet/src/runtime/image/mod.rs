//! The node's content-addressed image store (OCI image layout), archive import/export,
//! registry pulls, and the offline busybox image. (Being written; see the runtime docs.)

use std::path::{Path, PathBuf};

use super::{ImageInfo, Result};

/// An image ready to run: its config and its unpacked layers, lowest first.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    pub info: ImageInfo,
    pub config: oci_spec::image::ImageConfiguration,
    /// Unpacked, read-only layer directories, bottom layer first (overlayfs wants them
    /// top first in `lowerdir=`).
    pub layers: Vec<PathBuf>,
}

/// The store under `ROOT/image-store/`.
#[derive(Debug)]
pub struct ImageStore {
    root: PathBuf,
}

impl ImageStore {
    pub fn open(root: &Path) -> Result<Self> {
        Ok(ImageStore { root: root.to_path_buf() })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The image a reference names, with its layers unpacked, or None if absent.
    pub fn resolve(&self, _reference: &str) -> Result<Option<ResolvedImage>> {
        Ok(None)
    }
}
