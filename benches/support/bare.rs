//! The benches' bare endpoints: an axum app served on a free loopback port with
//! TCP_NODELAY, as the daemon's OpenAI listener sets it, so a baseline differs from the
//! daemon in its handler only.

/// Serves `app` on this runtime; its address.
pub async fn serve(app: axum::Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}
