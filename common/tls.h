/* boomerang: OpenSSL 3 contexts for the gRPC link (HTTP/2 over TLS, ALPN h2).
 *
 * Both sides require TLS 1.2 or later and negotiate only "h2": a server built
 * here refuses, during the handshake, a client that offers ALPN without h2.
 * (A client that sends no ALPN at all completes the handshake; the connection
 * code must then check tls_alpn_is_h2 and close.) */
#ifndef BOOMERANG_TLS_H
#define BOOMERANG_TLS_H

#include <openssl/ssl.h>
#include <stddef.h>

#include "common/util.h"

enum tls_err {
    TLS_ERR_CTX = -1,  /* SSL_CTX creation or setup failed */
    TLS_ERR_CERT = -2, /* certificate chain file unusable */
    TLS_ERR_KEY = -3,  /* private key unusable or not matching the certificate */
    TLS_ERR_CA = -4,   /* CA file (or the system CA paths) unusable */
    TLS_ERR_SSL = -5,  /* SSL object creation or setup failed */
};

/* Server context: certificate chain (PEM) and key; with client_ca (PEM, may
 * be NULL) clients must present a certificate that verifies against it.
 * Returns 0 and *out (the caller frees it with SSL_CTX_free), or a negative
 * tls_err; the OpenSSL reason is logged. */
int MUST_CHECK tls_server_ctx(const char *cert, const char *key, const char *client_ca,
                              SSL_CTX **out);

/* Client context: verify the server against ca_file (PEM), or the system's
 * default CA paths when ca_file is NULL; cert and key (both or neither) give a
 * client certificate for servers that require one. Returns 0 and *out (caller
 * frees with SSL_CTX_free), or a negative tls_err; the reason is logged. */
int MUST_CHECK tls_client_ctx(const char *ca_file, const char *cert, const char *key,
                              SSL_CTX **out);

/* A client SSL for one connection to host: sets SNI (unless host is an IP
 * literal) and checks that the server certificate names host. Returns 0 and
 * *out (caller frees with SSL_free), or TLS_ERR_SSL (logged). */
int MUST_CHECK tls_client_ssl(SSL_CTX *ctx, const char *host, SSL **out);

/* Whether the handshake on ssl negotiated ALPN "h2". */
int tls_alpn_is_h2(SSL *ssl);

/* Drain OpenSSL's thread-local error queue into buf as one line ("a; b"),
 * or "unknown error" if it is empty. Returns buf. */
const char *tls_error_string(char *buf, size_t len);

#endif
