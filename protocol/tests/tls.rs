//! Real mutual-TLS handshakes through tonic with the brand PKI's configs from
//! [`server_tls`] / [`client_tls`]. Public API only.

use fedcrm_pki::tls::Refusal;
use fedcrm_pki::{CaMaterial, Identity, OrgKind, PrivateKeyPem, Role, Validity, ca_init, new_key_and_csr, sign_csr};
use fedcrm_protocol::tls::{client_tls, server_tls};
use std::convert::Infallible;
use std::future::{Ready, ready};
use std::net::SocketAddr;
use tonic::body::Body;
use tonic::codegen::{Context, Poll, Service, http};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{ClientTlsConfig, Endpoint, Server};

fn node_id(name: &str) -> Identity {
    Identity { name: name.into(), organisation: "Franchise Co 42 Ltd".into(), role: Role::Node(OrgKind::Franchisee) }
}

fn coordinator_id() -> Identity {
    Identity { name: "coordinator.brand".into(), organisation: "Brand HQ".into(), role: Role::Coordinator }
}

/// A gRPC service that answers every call with an empty OK.
#[derive(Clone)]
struct Ping;

impl tonic::server::NamedService for Ping {
    const NAME: &'static str = "fedcrm.test.Ping";
}

impl Service<http::Request<Body>> for Ping {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<Body>) -> Self::Future {
        let resp = http::Response::builder()
            .status(200)
            .header("content-type", "application/grpc")
            .header("grpc-status", "0")
            .body(Body::default())
            .unwrap();
        ready(Ok(resp))
    }
}

struct Party {
    cert_pem: String,
    key: PrivateKeyPem,
}

fn party(ca: &CaMaterial, id: &Identity) -> Party {
    let (key, csr) = new_key_and_csr(id).unwrap();
    let (cert_pem, _) = sign_csr(ca, &csr, Validity::days_from_now(10)).unwrap();
    Party { cert_pem, key }
}

fn serve(ca: &CaMaterial, server: &Party) -> SocketAddr {
    let incoming = TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = incoming.local_addr().unwrap();
    let router = Server::builder()
        .tls_config(server_tls(&ca.cert_pem, &server.cert_pem, &server.key))
        .unwrap()
        .add_service(Ping);
    tokio::spawn(async move {
        let _ = router.serve_with_incoming(incoming).await;
    });
    addr
}

/// Why an attempt failed: the TLS refusal found in the error's chain of causes (the
/// typed rustls error, as the coordinator and node sort it), else the error's text.
#[derive(Debug, PartialEq, Eq)]
enum Failed {
    Tls(Refusal),
    /// The peer refused and said so with a TLS alert (RFC 8446 §6), which reaches
    /// this side only as its description, e.g. `DecryptError`.
    Alert(String),
    Other(String),
}

fn failed(e: &(dyn std::error::Error + 'static)) -> Failed {
    let mut cause = Some(e);
    while let Some(e) = cause {
        let tls = e.downcast_ref::<rustls::Error>().or_else(|| {
            e.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|i| i.downcast_ref::<rustls::Error>())
        });
        if let Some(tls) = tls {
            return Failed::Tls(Refusal::classify(tls));
        }
        if let Some(alert) = e.to_string().strip_prefix("received fatal alert: ") {
            return Failed::Alert(alert.to_string());
        }
        cause = e.source();
    }
    Failed::Other(format!("{e:?}"))
}

async fn call(addr: SocketAddr, tls: ClientTlsConfig) -> Result<(), Failed> {
    let attempt = async {
        let mut channel = Endpoint::from_shared(format!("https://{addr}"))
            .map_err(|e| failed(&e))?
            .tls_config(tls)
            .map_err(|e| failed(&e))?
            .connect()
            .await
            .map_err(|e| failed(&e))?;
        std::future::poll_fn(|cx| channel.poll_ready(cx)).await.map_err(|e| failed(&e))?;
        let req = http::Request::builder()
            .method("POST")
            .uri(format!("https://{addr}/fedcrm.test.Ping/Ping"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Body::default())
            .unwrap();
        let resp = channel.call(req).await.map_err(|e| failed(&e))?;
        if resp.status() == 200 { Ok(()) } else { Err(Failed::Other(format!("http status {}", resp.status()))) }
    };
    tokio::time::timeout(std::time::Duration::from_secs(20), attempt)
        .await
        .map_err(|_| Failed::Other("timed out".into()))?
}

#[tokio::test]
async fn mutual_tls_accepts_brand_parties_only() {
    let ca = ca_init("brand", 30).unwrap();
    let coordinator = party(&ca, &coordinator_id());
    let node = party(&ca, &node_id("n1.brand"));
    let other_ca = ca_init("brand", 30).unwrap();
    let intruder = party(&other_ca, &node_id("n1.brand"));
    let addr = serve(&ca, &coordinator);

    let good = |server_name: &str| client_tls(&ca.cert_pem, &node.cert_pem, &node.key, server_name);
    call(addr, good("coordinator.brand")).await.unwrap();

    // The server name is checked, whatever address is dialled.
    assert_eq!(call(addr, good("other.brand")).await, Err(Failed::Tls(Refusal::WrongName)));
    // A client certificate from another CA is refused by the server.
    let foreign = client_tls(&ca.cert_pem, &intruder.cert_pem, &intruder.key, "coordinator.brand");
    // (The other CA has the same name, so its signature fails to verify: rustls' alert
    // for a bad signature is DecryptError.)
    assert_eq!(call(addr, foreign).await, Err(Failed::Alert("DecryptError".into())));
    // A client that trusts another CA refuses the coordinator.
    let distrusting = client_tls(&other_ca.cert_pem, &intruder.cert_pem, &intruder.key, "coordinator.brand");
    assert_eq!(call(addr, distrusting).await, Err(Failed::Tls(Refusal::UnknownIssuer)));
    // No client certificate at all is refused.
    let anonymous = ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&ca.cert_pem))
        .domain_name("coordinator.brand");
    assert_eq!(call(addr, anonymous).await, Err(Failed::Alert("CertificateRequired".into())));
}

#[tokio::test]
async fn node_cert_cannot_serve_tls() {
    let ca = ca_init("brand", 30).unwrap();
    let node = party(&ca, &node_id("n1.brand"));
    let analyst =
        party(&ca, &Identity { name: "alice.brand".into(), organisation: "Brand HQ".into(), role: Role::Analyst });
    // A node pretending to be a server: its certificate lacks serverAuth.
    let addr = serve(&ca, &node);
    let tls = client_tls(&ca.cert_pem, &analyst.cert_pem, &analyst.key, "n1.brand");
    assert_eq!(call(addr, tls).await, Err(Failed::Tls(Refusal::BadUsage)));
}
