//! Numbered steps printed as they happen, each with what a person would
//! check, and what failed if one does. Colour only on a terminal.

use std::{
    io::IsTerminal as _,
    panic::AssertUnwindSafe,
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use anyhow::{Result, anyhow};

/// A step that failed: the demo stops there.
#[derive(Debug)]
pub struct StepFailed {
    pub number: usize,
    pub title: String,
    pub error: anyhow::Error,
}

impl std::fmt::Display for StepFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "step {} ({}) failed: {:#}", self.number, self.title, self.error)
    }
}

impl std::error::Error for StepFailed {}

#[derive(Clone, Copy)]
pub struct Style {
    color: bool,
}

impl Style {
    /// Colour when stdout is a terminal and NO_COLOR is not set.
    pub fn detect() -> Style {
        Style { color: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none() }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color { format!("\x1b[{code}m{text}\x1b[0m") } else { text.to_string() }
    }

    pub fn bold(&self, text: &str) -> String {
        self.paint("1", text)
    }

    pub fn green(&self, text: &str) -> String {
        self.paint("32", text)
    }

    pub fn red(&self, text: &str) -> String {
        self.paint("31", text)
    }

    pub fn dim(&self, text: &str) -> String {
        self.paint("2", text)
    }

    pub fn cyan(&self, text: &str) -> String {
        self.paint("36", text)
    }
}

pub struct Walk {
    pub style: Style,
    number: usize,
    started: Instant,
}

/// The lines of one step.
pub struct Step {
    style: Style,
}

impl Step {
    /// Something that happened (a command, an answer).
    pub fn say(&self, text: impl AsRef<str>) {
        for line in text.as_ref().lines() {
            println!("     {line}");
        }
    }

    /// A command as one would type it.
    pub fn command(&self, text: impl AsRef<str>) {
        println!("     {} {}", self.style.dim("$"), self.style.cyan(text.as_ref()));
    }

    /// What a person would check, and it holds.
    pub fn check(&self, text: impl AsRef<str>) {
        println!("     {} {}", self.style.green("ok"), text.as_ref());
    }
}

/// Set while a step runs: its panics become its failure instead of a
/// message on stderr.
static IN_STEP: AtomicBool = AtomicBool::new(false);
static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

/// Routes the panics of the world's helpers (which panic with what went
/// wrong, as test helpers do) into the failing step's report.
pub fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if IN_STEP.load(Ordering::Relaxed) {
            let message = info
                .payload()
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic without a message".to_string());
            let location = info.location().map(|l| format!(" (at {l})")).unwrap_or_default();
            *LAST_PANIC.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("{message}{location}"));
        } else {
            default(info);
        }
    }));
}

impl Walk {
    pub fn new(style: Style) -> Walk {
        Walk { style, number: 0, started: Instant::now() }
    }

    /// A heading between parts of the walk.
    pub fn part(&self, title: &str) {
        println!("\n{}", self.style.bold(title));
    }

    /// Runs the next step: prints its number and title, then what `f` says,
    /// then how long it took; a failure (an error, or a panic of the world's
    /// helpers) is the step's.
    pub fn step<T>(&mut self, title: &str, f: impl FnOnce(&Step) -> Result<T>) -> Result<T, StepFailed> {
        self.number += 1;
        let number = self.number;
        println!("\n{} {}", self.style.bold(&format!("{number:>2}.")), self.style.bold(title));
        let step = Step { style: self.style };
        let began = Instant::now();
        IN_STEP.store(true, Ordering::Relaxed);
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| f(&step)));
        IN_STEP.store(false, Ordering::Relaxed);
        let result = match outcome {
            Ok(result) => result,
            Err(_) => Err(anyhow!(
                "{}",
                LAST_PANIC
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take()
                    .unwrap_or_else(|| "panicked".into())
            )),
        };
        match result {
            Ok(value) => {
                println!("     {}", self.style.dim(&format!("[{:.1}s]", began.elapsed().as_secs_f64())));
                Ok(value)
            }
            Err(error) => {
                println!("     {} {error:#}", self.style.red("FAILED"));
                Err(StepFailed { number, title: title.to_string(), error })
            }
        }
    }

    pub fn steps(&self) -> usize {
        self.number
    }

    pub fn elapsed_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}
