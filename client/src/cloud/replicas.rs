//! Every address of one cloud that runs several replicas. A call goes to
//! the replica that answered last and moves to the next only when that one
//! could not be connected to at all: the request was then never sent, so
//! nothing (a spent refresh token, a start) can happen twice.

use std::sync::atomic::{AtomicUsize, Ordering};

use ferry_connect::http::{Client, CloudUrl, HttpError, Opened, Request, Response};

use super::{CloudError, transport};

pub struct Replicas {
    clients: Vec<Client>,
    current: AtomicUsize,
}

impl Replicas {
    /// The clients of `urls` (at least one), all with the same pin: the
    /// replicas of one cloud share its certificate.
    pub fn new(urls: &[String], pin: Option<&str>) -> Result<Replicas, CloudError> {
        let clients = urls.iter().map(|url| transport(url, pin)).collect::<Result<Vec<_>, _>>()?;
        if clients.is_empty() {
            return Err(CloudError::Http(HttpError::Url(String::new())));
        }
        Ok(Replicas { clients, current: AtomicUsize::new(0) })
    }

    /// The replica in use.
    pub fn url(&self) -> &CloudUrl {
        self.clients[self.current.load(Ordering::Relaxed) % self.clients.len()].url()
    }

    pub async fn send(&self, request: Request<'_>) -> Result<Response, HttpError> {
        self.first(|client| client.send(request.clone())).await
    }

    /// [`Client::open`] on the first replica that can be connected to.
    pub async fn open(&self, request: Request<'_>) -> Result<Opened, HttpError> {
        self.first(|client| client.open(request.clone())).await
    }

    async fn first<'a, T, F, Fut>(&'a self, call: F) -> Result<T, HttpError>
    where
        F: Fn(&'a Client) -> Fut,
        Fut: Future<Output = Result<T, HttpError>>,
    {
        let start = self.current.load(Ordering::Relaxed);
        let count = self.clients.len();
        let mut last = None;
        for step in 0..count {
            let index = (start + step) % count;
            match call(&self.clients[index]).await {
                Err(e) if never_sent(&e) => {
                    if count > 1 {
                        tracing::info!(cloud = %self.clients[index].url().url(), error = %e, "trying the next replica");
                    }
                    last = Some(e);
                }
                answer => {
                    self.current.store(index, Ordering::Relaxed);
                    return answer;
                }
            }
        }
        Err(last.unwrap_or_else(|| HttpError::Url(String::new())))
    }
}

/// The request cannot have reached the cloud: its address did not resolve
/// or the connection was refused. (A timeout may come after the request
/// left, so it does not move to another replica.)
fn never_sent(error: &HttpError) -> bool {
    matches!(error, HttpError::Resolve { .. } | HttpError::NoAddress { .. } | HttpError::Connect { .. })
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use ferry_connect::http::Method;

    use super::*;

    /// A loopback port nothing listens on: bound, then closed.
    fn closed_port() -> u16 {
        TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    /// A server that answers every request on it with 204, counting them.
    fn answering() -> (u16, std::sync::Arc<AtomicUsize>) {
        use std::io::{Read as _, Write as _};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let served = std::sync::Arc::new(AtomicUsize::new(0));
        let count = served.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf);
                count.fetch_add(1, Ordering::SeqCst);
                let _ = stream.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
            }
        });
        (port, served)
    }

    /// A loopback listener that never accepts, its queue filled until the
    /// kernel drops further SYNs: to a client, a host that is down (no
    /// refusal, no answer). Returns the port and what must stay open.
    fn unanswering() -> (u16, TcpListener, Vec<std::net::TcpStream>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut held = Vec::new();
        for _ in 0..1024 {
            match std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(300)) {
                Ok(stream) => held.push(stream),
                Err(_) => return (addr.port(), listener, held),
            }
        }
        panic!("the accept queue of {addr} never filled");
    }

    #[test]
    fn a_replica_whose_host_does_not_answer_is_passed_over() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let (up, served) = answering();
            let (silent, _listener, _held) = unanswering();
            let urls = [format!("http://127.0.0.1:{silent}"), format!("http://127.0.0.1:{up}")];
            let replicas = Replicas::new(&urls, None).unwrap();
            let answer = replicas.send(Request::new(Method::POST, "/api/v1/x")).await.unwrap();
            assert_eq!((answer.status, served.load(Ordering::SeqCst)), (204, 1));
            assert_eq!(replicas.url().port, up);
        });
    }

    #[test]
    fn a_replica_that_refuses_connections_is_passed_over_and_the_answering_one_kept() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(passed_over());
    }

    async fn passed_over() {
        let (up, served) = answering();
        let down = closed_port();
        let urls = [format!("http://127.0.0.1:{down}"), format!("http://127.0.0.1:{up}")];
        let replicas = Replicas::new(&urls, None).unwrap();
        let answer = replicas.send(Request::new(Method::POST, "/api/v1/x")).await.unwrap();
        assert_eq!(answer.status, 204);
        assert_eq!(replicas.url().port, up, "the one that answered is used next");
        replicas.send(Request::new(Method::GET, "/api/v1/y")).await.unwrap();
        assert_eq!(served.load(Ordering::SeqCst), 2);

        // None answers: the last refusal comes back.
        let none = Replicas::new(&[urls[0].clone()], None).unwrap();
        let error = none.send(Request::get("/")).await.unwrap_err();
        assert!(matches!(error, HttpError::Connect { .. }), "{error}");
    }
}
