//! A throwaway certificate authority and a server certificate for `127.0.0.1`/`localhost`, written as PEM files,
//! with clients (HTTP, WebSocket, Redis) that trust only that authority.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// A test CA and one server certificate signed by it, in a temporary directory removed on drop.
#[derive(Debug)]
pub struct TestCert {
    dir: tempfile::TempDir,
    client: Arc<rustls::ClientConfig>,
}

impl TestCert {
    /// Generates the CA and the server certificate (subject alternative names `127.0.0.1` and `localhost`).
    pub fn new() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "CES test CA");
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate()?;
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let cert = params.signed_by(&key, &issuer)?;
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem())?;
        std::fs::write(dir.path().join("cert.pem"), cert.pem())?;
        std::fs::write(dir.path().join("key.pem"), key.serialize_pem())?;

        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_cert.der().clone())?;
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Self {
            dir,
            client: Arc::new(client),
        })
    }

    /// The CA certificate (PEM): what clients trust.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The server certificate (PEM).
    pub fn cert_file(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    /// The server certificate's private key (PEM, PKCS#8).
    pub fn key_file(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }

    /// The directory of the three files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A rustls client configuration trusting only the test CA.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        self.client.clone()
    }

    /// One HTTPS request (`Connection: close`) to `url`, trusting only the test CA: the status and the body.
    pub async fn request(
        &self,
        method: &str,
        url: &str,
        bearer: Option<&str>,
    ) -> anyhow::Result<(u16, String)> {
        use http_body_util::{BodyExt as _, Empty};
        let uri: hyper::Uri = url.parse().with_context(|| format!("url {url}"))?;
        let host = uri.host().context("url without host")?.to_owned();
        let port = uri.port_u16().unwrap_or(443);
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
        let name = rustls_pki_types::ServerName::try_from(host.clone())?;
        let tls = tokio_rustls::TlsConnector::from(self.client.clone())
            .connect(name, tcp)
            .await
            .with_context(|| format!("TLS handshake with {host}:{port}"))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
        tokio::spawn(connection);
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
            .header("host", format!("{host}:{port}"))
            .header("connection", "close");
        if let Some(token) = bearer {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let response = sender
            .send_request(request.body(Empty::<bytes::Bytes>::new())?)
            .await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// `POST <base>/v1/sessions` over HTTPS.
    pub async fn register(&self, base: &str) -> anyhow::Result<crate::client::Registered> {
        let (status, body) = self
            .request("POST", &format!("{base}/v1/sessions"), None)
            .await?;
        anyhow::ensure!(status == 201, "POST /v1/sessions answered {status}: {body}");
        Ok(serde_json::from_str(&body)?)
    }

    /// A `wss://` connector trusting only the test CA.
    pub fn ws_connector(&self) -> tokio_tungstenite::Connector {
        tokio_tungstenite::Connector::Rustls(self.client.clone())
    }
}
