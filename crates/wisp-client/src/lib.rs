//! A typed async client for a Wisp server: one method per control-API
//! endpoint under `/v1`, plus [`Client::invoke`] for the data plane.
//!
//! Every method returns the `wisp-core` type the server answers with; an
//! error answer becomes [`ClientError::Api`] carrying the server's
//! [`ErrorBody`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), wisp_client::ClientError> {
//! use wisp_client::{Client, HeaderMap, Method};
//! use wisp_core::FunctionInput;
//!
//! let client = Client::new("http://127.0.0.1:8080", None);
//! let wasm = std::fs::read("hello.wasm").expect("a component");
//! let artifact = client.upload_artifact(wasm).await?;
//! client
//!     .create_function(&FunctionInput {
//!         name: Some("hello".into()),
//!         code_digest: Some(artifact.digest.to_string()),
//!         ..Default::default()
//!     })
//!     .await?;
//! let target = "hello".parse().unwrap();
//! let res = client
//!     .invoke(&target, Method::GET, "/", HeaderMap::new(), Vec::new())
//!     .await?;
//! assert_eq!(res.status, 200);
//! # Ok(())
//! # }
//! ```

use bytes::Bytes;
use reqwest::{RequestBuilder, Response, StatusCode, Url};
use serde::de::DeserializeOwned;
use std::time::Duration;
use wisp_core::{
    Alias, AliasInput, AliasList, ArtifactInfo, ErrorBody, ErrorCode, Function, FunctionInput,
    FunctionList, FunctionStats, FunctionVersion, Health, LogPage, Qualifier, Target, VersionList,
};

pub use reqwest::Method;
pub use reqwest::header::{self, HeaderMap};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error.
    #[error("{} ({}, HTTP {status})", .body.message, code_name(.body.code))]
    Api {
        /// HTTP status.
        status: u16,
        /// The server's error body.
        body: ErrorBody,
    },
    /// The server could not be reached.
    #[error(
        "cannot reach the Wisp server at {url}: {reason}; start one with `wisp server`, \
         or set --server or WISP_SERVER to the address of a running one"
    )]
    Connect {
        /// The server's base URL.
        url: String,
        /// The underlying cause, in words.
        reason: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with something that is not what this endpoint returns.
    #[error("unexpected response from {url}: {message}")]
    Decode {
        /// The request URL.
        url: String,
        /// What was wrong with it.
        message: String,
    },
    /// The connection failed after it was made (reset, timed out, body cut short).
    #[error("request to {url} failed: {reason}")]
    Io {
        /// The request URL.
        url: String,
        /// The underlying cause, in words.
        reason: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// The server URL (or a URL built from it) is not valid.
    #[error("invalid server URL `{url}`: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// Why it was rejected.
        reason: String,
    },
}

impl ClientError {
    /// The server's error code, for [`ClientError::Api`].
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { body, .. } => Some(body.code),
            _ => None,
        }
    }
}

/// The snake_case wire name of an error code, such as `function_not_found`.
pub fn code_name(code: ErrorCode) -> String {
    match serde_json::to_value(code) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("{code:?}"),
    }
}

/// The innermost cause of an error, which is the informative one for
/// transport errors ("Connection refused" rather than "error sending request").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// What a function answered through the data plane.
#[derive(Debug, Clone)]
pub struct InvokeResponse {
    /// HTTP status.
    pub status: u16,
    /// HTTP version of the response, such as `HTTP/1.1`.
    pub http_version: String,
    /// Response headers, including `x-wisp-request-id`, `x-wisp-version`
    /// and `x-wisp-function`.
    pub headers: HeaderMap,
    /// The whole response body.
    pub body: Bytes,
}

