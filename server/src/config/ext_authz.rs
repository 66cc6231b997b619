//! `server.ext_authz`: Envoy's external authorization service on the gRPC port, and how
//! it picks the profile for a request.

use http::HeaderName;
use serde::Deserialize;

use super::{ConfigError, ExtAuthzConfig, ExtAuthzRoute};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawExtAuthz {
    enabled: Option<bool>,
    context_extension: Option<String>,
    profile_header: Option<String>,
    #[serde(default)]
    routes: Vec<RawRoute>,
    max_request_bytes: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    host: Option<String>,
    path_prefix: Option<String>,
    profile: String,
}

const KEY: &str = "server.ext_authz";

impl RawExtAuthz {
    pub(super) fn validate(self) -> Result<ExtAuthzConfig, ConfigError> {
        let defaults = ExtAuthzConfig::default();
        let key = |k: &str| format!("{KEY}.{k}");
        let context_extension = self.context_extension.unwrap_or(defaults.context_extension);
        if context_extension.is_empty() {
            return Err(ConfigError::new(
                key("context_extension"),
                "must not be empty",
            ));
        }
        let profile_header = match self.profile_header {
            None => defaults.profile_header,
            // Empty: the profile comes only from the route's settings, never from the
            // request (a front proxy whose clients must not choose).
            Some(name) if name.is_empty() => None,
            Some(name) => Some(
                HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).map_err(|_| {
                    ConfigError::new(
                        key("profile_header"),
                        format!("`{name}` is not a header name"),
                    )
                })?,
            ),
        };
        let routes = self
            .routes
            .into_iter()
            .enumerate()
            .map(|(i, route)| route.validate(&key(&format!("routes[{i}]"))))
            .collect::<Result<_, _>>()?;
        let max_request_bytes = match self.max_request_bytes {
            Some(0) => {
                return Err(ConfigError::new(
                    key("max_request_bytes"),
                    "must be at least 1",
                ));
            }
            Some(n) => n,
            None => defaults.max_request_bytes,
        };
        Ok(ExtAuthzConfig {
            enabled: self.enabled.unwrap_or(defaults.enabled),
            context_extension,
            profile_header,
            routes,
            max_request_bytes,
        })
    }
}

impl RawRoute {
    fn validate(self, key: &str) -> Result<ExtAuthzRoute, ConfigError> {
        if self.host.is_none() && self.path_prefix.is_none() {
            return Err(ConfigError::new(
                key,
                "give `host`, `path_prefix` or both; a route that matches everything is a default profile for every caller",
            ));
        }
        if let Some(host) = &self.host
            && (host.is_empty() || host.contains(['/', ':', ' ']))
        {
            return Err(ConfigError::new(
                format!("{key}.host"),
                format!("`{host}` is not a host name (no scheme, port or path)"),
            ));
        }
        if let Some(prefix) = &self.path_prefix
            && !prefix.starts_with('/')
        {
            return Err(ConfigError::new(
                format!("{key}.path_prefix"),
                format!("`{prefix}` must start with `/`"),
            ));
        }
        if self.profile.is_empty() {
            return Err(ConfigError::new(
                format!("{key}.profile"),
                "must not be empty",
            ));
        }
        Ok(ExtAuthzRoute {
            host: self.host.map(|h| h.to_ascii_lowercase()),
            path_prefix: self.path_prefix,
            profile: self.profile,
        })
    }
}
