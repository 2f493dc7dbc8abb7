//! The template catalog: parameterised jobs. A submission `{template_id, params}` is checked
//! against the template's JSON Schema (every violation reported with its path), its script is
//! rendered (minijinja, strict undefined, no filesystem access), and the result is an ordinary
//! v0.0.44 body that takes exactly the same path as a raw submission.
//!
//! The catalog ships in the binary (`fixtures/templates/*.json`).

use std::collections::BTreeMap;

use domain::submit::FieldError;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One template file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    pub id: String,
    pub name: String,
    pub description: String,
    /// JSON Schema of `params`.
    pub params_schema: Value,
    /// minijinja source of the batch script; `params` are its variables.
    pub script: String,
    /// The job's fields before params apply (environment, working directory, output, …).
    pub job: Map<String, Value>,
    /// Params copied into job fields: `{"minutes": "time_limit"}` sets `job.time_limit` from
    /// `params.minutes`.
    #[serde(default)]
    pub param_fields: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("no template {0:?}; list them with GET /v1/templates")]
    Unknown(String),
    #[error("the params do not match the template's schema")]
    Params(Vec<FieldError>),
    #[error("the template could not be rendered: {0}")]
    Render(String),
    #[error("template file {file}: {reason}")]
    Catalog { file: String, reason: String },
}

const BUILTIN: &[(&str, &str)] = &[
    (
        "shell.json",
        include_str!("../../fixtures/templates/shell.json"),
    ),
    (
        "python-data.json",
        include_str!("../../fixtures/templates/python-data.json"),
    ),
    (
        "param-sweep.json",
        include_str!("../../fixtures/templates/param-sweep.json"),
    ),
    (
        "mpi.json",
        include_str!("../../fixtures/templates/mpi.json"),
    ),
    (
        "r-script.json",
        include_str!("../../fixtures/templates/r-script.json"),
    ),
    (
        "checkpointed.json",
        include_str!("../../fixtures/templates/checkpointed.json"),
    ),
];

/// The catalog, with each template's schema compiled once.
pub struct Catalog {
    templates: BTreeMap<String, (Template, jsonschema::Validator)>,
}

impl Catalog {
    /// The templates shipped in the binary.
    pub fn builtin() -> Result<Self, TemplateError> {
        Self::from_files(BUILTIN.iter().map(|(f, t)| (f.to_string(), t.to_string())))
    }

