//! The fedcrm coordinator, run by brand HQ: accepts node sessions over mutual TLS,
//! orchestrates secure-aggregation rounds ([`round`]), runs analyses such as the RFM
//! segments ([`analyses`], one driver per analysis) and releases results only through [`release`].
//!
//! Never depends on `fedcrm-node`; never sees a node's unmasked contribution.

#![forbid(unsafe_code)]

pub mod analyses;
pub mod audit;
pub mod budgets;
pub mod config;
pub mod enrolment;
mod inbound;
pub mod models;
pub mod plan;
pub mod registry;
pub mod release;
pub mod round;
pub mod service;
pub mod tls;

use std::sync::Arc;

use fedcrm_audit::log::{AuditLog, LogIdentity, SystemClock};
use fedcrm_pki::{self as pki, SigningKey};
use fedcrm_protocol::MAX_MESSAGE_BYTES;
use fedcrm_protocol::pb::analyst_server::AnalystServer;
use fedcrm_protocol::pb::coordinator_server::CoordinatorServer;
use tokio::sync::{Mutex, mpsc};

use crate::audit::SharedLog;
use crate::config::{CoordinatorConfig, Enrolled};
use crate::registry::{Registry, SessionEvent};
#[cfg(feature = "test-util")]
use crate::round::Hooks;
use crate::round::Runner;

/// Shared coordinator state.
#[derive(Debug)]
pub struct Coordinator {
    /// The configuration read at start. `enrolled` here is the start-up list; the
    /// current one is [`Coordinator::enrolment`] (reloaded on SIGHUP).
    pub config: CoordinatorConfig,
    /// The nodes enrolled now, and what was seen of their certificates.
    pub enrolment: enrolment::Enrolment,
    /// The TLS front door (certificate, CRL, refusal log).
    pub tls: tls::Acceptor,
    pub registry: Registry,
    pub audit: SharedLog,
    /// The coordinator's certificate (DER), sent in Welcome.
    pub certificate: Vec<u8>,
    /// Signs round rosters.
    signing: SigningKey,
    events: Mutex<mpsc::UnboundedReceiver<SessionEvent>>,
    /// HQ deviating from the protocol, for tests.
    #[cfg(feature = "test-util")]
    hooks: Hooks,
    /// Sums this coordinator unmasked (from its audit log, then every round), to plan
    /// rounds under the nodes' differencing rule.
    history: std::sync::Mutex<Vec<fedcrm_analysis::rules::Unmasked>>,
    /// Set once on SIGINT/SIGTERM: running rounds end unreleased, new ones refuse.
    stopping: tokio::sync::watch::Sender<bool>,
    /// Issue 10: every node's privacy budget as announced and charged since.
    pub budgets: budgets::Budgets,
    /// Issue 11: trained models and their publication.
    pub models: models::Registry,
    /// The clock budget months are read from (tests inject a fixed one through
    /// [`Hooks`]).
    clock: Arc<dyn fedcrm_audit::log::Clock>,
}

/// The audit record of the nodes a coordinator accepts.
fn enrolment_event(list: &[Enrolled]) -> fedcrm_audit::Event {
    fedcrm_audit::Event::Enrolment {
        nodes: list
            .iter()
            .map(|e| fedcrm_audit::Member {
                name: e.name.clone(),
                organisation: e.organisation.clone(),
                kind: String::new(),
            })
            .collect(),
    }
}

/// Unix time in milliseconds.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The sums recorded as `contributed` in an audit log (an unmasked U3 replaces its
/// round's U2). A record that does not parse stops the coordinator.
fn unmasked_from(records: &[fedcrm_audit::Record]) -> Result<Vec<fedcrm_analysis::rules::Unmasked>, ServeError> {
    let mut out: Vec<fedcrm_analysis::rules::Unmasked> = Vec::new();
    for r in records {
        if let Some(sum) = r.contributed_sum() {
            let (sum, replaces) = sum.map_err(ServeError::History)?;
            if replaces {
                out.retain(|h| h.round != sum.round);
            }
            out.push(sum);
        }
    }
    Ok(out)
}

impl Coordinator {
    /// Load the coordinator's certificate and key and open its audit log.
    pub fn open(config: CoordinatorConfig) -> Result<Arc<Self>, ServeError> {
        Self::load(config).map(Arc::new)
    }

