//! Mutual TLS on every link, and who is at the other end.
//!
//! Every Orrery certificate names its holder in one URI subject alternative
//! name, `orrery://ROLE/NAME`:
//! - `orrery://master/NAME`: a master replica (raft, the log service, and the
//!   server side of every client link);
//! - `orrery://agent/HOSTNAME`: the agent of one host;
//! - `orrery://client/NAME`: a framework, an operator, the CLI.
//!
//! The role is read from the certificate the peer proved it holds, so an
//! agent certificate cannot act as a master (the raft guard here refuses it;
//! clients refuse a server that is not a master during the handshake) nor as
//! another host's agent (the gateway compares the hostname).
//!
//! Lives in storage because raft is the lowest link: masters, agents, the CLI
//! and the tests all take their TLS from here, so there is one way to do it.
//!
//! Crates: rustls (through tonic's `tls-ring` and tokio-rustls) for TLS — a
//! memory-safe, audited stack with no OpenSSL to install; rcgen to make
//! certificates (`orrery certs`, `orrery dev`'s throwaway CA); x509-parser to
//! read the role back. Handshakes are done here rather than by tonic so that
//! a refused one is logged with the peer and the reason.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tonic::transport::{ClientTlsConfig, Endpoint};

use crate::Fatal;

/// The scheme of the URI SAN that names a certificate's holder.
pub const URI_SCHEME: &str = "orrery://";

/// How long a peer may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is at the other end of a link, from its certificate (or, for
/// clients, a bearer token).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Principal {
    Master(String),
    /// The agent of this hostname.
    Agent(String),
    Client(String),
}

impl Principal {
    pub fn role(&self) -> &'static str {
        match self {
            Principal::Master(_) => "master",
            Principal::Agent(_) => "agent",
            Principal::Client(_) => "client",
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Principal::Master(n) | Principal::Agent(n) | Principal::Client(n) => n,
        }
    }

    /// `orrery://ROLE/NAME`, as written in the certificate.
    pub fn uri(&self) -> String {
        format!("{URI_SCHEME}{}/{}", self.role(), self.name())
    }

    /// Parses `orrery://ROLE/NAME`; names are non-empty and printable, with
    /// no `/`.
    pub fn from_uri(uri: &str) -> Result<Principal, String> {
        let rest = uri
            .strip_prefix(URI_SCHEME)
            .ok_or_else(|| format!("{uri:?} does not start with {URI_SCHEME}"))?;
        let (role, name) = rest
            .split_once('/')
            .ok_or_else(|| format!("{uri:?} is not {URI_SCHEME}ROLE/NAME"))?;
        Principal::new(role, name)
    }

    /// A principal of `role` (master, agent, client) named `name`.
    pub fn new(role: &str, name: &str) -> Result<Principal, String> {
        if name.is_empty()
            || name.len() > 253
            || name.contains('/')
            || name.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(format!(
                "{name:?} is not a principal name (1 to 253 printable characters, no '/' or spaces)"
            ));
        }
        match role {
            "master" => Ok(Principal::Master(name.to_owned())),
            "agent" => Ok(Principal::Agent(name.to_owned())),
            "client" => Ok(Principal::Client(name.to_owned())),
            other => Err(format!("{other:?} is not a role (master, agent or client)")),
        }
    }

    /// The principal a certificate names: its one `orrery://` URI SAN.
    pub fn from_cert(der: &[u8]) -> Result<Principal, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("not an X.509 certificate: {e}"))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| format!("its subject alternative names do not parse: {e}"))?
            .ok_or("it has no subject alternative name naming an Orrery principal")?;
        let mut found = Vec::new();
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(uri) = name {
                if uri.starts_with(URI_SCHEME) {
                    found.push(Principal::from_uri(uri)?);
                }
            }
        }
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => Err(format!(
                "it names no Orrery principal (a {URI_SCHEME}ROLE/NAME URI SAN)"
            )),
            n => Err(format!("it names {n} Orrery principals; one is allowed")),
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.role(), self.name())
    }
}

