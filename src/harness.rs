//! A whole fedcrm deployment on loopback — brand CA, coordinator, analyst, nodes —
//! with real mutual TLS, real certificates issued from CSRs, and real files. The
//! demo runs on it, and so do the end-to-end tests. This is where `node` and
//! `coordinator` meet; neither library depends on the other. The nodes run as tasks in
//! this process; the coordinator too, or as the real binary in a child process
//! ([`process`], for the scale run's memory figure).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use fedcrm_coordinator::Coordinator;
use fedcrm_coordinator::config::{
    CoordinatorConfig, Enrolled, ReleaseRules, RoundSettings, SecaggSettings, SessionSettings,
};
#[cfg(feature = "test-util")]
use fedcrm_coordinator::round::Hooks;
use fedcrm_node::config::{CoordinatorEndpoint, NodeConfig};
use fedcrm_node::data::{DataConfig, Format};
use fedcrm_node::policy::Policy;
use fedcrm_node::session::{self, NodeContext, SessionEnd, SessionError};
use fedcrm_pki::{self as pki, CaMaterial, Identity, OrgKind, PrivateKeyPem, Role, Validity};
use fedcrm_protocol::config::TlsFiles;
use fedcrm_protocol::pb;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::hq::{AnalystClient, HqConfig, PublisherFiles};

pub mod process;
use process::CoordinatorProcess;

/// Name in the coordinator's certificate.
pub const COORDINATOR_NAME: &str = "coordinator.fedcrm.test";
/// The model publisher every test deployment issues (issue 11).
pub const PUBLISHER_NAME: &str = "models.fedcrm.test";

/// A brand CA living in a directory.
#[derive(Debug)]
pub struct BrandPki {
    pub dir: PathBuf,
    pub ca: CaMaterial,
}

/// Certificate and key files of one party.
#[derive(Debug, Clone)]
pub struct IdentityFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl BrandPki {
    /// A fresh CA under `dir`, written as `ca.pem` / `ca.key` (0600).
    pub fn create(dir: &Path, brand: &str) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let ca = pki::ca_init(brand, 3650)?;
        std::fs::write(dir.join("ca.pem"), &ca.cert_pem)?;
        pki::write_private_file(&dir.join("ca.key"), ca.key.as_str().as_bytes())?;
        Ok(Self { dir: dir.into(), ca })
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The real enrolment path: the party makes its key and CSR, the CA signs the
    /// CSR; files land in `dir/<name>.pem` and `dir/<name>.key`.
    pub fn issue(&self, id: &Identity, validity: Validity) -> Result<IdentityFiles> {
        let (key, csr) = pki::new_key_and_csr(id)?;
        let (cert, _) = pki::sign_csr(&self.ca, &csr, validity)?;
        let files = IdentityFiles {
            cert: self.dir.join(format!("{}.pem", id.name)),
            key: self.dir.join(format!("{}.key", id.name)),
        };
        std::fs::write(&files.cert, cert)?;
        pki::write_private_file(&files.key, key.as_str().as_bytes())?;
        Ok(files)
    }
}

/// One node of a test cluster.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub name: String,
    pub organisation: String,
    pub kind: OrgKind,
    /// Purchase text in `format` (CDNOW unless said otherwise).
    pub data: String,
    /// Issue 11: the data's format (the synthetic jewellery data is CSV).
    pub format: Format,
    pub policy: Policy,
    /// Customer keys on this node's consent-withdrawal list.
    pub withdrawn: Vec<String>,
    /// Issue 14: a database source instead of `data` (its `[data]` section).
    pub database: Option<DataConfig>,
    /// The demo's dropout: the harness ends this node's task (as if its process were
    /// killed) the first time the node wakes after its share report of the first
    /// round is in its audit log — its shares went out, its masked input never does.
    /// Nothing in the node takes part: the coordinator sees the connection end.
    pub leaves_after_shares: bool,
    /// Tests: faults this node injects (feature `test-util` only).
    #[cfg(feature = "test-util")]
    pub faults: fedcrm_node::session::Faults,
    /// Attack tests: this node colludes with HQ (feature `test-util` only).
    #[cfg(feature = "test-util")]
    pub round_tap: Option<fedcrm_node::session::RoundTap>,
}

