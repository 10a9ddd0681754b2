//! Links `rkube` as a position-dependent executable (no PIE). Every container's shim is a
//! fresh exec of this binary; as a PIE, each shim would first apply ~88,000 relocations
//! and then keep its own private copy (~1.6 MiB) of the binary's relocated read-only
//! data. Without PIE those pages stay clean and are shared by the lab and all its shims,
//! and an exec takes half the time. The price: the binary's own code and data sit at
//! fixed addresses (shared libraries, heap and stacks are still randomized), as in
//! Debian's `runc` and `etcd`, which are linked the same way.
//! `kubelet/build.rs` does the same for the kubelet binary.
fn main() {
    println!("cargo:rustc-link-arg-bins=-no-pie");
}