impl InvokeResponse {
    /// `HTTP/1.1 200 OK`, as `curl -i` prints it.
    pub fn status_line(&self) -> String {
        let reason = StatusCode::from_u16(self.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        format!("{} {} {reason}", self.http_version, self.status)
            .trim_end()
            .to_string()
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Filters of [`Client::logs`]; all optional.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LogsQuery {
    /// Only this invocation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Only invocations started at or after this RFC 3339 time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Only records after this id (a previous page's `next_after`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<i64>,
    /// At most this many records (1 to 1000; the server's default is 100).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// A connection to one Wisp server. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    /// A client for the server at `base_url` (such as `http://127.0.0.1:8080`),
    /// sending `token` as a bearer token on control-API calls, and as the
    /// `x-wisp-key` header on [`Client::invoke`] (the server removes it
    /// before the function sees the request).
    pub fn new(base_url: impl Into<String>, token: Option<String>) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        Client {
            http,
            base: base_url.into().trim_end_matches('/').to_string(),
            token: token.filter(|t| !t.is_empty()),
        }
    }

    /// The server's base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `base` + the given path segments, each percent-encoded.
    fn url(&self, segments: &[&str]) -> Result<Url, ClientError> {
        let invalid = |reason: String| ClientError::InvalidUrl {
            url: self.base.clone(),
            reason,
        };
        let mut url = Url::parse(&self.base).map_err(|e| invalid(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid("the scheme must be http or https".into()));
        }
        url.path_segments_mut()
            .map_err(|()| invalid("cannot be a base URL".into()))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    fn control(&self, method: Method, url: Url) -> RequestBuilder {
        let req = self.http.request(method, url);
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    async fn send(&self, req: RequestBuilder, url: &Url) -> Result<Response, ClientError> {
        req.send().await.map_err(|e| self.transport(e, url))
    }

    fn transport(&self, e: reqwest::Error, url: &Url) -> ClientError {
        let reason = root_cause(&e);
        if e.is_connect() {
            ClientError::Connect {
                url: self.base.clone(),
                reason,
                source: e,
            }
        } else if e.is_builder() {
            ClientError::InvalidUrl {
                url: url.to_string(),
                reason,
            }
        } else {
            ClientError::Io {
                url: url.to_string(),
                reason,
                source: e,
            }
        }
    }

    /// Reads a response: the body for 2xx, [`ClientError::Api`] otherwise.
    async fn body(&self, res: Response, url: &Url) -> Result<(StatusCode, Bytes), ClientError> {
        let status = res.status();
        let bytes = res.bytes().await.map_err(|e| self.transport(e, url))?;
        if status.is_success() {
            return Ok((status, bytes));
        }
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => Err(ClientError::Api {
                status: status.as_u16(),
                body,
            }),
            Err(_) => {
                let text = String::from_utf8_lossy(&bytes);
                let text: String = text.trim().chars().take(200).collect();
                Err(ClientError::Decode {
                    url: url.to_string(),
                    message: format!(
                        "HTTP {status} with a body that is not a Wisp error: {text:?}"
                    ),
                })
            }
        }
    }

    fn decode<T: DeserializeOwned>(bytes: &[u8], url: &Url) -> Result<T, ClientError> {
        serde_json::from_slice(bytes).map_err(|e| ClientError::Decode {
            url: url.to_string(),
            message: e.to_string(),
        })
    }

    /// Sends a control-API request and decodes the JSON answer, with whether
    /// it was `201 Created`.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        build: impl FnOnce(RequestBuilder) -> RequestBuilder,
    ) -> Result<(T, bool), ClientError> {
        let url = self.url(segments)?;
        let res = self
            .send(build(self.control(method, url.clone())), &url)
            .await?;
        let (status, bytes) = self.body(res, &url).await?;
        Ok((Self::decode(&bytes, &url)?, status == StatusCode::CREATED))
    }

    async fn get<T: DeserializeOwned>(&self, segments: &[&str]) -> Result<T, ClientError> {
        Ok(self.call(Method::GET, segments, |r| r).await?.0)
    }

    async fn delete(&self, segments: &[&str]) -> Result<(), ClientError> {
        let url = self.url(segments)?;
        let res = self
            .send(self.control(Method::DELETE, url.clone()), &url)
            .await?;
        self.body(res, &url).await.map(drop)
    }

    /// `GET /v1/health`.
    pub async fn health(&self) -> Result<Health, ClientError> {
        self.get(&["v1", "health"]).await
    }

    /// `GET /v1/openapi.json`.
    pub async fn openapi(&self) -> Result<serde_json::Value, ClientError> {
        self.get(&["v1", "openapi.json"]).await
    }

    /// `POST /v1/artifacts`: uploads a component; the server validates and
    /// compiles it. Uploading the same bytes again is a cheap no-op.
    pub async fn upload_artifact(
        &self,
        wasm: impl Into<Bytes>,
    ) -> Result<ArtifactInfo, ClientError> {
        let wasm: Bytes = wasm.into();
        let (info, _) = self
            .call(Method::POST, &["v1", "artifacts"], |r| {
                r.header(header::CONTENT_TYPE, "application/wasm")
                    .body(wasm)
            })
            .await?;
        Ok(info)
    }

    /// `GET /v1/functions`, keeping only functions with every given label.
    pub async fn list_functions(
        &self,
        labels: &[(String, String)],
    ) -> Result<FunctionList, ClientError> {
        let selector = labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let (list, _) = self
            .call(Method::GET, &["v1", "functions"], |r| {
                if selector.is_empty() {
                    r
                } else {
                    r.query(&[("label", selector)])
                }
            })
            .await?;
        Ok(list)
    }

    /// `POST /v1/functions`: creates a function; `name` and `code_digest`
    /// are required.
    pub async fn create_function(&self, input: &FunctionInput) -> Result<Function, ClientError> {
        let (f, _) = self
            .call(Method::POST, &["v1", "functions"], |r| r.json(input))
            .await?;
        Ok(f)
    }

    /// `GET /v1/functions/{name}`.
    pub async fn get_function(&self, name: &str) -> Result<Function, ClientError> {
        self.get(&["v1", "functions", name]).await
    }

    /// `PUT /v1/functions/{name}`: creates or replaces `latest` (absent
    /// fields take their defaults). The flag says whether it was created.
    pub async fn put_function(
        &self,
        name: &str,
        input: &FunctionInput,
    ) -> Result<(Function, bool), ClientError> {
        self.call(Method::PUT, &["v1", "functions", name], |r| r.json(input))
            .await
    }

    /// `PATCH /v1/functions/{name}`: changes only the given fields of `latest`.
    pub async fn patch_function(
        &self,
        name: &str,
        input: &FunctionInput,
    ) -> Result<Function, ClientError> {
        let (f, _) = self
            .call(Method::PATCH, &["v1", "functions", name], |r| r.json(input))
            .await?;
        Ok(f)
    }

    /// `DELETE /v1/functions/{name}`: the function, its versions and aliases.
    pub async fn delete_function(&self, name: &str) -> Result<(), ClientError> {
        self.delete(&["v1", "functions", name]).await
    }

    /// `POST /v1/functions/{name}/versions`: publishes `latest`. The flag is
    /// `true` for a new version and `false` when nothing changed since the
    /// newest one, which is returned instead.
    pub async fn publish(&self, name: &str) -> Result<(FunctionVersion, bool), ClientError> {
        self.call(Method::POST, &["v1", "functions", name, "versions"], |r| r)
            .await
    }

    /// `GET /v1/functions/{name}/versions`.
    pub async fn list_versions(&self, name: &str) -> Result<VersionList, ClientError> {
        self.get(&["v1", "functions", name, "versions"]).await
    }

    /// `GET /v1/functions/{name}/versions/{version}`.
    pub async fn get_version(
        &self,
        name: &str,
        version: u32,
    ) -> Result<FunctionVersion, ClientError> {
        self.get(&["v1", "functions", name, "versions", &version.to_string()])
            .await
    }

    /// `DELETE /v1/functions/{name}/versions/{version}`.
    pub async fn delete_version(&self, name: &str, version: u32) -> Result<(), ClientError> {
        self.delete(&["v1", "functions", name, "versions", &version.to_string()])
            .await
    }

    /// `POST /v1/functions/{name}/aliases`.
    pub async fn create_alias(&self, name: &str, input: &AliasInput) -> Result<Alias, ClientError> {
        let (a, _) = self
            .call(Method::POST, &["v1", "functions", name, "aliases"], |r| {
                r.json(input)
            })
            .await?;
        Ok(a)
    }

    /// `GET /v1/functions/{name}/aliases`.
    pub async fn list_aliases(&self, name: &str) -> Result<AliasList, ClientError> {
        self.get(&["v1", "functions", name, "aliases"]).await
    }

    /// `GET /v1/functions/{name}/aliases/{alias}`.
    pub async fn get_alias(&self, name: &str, alias: &str) -> Result<Alias, ClientError> {
        self.get(&["v1", "functions", name, "aliases", alias]).await
    }

    /// `PUT /v1/functions/{name}/aliases/{alias}`: repoints the alias.
    pub async fn update_alias(
        &self,
        name: &str,
        alias: &str,
        input: &AliasInput,
    ) -> Result<Alias, ClientError> {
        let (a, _) = self
            .call(
                Method::PUT,
                &["v1", "functions", name, "aliases", alias],
                |r| r.json(input),
            )
            .await?;
        Ok(a)
    }

    /// `DELETE /v1/functions/{name}/aliases/{alias}`.
    pub async fn delete_alias(&self, name: &str, alias: &str) -> Result<(), ClientError> {
        self.delete(&["v1", "functions", name, "aliases", alias])
            .await
    }

    /// `GET /v1/functions/{name}/logs`: one page of captured output.
    pub async fn logs(&self, name: &str, query: &LogsQuery) -> Result<LogPage, ClientError> {
        let (page, _) = self
            .call(Method::GET, &["v1", "functions", name, "logs"], |r| {
                r.query(query)
            })
            .await?;
        Ok(page)
    }

    /// `POST /v1/functions/{name}/invocations`: queues an asynchronous
    /// invocation and returns the server's answer (`id`, `status_url`,
    /// `duplicate`).
    pub async fn invoke_async(
        &self,
        name: &str,
        qualifier: &str,
        path_and_query: &str,
        headers: HeaderMap,
        body: Vec<u8>,
    ) -> Result<serde_json::Value, ClientError> {
        let query = [("qualifier", qualifier), ("path", path_and_query)];
        let (v, _) = self
            .call(
                Method::POST,
                &["v1", "functions", name, "invocations"],
                |r| r.query(&query).headers(headers).body(body),
            )
            .await?;
        Ok(v)
    }

    /// `GET /v1/invocations/{id}`.
    pub async fn invocation(&self, id: &str) -> Result<serde_json::Value, ClientError> {
        self.get(&["v1", "invocations", id]).await
    }

    /// `GET /v1/functions/{name}/invocations`.
    pub async fn invocations(&self, name: &str) -> Result<serde_json::Value, ClientError> {
        self.get(&["v1", "functions", name, "invocations"]).await
    }

    /// `GET /v1/deadletters`: one page of the dead-letter queue, newest
    /// first (`{deadletters, next_before}`), of one function or of all, of
    /// one named dead-letter queue (`default`, or a `dlq:QUEUE`
    /// destination's) or of all. `limit` is 1 to 1000 (the server's default
    /// is 100); `before` is a previous page's `next_before`.
    pub async fn dead_letters(
        &self,
        function: Option<&str>,
        queue: Option<&str>,
        limit: Option<u32>,
        before: Option<&str>,
    ) -> Result<serde_json::Value, ClientError> {
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(f) = function {
            query.push(("function", f.to_string()));
        }
        if let Some(q) = queue {
            query.push(("queue", q.to_string()));
        }
        if let Some(l) = limit {
            query.push(("limit", l.to_string()));
        }
        if let Some(b) = before {
            query.push(("before", b.to_string()));
        }
        let (v, _) = self
            .call(Method::GET, &["v1", "deadletters"], |r| r.query(&query))
            .await?;
        Ok(v)
    }

    /// `GET /v1/deadletters/{id}`: one dead letter with every attempt's
    /// error, its original `request` and its `policy`.
    pub async fn dead_letter(&self, id: &str) -> Result<serde_json::Value, ClientError> {
        self.get(&["v1", "deadletters", id]).await
    }

    /// `DELETE /v1/deadletters/{id}`.
    pub async fn delete_dead_letter(&self, id: &str) -> Result<(), ClientError> {
        self.delete(&["v1", "deadletters", id]).await
    }

    /// `POST /v1/deadletters/{id}/replay`: queues the dead letter's request
    /// again under `qualifier` (default: its own) and returns the server's
    /// answer (`id`, `status_url`, `replayed_from`).
    pub async fn replay_dead_letter(
        &self,
        id: &str,
        qualifier: Option<&str>,
    ) -> Result<serde_json::Value, ClientError> {
        let query: Vec<(&str, &str)> = qualifier.map(|q| ("qualifier", q)).into_iter().collect();
        let (v, _) = self
            .call(Method::POST, &["v1", "deadletters", id, "replay"], |r| {
                r.query(&query)
            })
            .await?;
        Ok(v)
    }

    /// `POST /v1/deadletters/replay`: replays every dead letter of
    /// `function` under `qualifier` (default: each one's own) and returns
    /// the server's answer (`replayed`, a count).
    pub async fn replay_dead_letters(
        &self,
        function: &str,
        qualifier: Option<&str>,
    ) -> Result<serde_json::Value, ClientError> {
        let mut query = vec![("function", function)];
        if let Some(q) = qualifier {
            query.push(("qualifier", q));
        }
        let (v, _) = self
            .call(Method::POST, &["v1", "deadletters", "replay"], |r| {
                r.query(&query)
            })
            .await?;
        Ok(v)
    }

    /// `GET /v1/triggers`: every trigger with its status (`{triggers}`).
    pub async fn list_triggers(&self) -> Result<serde_json::Value, ClientError> {
        self.get(&["v1", "triggers"]).await
    }

    /// `GET /v1/triggers/{name}`: one trigger with its status.
    pub async fn get_trigger(&self, name: &str) -> Result<serde_json::Value, ClientError> {
        self.get(&["v1", "triggers", name]).await
    }

    /// `PUT /v1/triggers/{name}`: creates or replaces a trigger from its
    /// definition (`target`, `source`, optional `filters`, `enabled`,
    /// `description`); returns it with its status.
    pub async fn put_trigger(
        &self,
        name: &str,
        spec: &serde_json::Value,
    ) -> Result<serde_json::Value, ClientError> {
        let (v, _) = self
            .call(Method::PUT, &["v1", "triggers", name], |r| r.json(spec))
            .await?;
        Ok(v)
    }

    /// `POST /v1/triggers`: creates a trigger (`name` plus the definition);
    /// fails with `already_exists` if there is one by that name.
    pub async fn create_trigger(
        &self,
        spec: &serde_json::Value,
    ) -> Result<serde_json::Value, ClientError> {
        let (v, _) = self
            .call(Method::POST, &["v1", "triggers"], |r| r.json(spec))
            .await?;
        Ok(v)
    }

    /// `DELETE /v1/triggers/{name}`.
    pub async fn delete_trigger(&self, name: &str) -> Result<(), ClientError> {
        self.delete(&["v1", "triggers", name]).await
    }

    /// `POST /v1/triggers/{name}/enable` or `/disable`.
    pub async fn set_trigger_enabled(
        &self,
        name: &str,
        enabled: bool,
    ) -> Result<serde_json::Value, ClientError> {
        let action = if enabled { "enable" } else { "disable" };
        let (v, _) = self
            .call(Method::POST, &["v1", "triggers", name, action], |r| r)
            .await?;
        Ok(v)
    }

    /// `GET /v1/functions/{name}/stats`.
    pub async fn stats(&self, name: &str) -> Result<FunctionStats, ClientError> {
        self.get(&["v1", "functions", name, "stats"]).await
    }

    /// Sends a request to a function through the data plane
    /// (`/fn/NAME[:QUALIFIER]{path_and_query}`) and reads its whole response.
    /// Any status is a successful call; only transport failures are errors.
    pub async fn invoke(
        &self,
        target: &Target,
        method: Method,
        path_and_query: &str,
        headers: HeaderMap,
        body: Vec<u8>,
    ) -> Result<InvokeResponse, ClientError> {
        let target = match &target.qualifier {
            Qualifier::Latest => target.name.to_string(),
            q => format!("{}:{q}", target.name),
        };
        let mut url = self.url(&["fn", &target])?;
        let rest = path_and_query.trim_start_matches('/');
        let full = format!("{}/{rest}", url.as_str().trim_end_matches('/'));
        url = Url::parse(&full).map_err(|e| ClientError::InvalidUrl {
            url: full.clone(),
            reason: e.to_string(),
        })?;
        let mut headers = headers;
        if let Some(token) = &self.token
            && !headers.contains_key(wisp_core::KEY_HEADER)
            && let Ok(v) = header::HeaderValue::from_str(token)
        {
            headers.insert(wisp_core::KEY_HEADER, v);
        }
        let req = self
            .http
            .request(method, url.clone())
            .headers(headers)
            .body(body);
        let res = self.send(req, &url).await?;
        let status = res.status().as_u16();
        let http_version = format!("{:?}", res.version());
        let headers = res.headers().clone();
        let body = res.bytes().await.map_err(|e| self.transport(e, &url))?;
        Ok(InvokeResponse {
            status,
            http_version,
            headers,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_read_well() {
        let e = ClientError::Api {
            status: 404,
            body: ErrorBody::new(ErrorCode::FunctionNotFound, "no function `x`"),
        };
        assert_eq!(
            e.to_string(),
            "no function `x` (function_not_found, HTTP 404)"
        );
        assert_eq!(e.code(), Some(ErrorCode::FunctionNotFound));
    }

    #[test]
    fn urls_are_built_from_encoded_segments() {
        let c = Client::new("http://127.0.0.1:8080/", None);
        assert_eq!(
            c.url(&["v1", "functions", "a/b"]).unwrap().as_str(),
            "http://127.0.0.1:8080/v1/functions/a%2Fb"
        );
        let c = Client::new("http://host/prefix", None);
        assert_eq!(
            c.url(&["v1", "health"]).unwrap().as_str(),
            "http://host/prefix/v1/health"
        );
        assert!(matches!(
            Client::new("127.0.0.1:8080", None).url(&["v1"]),
            Err(ClientError::InvalidUrl { .. })
        ));
    }

    #[tokio::test]
    async fn unreachable_server_is_a_connect_error() {
        // Bind then drop a listener so the port is (very likely) closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = Client::new(format!("http://127.0.0.1:{port}"), None);
        let e = c.health().await.unwrap_err();
        assert!(matches!(e, ClientError::Connect { .. }), "{e:?}");
        assert!(e.to_string().contains("wisp server"), "{e}");
    }
}
