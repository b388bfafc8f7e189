//! The drift gate at pack time and `shardgate diff`: a refused and an
//! approved case, a change within the thresholds, labels from JSONL fields
//! and from WebDataset members.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;

use support::*;

/// 100 JSONL records, labels `a` and `b` half each; `relabel` of them moved to `b`.
fn write_jsonl(dir: &Path, relabel: usize, extra: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let mut s = String::new();
    for i in 0..100 + extra {
        let label = if i < 50 && i >= 50 - relabel {
            "b"
        } else if i < 50 {
            "a"
        } else {
            "b"
        };
        s.push_str(&format!("{{\"id\":{i},\"text\":\"record {i}\",\"label\":\"{label}\"}}\n"));
    }
    std::fs::write(dir.join("train.jsonl"), s).unwrap();
    std::fs::write(dir.join("README.txt"), b"a dataset\n").unwrap();
}

const META: &str = "license = \"CC-BY-4.0\"\n\
    label_taxonomy = { type = \"classification\", field = \"label\" }\n\
    [drift]\nmax_label_shift = 0.1\nmin_overlap_pct = 80\nmax_files_removed = 0\n";

#[test]
fn drift_past_the_thresholds_is_refused_unless_approved() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    keygen(d);
    std::fs::write(d.join("meta.toml"), META).unwrap();
    write_jsonl(&d.join("v1src"), 0, 0);
    ok(
        &["pack", "v1src", "--name", "ds", "--version", "1.0.0", "--key", "key", "--out", "v1", "--meta", "meta.toml"],
        d,
    );

    // 40 of 100 records relabelled: the label shift is 0.4 and 60% of the parent's records remain.
    write_jsonl(&d.join("v2src"), 40, 0);
    let pack_v2 = [
        "pack",
        "v2src",
        "--name",
        "ds",
        "--version",
        "2.0.0",
        "--key",
        "key",
        "--meta",
        "meta.toml",
        "--parent",
        "v1",
    ];
    let stderr = fails(&[&pack_v2[..], &["--out", "v2"]].concat(), d, "drift from the parent is past the thresholds");
    assert!(stderr.contains("label shift 0.400 is above drift.max_label_shift = 0.1"), "{stderr}");
    assert!(stderr.contains("only 60.00% of the parent's records remain"), "{stderr}");
    assert!(stderr.contains("labels (label): shift 0.400"), "the report is printed: {stderr}");
    assert!(stderr.contains("    a: 50 -> 10"), "{stderr}");
    assert!(!d.join("v2").exists(), "a refused pack writes nothing");

    // Approved: published, and the approval is in the signed manifest.
    let reason = "relabelled by the QA team after audit 42";
    ok(&[&pack_v2[..], &["--out", "v2", "--approve-drift", reason]].concat(), d);
    let m = manifest(&d.join("v2"));
    let approval = &m["envelope"]["drift_approval"];
    assert_eq!(approval["reason"], reason);
    assert_eq!(approval["approved_by"], std::fs::read_to_string(d.join("key.pub")).unwrap().trim());
    assert_eq!(approval["report"]["label_shift"].as_f64().unwrap(), 0.4);
    assert_eq!(approval["breaches"].as_array().unwrap().len(), 2);
    assert_eq!(m["parent"]["version"], "1.0.0");
    ok(&["verify", "v2", "--trust", "key.pub"], d);

    // Five records added, nothing else: within every threshold, no approval needed.
    write_jsonl(&d.join("v3src"), 0, 5);
    let out = run(
        &[
            "pack",
            "v3src",
            "--name",
            "ds",
            "--version",
            "1.1.0",
            "--key",
            "key",
            "--meta",
            "meta.toml",
            "--parent",
            "v1/manifest.json",
            "--out",
            "v3",
        ],
        d,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("records: 100 -> 105 (+5.00%)"), "{stderr}");
    assert!(manifest(&d.join("v3"))["envelope"].get("drift_approval").is_none());

    // A file removed breaks max_files_removed = 0.
    write_jsonl(&d.join("v4src"), 0, 0);
    std::fs::remove_file(d.join("v4src/README.txt")).unwrap();
    fails(
        &[
            "pack",
            "v4src",
            "--name",
            "ds",
            "--version",
            "1.2.0",
            "--key",
            "key",
            "--meta",
            "meta.toml",
            "--parent",
            "v1",
            "--out",
            "v4",
        ],
        d,
        "1 files removed, more than drift.max_files_removed = 0",
    );

    // publish runs the same gate: v2 carries its approval; a refused pack never got this far,
    // and an unapproved release past the thresholds is refused before any node is contacted.
    std::fs::write(d.join("strict.toml"), "[drift]\nmax_records_change_pct = 1\n").unwrap();
    fails(
        &["publish", "v3", "--node", "http://127.0.0.1:9", "--parent", "v1", "--meta", "strict.toml"],
        d,
        "records_change_pct",
    );
    let out = run(&["publish", "v2", "--node", "http://127.0.0.1:9", "--parent", "v1", "--meta", "meta.toml"], d);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("approved at pack time: relabelled by the QA team"), "{stderr}");
    assert!(stderr.contains("127.0.0.1:9"), "then it tries the (unreachable) node: {stderr}");

    // `diff` prints the same report for any two releases.
    let report: serde_json::Value = serde_json::from_str(&ok(&["diff", "v1", "v2", "--json"], d)).unwrap();
    assert_eq!(report["label_shift"].as_f64().unwrap(), 0.4);
    assert_eq!(report["overlap_pct"].as_f64().unwrap(), 60.0);
    assert_eq!(report["files_changed"], serde_json::json!(["train.jsonl"]));
    let text = ok(&["diff", "v1", "v3"], d);
    assert!(text.contains("drift ds@1.0.0 -> ds@1.1.0") && text.contains("overlap: 100.00%"), "{text}");
}

