//! A bottle's own certificate authority, and the leaf certificates it mints for allowlisted
//! names. The CA key never leaves the host (0600, root only); the CA certificate is what the
//! launcher installs inside the bottle.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::crypto::ring::sign::any_supported_type;
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// File names in the bottle's state directory.
pub const CA_CERT_FILE: &str = "ca.crt";
pub const CA_KEY_FILE: &str = "ca.key";

/// Leaves minted per CA before the cache is cleared (bounded memory per bottle).
const LEAF_CACHE_MAX: usize = 512;
/// Leaf lifetime; re-minted when less than a day remains.
const LEAF_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot read or write {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS key not usable: {0}")]
    Key(#[from] rustls::Error),
}

pub type Result<T> = std::result::Result<T, CaError>;

struct CachedLeaf {
    key: Arc<CertifiedKey>,
    not_after: SystemTime,
}

pub struct BottleCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    leaves: Mutex<HashMap<String, CachedLeaf>>,
}

impl std::fmt::Debug for BottleCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BottleCa").finish_non_exhaustive()
    }
}

/// The CA's parameters are a function of the bottle id, so the issuer can be rebuilt from the
/// stored key after a restart and keep signing leaves that chain to the stored certificate.
fn ca_params(bottle_id: &str) -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("bottle {bottle_id} egress CA"));
    dn.push(DnType::OrganizationName, "bottle");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + CA_LIFETIME;
    Ok(params)
}

fn write_file(path: &Path, contents: &str, mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| CaError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    f.write_all(contents.as_bytes()).map_err(err)
}

impl BottleCa {
    /// Makes a new CA and stores it in `dir` (key 0600).
    pub fn create(dir: &Path, bottle_id: &str) -> Result<Self> {
        let key = KeyPair::generate()?;
        let params = ca_params(bottle_id)?;
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        write_file(&dir.join(CA_KEY_FILE), &key.serialize_pem(), 0o600)?;
        write_file(&dir.join(CA_CERT_FILE), &cert_pem, 0o644)?;
        Ok(Self {
            issuer: Issuer::new(params, key),
            cert_pem,
            leaves: Mutex::new(HashMap::new()),
        })
    }

    /// Loads the CA stored in `dir`.
    pub fn load(dir: &Path, bottle_id: &str) -> Result<Self> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| CaError::Io {
                path: path.display().to_string(),
                source,
            })
        };
        let key = KeyPair::from_pem(&read(CA_KEY_FILE)?)?;
        let cert_pem = read(CA_CERT_FILE)?;
        Ok(Self {
            issuer: Issuer::new(ca_params(bottle_id)?, key),
            cert_pem,
            leaves: Mutex::new(HashMap::new()),
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A leaf for `name`, from the cache or freshly minted.
    pub fn leaf(&self, name: &str) -> Result<Arc<CertifiedKey>> {
        let now = SystemTime::now();
        if let Ok(cache) = self.leaves.lock() {
            if let Some(leaf) = cache.get(name) {
                if leaf.not_after > now + Duration::from_secs(24 * 3600) {
                    return Ok(leaf.key.clone());
                }
            }
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![name.to_string()])?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let t = time::OffsetDateTime::now_utc();
        params.not_before = t - time::Duration::hours(1);
        params.not_after = t + LEAF_LIFETIME;
        let cert = params.signed_by(&key, &self.issuer)?;
        let der_key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signing = any_supported_type(&der_key)?;
        let certified = Arc::new(CertifiedKey::new(
            vec![CertificateDer::from(cert.der().to_vec())],
            signing,
        ));
        if let Ok(mut cache) = self.leaves.lock() {
            if cache.len() >= LEAF_CACHE_MAX {
                cache.clear();
            }
            cache.insert(
                name.to_string(),
                CachedLeaf {
                    key: certified.clone(),
                    not_after: now + LEAF_LIFETIME,
                },
            );
        }
        Ok(certified)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use rustls::client::danger::ServerCertVerifier;

    use super::*;

    #[test]
    fn create_load_and_mint_leaves_that_chain() {
        let dir = tempfile::tempdir().unwrap();
        let ca = BottleCa::create(dir.path(), "0a0b0c0d").unwrap();
        let mode = std::fs::metadata(dir.path().join(CA_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let leaf = ca.leaf("api.example.com").unwrap();
        assert!(
            Arc::ptr_eq(&leaf, &ca.leaf("api.example.com").unwrap()),
            "cached"
        );

        // After a restart the reloaded CA signs leaves that verify against the stored cert.
        let reloaded = BottleCa::load(dir.path(), "0a0b0c0d").unwrap();
        assert_eq!(reloaded.cert_pem(), ca.cert_pem());
        let leaf = reloaded.leaf("api.example.com").unwrap();
        let mut roots = rustls::RootCertStore::empty();
        let ca_der =
            rustls_pki_types::pem::PemObject::from_pem_slice(ca.cert_pem().as_bytes()).unwrap();
        roots.add(ca_der).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let name = rustls_pki_types::ServerName::try_from("api.example.com").unwrap();
        verifier
            .verify_server_cert(
                &leaf.cert[0],
                &[],
                &name,
                &[],
                rustls_pki_types::UnixTime::now(),
            )
            .unwrap();
        let other = rustls_pki_types::ServerName::try_from("evil.example.com").unwrap();
        assert!(verifier
            .verify_server_cert(
                &leaf.cert[0],
                &[],
                &other,
                &[],
                rustls_pki_types::UnixTime::now()
            )
            .is_err());
    }
}
