//! One module per kubectl command, each with a clap `Args` and
//! `pub async fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()>`; and the HTTP helpers
//! they share.

// Read commands
pub mod api_resources;
pub mod api_versions;
pub mod auth;
pub mod cluster_info;
pub mod config;
pub mod describe;
pub mod explain;
pub mod get;
pub mod logs;
pub mod top;
pub mod version;
pub mod wait;
// Write commands (one module each; the write-commands helper adds theirs here)
pub mod annotate;
pub mod apply;
pub mod certificate;
pub mod cordon;
pub mod cp;
pub mod create;
pub mod delete;
pub mod drain;
pub mod edit;
pub mod exec;
pub mod expose;
pub mod label;
pub mod patch;
pub mod port_forward;
pub mod rollout;
pub mod run;
pub mod scale;
pub mod set;
pub mod taint;

use serde_json::Value;

/// GETs `url` (path and query) asking for `accept`.
pub async fn get_accept(client: &kube::Client, url: &str, accept: &str) -> anyhow::Result<Value> {
    let req = http::Request::get(url)
        .header(http::header::ACCEPT, accept)
        .body(Vec::new())?;
    Ok(client.request::<Value>(req).await?)
}

/// GETs `url` as JSON.
pub async fn get_json(client: &kube::Client, url: &str) -> anyhow::Result<Value> {
    get_accept(client, url, "application/json").await
}

/// `url` with a query string of the non-empty `params`.
pub fn with_query(url: &str, params: &[(&str, &str)]) -> String {
    let query: Vec<String> = params
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect();
    if query.is_empty() {
        url.to_string()
    } else {
        format!("{url}?{}", query.join("&"))
    }
}

/// Percent-encoding for query values.
pub fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