/// The principal of a TLS peer, from the certificate tonic's connection
/// info carries in a request's extensions (None: no TLS, or no client
/// certificate).
pub fn peer_principal(extensions: &axum::http::Extensions) -> Option<Result<Principal, String>> {
    let info = extensions
        .get::<tonic::transport::server::TlsConnectInfo<tonic::transport::server::TcpConnectInfo>>(
        )?;
    let certs = info.peer_certs()?;
    let leaf = certs.first()?;
    Some(Principal::from_cert(leaf))
}

/// This process's TLS material: the CA it trusts, its certificate and key.
#[derive(Clone)]
pub struct Tls {
    ca: Vec<CertificateDer<'static>>,
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    cert_pem: String,
    key_pem: String,
    principal: Principal,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("principal", &self.principal)
            .finish_non_exhaustive()
    }
}

fn read(what: &str, path: &Path) -> Result<String, Fatal> {
    std::fs::read_to_string(path).map_err(|e| Fatal::Io {
        what: format!("the {what} {}", path.display()),
        detail: e.to_string(),
    })
}

fn refused(what: impl fmt::Display) -> Fatal {
    Fatal::Refused(what.to_string())
}

impl Tls {
    /// Loads the CA certificate(s), this process's certificate (chain) and
    /// its private key, all PEM. Errors name the file and the problem.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Tls, Fatal> {
        let ca_pem = read("CA certificate", ca)?;
        let cert_pem = read("certificate", cert)?;
        let key_pem = read("private key", key)?;
        Tls::from_pem(&ca_pem, &cert_pem, &key_pem).map_err(|e| match e {
            Fatal::Refused(m) => refused(format!(
                "TLS material ({}, {}, {}): {m}",
                ca.display(),
                cert.display(),
                key.display()
            )),
            other => other,
        })
    }

    pub fn from_pem(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Tls, Fatal> {
        let tls = Tls::from_pem_unchecked(ca_pem, cert_pem, key_pem)?;
        // Proves, now rather than at the first connection, that the
        // certificate is signed by the CA and valid today.
        tls.check_own_chain()?;
        Ok(tls)
    }

    /// As [`Tls::from_pem`] without checking that the certificate verifies
    /// against the CA today: the tests use it to present an expired or
    /// foreign certificate and watch the peer refuse it.
    pub fn from_pem_unchecked(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Tls, Fatal> {
        let ca = certs_of("the CA file", ca_pem)?;
        let mut roots = RootCertStore::empty();
        for c in &ca {
            roots
                .add(c.clone())
                .map_err(|e| refused(format!("the CA certificate is not usable: {e}")))?;
        }
        let chain = certs_of("the certificate file", cert_pem)?;
        let principal = Principal::from_cert(&chain[0])
            .map_err(|e| refused(format!("the certificate is not an Orrery one: {e}")))?;
        let tls = Tls {
            ca,
            roots: Arc::new(roots),
            chain,
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            principal,
        };
        // Proves the key parses and matches the certificate.
        tls.server_config(&[])?;
        Ok(tls)
    }

    fn key(&self) -> Result<PrivateKeyDer<'static>, Fatal> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| refused(format!("the private key file holds no usable PEM key: {e}")))
    }

    fn check_own_chain(&self) -> Result<(), Fatal> {
        let verifier = WebPkiClientVerifier::builder(self.roots.clone())
            .build()
            .map_err(|e| refused(format!("the CA certificate is not usable: {e}")))?;
        verifier
            .verify_client_cert(&self.chain[0], &self.chain[1..], UnixTime::now())
            .map(|_| ())
            .map_err(|e| {
                refused(format!(
                    "the certificate of {} does not verify against the CA: {e}",
                    self.principal
                ))
            })
    }

    /// Who this process is.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// The CA certificates, PEM-encoded.
    pub fn ca_pem(&self) -> String {
        self.ca
            .iter()
            .map(|c| pem_encode("CERTIFICATE", c))
            .collect()
    }

    /// A server config: this certificate; client certificates from the CA
    /// are verified when presented (expiry included) but optional, so a
    /// client may authenticate with a bearer token instead — requests
    /// without either are refused above TLS, where the refusal can say why.
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, Fatal> {
        let verifier = WebPkiClientVerifier::builder(self.roots.clone())
            .allow_unauthenticated()
            .build()
            .map_err(|e| refused(format!("the CA certificate is not usable: {e}")))?;
        let mut config = ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key()?)
            .map_err(|e| {
                refused(format!(
                    "the certificate and private key do not make a usable pair: {e}"
                ))
            })?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }

    /// A tonic endpoint to the master at `addr` (HOST:PORT), presenting this
    /// certificate and accepting only a master's.
    pub fn endpoint(&self, addr: &str) -> Result<Endpoint, String> {
        let host = host_of(addr)?;
        let inner = WebPkiServerVerifier::builder(self.roots.clone())
            .build()
            .map_err(|e| format!("the CA certificate is not usable: {e}"))?;
        let verifier = Arc::new(MastersOnly { inner });
        let identity = tonic::transport::Identity::from_pem(&self.cert_pem, &self.key_pem);
        Endpoint::from_shared(format!("https://{addr}"))
            .map_err(|e| format!("{addr:?} is not HOST:PORT: {e}"))?
            .tls_config_with_verifier(
                ClientTlsConfig::new()
                    .identity(identity)
                    .domain_name(host)
                    .assume_http2(true),
                verifier,
            )
            .map_err(|e| format!("TLS to {addr}: {e}"))
    }
}

