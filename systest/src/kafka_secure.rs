//! A broker of a test's own with a second listener that takes only TLS and SASL (`SASL_SSL`, mechanism `PLAIN`):
//! its certificate is signed by a throwaway CA ([`TestCert`]) and one user is known. The plain listener stays for
//! readiness checks and for test set-up and read-back.

use std::sync::Mutex;

use crate::tls::TestCert;
use crate::{Broker, free_port};

/// A broker whose `SASL_SSL` listener is at [`SecureBroker::secure_bootstrap`].
#[derive(Debug)]
pub struct SecureBroker {
    /// The broker; its [`Broker::bootstrap`] is the plain listener.
    pub broker: Broker,
    secure: String,
    cert: TestCert,
    user: String,
    password: String,
}

impl SecureBroker {
    /// Starts a broker that knows `user` with `password` on its `SASL_SSL` listener.
    pub async fn start(user: &str, password: &str) -> anyhow::Result<Self> {
        let cert = TestCert::new()?;
        // A PEM key store: the private key (PKCS#8, unencrypted) and the certificate, in one file.
        let keystore = cert.dir().join("keystore.pem");
        std::fs::write(
            &keystore,
            std::fs::read_to_string(cert.key_file())? + &std::fs::read_to_string(cert.cert_file())?,
        )?;
        let chosen = Mutex::new(0u16);
        let broker = Broker::own_with(|port, controller| {
            let secure = free_port();
            *chosen.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = secure;
            format!(
                "listeners=PLAINTEXT://127.0.0.1:{port},SASL_SSL://127.0.0.1:{secure},CONTROLLER://127.0.0.1:{controller}\n\
                 advertised.listeners=PLAINTEXT://127.0.0.1:{port},SASL_SSL://127.0.0.1:{secure}\n\
                 listener.security.protocol.map=PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT\n\
                 sasl.enabled.mechanisms=PLAIN\n\
                 listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule \
                 required user_{user}=\"{password}\";\n\
                 listener.name.sasl_ssl.ssl.keystore.type=PEM\n\
                 listener.name.sasl_ssl.ssl.keystore.location={}\n",
                keystore.display()
            )
        })
        .await?;
        let secure = format!(
            "127.0.0.1:{}",
            *chosen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        );
        Ok(Self {
            broker,
            secure,
            cert,
            user: user.to_owned(),
            password: password.to_owned(),
        })
    }

    /// `host:port` of the `SASL_SSL` listener.
    pub fn secure_bootstrap(&self) -> String {
        self.secure.clone()
    }

    /// The `CES_KAFKA_PROP_*` variables of a client of the `SASL_SSL` listener: protocol, mechanism, user,
    /// password and the CA to trust.
    pub fn client_env(&self) -> Vec<(String, String)> {
        [
            ("CES_KAFKA_PROP_SECURITY_PROTOCOL", "sasl_ssl".to_owned()),
            ("CES_KAFKA_PROP_SASL_MECHANISM", "PLAIN".to_owned()),
            ("CES_KAFKA_PROP_SASL_USERNAME", self.user.clone()),
            ("CES_KAFKA_PROP_SASL_PASSWORD", self.password.clone()),
            (
                "CES_KAFKA_PROP_SSL_CA_LOCATION",
                self.cert.ca_file().display().to_string(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
}
