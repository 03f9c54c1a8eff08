//! The real `fedcrm` binary as separate processes, as HQ IT and five franchisees run
//! it: a coordinator and five `node run` processes on loopback, configured by TOML
//! files. The coordinator is killed with SIGKILL in the middle of a round and started
//! again; every node must reconnect by itself, and the next analysis must equal the
//! pooled answer. Then SIGTERM ends every process within the stated time
//! (`fedcrm_coordinator::SHUTDOWN_TIME`), each leaving a
//! sealed audit log that verifies together with the others.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use fedcrm::harness::process::{free_port, wait_within};
use fedcrm::harness::{BrandPki, CDNOW, split_cdnow};
use fedcrm::hq::{AnalystClient, HqConfig, SegmentsView};
use fedcrm_audit::Event;
use fedcrm_pki::{Identity, OrgKind, Role, Validity};

const REFERENCE: &str = "1997-09-30";
const COORDINATOR: &str = "coordinator.fedcrm.test";
const NODES: usize = 5;

struct Deployment {
    dir: tempfile::TempDir,
    nodes: Vec<String>,
    data: Vec<String>,
}

impl Deployment {
    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn coordinator_audit(&self) -> PathBuf {
        self.root().join("coordinator/audit")
    }

    fn node_dir(&self, name: &str) -> PathBuf {
        self.root().join("nodes").join(name)
    }
}

/// A brand CA, certificates, TOML configurations and data splits, as files.
fn deploy() -> Deployment {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let pki = BrandPki::create(&root.join("ca"), "Process Test Jewellery").unwrap();
    let hq_org = "Process Test Jewellery HQ";
    let issue = |name: &str, organisation: &str, role: Role| {
        pki.issue(&Identity { name: name.into(), organisation: organisation.into(), role }, Validity::days_from_now(30))
            .unwrap()
    };
    let port = free_port().unwrap();
    let ca = pki.ca_path();
    let nodes: Vec<String> = (0..NODES).map(|i| format!("fr-store-{i:02}")).collect();
    let data = split_cdnow(CDNOW, &[1; NODES], true);

    let c = issue(COORDINATOR, hq_org, Role::Coordinator);
    std::fs::create_dir_all(root.join("coordinator")).unwrap();
    let mut toml = format!(
        "name = \"{COORDINATOR}\"\nlisten = \"127.0.0.1:{port}\"\naudit_dir = \"audit\"\n\n\
         [tls]\nca = {ca:?}\ncert = {:?}\nkey = {:?}\n\n\
         [release]\nmin_participants = 3\nmin_cohort = 10\n\n\
         [rounds]\nphase_timeout_seconds = 20\nchunk_elements = 65536\n\n\
         [audit]\nseal_every_records = 64\nseal_every_seconds = 2\n",
        c.cert, c.key
    );
    for n in &nodes {
        toml.push_str(&format!("\n[[enrolled]]\nname = \"{n}\"\norganisation = \"{n} franchise ltd\"\n"));
    }
    std::fs::write(root.join("coordinator/coordinator.toml"), toml).unwrap();

    let a = issue("analyst.hq", hq_org, Role::Analyst);
    std::fs::write(
        root.join("hq.toml"),
        format!(
            "url = \"https://127.0.0.1:{port}\"\nserver_name = \"{COORDINATOR}\"\n\n[tls]\nca = {ca:?}\ncert = {:?}\nkey = {:?}\n",
            a.cert, a.key
        ),
    )
    .unwrap();

    for (n, text) in nodes.iter().zip(&data) {
        let f = issue(n, &format!("{n} franchise ltd"), Role::Node(OrgKind::Franchisee));
        let ndir = root.join("nodes").join(n);
        std::fs::create_dir_all(&ndir).unwrap();
        std::fs::write(ndir.join("purchases.txt"), text).unwrap();
        std::fs::write(
            ndir.join("node.toml"),
            format!(
                "name = \"{n}\"\naudit_dir = \"audit\"\napprovals_dir = \"approvals\"\n\n\
                 [coordinator]\nurl = \"https://127.0.0.1:{port}\"\nserver_name = \"{COORDINATOR}\"\n\
                 retry_seconds = 1\nretry_max_seconds = 2\n\n\
                 [tls]\nca = {ca:?}\ncert = {:?}\nkey = {:?}\n\n\
                 [data]\nformat = \"cdnow\"\npath = \"purchases.txt\"\n\n\
                 [policy.privacy]\ndp = \"optional\"\n\n\
                 [audit]\nseal_every_seconds = 2\n",
                f.cert, f.key
            ),
        )
        .unwrap();
    }
    Deployment { dir, nodes, data }
}

