//! A new cluster's credentials: the leader creates IoT Hub's default policies once (with keys it
//! draws), and every node then writes the administrator's connection string to
//! `DATA_DIR/admin.credential` (mode 0600), where its operator finds it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use muster_api::credentials::{connection_string, random_key};
use muster_cluster::{now, Cluster, ClusterError};
use muster_domain::auth::default_policies;
use muster_domain::Command;
use tokio::sync::watch;

/// The file, under the data directory, that holds the administrator's connection string.
pub const ADMIN_CREDENTIAL: &str = "admin.credential";

/// The policy whose connection string goes into the file: IoT Hub's owner policy.
const OWNER: &str = "iothubowner";

/// Runs until the credential file exists (or `stop`).
pub(crate) async fn run(
    cluster: Cluster,
    data_dir: PathBuf,
    host: String,
    admin_key: Option<String>,
    mut stop: watch::Receiver<bool>,
) {
    let path = data_dir.join(ADMIN_CREDENTIAL);
    loop {
        if *stop.borrow() || path.exists() {
            return;
        }
        let (initialized, owner) = cluster
            .reader()
            .read(|s| (s.auth.initialized, s.auth.policies.get(OWNER).cloned()));
        if !initialized {
            if cluster.is_leader() {
                init(&cluster, admin_key.as_deref()).await;
            }
        } else if let Some(owner) = owner {
            match write_private(&path, &format!("{}\n", connection_string(&owner, &host))) {
                Ok(()) => {
                    tracing::info!(
                        "wrote the administrator's connection string (policy {OWNER}) to {}; keep it secret",
                        path.display()
                    );
                    return;
                }
                Err(e) => tracing::warn!("cannot write {}: {e}; retrying", path.display()),
            }
        } else {
            // The owner policy was deleted on purpose: nothing to write.
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = stop.changed() => {}
        }
    }
}

/// Reads `--admin-key-file`: base64 of 16 to 64 bytes, surrounding whitespace ignored.
pub(crate) fn read_admin_key(path: &Path) -> Result<String, crate::NodeError> {
    use base64::Engine;
    let bad =
        |why: String| crate::NodeError::Config(format!("admin_key_file {}: {why}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let key = text.trim().to_string();
    match base64::engine::general_purpose::STANDARD.decode(&key) {
        Ok(b) if (16..=64).contains(&b.len()) => Ok(key),
        _ => Err(bad(
            "must hold one base64 key of 16 to 64 bytes (e.g. `openssl rand -base64 32`)".into(),
        )),
    }
}

async fn init(cluster: &Cluster, admin_key: Option<&str>) {
    let mut failed = None;
    let mut policies = default_policies(|| {
        random_key().unwrap_or_else(|e| {
            failed = Some(e);
            String::new()
        })
    });
    if let Some(e) = failed {
        tracing::error!("cannot create the cluster's credentials: {}", e.message);
        return;
    }
    if let Some(key) = admin_key {
        for p in policies.iter_mut().filter(|p| p.name == OWNER) {
            p.primary_key = key.to_string();
        }
    }
    match cluster
        .write_if_leader(Command::InitAuth { policies, at: now() })
        .await
    {
        Ok(_) => tracing::info!("created the cluster's shared access policies (iothubowner, service, registryRead, registryReadWrite)"),
        // Another leader got there first, or this one was deposed: the next round reads the state.
        Err(ClusterError::Rejected(_) | ClusterError::NotLeader { .. }) => {}
        Err(e) => tracing::warn!("creating the cluster's credentials: {e}; retrying"),
    }
}

/// Writes `text` to `path` readable by its owner only, whole or not at all.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
