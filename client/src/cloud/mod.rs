//! The cloud's REST API as the technician's commands use it: the login kept
//! in [`credentials`], refreshed when the access token runs out (the refresh
//! token is single use: the rotated one is stored before the new access token
//! is used), and refusals explained with the cloud's own `detail`.

pub mod credentials;
pub mod sse;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_api::{LoginRequest, Problem, RefreshRequest, TokenResponse};
use ferry_connect::http::{Client, CloudUrl, HttpError, Method, Request, Response};
use serde::{Serialize, de::DeserializeOwned};

use self::credentials::{Credentials, Secret, Store};

/// How long one call to the cloud may take.
pub const TIMEOUT: Duration = Duration::from_secs(20);
/// Refresh this long before the access token expires rather than after a 401.
const REFRESH_MARGIN_MS: u64 = 20_000;

#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    #[error("not logged in: run `ferry login --cloud URL` first")]
    NotLoggedIn,
    #[error("the login at {cloud} no longer works ({detail}): run `ferry login` again")]
    LoginExpired { cloud: String, detail: String },
    #[error("the cloud refused: {} ({}): {}", .0.title, .0.status, .0.detail)]
    Refused(Problem),
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("the cloud's answer to {what} is not what this client understands: {detail}")]
    BadAnswer { what: String, detail: String },
    #[error("the stored login ({}): {source}", .path)]
    Store { path: String, source: std::io::Error },
}

