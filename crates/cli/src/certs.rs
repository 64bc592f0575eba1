//! `muster certs init`: a CA and certificates for a dev or compose cluster (rcgen, ECDSA P-256).
//!
//! Two CAs, on purpose: `ca.pem` (the cluster CA) signs the node certificates, which serve
//! REST, gRPC and the peer port and also authenticate a node when it dials another; the peer
//! port accepts any certificate from it. `client-ca.pem` signs the client certificates
//! (`--client NAME`), which nodes accept on REST and gRPC with `--tls-client-ca`. A client
//! certificate from the cluster CA would open the peer port, so clients never get one.
//!
//! Running it again on the same directory reuses the CAs there and adds the certificates
//! asked for (a new node for `muster cluster add-learner`); it never overwrites a file.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Subcommand;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

#[derive(Debug, Subcommand)]
pub enum CertsCmd {
    /// Make a CA and certificates for nodes and clients in a directory, and print the flags
    /// that use them.
    Init {
        /// Where to write (created if missing). CAs already there are reused.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// A node certificate: its id and the host names / IP addresses it is reached by
        /// (`1=node1,10.0.0.1`); `localhost`, `127.0.0.1` and `::1` are always added. Repeat
        /// per node. Default (no --node and no --client): node 1 for this machine only.
        #[arg(long = "node", value_name = "ID=HOST,...")]
        nodes: Vec<String>,
        /// A client certificate whose subject CN is NAME (the identity a node sees with
        /// --tls-client-ca). Repeat per client.
        #[arg(long = "client", value_name = "NAME")]
        clients: Vec<String>,
        /// Days the node and client certificates are valid (the CAs: ten years).
        #[arg(long, default_value_t = 825)]
        days: u32,
    },
}

pub fn certs(cmd: CertsCmd) -> anyhow::Result<()> {
    match cmd {
        CertsCmd::Init {
            out,
            nodes,
            clients,
            days,
        } => init(&out, &nodes, &clients, days),
    }
}

/// What `--node` says: the id and its names.
fn parse_node(spec: &str) -> anyhow::Result<(u64, Vec<String>)> {
    let bad =
        || anyhow::anyhow!("--node {spec:?} is not ID=HOST,... (for example 1=node1,10.0.0.1)");
    let (id, hosts) = spec.split_once('=').ok_or_else(bad)?;
    let id: u64 = id.trim().parse().map_err(|_| bad())?;
    if id == 0 {
        bail!("--node {spec:?}: node ids start at 1");
    }
    let mut names: Vec<String> = Vec::new();
    for h in hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .chain(["localhost", "127.0.0.1", "::1"])
    {
        let h = h.trim_start_matches('[').trim_end_matches(']');
        if h.contains(':') && h.parse::<std::net::IpAddr>().is_err() {
            bail!("--node {spec:?}: give host names without a port ({h:?})");
        }
        if !names.iter().any(|n| n.eq_ignore_ascii_case(h)) {
            names.push(h.to_string());
        }
    }
    Ok((id, names))
}

fn check_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        || name.starts_with('.')
    {
        bail!("--client {name:?}: use 1-64 letters, digits, '-', '_' or '.'");
    }
    Ok(())
}

/// A CA in `dir` under `stem` (`ca`, `client-ca`): loaded if its files exist, made otherwise.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert: PathBuf,
    made: bool,
}

