//! Logging: one tracing subscriber, filtered by `RUST_LOG` (default `info`), to stdout for journald
//! (a one-shot command's: `warn`, to stderr),
//! and the span every HTTP request is handled in.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use std::io::IsTerminal as _;

use tracing::Instrument;
use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber of `serve`: `info` and up, on stdout.
/// Call once, before anything logs.
pub fn init(format: LogFormat) {
    install(
        format,
        "info",
        std::io::stdout,
        std::io::stdout().is_terminal(),
    );
}

/// Installs the global subscriber of a one-shot command (`backup`,
/// `rotate-key`, ...): its warnings and errors, on stderr, apart from what
/// it prints on stdout. (Without one, a command's warnings were dropped.)
pub fn init_command(format: LogFormat) {
    install(
        format,
        "warn",
        std::io::stderr,
        std::io::stderr().is_terminal(),
    );
}

fn install<W>(format: LogFormat, default: &str, writer: W, terminal: bool)
where
    W: for<'a> tracing_subscriber::fmt::MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Colours only on a terminal: journald keeps a line with escape codes
    // as binary data (`journalctl` shows `[N blob data]`).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(writer)
        .with_ansi(terminal);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Middleware of every route: each request is handled in a span (method and
/// path), so that what is logged meanwhile says which request it was, and a
/// response carrying an error is logged (a client's at `warn`, a server's at
/// `error`). The span's fields are only made when `info` is logged.
pub async fn request_span(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let span = tracing::info_span!("request", method = %req.method(), path = %req.path());
    let res = next.call(req).instrument(span.clone()).await;
    let _in = span.enter();
    match &res {
        Ok(res) => {
            if let Some(e) = res.response().error() {
                log_error(res.status(), e);
            }
        }
        Err(e) => log_error(e.as_response_error().status_code(), e),
    }
    res
}

fn log_error(status: StatusCode, e: &actix_web::Error) {
    if status.is_client_error() {
        tracing::warn!(status = status.as_u16(), error = %e, "request refused");
    } else {
        tracing::error!(status = status.as_u16(), error = %e, "request failed");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use actix_web::middleware::from_fn;
    use actix_web::{App, HttpResponse, test, web};

    use super::request_span;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[actix_web::test]
    async fn a_refused_request_is_logged_in_its_span() {
        let lines = Lines::default();
        let sink = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .finish();
        let _default = tracing::subscriber::set_default(subscriber);
        let app = test::init_service(App::new().wrap(from_fn(request_span)).route(
            "/thing",
            web::get().to(|| async {
                Err::<HttpResponse, _>(actix_web::error::ErrorNotFound("no such thing"))
            }),
        ))
        .await;
        let req = test::TestRequest::get().uri("/thing").to_request();
        assert_eq!(test::call_service(&app, req).await.status(), 404);
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        for part in [
            "WARN",
            "method=GET",
            "path=/thing",
            "request refused",
            "status=404",
            "no such thing",
        ] {
            assert!(text.contains(part), "{part} in {text}");
        }
    }
}
