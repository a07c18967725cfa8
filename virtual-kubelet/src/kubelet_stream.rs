//! `exec`, `attach` and `portForward` on the virtual node, pure part: what the consumer's apiserver asked
//! for (path, query, upgrade headers), checked and bounded, as the request to the provider's
//! `pods/exec|attach|portforward`; and the provider's answer, checked before it goes back.
//!
//! The streams themselves are not parsed here: once both sides agreed on a protocol (SPDY/3.1, which 1.20
//! apiservers speak to kubelets, or WebSocket), the two upgraded connections are joined byte for byte
//! ([`crate::kubelet_server`]). Stream headers (`streamType`, `port`, `requestID`) name nothing that
//! differs between the pod and its remote twin (same pod name, container names and ports), so nothing in
//! them needs rewriting; what the provider may choose (the protocol, the WebSocket accept and
//! subprotocol) is checked against what was asked.

use std::fmt;

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

/// Which streaming request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamKind {
    /// `exec`: a command in a container.
    Exec,
    /// `attach`: to a container's main process.
    Attach,
    /// `portForward`: to the pod's ports.
    PortForward,
}

impl StreamKind {
    /// The provider's pod subresource.
    pub fn subresource(self) -> &'static str {
        match self {
            StreamKind::Exec => "exec",
            StreamKind::Attach => "attach",
            StreamKind::PortForward => "portforward",
        }
    }
}

impl fmt::Display for StreamKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StreamKind::Exec => "exec",
            StreamKind::Attach => "attach",
            StreamKind::PortForward => "portForward",
        })
    }
}

/// The pod (and container) a streaming request is for, from its path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamTarget {
    /// Which request.
    pub kind: StreamKind,
    /// The pod's namespace (here, in the consumer).
    pub namespace: String,
    /// The pod.
    pub pod: String,
    /// The pod's UID, when the path names it (the kubelet then serves only that pod, not a namesake).
    pub uid: Option<String>,
    /// The container (`exec`, `attach`).
    pub container: Option<String>,
}

/// Why a streaming request is refused (400), naming the part of it and the fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused(pub String);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The most arguments a command may have, and their bytes in all (a request line stays small).
pub const MAX_COMMAND_ARGS: usize = 1024;
/// See [`MAX_COMMAND_ARGS`].
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;
/// The most `X-Stream-Protocol-Version` values a request may offer.
pub const MAX_PROTOCOLS: usize = 16;
/// The most ports one `portForward` may name in its query (WebSocket).
pub const MAX_PORTS: usize = 64;

/// What is asked of the streams: the command, which of stdin/stdout/stderr, a TTY; or the ports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamOptions {
    /// `command` (exec), in order.
    pub command: Vec<String>,
    /// `input`: stdin is streamed.
    pub stdin: bool,
    /// `output`: stdout is streamed.
    pub stdout: bool,
    /// `error`: stderr is streamed (never with a TTY: a TTY has one output).
    pub stderr: bool,
    /// `tty`.
    pub tty: bool,
    /// `port` (portForward over WebSocket names its ports in the query; SPDY in stream headers).
    pub ports: Vec<u16>,
}

impl StreamOptions {
    /// Parses the query the apiserver passes a kubelet (`command`, `input`, `output`, `error`, `tty`;
    /// `port`), checked like a kubelet checks it: exec needs a command, exec and attach at least one of
    /// stdin, stdout, stderr; stderr is dropped with a TTY. An unknown key is ignored.
    pub fn parse(kind: StreamKind, query: &str) -> Result<Self, Refused> {
        let mut o = StreamOptions::default();
        let mut bytes = 0;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = crate::kubelet_api::percent_decode(v);
            let flag = || match v.as_str() {
                "" | "1" | "true" => Ok(true),
                "0" | "false" => Ok(false),
                _ => Err(Refused(format!("{k}={v:?}: expected 1, true, 0 or false"))),
            };
            match k {
                "command" if kind == StreamKind::Exec => {
                    bytes += v.len();
                    if o.command.len() >= MAX_COMMAND_ARGS || bytes > MAX_COMMAND_BYTES {
                        return Err(Refused(format!(
                            "command: more than {MAX_COMMAND_ARGS} arguments or {MAX_COMMAND_BYTES} bytes (fix: pass long input on stdin)"
                        )));
                    }
                    if v.contains('\0') {
                        return Err(Refused("command: an argument holds a NUL byte".into()));
                    }
                    o.command.push(v);
                }
                "input" => o.stdin = flag()?,
                "output" => o.stdout = flag()?,
                "error" => o.stderr = flag()?,
                "tty" => o.tty = flag()?,
                "port" if kind == StreamKind::PortForward => {
                    let p =
                        v.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                            Refused(format!("port={v:?}: expected a port number, 1 to 65535"))
                        })?;
                    if o.ports.len() >= MAX_PORTS {
                        return Err(Refused(format!("port: more than {MAX_PORTS} ports")));
                    }
                    o.ports.push(p);
                }
                _ => {}
            }
        }
        if kind == StreamKind::PortForward {
            return Ok(StreamOptions {
                ports: o.ports,
                ..Default::default()
            });
        }
        if kind == StreamKind::Exec && o.command.is_empty() {
            return Err(Refused(
                "command: exec needs a command (kubectl exec POD -- CMD)".into(),
            ));
        }
        if o.tty && o.stderr {
            // as a kubelet does: a TTY has one output
            o.stderr = false;
        }
        if !(o.stdin || o.stdout || o.stderr) {
            return Err(Refused(format!(
                "{kind}: at least one of input (stdin), output (stdout), error (stderr) is needed"
            )));
        }
        Ok(o)
    }
}

