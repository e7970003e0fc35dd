//! mirrorsim-serve: HTTP services over mirrorsim's engine.
//!
//! [`openai`] is an OpenAI-compatible server (`/v1/chat/completions`, `/v1/completions`,
//! `/v1/models`, `/health`) over any [`Backend`]: other tools can use our engine, and the HTTP
//! backend is tested against a real server.
//!
//! Start it with [`bind`] + [`BoundServer::run_until`] inside a tokio runtime, or with [`serve`],
//! which runs it on a background thread and returns the bound address (bind port 0 in tests).

pub mod batcher;
pub mod openai;
pub mod simulator;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use mirrorsim_llm::Backend;

pub use openai::ServerOptions;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server on {addr} failed: {source}")]
    Serve {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the server runtime: {0}")]
    Runtime(std::io::Error),
    #[error("the server thread on {0} panicked")]
    Panicked(SocketAddr),
}

/// A listening socket with its routes, not yet serving.
pub struct BoundServer {
    listener: tokio::net::TcpListener,
    local_addr: SocketAddr,
    router: axum::Router,
}

impl BoundServer {
    /// Binds `addr` (port 0 picks a free port) for `router`. Call inside a tokio runtime.
    pub async fn bind(addr: SocketAddr, router: axum::Router) -> Result<Self, ServeError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| ServeError::Bind { addr, source })?;
        Ok(BoundServer {
            listener,
            local_addr,
            router,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` completes, then stops accepting and finishes the requests in
    /// flight.
    pub async fn run_until<F>(self, shutdown: F) -> Result<(), ServeError>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let addr = self.local_addr;
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|source| ServeError::Serve { addr, source })
    }
}

/// The OpenAI-compatible server over `backend`, bound to `addr`. Call inside a tokio runtime.
pub async fn bind(
    addr: SocketAddr,
    backend: Arc<dyn Backend>,
    options: ServerOptions,
) -> Result<BoundServer, ServeError> {
    BoundServer::bind(addr, openai::router(backend, options)).await
}

fn runtime(thread_name: &str) -> Result<tokio::runtime::Runtime, ServeError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(thread_name)
        .enable_all()
        .build()
        .map_err(ServeError::Runtime)
}

/// Completes on SIGINT (Ctrl-C) or, on Unix, SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot listen for Ctrl-C: {err}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!("cannot listen for SIGTERM: {err}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!("SIGINT received, shutting down"),
        () = terminate => tracing::info!("SIGTERM received, shutting down"),
    }
}

/// Serves the routes `make_router` builds (inside the runtime) on the calling thread until
/// SIGINT or SIGTERM; `on_bound` is called with the bound address once the socket listens.
pub fn run_until_signal(
    addr: SocketAddr,
    thread_name: &str,
    make_router: impl FnOnce() -> Result<axum::Router, ServeError>,
    on_bound: impl FnOnce(SocketAddr),
) -> Result<(), ServeError> {
    runtime(thread_name)?.block_on(async move {
        let server = BoundServer::bind(addr, make_router()?).await?;
        on_bound(server.local_addr());
        server.run_until(shutdown_signal()).await
    })
}

/// Serves on the calling thread until SIGINT or SIGTERM (what `mirrorsim serve-llm` runs);
/// `on_bound` is called with the bound address once the socket listens.
pub fn serve_until_signal(
    addr: SocketAddr,
    backend: Arc<dyn Backend>,
    options: ServerOptions,
    on_bound: impl FnOnce(SocketAddr),
) -> Result<(), ServeError> {
    run_until_signal(
        addr,
        "mirrorsim-serve",
        move || Ok(openai::router(backend, options)),
        on_bound,
    )
}

/// A server running on its own thread and runtime; dropping it shuts it down gracefully.
pub struct RunningServer {
    local_addr: SocketAddr,
    /// What [`RunningServer::base_url`] appends to the address (`/v1` for the OpenAI server).
    base_path: &'static str,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), ServeError>>>,
}

/// Serves the routes `make_router` builds (inside the server's runtime) on `addr` from a
/// background thread; returns once the socket is bound.
pub fn spawn_server(
    addr: SocketAddr,
    thread_name: &str,
    base_path: &'static str,
    make_router: impl FnOnce() -> Result<axum::Router, ServeError> + Send + 'static,
) -> Result<RunningServer, ServeError> {
    let runtime = runtime(thread_name)?;
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name(format!("{thread_name} {addr}"))
        .spawn(move || {
            runtime.block_on(async move {
                let bound = match make_router() {
                    Ok(router) => BoundServer::bind(addr, router).await,
                    Err(err) => Err(err),
                };
                let bound = match bound {
                    Ok(bound) => bound,
                    Err(err) => {
                        let _ = bound_tx.send(Err(err));
                        return Ok(());
                    }
                };
                let _ = bound_tx.send(Ok(bound.local_addr()));
                bound
                    .run_until(async move {
                        // A dropped sender also stops the server.
                        let _ = stop_rx.await;
                    })
                    .await
            })
        })
        .map_err(ServeError::Runtime)?;
    match bound_rx.recv() {
        Ok(Ok(local_addr)) => Ok(RunningServer {
            local_addr,
            base_path,
            stop: Some(stop_tx),
            thread: Some(thread),
        }),
        Ok(Err(err)) => {
            let _ = thread.join();
            Err(err)
        }
        Err(_) => {
            let _ = thread.join();
            Err(ServeError::Panicked(addr))
        }
    }
}

/// Serves `backend` as `model_name` on `addr` from a background thread and returns once the
/// socket is bound.
pub fn serve(
    addr: SocketAddr,
    backend: Arc<dyn Backend>,
    model_name: impl Into<String>,
) -> Result<RunningServer, ServeError> {
    serve_with(addr, backend, ServerOptions::new(model_name))
}

/// [`serve`] with every option.
pub fn serve_with(
    addr: SocketAddr,
    backend: Arc<dyn Backend>,
    options: ServerOptions,
) -> Result<RunningServer, ServeError> {
    spawn_server(addr, "mirrorsim-serve", "/v1", move || {
        Ok(openai::router(backend, options))
    })
}

impl RunningServer {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The base URL, e.g. `http://127.0.0.1:8000/v1` for the OpenAI server.
    pub fn base_url(&self) -> String {
        format!("http://{}{}", self.local_addr, self.base_path)
    }

    /// Stops accepting, finishes the requests in flight and joins the server thread.
    pub fn shutdown(mut self) -> Result<(), ServeError> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Result<(), ServeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .map_err(|_| ServeError::Panicked(self.local_addr))?,
            None => Ok(()),
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if let Err(err) = self.stop_and_join() {
            tracing::error!("{err}");
        }
    }
}
