pub mod agent;
pub mod datapath;
pub mod fake_apiserver;
pub mod manifests;
pub mod netns;
pub mod packet;
pub mod privileged;
pub mod scenario;
