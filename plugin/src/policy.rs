//! Policy classes: what a release's `compliance_class` demands.
//!
//! A policy file (TOML, `conf/policy.toml` is the example) maps each class
//! to rules: whether files may go to BTFS unencrypted, which paths must be
//! encrypted, which sign-offs it needs (N approvals by keys holding a role),
//! and whether only tenants cleared for the class may read it. A release
//! with no class gets `default_class`. `pack`, `publish`, admin
//! registration and the gateway's catalog all run [`Policy::check`], and a
//! refusal names the rule it broke.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::release::keys::PublicKey;
use crate::release::manifest::Manifest;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("{path}: {why}")]
    Load { path: String, why: String },
    /// A release breaks a rule: `rule` is the policy key (`classes.pii.signoffs.legal`).
    #[error("{release} breaks policy rule `{rule}`: {why}")]
    Breach { release: String, rule: String, why: String },
}

impl crate::error::Classify for PolicyError {
    fn class(&self) -> crate::error::ErrorClass {
        match self {
            PolicyError::Load { .. } => crate::error::ErrorClass::Config,
            PolicyError::Breach { .. } => crate::error::ErrorClass::Client,
        }
    }
}

/// The rules of one class.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Class {
    /// Whether a file of this class may be published unencrypted.
    #[serde(default = "yes")]
    pub plaintext_allowed: bool,
    /// Paths (globs over release paths; `*` also matches `/`) that must be encrypted.
    #[serde(default)]
    pub encrypt: Vec<String>,
    /// Sign-offs needed: role name to the number of distinct keys of that role.
    #[serde(default)]
    pub signoffs: BTreeMap<String, u32>,
    /// Only tenants whose `clearances` list this class may read its plaintext.
    #[serde(default)]
    pub clearance_required: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    default_class: String,
    #[serde(default)]
    roles: BTreeMap<String, Vec<String>>,
    classes: BTreeMap<String, Class>,
}

/// A loaded policy.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    default_class: String,
    roles: BTreeMap<String, Vec<PublicKey>>,
    classes: BTreeMap<String, (Class, Vec<glob::Pattern>)>,
}

