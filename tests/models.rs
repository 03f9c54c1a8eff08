//! Issue 11: the model registry and publication over mutual TLS. A trained model is
//! served to nodes only once HQ's model publisher has signed its exact bytes; a node
//! accepts it only from the publisher its node.toml names, unchanged, with a
//! certificate from the brand CA — a changed weight, another publisher's key or a
//! signature by an analyst are refused with the reason. Times are taken from the
//! certificates themselves (no outcome depends on the real clock).

mod common;

use fedcrm::harness::{Cluster, ClusterOptions, PUBLISHER_NAME};
use fedcrm::hq::{AnalystClient, PublisherFiles};
use fedcrm::models::{ModelsView, models_csv, models_table};
use fedcrm_audit::Event;
use fedcrm_coordinator::config::ReleaseRules;
use fedcrm_node::models::{FetchError, fetch};
use fedcrm_protocol::model::{FORMAT, ModelError, ModelHeader, SIGNING_CONTEXT};

fn header(id: &str) -> ModelHeader {
    ModelHeader {
        format: FORMAT.into(),
        id: id.into(),
        kind: "churn-logistic".into(),
        created_ms: 1_790_000_000_000,
        body: serde_json::json!({
            "weights": [0.125, -1.5, 3.25],
            "metrics": { "test_auc": 0.8125, "nodes": 4 },
        }),
    }
}

async fn cluster() -> Cluster {
    let opts = ClusterOptions {
        nodes: common::cdnow_nodes(&[1; 4], true),
        release: ReleaseRules { min_participants: 3, min_cohort: 0 },
        ..Default::default()
    };
    Cluster::start(opts).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_reaches_nodes_only_signed_by_their_publisher_and_unchanged() {
    common::logs();
    let cluster = cluster().await;
    let registry = &cluster.coordinator.models;
    let id = registry.next_id("churn").unwrap();
    assert_eq!(id, "churn-v1");
    registry.register(&header(&id)).unwrap();
    assert_eq!(registry.next_id("churn").unwrap(), "churn-v2");

    let publisher = cluster.analyst.publisher.clone().unwrap();
    let cert_pem = std::fs::read_to_string(&publisher.cert).unwrap();
    let now = common::inside_validity(&cert_pem);
    let node = &cluster.node_configs[0];

    // Listed, not published; a node is not served an unpublished model.
    let mut hq = AnalystClient::connect(&cluster.analyst).await.unwrap();
    let view = ModelsView::new(&hq.models().await.unwrap());
    assert_eq!(view.models.len(), 1);
    let row = &view.models[0];
    assert_eq!((row.id.as_str(), row.published, row.publisher.as_deref()), ("churn-v1", false, None));
    assert_eq!(row.metrics["test_auc"], 0.8125);
    assert!(models_table(&view).contains("trained, not published"), "{}", models_table(&view));
    let err = fetch(node, &id, now).await.unwrap_err();
    assert!(matches!(&err, FetchError::Coordinator { why, .. } if why.contains("not published")), "{err}");

    // An analyst's key posing as the publisher: `hq publish` refuses to sign with it,
    // and a signature made with it anyway is refused by the coordinator.
    let as_analyst = PublisherFiles { key: cluster.analyst.tls.key.clone(), cert: cluster.analyst.tls.cert.clone() };
    let err = format!("{:#}", hq.publish(&id, &as_analyst).await.unwrap_err());
    assert!(err.contains("fedcrm-model-publisher"), "{err}");
    let artifact = hq.model_artifact(&id).await.unwrap().artifact;
    let analyst_key = fedcrm_pki::SigningKey::from_pem(&fedcrm_pki::PrivateKeyPem::new(
        std::fs::read_to_string(&cluster.analyst.tls.key).unwrap(),
    ))
    .unwrap();
    let forged = analyst_key.sign(&[SIGNING_CONTEXT, artifact.as_bytes()].concat()).unwrap();
    let analyst_cert = std::fs::read_to_string(&cluster.analyst.tls.cert).unwrap();
    let err = hq.publish_signed(&id, analyst_cert, hex::encode(forged)).await.unwrap_err().to_string();
    assert!(err.contains("not fedcrm-model-publisher"), "{err}");
    // The publisher's certificate with a signature by another key: refused.
    let err = hq.publish_signed(&id, cert_pem.clone(), hex::encode([0x30u8; 70])).await.unwrap_err().to_string();
    assert!(err.contains("does not verify"), "{err}");

    // Published by the publisher: listed as such, in the coordinator's audit log.
    let reply = hq.publish(&id, &publisher).await.unwrap();
    assert_eq!(reply.publisher, PUBLISHER_NAME);
    let view = ModelsView::new(&hq.models().await.unwrap());
    assert_eq!(view.models[0].publisher.as_deref(), Some(PUBLISHER_NAME));
    assert!(models_csv(&view).lines().nth(1).unwrap().starts_with("churn-v1,churn-logistic,"));
    let published: Vec<_> = fedcrm_audit::log::read_records(&cluster.coordinator.config.audit_dir)
        .unwrap()
        .into_iter()
        .filter_map(|r| match r.event {
            Event::ModelPublished { model, version, sha256 } => Some((model, version, sha256)),
            _ => None,
        })
        .collect();
    assert_eq!(published, vec![("churn".to_string(), "1".to_string(), reply.sha256.clone())]);
    // Publishing twice is refused.
    assert!(hq.publish(&id, &publisher).await.unwrap_err().to_string().contains("already published"));

    // The node fetches and verifies it: the header as trained.
    let (h, _) = fetch(node, &id, now).await.unwrap();
    assert_eq!(h, header(&id));

    // A node that trusts another publisher refuses it, naming both.
    let mut other = node.clone();
    other.scoring =
        Some(fedcrm_node::models::Scoring { publisher: "models.elsewhere".into(), clv: Default::default() });
    let err = fetch(&other, &id, now).await.unwrap_err();
    assert!(
        matches!(&err, FetchError::Refused { error: ModelError::WrongPublisher { got, .. }, .. } if got == PUBLISHER_NAME),
        "{err}"
    );

    // One weight changed in the registry after publication: every node refuses it.
    let signed_path = cluster.coordinator.config.models_dir.join(format!("{id}.signed.json"));
    let text = std::fs::read_to_string(&signed_path).unwrap();
    let tampered = text.replacen("-1.5", "-1.25", 1);
    assert_ne!(tampered, text);
    std::fs::write(&signed_path, tampered).unwrap();
    let err = fetch(node, &id, now).await.unwrap_err();
    assert!(matches!(&err, FetchError::Refused { error: ModelError::BadSignature, .. }), "{err}");
    assert!(err.to_string().contains("changed after signing"), "{err}");

    // A node without [scoring] is told what to add.
    let mut unset = node.clone();
    unset.scoring = None;
    assert!(fetch(&unset, &id, now).await.unwrap_err().to_string().contains("[scoring]"));
}