impl NodeSpec {
    pub fn franchisee(name: &str, data: String) -> Self {
        Self {
            name: name.into(),
            organisation: format!("{name} franchise ltd"),
            kind: OrgKind::Franchisee,
            data,
            format: Format::Cdnow,
            // Test and demo nodes also take part in exact rounds (`--dp off`); a
            // franchisee's default is `required`.
            policy: Policy { privacy: fedcrm_node::privacy::Privacy::optional(), ..Policy::default() },
            withdrawn: vec![],
            database: None,
            leaves_after_shares: false,
            #[cfg(feature = "test-util")]
            faults: Default::default(),
            #[cfg(feature = "test-util")]
            round_tap: None,
        }
    }

    /// An HQ-owned channel (organisation "Demo Jewellery HQ").
    pub fn hq(name: &str, data: String) -> Self {
        Self { organisation: "Demo Jewellery HQ".into(), kind: OrgKind::Hq, ..Self::franchisee(name, data) }
    }
}

#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub nodes: Vec<NodeSpec>,
    pub release: ReleaseRules,
    pub phase_timeout_seconds: u64,
    /// `[rounds] retry_wait_seconds`: how long an analysis waits for a node of its
    /// population to come back.
    pub retry_wait_seconds: u64,
    pub chunk_elements: u32,
    /// `[rounds] max_customers_per_node`: the per-node bound that picks the word width.
    pub max_customers_per_node: u64,
    /// Further enrolled (name, organisation) pairs with no running node.
    pub extra_enrolled: Vec<(String, String)>,
    /// Record the bytes of every message each node's transport takes (tests).
    #[cfg(feature = "test-util")]
    pub capture_wire: bool,
    /// Work in this directory (which must not exist yet) instead of a temporary one.
    /// It is still deleted when the cluster's `dir` is dropped, unless the caller
    /// calls `TempDir::keep` on it (`fedcrm demo --keep`).
    pub root: Option<PathBuf>,
    /// The coordinator's HTTP/2 keepalive (`[sessions] keepalive_seconds`).
    pub keepalive_seconds: u64,
    /// `[secagg]`: full SecAgg or SecAgg+, and SecAgg+'s threat parameters.
    pub secagg: SecaggSettings,
    /// `[rounds] noise_variance`: σ² per node as `[num, den]` in analyses run with
    /// differential privacy; `None`: the default.
    pub noise_variance: Option<[u64; 2]>,
    /// Tests: the clock the coordinator and every node read budget months from (a
    /// fixed date, so no outcome depends on the real calendar).
    #[cfg(feature = "test-util")]
    pub clock: Option<Arc<dyn fedcrm_audit::log::Clock>>,
}

/// Per node, the encoded messages its transport took, in order (tests).
#[cfg(feature = "test-util")]
pub type Captures = Arc<std::sync::Mutex<std::collections::BTreeMap<String, Vec<Vec<u8>>>>>;

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            nodes: vec![],
            release: ReleaseRules::default(),
            phase_timeout_seconds: 20,
            retry_wait_seconds: 10,
            chunk_elements: fedcrm_protocol::DEFAULT_CHUNK_ELEMENTS,
            max_customers_per_node: RoundSettings::default().max_customers_per_node,
            extra_enrolled: vec![],
            #[cfg(feature = "test-util")]
            capture_wire: false,
            root: None,
            keepalive_seconds: SessionSettings::default().keepalive_seconds,
            secagg: SecaggSettings::default(),
            noise_variance: None,
            #[cfg(feature = "test-util")]
            clock: None,
        }
    }
}

/// A running cluster. Dropping it stops everything.
///
/// The coordinator runs in this process (`C` = `Arc<Coordinator>`, [`Cluster::start`]:
/// tests reach into its state) or is the real binary in a child process
/// (`C` = [`CoordinatorProcess`], [`Cluster::start_process`]: its memory is its own).
/// The nodes always run in this process, as tasks, with their test hooks.
#[derive(Debug)]
pub struct Cluster<C = Arc<Coordinator>> {
    pub dir: tempfile::TempDir,
    pub pki: BrandPki,
    pub coordinator: C,
    pub addr: SocketAddr,
    pub analyst: HqConfig,
    pub node_configs: Vec<NodeConfig>,
    pub nodes: Vec<(String, JoinHandle<Result<SessionEnd, SessionError>>)>,
    /// Filled when `ClusterOptions::capture_wire` is set.
    #[cfg(feature = "test-util")]
    pub captures: Captures,
    /// Tests: the clock nodes read budget months from ([`ClusterOptions::clock`]).
    #[cfg(feature = "test-util")]
    pub clock: Option<Arc<dyn fedcrm_audit::log::Clock>>,
    shutdown: watch::Sender<bool>,
    /// The in-process coordinator's server task.
    server: Option<JoinHandle<()>>,
}

