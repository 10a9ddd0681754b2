//! The global flags (`--kubeconfig`, `--context`, `-n`, `--as`…) and what every command
//! builds from them: the kubeconfig, a kube client, the effective namespace and the
//! server's resource types (discovery). The client and discovery are made on first use,
//! so `kubectl config …` works without a reachable server.

use std::path::PathBuf;

use anyhow::Context as _;
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::sync::OnceCell;

use crate::resources::Discovery;

/// Flags every kubectl command accepts.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct GlobalArgs {
    /// Path to the kubeconfig file to use for CLI requests.
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// The name of the kubeconfig context to use
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// The name of the kubeconfig cluster to use
    #[arg(long, global = true)]
    pub cluster: Option<String>,
    /// The name of the kubeconfig user to use
    #[arg(long, global = true)]
    pub user: Option<String>,
    /// If present, the namespace scope for this CLI request
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// number for the log level verbosity (accepted and ignored)
    #[arg(short = 'v', long = "v", global = true)]
    pub verbosity: Option<String>,
    /// Username to impersonate for the operation.
    #[arg(long = "as", global = true)]
    pub as_user: Option<String>,
    /// Group to impersonate for the operation, this flag can be repeated to specify multiple groups.
    #[arg(long = "as-group", global = true)]
    pub as_group: Vec<String>,
    /// The length of time to wait before giving up on a single server request (accepted and ignored)
    #[arg(long = "request-timeout", global = true)]
    pub request_timeout: Option<String>,
}

/// What a command runs with: the global flags, and the client and discovery made from
/// them on first use.
pub struct Ctx {
    pub global: GlobalArgs,
    connected: OnceCell<(kube::Config, kube::Client)>,
    discovery: OnceCell<Discovery>,
}

impl Ctx {
    pub fn new(global: GlobalArgs) -> Ctx {
        Ctx {
            global,
            connected: OnceCell::new(),
            discovery: OnceCell::new(),
        }
    }

    /// The kubeconfig files in use: `--kubeconfig`, else `$KUBECONFIG` (colon-separated),
    /// else `~/.kube/config`.
    pub fn kubeconfig_paths(&self) -> Vec<PathBuf> {
        if let Some(p) = &self.global.kubeconfig {
            return vec![p.clone()];
        }
        if let Some(v) = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
            return std::env::split_paths(&v)
                .filter(|p| !p.as_os_str().is_empty())
                .collect();
        }
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_default();
        vec![home.join(".kube").join("config")]
    }

    /// The merged kubeconfig (the first file to set a value wins, as in client-go).
    pub fn kubeconfig(&self) -> anyhow::Result<Kubeconfig> {
        let mut merged: Option<Kubeconfig> = None;
        let explicit = self.global.kubeconfig.is_some();
        for path in self.kubeconfig_paths() {
            if !path.exists() && !explicit {
                continue;
            }
            let config = Kubeconfig::read_from(&path)
                .map_err(|e| anyhow::anyhow!("{}", kubeconfig_error(&path, &e)))?;
            merged = Some(match merged {
                None => config,
                Some(m) => m.merge(config).context("merging kubeconfig files")?,
            });
        }
        Ok(merged.unwrap_or_default())
    }

    fn options(&self) -> KubeConfigOptions {
        KubeConfigOptions {
            context: self.global.context.clone(),
            cluster: self.global.cluster.clone(),
            user: self.global.user.clone(),
        }
    }

    async fn connected(&self) -> anyhow::Result<&(kube::Config, kube::Client)> {
        self.connected
            .get_or_try_init(|| async {
                let kubeconfig = self.kubeconfig()?;
                if let Some(name) = &self.global.context {
                    if !kubeconfig.contexts.iter().any(|c| &c.name == name) {
                        anyhow::bail!("context was not found for specified context: {name}");
                    }
                }
                let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &self.options())
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                if let Some(user) = &self.global.as_user {
                    config.auth_info.impersonate = Some(user.clone());
                }
                if !self.global.as_group.is_empty() {
                    config.auth_info.impersonate_groups = Some(self.global.as_group.clone());
                }
                config.connect_timeout = Some(std::time::Duration::from_secs(30));
                let host = match (config.cluster_url.host(), config.cluster_url.port_u16()) {
                    (Some(h), Some(p)) => format!("{h}:{p}"),
                    (Some(h), None) => h.to_string(),
                    _ => config.cluster_url.to_string(),
                };
                let _ = crate::errors::SERVER.set(host);
                // Every `Warning` the server sends is printed as the stock kubectl prints it
                // (deprecations, unknown fields under fieldValidation=Warn, pod security).
                let client = kube::client::ClientBuilder::try_from(config.clone())
                    .context("building the API client")?
                    .with_layer(&tower::util::MapResponseLayer::new(|response: http::Response<_>| {
                        print_warnings(response.headers());
                        response
                    }))
                    .build();
                Ok((config, client))
            })
            .await
    }

    /// The client configuration (cluster URL, credentials, default namespace).
    pub async fn config(&self) -> anyhow::Result<&kube::Config> {
        Ok(&self.connected().await?.0)
    }

    /// A client for the selected context.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        Ok(self.connected().await?.1.clone())
    }

    /// `-n`, else the context's namespace, else `default`.
    pub async fn namespace(&self) -> anyhow::Result<String> {
        if let Some(ns) = &self.global.namespace {
            return Ok(ns.clone());
        }
        Ok(self.config().await?.default_namespace.clone())
    }

    /// The server's resource types, discovered once per command.
    pub async fn discovery(&self) -> anyhow::Result<&Discovery> {
        let client = self.client().await?;
        self.discovery
            .get_or_try_init(|| Discovery::run(client))
            .await
    }
}

