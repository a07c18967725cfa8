//! The kubelet API of the virtual node, pure part: which request a path is, what a kubelet would authorize
//! it as, and the `containerLogs` query as the provider's `pods/log` parameters. The serving side (TLS,
//! authentication, the proxying to the provider) is [`crate::kubelet_server`].
//!
//! The consumer's apiserver calls a node's kubelet at `status.addresses` (`InternalIP`) and
//! `status.daemonEndpoints.kubeletEndpoint.Port` for `kubectl logs` (`GET /containerLogs/{ns}/{pod}/{c}`),
//! `exec`, `attach` and `port-forward`; metrics-server calls `/stats/summary` and `/metrics/resource`.

use std::fmt;

use crate::kubelet_stream::{StreamKind, StreamTarget};

/// A request to the kubelet API, as its path and method say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// `GET /containerLogs/{namespace}/{pod}/{container}`.
    ContainerLogs {
        /// The pod's namespace (here, in the consumer).
        namespace: String,
        /// The pod.
        pod: String,
        /// The container.
        container: String,
    },
    /// `GET|POST /exec|attach/{namespace}/{pod}[/{uid}]/{container}`, `/portForward/{namespace}/{pod}[/{uid}]`.
    Stream(StreamTarget),
    /// `GET /stats/summary`.
    StatsSummary,
    /// `GET /metrics/resource`.
    MetricsResource,
    /// `/healthz`.
    Healthz,
    /// Anything else.
    Other,
}

/// Why a request is not one this kubelet API serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadRequest(pub String);

impl fmt::Display for BadRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses a request path (no query). Segments must be DNS names as in the apiserver's own checks: a
/// path that tries `..` or an empty segment is refused.
pub fn parse(path: &str) -> Result<Request, BadRequest> {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segs.as_slice() {
        ["healthz"] => Ok(Request::Healthz),
        ["stats", "summary"] => Ok(Request::StatsSummary),
        ["metrics", "resource"] => Ok(Request::MetricsResource),
        ["containerLogs", ns, pod, container] => {
            for (what, v) in [("namespace", ns), ("pod", pod), ("container", container)] {
                if !is_name(v) {
                    return Err(BadRequest(format!(
                        "containerLogs: the {what} {v:?} is not a valid name"
                    )));
                }
            }
            Ok(Request::ContainerLogs {
                namespace: ns.to_string(),
                pod: pod.to_string(),
                container: container.to_string(),
            })
        }
        [kind @ ("exec" | "attach" | "portForward"), rest @ ..] => stream(kind, rest).map(Request::Stream),
        _ => Ok(Request::Other),
    }
}

/// The target of `exec`, `attach` (namespace, pod, optional UID, container) or `portForward` (namespace,
/// pod, optional UID), each part checked.
fn stream(kind: &str, segs: &[&str]) -> Result<StreamTarget, BadRequest> {
    let kind = match kind {
        "exec" => StreamKind::Exec,
        "attach" => StreamKind::Attach,
        _ => StreamKind::PortForward,
    };
    let (ns, pod, uid, container) = match (kind, segs) {
        (StreamKind::PortForward, [ns, pod]) => (ns, pod, None, None),
        (StreamKind::PortForward, [ns, pod, uid]) => (ns, pod, Some(uid), None),
        (StreamKind::PortForward, _) => {
            return Err(BadRequest(
                "portForward: expected /portForward/{namespace}/{pod}[/{uid}]".into(),
            ));
        }
        (_, [ns, pod, c]) => (ns, pod, None, Some(c)),
        (_, [ns, pod, uid, c]) => (ns, pod, Some(uid), Some(c)),
        _ => {
            return Err(BadRequest(format!(
                "{kind}: expected /{kind}/{{namespace}}/{{pod}}[/{{uid}}]/{{container}}"
            )));
        }
    };
    let mut named = vec![("namespace", ns), ("pod", pod)];
    named.extend(container.map(|c| ("container", c)));
    for (what, v) in named {
        if !is_name(v) {
            return Err(BadRequest(format!(
                "{kind}: the {what} {v:?} is not a valid name"
            )));
        }
    }
    if let Some(u) = uid
        && !(u.len() <= 64 && u.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'))
    {
        return Err(BadRequest(format!("{kind}: the pod UID {u:?} is not a UID")));
    }
    Ok(StreamTarget {
        kind,
        namespace: ns.to_string(),
        pod: pod.to_string(),
        uid: uid.map(|u| u.to_string()),
        container: container.map(|c| c.to_string()),
    })
}

/// A DNS-1123 subdomain (what namespace, pod and container names are), at most 253 characters.
fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !s.starts_with(['-', '.'])
        && !s.ends_with(['-', '.'])
        && !s.contains("..")
}

