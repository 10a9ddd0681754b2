//! Links the `kubelet` binary as a position-dependent executable (no PIE): each
//! container's shim is an exec of it, and as a PIE every shim would keep a private,
//! relocated copy (~1.6 MiB) of the binary's read-only data. See `deploy/build.rs`.
fn main() {
    println!("cargo:rustc-link-arg-bins=-no-pie");
}
