//! Certificates HQ can operate (issue 7, point 10): refused handshakes are logged
//! at HQ with the presented name and the reason; a revoked node cannot connect
//! while others can; enrolment reloads end removed nodes' sessions; a node with
//! the wrong `tls.ca` gets an error it can act on, classified as permanent.

mod common;

use std::time::Duration;

use common::cdnow_nodes;
use fedcrm::harness::{BrandPki, Cluster, ClusterOptions, NodeSpec};
use fedcrm_audit::Event;
use fedcrm_coordinator::config::Enrolled;
use fedcrm_node::session::{SessionError, run_session};
use fedcrm_pki::crl::Reason;
use fedcrm_pki::tls::Refusal;
use fedcrm_pki::{self as pki, Identity, OrgKind, Role, Validity};
use time::OffsetDateTime;

async fn cluster() -> Cluster {
    // node-7 and node-8 are enrolled but not running: the tests connect as them.
    let extra = ["node-7", "node-8"].map(|n| (n.to_string(), format!("{n} franchise ltd"))).to_vec();
    Cluster::start(ClusterOptions { nodes: cdnow_nodes(&[1; 3], true), extra_enrolled: extra, ..Default::default() })
        .await
        .unwrap()
}

fn spec(name: &str) -> NodeSpec {
    NodeSpec::franchisee(name, " customer_id  date number_of_cds  dollar_value\n 00001 19970101  1   11.77\n".into())
}

fn node_id(name: &str) -> Identity {
    Identity { name: name.into(), organisation: format!("{name} franchise ltd"), role: Role::Node(OrgKind::Franchisee) }
}

/// One session attempt that must fail (bounded, so a regression cannot hang the suite).
async fn refused(cluster: &Cluster, cfg: &fedcrm_node::config::NodeConfig) -> SessionError {
    let ctx = cluster.node_context(cfg).unwrap();
    tokio::time::timeout(Duration::from_secs(20), run_session(&ctx, cluster.shutdown_signal()))
        .await
        .expect("a refused session must end")
        .expect_err("the connection must be refused")
}