impl StreamTarget {
    /// The provider's request URI for the twin of this pod in `remote_namespace` (same pod name).
    pub fn provider_uri(&self, remote_namespace: &str, o: &StreamOptions) -> String {
        let mut q: Vec<(&str, String)> = Vec::new();
        if let Some(c) = &self.container {
            q.push(("container", c.clone()));
        }
        for (key, on) in [
            ("stdin", o.stdin),
            ("stdout", o.stdout),
            ("stderr", o.stderr),
            ("tty", o.tty),
        ] {
            if on {
                q.push((key, "true".into()));
            }
        }
        q.extend(o.command.iter().map(|c| ("command", c.clone())));
        q.extend(o.ports.iter().map(|p| ("ports", p.to_string())));
        let query = q
            .iter()
            .map(|(k, v)| format!("{k}={}", percent_encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let mut uri = format!(
            "/api/v1/namespaces/{remote_namespace}/pods/{}/{}",
            self.pod,
            self.kind.subresource()
        );
        if !query.is_empty() {
            uri.push('?');
            uri.push_str(&query);
        }
        uri
    }
}

/// Every byte but the unreserved ones (RFC 3986) as `%XX`.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The protocol switch the apiserver asked for, checked: the headers that go on to the provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upgrade {
    /// `SPDY/3.1` or `websocket`, as asked.
    pub protocol: String,
    /// The stream protocol versions offered (`v4.channel.k8s.io`, `portforward.k8s.io`, …).
    pub versions: Vec<String>,
    /// The WebSocket subprotocols offered.
    pub subprotocols: Vec<String>,
    /// The headers to send the provider (with `Connection: Upgrade`).
    pub forward: Vec<(HeaderName, HeaderValue)>,
}

/// A header token: what protocol names, versions and WebSocket keys are made of, bounded.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/=".contains(&b))
}

/// Every value of `name`, split at commas, trimmed.
fn values(h: &HeaderMap, name: &str) -> Result<Vec<String>, Refused> {
    let mut out = Vec::new();
    for v in h.get_all(name) {
        let v = v.to_str().map_err(|_| Refused(format!("{name}: not ASCII")))?;
        out.extend(
            v.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty()),
        );
    }
    Ok(out)
}

