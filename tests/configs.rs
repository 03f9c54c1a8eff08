//! Every file in configs/ parses (style rule 21), and unknown keys are rejected.

use std::path::PathBuf;

fn configs() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("configs")
}

#[test]
fn every_example_config_parses() {
    let mut seen = 0;
    for e in std::fs::read_dir(configs()).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        match name.as_str() {
            "node.toml" => {
                let c = fedcrm_node::config::NodeConfig::load(&p).unwrap();
                assert_eq!(c.policy.min_participants, 3);
            }
            "coordinator.toml" => {
                let c = fedcrm_coordinator::config::CoordinatorConfig::load(&p).unwrap();
                assert!(!c.enrolled.is_empty());
            }
            "hq.toml" => {
                fedcrm::hq::HqConfig::load(&p).unwrap();
            }
            other => panic!("configs/{other} has no parser in this test; add one"),
        }
        seen += 1;
    }
    assert_eq!(seen, 3);
}

#[test]
fn unknown_keys_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(configs().join("node.toml"))
        .unwrap()
        .replace("min_participants = 3", "min_participant = 3");
    let p = dir.path().join("node.toml");
    std::fs::write(&p, text).unwrap();
    let err = fedcrm_node::config::NodeConfig::load(&p).unwrap_err().to_string();
    assert!(err.contains("min_participant"), "{err}");
}

#[test]
fn misspelt_data_columns_and_encodings_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let original = std::fs::read_to_string(configs().join("node.toml")).unwrap();
    let p = dir.path().join("node.toml");
    for (from, to, expect) in [
        ("customer_key = \"customer_key\"", "customer_id = \"会员编号\"", "unknown field `customer_id`"),
        ("encoding = \"auto\"", "encoding = \"big5\"", "big5"),
        ("max_skipped_fraction = 0.01", "max_skipped_fraction = 1.5", "max_skipped_fraction = 1.5 is not a fraction"),
    ] {
        assert!(original.contains(from), "{from}");
        std::fs::write(&p, original.replacen(from, to, 1)).unwrap();
        let err = fedcrm_node::config::NodeConfig::load(&p).unwrap_err().to_string();
        assert!(err.contains(expect), "{err}");
    }
}

#[test]
fn misspelt_or_unsafe_policy_values_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let original = std::fs::read_to_string(configs().join("node.toml")).unwrap();
    let p = dir.path().join("node.toml");
    for (from, to, expect) in [
        ("rfm-segments = 50", "rfm-segmnts = 50", "\"rfm-segmnts\", which is not an analysis"),
        (
            "allowed_analyses = [\"rfm-histograms\", \"rfm-segments\", \"churn-model\", \"channel-overlap\", \"clv-model\"]",
            "allowed_analyses = [\"rfm-segment\"]",
            "policy.allowed_analyses names \"rfm-segment\"",
        ),
        ("min_participants = 3", "min_participants = 1", "min_participants = 1 is unsafe"),
    ] {
        assert!(original.contains(from), "{from}");
        std::fs::write(&p, original.replace(from, to)).unwrap();
        let err = fedcrm_node::config::NodeConfig::load(&p).unwrap_err().to_string();
        assert!(err.contains(expect), "{err}");
    }
}

#[test]
fn audit_retention_under_three_years_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["node.toml", "coordinator.toml"] {
        let text = std::fs::read_to_string(configs().join(name)).unwrap();
        assert!(text.contains("retention_days = 1096"), "{name}");
        let p = dir.path().join(name);
        std::fs::write(&p, text.replace("retention_days = 1096", "retention_days = 1")).unwrap();
        let err = match name {
            "node.toml" => fedcrm_node::config::NodeConfig::load(&p).map(drop),
            _ => fedcrm_coordinator::config::CoordinatorConfig::load(&p).map(drop),
        }
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("retention_days is 1, but audit logs must be kept at least 1096 days")
                && err.contains("set retention_days = 1096 or more"),
            "{name}: {err}"
        );
    }
}

