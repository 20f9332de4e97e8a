//! `bottle-test-ca DIR HOST...`: writes a test CA (`DIR/ca.pem`, `DIR/ca.key`) and, for each
//! HOST, a leaf certificate signed by it (`DIR/<host>.pem`, `DIR/<host>.key`) whose only SAN is
//! that name (a DNS name, or an IP address if HOST parses as one).
//!
//! When `DIR/ca.pem` and `DIR/ca.key` already exist the CA is reused, so hosts can be added by
//! later runs and earlier leaves stay valid; leaf files are always overwritten. Prints nothing on
//! success.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use rcgen::{
    date_time_ymd, BasicConstraints, Certificate, CertificateParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};

const CA_NAME: &str = "bottle test CA";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 || args.iter().any(|a| a == "-h" || a == "--help") {
        eprintln!("usage: bottle-test-ca DIR HOST...");
        return ExitCode::from(2);
    }
    match run(Path::new(&args[0]), &args[1..]) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bottle-test-ca: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(dir: &Path, hosts: &[String]) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (ca_cert, ca_key) = ca(dir)?;
    for host in hosts {
        if host.is_empty() || host.contains('/') || host.starts_with('.') {
            bail!("{host:?} is not a usable host name");
        }
        let key = KeyPair::generate().context("generating a leaf key")?;
        let mut params = CertificateParams::new(vec![host.clone()])
            .with_context(|| format!("{host:?} is not a valid subject alternative name"))?;
        params
            .distinguished_name
            .push(DnType::CommonName, host.as_str());
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(2049, 12, 31);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &ca_cert, &ca_key)
            .with_context(|| format!("signing the certificate for {host}"))?;
        write(&dir.join(format!("{host}.pem")), &cert.pem(), 0o644)?;
        write(
            &dir.join(format!("{host}.key")),
            &key.serialize_pem(),
            0o600,
        )?;
    }
    Ok(())
}

/// The CA certificate and key: loaded from `dir` when both files exist, otherwise created.
fn ca(dir: &Path) -> Result<(Certificate, KeyPair)> {
    let cert_path = dir.join("ca.pem");
    let key_path = dir.join("ca.key");
    let existing = cert_path.exists() && key_path.exists();
    let key = if existing {
        let pem = fs::read_to_string(&key_path)
            .with_context(|| format!("reading {}", key_path.display()))?;
        KeyPair::from_pem(&pem).with_context(|| format!("parsing {}", key_path.display()))?
    } else {
        KeyPair::generate().context("generating the CA key")?
    };
    // Leaves only take the issuer's name and key identifier (derived from its public key) from
    // this certificate, so rebuilding it from the same parameters and key yields leaves that
    // chain to the ca.pem already on disk.
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "bottle tests");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = date_time_ymd(2020, 1, 1);
    params.not_after = date_time_ymd(2049, 12, 31);
    let cert = params.self_signed(&key).context("self-signing the CA")?;
    if !existing {
        write(&key_path, &key.serialize_pem(), 0o600)?;
        write(&cert_path, &cert.pem(), 0o644)?;
    }
    Ok((cert, key))
}

/// Replaces `path` with `contents` (written to a temporary file, then renamed).
fn write(path: &Path, contents: &str, mode: u32) -> Result<()> {
    let mut tmp = PathBuf::from(path);
    tmp.as_mut_os_string().push(".tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", tmp.display()))?;
    drop(file);
    fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}
