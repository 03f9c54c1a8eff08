//! Architecture invariants (ARCHITECTURE.md), checked mechanically:
//! dependency direction, what the types of the two doors cannot express, the pure
//! crypto leaf, unsafe code forbidden, secrets that never print.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Workspace packages and their fedcrm-* / notable dependencies, from `cargo metadata`.
fn deps() -> BTreeMap<String, BTreeSet<String>> {
    let out = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(root())
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut m = BTreeMap::new();
    for p in v["packages"].as_array().unwrap() {
        let names = p["dependencies"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["kind"].is_null()) // normal dependencies only
            .map(|d| d["name"].as_str().unwrap().to_string())
            .collect();
        m.insert(p["name"].as_str().unwrap().to_string(), names);
    }
    m
}

fn fedcrm_deps(m: &BTreeMap<String, BTreeSet<String>>, pkg: &str) -> BTreeSet<String> {
    m[pkg].iter().filter(|d| d.starts_with("fedcrm")).cloned().collect()
}

fn set(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn dependencies_point_one_way() {
    let m = deps();
    assert_eq!(fedcrm_deps(&m, "fedcrm-crypto"), set(&[]));
    assert_eq!(fedcrm_deps(&m, "fedcrm-pki"), set(&[]));
    assert_eq!(fedcrm_deps(&m, "fedcrm-analysis"), set(&["fedcrm-crypto", "fedcrm-pki"]));
    assert_eq!(fedcrm_deps(&m, "fedcrm-audit"), set(&["fedcrm-analysis", "fedcrm-pki"]));
    // Issue 10: the DP crate is a pure leaf; the wire names its noise (σ² and k).
    assert_eq!(fedcrm_deps(&m, "fedcrm-dp"), set(&[]));
    // Issue 11: the churn model's mathematics is a pure leaf too.
    assert_eq!(fedcrm_deps(&m, "fedcrm-model"), set(&[]));
    assert_eq!(
        fedcrm_deps(&m, "fedcrm-protocol"),
        set(&["fedcrm-analysis", "fedcrm-crypto", "fedcrm-dp", "fedcrm-model", "fedcrm-pki"])
    );
    let above = set(&[
        "fedcrm-analysis",
        "fedcrm-audit",
        "fedcrm-crypto",
        "fedcrm-dp",
        "fedcrm-model",
        "fedcrm-pki",
        "fedcrm-protocol",
    ]);
    assert_eq!(fedcrm_deps(&m, "fedcrm-node"), above);
    assert_eq!(fedcrm_deps(&m, "fedcrm-coordinator"), above);
    for forbidden in ["tokio", "tonic", "prost", "tracing"] {
        assert!(!m["fedcrm-crypto"].contains(forbidden), "crypto must stay a pure leaf; it depends on {forbidden}");
        assert!(!m["fedcrm-model"].contains(forbidden), "model must stay a pure leaf; it depends on {forbidden}");
    }
}

/// The auditor's tool builds without gRPC: nothing in `fedcrm-audit`'s whole tree of
/// normal dependencies is tonic, prost or protoc (they come with `fedcrm-protocol`).
#[test]
fn audit_builds_without_grpc() {
    let out = std::process::Command::new(env!("CARGO"))
        .args(["tree", "-p", "fedcrm-audit", "-e", "normal", "--prefix", "none", "--offline"])
        .current_dir(root())
        .output()
        .expect("cargo tree runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let tree = String::from_utf8(out.stdout).unwrap();
    assert!(tree.contains("fedcrm-pki"), "cargo tree printed no fedcrm-pki:\n{tree}");
    for line in tree.lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        for forbidden in ["tonic", "prost", "protoc"] {
            assert!(!name.starts_with(forbidden), "fedcrm-audit depends on {name} (a gRPC crate)");
        }
    }
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(rust_files(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out
}

fn files_containing(dir: &str, needle: &str) -> BTreeSet<String> {
    rust_files(&root().join(dir))
        .into_iter()
        .filter(|p| std::fs::read_to_string(p).unwrap().contains(needle))
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// The egress door holds by construction: the outbound stream (`egress::Outbound`) is
/// made only with its `Egress`, only `Egress::send` queues on it, and only
/// `Outbound::open_session` opens the session call, with that stream as everything the
/// node sends (doctests in `node/src/egress.rs`). What types cannot express: the wire
/// message and the gRPC client are public items of `fedcrm-protocol`, which any module
/// of the node could name to build a message and a session of its own. So only
/// `egress.rs` names them.
#[test]
fn node_egress_is_the_only_sender() {
    for name in ["NodeMessage", "CoordinatorClient", "coordinator_client"] {
        assert_eq!(files_containing("node/src", name), set(&["egress.rs"]), "{name}");
    }
}

/// The release door holds by construction: `release::UnreleasedSum` keeps a round's sum
/// in a private field and is made only by unmasking, and its doctests
/// (`coordinator/src/release.rs`) show that code outside the crate can neither read nor
/// make one. A doctest compiles outside the crate, so it cannot tell a private field or
/// function from a `pub(crate)` one, nor see a trait impl that hands the words out; this
/// checks those: the field has no visibility, the constructor is the type's only
/// visible function, and `Debug` (which prints the length) its only trait; and that no
/// other coordinator file unmasks a sum with the crypto crate's public `finish`.
#[test]
fn coordinator_release_is_the_only_reader_of_round_sums() {
    let text = std::fs::read_to_string(root().join("coordinator/src/release.rs")).unwrap();
    let block = |opening: &str| {
        let at = text.find(opening).unwrap_or_else(|| panic!("release.rs has no `{opening}`"));
        let rest = &text[at + opening.len()..];
        rest[..rest.find("\n}").unwrap()].to_string()
    };
    assert!(!block("pub struct UnreleasedSum {").contains("pub"), "UnreleasedSum's field must stay private");
    assert_eq!(text.matches("impl UnreleasedSum").count(), 1);
    let visible: Vec<String> =
        block("impl UnreleasedSum {").lines().map(|l| l.trim().to_string()).filter(|l| l.starts_with("pub")).collect();
    assert!(
        visible.len() == 1 && visible[0].starts_with("pub(crate) fn unmask("),
        "UnreleasedSum may show the crate only its constructor: {visible:?}"
    );
    assert_eq!(text.matches("for UnreleasedSum").count(), 1, "UnreleasedSum implements only Debug");
    assert!(text.contains("impl std::fmt::Debug for UnreleasedSum"));
    // The crypto crate's `Unmasking::finish(responses)` returns the sum's words, and it
    // is public (the crate is a library): only release.rs may call it, inside the
    // constructor above. (`.finish()` without arguments is a `Debug` builder.)
    for f in rust_files(&root().join("coordinator/src")) {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let other = std::fs::read_to_string(&f).unwrap();
        let calls = other.matches(".finish(").count() - other.matches(".finish()").count();
        let expected = usize::from(name == "release.rs");
        assert_eq!(calls + other.matches("Unmasking::finish").count(), expected, "{name} unmasks a sum itself");
    }
}

/// The code map in ARCHITECTURE.md names every source file (by its name; `lib.rs`,
/// `mod.rs` and `main.rs` are named by their crate or directory), so a file added or
/// moved without updating the map fails here. Unit-test files (`tests.rs`) and
/// integration tests are left to `tests/` and their crates' entries.
#[test]
fn the_code_map_names_every_source_file() {
    let map = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let start = map.find("## Code map").expect("ARCHITECTURE.md has a code map");
    let map = &map[start..];
    let mut unnamed = vec![];
    for dir in [
        "src",
        "crypto/src",
        "pki/src",
        "analysis/src",
        "protocol/src",
        "audit/src",
        "node/src",
        "coordinator/src",
        "dp/src",
        "model/src",
    ] {
        for f in rust_files(&root().join(dir)) {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            if ["lib.rs", "mod.rs", "main.rs", "tests.rs"].contains(&name.as_str()) {
                continue;
            }
            if !map.contains(&name) {
                unnamed.push(f.strip_prefix(root()).unwrap().display().to_string());
            }
        }
    }
    assert!(unnamed.is_empty(), "ARCHITECTURE.md's code map does not name: {unnamed:?}");
}

#[test]
fn crypto_is_pure() {
    for f in rust_files(&root().join("crypto/src")) {
        let text = std::fs::read_to_string(&f).unwrap();
        for io in ["std::fs", "std::net", "SystemTime", "Instant::now", "tokio", "println!"] {
            assert!(!text.contains(io), "{} uses {io}", f.display());
        }
    }
}

/// The churn model's mathematics (issue 11) does no I/O, reads no clock and prints
/// nothing: the node and the coordinator call it with data and dates.
#[test]
fn model_is_pure() {
    for f in rust_files(&root().join("model/src")) {
        let text = std::fs::read_to_string(&f).unwrap();
        for io in [
            "std::fs",
            "std::net",
            "std::io",
            "SystemTime",
            "Instant::now",
            "OffsetDateTime::now",
            "tokio",
            "tracing",
            "println!",
        ] {
            assert!(!text.contains(io), "{} uses {io}", f.display());
        }
    }
}

#[test]
fn every_crate_forbids_unsafe_code() {
    for lib in [
        "src/lib.rs",
        "crypto/src/lib.rs",
        "pki/src/lib.rs",
        "analysis/src/lib.rs",
        "protocol/src/lib.rs",
        "audit/src/lib.rs",
        "node/src/lib.rs",
        "coordinator/src/lib.rs",
        "model/src/lib.rs",
    ] {
        let text = std::fs::read_to_string(root().join(lib)).unwrap();
        assert!(text.contains("#![forbid(unsafe_code)]"), "{lib}");
    }
    let ws = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    assert!(ws.contains("unsafe_code = \"forbid\""));
}

#[test]
fn secrets_never_print() {
    use fedcrm_crypto::keys::RoundSecret;
    use fedcrm_crypto::prg::MaskSeed;
    use fedcrm_crypto::psi::{BlindingKey, Domain};
    use fedcrm_pki::{PrivateKeyPem, SigningKey, new_key_and_csr};
    let (key, _) = new_key_and_csr(&fedcrm_pki::Identity {
        name: "n".into(),
        organisation: "o".into(),
        role: fedcrm_pki::Role::Analyst,
    })
    .unwrap();
    let signing = SigningKey::from_pem(&key).unwrap();
    let printed = [
        format!("{:?}", RoundSecret::from_bytes([7; 32])),
        format!("{:?}", MaskSeed::from_bytes([7; 32])),
        format!(
            "{:?}",
            BlindingKey::generate(Domain { version: 1, run_id: [7; 16] }, &fedcrm_crypto::SystemRandom::new()).unwrap()
        ),
        format!("{key:?}"),
        format!("{signing:?}"),
        format!("{:?}", PrivateKeyPem::new("-----BEGIN PRIVATE KEY-----".into())),
    ];
    for p in printed {
        assert!(p.ends_with("(..)") && !p.contains("BEGIN") && !p.contains("7, 7"), "{p}");
    }
}

#[test]
fn no_secret_type_is_serializable() {
    for (file, ty) in [
        ("crypto/src/keys.rs", "RoundSecret"),
        ("crypto/src/keys.rs", "SharedSecret"),
        ("crypto/src/prg.rs", "MaskSeed"),
        ("crypto/src/psi.rs", "BlindingKey"),
        ("crypto/src/kdf.rs", "DerivedKey"),
        ("crypto/src/shamir.rs", "Share"),
        ("pki/src/lib.rs", "PrivateKeyPem"),
        ("pki/src/lib.rs", "SigningKey"),
    ] {
        let text = std::fs::read_to_string(root().join(file)).unwrap();
        let at = text.find(&format!("pub struct {ty}")).unwrap_or_else(|| panic!("{ty} not in {file}"));
        let before = &text[..at];
        let attrs = &before[before.rfind("\n\n").unwrap_or(0)..];
        for derive in attrs.lines().filter(|l| l.trim_start().starts_with("#[derive(")) {
            assert!(
                !derive.contains("Serialize") && !derive.contains("Debug"),
                "{ty} derives Debug or Serialize: {derive}"
            );
        }
    }
}
