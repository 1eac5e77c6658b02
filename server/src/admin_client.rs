//! The admin side of the host's HTTP API for CLI commands (`atmosphere token`,
//! `atmosphere devices`): the `--data-dir` / `--server` flags they share, the admin secret
//! read from the data dir, and one request with errors that say what to do.

use crate::data_dir;
use atmosphere_shared::api::ApiError;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How to reach the running host as its admin.
#[derive(Debug, Clone, clap::Args)]
pub struct HostArgs {
    /// Data dir of the running host (where its admin_secret lives) [default: the user's
    /// data directory, as for `serve`].
    #[arg(long, env = "ATMOSPHERE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// URL of the running host.
    #[arg(
        long,
        value_name = "URL",
        env = "ATMOSPHERE_SERVER",
        default_value = "http://127.0.0.1:11451"
    )]
    pub server: String,
}

/// Why an admin request failed.
#[derive(Debug)]
pub enum AdminError {
    /// The host answered with this status and API error (e.g. 404 `not_found`).
    Refused { status: u16, error: ApiError },
    /// Anything else: no secret, no host, a broken answer.
    Other(anyhow::Error),
}

impl std::fmt::Display for AdminError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminError::Refused { status, error } => write!(
                f,
                "the host answered {status}: {}: {}",
                error.error, error.message
            ),
            AdminError::Other(e) => write!(f, "{e:#}"),
        }
    }
}

impl From<anyhow::Error> for AdminError {
    fn from(e: anyhow::Error) -> AdminError {
        AdminError::Other(e)
    }
}

/// An HTTP client holding the admin secret of one host.
pub struct AdminClient {
    http: reqwest::Client,
    base: url::Url,
    server: String,
    secret: String,
    secret_path: PathBuf,
}

impl AdminClient {
    /// Reads the admin secret and checks `--server`.
    pub fn new(args: &HostArgs) -> anyhow::Result<AdminClient> {
        let dir = data_dir::resolve(args.data_dir.as_deref())?;
        let secret_path = data_dir::admin_secret_path(&dir);
        let secret = read_secret(&secret_path)?;
        let base = url::Url::parse(&args.server)
            .map_err(|e| anyhow::anyhow!("--server {:?} is not a URL: {e}", args.server))?;
        anyhow::ensure!(
            base.scheme() == "http",
            "--server must be an http:// URL of the host (this command talks to a host it can reach directly)"
        );
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(3))
            .build()?;
        Ok(AdminClient {
            http,
            base,
            server: args.server.clone(),
            secret,
            secret_path,
        })
    }

    /// Sends `method path` (with a JSON `body` if given) as the admin; returns the answer's
    /// text when it is a success.
    pub async fn request<B: serde::Serialize>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<String, AdminError> {
        let url = self.base.join(path).map_err(anyhow::Error::from)?;
        let mut req = self
            .http
            .request(method, url.clone())
            .bearer_auth(&self.secret);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| {
            if e.is_connect() || e.is_timeout() {
                anyhow::anyhow!(
                    "no host answers at {}: is `atmosphere serve` running there? ({e})",
                    self.server
                )
            } else {
                anyhow::anyhow!("request to {url} failed: {e}")
            }
        })?;
        let status = resp.status();
        let text = resp.text().await.map_err(anyhow::Error::from)?;
        if status.is_success() {
            return Ok(text);
        }
        let error = serde_json::from_str::<ApiError>(&text).unwrap_or_else(|_| ApiError {
            error: "unexpected".into(),
            message: text.chars().take(300).collect(),
        });
        if status == reqwest::StatusCode::UNAUTHORIZED {
            return Err(AdminError::Other(anyhow::anyhow!(
                "the host refused the admin secret from {} ({}: {}); is --data-dir the one the host uses?",
                self.secret_path.display(),
                error.error,
                error.message
            )));
        }
        Err(AdminError::Refused {
            status: status.as_u16(),
            error,
        })
    }
}

/// Parses a successful answer as `T`.
pub fn parse_answer<T: serde::de::DeserializeOwned>(text: &str) -> anyhow::Result<T> {
    serde_json::from_str(text).map_err(|e| anyhow::anyhow!("unexpected answer from the host: {e}"))
}

fn read_secret(path: &Path) -> anyhow::Result<String> {
    let secret = std::fs::read_to_string(path)
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot read the admin secret {}: {e}. Start the host first (`atmosphere serve`), \
                 or pass the --data-dir it uses.",
                path.display()
            )
        })?
        .trim()
        .to_string();
    anyhow::ensure!(!secret.is_empty(), "{} is empty", path.display());
    Ok(secret)
}
