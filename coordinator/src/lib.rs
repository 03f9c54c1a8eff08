//! The fedcrm coordinator, run by brand HQ: accepts node sessions over mutual TLS,
//! orchestrates secure-aggregation rounds ([`round`]), runs analyses such as the RFM
//! segments ([`segments`]) and releases results only through [`release`].
//!
//! Never depends on `fedcrm-node`; never sees a node's unmasked contribution.

#![forbid(unsafe_code)]

pub mod config;
pub mod registry;
pub mod release;
pub mod round;
pub mod segments;
pub mod service;

use std::sync::Arc;

use fedcrm_protocol::MAX_MESSAGE_BYTES;
use fedcrm_protocol::pb::analyst_server::AnalystServer;
use fedcrm_protocol::pb::coordinator_server::CoordinatorServer;
use fedcrm_protocol::pki;
use tokio::sync::{Mutex, mpsc};
use tokio_stream::wrappers::TcpListenerStream;

use crate::config::CoordinatorConfig;
use crate::registry::{Event, Registry};
use crate::round::{Hooks, Runner};

/// Shared coordinator state.
#[derive(Debug)]
pub struct Coordinator {
    pub config: CoordinatorConfig,
    pub registry: Registry,
    events: Mutex<mpsc::Receiver<Event>>,
    hooks: Hooks,
}

impl Coordinator {
    pub fn new(config: CoordinatorConfig, hooks: Hooks) -> Arc<Self> {
        let (registry, events) = Registry::new();
        Arc::new(Self { config, registry, events: Mutex::new(events), hooks })
    }

    /// A round runner for one analysis. Events queued while no analysis ran (stale
    /// disconnects, messages of finished rounds) are discarded first.
    pub(crate) fn runner<'a>(&'a self, events: &'a mut mpsc::Receiver<Event>) -> Runner<'a> {
        while events.try_recv().is_ok() {}
        Runner { registry: &self.registry, events, settings: self.config.rounds, hooks: &self.hooks }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Files(#[from] fedcrm_protocol::config::ConfigError),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

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
    tonic::transport::Server::builder()
        .tls_config(tls)?
        .add_service(
            CoordinatorServer::new(service::NodeService(coordinator.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(AnalystServer::new(service::AnalystService(coordinator.clone())))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}