fn ca(dir: &Path, stem: &str, label: &str) -> anyhow::Result<Ca> {
    let cert_path = dir.join(format!("{stem}.pem"));
    let key_path = dir.join(format!("{stem}.key"));
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => {
            // Reuse: the issuer needs the CA's subject name (its CN, all `init` puts there)
            // and key; the certificates it signs name it by that.
            let pem = std::fs::read(&cert_path)
                .with_context(|| format!("cannot read {}", cert_path.display()))?;
            let bundle = muster_tls::CaBundle::from_pem(pem)
                .with_context(|| format!("{}", cert_path.display()))?;
            let der = rustls_pem_first(&bundle.pem)?;
            let cn = muster_tls::subject_common_name(&der).with_context(|| {
                format!(
                    "{} has no subject CN: not made by muster certs init",
                    cert_path.display()
                )
            })?;
            let key = std::fs::read_to_string(&key_path)
                .with_context(|| format!("cannot read {}", key_path.display()))?;
            let key = KeyPair::from_pem(&key)
                .with_context(|| format!("{}: not a private key", key_path.display()))?;
            params.distinguished_name = name(&cn);
            Ok(Ca {
                issuer: Issuer::new(params, key),
                cert: cert_path,
                made: false,
            })
        }
        (false, false) => {
            // A CN unique to this CA, so two CAs made by `init` are told apart in messages.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default();
            let cn = format!(
                "muster {label} {:x}",
                nanos ^ u128::from(std::process::id())
            );
            params.distinguished_name = name(&cn);
            let now = time::OffsetDateTime::now_utc();
            params.not_before = now - time::Duration::hours(1);
            params.not_after = now + time::Duration::days(3650);
            let key = KeyPair::generate()?;
            let cert = params.self_signed(&key)?;
            write(&cert_path, cert.pem().as_bytes(), false)?;
            write(&key_path, key.serialize_pem().as_bytes(), true)?;
            Ok(Ca {
                issuer: Issuer::new(params, key),
                cert: cert_path,
                made: true,
            })
        }
        _ => bail!(
            "{} has only one of {stem}.pem and {stem}.key; remove it or restore the other",
            dir.display()
        ),
    }
}

fn rustls_pem_first(pem: &[u8]) -> anyhow::Result<Vec<u8>> {
    use muster_tls::rustls::pki_types::pem::PemObject;
    use muster_tls::rustls::pki_types::CertificateDer;
    let der = CertificateDer::pem_slice_iter(pem)
        .next()
        .context("no certificate")??;
    Ok(der.to_vec())
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// Writes a new file (never overwrites); `secret` ones are readable by their owner only.
fn write(path: &Path, bytes: &[u8], secret: bool) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut file = options.open(path).with_context(|| {
        if path.exists() {
            format!("{} exists; remove it to make a new one", path.display())
        } else {
            format!("cannot create {}", path.display())
        }
    })?;
    file.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Signs a leaf certificate for `cn` with `sans`, valid `days`, for `usages`; writes
/// `dir/stem.pem` and `dir/stem.key`.
fn leaf(
    dir: &Path,
    stem: &str,
    cn: &str,
    sans: Vec<String>,
    usages: Vec<ExtendedKeyUsagePurpose>,
    days: u32,
    ca: &Ca,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let cert_path = dir.join(format!("{stem}.pem"));
    let key_path = dir.join(format!("{stem}.key"));
    for p in [&cert_path, &key_path] {
        if p.exists() {
            bail!("{} exists; remove it to make a new one", p.display());
        }
    }
    let mut params = CertificateParams::new(sans)?;
    params.distinguished_name = name(cn);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = usages;
    params.use_authority_key_identifier_extension = true;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca.issuer)?;
    write(&cert_path, cert.pem().as_bytes(), false)?;
    write(&key_path, key.serialize_pem().as_bytes(), true)?;
    Ok((cert_path, key_path))
}

