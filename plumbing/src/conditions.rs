//! Status conditions, written one way everywhere: RFC 3339 timestamps to the second in UTC, and a
//! condition's `lastTransitionTime` kept while its status stays the same.

use serde_json::{Value, json};

/// Now, as every ferry condition and event stamps it (`2026-12-04T10:00:00Z`).
pub fn now() -> String {
    stamp(chrono::Utc::now())
}

/// A time as every ferry condition stamps it.
pub fn stamp(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Typed conditions (as an object's status holds them) as the JSON [`merge`] takes.
pub fn values<T: serde::Serialize>(old: &[T]) -> Vec<Value> {
    old.iter().filter_map(|c| serde_json::to_value(c).ok()).collect()
}

/// A condition (as JSON for a merge or apply patch), stamped `now`.
pub fn condition(type_: &str, ok: bool, reason: &str, message: &str, now: &str) -> Value {
    json!({
        "type": type_,
        "status": if ok { "True" } else { "False" },
        "reason": reason,
        "message": message,
        "lastTransitionTime": now,
    })
}

/// The conditions to write: `new` ones, each keeping the `lastTransitionTime` of the `old` condition of
/// its type when the status did not change; old conditions of other types are kept as they are.
pub fn merge(old: &[Value], new: Vec<Value>) -> Vec<Value> {
    let mut out: Vec<Value> = old
        .iter()
        .filter(|o| !new.iter().any(|n| n["type"] == o["type"]))
        .cloned()
        .collect();
    for mut n in new {
        if let Some(o) = old.iter().find(|o| o["type"] == n["type"])
            && o["status"] == n["status"]
            && !o["lastTransitionTime"].is_null()
        {
            n["lastTransitionTime"] = o["lastTransitionTime"].clone();
        }
        out.push(n);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_rfc3339_seconds_utc() {
        let t = chrono::DateTime::parse_from_rfc3339("2026-12-04T10:00:00.123+02:00")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(stamp(t), "2026-12-04T08:00:00Z");
        assert!(chrono::DateTime::parse_from_rfc3339(&now()).is_ok());
    }

    #[test]
    fn transition_time_moves_only_when_the_status_does() {
        let old = vec![
            condition("Ready", true, "Up", "", "2026-01-01T00:00:00Z"),
            condition("Conflict", false, "None", "", "2026-01-01T00:00:00Z"),
            condition("Other", true, "X", "", "2026-01-01T00:00:00Z"),
        ];
        let got = merge(
            &old,
            vec![
                condition("Ready", true, "StillUp", "m", "2026-02-02T00:00:00Z"),
                condition("Conflict", true, "Ports", "m", "2026-02-02T00:00:00Z"),
            ],
        );
        let by = |t: &str| got.iter().find(|c| c["type"] == t).unwrap().clone();
        assert_eq!(by("Ready")["lastTransitionTime"], "2026-01-01T00:00:00Z");
        assert_eq!(by("Ready")["reason"], "StillUp");
        assert_eq!(by("Conflict")["lastTransitionTime"], "2026-02-02T00:00:00Z");
        assert_eq!(by("Other")["reason"], "X");
        assert_eq!(got.len(), 3);
    }
}