    /// [`Coordinator::open`], deviating from the protocol through `hooks` (tests).
    #[cfg(feature = "test-util")]
    pub fn open_with_hooks(config: CoordinatorConfig, hooks: Hooks) -> Result<Arc<Self>, ServeError> {
        let clock = hooks.clock.clone();
        let loaded = Self::load(config)?;
        Ok(Arc::new(Self { clock: clock.unwrap_or(loaded.clock.clone()), hooks, ..loaded }))
    }

    fn load(config: CoordinatorConfig) -> Result<Self, ServeError> {
        let m = config.tls.read()?;
        let certificate = pki::pem_to_der_certs(&m.cert_pem)
            .map_err(|e| ServeError::Tls(e.to_string()))?
            .into_iter()
            .next()
            .ok_or_else(|| ServeError::Tls(format!("{} holds no certificate", config.tls.cert.display())))?;
        let id = pki::identity_from_cert(&certificate).map_err(|e| ServeError::Tls(e.to_string()))?;
        if id.name != config.name {
            return Err(ServeError::Tls(format!(
                "{} is issued to {:?}, but the coordinator is configured as {:?}",
                config.tls.cert.display(),
                id.name,
                config.name
            )));
        }
        let signer = || SigningKey::from_pem(&m.key).map_err(|e| ServeError::Tls(e.to_string()));
        let identity = LogIdentity {
            certificate_der: certificate.clone(),
            role: id.role.as_str().to_string(),
            organisation: id.organisation.clone(),
            software: fedcrm_protocol::SOFTWARE.to_string(),
        };
        let mut log =
            AuditLog::open(&config.audit_dir, &config.name, identity, signer()?, config.audit, Arc::new(SystemClock))?;
        // Old files beyond the retention period go (the deletion is itself logged).
        log.apply_retention()?;
        // Which nodes this coordinator accepts, as configured now.
        log.append(enrolment_event(&config.enrolled))?;
        let (tls, revoked) = tls::Acceptor::new(&config.tls)?;
        if let Some(crl) = &config.tls.crl {
            tracing::info!(crl = %crl.display(), revoked = revoked.len(), "revocation list loaded");
        }
        let history = unmasked_from(&fedcrm_audit::log::read_records(&config.audit_dir)?)?;
        let audit: SharedLog = Arc::new(std::sync::Mutex::new(log));
        let (registry, events) = Registry::new(audit.clone());
        let models = models::Registry::new(&config.models_dir);
        Ok(Self {
            enrolment: enrolment::Enrolment::new(config.enrolled.clone()),
            tls,
            config,
            registry,
            audit,
            certificate,
            signing: signer()?,
            events: Mutex::new(events),
            #[cfg(feature = "test-util")]
            hooks: Hooks::default(),
            history: std::sync::Mutex::new(history),
            stopping: tokio::sync::watch::Sender::new(false),
            budgets: budgets::Budgets::default(),
            models,
            clock: Arc::new(SystemClock),
        })
    }

    /// Now, by the coordinator's clock (ms since the epoch): what budget months are read
    /// from.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Stop: a running round ends without a release at its next step, and no new
    /// analysis starts.
    pub fn stop(&self) {
        self.stopping.send_replace(true);
    }

    pub(crate) fn stopping(&self) -> tokio::sync::watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    /// Replace the enrolled nodes (SIGHUP): the new list is checked (an invalid one
    /// changes nothing), recorded in the audit log, and the session of every
    /// connected node it no longer names ends at once (the node is told why, and
    /// the end is logged). Returns the nodes whose sessions ended.
    pub fn reload_enrolment(&self, new: Vec<Enrolled>) -> Result<Vec<String>, ServeError> {
        enrolment::check(&new).map_err(ServeError::Enrolment)?;
        crate::audit::record(&self.audit, enrolment_event(&new))?;
        self.enrolment.replace(new);
        let mut ended = Vec::new();
        for p in self.registry.connected() {
            if !self.enrolment.contains(&p.name, &p.organisation) {
                self.end_unenrolled(&p.name, &p.organisation);
                ended.push(p.name);
            }
        }
        tracing::info!(enrolled = self.enrolment.list().len(), ended = ?ended, "enrolment reloaded");
        Ok(ended)
    }

    /// End the session of a node that is no longer enrolled, and log it.
    pub(crate) fn end_unenrolled(&self, name: &str, organisation: &str) {
        let why = format!(
            "node {name} of organisation {organisation:?} was removed from [[enrolled]] at this coordinator; ask HQ if this is a mistake"
        );
        self.end_session(name, why, "removed from [[enrolled]]".into());
    }

