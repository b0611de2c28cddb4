//! The machines of the demo's plant, as small programs of ours that run
//! inside the machine network's namespaces (`ferry-demo plc`, `ferry-demo
//! hmi`): a PLC that answers Modbus/TCP (function 3 reads of its holding
//! registers, 6 and 16 writes of the writable ones) and has a web
//! configuration page, and an HMI whose web page shows the PLC's registers,
//! read over Modbus/TCP on the machine network.

use std::{
    future,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result};
use axum::{Router, extract::State, response::Html, routing::get};
use tokio_modbus::{
    ExceptionCode, Request, Response,
    client::{Context as ModbusClient, Reader as _},
    server::tcp::{Server, accept_tcp_connection},
};

/// One holding register of the PLC.
pub struct Register {
    pub address: u16,
    pub name: &'static str,
    /// The value is this many tenths of `unit`, or whole units when 1.
    pub tenths: bool,
    pub unit: &'static str,
    pub writable: bool,
    pub initial: u16,
}

/// The PLC's holding registers, from address 0.
pub const REGISTERS: [Register; 7] = [
    Register { address: 0, name: "state", tenths: false, unit: "", writable: false, initial: 1 },
    Register { address: 1, name: "speed", tenths: false, unit: "rpm", writable: false, initial: 1450 },
    Register { address: 2, name: "setpoint", tenths: false, unit: "rpm", writable: true, initial: 1450 },
    Register { address: 3, name: "temperature", tenths: true, unit: "°C", writable: false, initial: 423 },
    Register { address: 4, name: "pressure", tenths: false, unit: "mbar", writable: false, initial: 2310 },
    Register { address: 5, name: "parts", tenths: false, unit: "", writable: false, initial: 0 },
    Register { address: 6, name: "alarm", tenths: false, unit: "", writable: true, initial: 0 },
];

/// The Modbus/TCP port, and the port of the PLC's web configuration (which
/// no session whitelists).
pub const MODBUS_PORT: u16 = 502;
pub const PLC_WEB_PORT: u16 = 80;
pub const HMI_PORT: u16 = 80;
pub const SETPOINT: u16 = 2;

/// `speed 1450 rpm`, `temperature 42.3 °C`, `state running`.
pub fn show(register: &Register, value: u16) -> String {
    let number = if register.tenths {
        format!("{}.{}", value / 10, value % 10)
    } else if register.name == "state" {
        match value {
            0 => "stopped".to_string(),
            1 => "running".to_string(),
            other => format!("{other}"),
        }
    } else {
        value.to_string()
    };
    if register.unit.is_empty() {
        format!("{} {number}", register.name)
    } else {
        format!("{} {number} {}", register.name, register.unit)
    }
}

/// All registers as one line: `state running, speed 1450 rpm, ...`.
pub fn show_all(values: &[u16]) -> String {
    REGISTERS.iter().zip(values).map(|(r, v)| show(r, *v)).collect::<Vec<_>>().join(", ")
}

// ------------------------------------------------------------------- the PLC

/// The PLC's memory, shared by the Modbus connections and the machine's
/// own cycle.
#[derive(Clone)]
struct Memory(Arc<Mutex<Vec<u16>>>);

impl Memory {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u16>> {
        // A panic while holding the lock cannot leave the registers torn:
        // every write is a single store.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn read(&self, address: u16, count: u16) -> Result<Vec<u16>, ExceptionCode> {
        let registers = self.lock();
        let (first, last) = (address as usize, address as usize + count as usize);
        if count == 0 || count > 125 || last > registers.len() {
            return Err(ExceptionCode::IllegalDataAddress);
        }
        Ok(registers[first..last].to_vec())
    }

