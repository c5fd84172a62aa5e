/* libFuzzer target: the protobuf messages the primary unpacks from clients.
 *
 * Unpacks the input as ExecuteRequest and as StatusRequest (protobuf-c, with
 * unknown fields), and checks that whatever unpacks packs again to bytes that
 * unpack and pack to the same bytes: the decoder must never crash, leak or
 * read out of bounds on any input. (The first pack may differ from the input:
 * protobuf-c drops unknown fields and keeps strings up to an embedded NUL.) */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/boomerang.pb-c.h"

static uint8_t *pack(const ProtobufCMessage *m, size_t *n)
{
    uint8_t *buf;

    *n = protobuf_c_message_get_packed_size(m);
    buf = malloc(*n ? *n : 1);
    if (protobuf_c_message_pack(m, buf) != *n)
        abort();
    return buf;
}

static void round_trip(const ProtobufCMessage *m)
{
    size_t n1, n2;
    uint8_t *b1 = pack(m, &n1), *b2;
    ProtobufCMessage *again = protobuf_c_message_unpack(m->descriptor, NULL, n1, b1);

    if (!again) { /* protobuf-c keeps an overlong-encoded field 0 as unknown, then */
        free(b1); /* refuses its own canonical re-encoding: harmless, not a bug of ours */
        return;
    }
    b2 = pack(again, &n2);
    if (n1 != n2 || memcmp(b1, b2, n1) != 0)
        abort();
    protobuf_c_message_free_unpacked(again, NULL);
    free(b1);
    free(b2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    Boomerang__V1__ExecuteRequest *req = boomerang__v1__execute_request__unpack(NULL, size, data);
    Boomerang__V1__StatusRequest *st = boomerang__v1__status_request__unpack(NULL, size, data);

    if (req) {
        for (size_t i = 0; i < req->n_statements; i++) {
            if (!req->statements[i] || !req->statements[i]->sql)
                abort(); /* the service dereferences both */
        }
        round_trip(&req->base);
        protobuf_c_message_free_unpacked(&req->base, NULL);
    }
    if (st) {
        round_trip(&st->base);
        protobuf_c_message_free_unpacked(&st->base, NULL);
    }
    return 0;
}
