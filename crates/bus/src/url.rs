//! Bus URLs: `mqtt://[USER[:PASSWORD]@]HOST[:PORT]`, port 1883 by default, or `mqtts://…` for
//! MQTT over TLS, port 8883 by default.

use std::fmt;
use std::str::FromStr;

/// Where a broker is, and optionally how to log in to it.
#[derive(Clone, PartialEq, Eq)]
pub struct BusUrl {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    /// `mqtts://`: MQTT over TLS.
    pub tls: bool,
}

/// Why a bus URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid bus URL '{url}': {reason} (expected mqtt://[user[:password]@]host[:port], or mqtts:// for TLS)")]
pub struct BusUrlError {
    url: String,
    reason: &'static str,
}

impl FromStr for BusUrl {
    type Err = BusUrlError;

    fn from_str(s: &str) -> Result<Self, BusUrlError> {
        let err = |reason| BusUrlError { url: redact(s), reason };
        let (tls, rest) = match s.strip_prefix("mqtts://") {
            Some(rest) => (true, rest),
            None => (
                false,
                s.strip_prefix("mqtt://")
                    .or_else(|| s.strip_prefix("tcp://"))
                    .ok_or_else(|| err("the scheme must be mqtt:// or mqtts://"))?,
            ),
        };
        let rest = rest.trim_end_matches('/');
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(u) => match u.split_once(':') {
                Some((user, pass)) => (Some(user.to_owned()), Some(pass.to_owned())),
                None => (Some(u.to_owned()), None),
            },
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                (h, p.parse::<u16>().map_err(|_| err("the port must be a number from 1 to 65535"))?)
            }
            _ => (hostport, if tls { 8883 } else { 1883 }),
        };
        if host.is_empty() || host.contains('/') {
            return Err(err("the host is missing"));
        }
        if port == 0 {
            return Err(err("the port must be a number from 1 to 65535"));
        }
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        Ok(BusUrl { host, port, username, password, tls })
    }
}

fn redact(s: &str) -> String {
    match (s.find("://"), s.rfind('@')) {
        (Some(i), Some(j)) if j > i => format!("{}://***@{}", &s[..i], &s[j + 1..]),
        _ => s.to_owned(),
    }
}

impl BusUrl {
    /// The URL without credentials, as agents and logs may see it.
    pub fn without_credentials(&self) -> BusUrl {
        BusUrl { username: None, password: None, ..self.clone() }
    }
}

/// Displays without the password.
impl fmt::Display for BusUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        match &self.username {
            Some(u) => write!(f, "{scheme}://{u}@{host}:{}", self.port),
            None => write!(f, "{scheme}://{host}:{}", self.port),
        }
    }
}

impl fmt::Debug for BusUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BusUrl({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        let u: BusUrl = "mqtt://127.0.0.1:1884".parse().unwrap();
        assert_eq!((u.host.as_str(), u.port, u.username), ("127.0.0.1", 1884, None));
        let u: BusUrl = "mqtt://bob:s3cr:et@broker".parse().unwrap();
        assert_eq!((u.host.as_str(), u.port), ("broker", 1883));
        assert_eq!((u.username.as_deref(), u.password.as_deref()), (Some("bob"), Some("s3cr:et")));
        assert_eq!(u.to_string(), "mqtt://bob@broker:1883");
        let u: BusUrl = "mqtt://[::1]:1883".parse().unwrap();
        assert_eq!(u.host, "::1");
        assert_eq!(u.to_string(), "mqtt://[::1]:1883");
        let u: BusUrl = "mqtts://broker".parse().unwrap();
        assert_eq!((u.tls, u.port, u.to_string().as_str()), (true, 8883, "mqtts://broker:8883"));
        assert!(!"mqtt://broker".parse::<BusUrl>().unwrap().tls);
    }

    #[test]
    fn refusals() {
        for (s, why) in [
            ("http://x", "the scheme must be mqtt:// or mqtts://"),
            ("mqtt://", "the host is missing"),
            ("mqtt://x:0", "the port must be a number from 1 to 65535"),
            ("mqtt://x:99999", "the port must be a number from 1 to 65535"),
        ] {
            assert_eq!(s.parse::<BusUrl>().unwrap_err().reason, why, "{s}");
        }
        let e = "mqtt://u:hunter2@x:0".parse::<BusUrl>().unwrap_err().to_string();
        assert!(!e.contains("hunter2"), "{e}");
    }
}
