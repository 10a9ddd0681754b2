//! Kubernetes API machinery shared by rkube's components: label and field selectors,
//! the three patch formats, name validation and resource quantities, all on
//! `serde_json::Value`.
//!
//! - [`labels`]: label selectors (string syntax and `LabelSelector` objects).
//! - [`fields`]: field selectors.
//! - [`patch`]: JSON patch, JSON merge patch and strategic merge patch.
//! - [`validation`]: DNS names, label keys and values, with Kubernetes' messages.
//! - [`quantity`]: resource quantities (`100m`, `1Gi`).
//! - [`quota`]: what objects charge against a ResourceQuota, and resource-list arithmetic.
//! - [`rbac`]: the normal form of RBAC policy rules and ClusterRole aggregation.

pub mod fields;
pub mod labels;
pub mod managedfields;
pub mod patch;
pub mod quantity;
pub mod quota;
pub mod rbac;
pub mod validation;

pub use fields::FieldSelector;
pub use labels::Selector;
pub use quantity::Quantity;
