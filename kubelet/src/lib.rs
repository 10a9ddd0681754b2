//! The rkube kubelet: registers its Node, renews its Lease, runs the pods bound to it
//! through the embedded runtime, writes their status back, and serves the kubelet API
//! (logs, exec, port-forward, stats) that the apiserver proxies to.

pub mod runtime;
