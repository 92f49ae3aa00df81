//! The last touches of the OpenAPI document, applied to what `utoipa` generated from the
//! handlers so that generators and validators read it as the server behaves:
//!
//! - a schema that `utoipa` inlined where a named one exists (the items of `List<T>` and
//!   `Paged<T>`) becomes a reference to it, so clients get one `Node` model, not one per list;
//! - the variants of a tagged union (`Shape`, `Delivery`, …) become named schemas
//!   (`ShapeGpus`, `DeliveryContainer`, …), which generators turn into plain classes;
//! - every error is documented as `application/problem+json` with the `Problem` schema, and
//!   every operation lists the statuses that the layers every request passes through can
//!   answer (see [`error_statuses`]), on top of those its handler documents itself.

use std::collections::BTreeMap;

use serde_json::Value;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::schema::{AdditionalProperties, ArrayItems, Discriminator, Schema};
use utoipa::openapi::{Content, OpenApi, Ref, RefOr, Response};

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Applies every touch.
pub fn finish(mut doc: OpenApi) -> OpenApi {
    dedupe_inlined_schemas(&mut doc);
    name_union_variants(&mut doc);
    document_errors(&mut doc);
    doc
}

fn json(s: &Schema) -> Value {
    serde_json::to_value(s).unwrap_or(Value::Null)
}

/// Replaces every inlined copy of a named component schema by a reference to it.
fn dedupe_inlined_schemas(doc: &mut OpenApi) {
    let Some(components) = doc.components.as_mut() else {
        return;
    };
    // Objects, enums and unions are worth a reference; scalars (ids, money) are already
    // written as references where they are used.
    let named: Vec<(String, Value)> = components
        .schemas
        .iter()
        .filter_map(|(name, schema)| match schema {
            RefOr::T(s @ Schema::Object(o))
                if !o.properties.is_empty() || o.enum_values.is_some() =>
            {
                Some((name.clone(), json(s)))
            }
            RefOr::T(s @ Schema::OneOf(_)) => Some((name.clone(), json(s))),
            _ => None,
        })
        .collect();
    for (name, schema) in &mut components.schemas {
        if let RefOr::T(s) = schema {
            replace_in_children(s, &named, name);
        }
    }
}

fn replace_copies(s: &mut RefOr<Schema>, named: &[(String, Value)], own: &str) {
    let RefOr::T(inner) = s else {
        return;
    };
    let v = json(inner);
    if let Some((name, _)) = named.iter().find(|(n, x)| *x == v && n != own) {
        *s = RefOr::Ref(Ref::from_schema_name(name.clone()));
        return;
    }
    replace_in_children(inner, named, own);
}

fn replace_in_children(s: &mut Schema, named: &[(String, Value)], own: &str) {
    match s {
        Schema::Object(o) => {
            for p in o.properties.values_mut() {
                replace_copies(p, named, own);
            }
            if let Some(AdditionalProperties::RefOr(r)) = o.additional_properties.as_deref_mut() {
                replace_copies(r, named, own);
            }
        }
        Schema::Array(a) => {
            if let ArrayItems::RefOrSchema(items) = &mut a.items {
                replace_copies(items, named, own);
            }
        }
        Schema::OneOf(o) => o
            .items
            .iter_mut()
            .for_each(|i| replace_copies(i, named, own)),
        Schema::AllOf(o) => o
            .items
            .iter_mut()
            .for_each(|i| replace_copies(i, named, own)),
        Schema::AnyOf(o) => o
            .items
            .iter_mut()
            .for_each(|i| replace_copies(i, named, own)),
        _ => {}
    }
}

