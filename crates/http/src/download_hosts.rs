//! Which hosts may receive a source's access token when a file lives on another host than the
//! API.
//!
//! Providers serve files from a host of their own that wants the API's Bearer token: LINE WORKS
//! answers a download request with a `302` to `apis-storage.worksmobile.com`, Zoom lists files
//! at `file.zoom.us`. The token goes to the API's own origin and to the hosts of the source's
//! `download_hosts`, over https (http only on loopback, for the emulator and tests); any other
//! host is refused before anything is sent there, naming the host, the provider and the key to
//! change.

use std::net::IpAddr;

use chatlake_core::config::InvalidConfig;
use url::{Host, Url};

use crate::{CredentialScope, redact_url};

/// One entry of `download_hosts`: a host, and a port if one was given.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HostPattern {
    /// As the URL crate writes hosts: lower case, IPv6 in brackets.
    host: String,
    /// `None`: the default port of the URL's scheme.
    port: Option<u16>,
}

impl HostPattern {
    /// Parses `host` or `host:port`; anything else (a scheme, a path, user info) is refused.
    fn parse(entry: &str) -> Result<HostPattern, String> {
        let entry = entry.trim();
        let refuse = || format!("expected `host` or `host:port`, got {entry:?}");
        if entry.is_empty() || entry.contains(['/', '@', '?', '#']) {
            return Err(refuse());
        }
        // `https://` only to let the URL crate read the host and port; the scheme is not kept.
        let url = Url::parse(&format!("https://{entry}/")).map_err(|_| refuse())?;
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(refuse)?;
        // `Url` drops 443 as https' default: an explicit `:443` is the same as none.
        Ok(HostPattern {
            host: host.to_owned(),
            port: url.port(),
        })
    }

    fn matches(&self, url: &Url) -> bool {
        url.host_str() == Some(self.host.as_str()) && url.port() == self.port
    }
}

/// The hosts an access token may be sent to for a file: the API's origin and the listed hosts.
pub struct DownloadHosts {
    /// The provider's name, as messages say it (`LINE WORKS`, `Zoom`).
    provider: &'static str,
    api: CredentialScope,
    listed: Vec<HostPattern>,
}

/// Why the token may not go to a URL. Nothing is requested from it.
#[derive(Debug, thiserror::Error)]
pub enum DownloadHostRefused {
    #[error(
        "the {provider} file at {url}, on host `{host}`, is neither on the API's host nor on one \
         listed in `download_hosts`: the access token is not sent there and the file is not \
         fetched. If `{host}` is the {provider} file host, add it to `download_hosts`"
    )]
    Unlisted {
        provider: &'static str,
        url: String,
        host: String,
    },
    #[error(
        "the {provider} file at {url}, on host `{host}` (listed in `download_hosts`), is served \
         over {scheme}: the access token goes only over https (http only to loopback), so the \
         file is not fetched"
    )]
    Insecure {
        provider: &'static str,
        url: String,
        host: String,
        scheme: String,
    },
}

impl DownloadHosts {
    /// `provider`'s API at `base` and the `download_hosts` entries; a bad entry is an error at
    /// `download_hosts[i]`.
    pub fn new(
        provider: &'static str,
        base: &Url,
        entries: &[String],
    ) -> Result<DownloadHosts, InvalidConfig> {
        let listed = entries
            .iter()
            .enumerate()
            .map(|(i, entry)| {
                HostPattern::parse(entry)
                    .map_err(|message| InvalidConfig::new(format!("download_hosts[{i}]"), message))
            })
            .collect::<Result<_, _>>()?;
        Ok(DownloadHosts {
            provider,
            api: CredentialScope::new(base),
            listed,
        })
    }

    /// Adds a host (the emulator's file host under `--emulate`).
    pub fn also(mut self, entry: &str) -> Result<DownloadHosts, InvalidConfig> {
        let pattern = HostPattern::parse(entry).map_err(|message| {
            InvalidConfig::new(
                "download_hosts",
                format!("the emulator's file host: {message}"),
            )
        })?;
        self.listed.push(pattern);
        Ok(self)
    }

