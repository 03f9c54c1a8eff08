//! Issue 7, point 4 (second half): one session per node name. A second session with
//! a connected node's certificate is refused while the first answers, and both are
//! told; a first session that stopped answering (a half-open connection after
//! network loss) is closed by the coordinator's HTTP/2 keepalive and replaced, and
//! that is logged.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::{REFERENCE, cdnow_nodes, pooled_over};
use fedcrm::harness::{Cluster, ClusterOptions, NodeSpec};
use fedcrm::hq::SegmentsView;
use fedcrm_audit::Event;
use fedcrm_node::session::{SessionError, run_session};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Every warning logged in this test binary (nodes and coordinator alike).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

fn warnings() -> &'static Captured {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    LOGS.get_or_init(|| {
        let c = Captured::default();
        let _ = tracing_subscriber::fmt()
            .with_writer(c.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .try_init();
        c
    })
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// A 3 s keepalive: a dead connection is closed within 6 s, a duplicate waits 8 s. (Not
/// shorter: every connection of the cluster must answer a PING within it, on a busy
/// machine too.)
fn options(nodes: Vec<NodeSpec>) -> ClusterOptions {
    ClusterOptions { nodes, keepalive_seconds: 3, phase_timeout_seconds: 20, ..Default::default() }
}

fn session_of(cluster: &Cluster, name: &str) -> Option<u64> {
    cluster.coordinator.registry.connected().into_iter().find(|p| p.name == name).map(|p| p.session)
}

fn coordinator_records(cluster: &Cluster) -> Vec<fedcrm_audit::Record> {
    fedcrm_audit::log::read_records(&cluster.coordinator.config.audit_dir).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_session_for_a_connected_node_is_refused_and_both_are_told() {
    let logs = warnings();
    let nodes = cdnow_nodes(&[1; 3], true);
    let cluster = Cluster::start(options(nodes.clone())).await.unwrap();
    let first = session_of(&cluster, "node-0").expect("node-0 connected");

    // The same node.toml started again (its own audit directory: one process per log).
    let mut cfg = cluster.node_configs[0].clone();
    cfg.audit_dir = cluster.dir.path().join("second-node-0-audit");
    let ctx = cluster.node_context(&cfg).unwrap();
    let err = tokio::time::timeout(Duration::from_secs(60), run_session(&ctx, cluster.shutdown_signal()))
        .await
        .expect("the second session is answered")
        .expect_err("the second session is refused");
    assert!(matches!(err, SessionError::Duplicate(_)), "{err:?}");
    assert!(err.is_permanent(), "retrying cannot help: {err}");
    let text = err.to_string();
    assert!(text.contains("node node-0 is already connected from 127.0.0.1:"), "{text}");
    assert!(text.contains("stop the other process"), "{text}");
    assert_eq!(session_of(&cluster, "node-0"), Some(first), "the first session stays");

    // The first session still takes part: the analysis runs over all three nodes.
    let reply = cluster.segments(REFERENCE, "test: after a duplicate session").await.expect("segments");
    let view = SegmentsView::new(&reply, REFERENCE);
    assert_eq!(view.participants, ["node-0", "node-1", "node-2"]);
    let p = pooled_over(&nodes, &view.participants);
    assert_eq!(view.customers, Some(p.customers));
    let counts: Vec<u64> = view.segments.iter().map(|s| s.customers.expect("no cell suppressed")).collect();
    assert_eq!(counts, p.counts.to_vec());

    // The first node was told (it handled the notice before the analysis' rounds).
    let logged = logs.text();
    assert!(
        logged.contains("the coordinator says: a second session for node node-0 from 127.0.0.1:"),
        "node-0 logs the coordinator's notice:\n{logged}"
    );
    let records = coordinator_records(&cluster);
    assert!(
        records.iter().any(|r| matches!(&r.event,
            Event::SessionRefused { peer, reason, .. } if peer == "node-0" && reason.contains("already connected"))),
        "the refusal is in the coordinator's audit log"
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_stopped_answering_is_replaced_and_that_is_logged() {
    warnings();
    let cluster = Cluster::start(ClusterOptions {
        extra_enrolled: vec![("node-3".into(), "node-3 franchise ltd".into())],
        ..options(cdnow_nodes(&[1; 3], true))
    })
    .await
    .unwrap();
    let one_row = " customer_id  date number_of_cds  dollar_value\n 00001 19970101  1   11.77\n";
    let proxy = FreezingProxy::start(cluster.addr).await;
    let mut cfg = cluster.node_config(&NodeSpec::franchisee("node-3", one_row.into())).unwrap();
    cfg.coordinator.url = format!("https://{}", proxy.addr);
    let ctx = cluster.node_context(&cfg).unwrap();
    let shutdown = cluster.shutdown_signal();
    let _old = tokio::spawn(async move { run_session(&ctx, shutdown).await });
    cluster.wait_connected(4).await.unwrap();
    let old = session_of(&cluster, "node-3").expect("node-3 connected through the proxy");

    // The network goes: nothing passes either way, and neither end is told.
    proxy.freeze();
    let mut cfg = cfg.clone();
    cfg.coordinator.url = format!("https://{}", cluster.addr);
    cfg.audit_dir = cluster.dir.path().join("node-3-after-network-loss");
    let ctx = cluster.node_context(&cfg).unwrap();
    let shutdown = cluster.shutdown_signal();
    let new = tokio::spawn(async move { run_session(&ctx, shutdown).await });
    let mut replaced = None;
    // A hang guard only: the keepalive closes the old connection within 6 s.
    for _ in 0..600 {
        if new.is_finished() {
            panic!("the new session ended: {:?}", new.await);
        }
        replaced = session_of(&cluster, "node-3").filter(|s| *s != old);
        if replaced.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(replaced.is_some(), "the new session replaces the one that stopped answering");
    let records = coordinator_records(&cluster);
    let reason = records.iter().find_map(|r| match &r.event {
        Event::SessionClosed { peer, reason } if peer == "node-3" && reason.starts_with("replaced") => Some(reason),
        _ => None,
    });
    let reason = reason.expect("the replacement is in the coordinator's audit log");
    assert!(reason.contains("replaced a session that stopped answering"), "{reason}");
    assert!(!new.is_finished(), "the new session stays");
    cluster.stop().await;
}

/// A TCP proxy that can freeze: from then on it forwards nothing and reads nothing,
/// and keeps both connections open — a half-open connection as a network loss
/// leaves it.
struct FreezingProxy {
    addr: SocketAddr,
    frozen: watch::Sender<bool>,
}

impl FreezingProxy {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (frozen, rx) = watch::channel(false);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else { return };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pipe(cr, sw, rx.clone()));
                tokio::spawn(pipe(sr, cw, rx.clone()));
            }
        });
        Self { addr, frozen }
    }

    fn freeze(&self) {
        self.frozen.send_replace(true);
    }
}

async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut frozen: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            n = from.read(&mut buf) => n,
            _ = frozen.wait_for(|f| *f) => break,
        };
        match n {
            Ok(0) | Err(_) => return,
            Ok(_) if *frozen.borrow() => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
    // Frozen: hold both halves open and move nothing.
    let _held = (from, to);
    std::future::pending::<()>().await;
}
