//! Mutual TLS with the brand CA: who can connect and whom a node trusts.

mod common;

use std::time::Duration;

use common::cdnow_nodes;
use fedcrm::harness::{BrandPki, COORDINATOR_NAME, Cluster, ClusterOptions, NodeSpec};
use fedcrm_coordinator::config::{CoordinatorConfig, Enrolled, TlsFiles};
use fedcrm_node::session::{SessionError, run_session};
use fedcrm_pki::tls::Refusal;
use fedcrm_pki::{Identity, OrgKind, Role, Validity};
use time::OffsetDateTime;

async fn cluster() -> Cluster {
    // node-7 and node-8 are enrolled but not running: the tests try to connect as them.
    let extra = ["node-7", "node-8"].map(|n| (n.to_string(), format!("{n} franchise ltd"))).to_vec();
    Cluster::start(ClusterOptions { nodes: cdnow_nodes(&[1; 3], true), extra_enrolled: extra, ..Default::default() })
        .await
        .unwrap()
}

fn spec(name: &str) -> NodeSpec {
    NodeSpec::franchisee(name, " customer_id  date number_of_cds  dollar_value\n 00001 19970101  1   11.77\n".into())
}

async fn attempt(cluster: &Cluster, cfg: &fedcrm_node::config::NodeConfig) -> SessionError {
    let ctx = cluster.node_context(cfg).unwrap();
    let r = tokio::time::timeout(Duration::from_secs(15), run_session(&ctx, cluster.shutdown_signal()))
        .await
        .expect("no hang");
    let err = r.expect_err("connection must fail");
    assert!(
        !cluster.coordinator.registry.connected().iter().any(|p| p.name == cfg.name),
        "{} got registered",
        cfg.name
    );
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_with_certificate_from_a_foreign_ca_cannot_connect() {
    let cluster = cluster().await;
    let mut cfg = cluster.node_config(&spec("node-7")).unwrap();
    // Same name and organisation as an enrolled node, but issued by another CA.
    let foreign = BrandPki::create(&cluster.dir.path().join("foreign"), "Counterfeit Co").unwrap();
    let id = Identity {
        name: "node-7".into(),
        organisation: "node-7 franchise ltd".into(),
        role: Role::Node(OrgKind::Franchisee),
    };
    let files = foreign.issue(&id, Validity::days_from_now(30)).unwrap();
    cfg.tls.cert = files.cert;
    cfg.tls.key = files.key;
    cfg.audit_dir = cluster.dir.path().join("foreign-audit");
    let err = attempt(&cluster, &cfg).await;
    let err = err.to_string();
    // The alert (UnknownCA) races with the connection closing; the hint is always there.
    assert!(err.contains("issued by the brand CA"), "{err}");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_with_expired_certificate_cannot_connect() {
    let cluster = cluster().await;
    let mut cfg = cluster.node_config(&spec("node-8")).unwrap();
    let now = OffsetDateTime::now_utc();
    let id = Identity {
        name: "node-8".into(),
        organisation: "node-8 franchise ltd".into(),
        role: Role::Node(OrgKind::Franchisee),
    };
    let files = cluster
        .pki
        .issue(&id, Validity { not_before: now - time::Duration::days(30), not_after: now - time::Duration::days(1) })
        .unwrap();
    cfg.tls.cert = files.cert;
    cfg.tls.key = files.key;
    let err = attempt(&cluster, &cfg).await;
    let err = err.to_string();
    assert!(err.contains("expired"), "the error should suggest checking expiry: {err}");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_with_unenrolled_name_cannot_connect() {
    let cluster = cluster().await;
    let cfg = cluster.node_config(&spec("node-9")).unwrap();
    let err = attempt(&cluster, &cfg).await.to_string();
    assert!(err.contains("not enrolled") && err.contains("node-9"), "{err}");
    // The coordinator's audit log records the refused connection and the enrolment list.
    let recs = fedcrm_audit::log::read_records(&cluster.coordinator.config.audit_dir).unwrap();
    assert!(recs.iter().any(|r| matches!(&r.event,
        fedcrm_audit::Event::SessionRefused { peer, reason, .. } if peer == "node-9" && reason.contains("not enrolled"))));
    assert!(recs.iter().any(|r| matches!(&r.event,
        fedcrm_audit::Event::Enrolment { nodes } if nodes.iter().any(|n| n.name == "node-7"))));
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analyst_certificate_cannot_open_a_node_session() {
    let cluster = cluster().await;
    let mut cfg = cluster.node_config(&spec("node-7")).unwrap();
    cfg.tls.cert = cluster.analyst.tls.cert.clone();
    cfg.tls.key = cluster.analyst.tls.key.clone();
    cfg.name = "analyst.hq".into();
    let err = attempt(&cluster, &cfg).await.to_string();
    assert!(err.contains("not a node certificate"), "{err}");
    cluster.stop().await;
}

/// Start a coordinator with the given certificate files; returns its URL.
async fn rogue_coordinator(
    cluster: &Cluster,
    ca: std::path::PathBuf,
    files: fedcrm::harness::IdentityFiles,
    name: &str,
) -> (String, tokio::sync::watch::Sender<bool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = CoordinatorConfig {
        name: name.into(),
        listen: addr.to_string(),
        tls: TlsFiles { ca, cert: files.cert, key: files.key, crl: None },
        enrolled: cluster
            .node_configs
            .iter()
            .map(|c| Enrolled { name: c.name.clone(), organisation: format!("{} franchise ltd", c.name) })
            .collect(),
        release: Default::default(),
        rounds: Default::default(),
        sessions: Default::default(),
        secagg: Default::default(),
        audit_dir: cluster.dir.path().join(format!("rogue-{name}-audit")),
        models_dir: cluster.dir.path().join(format!("rogue-{name}-models")),
        audit: Default::default(),
    };
    let c = fedcrm_coordinator::Coordinator::open(config).unwrap();
    let (tx, mut rx) = tokio::sync::watch::channel(false);
    tokio::spawn(fedcrm_coordinator::run(c, listener, async move {
        let _ = rx.changed().await;
    }));
    (format!("https://{addr}"), tx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_refuses_a_coordinator_with_a_foreign_certificate() {
    let cluster = cluster().await;
    let foreign = BrandPki::create(&cluster.dir.path().join("rogue"), "Rogue HQ").unwrap();
    let id = Identity { name: COORDINATOR_NAME.into(), organisation: "Rogue".into(), role: Role::Coordinator };
    let files = foreign.issue(&id, Validity::days_from_now(30)).unwrap();
    // The rogue trusts the brand CA for clients, so only the node's check can stop this.
    let (url, _stop) = rogue_coordinator(&cluster, cluster.pki.ca_path(), files, COORDINATOR_NAME).await;
    let mut cfg = cluster.node_configs[0].clone();
    cfg.coordinator.url = url;
    cfg.audit_dir = cluster.dir.path().join("rogue-audit");
    let ctx = cluster.node_context(&cfg).unwrap();
    let err = run_session(&ctx, cluster.shutdown_signal()).await.expect_err("must refuse");
    assert!(matches!(err, SessionError::CoordinatorRefused { refusal: Refusal::UnknownIssuer, .. }), "{err}");
    assert!(err.to_string().contains("tls.ca"), "the node is told which file to check: {err}");
    assert!(err.is_permanent(), "{err}");
    let sent = fedcrm_node::egress::read_log(&cfg.audit_dir).unwrap_or_default();
    assert!(sent.iter().all(|r| r.kind == "hello"), "only a hello may have been queued: {sent:?}");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_refuses_a_coordinator_with_the_wrong_name() {
    let cluster = cluster().await;
    let id = Identity {
        name: "other.fedcrm.test".into(),
        organisation: "Demo Jewellery HQ".into(),
        role: Role::Coordinator,
    };
    let files = cluster.pki.issue(&id, Validity::days_from_now(30)).unwrap();
    let (url, _stop) = rogue_coordinator(&cluster, cluster.pki.ca_path(), files, "other.fedcrm.test").await;
    let mut cfg = cluster.node_configs[0].clone();
    cfg.coordinator.url = url;
    // One process per audit log: node-0 is running on the cluster's.
    cfg.audit_dir = cluster.dir.path().join("rogue-audit");
    let ctx = cluster.node_context(&cfg).unwrap();
    let err = run_session(&ctx, cluster.shutdown_signal()).await.expect_err("must refuse");
    assert!(matches!(err, SessionError::CoordinatorRefused { refusal: Refusal::WrongName, .. }), "{err}");
    assert!(err.to_string().contains("not valid for name \"coordinator.fedcrm.test\""), "{err}");
    assert!(err.is_permanent(), "a wrong coordinator.server_name is this node's to fix: {err}");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_one_audit_directory_is_refused() {
    // A copied node.toml started twice: the second instance must not append to the
    // first one's log (the interleaved records would read as tampering).
    let cluster = cluster().await;
    let cfg = cluster.node_configs[0].clone();
    let err = cluster.node_context(&cfg).unwrap_err().to_string();
    assert!(err.contains("is in use by another process") && err.contains("pid "), "{err}");
    assert!(!err.contains("fix the disk"), "{err}");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incompatible_protocol_version_is_rejected_with_a_clear_message() {
    use fedcrm_pki::PrivateKeyPem;
    use fedcrm_protocol::pb;
    use fedcrm_protocol::tls::client_tls;
    let cluster = cluster().await;
    let cfg = cluster.node_config(&spec("node-7")).unwrap();
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap();
    let tls =
        client_tls(&read(&cfg.tls.ca), &read(&cfg.tls.cert), &PrivateKeyPem::new(read(&cfg.tls.key)), COORDINATOR_NAME);
    let ch = tonic::transport::Endpoint::from_shared(cfg.coordinator.url.clone())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = pb::coordinator_client::CoordinatorClient::new(ch);
    // "fedcrm/v2" is the last version before the AES-128-CTR PRG, "fedcrm/v3" the last
    // before word widths (its masks are keyed without the width), "fedcrm/v4" the last
    // before SecAgg+ (its keys are signed without a nonce commitment, its views without
    // the graph), "fedcrm/v6" the last before noise (its nodes would ignore the signed
    // noise and send exact contributions): none can take part in our rounds, so each
    // must be refused before any round, not fail inside one.
    for old in ["fedcrm/v0", "fedcrm/v2", "fedcrm/v3", "fedcrm/v4", "fedcrm/v6"] {
        let hello = pb::NodeMessage {
            body: Some(pb::node_message::Body::Hello(pb::Hello {
                protocol_version: old.into(),
                software: "fedcrm 0.0.1".into(),
                node_name: "node-7".into(),
                rules: None,
                privacy: None,
            })),
            receipt: None,
        };
        let status = client.session(tokio_stream::iter(vec![hello])).await.expect_err("must be rejected");
        assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{}", status.message());
        let m = status.message();
        assert!(m.contains(&format!("incompatible protocol version \"{old}\"")), "{m}");
        assert!(m.contains("this coordinator speaks \"fedcrm/v10\""), "{m}");
        assert!(m.contains("upgrade the node"), "{m}");
    }
    cluster.stop().await;
}
