//! The catalog's native endpoints:
//! - `PUT /v1/catalog/register`: store an instance (see [`Registration`]);
//! - `PUT /v1/catalog/deregister`: `{"service", "id"}` removes one;
//! - `PUT /v1/health/check/<service>/<id>`: a TTL check's report,
//!   `{"status": "passing"|"warning"|"critical", "output"}`;
//! - `GET /v1/lookup/<service>`: healthy instances, with failover.

use super::model::{check_name, Registration, Status};
use super::{lookup, store, Catalog, CatalogError};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

pub(super) fn routes(catalog: Catalog) -> Router {
    Router::new()
        .route("/v1/catalog/register", put(register))
        .route("/v1/catalog/deregister", put(deregister))
        .route("/v1/health/check/{service}/{id}", put(report))
        .route("/v1/lookup/{service}", get(lookup::lookup))
        .with_state(catalog)
}

/// Decodes a JSON body, naming what is wrong with it.
fn decode<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, CatalogError> {
    serde_json::from_slice(body).map_err(|e| CatalogError::Invalid(format!("bad JSON body: {e}")))
}

async fn register(State(catalog): State<Catalog>, body: Bytes) -> Response {
    let result = async {
        let valid = decode::<Registration>(&body)?.validate()?;
        let (service, id) = (valid.instance.service.clone(), valid.instance.id.clone());
        let done = store::register(&catalog.node, valid, catalog.server()).await?;
        Ok::<_, CatalogError>(json!({
            "service": service,
            "id": id,
            "lease": (done.lease != 0).then(|| done.lease.to_string()),
            "revision": done.revision.to_string(),
        }))
    }
    .await;
    respond(result)
}

/// A JSON answer, or the error in the API's format.
fn respond(result: Result<serde_json::Value, CatalogError>) -> Response {
    match result {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Deregistration {
    service: String,
    id: String,
}

async fn deregister(State(catalog): State<Catalog>, body: Bytes) -> Response {
    let result = async {
        let d: Deregistration = decode(&body)?;
        check_name("service", &d.service)?;
        check_name("id", &d.id)?;
        let revision = store::deregister(&catalog.node, &d.service, &d.id, None).await?;
        Ok::<_, CatalogError>(json!({
            "service": d.service, "id": d.id, "revision": revision.to_string()
        }))
    }
    .await;
    respond(result)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Report {
    status: String,
    #[serde(default)]
    output: String,
}

async fn report(
    State(catalog): State<Catalog>,
    Path((service, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let result = async {
        check_name("service", &service)?;
        check_name("id", &id)?;
        let r: Report = decode(&body)?;
        let status = Status::parse(&r.status).ok_or_else(|| {
            CatalogError::Invalid(format!(
                "status: {:?} is not passing, warning or critical",
                r.status
            ))
        })?;
        if r.output.len() > 4096 {
            return Err(CatalogError::Invalid(
                "output: at most 4096 bytes".to_string(),
            ));
        }
        let status = store::report(&catalog.node, &service, &id, status, &r.output).await?;
        Ok(json!({ "service": service, "id": id, "status": status }))
    }
    .await;
    respond(result)
}