/// The files a cluster starts from: its working directory, the brand CA, the
/// coordinator's configuration (listening on the given address) and the analyst's.
struct Layout {
    dir: tempfile::TempDir,
    pki: BrandPki,
    config: CoordinatorConfig,
    analyst: HqConfig,
}

impl Layout {
    fn create(opts: &ClusterOptions, addr: SocketAddr) -> Result<Self> {
        let dir = match &opts.root {
            None => tempfile::tempdir()?,
            Some(root) => {
                let parent = root.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
                let name = root.file_name().with_context(|| format!("{} names no directory", root.display()))?;
                std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
                // Exactly `root`, created here: an existing directory is refused, never reused.
                tempfile::Builder::new()
                    .prefix(name)
                    .rand_bytes(0)
                    .tempdir_in(parent)
                    .with_context(|| format!("creating {} (it must not exist yet)", root.display()))?
            }
        };
        let pki = BrandPki::create(&dir.path().join("pki"), "Demo Jewellery")?;
        let coord = pki.issue(
            &Identity {
                name: COORDINATOR_NAME.into(),
                organisation: "Demo Jewellery HQ".into(),
                role: Role::Coordinator,
            },
            Validity::days_from_now(30),
        )?;
        let analyst_files = pki.issue(
            &Identity { name: "analyst.hq".into(), organisation: "Demo Jewellery HQ".into(), role: Role::Analyst },
            Validity::days_from_now(30),
        )?;
        let config = CoordinatorConfig {
            name: COORDINATOR_NAME.into(),
            listen: addr.to_string(),
            tls: TlsFiles { ca: pki.ca_path(), cert: coord.cert.clone(), key: coord.key.clone(), crl: None },
            enrolled: opts
                .nodes
                .iter()
                .map(|n| Enrolled { name: n.name.clone(), organisation: n.organisation.clone() })
                .chain(opts.extra_enrolled.iter().map(|(n, o)| Enrolled { name: n.clone(), organisation: o.clone() }))
                .collect(),
            release: opts.release,
            rounds: RoundSettings {
                phase_timeout_seconds: opts.phase_timeout_seconds,
                chunk_elements: opts.chunk_elements,
                max_customers_per_node: opts.max_customers_per_node,
                noise_variance: opts.noise_variance,
                retry_wait_seconds: opts.retry_wait_seconds,
            },
            sessions: SessionSettings { keepalive_seconds: opts.keepalive_seconds },
            secagg: opts.secagg,
            audit_dir: dir.path().join("coordinator-audit"),
            models_dir: dir.path().join("coordinator-models"),
            audit: Default::default(),
        };
        // Issue 11: HQ's model publisher, whose name the nodes' [scoring] publisher names.
        let publisher_files = pki.issue(
            &Identity { name: PUBLISHER_NAME.into(), organisation: "Demo Jewellery HQ".into(), role: Role::Publisher },
            Validity::days_from_now(30),
        )?;
        let analyst = HqConfig {
            url: format!("https://{addr}"),
            server_name: COORDINATOR_NAME.into(),
            tls: TlsFiles { ca: pki.ca_path(), cert: analyst_files.cert, key: analyst_files.key, crl: None },
            publisher: Some(PublisherFiles { key: publisher_files.key, cert: publisher_files.cert }),
        };
        Ok(Self { dir, pki, config, analyst })
    }
}

impl Cluster {
    /// Create PKI, start the coordinator and every node, and wait until all are connected.
    pub async fn start(opts: ClusterOptions) -> Result<Self> {
        #[cfg(feature = "test-util")]
        if opts.clock.is_some() {
            return Self::start_with_hooks(opts, Hooks::default()).await;
        }
        Self::launch(opts, Coordinator::open).await
    }

    /// [`Cluster::start`] with a coordinator deviating from the protocol through `hooks`.
    #[cfg(feature = "test-util")]
    pub async fn start_with_hooks(opts: ClusterOptions, hooks: Hooks) -> Result<Self> {
        let hooks = Hooks { clock: hooks.clock.or_else(|| opts.clock.clone()), ..hooks };
        Self::launch(opts, move |config| Coordinator::open_with_hooks(config, hooks)).await
    }

