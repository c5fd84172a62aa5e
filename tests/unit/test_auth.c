/* Tests for common/auth.c: token file parsing and the bearer check. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "common/auth.h"
#include "tests/unit/harness.h"

static char path[64];

/* Write text to a fresh temporary file (path[]). */
static void write_file(const char *text)
{
    int fd;

    snprintf(path, sizeof(path), "/tmp/test_auth_XXXXXX");
    fd = mkstemp(path);
    if (fd < 0 || write(fd, text, strlen(text)) != (ssize_t)strlen(text)) {
        perror("write token file");
        exit(2);
    }
    close(fd);
}

static int load(const char *text, struct auth **a)
{
    int rv;

    write_file(text);
    rv = auth_load(path, a);
    unlink(path);
    return rv;
}

TEST(parses_comments_blanks_and_whitespace)
{
    struct auth *a = NULL;

    REQUIRE(load("# tokens\n\n  alpha  \r\n\t#not a token\nbeta-2\n   \n", &a) == 0);
    CHECK(auth_check_bearer(a, "Bearer alpha"));
    CHECK(auth_check_bearer(a, "Bearer beta-2"));
    CHECK(!auth_check_bearer(a, "Bearer #not a token"));
    CHECK(!auth_check_bearer(a, "Bearer # tokens"));
    CHECK(!auth_check_bearer(a, "Bearer "));
    CHECK(strcmp(auth_token(a), "alpha") == 0);
    auth_free(a);
}

TEST(last_line_without_newline)
{
    struct auth *a = NULL;

    REQUIRE(load("one\ntwo", &a) == 0);
    CHECK(auth_check_bearer(a, "Bearer one"));
    CHECK(auth_check_bearer(a, "Bearer two"));
    auth_free(a);
}

TEST(exact_match_only)
{
    struct auth *a = NULL;

    REQUIRE(load("secret\nlonger-secret-token\n", &a) == 0);
    CHECK(auth_check_bearer(a, "Bearer secret"));
    CHECK(auth_check_bearer(a, "Bearer longer-secret-token"));
    CHECK(!auth_check_bearer(a, NULL));
    CHECK(!auth_check_bearer(a, ""));
    CHECK(!auth_check_bearer(a, "secret"));
    CHECK(!auth_check_bearer(a, "bearer secret")); /* the scheme is matched exactly */
    CHECK(!auth_check_bearer(a, "Bearer  secret"));
    CHECK(!auth_check_bearer(a, "Bearer secre"));
    CHECK(!auth_check_bearer(a, "Bearer secrets"));
    CHECK(!auth_check_bearer(a, "Bearer secret "));
    CHECK(!auth_check_bearer(a, "Bearer longer-secret"));
    CHECK(!auth_check_bearer(a, "Bearer longer-secret-token-and-then-some-more-bytes"));
    CHECK(!auth_check_bearer(a, "Basic c2VjcmV0"));
    CHECK(!auth_check_bearer(NULL, "Bearer secret"));
    auth_free(a);
}

TEST(empty_file_is_an_error)
{
    struct auth *a = NULL;

    CHECK(load("", &a) == AUTH_ERR_EMPTY);
    CHECK(load("# only a comment\n\n   \n", &a) == AUTH_ERR_EMPTY);
    CHECK(a == NULL);
}

TEST(missing_file_is_an_error)
{
    struct auth *a = NULL;

    CHECK(auth_load("/nonexistent/dir/tokens", &a) == AUTH_ERR_READ);
    CHECK(a == NULL);
}

TEST(too_long_token)
{
    struct auth *a = NULL;
    char *text = malloc(AUTH_TOKEN_MAX + 3);

    memset(text, 'x', AUTH_TOKEN_MAX + 1);
    text[AUTH_TOKEN_MAX + 1] = '\n';
    text[AUTH_TOKEN_MAX + 2] = '\0';
    CHECK(load(text, &a) == AUTH_ERR_TOO_LONG);
    /* One byte shorter is fine. */
    text[AUTH_TOKEN_MAX] = '\n';
    text[AUTH_TOKEN_MAX + 1] = '\0';
    REQUIRE(load(text, &a) == 0);
    text[AUTH_TOKEN_MAX] = '\0';
    char *hdr = malloc(AUTH_TOKEN_MAX + 8);
    snprintf(hdr, AUTH_TOKEN_MAX + 8, "Bearer %s", text);
    CHECK(auth_check_bearer(a, hdr));
    auth_free(a);
    free(hdr);
    free(text);
}

TEST(free_null)
{
    auth_free(NULL);
}

int main(void)
{
    RUN(parses_comments_blanks_and_whitespace);
    RUN(last_line_without_newline);
    RUN(exact_match_only);
    RUN(empty_file_is_an_error);
    RUN(missing_file_is_an_error);
    RUN(too_long_token);
    RUN(free_null);
    return HARNESS_END();
}
