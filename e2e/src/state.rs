//! Where a lab lives and what `up` saved of it: [`LabPaths`] (its directory, its binaries) and [`Lab`]
//! (its layout and paths, loaded from `lab.json`), with an admin client for each cluster. Everything that
//! runs inside a lab (the lab kubelet, real nodes, the cluster services) finds its lab here; `lab` starts
//! and stops labs.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde::{Deserialize, Serialize};

use crate::layout::{ClusterLayout, LabLayout};
use crate::procs::ProcessTable;

/// Where a lab lives on disk and where its binaries are.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LabPaths {
    /// The lab's directory (`$FERRY_LAB_ROOT/<name>`).
    pub dir: PathBuf,
    /// Directory of the Kubernetes server binaries.
    pub k8s_bin: PathBuf,
}

impl LabPaths {
    /// Paths for lab `name` under `root`.
    pub fn new(root: &Path, name: &str, k8s_bin: &Path) -> Self {
        Self {
            dir: root.join(name),
            k8s_bin: k8s_bin.to_path_buf(),
        }
    }
    /// A cluster's directory.
    pub fn cluster_dir(&self, c: &ClusterLayout) -> PathBuf {
        self.dir.join(&c.id)
    }
    /// A cluster's admin kubeconfig.
    pub fn kubeconfig(&self, c: &ClusterLayout) -> PathBuf {
        self.cluster_dir(c).join("admin.kubeconfig")
    }
    /// A cluster's log file for `what`.
    pub fn log(&self, c: &ClusterLayout, what: &str) -> PathBuf {
        self.cluster_dir(c).join("logs").join(format!("{what}.log"))
    }
    /// The pid directory.
    pub fn pids(&self) -> PathBuf {
        self.dir.join("pids")
    }
    /// The saved layout.
    pub fn layout_file(&self) -> PathBuf {
        self.dir.join("lab.json")
    }
    /// etcd's data directory (tmpfs: the lab trades durability for speed).
    pub fn etcd_data(lab: &str, c: &ClusterLayout) -> PathBuf {
        PathBuf::from(format!("/dev/shm/ferry-lab-{lab}-{}", c.id))
    }
}

/// A lab that is (or was) up: its layout and paths, as saved in `lab.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Lab {
    /// The layout.
    pub layout: LabLayout,
    /// The paths.
    pub paths: LabPaths,
}

/// `$FERRY_LAB_ROOT` or the default root.
pub fn env_root() -> PathBuf {
    std::env::var_os("FERRY_LAB_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(default_root)
}

/// `$FERRY_LAB_NAME` or `ferry`.
pub fn env_name() -> String {
    std::env::var("FERRY_LAB_NAME").unwrap_or_else(|_| "ferry".into())
}

/// Default root of all labs.
pub fn default_root() -> PathBuf {
    PathBuf::from("/run/ferry-lab")
}

/// Default directory of the Kubernetes 1.20.2 server binaries (built by `scripts/provision.sh`).
pub fn default_k8s_bin() -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".cache/ferry/k8s-1.20.2")
}

impl Lab {
    /// The lab the e2e tests use: `$FERRY_LAB_ROOT` (default `/run/ferry-lab`), `$FERRY_LAB_NAME` (default
    /// `ferry`). Panics with the fix when it is not up: the tests need it.
    pub fn from_env() -> Self {
        Self::load(&env_root(), &env_name())
            .expect("a running lab: run `ferry-lab up` (make test does) before these tests")
    }

    /// Loads a lab that `up` saved.
    pub fn load(root: &Path, name: &str) -> Result<Self> {
        let file = root.join(name).join("lab.json");
        let text = std::fs::read_to_string(&file).with_context(|| {
            format!(
                "lab {name:?} is not up ({} missing); fix: ferry-lab up --name {name}",
                file.display()
            )
        })?;
        Ok(serde_json::from_str(&text)?)
    }

    /// A cluster by `c1`/`1`.
    pub fn cluster(&self, which: &str) -> Result<&ClusterLayout> {
        self.layout.cluster(which).with_context(|| {
            format!(
                "lab {:?} has no cluster {which:?}; fix: pick one of {}",
                self.layout.name,
                self.layout
                    .clusters
                    .iter()
                    .map(|c| c.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
    }

    /// An admin client for a cluster.
    pub async fn client(&self, c: &ClusterLayout) -> Result<Client> {
        client_from(&self.paths.kubeconfig(c)).await
    }

    /// The lab's process table.
    pub fn processes(&self) -> Result<ProcessTable> {
        ProcessTable::new(self.paths.pids())
    }
}

/// A kube client from a kubeconfig file.
pub async fn client_from(path: &Path) -> Result<Client> {
    let kc = Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
    let cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(cfg)?)
}
