//! Test helper: collects the log lines (`tfdc*` tracing events) emitted on
//! the current thread while a [`LogCapture`] is alive. Tasks spawned on a
//! current-thread tokio runtime run on that thread, so their lines are
//! captured too.

use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};

/// One captured line.
#[derive(Debug, Clone)]
pub struct Line {
    pub level: Level,
    pub message: String,
}

/// Captures lines until dropped.
pub struct LogCapture {
    lines: Arc<Mutex<Vec<Line>>>,
    _guard: tracing::subscriber::DefaultGuard,
}

impl LogCapture {
    /// Starts capturing on this thread.
    pub fn start() -> Self {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry().with(Collect(lines.clone()));
        let guard = tracing::subscriber::set_default(subscriber);
        LogCapture {
            lines,
            _guard: guard,
        }
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<Line> {
        self.lines.lock().unwrap().clone()
    }

    /// Messages containing `needle`.
    pub fn matching(&self, needle: &str) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|l| l.message.contains(needle))
            .map(|l| l.message)
            .collect()
    }

    /// Every message, one per line, for assertion messages.
    pub fn dump(&self) -> String {
        self.lines()
            .iter()
            .map(|l| format!("{} {}", l.level, l.message))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

struct Collect(Arc<Mutex<Vec<Line>>>);

impl<S: Subscriber> tracing_subscriber::Layer<S> for Collect {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if !event.metadata().target().starts_with("tfdc") {
            return;
        }
        let mut visitor = Message(String::new());
        event.record(&mut visitor);
        self.0.lock().unwrap().push(Line {
            level: *event.metadata().level(),
            message: visitor.0,
        });
    }
}

struct Message(String);

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0 = value.to_string();
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}