    /// Whether the token may be sent to `url`: the API's own origin, or a listed host over https
    /// (http only on loopback).
    pub fn token_may_go_to(&self, url: &Url) -> Result<(), DownloadHostRefused> {
        if self.api.allows(url) {
            return Ok(());
        }
        let host = match (url.host_str(), url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            (None, _) => String::new(),
        };
        if !self.listed.iter().any(|p| p.matches(url)) {
            return Err(DownloadHostRefused::Unlisted {
                provider: self.provider,
                url: redact_url(url),
                host,
            });
        }
        let secure = url.scheme() == "https" || (url.scheme() == "http" && is_loopback(url));
        if !secure {
            return Err(DownloadHostRefused::Insecure {
                provider: self.provider,
                url: redact_url(url),
                host,
                scheme: url.scheme().to_owned(),
            });
        }
        Ok(())
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT_DOWNLOAD_HOST: &str = "apis-storage.worksmobile.com";

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    fn hosts(base: &str, entries: &[&str]) -> DownloadHosts {
        let entries: Vec<String> = entries.iter().map(|e| e.to_string()).collect();
        DownloadHosts::new("LINE WORKS", &url(base), &entries).unwrap()
    }

    #[test]
    fn the_api_origin_and_listed_hosts_get_the_token() {
        let h = hosts("https://www.worksapis.com/v1.0", &[DEFAULT_DOWNLOAD_HOST]);
        assert!(
            h.token_may_go_to(&url("https://www.worksapis.com/files/1"))
                .is_ok()
        );
        assert!(
            h.token_may_go_to(&url("https://apis-storage.worksmobile.com/k/abc?sig=1"))
                .is_ok()
        );
        assert!(
            h.token_may_go_to(&url("https://APIS-STORAGE.worksmobile.com:443/k"))
                .is_ok(),
            "host names are case-insensitive; 443 is https' default"
        );
    }

    #[test]
    fn other_hosts_ports_and_plain_http_are_refused() {
        let h = hosts("https://www.worksapis.com/v1.0", &[DEFAULT_DOWNLOAD_HOST]);
        let e = h
            .token_may_go_to(&url("https://evil.example.com/f?sig=secret"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`evil.example.com`"), "{e}");
        assert!(e.contains("`download_hosts`"), "{e}");
        assert!(
            e.contains("the LINE WORKS file host"),
            "the provider is named: {e}"
        );
        assert!(!e.contains("secret"), "no query in errors: {e}");
        assert!(
            h.token_may_go_to(&url("https://apis-storage.worksmobile.com:8443/k"))
                .is_err(),
            "another port is another host"
        );
        let e = h
            .token_may_go_to(&url("http://apis-storage.worksmobile.com/k"))
            .unwrap_err();
        assert!(matches!(e, DownloadHostRefused::Insecure { .. }), "{e}");
        assert!(
            h.token_may_go_to(&url("https://storage.worksmobile.com.evil.io/k"))
                .is_err()
        );
    }

    #[test]
    fn http_is_allowed_on_loopback_only() {
        let h = hosts(
            "http://127.0.0.1:4000/v1.0",
            &["127.0.0.1:4001", "localhost:4002"],
        );
        assert!(
            h.token_may_go_to(&url("http://127.0.0.1:4001/files/x"))
                .is_ok()
        );
        assert!(
            h.token_may_go_to(&url("http://localhost:4002/files/x"))
                .is_ok()
        );
        assert!(
            h.token_may_go_to(&url("http://127.0.0.1:4003/files/x"))
                .is_err()
        );
        let h = hosts("http://127.0.0.1:4000/v1.0", &["[::1]:4001"]);
        assert!(h.token_may_go_to(&url("http://[::1]:4001/files/x")).is_ok());
    }

    #[test]
    fn entries_are_hosts_with_an_optional_port() {
        let base = url("https://www.worksapis.com/v1.0");
        for bad in [
            "",
            "https://x.com",
            "x.com/path",
            "user@x.com",
            "x.com:notaport",
            "x.com:99999",
        ] {
            let e = DownloadHosts::new("LINE WORKS", &base, &["ok.com".into(), bad.into()])
                .err()
                .unwrap_or_else(|| panic!("{bad:?} should be refused"));
            assert_eq!(e.key, "download_hosts[1]", "{bad:?}");
        }
    }
}