fn host_of(addr: &str) -> Result<String, String> {
    if let Ok(sa) = addr.parse::<SocketAddr>() {
        return Ok(sa.ip().to_string());
    }
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("{addr:?} is not HOST:PORT"))?;
    port.parse::<u16>()
        .map_err(|_| format!("{addr:?} is not HOST:PORT"))?;
    Ok(host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned())
}

fn certs_of(what: &str, pem: &str) -> Result<Vec<CertificateDer<'static>>, Fatal> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| refused(format!("{what} is not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(refused(format!("{what} holds no PEM certificate")));
    }
    Ok(certs)
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(label, der.to_vec()))
}

/// A client's server verifier: the CA's usual checks (chain, expiry, the
/// address in the certificate), then the certificate must be a master's.
#[derive(Debug)]
struct MastersOnly {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for MastersOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        match Principal::from_cert(end_entity) {
            Ok(Principal::Master(_)) => Ok(ServerCertVerified::assertion()),
            Ok(other) => Err(rustls::Error::General(format!(
                "the server presented the certificate of {other}, not of a master"
            ))),
            Err(e) => Err(rustls::Error::General(format!(
                "the server's certificate is not an Orrery one: {e}"
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Whether `e` (or an error it wraps) is a TLS refusal over certificates
/// (an unknown CA, an expired or foreign certificate): retrying will not
/// help, unlike a refused connection.
pub fn is_certificate_refusal(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return matches!(
                r,
                rustls::Error::InvalidCertificate(_)
                    | rustls::Error::NoCertificatesPresented
                    | rustls::Error::AlertReceived(_)
                    | rustls::Error::General(_)
            );
        }
        // An io::Error's `source()` skips the error it wraps (tokio-rustls
        // wraps rustls' there): look inside.
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if is_certificate_refusal(inner) {
                return true;
            }
        }
        next = err.source();
    }
    false
}

/// A new bearer token: 256 random bits from the TLS stack's CSPRNG (ring),
/// hex.
pub fn random_token() -> Result<String, Fatal> {
    let mut bytes = [0u8; 32];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| refused("the system's random source failed"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A listener's connections after their TLS handshake. Each handshake runs
/// on its own task (a slow peer holds up no one) with a deadline; a refused
/// one is logged with the peer and rustls' reason (wrong CA, expired
/// certificate, not TLS). The accept loop stops, and the port is released,
/// when the receiver is dropped.
pub fn tls_incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    what: &'static str,
) -> mpsc::Receiver<TlsStream<TcpStream>> {
    let (tx, rx) = mpsc::channel::<TlsStream<TcpStream>>(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = tx.closed() => return,
                a = listener.accept() => a,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "{what}: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            crate::serve::set_tcp_keepalive(&stream);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(tls).await;
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(%peer, error = %e, "{what}: refused a TLS connection");
                    }
                    Err(_) => {
                        tracing::warn!(%peer, "{what}: refused a TLS connection: no handshake within {HANDSHAKE_TIMEOUT:?}");
                    }
                }
            });
        }
    });
    rx
}

