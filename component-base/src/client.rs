//! API clients from a kubeconfig file (the components' `--kubeconfig` flag), falling back
//! to the in-cluster or default configuration the way client-go does.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("reading kubeconfig {path}")]
    ReadKubeconfig { path: String, #[source] source: kube::config::KubeconfigError },
    #[error("loading the client configuration")]
    LoadConfig(#[source] kube::config::KubeconfigError),
    #[error("inferring the client configuration")]
    InferConfig(#[source] kube::config::InferConfigError),
    #[error("building the API client")]
    Build(#[source] kube::Error),
}

/// A client for the kubeconfig at `path`, or the inferred default without one.
pub async fn client(path: Option<&Path>) -> Result<kube::Client, ClientError> {
    let config = match path {
        Some(p) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(p)
                .map_err(|source| ClientError::ReadKubeconfig { path: p.display().to_string(), source })?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .map_err(ClientError::LoadConfig)?
        }
        None => kube::Config::infer().await.map_err(ClientError::InferConfig)?,
    };
    kube::Client::try_from(config).map_err(ClientError::Build)
}
