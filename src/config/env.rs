//! TEMPORARY stub, replaced by the envcfg branch.
use super::noproxy::NoProxy;
#[derive(Debug, Clone)]
pub struct EnvProxy { pub var: &'static str, pub raw: String, pub url: String }
#[derive(Debug, Clone, Default)]
pub struct ProxyEnv { pub http: Option<EnvProxy>, pub https: Option<EnvProxy>, pub no_proxy: NoProxy, pub no_proxy_raw: String }
impl ProxyEnv {
    pub fn from_lookup(f: impl Fn(&str) -> Option<String>) -> Self {
        let get = |a: &'static str, b: &'static str| f(a).filter(|v| !v.is_empty()).map(|v| (a, v)).or_else(|| f(b).filter(|v| !v.is_empty()).map(|v| (b, v)));
        let mk = |(var, raw): (&'static str, String)| EnvProxy { var, url: if raw.contains("://") { raw.clone() } else { format!("http://{raw}") }, raw };
        let np = get("NO_PROXY", "no_proxy").map(|x| x.1).unwrap_or_default();
        ProxyEnv { http: get("HTTP_PROXY", "http_proxy").map(mk), https: get("HTTPS_PROXY", "https_proxy").map(mk), no_proxy: NoProxy::from_env_value(&np), no_proxy_raw: np }
    }
    pub fn from_process_env() -> Self { Self::from_lookup(|k| std::env::var(k).ok()) }
}