/// Gives each inline object variant of a component's `oneOf` a name: the union's name and the
/// value of its tag (the one property every variant requires and fixes to its own value),
/// e.g. `Shape` + `{"kind": "gpus"}` = `ShapeGpus`. The union gets a discriminator.
fn name_union_variants(doc: &mut OpenApi) {
    let Some(components) = doc.components.as_mut() else {
        return;
    };
    let mut added = Vec::new();
    for (name, schema) in &mut components.schemas {
        let RefOr::T(Schema::OneOf(union)) = schema else {
            continue;
        };
        let Some(tag) = union_tag(&union.items) else {
            continue;
        };
        let mut mapping = BTreeMap::new();
        for variant in &mut union.items {
            let Some(value) = fixed_value(variant, &tag) else {
                continue;
            };
            let variant_name = format!("{name}{}", pascal(&value));
            let reference = Ref::from_schema_name(variant_name.clone());
            mapping.insert(value, reference.ref_location.clone());
            let body = std::mem::replace(variant, RefOr::Ref(reference));
            added.push((variant_name, body));
        }
        let mut discriminator = Discriminator::new(tag);
        discriminator.mapping = mapping;
        union.discriminator = Some(discriminator);
    }
    components.schemas.extend(added);
}

/// The single value an inline object variant requires `tag` to have.
fn fixed_value(variant: &RefOr<Schema>, tag: &str) -> Option<String> {
    let RefOr::T(Schema::Object(o)) = variant else {
        return None;
    };
    if !o.required.iter().any(|r| r == tag) {
        return None;
    }
    let RefOr::T(Schema::Object(p)) = o.properties.get(tag)? else {
        return None;
    };
    match p.enum_values.as_deref() {
        Some([Value::String(v)]) => Some(v.clone()),
        _ => None,
    }
}

/// The property that every variant requires and fixes to a value of its own.
fn union_tag(variants: &[RefOr<Schema>]) -> Option<String> {
    let RefOr::T(Schema::Object(first)) = variants.first()? else {
        return None;
    };
    first
        .properties
        .keys()
        .find(|key| {
            let values: Vec<Option<String>> =
                variants.iter().map(|v| fixed_value(v, key)).collect();
            values.iter().all(Option::is_some)
                && values
                    .iter()
                    .enumerate()
                    .all(|(i, v)| !values[..i].contains(v))
        })
        .cloned()
}

/// `bare-metal` → `BareMetal`, `leaf_group` → `LeafGroup`.
fn pascal(s: &str) -> String {
    s.split(['-', '_', '.'])
        .map(|w| {
            let mut c = w.chars();
            c.next().map_or_else(String::new, |f| {
                f.to_uppercase().chain(c).collect::<String>()
            })
        })
        .collect()
}

/// What an operation is made of, as far as the errors it can answer go.
struct Shape {
    /// Behind the API key check.
    secured: bool,
    /// A state-changing method (POST, PUT, PATCH, DELETE): it reads a body, accepts an
    /// `Idempotency-Key`, may be forwarded to the leader and writes to the database.
    write: bool,
    /// Takes query parameters or a body: either can be malformed.
    input: bool,
    /// Names a resource in its path, or filters by one (tenant, site or block) in its query.
    names_resource: bool,
    /// The liveness probe: it answers, or nothing does.
    liveness: bool,
}

