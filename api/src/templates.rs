//! `/v1/templates`: the catalog of parameterised jobs, and rendering a `{template_id, params}`
//! submission into a v0.0.44 body.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use commands::templates::TemplateError;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::error::ErrorItem;
use crate::{ApiError, AppState};

/// A template in the catalog.
#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateSummary {
    pub id: String,
    pub name: String,
    pub description: String,
}

/// The catalog.
#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateList {
    pub templates: Vec<TemplateSummary>,
}

/// One template with the JSON Schema of its params.
#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateDetail {
    pub id: String,
    pub name: String,
    pub description: String,
    #[schema(value_type = Object)]
    pub params_schema: serde_json::Value,
}

/// List the job templates.
#[utoipa::path(get, path = "/v1/templates", tag = "templates",
    responses((status = 200, description = "The catalog", body = TemplateList),
              (status = 401, description = "Missing or invalid token", body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn list(State(state): State<AppState>, _caller: Caller) -> Json<TemplateList> {
    Json(TemplateList {
        templates: state
            .templates
            .list()
            .map(|t| TemplateSummary {
                id: t.id.clone(),
                name: t.name.clone(),
                description: t.description.clone(),
            })
            .collect(),
    })
}

/// One template and the JSON Schema of its params.
#[utoipa::path(get, path = "/v1/templates/{id}", tag = "templates",
    params(("id" = String, Path, description = "Template id")),
    responses((status = 200, description = "The template", body = TemplateDetail),
              (status = 401, description = "Missing or invalid token", body = crate::error::ErrorBody),
              (status = 404, description = "No such template", body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn get_one(
    State(state): State<AppState>,
    _caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<TemplateDetail>, ApiError> {
    let t = state
        .templates
        .get(&id)
        .ok_or_else(|| template_error(TemplateError::Unknown(id)))?;
    Ok(Json(TemplateDetail {
        id: t.id.clone(),
        name: t.name.clone(),
        description: t.description.clone(),
        params_schema: t.params_schema.clone(),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateSubmission {
    template_id: String,
    #[serde(default = "empty_object")]
    params: serde_json::Value,
}

fn empty_object() -> serde_json::Value {
    serde_json::json!({})
}

fn template_error(e: TemplateError) -> ApiError {
    match e {
        TemplateError::Unknown(id) => ApiError::new(
            StatusCode::NOT_FOUND,
            "template_not_found",
            format!("no template {id:?}; list them with GET /v1/templates"),
        )
        .with_field("template_id"),
        TemplateError::Params(errors) => {
            let message = format!(
                "the params do not match the template's schema (GET /v1/templates/{{id}}): {}",
                errors.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; ")
            );
            let mut err = ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_param", message);
            if let Some(first) = errors.first() {
                err = err.with_field(first.field.clone());
            }
            err.details = errors.into_iter().map(|e| ErrorItem { code: e.code.into(), field: e.field, message: e.message }).collect();
            err
        }
        TemplateError::Render(m) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "template_render_failed",
            format!("the template could not be rendered with these params ({m}); check the params against its schema"),
        )
        .with_field("params"),
        TemplateError::Catalog { .. } => ApiError::internal(e.to_string()),
    }
}

/// Renders `{template_id, params}` into a v0.0.44 body; returns it, the template id and params.
pub(crate) fn render_request(
    state: &AppState,
    body: &serde_json::Value,
) -> Result<(serde_json::Value, String, serde_json::Value), ApiError> {
    let req: TemplateSubmission = crate::json::parse(body.to_string().as_bytes())?;
    if !req.params.is_object() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_param",
            "params must be an object of the template's parameters",
        )
        .with_field("params"));
    }
    let rendered = state
        .templates
        .render(&req.template_id, &req.params)
        .map_err(template_error)?;
    Ok((rendered, req.template_id, req.params))
}
