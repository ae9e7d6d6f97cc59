//! The API reference (`docs/api.md`), generated from the CRD's OpenAPI schema so it cannot
//! drift from what the API server enforces.

use kube::CustomResourceExt;
use serde_json::Value;

use super::SecurityPolicy;

/// Markdown reference of every field of `SecurityPolicy`: one table per object, in schema order
/// of first appearance, with type, default, constraints and the field's documentation.
pub fn api_markdown() -> String {
    let crd = SecurityPolicy::crd();
    let version = &crd.spec.versions[0];
    let schema = serde_json::to_value(
        version
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("the CRD has a schema"),
    )
    .expect("a schema serializes");
    let mut out = String::new();
    out.push_str("# SecurityPolicy API reference\n\n");
    out.push_str(&format!(
        "`{}/{}`, kind `{}` (short names: {}). Generated from the CRD schema by `bulwark crd --api-docs`; do not edit by hand.\n\n",
        crd.spec.group,
        version.name,
        crd.spec.names.kind,
        crd.spec
            .names
            .short_names
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(|s| format!("`{s}`"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let mut sections = Vec::new();
    for top in ["spec", "status"] {
        if let Some(s) = schema.pointer(&format!("/properties/{top}")) {
            collect(top, s, &mut sections);
        }
    }
    for (path, object) in sections {
        out.push_str(&format!("## `{path}`\n\n"));
        if let Some(d) = object.get("description").and_then(Value::as_str) {
            out.push_str(&one_paragraph(d));
            out.push_str("\n\n");
        }
        for rule in object
            .get("x-kubernetes-validations")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(m) = rule.get("message").and_then(Value::as_str) {
                out.push_str(&format!("- Rule: {}\n", escape(m)));
            }
        }
        if object.get("x-kubernetes-validations").is_some() {
            out.push('\n');
        }
        out.push_str("| Field | Type | Required | Default | Constraints | Description |\n");
        out.push_str("|---|---|---|---|---|---|\n");
        let required: Vec<&str> = object
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        for (name, field) in properties(object) {
            out.push_str(&format!(
                "| `{name}` | {} | {} | {} | {} | {} |\n",
                type_of(&path, name, field),
                if required.contains(&name) { "yes" } else { "" },
                field
                    .get("default")
                    .map(|d| format!("`{}`", escape(&d.to_string())))
                    .unwrap_or_default(),
                constraints(field),
                escape(&one_paragraph(
                    field
                        .get("description")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                )),
            ));
        }
        out.push('\n');
    }
    out
}

/// Every object schema under `path`, depth first, parents before children.
fn collect<'a>(path: &str, schema: &'a Value, out: &mut Vec<(String, &'a Value)>) {
    let object = element(schema);
    if properties(object).is_empty() {
        return;
    }
    let path = if is_array(schema) {
        format!("{path}[]")
    } else {
        path.to_string()
    };
    out.push((path.clone(), object));
    for (name, field) in properties(object) {
        collect(&format!("{path}.{name}"), field, out);
        // Maps of objects (e.g. tiers): document the value schema.
        if let Some(values) = field.get("additionalProperties").filter(|v| v.is_object()) {
            collect(&format!("{path}.{name}.<name>"), values, out);
        }
    }
}

fn is_array(schema: &Value) -> bool {
    schema.get("type").and_then(Value::as_str) == Some("array")
}

/// The item schema of an array, else the schema itself.
fn element(schema: &Value) -> &Value {
    if is_array(schema) {
        schema.get("items").unwrap_or(schema)
    } else {
        schema
    }
}

fn properties(schema: &Value) -> Vec<(&str, &Value)> {
    schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| (k.as_str(), v)).collect())
        .unwrap_or_default()
}

fn type_of(path: &str, name: &str, field: &Value) -> String {
    let base = |s: &Value| -> String {
        if !properties(s).is_empty() {
            return "object".into();
        }
        if s.get("x-kubernetes-int-or-string").is_some() {
            return "int or string".into();
        }
        s.get("type")
            .and_then(Value::as_str)
            .unwrap_or("any")
            .to_string()
    };
    if is_array(field) {
        let item = element(field);
        if properties(item).is_empty() {
            format!("[]{}", base(item))
        } else {
            format!(
                "[][`{path}.{name}[]`](#{})",
                anchor(&format!("{path}.{name}[]"))
            )
        }
    } else if let Some(values) = field.get("additionalProperties").filter(|v| v.is_object()) {
        if properties(values).is_empty() {
            format!("map of {}", base(values))
        } else {
            let target = format!("{path}.{name}.<name>");
            format!("map of [`{target}`](#{})", anchor(&target))
        }
    } else if !properties(field).is_empty() {
        let target = format!("{path}.{name}");
        format!("[`object`](#{})", anchor(&target))
    } else {
        base(field)
    }
}

/// GitHub's heading anchor for `` `path` ``.
fn anchor(path: &str) -> String {
    path.chars()
        .filter_map(|c| match c {
            'a'..='z' | '0'..='9' | '-' | '_' => Some(c),
            'A'..='Z' => Some(c.to_ascii_lowercase()),
            ' ' => Some('-'),
            _ => None,
        })
        .collect()
}

fn constraints(field: &Value) -> String {
    let field_or_items = |key: &str| {
        field
            .get(key)
            .or_else(|| element(field).get(key))
            .filter(|_| field.get(key).is_some() || is_array(field))
    };
    let mut parts = Vec::new();
    if let Some(values) = field_or_items("enum").and_then(Value::as_array) {
        let values: Vec<String> = values.iter().map(|v| format!("`{}`", plain(v))).collect();
        parts.push(format!("one of {}", values.join(", ")));
    }
    for (key, label) in [
        ("minimum", "min"),
        ("maximum", "max"),
        ("minLength", "min length"),
        ("maxLength", "max length"),
        ("minItems", "min items"),
        ("maxItems", "max items"),
    ] {
        if let Some(v) = field.get(key) {
            parts.push(format!("{label} {}", plain(v)));
        }
    }
    if let Some(p) = field_or_items("pattern").and_then(Value::as_str) {
        parts.push(format!("pattern `{}`", escape(p)));
    }
    if let Some(f) = field.get("format").and_then(Value::as_str) {
        parts.push(format!("format {f}"));
    }
    for rule in field
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(m) = rule.get("message").and_then(Value::as_str) {
            parts.push(escape(m));
        }
    }
    parts.join("; ")
}

fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn one_paragraph(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Table cells: pipes escaped, no line breaks.
fn escape(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_section_is_linked_and_fields_are_described() {
        let md = api_markdown();
        assert!(md.contains("## `spec`"));
        assert!(md.contains("## `spec.kafka`"));
        assert!(md.contains("## `spec.kafka.users[]`"));
        assert!(md.contains("| `bootstrapServers` | string | yes |"));
        assert!(md.contains("one of `SCRAM-SHA-512`, `SCRAM-SHA-256`, `PLAIN`"));
        // Each link points at a heading that exists.
        for link in md.split("](#").skip(1) {
            let target = &link[..link.find(')').unwrap()];
            let headings: Vec<String> = md
                .lines()
                .filter_map(|l| l.strip_prefix("## "))
                .map(anchor)
                .collect();
            assert!(headings.iter().any(|h| h == target), "dangling #{target}");
        }
    }
}