    fn write(&self, address: u16, values: &[u16]) -> Result<(), ExceptionCode> {
        let mut registers = self.lock();
        let writable = |a: u16| REGISTERS.get(a as usize).is_some_and(|r| r.writable);
        let addresses = address..address.saturating_add(values.len() as u16);
        if values.is_empty() || values.len() != addresses.len() || !addresses.clone().all(writable) {
            return Err(ExceptionCode::IllegalDataAddress);
        }
        for (a, v) in addresses.zip(values) {
            registers[a as usize] = *v;
        }
        Ok(())
    }

    /// One second of the machine: the speed follows the setpoint, parts
    /// come off the line, the temperature wanders a little.
    fn tick(&self, second: u64) {
        let mut r = self.lock();
        let (speed, setpoint) = (r[1], r[2]);
        r[1] = if speed < setpoint {
            (speed + 50).min(setpoint)
        } else {
            speed.saturating_sub(50).max(setpoint)
        };
        if r[0] == 1 {
            r[5] = r[5].wrapping_add(1);
        }
        let wander = [0u16, 1, 2, 1, 0, 0, 1, 0];
        r[3] = REGISTERS[3].initial + wander[(second % 8) as usize];
    }
}

struct Plc(Memory);

impl tokio_modbus::server::Service for Plc {
    type Request = Request<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = future::Ready<Result<Response, ExceptionCode>>;

    fn call(&self, request: Self::Request) -> Self::Future {
        future::ready(match request {
            Request::ReadHoldingRegisters(address, count) => {
                self.0.read(address, count).map(Response::ReadHoldingRegisters)
            }
            Request::WriteSingleRegister(address, value) => {
                self.0.write(address, &[value]).map(|()| Response::WriteSingleRegister(address, value))
            }
            Request::WriteMultipleRegisters(address, values) => self
                .0
                .write(address, &values)
                .map(|()| Response::WriteMultipleRegisters(address, values.len() as u16)),
            _ => Err(ExceptionCode::IllegalFunction),
        })
    }
}

/// `ferry-demo plc`: Modbus/TCP on `modbus`, the web configuration page on
/// `web`; runs until killed.
pub async fn run_plc(modbus: SocketAddr, web: SocketAddr) -> Result<()> {
    let memory = Memory(Arc::new(Mutex::new(REGISTERS.iter().map(|r| r.initial).collect())));
    let cycle = memory.clone();
    tokio::spawn(async move {
        let mut second = 0u64;
        let mut interval = tokio::time::interval(Duration::from_secs(1));
        loop {
            interval.tick().await;
            cycle.tick(second);
            second += 1;
        }
    });
    let config_page = Router::new().route(
        "/",
        get(|| async {
            Html(
                "<!doctype html><title>PLC 4711 configuration</title>\
                 <h1>PLC 4711: web configuration</h1><p>Firmware 2.3. Not for remote maintenance.</p>",
            )
        }),
    );
    let web_listener =
        tokio::net::TcpListener::bind(web).await.with_context(|| format!("listening on {web}"))?;
    tokio::spawn(async move { axum::serve(web_listener, config_page).await });

    let listener =
        tokio::net::TcpListener::bind(modbus).await.with_context(|| format!("listening on {modbus}"))?;
    println!("plc ready: Modbus/TCP on {modbus}, web configuration on {web}");
    let server = Server::new(listener);
    let new_service = move |_peer| Ok(Some(Plc(memory.clone())));
    let on_connected = |stream, peer| {
        let new_service = new_service.clone();
        async move { accept_tcp_connection(stream, peer, new_service) }
    };
    server
        .serve(&on_connected, |error| eprintln!("plc: a connection failed: {error}"))
        .await
        .context("serving Modbus/TCP")
}

// ------------------------------------------------------------------- the HMI

/// Reads `count` holding registers from address 0 of the PLC at `plc`,
/// within `timeout`.
pub async fn read_registers(plc: SocketAddr, timeout: Duration) -> Result<Vec<u16>> {
    let read = async {
        let mut client = tokio_modbus::client::tcp::connect(plc).await.context("connecting")?;
        read_with(&mut client).await
    };
    tokio::time::timeout(timeout, read).await.with_context(|| format!("no answer within {timeout:?}"))?
}