    /// End a node's session with `why` (the node is told) and record `reason` in the
    /// audit log; false if it was not connected.
    fn end_session(&self, name: &str, why: String, reason: String) -> bool {
        if !self.registry.end(name, tonic::Status::permission_denied(why)) {
            return false;
        }
        tracing::warn!(node = %name, %reason, "session ended");
        let _ =
            crate::audit::record(&self.audit, fedcrm_audit::Event::SessionClosed { peer: name.to_string(), reason });
        true
    }

    /// Re-read the coordinator's certificate, key and revocation list (SIGHUP); on
    /// error the old ones stay. New handshakes are checked against the new list at
    /// once, and the session of a connected node whose certificate it lists ends
    /// (logged). Returns the nodes whose sessions ended.
    pub fn reload_tls(&self, files: &fedcrm_protocol::config::TlsFiles) -> Result<Vec<String>, ServeError> {
        // Welcome, roster signatures and the audit log's seals use the coordinator's
        // own certificate and key too: rotating them takes a restart, not a reload.
        let pem = files.read()?.cert_pem;
        let der = pki::pem_to_der_certs(&pem).map_err(|e| ServeError::Tls(e.to_string()))?;
        if der.first() != Some(&self.certificate) {
            return Err(ServeError::Tls(format!(
                "{} is not the certificate this coordinator started with; restart the coordinator to rotate its \
                 own certificate (a reload changes only [[enrolled]] and the CRL)",
                files.cert.display()
            )));
        }
        let revoked = self.tls.reload(files)?;
        tracing::info!(revoked = revoked.len(), "tls configuration reloaded");
        let mut ended = Vec::new();
        for p in self.registry.connected() {
            let serial = pki::serial_hex(&p.certificate).unwrap_or_default();
            if revoked.contains(&serial) {
                let why = format!(
                    "the certificate of node {} (serial {serial}) is revoked; ask HQ for a new certificate",
                    p.name
                );
                if self.end_session(&p.name, why, format!("certificate revoked (serial {serial})")) {
                    ended.push(p.name);
                }
            }
        }
        Ok(ended)
    }

    /// SIGHUP: re-read the config file at `path` and apply its `[[enrolled]]` list
    /// ([`Coordinator::reload_enrolment`]) and its certificate files and CRL
    /// ([`Coordinator::reload_tls`]). A config that does not load or check is
    /// logged, and everything stays as it was; other settings need a restart.
    pub fn reload_from(&self, path: &std::path::Path) {
        tracing::info!(config = %path.display(), "SIGHUP: reloading enrolment and certificates");
        let new = match CoordinatorConfig::load(path) {
            Ok(new) => new,
            Err(e) => {
                tracing::error!(error = %e, "reload refused: the config does not load; enrolment and certificates unchanged");
                return;
            }
        };
        if let Err(e) = self.reload_tls(&new.tls) {
            tracing::error!(error = %e, "reload refused: certificates and enrolment unchanged; fix the [tls] files and send SIGHUP again");
            return;
        }
        if let Err(e) = self.reload_enrolment(new.enrolled) {
            tracing::error!(error = %e, "reload refused: enrolment unchanged; fix [[enrolled]] and send SIGHUP again");
        }
    }

    /// Sign a round roster.
    pub(crate) fn sign(&self, payload: &[u8]) -> Result<Vec<u8>, pki::PkiError> {
        self.signing.sign(payload)
    }

    /// The hooks this coordinator runs with.
    #[cfg(feature = "test-util")]
    pub(crate) fn hooks(&self) -> &Hooks {
        &self.hooks
    }

    /// Remember a sum the nodes' inputs may be in (its audit record is already
    /// written); an unmasked U3 replaces the round's earlier U2.
    pub(crate) fn remember(&self, u: fedcrm_analysis::rules::Unmasked, unmasked: bool) {
        let mut history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        if unmasked {
            history.retain(|h| h.round != u.round);
        }
        history.push(u);
    }