#[test]
fn webdataset_labels_come_from_a_member_and_samples_are_records() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    keygen(d);
    let write = |dir: &str, flip: usize| {
        let p = d.join(dir);
        std::fs::create_dir_all(&p).unwrap();
        for i in 0..40 {
            std::fs::write(p.join(format!("s{i:03}.jpg")), vec![i as u8; 100 + i]).unwrap();
            let cls = if i < flip { 9 } else { i % 2 };
            std::fs::write(p.join(format!("s{i:03}.cls")), format!("{cls}")).unwrap();
        }
    };
    write("w1", 0);
    write("w2", 10);
    for (src, out, v) in [("w1", "o1", "1.0.0"), ("w2", "o2", "2.0.0")] {
        ok(&["pack", src, "--name", "wds", "--version", v, "--key", "key", "--out", out, "--format", "webdataset"], d);
    }
    let r: serde_json::Value =
        serde_json::from_str(&ok(&["diff", "o1", "o2", "--label-field", "cls", "--json"], d)).unwrap();
    assert_eq!(r["parent_records"], 40);
    assert_eq!(r["records"], 40);
    assert_eq!(r["overlap_pct"].as_f64().unwrap(), 75.0, "10 of 40 samples changed");
    assert_eq!(r["labels"]["9"], 10);
    assert_eq!(r["parent_labels"]["0"], 20);
    assert!((r["label_shift"].as_f64().unwrap() - 0.25).abs() < 1e-9);
}

#[test]
fn a_bad_drift_threshold_names_its_key() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    keygen(d);
    write_jsonl(&d.join("src"), 0, 0);
    ok(&["pack", "src", "--name", "ds", "--version", "1.0.0", "--key", "key", "--out", "v1"], d);
    std::fs::write(d.join("bad.toml"), "[drift]\nmax_label_shift = \"lots\"\n").unwrap();
    let args = [
        "pack",
        "src",
        "--name",
        "ds",
        "--version",
        "1.0.1",
        "--key",
        "key",
        "--out",
        "v2",
        "--meta",
        "bad.toml",
        "--parent",
        "v1",
    ];
    fails(&args, d, "drift.max_label_shift");
    std::fs::write(d.join("bad2.toml"), "[drift]\nmax_labels_shift = 0.1\n").unwrap();
    fails(&[&args[..10], &["--meta", "bad2.toml", "--parent", "v1"]].concat(), d, "max_labels_shift");
    std::fs::write(d.join("bad3.toml"), "[drift]\nmin_overlap_pct = 150\n").unwrap();
    fails(&[&args[..10], &["--meta", "bad3.toml", "--parent", "v1"]].concat(), d, "drift.min_overlap_pct");
}
