//! `proxyguard status` as a table: upstreams, then each reverse route with
//! its backends, from the admin API's `/status` document.

use serde_json::Value;

fn header(first: &str) -> String {
    format!(
        "{:<24} {:<16} {:<10} {:>5} {:>9} {:>8} {:>8}  last error\n",
        first, "state", "breaker", "fleet", "latency", "ok", "failed"
    )
}

fn row(u: &Value) -> String {
    let lat = u["ewma_ms"]
        .as_f64()
        .map(|x| format!("{x:.1}ms"))
        .unwrap_or_else(|| "-".into());
    let mut state = u["state"].as_str().unwrap_or("?").to_string();
    if let Some(r) = u["ejection_reason"].as_str() {
        state = format!("{state}:{r}");
    }
    // Other gateways of the fleet reporting it down.
    let fleet = match u["fleet_down"].as_array().map(Vec::len) {
        Some(n) if n > 0 => n.to_string(),
        _ => "-".into(),
    };
    format!(
        "{:<24} {:<16} {:<10} {:>5} {:>9} {:>8} {:>8}  {}\n",
        u["name"].as_str().unwrap_or("?"),
        state,
        u["breaker"].as_str().unwrap_or("?"),
        fleet,
        lat,
        u["successes"].as_u64().unwrap_or(0),
        u["failures"].as_u64().unwrap_or(0),
        u["last_error"]["message"].as_str().unwrap_or("")
    )
}

/// Renders the `/status` document for a terminal.
pub fn render(v: &Value) -> String {
    let can_serve = v["can_serve"].as_bool().unwrap_or(false);
    let mut out = format!(
        "proxyguard {} · up {}s · {} · {}\n",
        v["version"].as_str().unwrap_or("?"),
        v["uptime_s"],
        v["strategy"].as_str().unwrap_or("?"),
        if can_serve { "serving" } else { "CANNOT SERVE" }
    );
    let ups = v["upstreams"].as_array().cloned().unwrap_or_default();
    if ups.is_empty() {
        out.push_str("no upstreams: connecting directly\n");
    } else {
        out.push_str(&header("upstream"));
        for u in &ups {
            out.push_str(&row(u));
        }
    }
    for r in v["routes"].as_array().cloned().unwrap_or_default() {
        out.push_str(&format!(
            "\nroute {} · via {}{} · {}\n",
            r["listen"].as_str().unwrap_or("?"),
            r["via"].as_str().unwrap_or("?"),
            r["local_zone"]
                .as_str()
                .map(|z| format!(" · local zone {z}"))
                .unwrap_or_default(),
            if r["can_serve"].as_bool().unwrap_or(false) {
                "serving"
            } else {
                "CANNOT SERVE"
            }
        ));
        out.push_str(&header("backend"));
        for b in r["backends"].as_array().cloned().unwrap_or_default() {
            out.push_str(&row(&b));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_backends_are_listed() {
        let v = serde_json::json!({
            "version": "0.1.0", "uptime_s": 3, "strategy": "failover", "can_serve": true,
            "upstreams": [{"name": "corp", "state": "healthy", "breaker": "closed",
                           "ewma_ms": 1.25, "successes": 4, "failures": 0}],
            "routes": [{"listen": "127.0.0.1:8443", "via": "direct", "local_zone": "a",
                        "can_serve": true,
                        "backends": [{"name": "http://10.0.0.1:80", "state": "ejected",
                                      "breaker": "open", "successes": 0, "failures": 2,
                                      "last_error": {"message": "refused"}}]}]
        });
        let t = render(&v);
        assert!(t.contains("corp ") && t.contains("1.2ms"), "{t}");
        assert!(
            t.contains("route 127.0.0.1:8443 · via direct · local zone a · serving"),
            "{t}"
        );
        assert!(
            t.contains("http://10.0.0.1:80") && t.contains("ejected") && t.contains("refused"),
            "{t}"
        );
    }

    #[test]
    fn fleet_ejection_shows_reason_and_reporters() {
        let v = serde_json::json!({
            "version": "0.1.0", "uptime_s": 3, "strategy": "failover", "can_serve": true,
            "upstreams": [{"name": "u1", "state": "ejected", "ejection_reason": "fleet",
                           "breaker": "closed", "successes": 0, "failures": 0,
                           "fleet_down": [{"gateway": "g1", "reason": "timeout"},
                                          {"gateway": "g2", "reason": "refused"}]}]
        });
        let t = render(&v);
        let line = t.lines().find(|l| l.starts_with("u1 ")).unwrap_or_default();
        assert!(line.contains("ejected:fleet"), "{t}");
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols.get(3), Some(&"2"), "fleet column: {t}");
    }
}