/// What a kubelet asks the apiserver to authorize for a request (its `SubjectAccessReview`): the verb
/// from the method, and the `nodes` subresource from the path, as the kubelet's own authorizer maps them
/// (`/stats/*` → `stats`, `/metrics/*` → `metrics`, `/logs/*` → `log`, everything else → `proxy`).
pub fn authorization(method: &str, path: &str) -> (&'static str, &'static str) {
    let verb = match method {
        "GET" | "HEAD" => "get",
        "POST" => "create",
        "PUT" => "update",
        "PATCH" => "patch",
        "DELETE" => "delete",
        _ => "get",
    };
    let under = |p: &str| path == p || path.starts_with(&format!("{p}/"));
    let sub = if under("/stats") {
        "stats"
    } else if under("/metrics") {
        "metrics"
    } else if under("/logs") {
        "log"
    } else {
        "proxy"
    };
    (verb, sub)
}

/// The `containerLogs` query (the apiserver passes `kubectl logs`' flags through), checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogQuery {
    /// `follow`.
    pub follow: bool,
    /// `previous`.
    pub previous: bool,
    /// `timestamps`.
    pub timestamps: bool,
    /// `sinceSeconds`.
    pub since_seconds: Option<i64>,
    /// `sinceTime` (RFC 3339).
    pub since_time: Option<chrono::DateTime<chrono::Utc>>,
    /// `tailLines`.
    pub tail_lines: Option<i64>,
    /// `limitBytes`.
    pub limit_bytes: Option<i64>,
}

impl LogQuery {
    /// Parses a query string; an unknown key is ignored (as a kubelet does), a bad value is an error
    /// naming the key.
    pub fn parse(query: &str) -> Result<Self, BadRequest> {
        let mut q = LogQuery::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v);
            let flag = || match v.as_str() {
                "" | "true" | "1" => Ok(true),
                "false" | "0" => Ok(false),
                _ => Err(BadRequest(format!("{k}={v:?}: expected true or false"))),
            };
            let count = || {
                v.parse::<i64>()
                    .ok()
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| BadRequest(format!("{k}={v:?}: expected a whole number, 0 or more")))
            };
            match k {
                "follow" => q.follow = flag()?,
                "previous" => q.previous = flag()?,
                "timestamps" => q.timestamps = flag()?,
                "sinceSeconds" => {
                    let n = count()?;
                    if n == 0 {
                        return Err(BadRequest("sinceSeconds=0: must be at least 1".into()));
                    }
                    q.since_seconds = Some(n);
                }
                "sinceTime" => {
                    q.since_time = Some(
                        chrono::DateTime::parse_from_rfc3339(&v)
                            .map_err(|e| BadRequest(format!("sinceTime={v:?}: not RFC 3339 ({e})")))?
                            .with_timezone(&chrono::Utc),
                    )
                }
                "tailLines" => q.tail_lines = Some(count()?),
                "limitBytes" => {
                    let n = count()?;
                    if n == 0 {
                        return Err(BadRequest("limitBytes=0: must be at least 1".into()));
                    }
                    q.limit_bytes = Some(n);
                }
                _ => {}
            }
        }
        if q.since_seconds.is_some() && q.since_time.is_some() {
            return Err(BadRequest(
                "sinceSeconds and sinceTime: at most one of them".into(),
            ));
        }
        Ok(q)
    }

    /// The provider's `pods/log` parameters for `container`. `sinceTime` goes as `sinceSeconds` counted
    /// from `now` (kube's `LogParams` has no `sinceTime`), rounded up so no line is lost.
    pub fn to_params(&self, container: &str, now: chrono::DateTime<chrono::Utc>) -> kube::api::LogParams {
        let since_seconds = self.since_seconds.or_else(|| {
            self.since_time.map(|t| {
                let ms = (now - t).num_milliseconds().max(0);
                (ms + 999) / 1000 + 1
            })
        });
        kube::api::LogParams {
            container: Some(container.to_string()),
            follow: self.follow,
            limit_bytes: self.limit_bytes,
            pretty: false,
            previous: self.previous,
            since_seconds,
            since_time: None,
            tail_lines: self.tail_lines,
            timestamps: self.timestamps,
        }
    }
}

