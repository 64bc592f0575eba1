//! The gRPC API: `muster.v1.JobService`, `DeviceService`, `GroupService`, with tonic health and
//! reflection (being built).

use muster_cluster::Cluster;

/// Every gRPC service of a node, ready to be served on the client gRPC address.
pub fn routes(cluster: Cluster) -> tonic::service::Routes {
    let _ = cluster;
    let (_reporter, health) = tonic_health::server::health_reporter();
    tonic::service::Routes::new(health)
}