    /// Plan a round of an analysis covering `coverage` over the connected nodes
    /// (or, in tests with the `force_threshold` hook, all of them with that threshold).
    pub(crate) fn plan(
        &self,
        coverage: &fedcrm_analysis::rules::Coverage,
    ) -> Result<plan::Plan, crate::round::RoundError> {
        if *self.stopping.borrow() {
            return Err(crate::round::RoundError::ShuttingDown);
        }
        let connected = self.registry.connected();
        let need = self.config.release.min_participants;
        if connected.len() < need {
            return Err(crate::round::RoundError::NotEnoughNodes { have: connected.len(), need });
        }
        #[cfg(feature = "test-util")]
        if let Some(t) = self.hooks.force_threshold {
            return Ok(plan::Plan { invited: connected, t, degree: 0, excluded: Default::default() });
        }
        #[cfg(feature = "test-util")]
        if let Some((k, t)) = self.hooks.force_graph {
            return Ok(plan::Plan { invited: connected, t, degree: k, excluded: Default::default() });
        }
        let history = self.history.lock().unwrap_or_else(|p| p.into_inner()).clone();
        plan::plan(&connected, &history, now_ms(), coverage, &self.config.secagg)
            .map_err(crate::round::RoundError::Unplannable)
    }

    /// A round runner for one analysis (with differential privacy at σ² = `variance` per
    /// node in every round, or exact). Events queued while no analysis ran (stale
    /// disconnects, messages of finished rounds) are discarded first.
    pub(crate) fn runner<'a>(
        &'a self,
        events: &'a mut mpsc::UnboundedReceiver<SessionEvent>,
        variance: Option<fedcrm_dp::sampler::Variance>,
    ) -> Runner<'a> {
        while events.try_recv().is_ok() {}
        Runner {
            coordinator: self,
            events,
            settings: self.config.rounds,
            keyed: None,
            variance,
            population: None,
            stopped_charges: Vec::new(),
        }
    }

    /// Issue 10: σ² per node for an analysis over `invited`: as configured, raised to the
    /// largest floor an invitee announced. Fixed for the whole analysis (its later rounds
    /// invite a subset, whose floors it still meets), so its pass plan's charge bounds
    /// what every round costs.
    pub(crate) fn analysis_variance(&self, invited: &[registry::ConnectedNode]) -> fedcrm_dp::sampler::Variance {
        invited
            .iter()
            .filter_map(|m| self.budgets.announced(&m.name))
            .map(|p| p.min_noise)
            .fold(self.config.rounds.noise_variance(), std::cmp::Ord::max)
    }

    /// Issue 10: the noise of a round over `invited` with threshold `t`:
    /// [`Coordinator::analysis_variance`] and k = t − H − the largest C ([`plan::honest`]).
    pub(crate) fn noise_for(
        &self,
        invited: &[registry::ConnectedNode],
        t: usize,
    ) -> Result<fedcrm_protocol::wire::Noise, String> {
        Ok(fedcrm_protocol::wire::Noise {
            variance: self.analysis_variance(invited),
            honest: plan::honest(invited, t)?,
        })
    }

    /// Issue 10: `charge` more this month stays within every invitee's budget as
    /// announced; `Err` names every node it would not.
    pub(crate) fn within_budgets(
        &self,
        invited: &[registry::ConnectedNode],
        charge: &fedcrm_dp::accounting::Charge,
    ) -> Result<(), String> {
        let now = self.now_ms();
        let over: Vec<String> =
            invited.iter().filter_map(|m| self.budgets.check(&m.name, now, *charge).err()).collect();
        if over.is_empty() { Ok(()) } else { Err(over.join("; ")) }
    }

    /// Issue 10: an exact analysis (`--dp off`) runs only if no invitee's policy
    /// requires differential privacy; `Err` names those that do.
    pub(crate) fn exact_allowed(&self, invited: &[registry::ConnectedNode]) -> Result<(), String> {
        let required: Vec<&str> = invited
            .iter()
            .filter(|m| self.budgets.announced(&m.name).is_none_or(|p| p.dp_required))
            .map(|m| m.name.as_str())
            .collect();
        if required.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "--dp off is refused: the policy of {} requires differential privacy ([policy.privacy] dp = \
                 \"required\"); run with --dp on, or ask the franchisee to set dp = \"optional\"",
                required.join(", ")
            ))
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Files(#[from] fedcrm_protocol::config::ConfigError),
    #[error("audit log: {0}")]
    Audit(#[from] fedcrm_audit::log::AuditError),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("audit log: a record of the sums unmasked cannot be read ({0}); run `fedcrm audit verify` on the log")]
    History(String),
    #[error("enrolment not changed: {0}")]
    Enrolment(String),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Concurrent HTTP/2 streams one connection may open.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 8;

/// How long a stopping coordinator waits for the running round to end and for nodes
/// and analysts to close their connections; then it exits regardless.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// The longest a stopping coordinator takes: three waits of [`SHUTDOWN_GRACE`] (the
/// running analysis, the connections, the session readers). Usually well under a second.
pub const SHUTDOWN_TIME: std::time::Duration = std::time::Duration::from_secs(15);

/// Serve until `shutdown` resolves, then stop within [`SHUTDOWN_TIME`]: stop
/// accepting, end a running round without releasing it (logged), close every node
/// session, let each session's reader record its end, seal the audit log and log a
/// shutdown line. Each of the three waits is bounded by [`SHUTDOWN_GRACE`].
pub async fn run(
    coordinator: Arc<Coordinator>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let c = &coordinator.config;
    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_else(|_| c.listen.clone());
    {
        let log = crate::audit::lock(&coordinator.audit);
        tracing::info!(
            name = %c.name,
            %addr,
            enrolled = c.enrolled.len(),
            min_participants = c.release.min_participants,
            audit_dir = %c.audit_dir.display(),
            audit_records = log.head().0,
            software = fedcrm_protocol::SOFTWARE,
            "coordinator listening"
        );
    }
    // Seal the audit log when idle, and apply retention daily.
    let keeper = {
        let audit = coordinator.audit.clone();
        let every = std::time::Duration::from_secs(c.audit.seal_every_seconds.max(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            let mut last_retention = tokio::time::Instant::now();
            loop {
                tick.tick().await;
                let mut log = crate::audit::lock(&audit);
                if let Err(e) = log.seal() {
                    tracing::error!(error = %e, "audit log seal failed");
                }
                if last_retention.elapsed() > std::time::Duration::from_secs(86_400) {
                    last_retention = tokio::time::Instant::now();
                    if let Err(e) = log.apply_retention() {
                        tracing::error!(error = %e, "audit log retention failed");
                    }
                }
            }
        })
    };
    let (close, closed) = tokio::sync::oneshot::channel::<()>();
    // TLS is done by `tls::incoming`, which logs refused handshakes; tonic gets
    // finished mutual-TLS streams (and reads the peer certificates from them).
    let incoming = tls::incoming(coordinator.clone(), listener);
    let keepalive = c.sessions.keepalive();
    let server = tonic::transport::Server::builder()
        // Dead connections are found by HTTP/2 PING (a half-open one after network
        // loss would otherwise hold its node's name); see `registry::make_room`.
        .http2_keepalive_interval(Some(keepalive))
        .http2_keepalive_timeout(Some(keepalive))
        // What one connection may have in flight before flow control holds it back
        // (the bound in `registry::IN_FLIGHT_BYTES`). A node needs one stream; an
        // analyst a few unary calls.
        .initial_stream_window_size(registry::STREAM_WINDOW)
        .initial_connection_window_size(registry::CONNECTION_WINDOW)
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .add_service(
            CoordinatorServer::new(service::NodeService(coordinator.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(AnalystServer::new(service::AnalystService(coordinator.clone())))
        .serve_with_incoming_shutdown(incoming, async {
            let _ = closed.await;
        });
    tokio::pin!(server);
    let served = tokio::select! {
        r = &mut server => r,
        _ = shutdown => {
            tracing::info!("shutting down: no new analyses; a running round ends without a release");
            coordinator.stop();
            // The running analysis holds the event queue until it has logged its end.
            let round_ended = tokio::time::timeout(SHUTDOWN_GRACE, coordinator.events.lock()).await.is_ok();
            if !round_ended {
                tracing::warn!("the running analysis did not end within {} s; stopping anyway", SHUTDOWN_GRACE.as_secs());
            }
            let sessions = coordinator.registry.close_all();
            let _ = close.send(());
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!("connections still open after {} s; closing them", SHUTDOWN_GRACE.as_secs());
                    Ok(())
                }
            }
            .inspect(|_| tracing::info!(sessions, "node sessions closed"))
        }
    };
    // Each session's reader records its end; the seal comes after them.
    if tokio::time::timeout(SHUTDOWN_GRACE, coordinator.registry.readers_done()).await.is_err() {
        tracing::warn!("session readers still running after {} s; sealing anyway", SHUTDOWN_GRACE.as_secs());
    }
    keeper.abort();
    let sealed = {
        let mut log = crate::audit::lock(&coordinator.audit);
        log.seal().map(|_| log.head().0)
    };
    match &sealed {
        Ok(seq) => tracing::info!(name = %c.name, "coordinator stopped; audit log sealed at record {seq}"),
        Err(e) => tracing::error!(name = %c.name, error = %e, "coordinator stopped; the audit log could not be sealed"),
    }
    served?;
    sealed?;
    Ok(())
}