/// Checks the apiserver's upgrade request: `Upgrade` is SPDY/3.1 or websocket, the offered versions and
/// subprotocols are tokens and at most [`MAX_PROTOCOLS`], a WebSocket has its key and version.
pub fn upgrade_request(h: &HeaderMap) -> Result<Upgrade, Refused> {
    let asked = values(h, "upgrade")?;
    let protocol = match asked.as_slice() {
        [p] if p.eq_ignore_ascii_case("SPDY/3.1") => "SPDY/3.1".to_string(),
        [p] if p.eq_ignore_ascii_case("websocket") => "websocket".to_string(),
        [] => {
            return Err(Refused(
                "Upgrade: this is a streaming endpoint; ask for Upgrade: SPDY/3.1 or websocket".into(),
            ));
        }
        _ => {
            return Err(Refused(format!(
                "Upgrade: {asked:?}: only SPDY/3.1 and websocket are spoken"
            )));
        }
    };
    let versions = values(h, "x-stream-protocol-version")?;
    let subprotocols = values(h, "sec-websocket-protocol")?;
    for (name, list) in [
        ("X-Stream-Protocol-Version", &versions),
        ("Sec-WebSocket-Protocol", &subprotocols),
    ] {
        if list.len() > MAX_PROTOCOLS {
            return Err(Refused(format!("{name}: more than {MAX_PROTOCOLS} values")));
        }
        if let Some(bad) = list.iter().find(|v| !is_token(v)) {
            return Err(Refused(format!("{name}: {bad:?} is not a protocol name")));
        }
    }
    let mut forward = vec![
        (http::header::CONNECTION, HeaderValue::from_static("Upgrade")),
        (
            http::header::UPGRADE,
            HeaderValue::from_str(&protocol).expect("a token"),
        ),
    ];
    let header = |v: &str| HeaderValue::from_str(v).expect("checked tokens");
    forward.extend(
        versions
            .iter()
            .map(|v| (HeaderName::from_static("x-stream-protocol-version"), header(v))),
    );
    if protocol == "websocket" {
        for name in ["sec-websocket-key", "sec-websocket-version"] {
            match values(h, name)?.as_slice() {
                [v] if is_token(v) => forward.push((HeaderName::from_static(name), header(v))),
                _ => return Err(Refused(format!("{name}: one value is needed for a WebSocket"))),
            }
        }
        if !subprotocols.is_empty() {
            forward.push((
                http::header::SEC_WEBSOCKET_PROTOCOL,
                header(&subprotocols.join(", ")),
            ));
        }
    }
    Ok(Upgrade {
        protocol,
        versions,
        subprotocols,
        forward,
    })
}

/// Checks the provider's `101 Switching Protocols` against what was asked: the same protocol, a stream
/// version (and WebSocket subprotocol) among those offered. Gives the headers of the answer to the
/// apiserver; an answer that does not fit is refused (the connection is then not joined).
pub fn upgrade_answer(asked: &Upgrade, h: &HeaderMap) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    let upgrade = values(h, "upgrade").map_err(|e| e.0)?;
    if !matches!(upgrade.as_slice(), [p] if p.eq_ignore_ascii_case(&asked.protocol)) {
        return Err(format!(
            "the provider switched to {upgrade:?}, not the {} asked for",
            asked.protocol
        ));
    }
    let mut out = vec![
        (http::header::CONNECTION, HeaderValue::from_static("Upgrade")),
        (
            http::header::UPGRADE,
            HeaderValue::from_str(&asked.protocol).expect("a token"),
        ),
    ];
    let one_of = |name: &'static str, offered: &[String]| -> Result<Option<HeaderValue>, String> {
        match values(h, name).map_err(|e| e.0)?.as_slice() {
            [] => Ok(None),
            [v] if offered.contains(v) => Ok(Some(HeaderValue::from_str(v).expect("an offered token"))),
            other => Err(format!(
                "the provider chose {name} {other:?}, not one of {offered:?}"
            )),
        }
    };
    if let Some(v) = one_of("x-stream-protocol-version", &asked.versions)? {
        out.push((HeaderName::from_static("x-stream-protocol-version"), v));
    }
    if asked.protocol == "websocket" {
        if let Some(v) = one_of("sec-websocket-protocol", &asked.subprotocols)? {
            out.push((http::header::SEC_WEBSOCKET_PROTOCOL, v));
        }
        match values(h, "sec-websocket-accept").map_err(|e| e.0)?.as_slice() {
            [v] if is_token(v) => out.push((
                http::header::SEC_WEBSOCKET_ACCEPT,
                HeaderValue::from_str(v).expect("a token"),
            )),
            _ => return Err("the provider's WebSocket answer has no Sec-WebSocket-Accept".into()),
        }
    }
    Ok(out)
}

/// The most of a provider's refusal that is read.
pub const MAX_REFUSAL_BYTES: usize = 64 * 1024;
/// The most of its message that is passed on.
const MAX_MESSAGE_CHARS: usize = 1024;

