//! A private CA and a server certificate for loopback, written as PEM files.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};

pub struct CertFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Creates `ca.crt`, `server.crt` and `server.key` in `dir` for `hosts` (DNS names or
/// IP addresses). Each call makes a new CA, so tests can check rotation.
pub fn generate(dir: &Path, prefix: &str, hosts: &[&str]) -> Result<CertFiles, String> {
    let err = |e: rcgen::Error| format!("certificate generation failed: {e}");
    let ca_key = KeyPair::generate().map_err(err)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("pgward {prefix} test CA"));
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(err)?;

    let server_key = KeyPair::generate().map_err(err)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    params.distinguished_name.push(
        DnType::CommonName,
        hosts.first().copied().unwrap_or("localhost"),
    );
    for h in hosts {
        params.subject_alt_names.push(match h.parse() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName((*h).try_into().map_err(err)?),
        });
    }
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let server_cert = params.signed_by(&server_key, &issuer).map_err(err)?;

    let files = CertFiles {
        ca: dir.join(format!("{prefix}-ca.crt")),
        cert: dir.join(format!("{prefix}-server.crt")),
        key: dir.join(format!("{prefix}-server.key")),
    };
    let write = |p: &Path, s: String| {
        std::fs::write(p, s).map_err(|e| format!("cannot write {}: {e}", p.display()))
    };
    write(&files.ca, ca_cert.pem())?;
    write(&files.cert, server_cert.pem())?;
    write(&files.key, server_key.serialize_pem())?;
    Ok(files)
}