/// Certificates: a CA, and certificates it issues to principals. Used by
/// `orrery certs`, by `orrery dev` (a throwaway CA) and by the tests.
pub mod pki {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SanType,
    };

    /// A certificate and its key, PEM.
    #[derive(Clone)]
    pub struct Pair {
        pub cert_pem: String,
        pub key_pem: String,
    }

    impl fmt::Debug for Pair {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("Pair { .. }")
        }
    }

    /// A certificate authority.
    #[derive(Clone, Debug)]
    pub struct Ca {
        pub pair: Pair,
    }

    /// When a certificate is valid: `from` and `until`, seconds from now
    /// (negative: in the past).
    #[derive(Clone, Copy, Debug)]
    pub struct Validity {
        pub from_secs: i64,
        pub until_secs: i64,
    }

    impl Validity {
        pub fn days(days: i64) -> Validity {
            Validity {
                // An hour back: a peer's clock a little behind still accepts it.
                from_secs: -3600,
                until_secs: days * 86_400,
            }
        }
    }

    fn err(e: rcgen::Error) -> String {
        e.to_string()
    }

    fn params(cn: &str, validity: Validity) -> Result<CertificateParams, String> {
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        p.distinguished_name.push(DnType::CommonName, cn);
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now + time::Duration::seconds(validity.from_secs);
        p.not_after = now + time::Duration::seconds(validity.until_secs);
        Ok(p)
    }

    impl Ca {
        /// A new CA named `name`.
        pub fn generate(name: &str, validity: Validity) -> Result<Ca, String> {
            let key = KeyPair::generate().map_err(err)?;
            let mut p = params(name, validity)?;
            p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            p.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            let cert = p.self_signed(&key).map_err(err)?;
            Ok(Ca {
                pair: Pair {
                    cert_pem: cert.pem(),
                    key_pem: key.serialize_pem(),
                },
            })
        }

        /// A CA from its certificate and key (PEM).
        pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, String> {
            let key = KeyPair::from_pem(key_pem).map_err(|e| format!("the CA key: {e}"))?;
            Issuer::from_ca_cert_pem(cert_pem, key)
                .map_err(|e| format!("the CA certificate: {e}"))?;
            Ok(Ca {
                pair: Pair {
                    cert_pem: cert_pem.to_owned(),
                    key_pem: key_pem.to_owned(),
                },
            })
        }

        /// A certificate for `principal`. `sans` are the DNS names and IP
        /// addresses a master is reached at (agents and clients need none).
        pub fn issue(
            &self,
            principal: &Principal,
            sans: &[String],
            validity: Validity,
        ) -> Result<Pair, String> {
            let ca_key =
                KeyPair::from_pem(&self.pair.key_pem).map_err(|e| format!("the CA key: {e}"))?;
            let issuer = Issuer::from_ca_cert_pem(&self.pair.cert_pem, ca_key)
                .map_err(|e| format!("the CA certificate: {e}"))?;
            let key = KeyPair::generate().map_err(err)?;
            let mut p = params(&principal.to_string(), validity)?;
            p.is_ca = IsCa::ExplicitNoCa;
            p.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            p.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            p.subject_alt_names.push(SanType::URI(
                principal.uri().try_into().map_err(|e| format!("{e}"))?,
            ));
            for s in sans {
                p.subject_alt_names.push(match s.parse::<IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName(
                        s.as_str()
                            .try_into()
                            .map_err(|e| format!("{s:?} is not a DNS name: {e}"))?,
                    ),
                });
            }
            let cert = p.signed_by(&key, &issuer).map_err(err)?;
            Ok(Pair {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
            })
        }

        /// The TLS material of a process holding `pair`.
        pub fn tls(&self, pair: &Pair) -> Result<Tls, Fatal> {
            Tls::from_pem(&self.pair.cert_pem, &pair.cert_pem, &pair.key_pem)
        }

        /// Issues a certificate for `principal` (valid a year; masters at
        /// 127.0.0.1 and localhost) and returns its TLS material: for tests
        /// and `orrery dev`.
        pub fn local(&self, principal: &Principal) -> Result<Tls, Fatal> {
            let sans = ["127.0.0.1".to_owned(), "localhost".to_owned()];
            let pair = self
                .issue(principal, &sans, Validity::days(365))
                .map_err(Fatal::Refused)?;
            self.tls(&pair)
        }
    }

    /// Writes `pem` to `path`, readable by the owner only when `secret`.
    pub fn write_pem(path: &Path, pem: &str, secret: bool) -> Result<(), Fatal> {
        use std::io::Write;
        let io = |e: std::io::Error| Fatal::Io {
            what: path.display().to_string(),
            detail: e.to_string(),
        };
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        if secret {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let _ = secret;
        let mut f = options.open(path).map_err(io)?;
        f.write_all(pem.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::pki::{Ca, Validity};
    use super::*;

    #[test]
    fn principal_uris_round_trip_and_bad_ones_are_named() {
        for p in [
            Principal::Master("m1".into()),
            Principal::Agent("host-7.dc1".into()),
            Principal::Client("alice".into()),
        ] {
            assert_eq!(Principal::from_uri(&p.uri()).unwrap(), p);
        }
        assert!(Principal::from_uri("orrery://root/x")
            .unwrap_err()
            .contains("not a role"));
        assert!(Principal::from_uri("orrery://client/")
            .unwrap_err()
            .contains("not a principal name"));
        assert!(Principal::from_uri("https://client/a").is_err());
    }

    #[test]
    fn an_issued_certificate_names_its_principal_and_loads() {
        let ca = Ca::generate("test CA", Validity::days(1)).unwrap();
        let p = Principal::Agent("h1".into());
        let pair = ca.issue(&p, &[], Validity::days(1)).unwrap();
        let tls = ca.tls(&pair).unwrap();
        assert_eq!(tls.principal(), &p);
        // The CA re-encoded is the CA.
        assert_eq!(
            certs_of("x", &tls.ca_pem()).unwrap(),
            certs_of("x", &ca.pair.cert_pem).unwrap()
        );
    }

    #[test]
    fn material_that_does_not_fit_is_refused_with_the_reason() {
        let ca = Ca::generate("a", Validity::days(1)).unwrap();
        let other = Ca::generate("b", Validity::days(1)).unwrap();
        let pair = ca
            .issue(&Principal::Client("c".into()), &[], Validity::days(1))
            .unwrap();
        let e = Tls::from_pem(&other.pair.cert_pem, &pair.cert_pem, &pair.key_pem)
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not verify against the CA"), "{e}");
        let other_pair = ca
            .issue(&Principal::Client("d".into()), &[], Validity::days(1))
            .unwrap();
        let e = Tls::from_pem(&ca.pair.cert_pem, &pair.cert_pem, &other_pair.key_pem)
            .unwrap_err()
            .to_string();
        assert!(e.contains("usable pair"), "{e}");
        let e = Tls::from_pem(&ca.pair.cert_pem, "junk", &pair.key_pem)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no PEM certificate"), "{e}");
        let expired = ca
            .issue(
                &Principal::Client("e".into()),
                &[],
                Validity {
                    from_secs: -7200,
                    until_secs: -3600,
                },
            )
            .unwrap();
        let e = Tls::from_pem(&ca.pair.cert_pem, &expired.cert_pem, &expired.key_pem)
            .unwrap_err()
            .to_string();
        assert!(e.contains("Expired") || e.contains("expired"), "{e}");
    }
}
