/* boomerang: OpenSSL 3 contexts for HTTP/2 over TLS.
 *
 * RFC 9113 section 9.2 requires TLS 1.2+ and, with TLS 1.2, an ephemeral key
 * exchange and an AEAD cipher; the cipher list below keeps only those. TLS 1.3
 * suites are all acceptable and left at OpenSSL's defaults. */
#include "common/tls.h"

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <string.h>

#include "common/log.h"

#define TLS12_CIPHERS "ECDHE+AESGCM:ECDHE+CHACHA20"

static const unsigned char alpn_h2[] = {2, 'h', '2'};

const char *tls_error_string(char *buf, size_t len)
{
    size_t used = 0;
    unsigned long e;

    buf[0] = '\0';
    while ((e = ERR_get_error()) != 0) {
        char one[256];
        ERR_error_string_n(e, one, sizeof(one));
        if (used + 3 < len) {
            int n = snprintf(buf + used, len - used, "%s%s", used ? "; " : "", one);
            used = n < 0 ? used : MIN(len - 1, used + (size_t)n);
        }
    }
    if (buf[0] == '\0')
        snprintf(buf, len, "unknown error");
    return buf;
}

static void log_ssl_failure(const char *action, const char *what)
{
    char why[512];
    log_error("%s %s failed: %s", action, what ? what : "", tls_error_string(why, sizeof(why)));
}

/* Server-side ALPN: pick "h2" or refuse the handshake (no_application_protocol). */
static int tls_alpn_select_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                              const unsigned char *in, unsigned int inlen, void *arg)
{
    (void)ssl;
    (void)arg;
    for (unsigned int i = 0; i < inlen;) {
        unsigned int n = in[i];
        if (i + 1 + n > inlen)
            break;
        if (n == alpn_h2[0] && memcmp(in + i + 1, alpn_h2 + 1, n) == 0) {
            *out = in + i + 1;
            *outlen = (unsigned char)n;
            return SSL_TLSEXT_ERR_OK;
        }
        i += 1 + n;
    }
    return SSL_TLSEXT_ERR_ALERT_FATAL;
}

/* What both sides share: TLS 1.2+, the RFC 9113 cipher rules, no compression
 * or renegotiation. */
static SSL_CTX *tls_ctx_new(const SSL_METHOD *method)
{
    SSL_CTX *ctx = SSL_CTX_new(method);

    if (!ctx)
        return NULL;
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1 ||
        SSL_CTX_set_cipher_list(ctx, TLS12_CIPHERS) != 1) {
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE);
    /* Our writers retry from a growable buffer that may move between tries. */
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    return ctx;
}

static int tls_load_pair(SSL_CTX *ctx, const char *cert, const char *key)
{
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
        log_ssl_failure("load certificate", cert);
        return TLS_ERR_CERT;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
        log_ssl_failure("load private key", key);
        return TLS_ERR_KEY;
    }
    return 0;
}

static int tls_require_client_cert(SSL_CTX *ctx, const char *client_ca)
{
    STACK_OF(X509_NAME) * names;

    if (SSL_CTX_load_verify_locations(ctx, client_ca, NULL) != 1) {
        log_ssl_failure("load client CA", client_ca);
        return TLS_ERR_CA;
    }
    /* The names tell clients which certificate to present. */
    names = SSL_load_client_CA_file(client_ca);
    if (!names) {
        log_ssl_failure("read client CA names", client_ca);
        return TLS_ERR_CA;
    }
    SSL_CTX_set_client_CA_list(ctx, names);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    return 0;
}

int tls_server_ctx(const char *cert, const char *key, const char *client_ca, SSL_CTX **out)
{
    SSL_CTX *ctx = tls_ctx_new(TLS_server_method());
    int rv;

    if (!ctx) {
        log_ssl_failure("create TLS server context", NULL);
        return TLS_ERR_CTX;
    }
    rv = tls_load_pair(ctx, cert, key);
    if (rv < 0)
        goto fail_ctx;
    if (client_ca) {
        rv = tls_require_client_cert(ctx, client_ca);
        if (rv < 0)
            goto fail_ctx;
    }
    SSL_CTX_set_alpn_select_cb(ctx, tls_alpn_select_cb, NULL);
    *out = ctx;
    return 0;

fail_ctx:
    SSL_CTX_free(ctx);
    return rv;
}

int tls_client_ctx(const char *ca_file, const char *cert, const char *key, SSL_CTX **out)
{
    SSL_CTX *ctx = tls_ctx_new(TLS_client_method());
    int rv;

    if (!ctx) {
        log_ssl_failure("create TLS client context", NULL);
        return TLS_ERR_CTX;
    }
    rv = ca_file ? SSL_CTX_load_verify_locations(ctx, ca_file, NULL)
                 : SSL_CTX_set_default_verify_paths(ctx);
    if (rv != 1) {
        log_ssl_failure("load CA", ca_file ? ca_file : "(system default paths)");
        rv = TLS_ERR_CA;
        goto fail_ctx;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (!cert != !key) {
        log_error("load client certificate failed: a certificate needs its key and vice versa");
        rv = cert ? TLS_ERR_KEY : TLS_ERR_CERT;
        goto fail_ctx;
    }
    if (cert) {
        rv = tls_load_pair(ctx, cert, key);
        if (rv < 0)
            goto fail_ctx;
    }
    /* Unlike most OpenSSL calls, this one returns 0 on success. */
    if (SSL_CTX_set_alpn_protos(ctx, alpn_h2, sizeof(alpn_h2)) != 0) {
        log_ssl_failure("set ALPN", "h2");
        rv = TLS_ERR_CTX;
        goto fail_ctx;
    }
    *out = ctx;
    return 0;

fail_ctx:
    SSL_CTX_free(ctx);
    return rv;
}

static int is_ip_literal(const char *host)
{
    unsigned char addr[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, host, addr) == 1 || inet_pton(AF_INET6, host, addr) == 1;
}

int tls_client_ssl(SSL_CTX *ctx, const char *host, SSL **out)
{
    SSL *ssl = SSL_new(ctx);
    int ok;

    if (!ssl) {
        log_ssl_failure("create TLS connection", host);
        return TLS_ERR_SSL;
    }
    if (is_ip_literal(host)) {
        ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host) == 1;
    } else {
        ok = SSL_set_tlsext_host_name(ssl, host) == 1 && SSL_set1_host(ssl, host) == 1;
    }
    if (!ok) {
        log_ssl_failure("set TLS peer name", host);
        SSL_free(ssl);
        return TLS_ERR_SSL;
    }
    *out = ssl;
    return 0;
}

int tls_alpn_is_h2(SSL *ssl)
{
    const unsigned char *p = NULL;
    unsigned int n = 0;

    SSL_get0_alpn_selected(ssl, &p, &n);
    return p && n == alpn_h2[0] && memcmp(p, alpn_h2 + 1, n) == 0;
}