    /// Templates from `(file name, JSON text)` pairs.
    pub fn from_files(
        files: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, TemplateError> {
        let mut templates = BTreeMap::new();
        for (file, text) in files {
            let bad = |reason: String| TemplateError::Catalog {
                file: file.clone(),
                reason,
            };
            let t: Template = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
            let validator = jsonschema::validator_for(&t.params_schema)
                .map_err(|e| bad(format!("params_schema: {e}")))?;
            if !t.script.starts_with("#!") {
                return Err(bad("script must start with #!".into()));
            }
            templates.insert(t.id.clone(), (t, validator));
        }
        Ok(Self { templates })
    }

    pub fn list(&self) -> impl Iterator<Item = &Template> {
        self.templates.values().map(|(t, _)| t)
    }

    pub fn get(&self, id: &str) -> Option<&Template> {
        self.templates.get(id).map(|(t, _)| t)
    }

    /// Checks `params` and renders the template into a v0.0.44 body.
    pub fn render(&self, id: &str, params: &Value) -> Result<Value, TemplateError> {
        let (t, validator) = self
            .templates
            .get(id)
            .ok_or_else(|| TemplateError::Unknown(id.to_string()))?;
        // The schema's defaults fill in what the caller left out (e.g. a time limit).
        let mut params = params.clone();
        if let (Some(given), Some(props)) = (
            params.as_object_mut(),
            t.params_schema.get("properties").and_then(Value::as_object),
        ) {
            for (name, prop) in props {
                if let (false, Some(default)) = (given.contains_key(name), prop.get("default")) {
                    given.insert(name.clone(), default.clone());
                }
            }
        }
        let params = &params;

        let errors: Vec<FieldError> = validator
            .iter_errors(params)
            .map(|e| {
                let path = e.instance_path().to_string();
                let field = if path.is_empty() {
                    "params".to_string()
                } else {
                    format!("params{}", path.replace('/', "."))
                };
                FieldError {
                    code: "invalid_param",
                    field,
                    message: e.to_string(),
                }
            })
            .collect();
        if !errors.is_empty() {
            return Err(TemplateError::Params(errors));
        }
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        let script = env
            .render_str(&t.script, params)
            .map_err(|e| TemplateError::Render(e.to_string()))?;
        let mut job = t.job.clone();
        if let Some(name) = job.get("name").and_then(Value::as_str).map(str::to_string) {
            let rendered = env
                .render_str(&name, params)
                .map_err(|e| TemplateError::Render(e.to_string()))?;
            job.insert("name".into(), Value::String(rendered));
        }
        job.insert("script".into(), Value::String(script));
        for (param, field) in &t.param_fields {
            if let Some(v) = params.get(param) {
                // Wrapped fields get v0.0.44's own spelling, so templates never cause warnings.
                let wrapped = matches!(
                    field.as_str(),
                    "time_limit" | "time_minimum" | "memory_per_node" | "memory_per_cpu"
                );
                let value = match v.as_u64() {
                    Some(n) if wrapped => {
                        serde_json::json!({"set": true, "infinite": false, "number": n})
                    }
                    _ => v.clone(),
                };
                job.insert(field.clone(), value);
            }
        }
        Ok(serde_json::json!({ "job": job }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_builtin_template_renders_a_valid_body_from_its_examples() {
        let catalog = Catalog::builtin().unwrap();
        assert!(catalog.list().count() >= 6);
        for t in catalog.list() {
            let example = t
                .params_schema
                .get("examples")
                .and_then(|e| e.get(0))
                .cloned()
                .unwrap_or_else(|| panic!("template {} needs an example in its schema", t.id));
            let body = catalog
                .render(&t.id, &example)
                .unwrap_or_else(|e| panic!("{}: {e:?}", t.id));
            let canonical =
                domain::submit::canonicalize(&body).unwrap_or_else(|e| panic!("{}: {e:?}", t.id));
            assert!(
                canonical.warnings.is_empty(),
                "{}: {:?}",
                t.id,
                canonical.warnings
            );
            assert!(
                canonical.body["job"]["script"]
                    .as_str()
                    .unwrap()
                    .starts_with("#!")
            );
        }
    }

    #[test]
    fn params_are_checked_with_paths_and_rendering_is_strict() {
        let catalog = Catalog::builtin().unwrap();
        let body = catalog
            .render("shell", &json!({"command": "echo hi", "minutes": 5}))
            .unwrap();
        assert!(body["job"]["script"].as_str().unwrap().contains("echo hi"));
        assert_eq!(body["job"]["time_limit"]["number"], 5);
        match catalog.render(
            "shell",
            &json!({"command": 3, "minutes": -1, "extra": true}),
        ) {
            Err(TemplateError::Params(errors)) => {
                let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
                assert!(fields.contains(&"params.command"), "{fields:?}");
                assert!(fields.contains(&"params.minutes"), "{fields:?}");
                assert!(errors.len() >= 3, "{errors:?}");
            }
            other => panic!("{other:?}"),
        }
        let defaulted = catalog
            .render("shell", &json!({"command": "true"}))
            .unwrap();
        assert_eq!(
            defaulted["job"]["time_limit"]["number"], 60,
            "schema defaults apply"
        );
        assert!(matches!(
            catalog.render("nope", &json!({})),
            Err(TemplateError::Unknown(_))
        ));
        let strict = Catalog::from_files([(
            "t.json".to_string(),
            json!({
                "id": "t", "name": "t", "description": "d", "params_schema": {"type": "object"},
                "script": "#!/bin/bash\necho {{ missing }}", "job": {}
            })
            .to_string(),
        )])
        .unwrap();
        assert!(matches!(
            strict.render("t", &json!({})),
            Err(TemplateError::Render(_))
        ));
        // No filesystem access from templates.
        let include = Catalog::from_files([(
            "i.json".to_string(),
            json!({
                "id": "i", "name": "i", "description": "d", "params_schema": {"type": "object"},
                "script": "#!/bin/bash\n{% include '/etc/passwd' %}", "job": {}
            })
            .to_string(),
        )])
        .unwrap();
        assert!(matches!(
            include.render("i", &json!({})),
            Err(TemplateError::Render(_))
        ));
    }
}
