//! Checks bytes against the CID they were fetched by, where the CID's form
//! names their digest directly: a CIDv1 of a raw block (codec 0x55) with a
//! SHA2-256, BLAKE3 or identity multihash, in base32 (`b...`), which is what
//! `add --cid-version=1 --raw-leaves` gives a file of one block, such as a
//! manifest or placement. A DAG-PB CID (CIDv0 `Qm...`, codec 0x70) names a
//! UnixFS graph, not the bytes, and is not checked here: what it carries is
//! checked by its signature or BLAKE3 by the caller.

use sha2::Digest;

const CODEC_RAW: u64 = 0x55;
const HASH_IDENTITY: u64 = 0x00;
const HASH_SHA2_256: u64 = 0x12;
const HASH_BLAKE3: u64 = 0x1e;

/// `Ok` when `bytes` match `cid`, or when the CID's form cannot name them
/// directly; an error naming the mismatch otherwise.
pub fn check(cid: &str, bytes: &[u8]) -> Result<(), String> {
    let Some((codec, hash, digest)) = parse(cid) else { return Ok(()) };
    if codec != CODEC_RAW {
        return Ok(());
    }
    let matches = match hash {
        HASH_SHA2_256 => sha2::Sha256::digest(bytes).as_slice() == digest.as_slice(),
        HASH_BLAKE3 => blake3::hash(bytes).as_bytes().as_slice() == digest.as_slice(),
        HASH_IDENTITY => bytes == digest.as_slice(),
        _ => return Ok(()),
    };
    if matches {
        Ok(())
    } else {
        Err(format!("the {} bytes answered for {cid} do not match the CID's digest", bytes.len()))
    }
}

/// A CIDv1 in base32: its codec, multihash code and digest.
fn parse(cid: &str) -> Option<(u64, u64, Vec<u8>)> {
    let body = cid.strip_prefix('b').or_else(|| cid.strip_prefix('B'))?;
    let raw = data_encoding::BASE32_NOPAD.decode(body.to_ascii_uppercase().as_bytes()).ok()?;
    let mut rest = raw.as_slice();
    let version = varint(&mut rest)?;
    if version != 1 {
        return None;
    }
    let codec = varint(&mut rest)?;
    let hash = varint(&mut rest)?;
    let len = usize::try_from(varint(&mut rest)?).ok()?;
    (rest.len() == len).then(|| (codec, hash, rest.to_vec()))
}

/// An unsigned LEB128 varint, as multiformats use (at most 9 bytes).
fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (i, &b) in buf.iter().enumerate().take(9) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            *buf = &buf[i + 1..];
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A raw-leaf CIDv1 for `bytes`, as a node makes it.
    fn raw_cid(bytes: &[u8]) -> String {
        let mut v = vec![0x01, 0x55, 0x12, 0x20];
        v.extend_from_slice(&sha2::Sha256::digest(bytes));
        format!("b{}", data_encoding::BASE32_NOPAD.encode(&v).to_ascii_lowercase())
    }

    #[test]
    fn a_raw_cid_accepts_its_bytes_and_refuses_a_flipped_one() {
        let bytes = b"{\"name\":\"x\"}".to_vec();
        let cid = raw_cid(&bytes);
        assert!(cid.starts_with("bafkrei"), "{cid}");
        assert_eq!(check(&cid, &bytes), Ok(()));
        let mut bad = bytes.clone();
        bad[3] ^= 1;
        assert!(check(&cid, &bad).unwrap_err().contains("do not match"));
        assert!(check(&cid, &bytes[..5]).is_err());
    }

    #[test]
    fn the_empty_file_cid_of_a_real_node_checks() {
        // `add --cid-version=1 --raw-leaves` of an empty file.
        assert_eq!(check("bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku", b""), Ok(()));
        assert!(check("bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku", b"x").is_err());
    }

    #[test]
    fn forms_that_do_not_name_the_bytes_are_not_checked() {
        assert_eq!(check("QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH", b"anything"), Ok(()));
        // dag-pb CIDv1
        assert_eq!(check("bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi", b"anything"), Ok(()));
        assert_eq!(check("not a cid", b"anything"), Ok(()));
    }
}
