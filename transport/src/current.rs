//! The credentials a process presents right now, shared by every TLS configuration it built:
//! the QUIC server and clients of an [`crate::Endpoint`] and the API listener. Renewing a
//! certificate replaces them here once, and the next handshake on any of them presents the new
//! certificate; connections already open keep theirs.

use std::sync::{Arc, RwLock};

use rustls::client::ResolvesClientCert;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{SignatureScheme, crypto::CryptoProvider};

use crate::ca::Credentials;
use crate::identity::PeerIdentity;

/// The credentials a process presents now ([module docs](self)).
#[derive(Clone, Debug)]
pub struct CurrentCredentials(Arc<RwLock<Presented>>);

#[derive(Debug)]
struct Presented {
    creds: Credentials,
    certified: Arc<CertifiedKey>,
}

fn certified(
    creds: &Credentials,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, rustls::Error> {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(creds.key_pkcs8_der().to_vec()));
    let signing = provider.key_provider.load_private_key(key)?;
    let chain = vec![creds.cert_der().clone(), creds.ca_cert_der().clone()];
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

impl CurrentCredentials {
    /// Starts with `creds`.
    ///
    /// # Errors
    /// The key is not one the crypto provider can sign with.
    pub fn new(creds: &Credentials) -> Result<Self, rustls::Error> {
        let certified = certified(creds, &crate::tls::provider())?;
        Ok(Self(Arc::new(RwLock::new(Presented {
            creds: creds.clone(),
            certified,
        }))))
    }

    /// Presents `creds` from the next handshake on.
    ///
    /// # Errors
    /// The key is not one the crypto provider can sign with (nothing changes then).
    pub fn replace(&self, creds: &Credentials) -> Result<(), rustls::Error> {
        let certified = certified(creds, &crate::tls::provider())?;
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Presented {
            creds: creds.clone(),
            certified,
        };
        Ok(())
    }

    /// The credentials presented now.
    pub fn get(&self) -> Credentials {
        self.read().creds.clone()
    }

    /// The identity of the certificate presented now.
    pub fn identity(&self) -> PeerIdentity {
        self.read().creds.identity().clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Presented> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    fn certified(&self) -> Arc<CertifiedKey> {
        self.read().certified.clone()
    }
}

impl ResolvesServerCert for CurrentCredentials {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.certified())
    }
}

impl ResolvesClientCert for CurrentCredentials {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.certified())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
