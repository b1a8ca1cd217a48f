
// ============================================================================================
// 1c. TLS, optional: compiled in only with RAFT_OPENSSL_SUPPORT defined (link -lssl -lcrypto)
// ============================================================================================
//
// Without the macro, a connection's Tls is the socket itself and nothing here needs a library.
// With it, and a certificate in raft::Config, every connection on both ports runs TLS
// (OpenSSL 3): the runtime reads and writes each connection through its Tls, and starts it
// when it accepts or connects (section 5). Peers present certificates to each other and
// check them against the CA, both ways; a node connecting to a peer also checks that the
// certificate names the peer's IP address.

#ifdef RAFT_OPENSSL_SUPPORT
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#endif

namespace raft {
namespace detail {

#ifdef RAFT_OPENSSL_SUPPORT
/// `what`, then OpenSSL's queued errors (the queue is emptied).
inline std::string tls_error_text(const std::string& what) {
  std::string s = what;
  while (unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    s += std::string(": ") + buf;
  }
  return s;
}

/// OpenSSL's socket BIO, but writing with send(MSG_NOSIGNAL): its write() would raise SIGPIPE
/// in the host program when the other side has gone.
inline BIO_METHOD* tls_socket_method() {
  static BIO_METHOD* const method = [] {
    const BIO_METHOD* base = BIO_s_socket();
    BIO_METHOD* m = BIO_meth_new(BIO_TYPE_SOCKET, "raft.hpp socket");
    if (m == nullptr) return m;
    BIO_meth_set_write(m, [](BIO* b, const char* p, int n) -> int {
      const int w = static_cast<int>(::send(static_cast<int>(BIO_get_fd(b, nullptr)), p, static_cast<std::size_t>(n),
                                            MSG_NOSIGNAL));
      BIO_clear_retry_flags(b);
      if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) BIO_set_retry_write(b);
      return w;
    });
    BIO_meth_set_read(m, BIO_meth_get_read(base));
    BIO_meth_set_puts(m, BIO_meth_get_puts(base));
    BIO_meth_set_ctrl(m, BIO_meth_get_ctrl(base));
    BIO_meth_set_create(m, BIO_meth_get_create(base));
    BIO_meth_set_destroy(m, BIO_meth_get_destroy(base));
    return m;
  }();
  return method;
}

/// An SSL_CTX: this node's certificate and key, and the CA the other side's certificate
/// must chain to.
class TlsContext {
 public:
  /// `verify`: whether the other side must present a certificate (Yes), may (Optional) or
  /// is not asked for one (No). A connecting side always checks the certificate it gets.
  static std::shared_ptr<TlsContext> load(const Config& cfg, TlsAuthClients verify, std::string& error) {
    std::shared_ptr<TlsContext> c(new TlsContext(SSL_CTX_new(TLS_method())));
    SSL_CTX* ctx = c->ctx_;
    if (ctx == nullptr) {
      error = tls_error_text("SSL_CTX_new");
      return nullptr;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    // An EOF without close_notify is an ordinary EOF: RESP frames its own messages, so a
    // cut stream is an unfinished command, never a shorter one.
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION | SSL_OP_IGNORE_UNEXPECTED_EOF);
    // flush_out writes what the socket takes and keeps the rest in place to try again.
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    // No resumption: connections are long-lived, and no session tickets to write after the
    // handshake on a non-blocking socket.
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_num_tickets(ctx, 0);
    if (SSL_CTX_use_certificate_chain_file(ctx, cfg.tls_cert_file.c_str()) != 1) {
      error = tls_error_text("cannot use the certificate " + cfg.tls_cert_file);
      return nullptr;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, cfg.tls_key_file.c_str(), SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
      error = tls_error_text("cannot use the key " + cfg.tls_key_file);
      return nullptr;
    }
    if (SSL_CTX_load_verify_locations(ctx, cfg.tls_ca_cert_file.c_str(), nullptr) != 1) {
      error = tls_error_text("cannot use the CA certificates " + cfg.tls_ca_cert_file);
      return nullptr;
    }
    if (verify != TlsAuthClients::No) {
      // Names the CA to the other side, which picks its certificate by it.
      STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(cfg.tls_ca_cert_file.c_str());
      if (names != nullptr) SSL_CTX_set_client_CA_list(ctx, names);
    }
    SSL_CTX_set_verify(ctx,
                       verify == TlsAuthClients::No ? SSL_VERIFY_NONE
                       : verify == TlsAuthClients::Optional ? SSL_VERIFY_PEER
                                                            : SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT,
                       nullptr);
    return c;
  }
  ~TlsContext() { SSL_CTX_free(ctx_); }
  TlsContext(const TlsContext&) = delete;
  TlsContext& operator=(const TlsContext&) = delete;
  SSL_CTX* get() const { return ctx_; }

