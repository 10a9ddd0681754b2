//! kube-apiserver: the Kubernetes REST API over a [`storage::Store`].

pub mod storage;
pub mod printers;
