//! Types several kinds share.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Pattern of a cluster ID: a DNS-1123 label.
pub const CLUSTER_ID_PATTERN: &str = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$";

/// An amount of resources: what a consumer asks for, what a provider grants.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceAmounts {
    /// CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,
    /// Memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
    /// Pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<Quantity>,
    /// Extended resources (e.g. `nvidia.com/gpu`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extended: BTreeMap<String, Quantity>,
}

/// A reference to an object by name (and namespace, where the kind is namespaced).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ObjectRef {
    /// Name.
    pub name: String,
    /// Namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// A schema that accepts any object and keeps its fields (for embedded Kubernetes objects that the
/// controller validates itself, so the CRD stays small and loads on older apiservers).
pub fn preserve_unknown_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "type": "object", "x-kubernetes-preserve-unknown-fields": true })
}

/// An embedded JSON value kept as its compact text (a `ShadowPod`'s pod template). On the wire it is the
/// value itself; in memory one string. A `serde_json::Value` tree takes a B-tree node of about 630 bytes
/// for each object in it, about 8 KB for a pod template whose text is 1 KB, and the provider's agent
/// caches every `ShadowPod` of its cluster. Read it with [`PackedJson::parse`] where it is used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackedJson(Box<str>);

impl PackedJson {
    /// The compact text of `value` (anything serializable as JSON).
    pub fn of<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<Self> {
        serde_json::to_string(value).map(|s| Self(s.into()))
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The value read as a `T`.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> serde_json::Result<T> {
        serde_json::from_str(&self.0)
    }
}

impl Default for PackedJson {
    /// `{}`
    fn default() -> Self {
        Self("{}".into())
    }
}

impl From<&serde_json::Value> for PackedJson {
    fn from(v: &serde_json::Value) -> Self {
        // a Value always serializes
        Self(v.to_string().into())
    }
}

impl Serialize for PackedJson {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // the text as it is (it was written from a value, so it is JSON)
        serde_json::value::RawValue::from_string(self.0.to_string())
            .map_err(serde::ser::Error::custom)?
            .serialize(s)
    }
}

impl<'de> Deserialize<'de> for PackedJson {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // any deserializer (a watch's bytes, a test's `Value`): the tree is read, then dropped for its text
        let v = serde_json::Value::deserialize(d)?;
        Ok(Self::from(&v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Holder {
        template: PackedJson,
    }

    #[test]
    fn a_packed_value_is_the_value_itself_on_the_wire_and_its_compact_text_in_memory() {
        let template = json!({"metadata": {"labels": {"app": "x"}},
            "spec": {"containers": [{"name": "a", "image": "i", "futureField": 1}]}});
        // read from bytes, as a watch reads it, and from a Value, as the tests build objects
        let wire = json!({ "template": template }).to_string();
        let from_bytes: Holder = serde_json::from_str(&wire).unwrap();
        let from_value: Holder = serde_json::from_value(json!({ "template": template })).unwrap();
        assert_eq!(from_bytes, from_value);
        assert_eq!(from_bytes.template.as_str(), template.to_string(), "compact text");
        assert_eq!(
            from_bytes.template.parse::<serde_json::Value>().unwrap(),
            template
        );
        // written back: an object, not a string holding one, both to bytes and to a Value
        assert_eq!(serde_json::to_value(&from_bytes).unwrap()["template"], template);
        let back: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&from_bytes).unwrap()).unwrap();
        assert_eq!(back["template"], template);
        assert_eq!(PackedJson::of(&template).unwrap(), from_bytes.template);
        assert_eq!(
            PackedJson::default().parse::<serde_json::Value>().unwrap(),
            json!({})
        );
    }

    #[test]
    fn a_packed_value_takes_its_text_where_a_value_tree_takes_a_node_per_object() {
        // twelve nested objects of one key: the text is under 200 bytes; a Value tree holds twelve B-tree
        // nodes of more than 500 bytes each (a node has room for eleven keys and values)
        let mut v = json!({"leaf": 1});
        for i in 0..11 {
            v = json!({ format!("k{i}"): v });
        }
        let packed = PackedJson::from(&v);
        assert!(packed.as_str().len() < 200, "{}", packed.as_str().len());
        let node = 11 * (std::mem::size_of::<String>() + std::mem::size_of::<serde_json::Value>());
        assert!(node > 500, "{node}");
        assert_eq!(packed.parse::<serde_json::Value>().unwrap(), v);
    }
}
