#![cfg(feature = "grpc")]
//! TLS, mutual TLS and bearer-token tenancy on the real server.
//!
//! Expectations (issue "Operations and packaging", security):
//! - TLS on the gRPC port: a plaintext client cannot talk to it; a client
//!   that trusts the CA can; the `gru-serve health` probe works over TLS.
//! - Mutual TLS: without a client certificate from the configured CA the
//!   handshake fails.
//! - Bearer tokens: no or unknown token → UNAUTHENTICATED; health stays open;
//!   a session belongs to the tenant that opened it and is NOT_FOUND — with
//!   the very message a nonexistent id gets — for every other tenant;
//!   session keys are per tenant; training needs an admin token
//!   (PERMISSION_DENIED otherwise).
//!
//! Certificates are generated here with rcgen.

use std::time::Duration;

use gru_serve::server::{ProbeTls, TlsFiles};
use gru_serve::service::auth::Auth;
use gru_serve::service::pb;
use gru_serve::service::pb::gru_service_client::GruServiceClient;
use gru_serve::service::pb::training_service_client::TrainingServiceClient;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tempfile::TempDir;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request};

mod common;
use common::server::*;

/// A CA, a server certificate for "localhost", and a client certificate,
/// written as PEM files into `dir`.
struct Pki {
    dir: TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = TempDir::new().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "gru-serve test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let leaf = |name: &str, usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(vec![name.to_string()]).unwrap();
            p.extended_key_usages = vec![usage];
            (
                p.signed_by(&key, &issuer).unwrap().pem(),
                key.serialize_pem(),
            )
        };
        let (server_cert, server_key) = leaf("localhost", ExtendedKeyUsagePurpose::ServerAuth);
        let (client_cert, client_key) = leaf("client", ExtendedKeyUsagePurpose::ClientAuth);
        for (f, pem) in [
            ("ca.pem", ca_cert.pem()),
            ("server.pem", server_cert),
            ("server.key", server_key),
            ("client.pem", client_cert),
            ("client.key", client_key),
        ] {
            std::fs::write(dir.path().join(f), pem).unwrap();
        }
        Pki { dir }
    }

    fn read(&self, f: &str) -> Vec<u8> {
        std::fs::read(self.dir.path().join(f)).unwrap()
    }

    fn server_tls(&self, mutual: bool) -> TlsFiles {
        TlsFiles {
            cert: self.dir.path().join("server.pem"),
            key: self.dir.path().join("server.key"),
            client_ca: mutual.then(|| self.dir.path().join("ca.pem")),
        }
    }

    fn client_tls(&self, with_identity: bool) -> ClientTlsConfig {
        let mut c = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.read("ca.pem")))
            .domain_name("localhost");
        if with_identity {
            c = c.identity(Identity::from_pem(
                self.read("client.pem"),
                self.read("client.key"),
            ));
        }
        c
    }
}

