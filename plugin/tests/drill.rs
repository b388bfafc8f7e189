//! The verification drill over a gateway and a node (the mock origin as the
//! node): clean paths pass; a path serving a corrupted file fails, located to
//! the chunk, and the paths are reported as disagreeing.
#![allow(clippy::unwrap_used)]

mod support;

use shardgate::drill::{Via, drill};
use shardgate::progress::Silent;
use shardgate::release::placement::Placement;
use shardgate::testing::{Fault, MockOrigin};
use support::*;

const CHUNK: u64 = 64 * 1024;

fn placement(r: &Release) -> Placement {
    Placement::parse(&std::fs::read(r.out.join("placement.json")).unwrap()).unwrap()
}

#[tokio::test]
async fn the_drill_passes_clean_paths_and_locates_a_corrupted_chunk() {
    let r = Release::pack("drill", &[("a.bin", bytes_of(700_000, 1)), ("b.jsonl", b"{\"x\":1}\n".to_vec())], CHUNK);
    let good = MockOrigin::start(r.blobs.clone()).await;
    let node = MockOrigin::start(r.blobs.clone()).await;
    let g = Served::start(config_for(&r, &[&good])).await;
    let p = placement(&r);
    let trusted = [r.key.public()];
    let vias = [
        Via::parse(&g.base, Some(&p), None).unwrap(),
        Via::parse(&format!("btfs-api:{}/api/v1", node.url()), Some(&p), None).unwrap(),
    ];
    let report = drill("drill", "1.0.0", &vias, &trusted, &Silent).await.unwrap();
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.release_id, r.signed.id.to_hex());
    for path in &report.paths {
        assert_eq!((path.files, path.bytes), (2, 700_008), "{path:?}");
        assert_eq!(path.ttfb_ms.len(), 2);
        assert!(path.mb_per_s() > 0.0);
    }

    // The node now serves chunk 3 of a.bin with one bit flipped.
    let a = r.signed.manifest.files.iter().find(|f| f.path == "a.bin").unwrap();
    node.set_fault(Some(&cid_for(&a.blake3)), Some(Fault::CorruptAt(3 * CHUNK + 5)));
    let report = drill("drill", "1.0.0", &vias, &trusted, &Silent).await.unwrap();
    assert!(!report.ok());
    assert!(report.paths[0].failures.is_empty(), "the gateway path is clean: {:?}", report.paths[0]);
    assert_eq!(
        report.paths[1].failures,
        [format!(
            "a.bin: bytes {}..{} (offset {}): chunk 3 does not match the manifest",
            3 * CHUNK,
            4 * CHUNK,
            3 * CHUNK
        )]
    );
    assert_eq!(report.disagreements, ["a.bin: the paths served different bytes"]);

    // The node alone: the chunk is still located, from the published chunk table.
    let report = drill("drill", "1.0.0", &vias[1..], &trusted, &Silent).await.unwrap();
    assert_eq!(report.paths[0].failures.len(), 1);
    assert!(report.paths[0].failures[0].contains("chunk 3 does not match"), "{:?}", report.paths[0].failures);

    // A key the drill does not trust: no path gives a usable manifest.
    let other = Release::pack("drill", &[("z", vec![1])], CHUNK);
    let report = drill("drill", "1.0.0", &vias[..1], &[other.key.public()], &Silent).await.unwrap();
    assert!(!report.ok());
    assert!(report.paths[0].failures[0].contains("not a trusted key"), "{:?}", report.paths[0].failures);
}
