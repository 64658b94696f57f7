//! Bearer-token authentication: the [`Authorized`] extractor that every
//! protected operation takes as its first argument.
//!
//! Taking `Authorized` both checks the token and declares the `bearer`
//! security scheme on the operation in the OpenAPI document, so Swagger UI's
//! "Authorize" button works. `/health`, `/ready`, `/docs` and `/openapi.json`
//! do not take it. An empty `[api] token` turns the check off (SaveAny-Bot's
//! behaviour; the binary warns about it at start-up).
//!
//! The token is compared in constant time, and never logged or echoed.

use poem::http::header::AUTHORIZATION;
use poem::http::HeaderValue;
use poem::{Request, RequestBody};
use poem_openapi::auth::Bearer;
use poem_openapi::registry::Registry;
use poem_openapi::{ApiExtractor, ApiExtractorType, ExtractParamOptions, SecurityScheme};
use savestream_shared::config::Secret;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::state::AppState;

const MISSING: &str =
    "missing bearer token: send the header `Authorization: Bearer <token>` with the server's [api] token";
const MALFORMED: &str =
    "the Authorization header is not a bearer token: send `Authorization: Bearer <token>`";
const DUPLICATE: &str =
    "more than one Authorization header: send exactly one `Authorization: Bearer <token>`";
const WRONG: &str = "wrong bearer token: send the token set in the server's [api] token";

// The security scheme as the OpenAPI document declares it. Only its
// registration is used: `Authorized` does the checking. Its doc comment is the
// scheme's description in the document.
/// The server's `[api] token`, sent as `Authorization: Bearer <token>`. Not
/// required when the server runs with an empty token.
#[derive(SecurityScheme)]
#[oai(rename = "bearer", ty = "bearer")]
// The token field is read by the derived extractor, which is never called.
#[allow(dead_code)]
struct BearerScheme(Bearer);

/// Proof that the request carried the right token (or that none is configured).
pub struct Authorized;

impl<'a> ApiExtractor<'a> for Authorized {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::SecurityScheme];

    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        <BearerScheme as ApiExtractor>::register(registry);
    }

    fn security_schemes() -> Vec<&'static str> {
        <BearerScheme as ApiExtractor>::security_schemes()
    }

    async fn from_request(
        request: &'a Request,
        _body: &mut RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        let Some(state) = request.data::<AppState>() else {
            // The application always adds its state; reaching this is a wiring bug.
            tracing::error!("AppState missing from the request: the endpoint is not wired with .data()");
            return Err(ApiError::Internal.into());
        };
        // Two Authorization headers are ambiguous credentials: checking only
        // one of them would let a request through on whichever comes first.
        if !state.config.api.token.is_empty() && request.headers().get_all(AUTHORIZATION).iter().count() > 1 {
            return Err(ApiError::Unauthorized(DUPLICATE).into());
        }
        check(&state.token, request.headers().get(AUTHORIZATION))?;
        Ok(Authorized)
    }
}

/// The configured token as [`check`] compares it: its SHA-256 digest,
/// computed once at start-up instead of on every request. `None` when the
/// token is empty, which turns the check off.
#[derive(Clone)]
pub struct ExpectedToken(Option<[u8; 32]>);

impl ExpectedToken {
    pub fn new(token: &Secret) -> ExpectedToken {
        if token.is_empty() {
            return ExpectedToken(None);
        }
        ExpectedToken(Some(Sha256::digest(token.expose().as_bytes()).into()))
    }
}

/// Checks an `Authorization` header against the configured token.
pub fn check(token: &ExpectedToken, authorization: Option<&HeaderValue>) -> Result<(), ApiError> {
    let Some(expected) = &token.0 else {
        return Ok(());
    };
    let header = authorization.ok_or(ApiError::Unauthorized(MISSING))?;
    let text = header.to_str().map_err(|_| ApiError::Unauthorized(MALFORMED))?;
    let (scheme, presented) = text
        .trim()
        .split_once(' ')
        .ok_or(ApiError::Unauthorized(MALFORMED))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ApiError::Unauthorized(MALFORMED));
    }
    // Comparing digests keeps the comparison constant-time in the token's
    // length as well as its content.
    let presented: [u8; 32] = Sha256::digest(presented.trim().as_bytes()).into();
    if bool::from(presented.ct_eq(expected)) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized(WRONG))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(text: &str) -> HeaderValue {
        HeaderValue::from_str(text).unwrap()
    }

    #[test]
    fn the_right_token_passes_in_any_scheme_case() {
        let token = ExpectedToken::new(&Secret::new("s3cret"));
        assert!(check(&token, Some(&header("Bearer s3cret"))).is_ok());
        assert!(check(&token, Some(&header("bearer  s3cret "))).is_ok());
    }

    #[test]
    fn a_missing_malformed_or_wrong_token_is_refused() {
        let token = ExpectedToken::new(&Secret::new("s3cret"));
        let message = |value: Option<&str>| {
            let value = value.map(header);
            check(&token, value.as_ref()).unwrap_err().to_string()
        };
        assert_eq!(message(None), MISSING);
        assert_eq!(message(Some("Basic czNjcmV0")), MALFORMED);
        assert_eq!(message(Some("s3cret")), MALFORMED);
        assert_eq!(message(Some("Bearer s3cret2")), WRONG);
        assert_eq!(message(Some("Bearer ")), MALFORMED);
    }

    #[test]
    fn an_empty_configured_token_lets_every_request_through() {
        assert!(check(&ExpectedToken::new(&Secret::default()), None).is_ok());
    }
}