/// The error statuses an operation of this shape can answer whatever its handler does, and
/// why. They come from the layers every request passes through: the key check (401, 403: no
/// endpoint is open to every role), the query and body extractors (400), the
/// `Idempotency-Key` handling of writes (400, 409 when a first answer was lost, 422 when a
/// key is reused), the body limit (413), forwarding from a follower replica (502, 504), and
/// the database (500, 503, and 507 for writes).
fn error_statuses(s: &Shape) -> Vec<(&'static str, String)> {
    if s.liveness {
        return Vec::new();
    }
    let mut out: Vec<(&'static str, String)> = Vec::new();
    if s.input || s.write {
        out.push((
            "400",
            "The request is invalid (`invalid_request`): a malformed query parameter, header \
             or body, or a field out of range; `detail` says which."
                .into(),
        ));
    }
    if s.secured {
        out.push((
            "401",
            "No valid API key (`unauthenticated`): missing, malformed, unknown, revoked or \
             expired. The answer carries `WWW-Authenticate: Bearer`."
                .into(),
        ));
        out.push((
            "403",
            "The key's role may not do this (`forbidden`).".into(),
        ));
    }
    if s.names_resource {
        out.push((
            "404",
            "Not found (`not_found`): it does not exist, or the key's tenant may not see it."
                .into(),
        ));
    }
    if s.write {
        out.push((
            "409",
            "The change conflicts with the current state (`conflict`, and for launches and \
             contracts `insufficient_capacity` or `quota_exceeded`), or a request with this \
             `Idempotency-Key` was applied but its answer was lost."
                .into(),
        ));
        out.push((
            "413",
            "The request body is larger than allowed (`payload_too_large`).".into(),
        ));
        out.push((
            "422",
            "This `Idempotency-Key` was already used for another request \
             (`idempotency_key_reused`)."
                .into(),
        ));
    }
    out.push((
        "500",
        "The server failed (`internal`); the detail is in its logs.".into(),
    ));
    if s.write {
        let lost = "A follower replica passed this write to the leader, which took it, but its \
                    answer was lost (`unavailable`): it may have been applied, so retry only \
                    with the same `Idempotency-Key`.";
        out.push(("502", lost.into()));
        out.push((
            "503",
            "Try again after `Retry-After` (`unavailable`): the database cannot be reached or \
             no replica leads right now; or the database cannot be written \
             (`storage_read_only`)."
                .into(),
        ));
        out.push((
            "504",
            format!("{lost} (The leader did not answer in time.)"),
        ));
        out.push((
            "507",
            "The database's disk is full (`storage_full`): the change was not made.".into(),
        ));
    } else {
        out.push((
            "503",
            "Try again after `Retry-After` (`unavailable`): the database cannot be reached.".into(),
        ));
    }
    out
}

/// Documents every error as problem+json and adds the statuses of [`error_statuses`].
fn document_errors(doc: &mut OpenApi) {
    for (path, item) in &mut doc.paths.paths {
        for (write, op) in [
            (false, &mut item.get),
            (false, &mut item.head),
            (true, &mut item.post),
            (true, &mut item.put),
            (true, &mut item.patch),
            (true, &mut item.delete),
        ] {
            if let Some(op) = op.as_mut() {
                document_operation_errors(path, write, op);
            }
        }
    }
}

fn document_operation_errors(path: &str, write: bool, op: &mut Operation) {
    let params = op.parameters.as_deref().unwrap_or_default();
    let in_query = |p: &&utoipa::openapi::path::Parameter| p.parameter_in == ParameterIn::Query;
    let shape = Shape {
        secured: op.security.is_some(),
        write,
        input: op.request_body.is_some() || params.iter().any(|p| in_query(&p)),
        names_resource: path.contains('{')
            || params
                .iter()
                .filter(in_query)
                .any(|p| matches!(p.name.as_str(), "tenant" | "site" | "block")),
        liveness: path == "/healthz",
    };
    for (status, description) in error_statuses(&shape) {
        let entry = op
            .responses
            .responses
            .entry(status.to_string())
            .or_insert_with(|| RefOr::T(Response::new("")));
        if let RefOr::T(r) = entry
            && r.description.is_empty()
        {
            r.description = description;
        }
    }
    for (status, response) in &mut op.responses.responses {
        if let RefOr::T(r) = response
            && (status.starts_with('4') || status.starts_with('5'))
        {
            r.content.clear();
            r.content.insert(
                PROBLEM_JSON.to_string(),
                Content::new(Some(Ref::from_schema_name("Problem"))),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pascal_case_of_wire_values() {
        assert_eq!(pascal("bare-metal"), "BareMetal");
        assert_eq!(pascal("leaf_group"), "LeafGroup");
        assert_eq!(pascal("gpus"), "Gpus");
    }

    #[test]
    fn a_union_tag_is_required_and_distinct_in_every_variant() {
        let v = |tag: &str| -> RefOr<Schema> {
            serde_json::from_value(serde_json::json!({
                "type": "object",
                "required": ["kind"],
                "properties": {"kind": {"type": "string", "enum": [tag]}}
            }))
            .unwrap()
        };
        assert_eq!(union_tag(&[v("a"), v("b")]).as_deref(), Some("kind"));
        assert_eq!(union_tag(&[v("a"), v("a")]), None);
    }
}
