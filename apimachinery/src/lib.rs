//! Kubernetes API machinery shared by rkube's components: label and field selectors,
//! the three patch formats, and name validation, all on `serde_json::Value`.
