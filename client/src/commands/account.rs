//! `ferry login` and `ferry logout`.

use std::{
    io::{BufRead as _, IsTerminal as _},
    path::PathBuf,
};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use ferry_api::{LoginRequest, UserView};
use ferry_connect::http::{Client, Request};

use super::block_on;
use crate::cloud::{
    self, CloudError,
    credentials::{Credentials, Secret, Store},
};

/// Log in to a Ferry cloud; the login is kept for the other commands.
///
/// With a name and password (and the TOTP code, when the account has a
/// second factor), the cloud hands out a short access token and a refresh
/// token. They are kept in `$XDG_CONFIG_HOME/ferry/credentials.json` (or
/// `~/.config/ferry`), readable by you only, and renewed as they are used.
///
/// For scripts: an API token that an administrator made, with --token-file
/// or the environment variable FERRY_API_TOKEN, instead of a password.
#[derive(Args, Debug)]
pub struct LoginArgs {
    /// The cloud, `https://HOST[:PORT]` (`http://` only in labs).
    #[arg(long, env = "FERRY_CLOUD", value_name = "URL")]
    pub cloud: String,
    /// The SHA-256 fingerprint of the cloud's certificate (needed for
    /// https; your administrator has it). Colons and case do not matter.
    #[arg(long, env = "FERRY_PIN", value_name = "FINGERPRINT")]
    pub pin: Option<String>,
    /// Your user name at the cloud (asked for when missing).
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// Read the password from the first line of standard input instead of
    /// asking (and the TOTP code from the second, if the cloud wants one).
    #[arg(long, conflicts_with = "token_file")]
    pub password_stdin: bool,
    /// The current TOTP code, if your account has a second factor.
    #[arg(long, value_name = "CODE")]
    pub totp: Option<String>,
    /// A file holding an API token, instead of a name and password. (The
    /// environment variable FERRY_API_TOKEN works too, when neither --user
    /// nor --password-stdin is given.)
    #[arg(long, value_name = "FILE", conflicts_with_all = ["user", "totp"])]
    pub token_file: Option<PathBuf>,
}

/// Where the answers come from: the terminal, or standard input for scripts.
struct Prompter {
    stdin_lines: Option<std::io::Lines<std::io::StdinLock<'static>>>,
}

impl Prompter {
    fn line(&mut self, label: &str, secret: bool) -> Result<String> {
        if let Some(lines) = &mut self.stdin_lines {
            return Ok(lines
                .next()
                .context(format!("no {label} on standard input"))??
                .trim_end()
                .to_string());
        }
        if !std::io::stdin().is_terminal() {
            bail!("no terminal to ask for the {label}: pass --password-stdin (or --user, --totp)");
        }
        if secret {
            return Ok(rpassword::prompt_password(format!("{label}: "))?);
        }
        eprint!("{label}: ");
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        Ok(answer.trim().to_string())
    }
}

pub fn login(args: LoginArgs) -> Result<()> {
    let store = Store::default_location()?;
    let transport = cloud::transport(&args.cloud, args.pin.as_deref())?;
    if !transport.url().https {
        eprintln!(
            "warning: {} is plain http: the password and tokens cross the network readable",
            transport.url().url()
        );
    }
    let pin = args
        .pin
        .as_deref()
        .and_then(ferry_connect::pin::parse_fingerprint)
        .map(|p| ferry_connect::pin::format_fingerprint(&p));
    let token = match &args.token_file {
        Some(file) => Some(
            std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?
                .trim()
                .to_string(),
        ),
        // Not a flag: a token on the command line shows in `ps`.
        None if !args.password_stdin && args.user.is_none() => {
            std::env::var("FERRY_API_TOKEN").ok().map(|t| t.trim().to_string())
        }
        None => None,
    };
    let credentials = match token {
        Some(token) => block_on(with_api_token(&transport, pin, token))?,
        None => {
            let mut prompter =
                Prompter { stdin_lines: args.password_stdin.then(|| std::io::stdin().lock().lines()) };
            let user = match &args.user {
                Some(user) => user.clone(),
                None => prompter.line("User", false)?,
            };
            let password =
                prompter.line(&format!("Password for {user} at {}", transport.url().url()), true)?;
            let mut request = LoginRequest { name: user, password, totp: args.totp.clone() };
            let tokens = loop {
                match block_on(async { Ok(cloud::login(&transport, &request).await?) }) {
                    Err(e) if request.totp.is_none() && slug(&e) == Some("totp-required") => {
                        request.totp = Some(prompter.line("TOTP code", false)?);
                    }
                    other => break other?,
                }
            };
            cloud::login_credentials(transport.url(), pin, tokens)
        }
    };
    store.save(&credentials).with_context(|| format!("saving the login in {}", store.path().display()))?;
    let how = match credentials.secret {
        Secret::Login { .. } => "",
        Secret::ApiToken { .. } => " with an API token",
    };
    println!("Logged in to {} as {}{how}.", credentials.cloud, credentials.user);
    Ok(())
}

fn slug(error: &anyhow::Error) -> Option<&str> {
    error.downcast_ref::<CloudError>().and_then(CloudError::slug)
}

/// An API token is checked (`GET /api/v1/me`) before it is stored.
async fn with_api_token(transport: &Client, pin: Option<String>, token: String) -> Result<Credentials> {
    if token.is_empty() {
        bail!("the API token is empty");
    }
    let answer = transport.send(Request::get("/api/v1/me").bearer(Some(&token))).await?;
    if answer.status == 401 {
        return Err(CloudError::LoginExpired {
            cloud: transport.url().url(),
            detail: "the cloud does not accept this API token".into(),
        }
        .into());
    }
    if answer.status != 200 {
        bail!("the cloud answered {} to the token check", answer.status);
    }
    let me: UserView =
        serde_json::from_slice(&answer.body).context("reading the cloud's answer about the token")?;
    Ok(Credentials {
        cloud: transport.url().url(),
        pin,
        user: me.name,
        user_id: me.id,
        secret: Secret::ApiToken { api_token: token },
    })
}

pub fn logout() -> Result<()> {
    let store = Store::default_location()?;
    let Some(credentials) = store.load()? else {
        println!("Not logged in.");
        return Ok(());
    };
    // Revoke first: a stolen copy of the file must stop working too.
    let revoked = match &credentials.secret {
        Secret::Login { refresh_token, .. } => {
            let transport = cloud::transport(&credentials.cloud, credentials.pin.as_deref())?;
            block_on(async { Ok(cloud::logout(&transport, refresh_token).await?) })
        }
        Secret::ApiToken { .. } => Ok(()),
    };
    store.remove().with_context(|| format!("deleting {}", store.path().display()))?;
    match (revoked, &credentials.secret) {
        (Ok(()), Secret::Login { .. }) => {
            println!("Logged out of {}: the login is revoked there and deleted here.", credentials.cloud);
            Ok(())
        }
        (Ok(()), Secret::ApiToken { .. }) => {
            println!("Deleted the API token here; an administrator revokes it at the cloud.");
            Ok(())
        }
        (Err(e), _) => Err(e.context(format!(
            "deleted the login here, but could not revoke it at {} (it stops working when it expires)",
            credentials.cloud
        ))),
    }
}
