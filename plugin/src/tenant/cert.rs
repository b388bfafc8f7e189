//! Names a TLS client certificate presents, for mapping mTLS clients to
//! tenants: the subject's common names and the SAN DNS and URI names.

use x509_cert::Certificate;
use x509_cert::der::asn1::{Ia5StringRef, PrintableStringRef, Utf8StringRef};
use x509_cert::der::{Decode, oid::db::rfc4519};
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::pkix::name::GeneralName;

/// The names in a DER certificate; empty if it does not parse.
pub fn names(der: &[u8]) -> Vec<String> {
    let Ok(cert) = Certificate::from_der(der) else { return Vec::new() };
    let mut out = Vec::new();
    for rdn in cert.tbs_certificate.subject.0.iter() {
        for atv in rdn.0.iter() {
            if atv.oid == rfc4519::CN {
                let v = &atv.value;
                let s = Utf8StringRef::try_from(v)
                    .map(|s| s.as_str().to_string())
                    .or_else(|_| PrintableStringRef::try_from(v).map(|s| s.as_str().to_string()))
                    .or_else(|_| Ia5StringRef::try_from(v).map(|s| s.as_str().to_string()));
                if let Ok(s) = s {
                    out.push(s);
                }
            }
        }
    }
    if let Ok(Some((_, san))) = cert.tbs_certificate.get::<SubjectAltName>() {
        for name in san.0 {
            match name {
                GeneralName::DnsName(n) => out.push(n.as_str().to_string()),
                GeneralName::UniformResourceIdentifier(u) => out.push(u.as_str().to_string()),
                _ => {}
            }
        }
    }
    out
}
