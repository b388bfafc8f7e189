//! Discovery: `GET /v1/datasets` filtered on envelope fields and free text,
//! showing only what the asking tenant may read, never taken-down releases.
#![allow(clippy::unwrap_used)]

mod support;

use shardgate::config::ReleaseSource;
use shardgate::release::envelope::{Envelope, LabelTaxonomy};
use shardgate::release::keys::PublisherKey;
use shardgate::tenant::{AccessConfig, Limits, TenantConfig, new_key};
use shardgate::testing::MockOrigin;
use support::*;

fn envelope(license: &str, modality: &[&str], languages: &[&str], compliance: &str, label: &str) -> Envelope {
    Envelope {
        license: Some(license.into()),
        modality: Some(modality.iter().map(|s| s.to_string()).collect()),
        languages: (!languages.is_empty()).then(|| languages.iter().map(|s| s.to_string()).collect()),
        compliance_class: Some(compliance.into()),
        label_taxonomy: Some(LabelTaxonomy { kind: Some(label.into()), ..Default::default() }),
        intended_use: Some(format!("{label} research")),
        ..Envelope::default()
    }
}

async fn names(base: &str, key: &str, query: &str) -> (u16, Vec<String>) {
    let r = client().get(format!("{base}/v1/datasets?{query}")).bearer_auth(key).send().await.unwrap();
    let status = r.status().as_u16();
    let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    let names = v["datasets"].as_array().map(|a| a.iter().map(|d| d["name"].as_str().unwrap().to_string()).collect());
    (status, names.unwrap_or_default())
}

#[tokio::test]
async fn discovery_filters_on_the_envelope_and_hides_what_a_tenant_cannot_read() {
    let key = PublisherKey::generate().unwrap();
    let vision = Release::pack_full(
        "vision-cats",
        "1.0.0",
        &[("a.bin", bytes_of(1000, 1))],
        64 * 1024,
        key,
        envelope("CC-BY-4.0", &["image"], &[], "internal", "classification"),
    );
    let text = Release::pack_full(
        "text-news",
        "2.1.0",
        &[("b.jsonl", bytes_of(1000, 2))],
        64 * 1024,
        vision.key_copy(),
        envelope("Apache-2.0", &["text"], &["en", "de"], "public", "none"),
    );
    let secret = Release::pack_full(
        "secret-scans",
        "1.0.0",
        &[("c.bin", bytes_of(1000, 3))],
        64 * 1024,
        vision.key_copy(),
        envelope("proprietary", &["image"], &[], "restricted", "detection"),
    );
    let mut blobs = vision.blobs.clone();
    blobs.extend(text.blobs.clone());
    blobs.extend(secret.blobs.clone());
    let mock = MockOrigin::start(blobs).await;
    let mut cfg = config_for(&vision, &[&mock]);
    cfg.releases = [&vision, &text, &secret]
        .iter()
        .map(|r| ReleaseSource { manifest: r.manifest_path(), placement: None })
        .collect();
    let (ka, ha) = new_key().unwrap();
    let (kb, hb) = new_key().unwrap();
    let tenant = |id: &str, h: String, ds: &[&str]| TenantConfig {
        id: id.into(),
        name: None,
        keys: vec![h],
        datasets: ds.iter().map(|s| s.to_string()).collect(),
        cert_names: vec![],
        clearances: vec![],
        limits: Limits::default(),
    };
    cfg.tenants = vec![tenant("research", ha, &["vision-*", "text-*"]), tenant("medical", hb, &["secret-*"])];
    cfg.access = AccessConfig::default();
    let g = Served::start(cfg).await;

    let all = names(&g.base, &ka, "").await;
    assert_eq!(all, (200, vec!["text-news".to_string(), "vision-cats".to_string()]));
    assert_eq!(names(&g.base, &ka, "modality=image").await.1, ["vision-cats"]);
    assert_eq!(names(&g.base, &ka, "modality=IMAGE&license=cc-by-4.0").await.1, ["vision-cats"]);
    assert_eq!(names(&g.base, &ka, "language=de").await.1, ["text-news"]);
    assert_eq!(names(&g.base, &ka, "compliance=public").await.1, ["text-news"]);
    assert_eq!(names(&g.base, &ka, "label_type=classification").await.1, ["vision-cats"]);
    assert_eq!(names(&g.base, &ka, "q=NEWS").await.1, ["text-news"]);
    assert_eq!(names(&g.base, &ka, "q=research").await.1.len(), 2, "free text reaches envelope values");
    // Packed 2023-11-14: a later date finds nothing, an earlier one everything.
    assert!(names(&g.base, &ka, "updated_since=2023-11-15").await.1.is_empty());
    assert_eq!(names(&g.base, &ka, "updated_since=2023-11-01T00:00:00Z").await.1.len(), 2);
    // A private dataset stays hidden from other tenants, whatever they ask.
    for q in ["", "q=secret", "modality=image", "compliance=restricted"] {
        assert!(!names(&g.base, &ka, q).await.1.contains(&"secret-scans".to_string()), "{q}");
    }
    assert_eq!(names(&g.base, &kb, "compliance=restricted").await.1, ["secret-scans"]);
    assert_eq!(names(&g.base, &kb, "modality=image").await.1, ["secret-scans"]);
    // Bad filters are a 400 that names the problem.
    let r = client().get(format!("{}/v1/datasets?colour=red", g.base)).bearer_auth(&ka).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(String::from_utf8_lossy(&r.bytes().await.unwrap()).contains("colour"));
    let r =
        client().get(format!("{}/v1/datasets?updated_since=yesterday", g.base)).bearer_auth(&ka).send().await.unwrap();
    assert_eq!(r.status(), 400);
    // Summaries carry the envelope fields a person filters on.
    let v: serde_json::Value = serde_json::from_slice(
        &client()
            .get(format!("{}/v1/datasets?language=en", g.base))
            .bearer_auth(&ka)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    let d = &v["datasets"][0];
    assert_eq!(
        (d["latest"].as_str(), d["license"].as_str(), d["state"].as_str()),
        (Some("2.1.0"), Some("Apache-2.0"), Some("active"))
    );
}
