//! What every rkube control-plane component shares, as Kubernetes' `component-base` and
//! `client-go/tools/leaderelection` are shared: an API client from `--kubeconfig`, and
//! leader election on a `coordination.k8s.io` Lease so that only one copy acts.

pub mod client;
pub mod events;
pub mod health;
pub mod leaderelection;
pub mod nft;
pub mod pki;
pub mod reflect;
pub mod signals;
pub mod tls;
