//! Dialling the coordinator: TCP, then mutual TLS driven here with tokio-rustls and
//! [`fedcrm_pki::tls::client_config`] (brand CA only, `serverAuth`, the
//! configured name, the CRL when `tls.crl` is set), so a refused coordinator
//! certificate comes back with its reason instead of as a transport error. tonic
//! gets the finished stream. Never sends a byte before the coordinator verified.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use fedcrm_pki::tls::Refusal;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::codegen::Service;
use tonic::codegen::http::Uri;

/// What the verifier refused during the last connection attempt.
pub(crate) type LastRefusal = Arc<Mutex<Option<(Refusal, String)>>>;

/// A tonic connector (a `Service<Uri>`) that always speaks TLS with `config`,
/// whatever the URI's scheme, and checks the server's certificate for `server_name`.
#[derive(Clone)]
pub(crate) struct Connector {
    pub config: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
}

impl Service<Uri> for Connector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let (config, name) = (self.config.clone(), self.server_name.clone());
        Box::pin(async move {
            let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, why.to_string());
            let host = uri.host().ok_or_else(|| bad("the coordinator url has no host"))?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let port = uri.port_u16().unwrap_or(443);
            let tcp = TcpStream::connect((host, port)).await?;
            tcp.set_nodelay(true)?;
            let tls = TlsConnector::from(config).connect(name, tcp).await?;
            Ok(TokioIo::new(tls))
        })
    }
}