 private:
  explicit TlsContext(SSL_CTX* ctx) : ctx_(ctx) {}
  SSL_CTX* ctx_;
};
#endif

/// One connection's TLS session, or none: then recv and send are ::recv and ::send. With a
/// session they behave the same way for the caller (bytes, 0 at the end, or -1 with errno:
/// EAGAIN when it would block, EPROTO when TLS failed, see error()). TLS may need to write
/// to go on reading, or to read to go on writing: events() and ready() translate what a
/// poll loop asks for and gets. Reads into a buffer of at least 16 KiB take a whole record,
/// so nothing stays inside OpenSSL unseen by poll(); a smaller one must check buffered().
/// The socket is the caller's to close.
class Tls {
 public:
  Tls() = default;
  Tls(const Tls&) = delete;
  Tls& operator=(const Tls&) = delete;
  Tls(Tls&& o) noexcept { *this = std::move(o); }
  Tls& operator=(Tls&& o) noexcept {
#ifdef RAFT_OPENSSL_SUPPORT
    std::swap(ssl_, o.ssl_);
    std::swap(read_wants_write_, o.read_wants_write_);
    std::swap(write_wants_read_, o.write_wants_read_);
    std::swap(error_, o.error_);
#else
    (void)o;
#endif
    return *this;
  }
  ~Tls() {
#ifdef RAFT_OPENSSL_SUPPORT
    if (ssl_ != nullptr) SSL_free(ssl_);
#endif
  }

  bool on() const {
#ifdef RAFT_OPENSSL_SUPPORT
    return ssl_ != nullptr;
#else
    return false;
#endif
  }

  ssize_t recv(int fd, char* buf, std::size_t n) {
#ifdef RAFT_OPENSSL_SUPPORT
    if (ssl_ != nullptr) {
      read_wants_write_ = false;
      ERR_clear_error();
      const int r = SSL_read(ssl_, buf, static_cast<int>(std::min<std::size_t>(n, std::numeric_limits<int>::max())));
      return r > 0 ? r : failed(r, read_wants_write_, SSL_ERROR_WANT_WRITE);
    }
#endif
    return ::recv(fd, buf, n, 0);
  }

  ssize_t send(int fd, const char* p, std::size_t n) {
#ifdef RAFT_OPENSSL_SUPPORT
    if (ssl_ != nullptr) {
      write_wants_read_ = false;
      if (n == 0) return 0;
      ERR_clear_error();
      const int r = SSL_write(ssl_, p, static_cast<int>(std::min<std::size_t>(n, std::numeric_limits<int>::max())));
      return r > 0 ? r : failed(r, write_wants_read_, SSL_ERROR_WANT_READ);
    }
#endif
    return ::send(fd, p, n, MSG_NOSIGNAL);
  }

