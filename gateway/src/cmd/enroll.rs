//! `ferry-gateway enroll`: registers this gateway with the cloud once, with
//! the one-time token an admin got from `POST /api/v1/gateways`.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::Args;
use serde::Deserialize;

use super::{
    Paths,
    http::{self, Client, CloudUrl, HttpError, Method},
};
use crate::state::{Enrollment, keys};

#[derive(Args, Debug)]
pub struct EnrollArgs {
    /// The cloud's URL, `https://host[:port]` (or `http://` in a lab).
    #[arg(long, value_name = "URL")]
    pub cloud: String,
    /// The one-time enrolment token the cloud's admin gave you.
    #[arg(long, value_name = "TOKEN", env = "FERRY_ENROL_TOKEN", hide_env_values = true)]
    pub token: String,
    /// The SHA-256 fingerprint of the cloud's TLS certificate (`AB:CD:...`),
    /// as the cloud prints it at start; required for https.
    #[arg(long, value_name = "FINGERPRINT")]
    pub pin: Option<String>,
    /// Enrol again although this gateway already is (the identity key is kept).
    #[arg(long)]
    pub force: bool,
}

const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Deserialize)]
struct Enrolled {
    gateway_id: u64,
    name: String,
    control_path: String,
}

#[derive(Deserialize)]
struct Problem {
    #[serde(default)]
    title: String,
    #[serde(default)]
    detail: String,
}

pub fn run(paths: &Paths, args: EnrollArgs) -> Result<()> {
    let url = CloudUrl::parse(args.cloud.trim())?;
    let pin = match (&args.pin, url.https) {
        (Some(text), _) => Some(
            ferry_control::pin::parse_fingerprint(text)
                .with_context(|| format!("--pin {text:?} is not a SHA-256 fingerprint (64 hex digits)"))?,
        ),
        (None, true) => bail!(
            "--pin is required with https: give the SHA-256 fingerprint of the cloud's certificate \
             (the cloud prints it when it starts)"
        ),
        (None, false) => None,
    };
    if !url.https {
        eprintln!(
            "WARNING: {} is plain http: the enrolment token and the control channel are not encrypted. \
             Use this only in a lab.",
            url.url()
        );
    }

    let store = super::open_store(paths).map_err(|e| {
        e.context("enrolment changes the daemon's state: stop it first (`systemctl stop ferry-gateway`)")
    })?;
    if let Some(existing) = store.enrollment()?
        && !args.force
    {
        bail!(
            "this gateway is already enrolled as {:?} (gateway {}) with {}; use --force to enrol again",
            existing.name,
            existing.gateway_id,
            existing.cloud_url
        );
    }

    let identity = keys::identity(&paths.data_dir).context("loading or creating the identity key")?;
    let wireguard = keys::wireguard(&paths.data_dir).context("loading or creating the WireGuard key")?;
    let body = serde_json::to_vec(&serde_json::json!({
        "token": args.token.trim(),
        "identity_key": hex::encode(identity.verifying_key().as_bytes()),
    }))?;

    let client = Client::new(url.clone(), pin, TIMEOUT)?;
    let exchange = client.send(http::request(Method::POST, "/api/v1/enrol").json(Some(body)));
    let response = http::block_on(exchange)?.map_err(|e| match e {
        HttpError::PinMismatch { .. } => anyhow::anyhow!(
            "{e}\nCheck --pin against the fingerprint the cloud printed; someone may be intercepting the connection."
        ),
        e if e.is_unreachable() => {
            anyhow::anyhow!("the cloud is unreachable: {e}\n`ferry-gateway diagnose` checks the network path.")
        }
        other => other.into(),
    })?;
    match response.status {
        200 => {}
        401 => {
            let problem: Option<Problem> = serde_json::from_slice(&response.body).ok();
            let detail =
                problem.map(|p| if p.detail.is_empty() { p.title } else { p.detail }).unwrap_or_default();
            bail!(
                "the cloud refused the enrolment token ({detail}): it was already used, has expired or is wrong. \
                 Ask the cloud's admin for a new one (POST /api/v1/gateways/{{id}}/enrolment-token)."
            );
        }
        status => bail!(
            "the cloud answered {status} to the enrolment: {}",
            String::from_utf8_lossy(&response.body).chars().take(500).collect::<String>()
        ),
    }
    let enrolled: Enrolled = serde_json::from_slice(&response.body)
        .context("the cloud's enrolment answer is not what was expected")?;
    let enrollment = Enrollment {
        cloud_url: url.url(),
        gateway_id: enrolled.gateway_id,
        name: enrolled.name,
        pin: pin.map(|p| ferry_control::pin::format_fingerprint(&p)),
        control_path: enrolled.control_path,
    };
    store.set_enrollment(&enrollment)?;
    tracing::info!(gateway_id = enrollment.gateway_id, cloud = %enrollment.cloud_url, "enrolled");

    println!(
        "enrolled with {} as gateway {} ({:?})",
        enrollment.cloud_url, enrollment.gateway_id, enrollment.name
    );
    println!("identity key (Ed25519): {}", hex::encode(identity.verifying_key().as_bytes()));
    println!("WireGuard public key:   {}", wireguard.public_key().to_base64());
    println!(
        "next: `systemctl enable --now ferry-gateway`, then `ferry-gateway remote on` when remote maintenance is wanted"
    );
    Ok(())
}