    async fn launch(
        opts: ClusterOptions,
        open: impl FnOnce(CoordinatorConfig) -> Result<Arc<Coordinator>, fedcrm_coordinator::ServeError>,
    ) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let Layout { dir, pki, config, analyst } = Layout::create(&opts, addr)?;
        let coordinator = open(config)?;
        let (shutdown, mut srx) = watch::channel(false);
        let c2 = coordinator.clone();
        let server = tokio::spawn(async move {
            let stop = async move {
                let _ = srx.changed().await;
            };
            if let Err(e) = fedcrm_coordinator::run(c2, listener, stop).await {
                tracing::error!(error = %e, "coordinator stopped");
            }
        });
        let mut cluster = Cluster::assemble(dir, pki, coordinator, addr, analyst, shutdown, Some(server));
        #[cfg(feature = "test-util")]
        {
            cluster.clock = opts.clock.clone();
        }
        let ready = cluster.prepare_nodes(&opts)?;
        // The coordinator's front door refuses more than MAX_HANDSHAKES_PER_IP open
        // handshakes from one address (all of ours are 127.0.0.1): start the nodes in
        // windows below it.
        let window = fedcrm_coordinator::tls::MAX_HANDSHAKES_PER_IP - 1;
        for (k, (spec, ctx)) in opts.nodes.iter().zip(ready).enumerate() {
            if k >= window {
                cluster.wait_connected(k + 1 - window).await?;
            }
            cluster.spawn_node(spec, ctx);
        }
        cluster.wait_connected(opts.nodes.len()).await?;
        Ok(cluster)
    }

    /// Start a node again from its configuration (same audit log, no faults), e.g.
    /// after it dropped out; waits until it is connected.
    pub async fn restart_node(&mut self, name: &str) -> Result<()> {
        let cfg = self.node_configs.iter().find(|c| c.name == name).context("no such node")?.clone();
        // One process (here: one task) per audit log: the old session ends first.
        if let Some(i) = self.nodes.iter().position(|(n, _)| n == name) {
            let (_, old) = self.nodes.remove(i);
            old.abort();
            let _ = old.await;
        }
        let ctx = self.node_context(&cfg)?;
        #[cfg(feature = "test-util")]
        let ctx = self.with_clock(ctx);
        let rx = self.shutdown_signal();
        let session = |c: &Coordinator| c.registry.connected().into_iter().find(|p| p.name == name).map(|p| p.session);
        let before = session(&self.coordinator);
        self.nodes.retain(|(n, _)| n != name);
        self.nodes.push((name.to_string(), tokio::spawn(async move { session::run_session(&ctx, rx).await })));
        for _ in 0..200 {
            let now = session(&self.coordinator);
            if now.is_some() && now != before {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("node {name} did not reconnect within 10 s")
    }

    pub async fn wait_connected(&self, n: usize) -> Result<()> {
        for _ in 0..200 {
            if self.coordinator.registry.connected().len() >= n {
                return Ok(());
            }
            if let Some((name, _)) = self.nodes.iter().find(|(_, h)| h.is_finished()) {
                bail!("node {name} stopped before connecting");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("only {} of {n} nodes connected within 10 s", self.coordinator.registry.connected().len())
    }

    /// Write every party's configuration as the TOML file it would run from:
    /// `coordinator.toml`, `hq.toml` and `nodes/<name>/node.toml`. Returns the paths.
    pub fn write_configs(&self) -> Result<Vec<PathBuf>> {
        let root = self.dir.path();
        let mut written = vec![];
        let mut put = |path: PathBuf, text: String| -> Result<()> {
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            written.push(path);
            Ok(())
        };
        put(root.join("coordinator.toml"), toml::to_string_pretty(&self.coordinator.config)?)?;
        put(root.join("hq.toml"), toml::to_string_pretty(&self.analyst)?)?;
        for c in &self.node_configs {
            put(root.join("nodes").join(&c.name).join("node.toml"), toml::to_string_pretty(c)?)?;
        }
        Ok(written)
    }

    /// Stop every party; returns the working directory (PKI, data, audit logs) so a
    /// caller can still read it — it is deleted when dropped.
    pub async fn stop(mut self) -> tempfile::TempDir {
        let _ = self.shutdown.send(true);
        // All parties stop together; one that does not within 5 s is aborted.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        self.stop_nodes(deadline).await;
        if let Some(mut server) = self.server.take()
            && tokio::time::timeout_at(deadline, &mut server).await.is_err()
        {
            server.abort();
        }
        self.dir
    }
}

/// How long starting a cluster with a coordinator process waits for the next node to
/// connect (or the coordinator to answer) before it gives up.
pub const PROCESS_STALL_LIMIT: Duration = Duration::from_secs(30);

impl Cluster<CoordinatorProcess> {
    /// [`Cluster::start`] with the coordinator as a separate OS process: `binary` (the
    /// `fedcrm` executable; `env!("CARGO_BIN_EXE_fedcrm")` in an integration test) runs
    /// `coordinator run --config <dir>/coordinator.toml`, its standard error in
    /// `<dir>/coordinator.log`. The nodes run in this process; all are prepared
    /// (certificates, data, audit logs) first, then started with at most
    /// `MAX_HANDSHAKES_PER_IP - 1` of them not yet connected: they all dial from
    /// 127.0.0.1, and the coordinator closes at once a connection from an address
    /// with that many handshakes in progress (one slot stays free for the analyst).
    /// Coordinator hooks (`Cluster::start_with_hooks`) have no process form; the
    /// nodes' options (faults, taps, `capture_wire`) work as in [`Cluster::start`].
    pub async fn start_process(opts: ClusterOptions, binary: &Path) -> Result<Self> {
        let addr = SocketAddr::from(([127, 0, 0, 1], process::free_port()?));
        let Layout { dir, pki, config, analyst } = Layout::create(&opts, addr)?;
        let path = dir.path().join("coordinator.toml");
        std::fs::write(&path, toml::to_string_pretty(&config)?)
            .with_context(|| format!("writing {}", path.display()))?;
        let log = dir.path().join("coordinator.log");
        let coordinator = CoordinatorProcess::start(binary, &path, &log, analyst.clone(), PROCESS_STALL_LIMIT).await?;
        let shutdown = watch::Sender::new(false);
        let mut cluster = Cluster::assemble(dir, pki, coordinator, addr, analyst, shutdown, None);
        let ready = cluster.prepare_nodes(&opts)?;
        let window = fedcrm_coordinator::tls::MAX_HANDSHAKES_PER_IP - 1;
        let mut connected = 0;
        for (spec, ctx) in opts.nodes.iter().zip(ready) {
            if cluster.nodes.len() >= connected + window {
                connected = cluster.connected_at_least(cluster.nodes.len() + 1 - window).await?;
            }
            cluster.spawn_node(spec, ctx);
        }
        cluster.wait_connected(opts.nodes.len()).await?;
        Ok(cluster)
    }

    /// Wait until `n` nodes are connected; fails when a node's task or the coordinator
    /// ends first, or no node connects for [`PROCESS_STALL_LIMIT`].
    pub async fn wait_connected(&mut self, n: usize) -> Result<()> {
        let mut connected = 0;
        while connected < n {
            connected = self.connected_at_least(connected + 1).await?;
        }
        Ok(())
    }

    /// Wait until at least `n` nodes are connected; how many are.
    async fn connected_at_least(&mut self, n: usize) -> Result<usize> {
        let deadline = tokio::time::Instant::now() + PROCESS_STALL_LIMIT;
        loop {
            let connected = self.coordinator.connected().await.unwrap_or(0);
            if connected >= n {
                return Ok(connected);
            }
            if let Some((name, _)) = self.nodes.iter().find(|(_, h)| h.is_finished()) {
                bail!("node {name} stopped before connecting");
            }
            if let Some(status) = self.coordinator.exited()? {
                bail!("the coordinator exited ({status}); its log is {}", self.coordinator.log.display());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("only {connected} of {n} nodes connected, none for {} s", PROCESS_STALL_LIMIT.as_secs());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stop every node, then the coordinator (SIGTERM; it must exit with status 0
    /// within [`fedcrm_coordinator::SHUTDOWN_TIME`]); returns the working directory.
    pub async fn stop(mut self) -> Result<tempfile::TempDir> {
        let _ = self.shutdown.send(true);
        self.stop_nodes(tokio::time::Instant::now() + Duration::from_secs(5)).await;
        match self.coordinator.terminate()? {
            Some(status) if !status.success() => {
                bail!("the coordinator exited with {status}; its log is {}", self.coordinator.log.display())
            }
            _ => Ok(self.dir),
        }
    }
}

impl<C> Cluster<C> {
    fn assemble(
        dir: tempfile::TempDir,
        pki: BrandPki,
        coordinator: C,
        addr: SocketAddr,
        analyst: HqConfig,
        shutdown: watch::Sender<bool>,
        server: Option<JoinHandle<()>>,
    ) -> Self {
        Cluster {
            dir,
            pki,
            coordinator,
            addr,
            analyst,
            node_configs: vec![],
            nodes: vec![],
            #[cfg(feature = "test-util")]
            captures: Captures::default(),
            #[cfg(feature = "test-util")]
            clock: None,
            shutdown,
            server,
        }
    }

    /// Write every node's certificate, data and config (kept in `node_configs`); their
    /// contexts, with the test hooks they ask for.
    ///
    /// Issue 12: a node whose `[policy.psi] respond_to` is empty answers every other
    /// node of the deployment in a PSI pair (pinned by organisation and certificate
    /// fingerprint, as a franchisee would pin its peers out of band).
    fn prepare_nodes(&mut self, opts: &ClusterOptions) -> Result<Vec<NodeContext>> {
        let mut cfgs = opts.nodes.iter().map(|spec| self.node_config(spec)).collect::<Result<Vec<_>>>()?;
        let pins = cfgs
            .iter()
            .zip(&opts.nodes)
            .map(|(cfg, spec)| {
                let pem = std::fs::read_to_string(&cfg.tls.cert)?;
                let der = fedcrm_pki::pem_to_der_certs(&pem)?.remove(0);
                let sha = hex::encode(ring::digest::digest(&ring::digest::SHA256, &der));
                Ok((cfg.name.clone(), spec.organisation.clone(), sha))
            })
            .collect::<Result<Vec<_>>>()?;
        for cfg in cfgs.iter_mut().filter(|c| c.policy.psi.respond_to.is_empty()) {
            cfg.policy.psi.respond_to = pins
                .iter()
                .filter(|(name, ..)| *name != cfg.name)
                .map(|(_, organisation, sha)| fedcrm_node::psi::RespondTo {
                    organisation: organisation.clone(),
                    certificate_sha256: sha.clone(),
                })
                .collect();
        }
        opts.nodes.iter().zip(cfgs).map(|(spec, cfg)| self.prepare_node(spec, cfg, opts)).collect()
    }

    fn prepare_node(&mut self, spec: &NodeSpec, cfg: NodeConfig, opts: &ClusterOptions) -> Result<NodeContext> {
        let ctx = self.node_context(&cfg)?;
        #[cfg(feature = "test-util")]
        let ctx = self.with_test_hooks(ctx, spec, opts.capture_wire);
        #[cfg(feature = "test-util")]
        let ctx = self.with_clock(ctx);
        #[cfg(not(feature = "test-util"))]
        let _ = (spec, opts);
        self.node_configs.push(cfg);
        Ok(ctx)
    }

    /// Run a node's session as a task until the cluster stops.
    fn spawn_node(&mut self, spec: &NodeSpec, ctx: NodeContext) {
        let (rx, leaves) = (self.shutdown_signal(), spec.leaves_after_shares);
        let task = tokio::spawn(async move {
            let end = if leaves {
                leave_after_shares(&ctx, rx.clone()).await
            } else {
                session::run_session(&ctx, rx.clone()).await
            };
            // A test's lost connection: the node (same process state) reconnects.
            #[cfg(feature = "test-util")]
            let end = {
                let mut end = end;
                while matches!(end, Ok(SessionEnd::Lost)) && !*rx.borrow() {
                    tracing::info!(node = %ctx.name, "connection lost (test fault); reconnecting");
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    end = session::run_session(&ctx, rx.clone()).await;
                }
                end
            };
            if let Err(e) = &end {
                tracing::warn!(node = %ctx.name, error = %e, "node session ended with an error");
            }
            end
        });
        self.nodes.push((spec.name.clone(), task));
    }

    /// Wait for every node's task to end (the shutdown signal was sent); one still
    /// running at `deadline` is aborted.
    async fn stop_nodes(&mut self, deadline: tokio::time::Instant) {
        for (name, mut h) in std::mem::take(&mut self.nodes) {
            if tokio::time::timeout_at(deadline, &mut h).await.is_err() {
                tracing::warn!(node = %name, "node did not stop within 5 s; aborted");
                h.abort();
            }
        }
    }

    /// A node's context reading the cluster's clock, if it has one.
    #[cfg(feature = "test-util")]
    fn with_clock(&self, mut ctx: NodeContext) -> NodeContext {
        if let Some(c) = &self.clock {
            ctx.clock = c.clone();
        }
        ctx
    }

    /// A node's context with the test hooks `spec` asks for, and the wire tap.
    #[cfg(feature = "test-util")]
    fn with_test_hooks(&self, mut ctx: NodeContext, spec: &NodeSpec, capture_wire: bool) -> NodeContext {
        ctx.faults = spec.faults.clone();
        ctx.round_tap = spec.round_tap.clone();
        if capture_wire {
            let (captures, name) = (self.captures.clone(), spec.name.clone());
            ctx.tap = Some(Arc::new(move |bytes: &[u8]| {
                captures
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(name.clone())
                    .or_default()
                    .push(bytes.to_vec());
            }));
        }
        ctx
    }

    /// Issue a certificate for `spec`, write its data and config; returns the config.
    pub fn node_config(&self, spec: &NodeSpec) -> Result<NodeConfig> {
        let files = self.pki.issue(
            &Identity { name: spec.name.clone(), organisation: spec.organisation.clone(), role: Role::Node(spec.kind) },
            Validity::days_from_now(30),
        )?;
        let ndir = self.dir.path().join("nodes").join(&spec.name);
        std::fs::create_dir_all(&ndir)?;
        let data = ndir.join("purchases.txt");
        std::fs::write(&data, &spec.data)?;
        let withdrawals = (!spec.withdrawn.is_empty()).then(|| ndir.join("withdrawn.txt"));
        if let Some(w) = &withdrawals {
            std::fs::write(w, format!("# customers who withdrew consent\n{}\n", spec.withdrawn.join("\n")))?;
        }
        Ok(NodeConfig {
            name: spec.name.clone(),
            coordinator: CoordinatorEndpoint {
                url: format!("https://{}", self.addr),
                server_name: COORDINATOR_NAME.into(),
                retry_seconds: 1,
                retry_max_seconds: 4,
            },
            tls: TlsFiles { ca: self.pki.ca_path(), cert: files.cert, key: files.key, crl: None },
            data: match &spec.database {
                Some(db) => db.clone(),
                None => DataConfig { consent_withdrawals: withdrawals, ..DataConfig::new(spec.format, data) },
            },
            policy: spec.policy.clone(),
            audit_dir: ndir.join("audit"),
            approvals_dir: ndir.join("approvals"),
            audit: Default::default(),
            scoring: Some(fedcrm_node::models::Scoring { publisher: PUBLISHER_NAME.into(), clv: Default::default() }),
            // CDNOW's customer ids are global; the jewellery exports carry phones.
            psi: fedcrm_node::psi::PsiConfig {
                match_on: match spec.format {
                    Format::Cdnow => fedcrm_node::identifiers::MatchOn::CustomerKey,
                    Format::Csv | Format::Postgres => fedcrm_node::identifiers::MatchOn::Phone,
                },
            },
        })
    }

    /// Load a node's data and credentials.
    pub fn node_context(&self, cfg: &NodeConfig) -> Result<NodeContext> {
        // A database source is checked as `node run` checks it (its role, its rows);
        // tests with database nodes run on a multi-threaded runtime.
        let source = match cfg.data.format {
            Format::Postgres => {
                tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(cfg.data.open()))?
            }
            _ => Arc::new(cfg.data.load()?).into(),
        };
        Ok(NodeContext::load(cfg, source)?)
    }

    /// A receiver that fires when the cluster shuts down.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Run the segment analysis as the HQ analyst, over mTLS, exact (`--dp off`: the
    /// harness's nodes are `dp = "optional"` unless a test says otherwise).
    pub async fn segments(&self, reference: &str, purpose: &str) -> Result<pb::SegmentsReply, tonic::Status> {
        self.segments_with(reference, purpose, false).await
    }

    /// [`Cluster::segments`] with differential privacy on (`dp`) or off.
    pub async fn segments_with(
        &self,
        reference: &str,
        purpose: &str,
        dp: bool,
    ) -> Result<pb::SegmentsReply, tonic::Status> {
        let mut client =
            AnalystClient::connect(&self.analyst).await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        client.segments(reference, purpose, dp).await
    }

    /// Wait for a node's task to end and return how it ended.
    pub async fn node_result(&mut self, name: &str) -> Result<Result<SessionEnd, SessionError>> {
        let i = self.nodes.iter().position(|(n, _)| n == name).context("no such node")?;
        let (_, h) = self.nodes.remove(i);
        Ok(h.await?)
    }
}

/// Serve a node's session until the node wakes after its share report of the first
/// round is in its audit log; then end its task there, before it reads the next
/// message (the final U2), as if its process were killed ([`NodeSpec::leaves_after_shares`]).
async fn leave_after_shares(ctx: &NodeContext, shutdown: watch::Receiver<bool>) -> Result<SessionEnd, SessionError> {
    let mut session = std::pin::pin!(session::run_session(ctx, shutdown));
    let (mut seen, mut reported) = (0, false);
    std::future::poll_fn(|cx| {
        if reported {
            return std::task::Poll::Ready(Ok(SessionEnd::Dropped));
        }
        let polled = session.as_mut().poll(cx);
        // The log is read again only when it grew (the node appends between polls).
        let (seq, _) = fedcrm_audit::log::lock(&ctx.audit).head();
        if seq != seen {
            seen = seq;
            let dir = fedcrm_audit::log::lock(&ctx.audit).dir().to_path_buf();
            reported = fedcrm_audit::log::read_records(&dir).is_ok_and(|records| {
                records.iter().any(
                    |r| matches!(&r.event, fedcrm_audit::Event::Egress { message, .. } if message == "share-report"),
                )
            });
        }
        polled
    })
    .await
}

/// CDNOW text's purchase lines (four columns, a numeric date), header and blanks left out.
fn cdnow_rows(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| {
            l.split_whitespace().count() == 4
                && l.split_whitespace().nth(1).is_some_and(|d| d.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect()
}

/// Split CDNOW text by customer into `weights.len()` parts. `interleave`: customer i
/// goes to node i mod n weighted round-robin; otherwise contiguous blocks of customer
/// ids (which differ in acquisition date, so the parts' distributions differ).
pub fn split_cdnow(text: &str, weights: &[u32], interleave: bool) -> Vec<String> {
    let rows = cdnow_rows(text);
    let mut customers: Vec<&str> = rows.iter().filter_map(|l| l.split_whitespace().next()).collect();
    customers.dedup();
    let total: u64 = weights.iter().map(|&w| w as u64).sum();
    let n = customers.len() as u64;
    let owner = |idx: u64| -> usize {
        if interleave {
            let slot = idx % total;
            let mut acc = 0;
            for (i, &w) in weights.iter().enumerate() {
                acc += w as u64;
                if slot < acc {
                    return i;
                }
            }
            weights.len() - 1
        } else {
            let mut acc = 0;
            for (i, &w) in weights.iter().enumerate() {
                acc += w as u64;
                if idx * total < acc * n {
                    return i;
                }
            }
            weights.len() - 1
        }
    };
    let index: std::collections::HashMap<&str, usize> =
        customers.iter().enumerate().map(|(i, c)| (*c, owner(i as u64))).collect();
    let mut out = vec![String::from(" customer_id  date number_of_cds  dollar_value\n"); weights.len()];
    for l in rows {
        // Unwrap safety: rows were filtered to four columns.
        let c = l.split_whitespace().next().unwrap();
        out[index[c]].push_str(l);
        out[index[c]].push('\n');
    }
    out
}

/// CDNOW's customers assigned to `channels` overlapping channels (issue 12), as
/// CDNOW-format texts, one per channel. Each customer has a home channel (customer
/// index modulo `channels`); a customer whose index is a multiple of `every` and who
/// has at least two purchases is a member of the next channel too, and one whose index
/// is a multiple of `every²` with at least three purchases of the channel after that — their purchases dealt round-robin over their channels, so each
/// channel holds at least one of each member's purchases. Deterministic.
pub fn overlap_cdnow(text: &str, channels: usize, every: usize) -> Vec<String> {
    let rows = cdnow_rows(text);
    let mut by: Vec<(&str, Vec<&str>)> = Vec::new();
    for l in rows {
        // Unwrap safety: rows were filtered to four columns.
        let c = l.split_whitespace().next().unwrap();
        match by.last_mut() {
            Some((last, v)) if *last == c => v.push(l),
            _ => by.push((c, vec![l])),
        }
    }
    let mut out = vec![String::from(" customer_id  date number_of_cds  dollar_value\n"); channels];
    for (i, (_, purchases)) in by.iter().enumerate() {
        let home = i % channels;
        let mut member = vec![home];
        if purchases.len() >= 2 && i % every == 0 {
            member.push((home + 1) % channels);
            if purchases.len() >= 3 && i % (every * every) == 0 && channels > 2 {
                member.push((home + 2) % channels);
            }
        }
        for (k, l) in purchases.iter().enumerate() {
            let ch = member[k % member.len()];
            out[ch].push_str(l);
            out[ch].push('\n');
        }
    }
    out
}

/// The CDNOW data shipped in the repository (tests/data/cdnow, see its SOURCE.md).
pub const CDNOW: &str = include_str!("../tests/data/cdnow/CDNOW_master.txt");

/// Write a private key file for tests that build identities by hand.
pub fn write_key(path: &Path, key: &PrivateKeyPem) -> Result<()> {
    Ok(pki::write_private_file(path, key.as_str().as_bytes())?)
}