/// The coordinator's `SessionRefused` records. The refusal is written by the task
/// that ran the handshake, which may finish just after the client saw it fail, so
/// wait (bounded) until `want` holds.
async fn refusals_once(
    cluster: &Cluster,
    want: impl Fn(&[(String, String, String)]) -> bool,
) -> Vec<(String, String, String)> {
    let mut got = vec![];
    for _ in 0..200 {
        got = fedcrm_audit::log::read_records(&cluster.coordinator.config.audit_dir)
            .unwrap()
            .into_iter()
            .filter_map(|r| match r.event {
                Event::SessionRefused { peer, organisation, reason } => Some((peer, organisation, reason)),
                _ => None,
            })
            .collect();
        if want(&got) {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    got
}

/// How the coordinator's log opens the reason of a handshake it refused for `refusal`.
fn handshake(refusal: Refusal) -> String {
    format!("tls handshake: {refusal}: ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_is_logged_at_hq_with_its_name_and_reason() {
    let cluster = cluster().await;
    let mut cfg = cluster.node_config(&spec("node-8")).unwrap();
    let now = OffsetDateTime::now_utc();
    let past = Validity { not_before: now - time::Duration::days(30), not_after: now - time::Duration::days(1) };
    let files = cluster.pki.issue(&node_id("node-8"), past).unwrap();
    (cfg.tls.cert, cfg.tls.key) = (files.cert, files.key);
    refused(&cluster, &cfg).await;
    let is_it = |r: &(String, String, String)| {
        r.0 == "node-8" && r.1 == "node-8 franchise ltd" && r.2.starts_with(&handshake(Refusal::Expired))
    };
    let got = refusals_once(&cluster, |rs| rs.iter().any(is_it)).await;
    assert!(got.iter().any(is_it), "no expired-certificate refusal for node-8 in {got:?}");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_a_foreign_ca_is_logged_at_hq() {
    let cluster = cluster().await;
    let mut cfg = cluster.node_config(&spec("node-7")).unwrap();
    let foreign = BrandPki::create(&cluster.dir.path().join("foreign"), "Counterfeit Co").unwrap();
    let files = foreign.issue(&node_id("node-7"), Validity::days_from_now(30)).unwrap();
    (cfg.tls.cert, cfg.tls.key) = (files.cert, files.key);
    cfg.audit_dir = cluster.dir.path().join("foreign-audit");
    refused(&cluster, &cfg).await;
    let is_it = |r: &(String, String, String)| r.0 == "node-7" && r.2.starts_with(&handshake(Refusal::UnknownIssuer));
    let got = refusals_once(&cluster, |rs| rs.iter().any(is_it)).await;
    assert!(got.iter().any(is_it), "no foreign-CA refusal for node-7 in {got:?}");
    // A second attempt within the minute is counted, not written again.
    refused(&cluster, &cfg).await;
    let again = refusals_once(&cluster, |_| true).await;
    assert_eq!(again.iter().filter(|r| is_it(r)).count(), 1, "{again:?}");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_node_is_cut_off_and_refused_while_others_connect() {
    let mut cluster = cluster().await;
    let victim = cluster.node_configs[1].clone();
    assert_eq!(victim.name, "node-1");
    let issued = fedcrm::auditcli::revoke(&cluster.pki.dir, &victim.tls.cert, Reason::KeyCompromise).unwrap();
    assert_eq!(issued.identity.name, "node-1");
    let mut files = cluster.coordinator.config.tls.clone();
    files.crl = Some(cluster.pki.dir.join("crl.pem"));
    // What SIGHUP does: the running session of node-1 ends at once.
    let ended = cluster.coordinator.reload_tls(&files).unwrap();
    assert_eq!(ended, ["node-1"]);
    let end = cluster.node_result("node-1").await.unwrap().expect_err("node-1's session must end");
    assert!(end.to_string().contains("revoked"), "{end}");

    // It cannot come back, and the refusal is logged with its name.
    let err = refused(&cluster, &victim).await;
    assert!(err.to_string().contains("revoked"), "the node is told to check revocation: {err}");
    let is_it = |r: &(String, String, String)| r.0 == "node-1" && r.2.starts_with(&handshake(Refusal::Revoked));
    let got = refusals_once(&cluster, |rs| rs.iter().any(is_it)).await;
    assert!(got.iter().any(is_it), "no revocation refusal for node-1 in {got:?}");

    // The others stay, and a node with a good certificate still connects.
    let connected: Vec<String> = cluster.coordinator.registry.connected().into_iter().map(|p| p.name).collect();
    assert_eq!(connected, ["node-0", "node-2"]);
    let fresh = cluster.node_config(&spec("node-7")).unwrap();
    let ctx = cluster.node_context(&fresh).unwrap();
    let rx = cluster.shutdown_signal();
    cluster.nodes.push(("node-7".into(), tokio::spawn(async move { run_session(&ctx, rx).await })));
    cluster.wait_connected(3).await.unwrap();
    // The CA's log names the revocation.
    let ca_log = fedcrm_audit::log::read_records(&cluster.pki.dir.join("audit")).unwrap();
    assert!(ca_log.iter().any(|r| matches!(&r.event,
        Event::CertificateRevoked { name, reason, crl_number: 1, .. } if name == "node-1" && reason == "keyCompromise")));
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloading_enrolment_ends_a_removed_nodes_session() {
    let mut cluster = cluster().await;
    let keep: Vec<Enrolled> = ["node-0", "node-1", "node-7"]
        .iter()
        .map(|n| Enrolled { name: n.to_string(), organisation: format!("{n} franchise ltd") })
        .collect();
    // An invalid list changes nothing.
    let doubled = [keep.clone(), keep.clone()].concat();
    assert!(cluster.coordinator.reload_enrolment(doubled).is_err());
    assert!(cluster.coordinator.enrolment.contains("node-2", "node-2 franchise ltd"));

    let ended = cluster.coordinator.reload_enrolment(keep).unwrap();
    assert_eq!(ended, ["node-2"]);
    let end = cluster.node_result("node-2").await.unwrap().expect_err("node-2's session must end");
    assert!(end.to_string().contains("removed from [[enrolled]]"), "{end}");
    let connected: Vec<String> = cluster.coordinator.registry.connected().into_iter().map(|p| p.name).collect();
    assert_eq!(connected, ["node-0", "node-1"]);
    // `hq status` lists the new enrolment, with the expiry of the certificates seen.
    let mut hq = fedcrm::hq::AnalystClient::connect(&cluster.analyst).await.unwrap();
    let status = hq.status().await.unwrap();
    let names: Vec<&str> = status.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["node-0", "node-1", "node-7"]);
    let not_after = |pem: &std::path::Path| {
        let ders = pki::pem_to_der_certs(&std::fs::read_to_string(pem).unwrap()).unwrap();
        pki::not_after_unix(&ders[0]).unwrap()
    };
    assert!(status.nodes[0].connected && status.nodes[0].last_seen > 0);
    assert_eq!(status.nodes[0].not_after, not_after(&cluster.node_configs[0].tls.cert));
    assert_eq!((status.nodes[2].not_after, status.nodes[2].last_seen), (0, 0), "node-7 was never seen");
    assert_eq!(status.coordinator_not_after, not_after(&cluster.coordinator.config.tls.cert));
    // And it cannot reconnect.
    let err = refused(&cluster, &cluster.node_configs[2].clone()).await;
    assert!(err.to_string().contains("not enrolled"), "{err}");

    let recs = fedcrm_audit::log::read_records(&cluster.coordinator.config.audit_dir).unwrap();
    let last_enrolment = recs
        .iter()
        .filter_map(|r| match &r.event {
            Event::Enrolment { nodes } => Some(nodes.iter().map(|n| n.name.clone()).collect::<Vec<_>>()),
            _ => None,
        })
        .next_back()
        .unwrap();
    assert_eq!(last_enrolment, ["node-0", "node-1", "node-7"]);
    assert!(recs.iter().any(|r| matches!(&r.event,
        Event::SessionClosed { peer, reason } if peer == "node-2" && reason.contains("removed from [[enrolled]]"))));
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_the_wrong_ca_file_is_told_to_check_tls_ca_and_stops() {
    let cluster = cluster().await;
    let mut cfg = cluster.node_config(&spec("node-7")).unwrap();
    // The node's own certificate is fine, but its tls.ca is another CA's.
    let other = BrandPki::create(&cluster.dir.path().join("other-ca"), "Demo Jewellery").unwrap();
    cfg.tls.ca = other.ca_path();
    let err = refused(&cluster, &cfg).await;
    assert!(matches!(err, SessionError::CoordinatorRefused { refusal: Refusal::UnknownIssuer, .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("tls.ca") && text.contains("retrying cannot fix this"), "{text}");
    assert!(err.is_permanent(), "{text}");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_the_crl_refuses_a_revoked_coordinator_certificate_and_keeps_trying() {
    let cluster = cluster().await;
    // A second certificate for the coordinator's name, from the brand CA, then revoked.
    let id = Identity {
        name: fedcrm::harness::COORDINATOR_NAME.into(),
        organisation: "Demo Jewellery HQ".into(),
        role: Role::Coordinator,
    };
    let dir = cluster.dir.path().join("stolen");
    std::fs::create_dir_all(&dir).unwrap();
    let (key, csr) = pki::new_key_and_csr(&id).unwrap();
    let (cert, _) = pki::sign_csr(&cluster.pki.ca, &csr, Validity::days_from_now(30)).unwrap();
    let files = fedcrm::harness::IdentityFiles { cert: dir.join("coordinator.pem"), key: dir.join("coordinator.key") };
    std::fs::write(&files.cert, cert).unwrap();
    fedcrm::harness::write_key(&files.key, &key).unwrap();
    fedcrm::auditcli::revoke(&cluster.pki.dir, &files.cert, Reason::KeyCompromise).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = cluster.coordinator.config.clone();
    config.tls.cert = files.cert;
    config.tls.key = files.key;
    config.audit_dir = cluster.dir.path().join("stolen-audit");
    let rogue = fedcrm_coordinator::Coordinator::open(config).unwrap();
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(fedcrm_coordinator::run(rogue, listener, async move {
        let _ = stopped.changed().await;
    }));

    let mut cfg = cluster.node_configs[0].clone();
    cfg.coordinator.url = format!("https://{addr}");
    cfg.audit_dir = cluster.dir.path().join("stolen-node-audit");
    cfg.tls.crl = Some(cluster.pki.dir.join("crl.pem"));
    let err = refused(&cluster, &cfg).await;
    assert!(matches!(err, SessionError::CoordinatorRefused { refusal: Refusal::Revoked, .. }), "{err}");
    // HQ renews a revoked coordinator certificate; the node need not be touched.
    assert!(!err.is_permanent(), "{err}");
    let _ = stop.send(true);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rereads_the_config_file_and_a_broken_one_changes_nothing() {
    let cluster = cluster().await;
    let path = cluster.dir.path().join("coordinator.toml");
    let mut config = cluster.coordinator.config.clone();
    config.enrolled.retain(|e| e.name != "node-8");
    std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
    cluster.coordinator.reload_from(&path);
    assert!(!cluster.coordinator.enrolment.contains("node-8", "node-8 franchise ltd"));
    assert!(cluster.coordinator.enrolment.contains("node-7", "node-7 franchise ltd"));

    // A file that does not parse (a typo while editing) leaves everything as it was.
    std::fs::write(&path, "[[enrolled]]\nname = \"node-9\"\n").unwrap();
    cluster.coordinator.reload_from(&path);
    assert!(cluster.coordinator.enrolment.contains("node-7", "node-7 franchise ltd"));
    assert!(!cluster.coordinator.enrolment.contains("node-9", "node-9 franchise ltd"));
    assert_eq!(cluster.coordinator.registry.connected().len(), 3);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_analyst_is_cut_off_on_a_connection_opened_before_the_revocation() {
    let cluster = cluster().await;
    // The analyst connects, then HQ revokes its certificate and reloads.
    let mut hq = fedcrm::hq::AnalystClient::connect(&cluster.analyst).await.unwrap();
    hq.status().await.expect("allowed before the revocation");
    fedcrm::auditcli::revoke(&cluster.pki.dir, &cluster.analyst.tls.cert, Reason::KeyCompromise).unwrap();
    let mut files = cluster.coordinator.config.tls.clone();
    files.crl = Some(cluster.pki.dir.join("crl.pem"));
    cluster.coordinator.reload_tls(&files).unwrap();
    // The same HTTP/2 connection, still open: every further call is refused.
    let err = hq.status().await.expect_err("a revoked certificate must not outlive its connection");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    assert!(err.message().contains("revoked"), "{}", err.message());
    let err = hq.segments("1997-09-30", "after revocation", false).await.expect_err("no analysis either");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_refuses_a_new_coordinator_certificate_and_changes_nothing() {
    let cluster = cluster().await;
    // Another certificate for the coordinator's name: rotating it takes a restart.
    let id = Identity {
        name: cluster.coordinator.config.name.clone(),
        organisation: "Demo Jewellery HQ".into(),
        role: Role::Coordinator,
    };
    let other = cluster.pki.issue(&id, Validity::days_from_now(30)).unwrap();
    let mut files = cluster.coordinator.config.tls.clone();
    files.cert = other.cert;
    files.key = other.key;
    let err = cluster.coordinator.reload_tls(&files).unwrap_err().to_string();
    assert!(err.contains("restart the coordinator"), "{err}");
    assert_eq!(cluster.coordinator.registry.connected().len(), 3, "no session ended");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_node_reads_the_crl_again_before_it_reconnects() {
    let cluster = cluster().await;
    // A coordinator certificate that is fine today, on a server the node will dial.
    let id = Identity {
        name: fedcrm::harness::COORDINATOR_NAME.into(),
        organisation: "Demo Jewellery HQ".into(),
        role: Role::Coordinator,
    };
    let dir = cluster.dir.path().join("later-revoked");
    std::fs::create_dir_all(&dir).unwrap();
    let files = cluster.pki.issue(&id, Validity::days_from_now(30)).unwrap();
    // The CRL the node starts with lists another certificate only.
    let other = Identity {
        name: "node-8".into(),
        organisation: "node-8 franchise ltd".into(),
        role: Role::Node(OrgKind::Franchisee),
    };
    let other_files = cluster.pki.issue(&other, Validity::days_from_now(30)).unwrap();
    fedcrm::auditcli::revoke(&cluster.pki.dir, &other_files.cert, Reason::KeyCompromise).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = cluster.coordinator.config.clone();
    config.tls.cert = files.cert.clone();
    config.tls.key = files.key;
    config.audit_dir = dir.join("audit");
    // It does not enroll node-0: a session that gets past TLS is refused by name.
    config.enrolled.retain(|e| e.name != "node-0");
    let second = fedcrm_coordinator::Coordinator::open(config).unwrap();
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(fedcrm_coordinator::run(second, listener, async move {
        let _ = stopped.changed().await;
    }));
    let mut cfg = cluster.node_configs[0].clone();
    cfg.coordinator.url = format!("https://{addr}");
    cfg.audit_dir = dir.join("node-audit");
    cfg.tls.crl = Some(cluster.pki.dir.join("crl.pem"));
    let ctx = cluster.node_context(&cfg).unwrap();
    let first = run_session(&ctx, cluster.shutdown_signal()).await.expect_err("not enrolled there");
    assert!(matches!(first, SessionError::Rejected { .. }), "TLS passed, the name was refused: {first}");
    // HQ revokes that certificate and ships the new list; the same running node
    // refuses it at its next attempt, without a restart.
    fedcrm::auditcli::revoke(&cluster.pki.dir, &files.cert, Reason::KeyCompromise).unwrap();
    let next = run_session(&ctx, cluster.shutdown_signal()).await.expect_err("revoked now");
    assert!(matches!(next, SessionError::CoordinatorRefused { refusal: Refusal::Revoked, .. }), "{next}");
    let _ = stop.send(true);
    cluster.stop().await;
}
