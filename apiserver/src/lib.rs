//! kube-apiserver: the Kubernetes REST API over a [`storage::Store`], for the stock
//! kubectl, client-go, kube-rs and the Python client alike.

pub mod admission;
pub mod audit;
pub mod auth;
pub mod certificates;
pub mod codec;
pub mod componentstatus;
pub mod conversion;
pub mod discovery;
pub mod errors;
pub mod eviction;
pub mod filter;
pub mod handlers;
pub mod health;
pub mod limits;
pub mod metrics;
pub mod openapi;
pub mod openapi_v2;
pub mod peers;
pub mod podsecurity;
pub mod printers;
pub mod protobuf;
pub mod proxy;
pub mod quota;
pub mod rawjson;
pub mod registry;
pub mod server;
pub mod storage;
pub mod tls;
pub mod watchcache;

pub use server::{run, ApiServer, Config};
