//! The consumers' bearer token, checked the same way for gRPC metadata (`server.rs`) and HTTP
//! headers (`http.rs`): in constant time, so timing does not tell how much of a guess was right.

/// Why a consumer's credentials were refused.
#[derive(Debug, thiserror::Error)]
pub enum BadToken {
    /// No `Bearer` authorization was sent.
    #[error("missing authorization: Bearer <token>")]
    Missing,
    /// The token sent is not the consumers' token.
    #[error("wrong bearer token")]
    Wrong,
}

/// Checks an `authorization` header's value against `Bearer <token>` (gRPC metadata and HTTP
/// alike).
pub fn check_bearer(authorization: Option<&str>, token: &str) -> Result<(), BadToken> {
    let given = authorization
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(BadToken::Missing)?;
    // Compare every byte, so timing does not tell how much of a guess was right.
    let same = given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same { Ok(()) } else { Err(BadToken::Wrong) }
}
