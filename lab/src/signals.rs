//! Cleaning up on Ctrl-C for programs that build a lab (the demo, the soak).

use crate::Error;

/// On SIGINT, SIGTERM or SIGHUP, from any point of the program: removes
/// every namespace, socket and folder this process made (they carry its
/// pid) and exits with 130. Call it before the first namespace exists.
/// `program` names the program in what it prints.
///
/// Signal handlers rather than a blocked signal mask: a mask would be
/// inherited by every daemon the program starts, which then could not be
/// stopped with SIGTERM.
pub fn sweep_on_signals(program: &'static str) -> Result<(), Error> {
    use tokio::signal::unix::{SignalKind, signal};
    let setup = |e: std::io::Error| Error::Setup(format!("catching signals: {e}"));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(setup)?;
    let (mut interrupt, mut terminate, mut hangup) = {
        let _entered = runtime.enter();
        (
            signal(SignalKind::interrupt()).map_err(setup)?,
            signal(SignalKind::terminate()).map_err(setup)?,
            signal(SignalKind::hangup()).map_err(setup)?,
        )
    };
    std::thread::spawn(move || {
        runtime.block_on(async {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
                _ = hangup.recv() => {}
            }
        });
        eprintln!("\n{program}: stopping; removing everything it made");
        let removed = crate::sweep_pid(std::process::id());
        let namespaces = removed.iter().filter(|r| r.starts_with("netns")).count();
        eprintln!(
            "{program}: removed {namespaces} namespaces and {} other objects",
            removed.len() - namespaces
        );
        std::process::exit(130);
    });
    Ok(())
}
