//! A gateway simulator for trying the cloud's API before a real gateway is
//! at hand: it speaks the control protocol (signed hello, events, desired
//! state) but forwards nothing. It prints every desired state it receives.
//!
//! ```sh
//! cargo run -p ferry-control --example sim_gateway -- keygen gw.key
//! # enrol gw.key's public key with the cloud (POST /api/v1/enrol), then:
//! cargo run -p ferry-control --example sim_gateway -- run ws://127.0.0.1:7600 GATEWAY_ID gw.key on
//! ```

use std::time::{SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use ferry_control::{
    GatewayId, WgKey,
    client::{self, Channel},
    gateway::{Event, FromGateway, GatewayEvent, ToGateway},
};

fn usage() -> ! {
    eprintln!("usage: sim_gateway keygen KEYFILE | run CLOUD_WS_URL GATEWAY_ID KEYFILE [on|off]");
    std::process::exit(2)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("keygen") if args.len() == 2 => {
            let mut seed = [0u8; 32];
            rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut seed);
            std::fs::write(&args[1], hex::encode(seed))?;
            let key = SigningKey::from_bytes(&seed);
            println!("{}", hex::encode(key.verifying_key().to_bytes()));
            Ok(())
        }
        Some("run") if (4..=5).contains(&args.len()) => {
            let mut seed = [0u8; 32];
            hex::decode_to_slice(std::fs::read_to_string(&args[3])?.trim(), &mut seed)?;
            let key = SigningKey::from_bytes(&seed);
            let id: u64 = args[2].parse()?;
            let switch_on = args.get(4).is_some_and(|s| s == "on");
            let url = format!("{}/api/v1/control/gateway", args[1].trim_end_matches('/'));
            let mut channel = Channel::new(client::connect(&url, None).await?);
            // A fixed WireGuard key derived from the identity: the simulator
            // has no tunnel, the key only has to be stable.
            let wg = WgKey(key.verifying_key().to_bytes());
            let (welcome, state) =
                client::gateway_handshake(&mut channel, &key, GatewayId(id), "sim-gateway", false, wg, None)
                    .await?;
            eprintln!("connected as gateway {id} (connection {}), wg key {wg}", welcome.peer_id);
            println!("{}", ferry_control::encode(&ToGateway::DesiredState(state)));
            if switch_on {
                let time_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
                let event = Event { seq: time_ms, time_ms, event: GatewayEvent::SwitchChanged { on: true } };
                channel.send(&FromGateway::Event(event)).await?;
                eprintln!("switched remote maintenance on");
            }
            while let Some(message) = channel.recv::<ToGateway>().await? {
                match message {
                    ToGateway::DesiredState(state) => {
                        println!("{}", ferry_control::encode(&ToGateway::DesiredState(state)));
                    }
                    ToGateway::Error(e) => {
                        return Err(format!("the cloud refused: {} {}", e.code, e.message).into());
                    }
                    _ => {}
                }
            }
            Ok(())
        }
        _ => usage(),
    }
}