fn tls_endpoint(addr: std::net::SocketAddr, tls: ClientTlsConfig) -> Endpoint {
    Endpoint::from_shared(format!("https://localhost:{}", addr.port()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
}

/// Connects and lists models: Err when either step fails.
async fn try_list(endpoint: Endpoint) -> Result<(), String> {
    let ch = endpoint.connect().await.map_err(|e| e.to_string())?;
    GruServiceClient::new(ch)
        .list_models(pb::ListModelsRequest {})
        .await
        .map(|_| ())
        .map_err(|s| s.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_trusting_clients_and_refuses_plaintext() {
    let pki = Pki::new();
    let repo = small_repo();
    let mut config = config_for(repo.path());
    config.tls = Some(pki.server_tls(false));
    let tls = pki.client_tls(false);
    let server = TestServer::start_with(config, |a| tls_endpoint(a, tls)).await;
    server.wait_serving().await;
    let models = server
        .client()
        .list_models(pb::ListModelsRequest {})
        .await
        .expect("list models over TLS")
        .into_inner()
        .models;
    assert_eq!(models[0].name, "m");
    // Plaintext HTTP/2 to the TLS port never gets an answer.
    let plain = Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(2));
    assert!(
        try_list(plain).await.is_err(),
        "a plaintext client was answered"
    );
    // The health probe over TLS, and its refusal without the CA's trust.
    let url = format!("https://localhost:{}", server.addr.port());
    let probe = ProbeTls {
        ca: pki.dir.path().join("ca.pem"),
        domain: Some("localhost".into()),
        client: None,
    };
    let t = Duration::from_secs(5);
    assert_eq!(
        gru_serve::server::check_health(&url, "", t, Some(&probe)).await,
        Ok(true)
    );
    let wrong = ProbeTls {
        ca: pki.dir.path().join("client.pem"),
        ..probe
    };
    assert!(gru_serve::server::check_health(&url, "", t, Some(&wrong))
        .await
        .is_err());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_requires_a_client_certificate() {
    let pki = Pki::new();
    let repo = small_repo();
    let mut config = config_for(repo.path());
    config.tls = Some(pki.server_tls(true));
    let tls = pki.client_tls(true);
    let server = TestServer::start_with(config, |a| tls_endpoint(a, tls)).await;
    server.wait_serving().await;
    server
        .client()
        .list_models(pb::ListModelsRequest {})
        .await
        .expect("a client with a certificate is served");
    let anonymous = tls_endpoint(server.addr, pki.client_tls(false))
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(2));
    assert!(
        try_list(anonymous).await.is_err(),
        "a client without a certificate was served"
    );
    server.stop().await;
}

const ALICE: &str = "alice-token-0123456789";
const BOB: &str = "bob-token-0123456789ab";
const OPS: &str = "ops-token-0123456789abc";

fn with_token<T>(msg: T, token: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_authenticate_and_sessions_belong_to_their_tenant() {
    let repo = small_repo();
    let mut config = config_for(repo.path());
    config.auth = Auth::parse(
        &format!("alice {ALICE}\nbob {BOB}\nops {OPS} admin"),
        "test",
    )
    .unwrap();
    let server = TestServer::start(config).await;
    server.wait_serving().await; // health needs no token
    let mut c = server.client();

    let none = expect_err("no token", c.list_models(pb::ListModelsRequest {}).await);
    assert_status("no token", &none, Code::Unauthenticated, &["authorization"]);
    let bad = expect_err(
        "unknown token",
        c.list_models(with_token(
            pb::ListModelsRequest {},
            "not-a-token-0123456789",
        ))
        .await,
    );
    assert_status(
        "unknown token",
        &bad,
        Code::Unauthenticated,
        &["unknown token"],
    );

    let open = |key: &str| pb::OpenSessionRequest {
        model: "m".into(),
        session_key: key.into(),
        ..Default::default()
    };
    let a = c
        .open_session(with_token(open(""), ALICE))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.session_id.len(), 32, "128-bit hex session ids");
    let step = |id: &str| pb::StepRequest {
        session_id: id.into(),
        inputs: Some(matrix(1, 3, vec![0.1, 0.2, 0.3])),
        ..Default::default()
    };
    c.step(with_token(step(&a.session_id), ALICE))
        .await
        .expect("the owner steps");

    // Bob gets exactly what a nonexistent id gets, on every session RPC.
    let fake = "0".repeat(32);
    let theirs = expect_err(
        "bob steps alice's",
        c.step(with_token(step(&a.session_id), BOB)).await,
    );
    let missing = expect_err(
        "bob steps a missing id",
        c.step(with_token(step(&fake), BOB)).await,
    );
    assert_eq!(theirs.code(), Code::NotFound);
    assert_eq!(
        theirs.message().replace(&a.session_id, "ID"),
        missing.message().replace(&fake, "ID")
    );
    let state = pb::GetSessionStateRequest {
        session_id: a.session_id.clone(),
    };
    let e = expect_err(
        "bob reads alice's",
        c.get_session_state(with_token(state.clone(), BOB)).await,
    );
    assert_eq!(e.code(), Code::NotFound);
    let close = pb::CloseSessionRequest {
        session_id: a.session_id.clone(),
    };
    let e = expect_err(
        "bob closes alice's",
        c.close_session(with_token(close.clone(), BOB)).await,
    );
    assert_eq!(e.code(), Code::NotFound);
    let s = c
        .get_session_state(with_token(state, ALICE))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        s.state.unwrap().step_index,
        1,
        "alice's session is untouched"
    );

    // Session keys are per tenant.
    let ka = c
        .open_session(with_token(open("shared-key"), ALICE))
        .await
        .unwrap()
        .into_inner();
    let kb = c
        .open_session(with_token(open("shared-key"), BOB))
        .await
        .unwrap()
        .into_inner();
    assert!(ka.created && kb.created && ka.session_id != kb.session_id);
    let again = c
        .open_session(with_token(open("shared-key"), ALICE))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((again.session_id, again.created), (ka.session_id, false));

    // Training needs an admin token.
    let mut t = TrainingServiceClient::new(server.channel.clone());
    let job = || pb::StartTrainingRequest {
        model: "m".into(),
        ..Default::default()
    };
    let denied = expect_err(
        "alice trains",
        t.start_training(with_token(job(), ALICE)).await,
    );
    assert_status(
        "alice trains",
        &denied,
        Code::PermissionDenied,
        &["alice", "admin"],
    );
    let unauth = expect_err("no token trains", t.start_training(job()).await);
    assert_eq!(unauth.code(), Code::Unauthenticated);
    // Past auth, the empty dataset is refused on its merits.
    let empty = expect_err(
        "ops, no data",
        t.start_training(with_token(job(), OPS)).await,
    );
    assert_status("ops, no data", &empty, Code::InvalidArgument, &["empty"]);
    c.close_session(with_token(close, ALICE))
        .await
        .expect("the owner closes");
    server.stop().await;
}