impl Policy {
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let shown = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|e| PolicyError::Load { path: shown.clone(), why: e.to_string() })?;
        Self::parse(&text).map_err(|why| PolicyError::Load { path: shown, why })
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| e.message().to_string())?;
        if !file.classes.contains_key(&file.default_class) {
            return Err(format!("default_class {:?} is not one of [classes]", file.default_class));
        }
        let mut roles = BTreeMap::new();
        for (role, keys) in file.roles {
            let parsed = keys
                .iter()
                .map(|k| k.parse::<PublicKey>().map_err(|e| format!("roles.{role}: {k:?}: {e}")))
                .collect::<Result<Vec<_>, _>>()?;
            roles.insert(role, parsed);
        }
        let mut classes = BTreeMap::new();
        for (name, class) in file.classes {
            let globs = class
                .encrypt
                .iter()
                .map(|g| glob::Pattern::new(g).map_err(|e| format!("classes.{name}.encrypt: {g:?}: {e}")))
                .collect::<Result<Vec<_>, _>>()?;
            for (role, n) in &class.signoffs {
                let have = roles.get(role).map_or(0, Vec::len);
                if *n as usize > have {
                    return Err(format!(
                        "classes.{name}.signoffs.{role} needs {n} sign-off(s) but [roles] lists {have} key(s) for {role:?}"
                    ));
                }
            }
            classes.insert(name, (class, globs));
        }
        Ok(Self { default_class: file.default_class, roles, classes })
    }

    /// The class of a release that names none.
    pub fn default_class(&self) -> &str {
        &self.default_class
    }

    /// The class a manifest is in, by name.
    pub fn class_name<'a>(&'a self, m: &'a Manifest) -> &'a str {
        m.envelope.compliance_class.as_deref().unwrap_or(&self.default_class)
    }

    /// The class's rules; a class the policy does not know is a breach.
    pub fn class(&self, name: &str, release: &str) -> Result<&Class, PolicyError> {
        self.classes.get(name).map(|(c, _)| c).ok_or_else(|| PolicyError::Breach {
            release: release.to_string(),
            rule: "classes".into(),
            why: format!("class {name:?} is not in the policy (known: {})", self.known()),
        })
    }

    fn known(&self) -> String {
        self.classes.keys().cloned().collect::<Vec<_>>().join(", ")
    }

    /// Which rule makes `path` of a `class` release need encryption, if any.
    pub fn must_encrypt(&self, class: &str, path: &str) -> Option<String> {
        let (c, globs) = self.classes.get(class)?;
        if !c.plaintext_allowed {
            return Some(format!("classes.{class}.plaintext_allowed"));
        }
        globs.iter().find(|g| g.matches(path)).map(|g| format!("classes.{class}.encrypt ({})", g.as_str()))
    }

    /// Whether a tenant with `clearances` may read plaintext of a `class` release.
    pub fn cleared(&self, class: &str, clearances: &[String]) -> bool {
        match self.classes.get(class) {
            Some((c, _)) if c.clearance_required => clearances.iter().any(|x| x == class),
            Some(_) => true,
            // Unknown classes are refused before anyone reads them.
            None => false,
        }
    }

    /// Checks everything but sign-offs (what `pack` can know).
    pub fn check_contents(&self, m: &Manifest) -> Result<(), PolicyError> {
        let release = format!("{}@{}", m.name, m.version);
        let name = self.class_name(m);
        self.class(name, &release)?;
        for f in &m.files {
            if f.encryption.is_none()
                && let Some(rule) = self.must_encrypt(name, &f.path)
            {
                return Err(PolicyError::Breach { release, rule, why: format!("{} is not encrypted", f.path) });
            }
        }
        Ok(())
    }

    /// Checks a release against its class: contents and sign-offs.
    pub fn check(&self, m: &Manifest) -> Result<(), PolicyError> {
        self.check_contents(m)?;
        let release = format!("{}@{}", m.name, m.version);
        let name = self.class_name(m);
        let class = self.class(name, &release)?;
        let valid = m.valid_approvals();
        for (role, need) in &class.signoffs {
            let holders = self.roles.get(role).map(Vec::as_slice).unwrap_or(&[]);
            // Distinct keys: a sign-off copied twice counts once.
            let keys: std::collections::BTreeSet<String> =
                valid.iter().filter(|(r, k)| r == role && holders.contains(k)).map(|(_, k)| k.to_string()).collect();
            if (keys.len() as u32) < *need {
                return Err(PolicyError::Breach {
                    release,
                    rule: format!("classes.{name}.signoffs.{role}"),
                    why: format!(
                        "needs {need} sign-off(s) by {role} keys, has {} (shardgate approve --role {role})",
                        keys.len()
                    ),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::release::keys::PublisherKey;

    fn policy(security: &PublisherKey, legal: &PublisherKey) -> Policy {
        Policy::parse(&format!(
            r#"
default_class = "public"
[roles]
security = ["{}"]
legal = ["{}"]
[classes.public]
[classes.internal]
encrypt = ["logs/*"]
[classes.pii]
plaintext_allowed = false
clearance_required = true
signoffs = {{ security = 1, legal = 1 }}
"#,
            security.public(),
            legal.public()
        ))
        .unwrap()
    }

    fn manifest(class: Option<&str>, encrypted: bool) -> Manifest {
        let mut m: Manifest = serde_json::from_value(serde_json::json!({
            "schema": "shardgate.manifest/v1", "name": "d", "version": "1.0.0", "parent": null,
            "created_at": "2026-01-01T00:00:00Z", "total_bytes": 0, "files": [
                {"path": "logs/a.jsonl", "size": 0, "media_type": "application/jsonl",
                 "blake3": "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262", "chunk_size": 1024, "chunk_table": null}
            ]
        }))
        .unwrap();
        m.envelope.compliance_class = class.map(str::to_string);
        if encrypted {
            m.files[0].encryption = Some(crate::release::manifest::FileEncryption {
                scheme: "aes-256-gcm/chunked-v1".into(),
                key_id: format!("k1-{}", "0".repeat(32)),
                salt: "0".repeat(64),
                plaintext_size: 0,
                sealed_blake3: String::new(),
            });
        }
        m
    }

    #[test]
    fn each_refusal_names_its_rule() {
        let (s, l) = (PublisherKey::generate().unwrap(), PublisherKey::generate().unwrap());
        let p = policy(&s, &l);
        p.check(&manifest(None, false)).unwrap();
        let rule = |r: Result<(), PolicyError>| match r {
            Err(PolicyError::Breach { rule, .. }) => rule,
            other => panic!("{other:?}"),
        };
        assert_eq!(rule(p.check(&manifest(Some("secret"), false))), "classes");
        assert_eq!(rule(p.check(&manifest(Some("internal"), false))), "classes.internal.encrypt (logs/*)");
        assert_eq!(rule(p.check(&manifest(Some("pii"), false))), "classes.pii.plaintext_allowed");
        let mut m = manifest(Some("pii"), true);
        assert_eq!(rule(p.check(&m)), "classes.pii.signoffs.legal");
        let at = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        m.approve(&l, "legal", at);
        assert_eq!(rule(p.check(&m)), "classes.pii.signoffs.security");
        // A key that does not hold the role does not count.
        m.approve(&l, "security", at);
        assert_eq!(rule(p.check(&m)), "classes.pii.signoffs.security");
        m.approve(&s, "security", at);
        p.check(&m).unwrap();
        // A copied sign-off counts once, and a manifest carrying one does not validate.
        let mut copied = m.clone();
        let legal_one = copied.approvals.iter().find(|a| a.role == "legal").unwrap().clone();
        copied.approvals.retain(|a| a.role != "legal");
        let two = Policy::parse(&format!(
            "default_class = \"pii\"\n[roles]\nlegal = [\"{}\", \"{}\"]\n[classes.pii]\nsignoffs = {{ legal = 2 }}\n",
            l.public(),
            s.public()
        ))
        .unwrap();
        copied.approvals.push(legal_one.clone());
        copied.approvals.push(legal_one);
        assert_eq!(rule(two.check(&copied)), "classes.pii.signoffs.legal");
        copied.schema = crate::release::manifest::SCHEMA_V2.into();
        let e = copied.validate().unwrap_err().to_string();
        assert!(e.contains("approvals[") && e.contains("one per role and key"), "{e}");
        // A tampered sign-off does not count.
        m.approvals.iter_mut().find(|a| a.public_key == s.public().to_string()).unwrap().at =
            jiff::Timestamp::from_second(1_800_000_001).unwrap();
        assert_eq!(rule(p.check(&m)), "classes.pii.signoffs.security");
        assert!(p.cleared("public", &[]));
        assert!(!p.cleared("pii", &[]));
        assert!(p.cleared("pii", &["pii".into()]));
    }

    #[test]
    fn the_example_policy_loads() {
        let p = Policy::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../conf/policy.toml")).unwrap();
        assert_eq!(p.default_class(), "public");
        assert_eq!(
            p.must_encrypt("internal", "logs/2026/a.jsonl").as_deref(),
            Some("classes.internal.encrypt (logs/*)")
        );
        assert_eq!(p.must_encrypt("pii", "x").as_deref(), Some("classes.pii.plaintext_allowed"));
        assert!(!p.cleared("pii", &[]));
    }

    #[test]
    fn a_bad_policy_file_names_the_key() {
        let e = Policy::parse("default_class = \"x\"\n[classes.public]\n").unwrap_err();
        assert!(e.contains("default_class"), "{e}");
        let e = Policy::parse("default_class = \"p\"\n[classes.p]\nsignoffs = { legal = 2 }\n").unwrap_err();
        assert!(e.contains("classes.p.signoffs.legal"), "{e}");
        let e = Policy::parse("default_class = \"p\"\n[classes.p]\nencrypt = [\"[\"]\n").unwrap_err();
        assert!(e.contains("classes.p.encrypt"), "{e}");
    }
}
