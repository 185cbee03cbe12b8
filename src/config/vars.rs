//! Reading variables: each reader takes a name and a default, treats an
//! empty value as unset (Django's `os.environ.get(...) or default`), and
//! turns a bad value into a [`ConfigError`] naming the variable, the value
//! and what was expected.

use super::ConfigError;

/// A reader's name for a type: "u16", "IpAddr", "f64" (not the full path).
fn kind_of<T>() -> &'static str {
    let name = std::any::type_name::<T>();
    match name.rsplit("::").next().unwrap_or(name) {
        "IpAddr" => "an IP address",
        "u16" | "u32" | "u64" | "usize" => "a whole number",
        "f64" => "a number",
        other => other,
    }
}

pub(super) struct Vars<'a> {
    pub(super) get: &'a dyn Fn(&str) -> Option<String>,
}

impl Vars<'_> {
    /// A variable set to the empty string counts as unset, as in Django's
    /// `os.environ.get(...) or default` idiom.
    pub(super) fn opt(&self, name: &str) -> Option<String> {
        (self.get)(name).filter(|v| !v.trim().is_empty())
    }

    pub(super) fn string(&self, name: &str, default: &str) -> String {
        self.opt(name).unwrap_or_else(|| default.to_owned())
    }

    pub(super) fn parse<T: std::str::FromStr>(
        &self,
        name: &'static str,
        default: T,
    ) -> Result<T, ConfigError> {
        match self.opt(name) {
            None => Ok(default),
            Some(raw) => raw
                .trim()
                .parse()
                .map_err(|_| self.error(name, &raw, &format!("expected {}", kind_of::<T>()))),
        }
    }

    pub(super) fn bool(&self, name: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.opt(name) {
            None => Ok(default),
            Some(raw) => match raw.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => Ok(true),
                "0" | "false" | "no" | "off" => Ok(false),
                _ => Err(self.error(name, &raw, "expected true or false")),
            },
        }
    }

    /// An address such as `noreply@example.com` or `Blog <noreply@example.com>`.
    pub(super) fn mailbox(&self, name: &'static str, default: &str) -> Result<String, ConfigError> {
        let raw = self.string(name, default);
        raw.parse::<lettre::message::Mailbox>()
            .map(|_| raw.clone())
            .map_err(|_| self.error(name, &raw, "not a valid email address"))
    }

    pub(super) fn error(&self, variable: &'static str, value: &str, reason: &str) -> ConfigError {
        ConfigError {
            variable,
            value: value.to_owned(),
            reason: reason.to_owned(),
        }
    }
}