fn init(out: &Path, nodes: &[String], clients: &[String], days: u32) -> anyhow::Result<()> {
    if days == 0 {
        bail!("--days must be at least 1");
    }
    let mut node_specs = nodes
        .iter()
        .map(|n| parse_node(n))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if node_specs.is_empty() && clients.is_empty() {
        node_specs.push(parse_node("1=")?);
    }
    for c in clients {
        check_name(c)?;
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let dir = out;
    let cluster_ca = ca(dir, "ca", "cluster CA")?;
    let say = |ca: &Ca, what: &str| {
        let verb = if ca.made { "wrote" } else { "reusing" };
        println!("{verb} {} ({what})", ca.cert.display());
    };
    say(&cluster_ca, "the cluster CA: every node and client trusts it; its key ca.key signs node certificates, keep it secret");
    let mut written = Vec::new();
    for (id, sans) in &node_specs {
        let (cert, key) = leaf(
            dir,
            &format!("node-{id}"),
            &format!("muster node {id}"),
            sans.clone(),
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            days,
            &cluster_ca,
        )?;
        println!(
            "wrote {} and {} (node {id}: {})",
            cert.display(),
            key.display(),
            sans.join(", ")
        );
        written.push((*id, cert, key));
    }
    let mut client_files = Vec::new();
    if !clients.is_empty() {
        let client_ca = ca(dir, "client-ca", "client CA")?;
        say(
            &client_ca,
            "signs client certificates: nodes take it as --tls-client-ca",
        );
        for name in clients {
            let (cert, key) = leaf(
                dir,
                &format!("client-{name}"),
                name,
                Vec::new(),
                vec![ExtendedKeyUsagePurpose::ClientAuth],
                days,
                &client_ca,
            )?;
            println!(
                "wrote {} and {} (client {name})",
                cert.display(),
                key.display()
            );
            client_files.push((cert, key));
        }
    }
    let ca_pem = cluster_ca.cert.display();
    println!();
    for (id, cert, key) in &written {
        println!(
            "node {id}: muster serve --node-id {id} --tls-cert {} --tls-key {} --peer-ca {ca_pem}{}",
            cert.display(),
            key.display(),
            if dir.join("client-ca.pem").exists() {
                format!(" --tls-client-ca {}", dir.join("client-ca.pem").display())
            } else {
                String::new()
            }
        );
    }
    println!("clients:  muster job list --endpoint https://HOST:9090 --ca-cert {ca_pem}");
    for (cert, key) in &client_files {
        println!(
            "          ... --client-cert {} --client-key {}",
            cert.display(),
            key.display()
        );
    }
    println!("curl:     curl --cacert {ca_pem} https://HOST:8080/healthz");
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn node_specs_add_loopback_and_refuse_ports() {
        let (id, names) = parse_node("2=node2, 10.0.0.2,localhost").unwrap();
        assert_eq!(id, 2);
        assert_eq!(
            names,
            ["node2", "10.0.0.2", "localhost", "127.0.0.1", "::1"]
        );
        assert!(parse_node("x=h").is_err());
        assert!(parse_node("0=h").is_err());
        assert!(parse_node("1=h:9091").is_err());
        assert!(parse_node("1=[::2]").is_ok());
    }

    #[test]
    fn init_writes_secret_keys_reuses_its_ca_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), &["1=node1".into()], &["ops".into()], 30).unwrap();
        for f in [
            "ca.pem",
            "ca.key",
            "node-1.pem",
            "node-1.key",
            "client-ca.pem",
            "client-ops.pem",
        ] {
            assert!(dir.path().join(f).exists(), "{f}");
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for f in ["ca.key", "node-1.key", "client-ca.key", "client-ops.key"] {
                let mode = std::fs::metadata(dir.path().join(f))
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o777, 0o600, "{f}");
            }
        }
        let ca_before = std::fs::read(dir.path().join("ca.pem")).unwrap();
        // Another node later: same CA.
        init(dir.path(), &["2=node2".into()], &[], 30).unwrap();
        assert_eq!(std::fs::read(dir.path().join("ca.pem")).unwrap(), ca_before);
        // Both node certificates chain to it, for their names.
        use muster_tls::rustls::client::danger::ServerCertVerifier;
        use muster_tls::rustls::client::WebPkiServerVerifier;
        use muster_tls::rustls::pki_types::{ServerName, UnixTime};
        let roots = muster_tls::CaBundle::load(&dir.path().join("ca.pem"))
            .unwrap()
            .roots()
            .unwrap();
        let verifier =
            WebPkiServerVerifier::builder_with_provider(roots.into(), muster_tls::ring_provider())
                .build()
                .unwrap();
        for (n, host) in [
            ("node-1", "node1"),
            ("node-2", "node2"),
            ("node-2", "127.0.0.1"),
        ] {
            let pair = muster_tls::KeyPair::load(
                &dir.path().join(format!("{n}.pem")),
                &dir.path().join(format!("{n}.key")),
            )
            .unwrap();
            let chain = pair.chain().unwrap();
            verifier
                .verify_server_cert(
                    &chain[0],
                    &[],
                    &ServerName::try_from(host).unwrap(),
                    &[],
                    UnixTime::now(),
                )
                .unwrap();
        }
        let e = init(dir.path(), &["1=node1".into()], &[], 30).unwrap_err();
        assert!(e.to_string().contains("exists"), "{e}");
    }
}
