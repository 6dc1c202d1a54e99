//! rustls configuration: TLS 1.3 only, mutual authentication with self-signed
//! certificates. There is no certificate authority: a certificate is accepted when it
//! parses, and the handshake signature proves that the peer holds its key. The peer id is
//! then derived from that key, so the id a connection gets is bound to the key that
//! signed its handshake.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use lanspread_proto::{ALPN, DATA_ALPN};

use crate::{Identity, TransferError};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Server-side rustls config: requires a client certificate.
pub(crate) fn server_config(id: &Identity) -> Result<rustls::ServerConfig, TransferError> {
    let provider = provider();
    let verifier = Arc::new(PeerVerifier::new(&provider));
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TransferError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![id.cert()], id.private_key())
        .map_err(|e| TransferError::Tls(e.to_string()))?;
    cfg.alpn_protocols = vec![ALPN.to_vec(), DATA_ALPN.to_vec()];
    cfg.max_early_data_size = 0;
    Ok(cfg)
}

/// Client-side rustls config: presents our certificate, accepts any well-formed peer
/// certificate whose key signs the handshake.
pub(crate) fn client_config(
    id: &Identity,
    alpn: &[u8],
) -> Result<rustls::ClientConfig, TransferError> {
    let provider = provider();
    let verifier = Arc::new(PeerVerifier::new(&provider));
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TransferError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![id.cert()], id.private_key())
        .map_err(|e| TransferError::Tls(e.to_string()))?;
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Ok(cfg)
}

#[derive(Debug)]
struct PeerVerifier {
    algs: WebPkiSupportedAlgorithms,
}

impl PeerVerifier {
    fn new(provider: &CryptoProvider) -> Self {
        Self {
            algs: provider.signature_verification_algorithms,
        }
    }

    fn check(cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        crate::identity::peer_id_of_cert(cert)
            .map(|_| ())
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))
    }
}

/// The handshake-signature half of both verifier traits, which is the same on both
/// sides: TLS 1.3 only (QUIC), signatures checked against the presented certificate's key.
macro_rules! signature_checks {
    () => {
        fn verify_tls12_signature(
            &self,
            _msg: &[u8],
            _cert: &CertificateDer<'_>,
            _dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Err(rustls::Error::PeerIncompatible(
                rustls::PeerIncompatible::Tls13RequiredForQuic,
            ))
        }

        fn verify_tls13_signature(
            &self,
            msg: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(msg, cert, dss, &self.algs)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algs.supported_schemes()
        }
    };
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Self::check(end_entity).map(|()| ServerCertVerified::assertion())
    }

    signature_checks!();
}

impl ClientCertVerifier for PeerVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Self::check(end_entity).map(|()| ClientCertVerified::assertion())
    }

    signature_checks!();
}
