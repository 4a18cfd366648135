//! The OpenAPI 3.1 document, generated from the handlers and types.

use std::sync::OnceLock;

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::api;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "seatrush gateway",
        description = "Course enrollment over HTTP: requests with idempotency keys, live answers as Server-Sent Events, and the course list.",
    ),
    paths(
        api::post_request,
        api::get_request,
        api::events,
        api::list_courses,
        api::get_course,
        api::me,
        api::config,
        api::dev_token,
    ),
    components(schemas(
        api::Problem,
        api::RequestInput,
        api::RequestView,
        api::Me,
        api::WaitlistPlaceView,
        api::ConfigView,
        api::DevTokenInput,
        api::DevToken,
        crate::courses::CourseView,
        crate::courses::CourseList,
        seatrush_core::protocol::Answer,
        seatrush_core::protocol::Stage,
    )),
    modifiers(&Bearer),
)]
struct ApiDoc;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut scheme = Http::new(HttpAuthScheme::Bearer);
        scheme.bearer_format = Some("JWT".into());
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// The document as JSON, built once.
pub fn openapi_json() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| ApiDoc::openapi().to_pretty_json().unwrap_or_default())
}