/// `%XX` and `+` decoding of a query value (invalid escapes stay as they are).
pub(crate) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                match std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or(())
                {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_parsed_and_bad_names_refused() {
        assert_eq!(
            parse("/containerLogs/shop/web-1/app").unwrap(),
            Request::ContainerLogs {
                namespace: "shop".into(),
                pod: "web-1".into(),
                container: "app".into()
            }
        );
        assert_eq!(parse("/healthz").unwrap(), Request::Healthz);
        assert_eq!(parse("/stats/summary").unwrap(), Request::StatsSummary);
        assert_eq!(parse("/metrics/resource").unwrap(), Request::MetricsResource);
        let exec = |uid: Option<&str>| {
            Request::Stream(StreamTarget {
                kind: StreamKind::Exec,
                namespace: "shop".into(),
                pod: "web-1".into(),
                uid: uid.map(str::to_string),
                container: Some("app".into()),
            })
        };
        assert_eq!(parse("/exec/shop/web-1/app").unwrap(), exec(None));
        assert_eq!(
            parse("/exec/shop/web-1/6a2f-09/app").unwrap(),
            exec(Some("6a2f-09"))
        );
        let Request::Stream(pf) = parse("/portForward/shop/web-1").unwrap() else {
            panic!("portForward")
        };
        assert_eq!((pf.kind, pf.container), (StreamKind::PortForward, None));
        for (bad, says) in [
            ("/exec/shop/web-1", "exec: expected"),
            ("/attach/shop/web-1/a/b/c", "attach: expected"),
            ("/portForward/shop/web-1/u/x", "portForward: expected"),
            ("/exec/shop/web-1/zz!/app", "exec: the pod UID"),
            ("/exec/shop/../app", "exec: the pod"),
            ("/attach/shop/web-1/App", "attach: the container"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.0.starts_with(says), "{bad}: {e}");
        }
        assert_eq!(parse("/pods").unwrap(), Request::Other);
        assert_eq!(parse("/containerLogs/shop/web-1").unwrap(), Request::Other);
        for bad in [
            "/containerLogs/../web/app",
            "/containerLogs/shop/Web/app",
            "/containerLogs/shop//app",
            "/containerLogs/shop/web/-x",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.0.contains("not a valid name"), "{bad}: {e}");
        }
    }

    #[test]
    fn authorization_maps_paths_and_methods_like_a_kubelet() {
        assert_eq!(authorization("GET", "/containerLogs/a/b/c"), ("get", "proxy"));
        assert_eq!(authorization("POST", "/exec/a/b/c"), ("create", "proxy"));
        assert_eq!(authorization("GET", "/stats/summary"), ("get", "stats"));
        assert_eq!(authorization("GET", "/metrics/resource"), ("get", "metrics"));
        assert_eq!(authorization("GET", "/logs/syslog"), ("get", "log"));
        // a prefix is a path segment, not a string prefix
        assert_eq!(authorization("GET", "/statsx"), ("get", "proxy"));
        assert_eq!(authorization("DELETE", "/pods"), ("delete", "proxy"));
    }

    #[test]
    fn the_log_query_is_checked_and_translated() {
        let q = LogQuery::parse("follow=true&tailLines=10&timestamps=1&limitBytes=500&unknown=x").unwrap();
        assert!(q.follow && q.timestamps && !q.previous);
        assert_eq!((q.tail_lines, q.limit_bytes), (Some(10), Some(500)));
        let now = chrono::DateTime::parse_from_rfc3339("2026-12-05T12:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let p = q.to_params("app", now);
        assert_eq!(p.container.as_deref(), Some("app"));
        assert!(p.follow && p.timestamps);
        assert_eq!(
            (p.tail_lines, p.limit_bytes, p.since_seconds),
            (Some(10), Some(500), None)
        );
        // sinceTime becomes sinceSeconds, rounded up (a line at the boundary is kept)
        let q = LogQuery::parse("sinceTime=2026-12-05T11%3A59%3A30.5Z&previous=true").unwrap();
        assert!(q.previous);
        assert_eq!(q.to_params("app", now).since_seconds, Some(31));
        assert_eq!(
            LogQuery::parse("sinceSeconds=60")
                .unwrap()
                .to_params("c", now)
                .since_seconds,
            Some(60)
        );
        // each bad value names its key
        for (bad, key) in [
            ("tailLines=-1", "tailLines"),
            ("tailLines=ten", "tailLines"),
            ("follow=maybe", "follow"),
            ("sinceSeconds=0", "sinceSeconds"),
            ("limitBytes=0", "limitBytes"),
            ("sinceTime=yesterday", "sinceTime"),
            (
                "sinceSeconds=5&sinceTime=2026-12-05T11:59:30Z",
                "sinceSeconds and sinceTime",
            ),
        ] {
            let e = LogQuery::parse(bad).unwrap_err();
            assert!(e.0.starts_with(key), "{bad}: {e}");
        }
    }

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(percent_decode("a%3Ab+c%zz%4"), "a:b c%zz%4");
    }
}