#[test]
fn ca_sign_refuses_a_validity_of_zero_days() {
    // An already-expired certificate would only fail later, at the node's first handshake.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fedcrm"))
        .args(["ca", "sign", "node.csr", "--days", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--days") && err.contains("0 is not in 1.."), "{err}");
}

#[test]
fn an_error_under_json_is_json_and_each_cause_prints_once() {
    // A script that asked for JSON must be able to parse the failure too.
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("hq.toml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fedcrm"))
        .args(["hq", "status", "--json", "--config", missing.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    let error = v["error"].as_str().unwrap();
    assert!(error.contains("hq.toml"), "{v}");
    assert!(v["causes"].as_array().is_some_and(|c| !c.is_empty()), "{v}");
    // Without --json: plain text on standard error, the OS error once.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fedcrm"))
        .args(["hq", "status", "--config", missing.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: ") && out.stdout.is_empty(), "{err}");
    assert_eq!(err.matches("os error 2").count(), 1, "{err}");
}

#[test]
fn a_chunk_size_beyond_the_message_limit_is_an_error_at_load() {
    // A chunk that cannot fit in one gRPC message would fail every round at its first
    // masked input; say so when the coordinator starts instead.
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(configs().join("coordinator.toml")).unwrap();
    assert!(text.contains("chunk_elements = 65536"));
    for bad in ["0", "2000000"] {
        let p = dir.path().join(format!("coordinator-{bad}.toml"));
        std::fs::write(&p, text.replace("chunk_elements = 65536", &format!("chunk_elements = {bad}"))).unwrap();
        let err = fedcrm_coordinator::config::CoordinatorConfig::load(&p).unwrap_err().to_string();
        assert!(err.contains("chunk_elements") && err.contains("message limit"), "{bad}: {err}");
    }
    let largest = fedcrm_protocol::MAX_CHUNK_ELEMENTS;
    let p = dir.path().join("coordinator-max.toml");
    std::fs::write(&p, text.replace("chunk_elements = 65536", &format!("chunk_elements = {largest}"))).unwrap();
    fedcrm_coordinator::config::CoordinatorConfig::load(&p).expect("the largest chunk that fits is accepted");
    // The largest chunk's encoded message does fit.
    let chunk = fedcrm_protocol::pb::MaskedChunk { words: vec![u64::MAX; largest as usize], ..Default::default() };
    assert!(prost::Message::encoded_len(&chunk) < fedcrm_protocol::MAX_MESSAGE_BYTES);
}

#[test]
fn noise_variance_defaults_to_16_is_exact_when_set_and_refused_when_zero() {
    // Issue 10: `[rounds] noise_variance = [num, den]`, σ² per node as an exact fraction.
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(configs().join("coordinator.toml")).unwrap();
    assert!(text.contains("# noise_variance = [16, 1]"));
    let p = dir.path().join("coordinator-exact.toml");
    std::fs::write(&p, &text).unwrap();
    let c = fedcrm_coordinator::config::CoordinatorConfig::load(&p).unwrap();
    let v = c.rounds.noise_variance();
    assert_eq!((v.num(), v.den()), (16, 1), "the default: σ = 4 per node");
    let set = |value: &str| {
        let p = dir.path().join(format!("coordinator-{}.toml", value.replace([' ', ',', '[', ']'], "_")));
        std::fs::write(&p, text.replace("# noise_variance = [16, 1]", &format!("noise_variance = {value}"))).unwrap();
        fedcrm_coordinator::config::CoordinatorConfig::load(&p)
    };
    let v = set("[18, 8]").unwrap().rounds.noise_variance();
    assert_eq!((v.num(), v.den()), (9, 4));
    for bad in ["[0, 1]", "[4, 0]"] {
        let err = set(bad).unwrap_err().to_string();
        assert!(err.contains("noise_variance") && err.contains("both parts positive"), "{bad}: {err}");
    }
}
