//! A release round-trips through a real node: pack, publish, read every
#![allow(clippy::unwrap_used)]
//! file back with `cat`, compare hashes; a rerun adds nothing.

mod support;

use std::time::Duration;

use shardgate::btfs::{NodeClient, NodeConfig};
use support::*;

#[test]
fn release_round_trips_through_the_dev_node() {
    let node = DevNode::start();
    let t = tempfile::tempdir().unwrap();
    make_dataset(&t.path().join("src"));
    // One file large enough for many node blocks and many chunks.
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    std::fs::write(t.path().join("src/big.bin"), &big).unwrap();
    keygen(t.path());
    ok(&["pack", "src", "--name", "roundtrip", "--version", "1.0.0", "--key", "key", "--out", "out"], t.path());
    let publish = ["publish", "out", "--node", &node.api, "--api-prefix", &node.api_prefix];
    let cid = ok(&publish, t.path());
    let cid = cid.trim();
    assert!(cid.starts_with("bafk"), "manifest CID {cid:?} should be CIDv1 raw, base32");

    let placement: serde_json::Value =
        serde_json::from_slice(&std::fs::read(t.path().join("out/placement.json")).unwrap()).unwrap();
    assert_eq!(placement["manifest_cid"], cid);
    let m = manifest(&t.path().join("out"));
    let client = NodeClient::new(
        NodeConfig { url: node.api.clone(), api_prefix: node.api_prefix.clone(), token: None },
        Duration::from_secs(5),
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        // The manifest comes back byte for byte.
        let bytes = std::fs::read(t.path().join("out/manifest.json")).unwrap();
        let got = client.cat_all(cid, 0, bytes.len() as u64, Duration::from_secs(10)).await.unwrap();
        assert_eq!(&got[..], &bytes[..]);
        for f in m["files"].as_array().unwrap() {
            let hash = f["blake3"].as_str().unwrap();
            let size = f["size"].as_u64().unwrap();
            let file_cid = placement["blobs"][hash]["cid"].as_str().unwrap();
            let got = client.cat_all(file_cid, 0, size, Duration::from_secs(10)).await.unwrap();
            assert_eq!(blake3::hash(&got).to_hex().as_str(), hash, "{}", f["path"]);
            if let Some(table) = f["chunk_table"].as_str() {
                let table_cid = placement["blobs"][table]["cid"].as_str().unwrap();
                let size = placement["blobs"][table]["size"].as_u64().unwrap();
                let got = client.cat_all(table_cid, 0, size, Duration::from_secs(10)).await.unwrap();
                assert_eq!(blake3::hash(&got).to_hex().as_str(), table);
            }
        }
        // A ranged cat of the big file returns exactly those bytes.
        let f = m["files"].as_array().unwrap().iter().find(|f| f["path"] == "big.bin").unwrap();
        let big_cid = placement["blobs"][f["blake3"].as_str().unwrap()]["cid"].as_str().unwrap();
        let got = client.cat_all(big_cid, 1_000_003, 524_288, Duration::from_secs(10)).await.unwrap();
        assert_eq!(&got[..], &big[1_000_003..1_000_003 + 524_288]);
    });

    // Rerunning adds nothing: every blob is still pinned.
    let o = run(&publish, t.path());
    assert!(o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("0 blobs added"), "{stderr}");
    // After an interruption (placement lost one entry), only that one is added.
    let mut p = placement.clone();
    let first = p["blobs"].as_object().unwrap().keys().next().unwrap().clone();
    p["blobs"].as_object_mut().unwrap().remove(&first);
    std::fs::write(t.path().join("out/placement.json"), serde_json::to_vec_pretty(&p).unwrap()).unwrap();
    let o = run(&publish, t.path());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("1 blobs added"), "{stderr}");
}

#[test]
fn publish_to_an_unreachable_node_is_one_clear_error() {
    let t = tempfile::tempdir().unwrap();
    make_dataset(&t.path().join("src"));
    keygen(t.path());
    ok(&["pack", "src", "--name", "x", "--version", "1.0.0", "--key", "key", "--out", "out"], t.path());
    // Port 9 (discard) on loopback: nothing listens there.
    fails(&["publish", "out", "--node", "http://127.0.0.1:9"], t.path(), "127.0.0.1:9");
}