/// Prints each server warning once per command to stderr, as `Warning: <text>`.
fn print_warnings(headers: &http::HeaderMap) {
    static SEEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    for value in headers.get_all(http::header::WARNING) {
        let Some(text) = value.to_str().ok().and_then(warning_text) else { continue };
        let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
        if !seen.contains(&text) {
            eprintln!("Warning: {text}");
            seen.push(text);
        }
    }
}

/// The text of a `299 - "text"` warning header, as client-go reads it; other codes and
/// malformed values are ignored.
fn warning_text(value: &str) -> Option<String> {
    let rest = value.trim().strip_prefix("299 ")?;
    let (_agent, rest) = rest.trim_start().split_once(' ')?;
    let mut chars = rest.trim_start().strip_prefix('"')?.chars();
    let mut text = String::new();
    while let Some(c) = chars.next() {
        match c {
            '\\' => text.push(chars.next()?),
            '"' => return Some(text),
            c => text.push(c),
        }
    }
    None
}

fn kubeconfig_error(path: &std::path::Path, e: &kube::config::KubeconfigError) -> String {
    let text = e.to_string();
    if text.contains("No such file")
        || text.contains("os error 2")
        || text.contains("failed to read")
    {
        return format!("stat {}: no such file or directory", path.display());
    }
    format!("{}: {text}", path.display())
}

#[cfg(test)]
mod tests {
    use super::warning_text;

    #[test]
    fn warning_headers_read_as_client_go_reads_them() {
        assert_eq!(warning_text(r#"299 - "v1 ComponentStatus is deprecated in v1.19+""#).as_deref(), Some("v1 ComponentStatus is deprecated in v1.19+"));
        assert_eq!(warning_text(r#"299 - "unknown field \"spec.foo\"""#).as_deref(), Some(r#"unknown field "spec.foo""#));
        assert_eq!(warning_text(r#"199 - "miscellaneous""#), None, "only code 299 is shown");
        assert_eq!(warning_text(r#"299 - "unterminated"#), None);
    }
}
