//! TEMPORARY stub until the kube-source branch lands.
use std::path::Path;

use super::Update;

pub fn in_cluster_environment() -> bool {
    false
}

pub async fn client(_kubeconfig: Option<&Path>) -> anyhow::Result<kube::Client> {
    anyhow::bail!("stub")
}

pub struct KubernetesSource;

impl KubernetesSource {
    pub fn new(_client: kube::Client) -> Self {
        Self
    }
    pub async fn next(&mut self) -> Update {
        std::future::pending().await
    }
}
