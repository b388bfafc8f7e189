//! The manifest's envelope: descriptive metadata a publisher writes in
//! `meta.toml`. Known keys are typed (a wrong type is an error naming the
//! key); unknown keys are kept as they are, since the envelope is open.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("meta file is not valid TOML: {0}")]
    Syntax(String),
    #[error("meta file key `{key}`: {why}")]
    Key { key: String, why: String },
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modality: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub languages: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_taxonomy: Option<LabelTaxonomy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collection_method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_sets: Option<Vec<SourceSet>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preprocessing: Option<Preprocessing>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intended_use: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_limitations: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compliance_class: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinning_policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_target: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_hints: Option<GatewayHints>,
    /// `YYYY-MM-DD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deprecation_date: Option<jiff::civil::Date>,
    /// Keys this version of shardgate does not know, kept verbatim.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelTaxonomy {
    /// For example `classification`, `detection`, `none`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The JSONL field or WebDataset member extension (such as `cls`) that holds the label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSet {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocessing {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_revision: Option<String>,
    /// Hash of the preprocessing code, e.g. `blake3:<hex>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_hash: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayHints {
    /// Load the release into the hot tier when a gateway registers it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prewarm: Option<bool>,
    /// Paths (globs) expected to be read most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hot_paths: Option<Vec<String>>,
    /// Chunks to read ahead for sequential readers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readahead_chunks: Option<u32>,
}

impl Envelope {
    /// Parses the publisher's `meta.toml`.
    pub fn from_toml(text: &str) -> Result<Self, MetaError> {
        let table: toml::Table = toml::from_str(text).map_err(|e| MetaError::Syntax(e.message().to_string()))?;
        let mut json = serde_json::Map::new();
        for (k, v) in table {
            let value = toml_to_json(&v, &k)?;
            json.insert(k, value);
        }
        let de = Value::Object(json);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            MetaError::Key { key, why: e.into_inner().to_string() }
        })
    }

    pub fn is_empty(&self) -> bool {
        self == &Envelope::default()
    }
}

fn toml_to_json(v: &toml::Value, path: &str) -> Result<Value, MetaError> {
    Ok(match v {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f).map(Value::Number).ok_or_else(|| MetaError::Key {
            key: path.to_string(),
            why: format!("{f} cannot be represented in the JSON manifest"),
        })?,
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => Value::Array(
            a.iter().enumerate().map(|(i, x)| toml_to_json(x, &format!("{path}[{i}]"))).collect::<Result<_, _>>()?,
        ),
        toml::Value::Table(t) => Value::Object(
            t.iter()
                .map(|(k, x)| Ok((k.clone(), toml_to_json(x, &format!("{path}.{k}"))?)))
                .collect::<Result<_, MetaError>>()?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_keys_are_typed_and_unknown_keys_kept() {
        let e = Envelope::from_toml(
            r##"
            license = "CC-BY-4.0"
            modality = ["image"]
            deprecation_date = 2027-06-30
            team_slack = "#data"
            [preprocessing]
            steps = ["resize 256", "center-crop 224"]
            code_hash = "blake3:00"
            [custom]
            weight = 0.5
            "##,
        )
        .unwrap();
        assert_eq!(e.license.as_deref(), Some("CC-BY-4.0"));
        assert_eq!(e.deprecation_date.unwrap().to_string(), "2027-06-30");
        assert_eq!(e.extra["team_slack"], "#data");
        assert_eq!(e.extra["custom"]["weight"], 0.5);
    }

    #[test]
    fn wrong_type_names_the_key() {
        let err = Envelope::from_toml("license = 3").unwrap_err().to_string();
        assert!(err.contains("`license`"), "{err}");
        let err = Envelope::from_toml("[preprocessing]\nsteps = \"one\"").unwrap_err().to_string();
        assert!(err.contains("preprocessing.steps"), "{err}");
        let err = Envelope::from_toml("deprecation_date = \"soon\"").unwrap_err().to_string();
        assert!(err.contains("deprecation_date"), "{err}");
        let err = Envelope::from_toml("x = nan").unwrap_err().to_string();
        assert!(err.contains("`x`"), "{err}");
        assert!(Envelope::from_toml("license = ").is_err());
    }
}