impl CloudError {
    /// The cloud's problem slug (`switch-off`, `totp-required`...), if it refused.
    pub fn slug(&self) -> Option<&str> {
        match self {
            CloudError::Refused(problem) => Some(problem.slug()),
            _ => None,
        }
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The HTTP client of the cloud at `url`, with the pin text as `--pin`
/// takes it.
pub fn transport(url: &str, pin: Option<&str>) -> Result<Client, CloudError> {
    let address = CloudUrl::parse(url)?;
    let pin = match pin {
        None => None,
        Some(text) => Some(ferry_connect::pin::parse_fingerprint(text).ok_or_else(|| {
            CloudError::Http(HttpError::Tls {
                authority: address.authority(),
                detail: format!("{text:?} is not a SHA-256 fingerprint (64 hex digits, colons allowed)"),
            })
        })?),
    };
    Ok(Client::new(address, pin, TIMEOUT)?)
}

/// A 2xx answer's JSON, else the cloud's refusal.
fn decode<T: DeserializeOwned>(what: &str, answer: Response) -> Result<T, CloudError> {
    let answer = success(answer)?;
    serde_json::from_slice(&answer.body)
        .map_err(|e| CloudError::BadAnswer { what: what.to_string(), detail: e.to_string() })
}

fn success(answer: Response) -> Result<Response, CloudError> {
    if (200..300).contains(&answer.status) {
        return Ok(answer);
    }
    Err(CloudError::Refused(problem(&answer)))
}

/// The problem document of a refusal; a proxy's HTML page or an empty body
/// becomes one too, with the start of the text as detail.
pub fn problem(answer: &Response) -> Problem {
    serde_json::from_slice::<Problem>(&answer.body).unwrap_or_else(|_| {
        let text: String = String::from_utf8_lossy(&answer.body).chars().take(200).collect();
        Problem {
            kind: "about:blank".into(),
            title: format!("HTTP {}", answer.status),
            status: answer.status,
            detail: if text.trim().is_empty() { "no detail given".into() } else { text.trim().to_string() },
            retry_after: None,
        }
    })
}

fn to_json(value: &impl Serialize) -> Result<Vec<u8>, CloudError> {
    serde_json::to_vec(value)
        .map_err(|e| CloudError::BadAnswer { what: "the request".into(), detail: e.to_string() })
}

/// `POST /api/v1/auth/login`.
pub async fn login(transport: &Client, request: &LoginRequest) -> Result<TokenResponse, CloudError> {
    let answer = transport
        .send(Request::new(Method::POST, "/api/v1/auth/login").json(Some(to_json(request)?)))
        .await?;
    decode("the login", answer)
}

/// `POST /api/v1/auth/logout`: revokes the refresh token and every token
/// rotated from it.
pub async fn logout(transport: &Client, refresh_token: &str) -> Result<(), CloudError> {
    let body = to_json(&RefreshRequest { refresh_token: refresh_token.to_string() })?;
    success(transport.send(Request::new(Method::POST, "/api/v1/auth/logout").json(Some(body))).await?)
        .map(drop)
}

/// What a login's answer becomes on disk.
pub fn login_credentials(address: &CloudUrl, pin: Option<String>, tokens: TokenResponse) -> Credentials {
    let now = now_ms();
    Credentials {
        cloud: address.url(),
        pin,
        user: tokens.user.name,
        user_id: tokens.user.id,
        secret: Secret::Login {
            access_token: tokens.access_token,
            access_expires_ms: now.saturating_add(tokens.expires_in.saturating_mul(1000)),
            refresh_token: tokens.refresh_token,
            refresh_expires_ms: now.saturating_add(tokens.refresh_expires_in.saturating_mul(1000)),
        },
    }
}

/// The logged-in cloud.
pub struct Cloud {
    transport: Client,
    store: Store,
    credentials: Credentials,
}

impl Cloud {
    /// The cloud of the stored login.
    pub fn open(store: Store) -> Result<Cloud, CloudError> {
        let credentials = store.load().map_err(|e| store_error(&store, e))?.ok_or(CloudError::NotLoggedIn)?;
        let transport = transport(&credentials.cloud, credentials.pin.as_deref())?;
        Ok(Cloud { transport, store, credentials })
    }

    /// Where this cloud is, for the service's watch on a configuration.
    pub fn link(&self) -> crate::protocol::CloudLink {
        crate::protocol::CloudLink { url: self.credentials.cloud.clone(), pin: self.credentials.pin.clone() }
    }

    pub async fn get<T: DeserializeOwned>(&mut self, path: &str) -> Result<T, CloudError> {
        let answer = self.authorized(Method::GET, path, None).await?;
        decode(path, answer)
    }

    pub async fn post<T: DeserializeOwned>(
        &mut self,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, CloudError> {
        let body = body.map(to_json).transpose()?;
        let answer = self.authorized(Method::POST, path, body).await?;
        decode(path, answer)
    }

    /// A POST whose answer is text (the wg-quick file).
    pub async fn post_for_text(&mut self, path: &str, body: &impl Serialize) -> Result<String, CloudError> {
        let answer = success(self.authorized(Method::POST, path, Some(to_json(body)?)).await?)?;
        String::from_utf8(answer.body.to_vec())
            .map_err(|e| CloudError::BadAnswer { what: path.to_string(), detail: e.to_string() })
    }

    /// Sends with the access token; refreshes first when it is about to
    /// expire, and once more if the cloud still says 401.
    async fn authorized(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Response, CloudError> {
        let mut refreshed = false;
        if let Secret::Login { access_expires_ms, .. } = self.credentials.secret
            && now_ms().saturating_add(REFRESH_MARGIN_MS) >= access_expires_ms
        {
            self.refresh().await?;
            refreshed = true;
        }
        loop {
            let bearer = match &self.credentials.secret {
                Secret::Login { access_token, .. } => access_token.clone(),
                Secret::ApiToken { api_token } => api_token.clone(),
            };
            let request = Request::new(method.clone(), path).bearer(Some(&bearer)).json(body.clone());
            let answer = self.transport.send(request).await?;
            if answer.status != 401 {
                return Ok(answer);
            }
            let is_login = matches!(self.credentials.secret, Secret::Login { .. });
            if refreshed || !is_login {
                return Err(CloudError::LoginExpired {
                    cloud: self.credentials.cloud.clone(),
                    detail: problem(&answer).detail,
                });
            }
            self.refresh().await?;
            refreshed = true;
        }
    }

    /// Exchanges the refresh token for a new pair and stores the pair before
    /// anything uses it. Under the store's lock, so that two commands at once
    /// do not both spend the same token (the cloud would take that for a
    /// stolen token and revoke the login).
    async fn refresh(&mut self) -> Result<(), CloudError> {
        let _lock = self.store.lock().map_err(|e| store_error(&self.store, e))?;
        let stored = self.store.load().map_err(|e| store_error(&self.store, e))?;
        if let Some(stored) = stored {
            let rotated_meanwhile =
                stored.cloud == self.credentials.cloud && stored.secret != self.credentials.secret;
            if rotated_meanwhile {
                self.credentials = stored;
                if let Secret::Login { access_expires_ms, .. } = self.credentials.secret
                    && now_ms().saturating_add(REFRESH_MARGIN_MS) < access_expires_ms
                {
                    return Ok(());
                }
            }
        }
        let Secret::Login { refresh_token, .. } = &self.credentials.secret else {
            return Ok(());
        };
        let body = to_json(&RefreshRequest { refresh_token: refresh_token.clone() })?;
        let request = Request::new(Method::POST, "/api/v1/auth/refresh").json(Some(body));
        let answer = self.transport.send(request).await?;
        if answer.status == 401 {
            return Err(CloudError::LoginExpired {
                cloud: self.credentials.cloud.clone(),
                detail: problem(&answer).detail,
            });
        }
        let tokens: TokenResponse = decode("the token refresh", answer)?;
        let fresh = login_credentials(self.transport.url(), self.credentials.pin.clone(), tokens);
        self.store.save(&fresh).map_err(|e| store_error(&self.store, e))?;
        self.credentials = fresh;
        tracing::debug!("access token refreshed");
        Ok(())
    }
}

fn store_error(store: &Store, source: std::io::Error) -> CloudError {
    CloudError::Store { path: store.path().display().to_string(), source }
}
