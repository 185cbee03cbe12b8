//! Bearer-token authentication for the internal endpoints.
//!
//! Several tokens may be valid at once (`API_TOKEN` is a comma-separated
//! list) so that a calling service can rotate its key without downtime. The
//! comparison hashes both sides and compares the digests without early
//! exit, and every configured token is compared, so the time taken says
//! nothing about how much of a guess was right or which token matched.

use hyper::Request;
use hyper::body::Incoming;
use hyper::header::AUTHORIZATION;
use sha2::{Digest, Sha256};

use crate::config::Secret;

pub fn authorized(req: &Request<Incoming>, tokens: &[Secret]) -> bool {
    if tokens.is_empty() {
        return true;
    }
    let Some(presented) = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
    else {
        return false;
    };
    let presented = Sha256::digest(presented.as_bytes());
    tokens.iter().fold(false, |ok, t| {
        let expected = Sha256::digest(t.expose().as_bytes());
        let diff = presented
            .iter()
            .zip(expected.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        ok | (diff == 0)
    })
}