/// Function 3 for every register of [`REGISTERS`] on an open connection.
pub async fn read_with(client: &mut ModbusClient) -> Result<Vec<u16>> {
    let values = client
        .read_holding_registers(0, REGISTERS.len() as u16)
        .await
        .context("function 3")?
        .map_err(|code| anyhow::anyhow!("the PLC answered with exception {code:?}"))?;
    Ok(values)
}

/// `ferry-demo hmi`: a web page on `listen` showing the registers of the PLC
/// at `plc`, read when the page is asked for; runs until killed.
pub async fn run_hmi(listen: SocketAddr, plc: SocketAddr) -> Result<()> {
    let app = Router::new().route("/", get(hmi_page)).with_state(plc);
    let listener =
        tokio::net::TcpListener::bind(listen).await.with_context(|| format!("listening on {listen}"))?;
    println!("hmi ready: http://{listen}/ showing the PLC at {plc}");
    axum::serve(listener, app).await.context("serving the HMI page")
}

async fn hmi_page(State(plc): State<SocketAddr>) -> Html<String> {
    let rows = match read_registers(plc, Duration::from_secs(2)).await {
        Ok(values) => REGISTERS
            .iter()
            .zip(&values)
            .map(|(r, v)| {
                let shown = show(r, *v);
                let value = shown.strip_prefix(r.name).unwrap_or(&shown).trim();
                format!("<tr><th>{}</th><td>{value}</td><td>holding register {}</td></tr>", r.name, r.address)
            })
            .collect::<String>(),
        Err(error) => format!("<tr><td>PLC unreachable: {error:#}</td></tr>"),
    };
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"2\">\
         <title>Press line 3 HMI</title></head><body><h1>Press line 3</h1>\
         <p>PLC 4711 at {plc}, read over Modbus/TCP</p><table>{rows}</table></body></html>\n"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> Memory {
        Memory(Arc::new(Mutex::new(REGISTERS.iter().map(|r| r.initial).collect())))
    }

    #[test]
    fn registers_are_numbered_from_zero() {
        for (i, r) in REGISTERS.iter().enumerate() {
            assert_eq!(r.address as usize, i, "{}", r.name);
        }
        assert!(REGISTERS[SETPOINT as usize].writable);
    }

    #[test]
    fn only_writable_registers_take_writes() {
        let m = memory();
        assert_eq!(m.write(SETPOINT, &[1200]), Ok(()));
        assert_eq!(m.read(SETPOINT, 1), Ok(vec![1200]));
        assert_eq!(m.write(1, &[9999]), Err(ExceptionCode::IllegalDataAddress));
        assert_eq!(m.write(2, &[1, 2]), Err(ExceptionCode::IllegalDataAddress), "3 is read-only");
        assert_eq!(m.write(6, &[0, 0]), Err(ExceptionCode::IllegalDataAddress), "beyond the map");
        assert_eq!(m.read(5, 3), Err(ExceptionCode::IllegalDataAddress));
        assert_eq!(m.read(0, 0), Err(ExceptionCode::IllegalDataAddress));
    }

    #[test]
    fn the_speed_follows_the_setpoint() {
        let m = memory();
        m.write(SETPOINT, &[1300]).unwrap();
        for second in 0..5 {
            m.tick(second);
        }
        assert_eq!(m.read(1, 1), Ok(vec![1300]));
        assert_eq!(m.read(5, 1), Ok(vec![5]), "five parts in five running seconds");
    }

    #[test]
    fn values_read_as_a_person_would_say_them() {
        assert_eq!(show(&REGISTERS[3], 423), "temperature 42.3 °C");
        assert_eq!(show(&REGISTERS[0], 1), "state running");
        assert_eq!(show(&REGISTERS[5], 17), "parts 17");
    }
}
