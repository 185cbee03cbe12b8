//! Which web origins may call the API from a browser: django-cors-headers'
//! three variables, so that an existing `.env` keeps its meaning.
//!
//! Nothing is allowed by default. Every configured origin is checked at
//! start (a typo such as a trailing path would otherwise silently allow
//! nothing), and so is every regular expression.

use regex::Regex;

use super::ConfigError;
use super::vars::Vars;

#[derive(Debug, Clone, Default)]
pub struct CorsConfig {
    /// `CORS_ALLOWED_ORIGINS`: exact origins, `scheme://host[:port]`, lower case.
    pub allowed_origins: Vec<String>,
    /// `CORS_ALLOWED_ORIGIN_REGEXES`: an origin is allowed when one of them
    /// matches from its first character, as Python's `re.match` does.
    pub origin_regexes: Vec<Regex>,
    /// `CORS_ALLOW_ALL_ORIGINS`.
    pub allow_all: bool,
}

impl CorsConfig {
    /// Whether any origin at all can be allowed; without it, answers carry
    /// no CORS header (not even `Vary`), as before CORS existed.
    pub fn enabled(&self) -> bool {
        self.allow_all || !self.allowed_origins.is_empty() || !self.origin_regexes.is_empty()
    }

    /// Whether a browser page served from `origin` may read our answers.
    pub fn allows(&self, origin: &str) -> bool {
        if self.allow_all {
            return true;
        }
        // Browsers send scheme and host in lower case; a hand-written
        // header may not, and the comparison should not care.
        let origin = origin.to_ascii_lowercase();
        self.allowed_origins.contains(&origin)
            || self
                .origin_regexes
                .iter()
                .any(|re| re.find(&origin).is_some_and(|m| m.start() == 0))
    }
}

pub(super) fn read(v: &Vars) -> Result<CorsConfig, ConfigError> {
    const ORIGINS: &str = "CORS_ALLOWED_ORIGINS";
    const REGEXES: &str = "CORS_ALLOWED_ORIGIN_REGEXES";
    let allowed_origins = list(v, ORIGINS)
        .into_iter()
        .map(|o| {
            check_origin(&o)
                .map(|()| o.to_ascii_lowercase())
                .map_err(|reason| v.error(ORIGINS, &o, &reason))
        })
        .collect::<Result<_, _>>()?;
    let origin_regexes = list(v, REGEXES)
        .into_iter()
        .map(|r| {
            Regex::new(&r).map_err(|e| {
                // The parser's message spans lines (the pattern, a caret);
                // the start error is one line.
                let e = e.to_string();
                let e: Vec<&str> = e.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
                v.error(
                    REGEXES,
                    &r,
                    &format!("not a valid regular expression: {}", e.join(" ")),
                )
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(CorsConfig {
        allowed_origins,
        origin_regexes,
        allow_all: v.bool("CORS_ALLOW_ALL_ORIGINS", false)?,
    })
}

/// The comma-separated items of a variable, trimmed, empty ones dropped.
fn list(v: &Vars, name: &str) -> Vec<String> {
    v.opt(name)
        .map(|raw| {
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// An origin as a browser sends it: `scheme://host[:port]`, nothing after.
fn check_origin(origin: &str) -> Result<(), String> {
    const SHAPE: &str = "expected scheme://host[:port] with no path, e.g. https://blog.example.com";
    let Some((scheme, rest)) = origin.split_once("://") else {
        return Err(format!("no scheme; {SHAPE}"));
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    if !scheme_ok {
        return Err(format!("bad scheme {scheme:?}; {SHAPE}"));
    }
    if rest.contains(['/', '?', '#', '@']) {
        return Err(format!("an origin has no path, query or user; {SHAPE}"));
    }
    let (host, port) = match rest.rsplit_once(':') {
        // A bracketed IPv6 literal has colons of its own.
        Some((h, p)) if !p.contains(']') => (h, Some(p)),
        _ => (rest, None),
    };
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(format!("no host; {SHAPE}"));
    }
    if let Some(p) = port
        && p.parse::<u16>().is_err()
    {
        return Err(format!("port {p:?} is not a number up to 65535; {SHAPE}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(pairs: &[(&str, &str)]) -> Result<CorsConfig, ConfigError> {
        let get = |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        };
        read(&Vars { get: &get })
    }

    #[test]
    fn nothing_is_allowed_by_default() {
        let c = load(&[]).unwrap();
        assert!(!c.enabled());
        assert!(!c.allows("https://example.com"));
    }

    #[test]
    fn listed_origins_match_exactly_and_ignore_case() {
        let c = load(&[(
            "CORS_ALLOWED_ORIGINS",
            "https://blog.example.com, http://localhost:8080",
        )])
        .unwrap();
        assert!(c.enabled());
        assert!(c.allows("https://blog.example.com"));
        assert!(c.allows("HTTPS://Blog.Example.com"));
        assert!(c.allows("http://localhost:8080"));
        assert!(!c.allows("http://localhost:8081"));
        assert!(!c.allows("http://blog.example.com"));
        assert!(!c.allows("https://blog.example.com.evil.test"));
        assert!(!c.allows("null"));
    }

    #[test]
    fn regexes_match_from_the_start_like_re_match() {
        let c = load(&[("CORS_ALLOWED_ORIGIN_REGEXES", r"https://\w+\.example\.com$")]).unwrap();
        assert!(c.allows("https://shop.example.com"));
        assert!(!c.allows("https://shop.example.com.evil.test"));
        assert!(!c.allows("http://x.test/https://a.example.com"));
    }

    #[test]
    fn allow_all_allows_any_origin() {
        let c = load(&[("CORS_ALLOW_ALL_ORIGINS", "true")]).unwrap();
        assert!(c.allows("https://anything.test"));
    }

    #[test]
    fn bad_values_name_the_variable() {
        let cases = [
            ("CORS_ALLOWED_ORIGINS", "blog.example.com"),
            ("CORS_ALLOWED_ORIGINS", "https://blog.example.com/"),
            (
                "CORS_ALLOWED_ORIGINS",
                "https://ok.test,https://x.test/contact",
            ),
            ("CORS_ALLOWED_ORIGINS", "https://x.test:99999"),
            ("CORS_ALLOWED_ORIGINS", "https://"),
            ("CORS_ALLOWED_ORIGIN_REGEXES", "https://(unclosed"),
            ("CORS_ALLOW_ALL_ORIGINS", "sometimes"),
        ];
        for (var, value) in cases {
            let err = load(&[(var, value)]).expect_err(value);
            assert_eq!(err.variable, var, "{value}");
            assert!(err.to_string().contains(var), "{err}");
        }
        assert!(load(&[("CORS_ALLOWED_ORIGINS", "http://[::1]:8080")]).is_ok());
    }
}
