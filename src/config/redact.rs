//! TEMPORARY stub, replaced by the envcfg branch.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(a)) if a > s => format!("{}***:***@{}", &url[..s + 3], &url[a + 1..]),
        (None, Some(a)) => format!("***:***@{}", &url[a + 1..]),
        _ => url.to_string(),
    }
}
