//! TLS on every port, over real processes with certificates from `muster certs init`: REST and
//! gRPC on one node (with and without a client certificate), a three-node cluster whose peer
//! port runs mutual TLS with the cluster CA, strangers refused by that port's handshake before
//! any RPC runs (a member's certificate as the control), a node with another CA's certificate
//! added as a learner that never receives the log, and a node that will not serve beyond loopback without TLS unless `--insecure`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use muster_proto::pb;
use muster_proto::pb::cluster_service_client::ClusterServiceClient;
use muster_proto::pb::group_service_client::GroupServiceClient;
use muster_proto::pb::job_service_client::JobServiceClient;
use muster_proto::pb::raft_service_client::RaftServiceClient;
use muster_tests::{
    certs_init, data_dir, grpc_endpoint, grpc_tls_channel, https_client, https_client_as,
    muster_bin, muster_cmd, tls_flags, wait_for, Server, TestCluster,
};
use serde_json::{json, Value};
use tonic::Code;

const CENTRAL: &str = "api-version=2022-07-31";

fn pair(dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{stem}.pem")),
        dir.join(format!("{stem}.key")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_and_grpc_serve_tls_and_check_client_certificates() {
    let certs = data_dir().unwrap();
    let certs = certs.path();
    certs_init(certs, &["--node", "1=", "--client", "ops"]).unwrap();
    // A second CA of the same making, for certificates nobody here trusts.
    let other = data_dir().unwrap();
    certs_init(other.path(), &["--node", "1=", "--client", "ops"]).unwrap();

    let dir = data_dir().unwrap();
    let ca = certs.join("ca.pem");
    let mut flags = tls_flags(certs, 1);
    flags.extend([
        "--tls-client-ca".into(),
        certs.join("client-ca.pem").display().to_string(),
        "--tls-client-role".into(),
        "viewer".into(),
    ]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let server = Server::start_tls(dir.path(), &ca, &flags).unwrap();
    assert!(
        server.rest.starts_with("https://127.0.0.1:"),
        "{}",
        server.rest
    );
    assert!(
        server.grpc.starts_with("https://127.0.0.1:"),
        "{}",
        server.grpc
    );
    server.wait_ready().await.unwrap();

    // REST with the CA trusted: writes and paged reads; links name https.
    let c = server.http_client().unwrap();
    for d in ["tls-a", "tls-b"] {
        let r = c
            .put(format!("{}/api/devices/{d}?{CENTRAL}", server.rest))
            .json(&json!({"displayName": d}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
    }
    let page: Value = c
        .get(format!(
            "{}/api/devices?{CENTRAL}&maxpagesize=1",
            server.rest
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let link = page["nextLink"].as_str().unwrap();
    assert!(link.starts_with(&server.rest), "{link}");

    // A client certificate from the client CA is accepted; one from a CA the node does not
    // trust fails the handshake; none at all is fine (tokens are the other way in).
    let (cert, key) = pair(certs, "client-ops");
    let with_cert = https_client(Some(&ca), Some((&cert, &key))).unwrap();
    let readyz = format!("{}/readyz", server.rest);
    assert!(with_cert
        .get(&readyz)
        .send()
        .await
        .unwrap()
        .status()
        .is_success());
    // The certificate alone (no Authorization header) is a viewer, `cert:ops`: it reads, it
    // cannot write; without the certificate and without a token nothing is allowed.
    let cert_only = https_client_as(Some(&ca), Some((&cert, &key)), None).unwrap();
    let jobs_url = format!("{}/api/jobs?{CENTRAL}", server.rest);
    assert_eq!(cert_only.get(&jobs_url).send().await.unwrap().status(), 200);
    let r = cert_only
        .put(format!("{}/api/devices/tls-c?{CENTRAL}", server.rest))
        .json(&json!({"displayName": "c"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let nobody = https_client_as(Some(&ca), None, None).unwrap();
    assert_eq!(nobody.get(&jobs_url).send().await.unwrap().status(), 401);
    let (bad_cert, bad_key) = pair(other.path(), "client-ops");
    let stranger = https_client(Some(&ca), Some((&bad_cert, &bad_key))).unwrap();
    assert!(stranger.get(&readyz).send().await.is_err());
    // Not trusting the node's CA, or speaking plain HTTP to it, gets nowhere.
    let untrusting = https_client(Some(&other.path().join("ca.pem")), None).unwrap();
    assert!(untrusting.get(&readyz).send().await.is_err());
    let plain = reqwest::Client::new();
    let http_url = readyz.replacen("https://", "http://", 1);
    assert!(!matches!(plain.get(&http_url).send().await, Ok(r) if r.status().is_success()));

    // gRPC over TLS: with and without a client certificate; not with a stranger's.
    let channel = grpc_tls_channel(&server.grpc, Some(&ca), None)
        .await
        .unwrap();
    let mut jobs = JobServiceClient::new(channel);
    jobs.list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap();
    let channel = grpc_tls_channel(&server.grpc, Some(&ca), Some((&cert, &key)))
        .await
        .unwrap();
    let mut jobs = JobServiceClient::new(channel);
    jobs.list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap();
    let refused = match grpc_tls_channel(&server.grpc, Some(&ca), Some((&bad_cert, &bad_key))).await
    {
        Err(_) => true,
        Ok(ch) => JobServiceClient::new(ch)
            .list_jobs(pb::ListJobsRequest::default())
            .await
            .is_err(),
    };
    assert!(
        refused,
        "a client certificate from an unknown CA was accepted"
    );
    let plain_grpc = server.grpc.replacen("https://", "http://", 1);
    let refused = match grpc_tls_channel(&plain_grpc, None, None).await {
        Err(_) => true,
        Ok(ch) => JobServiceClient::new(ch)
            .list_jobs(pb::ListJobsRequest::default())
            .await
            .is_err(),
    };
    assert!(refused, "plain gRPC was answered on the TLS port");

    // The CLI: https with --ca-cert (and a client certificate), plain refused.
    let cli = |args: &[&str]| {
        muster_cmd()
            .unwrap()
            .args([
                "device",
                "list",
                "--output",
                "json",
                "--endpoint",
                &server.grpc,
            ])
            .args(args)
            .env_remove("MUSTER_CA_CERT")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let ca_s = ca.display().to_string();
    let out = cli(&["--ca-cert", &ca_s]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("tls-b"));
    let (cert_s, key_s) = (cert.display().to_string(), key.display().to_string());
    let out = cli(&[
        "--ca-cert",
        &ca_s,
        "--client-cert",
        &cert_s,
        "--client-key",
        &key_s,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&[
        "--ca-cert",
        &other.path().join("ca.pem").display().to_string(),
    ]);
    assert!(!out.status.success());
}

/// One call on a peer port as a given client, with a request body of `json`.
#[derive(Debug, Clone, Copy)]
enum PeerRpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
    ClientWrite,
    Admin,
    History,
}

const ALL_RPCS: [PeerRpc; 6] = [
    PeerRpc::AppendEntries,
    PeerRpc::Vote,
    PeerRpc::InstallSnapshot,
    PeerRpc::ClientWrite,
    PeerRpc::Admin,
    PeerRpc::History,
];

async fn peer_call(
    url: &str,
    ca: Option<&Path>,
    identity: Option<(&Path, &Path)>,
    rpc: PeerRpc,
    json: &Value,
) -> Result<(), tonic::Status> {
    let endpoint = grpc_endpoint(url, ca, identity).unwrap();
    let channel = match endpoint.connect().await {
        Ok(c) => c,
        Err(e) => return Err(tonic::Status::unavailable(format!("connect: {e}"))),
    };
    let mut client = RaftServiceClient::new(channel);
    let req = pb::RaftBytes {
        json: serde_json::to_vec(json).unwrap(),
        data: Vec::new(),
    };
    match rpc {
        PeerRpc::AppendEntries => client.append_entries(req).await.map(|_| ()),
        PeerRpc::Vote => client.vote(req).await.map(|_| ()),
        PeerRpc::InstallSnapshot => client.install_snapshot(req).await.map(|_| ()),
        PeerRpc::ClientWrite => client.client_write(req).await.map(|_| ()),
        PeerRpc::Admin => client.admin(req).await.map(|_| ()),
        PeerRpc::History => client.history(req).await.map(|_| ()),
    }
}

/// A forwarded write (muster_store's `Request` as JSON): save a device group named `id`.
fn save_group(id: &str) -> Value {
    json!({"command": {"SaveGroup": {
        "id": id, "display_name": id, "query": "SELECT * FROM devices", "at": 0
    }}})
}

async fn group_exists(server: &Server, id: &str) -> bool {
    let mut groups = GroupServiceClient::new(server.channel().await.unwrap());
    groups
        .get_group(pb::GetGroupRequest {
            group_id: id.into(),
            stale_ok: false,
        })
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_over_peer_mtls_works_and_refuses_strangers_on_the_peer_port() {
    let certs = data_dir().unwrap();
    let certs = certs.path();
    certs_init(
        certs,
        &[
            "--node", "1=", "--node", "2=", "--node", "3=", "--client", "ops",
        ],
    )
    .unwrap();
    let other = data_dir().unwrap();
    certs_init(other.path(), &["--node", "1="]).unwrap();
    let ca = certs.join("ca.pem");

    let cluster = TestCluster::start_tls(3, certs, &[]).unwrap();
    let leader = cluster.leader().await.unwrap();
    for n in &cluster.nodes {
        n.wait_ready().await.unwrap();
    }
    let follower = (leader + 1) % 3;

    // A write on a follower is forwarded to the leader over mutual TLS and reaches every node.
    let c = cluster.http_client().unwrap();
    let r = c
        .put(format!(
            "{}/api/devices/mtls-1?{CENTRAL}",
            cluster.nodes[follower].rest
        ))
        .json(&json!({"displayName": "over mTLS"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{} {}", r.status(), cluster.logs());
    for n in &cluster.nodes {
        let url = format!("{}/api/devices/mtls-1?{CENTRAL}", n.rest);
        wait_for("the device on every node", || {
            let r = c.get(&url).send();
            async move { matches!(r.await, Ok(r) if r.status().is_success()) }
        })
        .await
        .unwrap();
    }
    // `muster cluster status` over https.
    let out = muster_cmd()
        .unwrap()
        .args(["cluster", "status", "--output", "json", "--endpoint"])
        .arg(&cluster.nodes[follower].grpc)
        .arg("--ca-cert")
        .arg(&ca)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["members"].as_array().unwrap().len(), 3, "{status}");
    let term_before = status["term"].as_u64().unwrap();

    let peer_url = |i: usize| format!("https://{}", cluster.nodes[i].peer);
    let leader_peer = peer_url(leader);
    let (member_cert, member_key) = pair(certs, "node-1");

    // Control: with a member's certificate, calls reach the handlers (junk is refused as
    // undecodable, a well-formed forwarded write is applied), so the refusals below are the
    // handshake's doing.
    for rpc in ALL_RPCS {
        let e = peer_call(
            &leader_peer,
            Some(&ca),
            Some((&member_cert, &member_key)),
            rpc,
            &json!({}),
        )
        .await
        .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{rpc:?}: {e:?}");
    }
    peer_call(
        &leader_peer,
        Some(&ca),
        Some((&member_cert, &member_key)),
        PeerRpc::ClientWrite,
        &save_group("insider"),
    )
    .await
    .unwrap();
    assert!(group_exists(&cluster.nodes[leader], "insider").await);

    // Strangers: no TLS; TLS without a certificate; a node certificate from another CA made by
    // `muster certs init`; a client certificate (client CA, not the cluster CA).
    let (other_cert, other_key) = pair(other.path(), "node-1");
    let (client_cert, client_key) = pair(certs, "client-ops");
    let vote = json!({
        "vote": {"leader_id": {"term": 1000, "node_id": 99}, "committed": false},
        "last_log_id": null
    });
    type Identity<'a> = Option<(&'a Path, &'a Path)>;
    let strangers: Vec<(&str, String, Identity)> = vec![
        (
            "plain TCP",
            format!("http://{}", cluster.nodes[leader].peer),
            None,
        ),
        ("TLS without a certificate", leader_peer.clone(), None),
        (
            "another CA's node certificate",
            leader_peer.clone(),
            Some((&other_cert, &other_key)),
        ),
        (
            "a client certificate",
            leader_peer.clone(),
            Some((&client_cert, &client_key)),
        ),
    ];
    for (who, url, identity) in &strangers {
        for rpc in ALL_RPCS {
            for body in [json!({}), save_group("stolen"), vote.clone()] {
                let e = peer_call(url, Some(&ca), *identity, rpc, &body)
                    .await
                    .expect_err(&format!("{who}: {rpc:?} was answered"));
                assert_ne!(
                    e.code(),
                    Code::InvalidArgument,
                    "{who}: {rpc:?} reached the handler: {e:?}"
                );
                assert!(
                    !e.message().contains("undecodable"),
                    "{who}: {rpc:?}: {e:?}"
                );
            }
        }
    }

    // Nothing they sent took effect: no group, the term untouched, the same three members, and
    // the cluster still commits.
    for n in &cluster.nodes {
        assert!(!group_exists(n, "stolen").await);
    }
    let mut status_client =
        ClusterServiceClient::new(cluster.nodes[leader].channel().await.unwrap());
    let status = status_client
        .status(pb::ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.term, term_before, "a stranger's vote moved the term");
    assert_eq!(status.members.len(), 3);
    let mut jobs = JobServiceClient::new(cluster.nodes[follower].channel().await.unwrap());
    jobs.list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap();

    // A node whose certificates come from another CA is added as a learner (the client port's
    // ClusterService does not check who asks; that is authentication's job): it never gets the
    // log, since neither side's handshake accepts the other.
    let dir4 = data_dir().unwrap();
    let mut flags4: Vec<String> = ["--node-id", "4", "--join"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    flags4.extend(tls_flags(other.path(), 1));
    let flags4: Vec<&str> = flags4.iter().map(String::as_str).collect();
    let other_ca = other.path().join("ca.pem");
    let node4 = Server::start_tls(dir4.path(), &other_ca, &flags4).unwrap();
    status_client
        .add_learner(pb::AddLearnerRequest {
            node_id: 4,
            peer_addr: node4.peer.clone(),
        })
        .await
        .unwrap();
    // The leader tries, and the member stays unreachable with nothing replicated.
    wait_for("node 4 listed as unreachable", || {
        let mut s = status_client.clone();
        async move {
            let Ok(st) = s.status(pb::ClusterStatusRequest {}).await else {
                return false;
            };
            st.into_inner()
                .members
                .iter()
                .any(|m| m.node_id == 4 && !m.reachable && m.matched_index == 0)
        }
    })
    .await
    .unwrap();
    // The leader's Raft has tried to reach it and failed (its handshake refused).
    let leader_node = &cluster.nodes[leader];
    wait_for("the leader to fail to replicate to node 4", || {
        let log = leader_node.log_text();
        async move {
            log.lines()
                .any(|l| l.contains("peer unreachable") && l.contains("node=4"))
        }
    })
    .await
    .unwrap();
    let mut groups4 = GroupServiceClient::new(node4.channel().await.unwrap());
    let got = groups4
        .get_group(pb::GetGroupRequest {
            group_id: "insider".into(),
            stale_ok: true,
        })
        .await;
    assert!(got.is_err(), "the stranger node received the log: {got:?}");
    assert!(
        node4.log_text().contains("waiting to be added"),
        "{}",
        node4.log_text()
    );
}

/// Runs `muster serve` with `args` and waits until it exits or prints its addresses (and then,
/// with `expect`, until its log says that too); returns whether it started, and its log.
fn serve_starts(args: &[&str], expect: Option<&str>) -> (bool, String) {
    use std::io::BufRead;
    let dir = data_dir().unwrap();
    let mut child = Command::new(muster_bin().unwrap())
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if line.starts_with("muster listening:") {
                let _ = tx.send(());
            }
        }
    });
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let stderr = child.stderr.take().unwrap();
    let reader = {
        let log = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        })
    };
    let started = rx.recv_timeout(muster_tests::PATIENCE).is_ok();
    if started {
        let deadline = std::time::Instant::now() + muster_tests::PATIENCE;
        while let Some(e) = expect {
            if log.lock().unwrap().contains(e) || std::time::Instant::now() > deadline {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        muster_tests::sigterm_and_wait(&mut child, "muster").unwrap();
    } else {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = reader.join();
    let log = log.lock().unwrap().clone();
    (started, log)
}

#[test]
fn a_node_will_not_serve_beyond_loopback_without_tls_unless_insecure() {
    let local = ["--grpc-addr", "127.0.0.1:0", "--peer-addr", "127.0.0.1:0"];
    let mut exposed = vec!["--http-addr", "0.0.0.0:0"];
    exposed.extend_from_slice(&local);
    let (started, err) = serve_starts(&exposed, None);
    assert!(!started, "started on 0.0.0.0 without TLS");
    assert!(
        err.contains("refusing to start")
            && err.contains("REST on 0.0.0.0")
            && err.contains("--insecure"),
        "{err}"
    );

    // Peers on other hosts need peer TLS.
    let peers = "--peers=1=127.0.0.1:1,2=node2.invalid:9091";
    let (started, err) = serve_starts(
        &[
            "--http-addr",
            "127.0.0.1:0",
            "--grpc-addr",
            "127.0.0.1:0",
            "--peer-addr",
            "127.0.0.1:0",
            "--node-id",
            "1",
            peers,
        ],
        None,
    );
    assert!(!started, "started with remote peers and no peer TLS");
    assert!(
        err.contains("node2.invalid:9091") && err.contains("--peer-ca"),
        "{err}"
    );

    // --insecure starts anyway, and says so loudly.
    exposed.push("--insecure");
    let (started, err) = serve_starts(&exposed, Some("INSECURE: serving REST"));
    assert!(started, "{err}");
    assert!(err.contains("INSECURE") && err.contains("WARN"), "{err}");

    // With TLS, 0.0.0.0 is fine.
    let certs = data_dir().unwrap();
    certs_init(certs.path(), &["--node", "1="]).unwrap();
    let mut args = vec![
        "--http-addr",
        "0.0.0.0:0",
        "--grpc-addr",
        "0.0.0.0:0",
        "--peer-addr",
        "127.0.0.1:0",
    ];
    let flags = tls_flags(certs.path(), 1);
    args.extend(flags.iter().map(String::as_str));
    let (started, err) = serve_starts(&args, None);
    assert!(started, "{err}");
    assert!(!err.contains("INSECURE"), "{err}");
}
