//! Helpers for the caller-identity tests: a certificate authority made with rcgen, a
//! Kubernetes-like ServiceAccount token issuer (ES256, discovery and JWKS over HTTP on
//! loopback), and clients that present either.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use axum::{Json, Router, extract::State, routing::get};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use p256::ecdsa::{Signature, SigningKey, signature::Signer as _};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
use serde_json::{Value, json};
use tokenvend::pb::token_service_client::TokenServiceClient;
use tokio::{net::TcpListener, task::JoinHandle};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// A CA and the server certificate it signed, written to files for the server to read.
pub struct Pki {
    pub dir: tempfile::TempDir,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
    pub ca_pem: String,
}

/// A client certificate and its key, PEM.
pub struct ClientCert {
    pub cert: String,
    pub key: String,
}

impl Pki {
    /// A new CA, with a server certificate for `localhost` in `server.crt`/`server.key`.
    pub fn new() -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "tokenvend test CA");
        let ca = params.self_signed(&ca_key).unwrap();
        let pki = Self {
            dir: tempfile::tempdir().unwrap(),
            ca_pem: ca.pem(),
            ca,
            ca_key,
        };
        std::fs::write(pki.path("ca.crt"), &pki.ca_pem).unwrap();
        pki.write_server_cert();
        pki
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a new server certificate (as cert-manager would on rotation).
    pub fn write_server_cert(&self) -> String {
        let leaf = self.leaf(vec![SanType::DnsName("localhost".try_into().unwrap())]);
        std::fs::write(self.path("server.crt"), &leaf.cert).unwrap();
        std::fs::write(self.path("server.key"), &leaf.key).unwrap();
        leaf.cert
    }

    /// A client certificate with a URI SAN (a SPIFFE ID).
    pub fn client(&self, spiffe_id: &str) -> ClientCert {
        self.leaf(vec![SanType::URI(spiffe_id.try_into().unwrap())])
    }

    /// A client certificate with a DNS SAN (written as given, valid host name or not).
    pub fn client_dns(&self, name: &str) -> ClientCert {
        self.leaf(vec![SanType::DnsName(name.try_into().unwrap())])
    }

    fn leaf(&self, sans: Vec<SanType>) -> ClientCert {
        self.leaf_named(None, sans)
    }

    /// A certificate with this common name (if any) and these SANs.
    pub fn leaf_named(&self, common_name: Option<&str>, sans: Vec<SanType>) -> ClientCert {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        if let Some(name) = common_name {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
        }
        params.subject_alt_names = sans;
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        ClientCert {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// The `server.tls` section, with mutual TLS.
    pub fn tls_yaml(&self) -> String {
        format!(
            "  tls:\n    cert: {}\n    key: {}\n    client_ca: {}\n    reload_interval: 100ms\n",
            self.path("server.crt").display(),
            self.path("server.key").display(),
            self.path("ca.crt").display(),
        )
    }

    /// A client over TLS to `addr`, trusting this CA, presenting `identity` if given.
    pub async fn client_to(
        &self,
        addr: SocketAddr,
        identity: Option<&ClientCert>,
    ) -> Result<TokenServiceClient<Channel>, tonic::transport::Error> {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .domain_name("localhost");
        if let Some(id) = identity {
            tls = tls.identity(Identity::from_pem(&id.cert, &id.key));
        }
        let channel = Channel::from_shared(format!("https://localhost:{}", addr.port()))
            .unwrap()
            .tls_config(tls)?
            .connect()
            .await?;
        Ok(TokenServiceClient::new(channel))
    }
}

/// A ServiceAccount token issuer: signs ES256 tokens and serves discovery and JWKS.
pub struct SaIssuer {
    pub url: String,
    keys: Arc<Mutex<Vec<(String, SigningKey)>>>,
    pub jwks_fetches: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

#[derive(Clone)]
struct IssuerState {
    url: String,
    keys: Arc<Mutex<Vec<(String, SigningKey)>>>,
    fetches: Arc<AtomicUsize>,
}

pub fn jwk(kid: &str, key: &SigningKey) -> Value {
    let point = key.verifying_key().to_encoded_point(false);
    json!({
        "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
        "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()),
        "y": URL_SAFE_NO_PAD.encode(point.y().unwrap()),
    })
}

pub fn new_key() -> SigningKey {
    SigningKey::random(&mut p256::elliptic_curve::rand_core::OsRng)
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Signs a JWT with ES256 (or writes `header` as given, for forged tokens).
pub fn sign(key: &SigningKey, header: Value, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature: Signature = key.sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
}

impl SaIssuer {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = IssuerState {
            url: url.clone(),
            keys: Arc::new(Mutex::new(vec![("k1".to_owned(), new_key())])),
            fetches: Arc::default(),
        };
        let app = Router::new()
            .route(
                "/.well-known/openid-configuration",
                get(|State(s): State<IssuerState>| async move {
                    Json(json!({"issuer": s.url, "jwks_uri": format!("{}/openid/v1/jwks", s.url)}))
                }),
            )
            .route(
                "/openid/v1/jwks",
                get(|State(s): State<IssuerState>| async move {
                    s.fetches.fetch_add(1, Ordering::SeqCst);
                    let keys: Vec<Value> = s
                        .keys
                        .lock()
                        .unwrap()
                        .iter()
                        .map(|(kid, k)| jwk(kid, k))
                        .collect();
                    Json(json!({ "keys": keys }))
                }),
            )
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            url,
            keys: state.keys,
            jwks_fetches: state.fetches,
            task,
        }
    }

    /// The `server.auth` section for this issuer.
    pub fn auth_yaml(&self) -> String {
        format!(
            "  auth:\n    service_account:\n      issuer: {}\n      audience: tokenvend\n      leeway: 5s\n      refetch_interval: 200ms\n",
            self.url
        )
    }

    /// Publishes another key (a rotation), returning it.
    pub fn rotate(&self, kid: &str) -> SigningKey {
        let key = new_key();
        self.keys
            .lock()
            .unwrap()
            .push((kid.to_owned(), key.clone()));
        key
    }

    pub fn key(&self) -> SigningKey {
        self.keys.lock().unwrap()[0].1.clone()
    }

    /// Claims of a valid token for a service account, with `over` replacing any.
    pub fn claims(&self, namespace: &str, name: &str, over: Value) -> Value {
        let now = unix_now();
        let mut claims = json!({
            "iss": self.url, "aud": ["tokenvend"],
            "sub": format!("system:serviceaccount:{namespace}:{name}"),
            "iat": now, "nbf": now, "exp": now + 600,
            "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name}},
        });
        for (k, v) in over.as_object().unwrap() {
            claims[k] = v.clone();
        }
        claims
    }

    /// A valid token for a service account.
    pub fn token(&self, namespace: &str, name: &str) -> String {
        sign(
            &self.key(),
            json!({"alg": "ES256", "kid": "k1"}),
            &self.claims(namespace, name, json!({})),
        )
    }
}

impl Drop for SaIssuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A GetToken request carrying a bearer token.
pub fn with_bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}
