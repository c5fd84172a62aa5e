/* Unit tests: primary/meta.c, the identity file. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/log.h"
#include "harness.h"
#include "primary/meta.h"

static char tmpdir[] = "/tmp/test_meta.XXXXXX";
static char path[128];

static void write_text(const char *text)
{
    FILE *f = fopen(path, "w");

    if (!f)
        abort();
    fputs(text, f);
    fclose(f);
}

TEST(create_save_load)
{
    struct meta a, b, c;

    CHECK(meta_create(&a) == 0);
    CHECK(meta_create(&b) == 0);
    CHECK(strlen(a.database_id) == 32 && strcmp(a.database_id, b.database_id) != 0);
    CHECK(strspn(a.database_id, "0123456789abcdef") == 32);
    CHECK(a.epoch == 1 && a.base_txid == 0 && a.base_frame == 0);
    a.epoch = 7;
    a.base_txid = 18446744073709551615ull;
    a.base_checksum = 0xfedcba9876543210ull;
    a.base_salt1 = 4294967295u;
    a.base_salt2 = 3;
    a.base_frame = 1000;
    CHECK(meta_save(path, &a) == 0);
    CHECK(meta_load(path, &c) == 0);
    CHECK(memcmp(&a, &c, sizeof(a)) == 0);
    CHECK(access("meta.tmp", F_OK) != 0);
}

TEST(missing_and_malformed)
{
    static const char *const bad[] = {
        "",
        "database_id=0123456789abcdef0123456789abcdef\nepoch=1\n", /* keys missing */
        "database_id=0123456789abcdef0123456789abcdef\nepoch=1\nbase_txid=0\n"
        "base_checksum=0000000000000000\nbase_salt1=0\nbase_salt2=0\nbase_frame=0", /* no \n */
        "database_id=0123456789ABCDEF0123456789abcdef\nepoch=1\nbase_txid=0\n"
        "base_checksum=0000000000000000\nbase_salt1=0\nbase_salt2=0\nbase_frame=0\n",
        "database_id=0123456789abcdef0123456789abcdef\nepoch=0\nbase_txid=0\n"
        "base_checksum=0000000000000000\nbase_salt1=0\nbase_salt2=0\nbase_frame=0\n",
        "database_id=0123456789abcdef0123456789abcdef\nepoch=1\nbase_txid=18446744073709551616\n"
        "base_checksum=0000000000000000\nbase_salt1=0\nbase_salt2=0\nbase_frame=0\n",
        "database_id=0123456789abcdef0123456789abcdef\nepoch=1\nbase_txid=0\n"
        "base_checksum=00000000000000\nbase_salt1=0\nbase_salt2=0\nbase_frame=0\n",
        "database_id=0123456789abcdef0123456789abcdef\nepoch=1\nbase_txid=0\n"
        "base_checksum=0000000000000000\nbase_salt1=4294967296\nbase_salt2=0\nbase_frame=0\n",
        "database_id=0123456789abcdef0123456789abcdef\nepoch=1\nbase_txid=0\n"
        "base_checksum=0000000000000000\nbase_salt1=0\nbase_salt2=-1\nbase_frame=0\n",
        "database_id=0123456789abcdef0123456789abcdef\nepoch=1\nbase_txid=0\nepoch=2\n"
        "base_checksum=0000000000000000\nbase_salt1=0\nbase_salt2=0\nbase_frame=0\n",
        "database_id=0123456789abcdef0123456789abcdef\nepoch=1\nbase_txid=0\nmore=1\n"
        "base_checksum=0000000000000000\nbase_salt1=0\nbase_salt2=0\nbase_frame=0\n",
        "database_id=0123456789abcdef0123456789abcdef\nepoch=1\nbase_txid=0\nnoequals\n"
        "base_checksum=0000000000000000\nbase_salt1=0\nbase_salt2=0\nbase_frame=\n",
    };
    struct meta m;

    unlink(path);
    CHECK(meta_load(path, &m) == META_ERR_MISSING);
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        write_text(bad[i]);
        if (meta_load(path, &m) != META_ERR_FORMAT) {
            fprintf(stderr, "  accepted bad meta #%zu\n", i);
            CHECK(0);
        }
    }
    /* Too big to be ours; a NUL inside. */
    {
        char *big = malloc(8192);
        memset(big, 'x', 8191);
        big[8191] = '\0';
        write_text(big);
        free(big);
        CHECK(meta_load(path, &m) == META_ERR_FORMAT);
    }
    {
        FILE *f = fopen(path, "w");
        fwrite("epoch=1\n\0\n", 1, 10, f);
        fclose(f);
        CHECK(meta_load(path, &m) == META_ERR_FORMAT);
    }
    /* A directory where the file should be. */
    CHECK(meta_load(tmpdir, &m) == META_ERR_IO);
}

TEST(save_failures)
{
    struct meta m;
    char p[200];

    CHECK(meta_create(&m) == 0);
    CHECK(meta_save("/nonexistent/dir/meta", &m) == META_ERR_IO);
    /* The rename target is a non-empty directory. */
    snprintf(p, sizeof(p), "%s/dir", tmpdir);
    CHECK(mkdir(p, 0755) == 0);
    CHECK(meta_save(p, &m) == META_ERR_IO);
}

int main(void)
{
    char cmd[200];

    if (!mkdtemp(tmpdir) || chdir(tmpdir) != 0)
        return 1;
    snprintf(path, sizeof(path), "%s/meta", tmpdir);
    log_level = LOGL_ERROR;
    RUN(create_save_load);
    RUN(missing_and_malformed);
    RUN(save_failures);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "cleanup of %s failed\n", tmpdir);
    return HARNESS_END();
}
