//! Just enough DER to read the private keys people actually have and to fix the names in a
//! certificate rcgen cannot express; no general ASN.1 here. PEM itself is the `pem` crate's.

use rcgen::{KeyPair, SigningKey};

/// OID 1.2.840.10045.2.1 (id-ecPublicKey), DER encoded.
const OID_EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// OID 1.2.840.10045.3.1.7 (P-256) and 1.3.132.0.34 (P-384), DER encoded.
const OID_CURVES: [&[u8]; 2] = [
    &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
    &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22],
];
/// AlgorithmIdentifier { rsaEncryption, NULL }, DER encoded.
const ALG_RSA: &[u8] = &[
    0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
];
/// OIDs of the name attributes we write: organizationName and commonName.
const OID_O: &[u8] = &[0x06, 0x03, 0x55, 0x04, 0x0a];
const OID_CN: &[u8] = &[0x06, 0x03, 0x55, 0x04, 0x03];

const TAG_SEQUENCE: u8 = 0x30;
const TAG_SET: u8 = 0x31;

/// One DER element: tag, definite length, content.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// Header length and content length of the DER element at the start of `buf`.
fn header(buf: &[u8]) -> Option<(usize, usize)> {
    let first = *buf.get(1)?;
    if first < 0x80 {
        return Some((2, first as usize));
    }
    let n = (first & 0x7f) as usize;
    if n == 0 || n > 4 {
        return None;
    }
    let mut len = 0usize;
    for i in 0..n {
        len = (len << 8) | *buf.get(2 + i)? as usize;
    }
    Some((2 + n, len))
}

/// PEM text with 64-column lines and `\n` line ends, as openssl and Go write it.
pub(super) fn to_pem(label: &str, der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new(label, der), config)
}

/// Every PEM block in `text`, decoded; text around the blocks is ignored.
fn blocks(text: &str) -> Result<Vec<pem::Pem>, String> {
    pem::parse_many(text).map_err(|e| format!("invalid PEM: {e}"))
}

/// DER of the first block labelled `label` in `text`.
pub(super) fn first_block(text: &str, label: &str) -> Result<Vec<u8>, String> {
    blocks(text)?
        .into_iter()
        .find(|block| block.tag() == label)
        .map(pem::Pem::into_contents)
        .ok_or_else(|| format!("no PEM block {label:?} found"))
}

/// Parses a private key in any of the forms `openssl` writes: PKCS#8 (`PRIVATE KEY`), SEC1
/// (`EC PRIVATE KEY`, possibly after an `EC PARAMETERS` block) or PKCS#1 (`RSA PRIVATE KEY`).
/// ring only reads PKCS#8, so the other two are wrapped into PKCS#8 first; that way a user who
/// brings their own CA does not have to convert its key.
pub(super) fn parse_private_key(text: &str) -> Result<KeyPair, String> {
    for block in blocks(text)? {
        match block.tag() {
            "PRIVATE KEY" => {
                return KeyPair::try_from(block.contents())
                    .map_err(|e| format!("unsupported or corrupt PKCS#8 key: {e}"));
            }
            "EC PRIVATE KEY" => {
                // The curve is not known without parsing the SEC1 structure; ring rejects a
                // wrapper naming the wrong curve, so trying each supported one is enough.
                return OID_CURVES
                    .iter()
                    .find_map(|curve| {
                        let alg = tlv(TAG_SEQUENCE, &[OID_EC_PUBLIC_KEY, curve].concat());
                        KeyPair::try_from(pkcs8(&alg, block.contents())).ok()
                    })
                    .ok_or_else(|| "EC key is corrupt or not on P-256 / P-384".to_string());
            }
            "RSA PRIVATE KEY" => {
                return KeyPair::try_from(pkcs8(ALG_RSA, block.contents()))
                    .map_err(|e| format!("unsupported or corrupt RSA key: {e}"));
            }
            "EC PARAMETERS" => continue,
            "ENCRYPTED PRIVATE KEY" => {
                return Err("encrypted private keys are not supported".into());
            }
            other => {
                return Err(format!(
                    "unexpected PEM block {other:?} where a private key belongs"
                ));
            }
        }
    }
    Err("no private key found".into())
}

/// PrivateKeyInfo { version 0, algorithm, privateKey OCTET STRING }.
fn pkcs8(algorithm: &[u8], private_key: &[u8]) -> Vec<u8> {
    let version = [0x02, 0x01, 0x00];
    let key = tlv(0x04, private_key);
    tlv(TAG_SEQUENCE, &[&version[..], algorithm, &key].concat())
}

/// A Name of organizations then common name, one attribute per RDN, the order Go's crypto/x509
/// (and so kubeadm) uses.
pub(super) fn name(common_name: &str, organizations: &[String]) -> Vec<u8> {
    let attribute = |oid: &[u8], value: &str| {
        let atv = tlv(TAG_SEQUENCE, &[oid, &tlv(0x0c, value.as_bytes())].concat());
        tlv(TAG_SET, &atv)
    };
    let mut rdns: Vec<u8> = organizations
        .iter()
        .flat_map(|o| attribute(OID_O, o))
        .collect();
    rdns.extend(attribute(OID_CN, common_name));
    tlv(TAG_SEQUENCE, &rdns)
}

/// Replaces the issuer and/or subject Name of a certificate and signs it again. rcgen keeps at
/// most one value per attribute type, which cannot express several `O` (Kubernetes groups) nor
/// reproduce every CA subject byte for byte; openssl and Go chain certificates by comparing the
/// issuer bytes with the CA subject bytes, so those cases are fixed up here.
pub(super) fn rewrite_names(
    cert_der: &[u8],
    issuer: Option<&[u8]>,
    subject: Option<&[u8]>,
    signer: &impl SigningKey,
) -> Result<Vec<u8>, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).map_err(|e| e.to_string())?;
    let tbs: &[u8] = cert.tbs_certificate.as_ref();
    let (tbs_header, _) = header(tbs).ok_or("bad TBSCertificate header")?;
    let offset = |part: &[u8]| part.as_ptr() as usize - tbs.as_ptr() as usize;
    let old_issuer = cert.issuer().as_raw();
    let old_subject = cert.subject().as_raw();
    let (issuer_at, subject_at) = (offset(old_issuer), offset(old_subject));
    let mut content = Vec::with_capacity(tbs.len() + 128);
    content.extend_from_slice(&tbs[tbs_header..issuer_at]);
    content.extend_from_slice(issuer.unwrap_or(old_issuer));
    content.extend_from_slice(&tbs[issuer_at + old_issuer.len()..subject_at]);
    content.extend_from_slice(subject.unwrap_or(old_subject));
    content.extend_from_slice(&tbs[subject_at + old_subject.len()..]);
    let new_tbs = tlv(TAG_SEQUENCE, &content);

    // The signature AlgorithmIdentifier follows the TBS in the outer SEQUENCE; reuse its bytes.
    let (outer_header, _) = header(cert_der).ok_or("bad Certificate header")?;
    let rest = &cert_der[outer_header + tbs.len()..];
    let (alg_header, alg_len) = header(rest).ok_or("bad AlgorithmIdentifier header")?;
    let algorithm = &rest[..alg_header + alg_len];

    let signature = signer.sign(&new_tbs).map_err(|e| e.to_string())?;
    let bits = tlv(0x03, &[&[0u8][..], &signature].concat());
    Ok(tlv(
        TAG_SEQUENCE,
        &[&new_tbs[..], algorithm, &bits].concat(),
    ))
}
