//! The fedcrm coordinator, run by brand HQ: accepts node sessions over mutual TLS,
//! orchestrates secure-aggregation rounds ([`round`]), runs analyses such as the RFM
//! segments ([`segments`]) and releases results only through [`release`].
//!
//! Never depends on `fedcrm-node`; never sees a node's unmasked contribution.

#![forbid(unsafe_code)]

pub mod audit;
pub mod config;
mod inbound;
pub mod plan;
pub mod registry;
pub mod release;
pub mod round;
pub mod segments;
pub mod service;

use std::sync::Arc;

use fedcrm_audit::log::{AuditLog, LogIdentity, SystemClock};
use fedcrm_protocol::MAX_MESSAGE_BYTES;
use fedcrm_protocol::pb::analyst_server::AnalystServer;
use fedcrm_protocol::pb::coordinator_server::CoordinatorServer;
use fedcrm_protocol::pki::{self, SigningKey};
use tokio::sync::{Mutex, mpsc};
use tokio_stream::wrappers::TcpListenerStream;

use crate::audit::SharedLog;
use crate::config::CoordinatorConfig;
use crate::registry::{Event, Registry};
use crate::round::{Hooks, Runner};

/// Shared coordinator state.
#[derive(Debug)]
pub struct Coordinator {
    pub config: CoordinatorConfig,
    pub registry: Registry,
    pub audit: SharedLog,
    /// The coordinator's certificate (DER), sent in Welcome.
    pub certificate: Vec<u8>,
    /// Signs round rosters.
    signing: SigningKey,
    events: Mutex<mpsc::UnboundedReceiver<Event>>,
    hooks: Hooks,
    /// Sums this coordinator unmasked (from its audit log, then every round), to plan
    /// rounds under the nodes' differencing rule.
    history: std::sync::Mutex<Vec<fedcrm_protocol::rules::Unmasked>>,
}

/// Unix time in milliseconds.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The sums recorded as `contributed` in an audit log (an unmasked U3 replaces its
/// round's U2). A record that does not parse stops the coordinator.
fn unmasked_from(records: &[fedcrm_audit::Record]) -> Result<Vec<fedcrm_protocol::rules::Unmasked>, ServeError> {
    let mut out: Vec<fedcrm_protocol::rules::Unmasked> = Vec::new();
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
    pub fn open(config: CoordinatorConfig, hooks: Hooks) -> Result<Arc<Self>, ServeError> {
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
        log.append(fedcrm_audit::Event::Enrolment {
            nodes: config
                .enrolled
                .iter()
                .map(|e| fedcrm_audit::Member {
                    name: e.name.clone(),
                    organisation: e.organisation.clone(),
                    kind: String::new(),
                })
                .collect(),
        })?;
        let history = unmasked_from(&fedcrm_audit::log::read_records(&config.audit_dir)?)?;
        let audit: SharedLog = Arc::new(std::sync::Mutex::new(log));
        let (registry, events) = Registry::new(audit.clone());
        Ok(Arc::new(Self {
            config,
            registry,
            audit,
            certificate,
            signing: signer()?,
            events: Mutex::new(events),
            hooks,
            history: std::sync::Mutex::new(history),
        }))
    }

    /// Sign a round roster.
    pub(crate) fn sign(&self, payload: &[u8]) -> Result<Vec<u8>, pki::PkiError> {
        self.signing.sign(payload)
    }

    /// The hooks this coordinator runs with (none in production).
    pub(crate) fn hooks(&self) -> &Hooks {
        &self.hooks
    }

    /// Remember a sum the nodes' inputs may be in (its audit record is already
    /// written); an unmasked U3 replaces the round's earlier U2.
    pub(crate) fn remember(&self, u: fedcrm_protocol::rules::Unmasked, unmasked: bool) {
        let mut history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        if unmasked {
            history.retain(|h| h.round != u.round);
        }
        history.push(u);
    }

    /// Plan a round of an analysis covering `coverage` over the connected nodes
    /// (or, with the `force_threshold` hook, all of them with that threshold).
    pub(crate) fn plan(
        &self,
        coverage: &fedcrm_protocol::rules::Coverage,
    ) -> Result<plan::Plan, crate::round::RoundError> {
        let connected = self.registry.connected();
        let need = self.config.release.min_participants;
        if connected.len() < need {
            return Err(crate::round::RoundError::NotEnoughNodes { have: connected.len(), need });
        }
        if let Some(t) = self.hooks.force_threshold {
            return Ok(plan::Plan { invited: connected, t, excluded: Default::default() });
        }
        let history = self.history.lock().unwrap_or_else(|p| p.into_inner()).clone();
        plan::plan(&connected, &history, now_ms(), coverage).map_err(crate::round::RoundError::Unplannable)
    }

    /// A round runner for one analysis. Events queued while no analysis ran (stale
    /// disconnects, messages of finished rounds) are discarded first.
    pub(crate) fn runner<'a>(&'a self, events: &'a mut mpsc::UnboundedReceiver<Event>) -> Runner<'a> {
        while events.try_recv().is_ok() {}
        Runner { coordinator: self, events, settings: self.config.rounds, hooks: &self.hooks }
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
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Concurrent HTTP/2 streams one connection may open.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 8;

/// Serve until `shutdown` resolves.
pub async fn run(
    coordinator: Arc<Coordinator>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let c = &coordinator.config;
    let m = c.tls.read()?;
    let (ca, cert, key) = (m.ca_pem, m.cert_pem, m.key);
    let tls = pki::server_tls(&ca, &cert, &key);
    tracing::info!(name = %c.name, addr = ?listener.local_addr().ok(), enrolled = c.enrolled.len(), "coordinator listening");
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
    let keepalive = c.sessions.keepalive();
    tonic::transport::Server::builder()
        .tls_config(tls)?
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
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await?;
    keeper.abort();
    let _ = crate::audit::lock(&coordinator.audit).seal();
    Ok(())
}
