//! An https front for a test server: a private certificate authority made at start (rcgen),
//! a certificate for 127.0.0.1 and localhost signed by it, and rustls on 127.0.0.1 passing each
//! request on to a plain HTTP server. The CA is trusted by nothing until a test says so.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// A running https front; `url` replaces the backend's `http://host:port` prefix.
pub struct TlsFront {
    /// `https://127.0.0.1:<port>`.
    pub origin: String,
    /// The private CA's certificate, PEM.
    pub ca_pem: String,
}

/// A CA certificate (PEM) and the issuer that signs with it.
fn private_ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), Issuer::new(params, key))
}

/// The PEM certificate of a CA unrelated to any front (for "wrong CA" tests).
pub fn another_ca_pem() -> String {
    private_ca("gn2pg test: some other CA").0
}

impl TlsFront {
    /// Serves https on 127.0.0.1 in front of `backend` for at most `max_connections`
    /// connections (each carries one request: the backend is asked to close after it).
    pub fn start(backend: SocketAddr, max_connections: usize) -> TlsFront {
        let (ca_pem, issuer) = private_ca("gn2pg test private CA");
        let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        leaf.distinguished_name.push(rcgen::DnType::CommonName, "127.0.0.1");
        let leaf_key = KeyPair::generate().unwrap();
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf_cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
            )
            .unwrap();
        let config = Arc::new(config);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let origin = format!("https://{}", l.local_addr().unwrap());
        std::thread::spawn(move || {
            for conn in l.incoming().take(max_connections) {
                let Ok(tcp) = conn else { return };
                let config = config.clone();
                std::thread::spawn(move || {
                    let Ok(tls) = rustls::ServerConnection::new(config) else { return };
                    let _ = relay(rustls::StreamOwned::new(tls, tcp), backend);
                });
            }
        });
        TlsFront { origin, ca_pem }
    }
}

/// Reads one request from the client, has the backend answer it (and close), sends the answer
/// back. A client that refuses the certificate ends it at the handshake (an error here).
fn relay(
    mut client: rustls::StreamOwned<rustls::ServerConnection, TcpStream>,
    backend: SocketAddr,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut len = 0usize;
    {
        let mut rd = BufReader::new(&mut client);
        // Bounded by the request's header lines.
        for _ in 0..200 {
            let mut line = String::new();
            if rd.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
            if lower.starts_with("connection:") {
                continue;
            }
            if line == "\r\n" {
                head.extend_from_slice(b"Connection: close\r\n\r\n");
                break;
            }
            head.extend_from_slice(line.as_bytes());
        }
        let mut body = vec![0; len];
        rd.read_exact(&mut body)?;
        head.extend_from_slice(&body);
    }
    let mut up = TcpStream::connect(backend)?;
    up.write_all(&head)?;
    let mut answer = Vec::new();
    up.read_to_end(&mut answer)?;
    client.write_all(&answer)?;
    client.conn.send_close_notify();
    client.flush()
}
