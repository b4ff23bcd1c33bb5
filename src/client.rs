//! The HTTP client the CLI commands share (`sluice models`, `train`, `predict`): Sluice's API at a
//! URL with a token, answers as JSON, errors with the API's message and code; and the plain
//! tables they print.

use anyhow::{Context as _, bail};
use serde_json::Value;

/// The registry API at `url`, called with `token`.
#[derive(Debug, Clone)]
pub struct Api {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Api {
    pub fn new(url: &str, token: &str) -> Self {
        Self { http: cli_http(None), url: url.trim_end_matches('/').to_owned(), token: token.to_owned() }
    }

    /// `url` with each segment percent-encoded, so a name is never read as a path.
    fn endpoint(&self, segments: &[&str]) -> anyhow::Result<reqwest::Url> {
        let mut url = reqwest::Url::parse(&self.url).with_context(|| format!("{} is not a URL", self.url))?;
        url.path_segments_mut().map_err(|()| anyhow::anyhow!("{} cannot be a base URL", self.url))?.extend(segments);
        Ok(url)
    }

    pub async fn get(&self, segments: &[&str]) -> anyhow::Result<Value> {
        self.send(self.http.get(self.endpoint(segments)?)).await
    }

    pub async fn put(&self, segments: &[&str], body: &Value) -> anyhow::Result<Value> {
        self.send(self.http.put(self.endpoint(segments)?).json(body)).await
    }

    pub async fn post(&self, segments: &[&str], body: &Value) -> anyhow::Result<Value> {
        self.send(self.http.post(self.endpoint(segments)?).json(body)).await
    }

    /// POSTs a multipart form to `segments` with `query` parameters.
    pub async fn post_form(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
        form: reqwest::multipart::Form,
    ) -> anyhow::Result<Value> {
        self.send(self.http.post(self.endpoint(segments)?).query(query).multipart(form)).await
    }

    /// The JSON answer, or an error carrying the API's message and code.
    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let response =
            request.bearer_auth(&self.token).send().await.with_context(|| format!("reaching {}", self.url))?;
        let status = response.status();
        let text = response.text().await.context("reading the answer")?;
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            return Ok(body);
        }
        match (body["error"]["message"].as_str(), body["error"]["code"].as_str()) {
            (Some(message), Some(code)) => bail!("{message} ({} {code})", status.as_u16()),
            _ => bail!("the API answered {status}: {body}"),
        }
    }
}

/// Left-aligned columns, two spaces apart.
pub fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(headers.iter().map(|h| (*h).to_owned()).collect());
    if rows.is_empty() {
        out.push_str("(none)\n");
    }
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

/// The CLI's HTTP client: a server that stops answering ends the call with an error instead of
/// hanging the command (no connection in 10 s, or no byte for 120 s while a request or its
/// answer is under way; an upload that keeps flowing may take as long as it needs).
pub fn cli_http(pool_per_host: Option<usize>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(10))
        .read_timeout(std::time::Duration::from_secs(120));
    if let Some(pool) = pool_per_host {
        builder = builder.pool_max_idle_per_host(pool);
    }
    builder.build().expect("an HTTP client")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_and_say_when_empty() {
        let out = table(&["A", "LONGER"], vec![vec!["wide cell".into(), "x".into()]]);
        assert_eq!(out, "A          LONGER\nwide cell  x\n");
        assert_eq!(table(&["A"], vec![]), "A\n(none)\n");
    }
}