/// The provider's refusal (any status but 101) as the answer to the apiserver: a `Status` (what kubectl
/// prints) whose message says it is the provider's, cut to a bounded length; only the fields kubectl reads
/// are kept. A body that is no `Status` becomes one with its text.
pub fn provider_refusal(provider: &str, status: u16, body: &[u8]) -> (StatusCode, serde_json::Value) {
    let code = StatusCode::from_u16(status)
        .ok()
        .filter(|c| c.is_client_error() || c.is_server_error())
        .unwrap_or(StatusCode::BAD_GATEWAY);
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let field = |k: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(k))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    let message = field("message").unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string());
    let message: String = message
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_MESSAGE_CHARS)
        .collect();
    let reason = field("reason")
        .filter(|r| r.len() <= 64 && r.bytes().all(|b| b.is_ascii_alphanumeric()))
        .unwrap_or_else(|| "InternalError".into());
    let status = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": format!("provider {provider}: {message}"),
        "reason": reason,
        "code": code.as_u16(),
    });
    (code, status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn target(kind: StreamKind, container: Option<&str>) -> StreamTarget {
        StreamTarget {
            kind,
            namespace: "shop".into(),
            pod: "web-1".into(),
            uid: None,
            container: container.map(str::to_string),
        }
    }

    #[test]
    fn an_exec_query_becomes_the_providers_exec_request() {
        let o = StreamOptions::parse(
            StreamKind::Exec,
            "command=sh&command=-c&command=echo+a%26b%3Dc+%24HOME&input=1&output=1&tty=1&error=1&x=y",
        )
        .unwrap();
        assert_eq!(o.command, ["sh", "-c", "echo a&b=c $HOME"]);
        // a TTY has one output: stderr is dropped, as a kubelet does
        assert!(o.stdin && o.stdout && o.tty && !o.stderr);
        let uri = target(StreamKind::Exec, Some("app")).provider_uri("shop-consumer-c1", &o);
        assert_eq!(
            uri,
            "/api/v1/namespaces/shop-consumer-c1/pods/web-1/exec?container=app&stdin=true&stdout=true&tty=true&command=sh&command=-c&command=echo%20a%26b%3Dc%20%24HOME"
        );
        let o = StreamOptions::parse(StreamKind::Attach, "output=1&error=1&command=ignored").unwrap();
        assert!(o.command.is_empty() && o.stdout && o.stderr);
        assert_eq!(
            target(StreamKind::Attach, Some("app")).provider_uri("ns", &o),
            "/api/v1/namespaces/ns/pods/web-1/attach?container=app&stdout=true&stderr=true"
        );
    }

    #[test]
    fn port_forward_takes_only_ports() {
        let o = StreamOptions::parse(StreamKind::PortForward, "port=8080&port=53&input=1").unwrap();
        assert_eq!(o.ports, [8080, 53]);
        assert!(!o.stdin);
        assert_eq!(
            target(StreamKind::PortForward, None).provider_uri("ns", &o),
            "/api/v1/namespaces/ns/pods/web-1/portforward?ports=8080&ports=53"
        );
        assert_eq!(
            target(StreamKind::PortForward, None).provider_uri("ns", &StreamOptions::default()),
            "/api/v1/namespaces/ns/pods/web-1/portforward"
        );
        for bad in ["port=0", "port=70000", "port=http"] {
            let e = StreamOptions::parse(StreamKind::PortForward, bad).unwrap_err();
            assert!(e.0.starts_with("port="), "{bad}: {e}");
        }
        let many: Vec<String> = (1..=65).map(|p| format!("port={p}")).collect();
        assert!(StreamOptions::parse(StreamKind::PortForward, &many.join("&")).is_err());
    }

    #[test]
    fn bad_exec_queries_name_what_is_wrong() {
        for (bad, says) in [
            ("output=1", "command: exec needs a command"),
            ("command=ls", "exec: at least one of"),
            ("command=ls&output=maybe", "output=\"maybe\""),
            ("command=a%00b&output=1", "command: an argument holds a NUL"),
        ] {
            let e = StreamOptions::parse(StreamKind::Exec, bad).unwrap_err();
            assert!(e.0.starts_with(says), "{bad}: {e}");
        }
        let long = format!("output=1&command={}", "x".repeat(MAX_COMMAND_BYTES + 1));
        assert!(StreamOptions::parse(StreamKind::Exec, &long).is_err());
        let many = "command=x&".repeat(MAX_COMMAND_ARGS + 1) + "output=1";
        assert!(StreamOptions::parse(StreamKind::Exec, &many).is_err());
    }

    #[test]
    fn a_spdy_upgrade_is_checked_and_forwarded() {
        let h = headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "SPDY/3.1"),
            ("x-stream-protocol-version", "v4.channel.k8s.io"),
            ("x-stream-protocol-version", "v3.channel.k8s.io, channel.k8s.io"),
            ("authorization", "Bearer secret"),
        ]);
        let u = upgrade_request(&h).unwrap();
        assert_eq!(u.protocol, "SPDY/3.1");
        assert_eq!(
            u.versions,
            ["v4.channel.k8s.io", "v3.channel.k8s.io", "channel.k8s.io"]
        );
        // only the upgrade goes on: never the caller's credentials
        assert!(u.forward.iter().all(|(k, _)| k != "authorization"));
        assert_eq!(u.forward.len(), 5);
        // the provider's choice must be one offered
        let ok = headers(&[
            ("upgrade", "spdy/3.1"),
            ("connection", "Upgrade"),
            ("x-stream-protocol-version", "v4.channel.k8s.io"),
        ]);
        let a = upgrade_answer(&u, &ok).unwrap();
        assert!(
            a.iter()
                .any(|(k, v)| k == "x-stream-protocol-version" && v == "v4.channel.k8s.io")
        );
        let other = headers(&[
            ("upgrade", "SPDY/3.1"),
            ("x-stream-protocol-version", "v5.channel.k8s.io"),
        ]);
        assert!(
            upgrade_answer(&u, &other)
                .unwrap_err()
                .contains("v5.channel.k8s.io")
        );
        let ws = headers(&[("upgrade", "websocket")]);
        assert!(upgrade_answer(&u, &ws).unwrap_err().contains("SPDY/3.1"));
    }

    #[test]
    fn a_websocket_upgrade_carries_its_key_and_needs_the_accept() {
        let h = headers(&[
            ("upgrade", "websocket"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("sec-websocket-version", "13"),
            ("sec-websocket-protocol", "v5.channel.k8s.io, v4.channel.k8s.io"),
        ]);
        let u = upgrade_request(&h).unwrap();
        assert!(u.forward.iter().any(|(k, _)| k == "sec-websocket-key"));
        let ok = headers(&[
            ("upgrade", "websocket"),
            ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            ("sec-websocket-protocol", "v4.channel.k8s.io"),
        ]);
        assert_eq!(upgrade_answer(&u, &ok).unwrap().len(), 4);
        let no_accept = headers(&[("upgrade", "websocket")]);
        assert!(upgrade_answer(&u, &no_accept).is_err());
        let no_key = headers(&[("upgrade", "websocket"), ("sec-websocket-version", "13")]);
        assert!(
            upgrade_request(&no_key)
                .unwrap_err()
                .0
                .starts_with("sec-websocket-key")
        );
    }

    #[test]
    fn bad_upgrades_are_refused_with_the_fix() {
        let none = upgrade_request(&headers(&[])).unwrap_err();
        assert!(none.0.contains("SPDY/3.1 or websocket"), "{none}");
        assert!(upgrade_request(&headers(&[("upgrade", "h2c")])).is_err());
        let bad = headers(&[
            ("upgrade", "SPDY/3.1"),
            ("x-stream-protocol-version", "v4 channel"),
        ]);
        assert!(upgrade_request(&bad).is_err());
        let many = headers(&[
            ("upgrade", "SPDY/3.1"),
            (
                "x-stream-protocol-version",
                &vec!["v"; MAX_PROTOCOLS + 1].join(","),
            ),
        ]);
        assert!(upgrade_request(&many).unwrap_err().0.contains("more than"));
    }

    #[test]
    fn a_provider_refusal_is_a_bounded_status_naming_the_provider() {
        let body = br#"{"kind":"Status","status":"Failure","message":"container nope is not valid for pod web-1","reason":"BadRequest","code":400,"details":{"x":"y"}}"#;
        let (code, s) = provider_refusal("c2", 400, body);
        assert_eq!(code, StatusCode::BAD_REQUEST);
        assert_eq!(
            s["message"],
            "provider c2: container nope is not valid for pod web-1"
        );
        assert_eq!(s["reason"], "BadRequest");
        assert!(s.get("details").is_none());
        // not a Status, a success code, control characters, a huge message
        let junk = format!("\x1b[31m{}", "x".repeat(10_000));
        let (code, s) = provider_refusal("c2", 200, junk.as_bytes());
        assert_eq!(code, StatusCode::BAD_GATEWAY);
        let m = s["message"].as_str().unwrap();
        assert!(m.len() < 1100 && !m.contains('\x1b'), "{m}");
        let (_, s) = provider_refusal("c2", 403, br#"{"message":"no","reason":"Forbidden; drop"}"#);
        assert_eq!(s["reason"], "InternalError");
    }
}