  /// The poll events to ask for when the connection wants `wanted`. A read that waits for a
  /// write waits for POLLOUT instead of POLLIN, and the other way round: asking for what the
  /// socket has already (a client that never finishes its handshake keeps the socket
  /// writable) would wake the poll loop at once, again and again.
  short events(short wanted) const {
#ifdef RAFT_OPENSSL_SUPPORT
    if (read_wants_write_ && (wanted & POLLIN)) wanted = static_cast<short>((wanted & ~POLLIN) | POLLOUT);
    else if (write_wants_read_ && (wanted & POLLOUT)) wanted = static_cast<short>((wanted & ~POLLOUT) | POLLIN);
#endif
    return wanted;
  }
  /// What poll's `revents` mean for the connection: a read or a write may go on.
  short ready(short revents) const {
#ifdef RAFT_OPENSSL_SUPPORT
    if (read_wants_write_ && (revents & POLLOUT)) revents = static_cast<short>(revents | POLLIN);
    if (write_wants_read_ && (revents & POLLIN)) revents = static_cast<short>(revents | POLLOUT);
#endif
    return revents;
  }
  /// Received bytes decrypted and not read yet.
  bool buffered() const {
#ifdef RAFT_OPENSSL_SUPPORT
    return ssl_ != nullptr && SSL_pending(ssl_) > 0;
#else
    return false;
#endif
  }
  /// Why TLS failed (recv or send gave EPROTO, or the handshake failed).
  std::string error() const {
#ifdef RAFT_OPENSSL_SUPPORT
    return error_;
#else
    return "";
#endif
  }

#ifdef RAFT_OPENSSL_SUPPORT
  /// Starts TLS on a connected socket: as the server on an accepted one (the handshake
  /// happens within the first reads and writes), or as the client, which then calls
  /// handshake() until it is done. `expected_ip` (client): the certificate must name it.
  bool begin(const TlsContext& ctx, int fd, bool accepted, const std::string& expected_ip, std::string& error) {
    ERR_clear_error();
    ssl_ = SSL_new(ctx.get());
    BIO* bio = ssl_ != nullptr && tls_socket_method() != nullptr ? BIO_new(tls_socket_method()) : nullptr;
    if (bio == nullptr) {
      error = tls_error_text("SSL_new");
      return false;
    }
    BIO_set_fd(bio, fd, BIO_NOCLOSE);
    SSL_set_bio(ssl_, bio, bio);
    if (accepted) {
      SSL_set_accept_state(ssl_);
    } else {
      SSL_set_connect_state(ssl_);
      if (!expected_ip.empty() && X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl_), expected_ip.c_str()) != 1) {
        error = "cannot check a certificate for the address " + expected_ip;
        return false;
      }
    }
    return true;
  }
  /// One step of the handshake: 0 done, POLLIN or POLLOUT to wait for, -1 failed (error():
  /// "TLS: ..." when TLS refused, the certificate for instance; else the connection was lost).
  int handshake() {
    ERR_clear_error();
    const int r = SSL_do_handshake(ssl_);
    if (r == 1) return 0;
    bool unused = false;
    if (failed(r, unused, 0) == 0) errno = ECONNRESET;
    if (errno == EAGAIN) return SSL_get_error(ssl_, r) == SSL_ERROR_WANT_WRITE ? POLLOUT : POLLIN;
    if (errno != EPROTO) error_ = "connection lost during the TLS handshake: " + std::string(std::strerror(errno));
    return -1;
  }
#endif

 private:
#ifdef RAFT_OPENSSL_SUPPORT
  // SSL_read's or SSL_write's result r <= 0 as ::recv's or ::send's; `other` is set when
  // OpenSSL wants `other_wait` (a write to read on, a read to write on).
  ssize_t failed(int r, bool& other, int other_wait) {
    const int e = SSL_get_error(ssl_, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
      other = e == other_wait;
      errno = EAGAIN;
      return -1;
    }
    if (e == SSL_ERROR_ZERO_RETURN) return 0;
    if (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0) {
      if (errno == 0) errno = ECONNRESET;
      return -1;
    }
    const long verified = SSL_get_verify_result(ssl_);
    error_ = tls_error_text("TLS");
    if (verified != X509_V_OK) error_ += std::string(" (") + X509_verify_cert_error_string(verified) + ")";
    errno = EPROTO;
    return -1;
  }

  SSL* ssl_ = nullptr;
  bool read_wants_write_ = false;
  bool write_wants_read_ = false;
  std::string error_;
#endif
};

}  // namespace detail
}  // namespace raft
