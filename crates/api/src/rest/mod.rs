//! The REST gateway: the IoT Central and IoT Hub shapes over axum (being built).

use muster_cluster::Cluster;

/// The REST routes of a node, ready to be served on the REST address.
pub fn router(cluster: Cluster) -> axum::Router {
    let _ = cluster;
    axum::Router::new()
}
