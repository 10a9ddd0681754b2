//! An in-process cluster for cross-component tests: the real apiserver on the embedded
//! store, the controller-manager and scheduler as libraries, fake nodes that report
//! Ready, and a fake kubelet that runs bound pods by writing their status; and, for
//! privileged tests, a LAN of real nodes (network namespaces running the `kubelet` and
//! `kube-proxy` binaries) on one machine.

pub mod cluster;
pub mod fakenode;
pub mod kubectl_compare;
pub mod multinode;
