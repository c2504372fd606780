//! Test certificates: a CA and a server certificate it signed for `localhost` and
//! 127.0.0.1 (rcgen), and a second, unrelated CA.

pub(crate) struct Pki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

fn ca() -> (rcgen::CertificateParams, rcgen::KeyPair, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "aof-client test CA");
    let pem = params.self_signed(&key).unwrap().pem();
    (params, key, pem)
}

/// A CA and a server certificate for `localhost` / 127.0.0.1 signed by it.
pub(crate) fn pki() -> Pki {
    let (params, ca_key, ca_pem) = ca();
    let issuer = rcgen::Issuer::new(params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    Pki {
        ca_pem,
        cert_pem: leaf.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// The PEM of a CA that signed nothing the servers present.
pub(crate) fn other_ca_pem() -> String {
    ca().2
}