/// Start `fedcrm` with its standard error in `log` (plain text: not a terminal).
fn spawn(args: &[&str], log: &Path) -> Child {
    fedcrm::harness::process::spawn(Path::new(env!("CARGO_BIN_EXE_fedcrm")), args, log).unwrap()
}

fn start_coordinator(d: &Deployment) -> Child {
    let config = d.root().join("coordinator/coordinator.toml");
    spawn(&["coordinator", "run", "--config", config.to_str().unwrap()], &d.root().join("coordinator/stderr.log"))
}

fn start_node(d: &Deployment, name: &str) -> Child {
    let config = d.node_dir(name).join("node.toml");
    spawn(&["node", "run", "--config", config.to_str().unwrap()], &d.node_dir(name).join("stderr.log"))
}

fn signal(child: &Child, sig: &str) {
    fedcrm::harness::process::signal(child.id(), sig).unwrap();
}

/// Poll until `f` holds; panics with `what` after `limit` (a process that never gets
/// there is a failure, not a slow pass).
async fn until(limit: Duration, what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn connected(hq: &HqConfig) -> usize {
    let Ok(mut client) = AnalystClient::connect(hq).await else { return 0 };
    client.status().await.map(|s| s.nodes.iter().filter(|n| n.connected).count()).unwrap_or(0)
}

/// Deploy, start the coordinator and every node, and wait until all are connected.
async fn start_all() -> (Deployment, HqConfig, Child, Vec<Child>) {
    let d = deploy();
    let hq = HqConfig::load(&d.root().join("hq.toml")).unwrap();
    let coordinator = start_coordinator(&d);
    let nodes: Vec<Child> = d.nodes.iter().map(|n| start_node(&d, n)).collect();
    until(Duration::from_secs(60), "all nodes to connect", async || connected(&hq).await == NODES).await;
    (d, hq, coordinator, nodes)
}

/// The pooled answer over the data of the nodes in `participants`.
fn pooled_over(d: &Deployment, participants: &[String]) -> fedcrm::pooled::PooledSegments {
    let text: String =
        d.nodes.iter().zip(&d.data).filter(|(n, _)| participants.contains(n)).map(|(_, t)| t.as_str()).collect();
    fedcrm::pooled::segments(&fedcrm::pooled::parse_cdnow(&text), REFERENCE.replace('-', "").parse().unwrap())
}

/// SIGTERM to every process; each must exit with status 0 within the stated time.
fn terminate_all(d: &Deployment, coordinator: &mut Child, nodes: &mut [Child]) {
    let limit = fedcrm_coordinator::SHUTDOWN_TIME;
    signal(coordinator, "-TERM");
    for child in nodes.iter() {
        signal(child, "-TERM");
    }
    assert!(wait_within(coordinator, limit, "the coordinator").unwrap().success());
    for (n, child) in d.nodes.iter().zip(nodes.iter_mut()) {
        assert!(wait_within(child, limit, n).unwrap().success(), "{n}");
    }
}

fn log_text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_reconnect_after_the_coordinator_is_killed_mid_round_and_sigterm_ends_all_cleanly() {
    let (d, hq, mut coordinator, mut nodes) = start_all().await;

    // An analysis starts; once its first round has begun, HQ's machine dies.
    let analysis = tokio::spawn({
        let hq = hq.clone();
        async move {
            let mut client = AnalystClient::connect(&hq).await.unwrap();
            client.segments(REFERENCE, "test: interrupted by a coordinator crash", false).await
        }
    });
    let audit = d.coordinator_audit();
    until(Duration::from_secs(60), "the first round to start", async || {
        fedcrm_audit::log::read_records(&audit)
            .is_ok_and(|r| r.iter().any(|r| matches!(r.event, Event::RoundStarted { .. })))
    })
    .await;
    signal(&coordinator, "-KILL");
    coordinator.wait().unwrap();
    let interrupted = analysis.await.unwrap();
    assert!(interrupted.is_err(), "the analyst must not get a result from a coordinator that died mid-round");

    // HQ restarts it (as systemd would); no node is touched.
    coordinator = start_coordinator(&d);
    until(Duration::from_secs(60), "every node to reconnect by itself", async || connected(&hq).await == NODES).await;
    for (n, child) in d.nodes.iter().zip(nodes.iter_mut()) {
        assert!(child.try_wait().unwrap().is_none(), "{n} exited instead of reconnecting");
        let text = log_text(&d.node_dir(n).join("stderr.log"));
        assert!(text.contains("reconnecting in"), "{n} did not say it reconnects:\n{text}");
        assert!(!text.contains("\u{1b}["), "{n}'s redirected log holds ANSI colour codes");
    }

    // The next analysis equals the pooled answer over its contributors' data.
    let mut client = AnalystClient::connect(&hq).await.unwrap();
    let reply = client.segments(REFERENCE, "test: after the restart", false).await.expect("analysis after the restart");
    let view = SegmentsView::new(&reply, REFERENCE);
    assert_eq!(view.participants.len(), NODES, "every node contributes: {:?}", view.dropped);
    let p = pooled_over(&d, &view.participants);
    assert_eq!(view.customers, Some(p.customers));
    assert_eq!(view.recency_cuts, p.recency, "recency cut points");
    assert_eq!(view.frequency_cuts, p.frequency, "frequency cut points");
    assert_eq!(view.monetary_cuts_cents, p.monetary, "monetary cut points");
    let counts: Vec<u64> = view.segments.iter().map(|s| s.customers.expect("no cell withheld")).collect();
    assert_eq!(counts, p.counts.to_vec());

    // SIGTERM ends every process within the stated time, with exit status 0.
    terminate_all(&d, &mut coordinator, &mut nodes);
    for n in &d.nodes {
        let text = log_text(&d.node_dir(n).join("stderr.log"));
        assert!(text.contains("node stopped after SIGTERM; audit log sealed"), "{n}:\n{text}");
    }
    let text = log_text(&d.root().join("coordinator/stderr.log"));
    assert!(text.contains("coordinator stopped; audit log sealed"), "{text}");
    assert!(!text.contains("Some("), "addresses print as addresses:\n{text}");

    // Every log ends sealed, and all of them verify together (chains, seals,
    // cross-party receipts) — the coordinator's across its crash.
    let mut logs = vec![d.coordinator_audit()];
    logs.extend(d.nodes.iter().map(|n| d.node_dir(n).join("audit")));
    for l in &logs {
        let records = fedcrm_audit::log::read_records(l).unwrap();
        let last = records.last().expect("records");
        assert!(matches!(last.event, Event::Seal { .. }), "{} ends with {:?}, not a seal", l.display(), last.event);
    }
    let ca = std::fs::read_to_string(d.root().join("ca/ca.pem")).unwrap();
    let ca = fedcrm_pki::pem_to_der_certs(&ca).unwrap().remove(0);
    let verified = fedcrm_audit::verify::verify_paths(&logs, &ca).expect("the logs verify");
    assert_eq!(verified.logs.len(), NODES + 1);
    assert!(verified.receipts_checked > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_analysis_and_restarted_gets_a_result_or_one_short_line_per_refusal() {
    let (d, hq, mut coordinator, mut nodes) = start_all().await;

    // A franchisee's server dies once the node has sent its masked input.
    let victim = NODES - 1;
    let analysis = tokio::spawn({
        let hq = hq.clone();
        async move {
            let mut client = AnalystClient::connect(&hq).await.unwrap();
            client.segments(REFERENCE, "test: a node dies mid-analysis", false).await
        }
    });
    let victim_audit = d.node_dir(&d.nodes[victim]).join("audit");
    until(Duration::from_secs(60), "the victim to send its masked input", async || {
        fedcrm_audit::log::read_records(&victim_audit).is_ok_and(|r| {
            r.iter().any(|r| matches!(&r.event, Event::Egress { message, .. } if message == "masked-chunk"))
        })
    })
    .await;
    signal(&nodes[victim], "-KILL");
    nodes[victim].wait().unwrap();
    let _ = analysis.await.unwrap();

    // Restarted; the next analysis runs, or every refusal is one short line.
    nodes[victim] = start_node(&d, &d.nodes[victim]);
    until(Duration::from_secs(60), "the restarted node to connect", async || connected(&hq).await == NODES).await;
    let mut client = AnalystClient::connect(&hq).await.unwrap();
    match client.segments(REFERENCE, "test: after the node's restart", false).await {
        Ok(reply) => {
            let view = SegmentsView::new(&reply, REFERENCE);
            let p = pooled_over(&d, &view.participants);

            assert_eq!(view.customers, Some(p.customers));
            for d in &view.dropped {
                assert!(d.chars().count() <= 240, "one short line per node: {d}");
            }
        }
        Err(status) => {
            let lines: Vec<&str> = status.message().lines().collect();
            assert!(lines.len() > 1, "one line per refusing node: {}", status.message());
            for l in &lines[1..] {
                assert!(l.chars().count() <= 240, "one short line per node, not {} characters: {l}", l.len());
            }
        }
    }
    terminate_all(&d, &mut coordinator, &mut nodes);
}

#[test]
fn demo_keep_leaves_a_deployment_whose_logs_verify_with_the_printed_command() {
    let dir = tempfile::tempdir().unwrap();
    let kept = dir.path().join("demo");
    let out = Command::new(env!("CARGO_BIN_EXE_fedcrm"))
        .args(["demo", "--nodes", "5", "--keep", kept.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    for f in ["pki/ca.pem", "coordinator.toml", "hq.toml", "coordinator-audit"] {
        assert!(kept.join(f).exists(), "{f} is kept");
    }
    let nodes: Vec<PathBuf> = std::fs::read_dir(kept.join("nodes")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(nodes.len(), 5);
    // The churn model was trained, published and applied on one node: its ranked
    // win-back list is there, readable by the node's user only.
    assert!(text.contains("fedcrm hq publish churn-v1: signed by"), "{text}");
    let lists: Vec<PathBuf> = nodes.iter().map(|n| n.join("win-back.csv")).filter(|p| p.exists()).collect();
    assert_eq!(lists.len(), 1, "one node scored its customers");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&lists[0]).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let rows = std::fs::read_to_string(&lists[0]).unwrap();
    assert!(rows.starts_with("rank,customer_key,churn_probability") && rows.lines().count() > 100, "{rows:.300}");
    for n in &nodes {
        for f in ["node.toml", "purchases.txt", "audit"] {
            assert!(n.join(f).exists(), "{} holds {f}", n.display());
        }
    }
    // The printed `audit verify` command, with its glob expanded as a shell would.
    let line = text.lines().find(|l| l.trim_start().starts_with("fedcrm audit verify")).expect("printed command");
    let mut args: Vec<String> = vec![];
    for word in line.split_whitespace().skip(1) {
        match word.strip_suffix("/nodes/*/audit") {
            Some(root) => args.extend(
                nodes.iter().map(|n| format!("{root}/nodes/{}/audit", n.file_name().unwrap().to_str().unwrap())),
            ),
            None => args.push(word.to_string()),
        }
    }
    let verify = Command::new(env!("CARGO_BIN_EXE_fedcrm")).args(&args).output().unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
    // A kept directory is never reused.
    let again = Command::new(env!("CARGO_BIN_EXE_fedcrm"))
        .args(["demo", "--quiet", "--keep", kept.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("must not exist yet"));
}
