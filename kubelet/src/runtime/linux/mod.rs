//! Real containers: OCI bundles on overlayfs run by youki's `libcontainer` under a small
//! per-container shim process that keeps logs and the exit status. (Being written.)
