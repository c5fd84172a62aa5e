// Bad input to the sidecar, each answered with the documented error while
// the process stays up (notes/proxy-contract.md "Hrana errors"):
// malformed HTTP on a raw socket, malformed JSON, unknown request,
// condition and value types, sql with sql_id, Hrana 3 features on /v2,
// oversized bodies (413), forged, reused and expired batons, forged
// tokens, the refused operations (SQLITE_AUTH), per-statement limits
// (TIMEOUT, RESPONSE_TOO_LARGE, argument and store errors), app
// authentication with --app-token-file, and the same API on --socket.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { after, before } from 'node:test';

import { createClient, LibsqlError } from '@libsql/client';

import {
    assertHttpError,
    binPath,
    errResult,
    fmtExit,
    HV,
    hExecute,
    hranaPost,
    hRows,
    httpRequest,
    itest,
    makeTmpDir,
    okResult,
    skipNoProxy,
    spawnTracked,
    startPrimary,
    startProxy,
    stopAll,
    unixFetch,
    waitFor,
} from './helpers.js';

const skip = skipNoProxy() ? 'no boomerang-proxy (set BOOMERANG_BIN)' : undefined;
const opts = (timeout = 60000) => ({ timeout, ...(skip ? { skip } : {}) });

const IDLE_MS = 400;
let P;
let S; // small limits: 16 KiB bodies, 400 ms stream idle, 300 ms statements, 1000 rows
const clients = [];

before(async () => {
    if (skip) return;
    P = await startPrimary();
    S = await startProxy({
        primaryUrl: P,
        args: ['--max-body-kb', '16', '--stream-idle-ms', String(IDLE_MS), '--stmt-timeout-ms', '300', '--max-rows', '1000'],
    });
    await S.waitReady();
    const r = await hranaPost(S, { requests: [hExecute('CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)'), hExecute("INSERT INTO t VALUES (1, 'one')"), { type: 'close' }] });
    okResult(r, 0, 'create');
    okResult(r, 1, 'insert');
});

after(async () => {
    for (const c of clients) c.close();
    await stopAll();
});

/** The sidecar is still up and answering. */
async function alive(px = S, what = 'after bad input') {
    assert.equal(px.exitStatus, null, `${what}: the sidecar exited (${fmtExit(px.exitStatus)})\n${px.tail()}`);
    const r = await px.get('/health');
    assert.equal(r.status, 200, `${what}: GET /health ${r.status}`);
}

/** Complete HTTP/1.1 responses at the start of text, or null if the last is incomplete. */
function parseResponses(text) {
    const out = [];
    let rest = text;
    while (rest.length) {
        const end = rest.indexOf('\r\n\r\n');
        if (end < 0) return null;
        const head = rest.slice(0, end).split('\r\n');
        const m = /^HTTP\/1\.[01] (\d{3})/.exec(head[0]);
        if (!m) throw new Error(`not an HTTP response: ${JSON.stringify(rest.slice(0, 200))}`);
        const headers = {};
        for (const l of head.slice(1)) {
            const i = l.indexOf(':');
            headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
        }
        if (headers['transfer-encoding']) throw new Error('chunked responses are not expected here');
        const len = Number(headers['content-length'] || 0);
        if (rest.length < end + 4 + len) return null;
        out.push({ status: Number(m[1]), headers, body: rest.slice(end + 4, end + 4 + len) });
        rest = rest.slice(end + 4 + len);
    }
    return out;
}

/**
 * Write bytes on a raw connection to the sidecar and collect what comes back
 * until `want` complete responses arrived or the server closed. Resolves to
 * { responses, text, closed }.
 */
function rawExchange(bytes, { port = S.port, socketPath, want = 1, timeoutMs = 10000, endAfterWrite = false } = {}) {
    return new Promise((resolve, reject) => {
        const sock = socketPath ? net.connect(socketPath) : net.connect(port, '127.0.0.1');
        const chunks = [];
        let done = false;
        const finish = (closed) => {
            if (done) return;
            done = true;
            clearTimeout(timer);
            sock.destroy();
            const text = Buffer.concat(chunks).toString('latin1');
            resolve({ responses: parseResponses(text) || [], text, closed });
        };
        const timer = setTimeout(() => {
            // a deadline, not a delay
            if (done) return;
            done = true;
            sock.destroy();
            reject(new Error(`raw exchange: ${want} response(s) not complete within ${timeoutMs} ms; got ${JSON.stringify(Buffer.concat(chunks).toString('latin1').slice(0, 300))}`));
        }, timeoutMs);
        sock.on('data', (d) => {
            chunks.push(d);
            const rs = parseResponses(Buffer.concat(chunks).toString('latin1'));
            if (rs && rs.length >= want) finish(false);
        });
        sock.on('end', () => finish(true));
        sock.on('close', () => finish(true));
        sock.on('error', (e) => {
            if (['ECONNRESET', 'EPIPE'].includes(e.code)) finish(true);
            else if (!done) {
                done = true;
                clearTimeout(timer);
                reject(e);
            }
        });
        sock.write(bytes, () => {
            if (endAfterWrite) sock.end();
        });
    });
}

function pipe(requests, baton) {
    return baton === undefined ? { requests } : { baton, requests };
}

// ---------------------------------------------------------------- HTTP

itest('malformed HTTP on a raw socket: 400 and the connection closed; the process stays up', opts(), async () => {
    const cases = [
        ['garbage request line', 'GARBAGE\r\n\r\n'],
        ['header without a colon', 'GET /health HTTP/1.1\r\nHost localhost\r\n\r\n'],
        ['NUL in the target', 'GET /he\u0000alth HTTP/1.1\r\nHost: x\r\n\r\n'],
        ['bad Content-Length', 'POST /v2/pipeline HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n'],
        ['two Content-Lengths that differ', 'POST /v2/pipeline HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n{}'],
        ['Content-Length with chunked', 'POST /v2/pipeline HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n'],
        ['bad chunk size', 'POST /v2/pipeline HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\n{}\r\n0\r\n\r\n'],
    ];
    for (const [what, bytes] of cases) {
        const { responses } = await rawExchange(Buffer.from(bytes, 'latin1'));
        assert.equal(responses.length >= 1, true, `${what}: no response`);
        assert.equal(responses[0].status, 400, `${what}: status ${responses[0].status}`);
        await alive(S, what);
    }
    // A header section far beyond any sane limit.
    const big = `GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(200 * 1024)}\r\n\r\n`;
    const { responses, closed } = await rawExchange(Buffer.from(big));
    if (responses.length) assert.ok([400, 413, 431].includes(responses[0].status), `huge header: ${responses[0].status}`);
    else assert.ok(closed, 'huge header: neither an error nor a close');
    await alive(S, 'huge header');
    // A request cut off in the middle of its body, then the client leaves.
    await rawExchange(Buffer.from('POST /v2/pipeline HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"requests":'), { endAfterWrite: true });
    await alive(S, 'half a body');
    // Keep-alive: two pipelined requests on one connection get two answers.
    const two = await rawExchange(Buffer.from('GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n'), { want: 2 });
    assert.deepEqual(
        two.responses.map((r) => [r.status, r.body]),
        [
            [200, 'ok\n'],
            [200, 'ok\n'],
        ],
    );
    // A Hrana pipeline over a raw chunked body is fine.
    const body = JSON.stringify(pipe([hExecute('SELECT 7'), { type: 'close' }]));
    const chunked = `POST /v2/pipeline HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n${body.length.toString(16)}\r\n${body}\r\n0\r\n\r\n`;
    const ch = await rawExchange(Buffer.from(chunked));
    assert.equal(ch.responses[0]?.status, 200, ch.text.slice(0, 300));
    assert.equal(JSON.parse(ch.responses[0].body).results[0].response.result.rows[0][0].value, '7');
});

itest('oversized body: 413 with a JSON message', opts(), async () => {
    const filler = 'x'.repeat(24 * 1024);
    const r = await hranaPost(S, pipe([hExecute('SELECT ?', [HV.text(filler)]), { type: 'close' }]));
    assertHttpError(r, 413, undefined, 'a 24 KiB body with --max-body-kb 16');
    await alive();
    // Just under the limit is fine.
    const ok = await hranaPost(S, pipe([hExecute('SELECT length(?)', [HV.text('y'.repeat(12 * 1024))]), { type: 'close' }]));
    assert.equal(hRows(okResult(ok, 0, '12 KiB body'))[0][0], 12n * 1024n);
});

// ---------------------------------------------------------------- Hrana decoding

itest('malformed JSON and protocol errors: 400 PROTOCOL_ERROR, application/json, a message', opts(), async () => {
    const raw = [
        ['truncated JSON', '{"requests": ['],
        ['not JSON', 'hello'],
        ['JSON null', 'null'],
        ['an array', '[]'],
        ['requests not an array', '{"requests": 5}'],
        ['no requests', '{"baton": null}'],
        ['a request that is not an object', '{"requests": [7]}'],
        ['invalid UTF-8', Buffer.from([0x7b, 0x22, 0x72, 0xff, 0xfe, 0x22, 0x3a, 0x31, 0x7d])],
        ['deep nesting', `{"requests": ${'['.repeat(100000)}${']'.repeat(100000)}}`.slice(0, 15 * 1024)],
    ];
    for (const [what, body] of raw) {
        const r = await S.request({ method: 'POST', path: '/v2/pipeline', headers: { 'content-type': 'application/json' }, body });
        assertHttpError(r, 400, 'PROTOCOL_ERROR', what);
        await alive(S, what);
    }
    const step = (sql, condition) => ({ stmt: { sql, args: [], named_args: [], want_rows: true }, ...(condition ? { condition } : {}) });
    const shaped = [
        ['unknown request type', [{ type: 'frobnicate' }]],
        ['request without a type', [{ stmt: { sql: 'SELECT 1' } }]],
        ['unknown value type', [hExecute('SELECT ?', [{ type: 'unicorn', value: '1' }])]],
        ['unknown condition type', [{ type: 'batch', batch: { steps: [step('SELECT 1'), step('SELECT 2', { type: 'maybe', step: 0 })] } }]],
        ['sql and sql_id', [{ type: 'store_sql', sql_id: 1, sql: 'SELECT 1' }, { type: 'execute', stmt: { sql: 'SELECT 1', sql_id: 1 } }]],
        ['neither sql nor sql_id', [{ type: 'execute', stmt: { args: [] } }]],
        ['unknown sql_id', [{ type: 'execute', stmt: { sql_id: 4242 } }]],
        ['condition on a later step', [{ type: 'batch', batch: { steps: [step('SELECT 1', { type: 'ok', step: 1 }), step('SELECT 2')] } }]],
        ['condition on its own step', [{ type: 'batch', batch: { steps: [step('SELECT 1'), step('SELECT 2', { type: 'ok', step: 1 })] } }]],
        ['is_autocommit on /v2', [{ type: 'batch', batch: { steps: [step('SELECT 1', { type: 'is_autocommit' })] } }]],
        ['get_autocommit on /v2', [{ type: 'get_autocommit' }]],
    ];
    for (const [what, requests] of shaped) {
        const r = await hranaPost(S, pipe([...requests, { type: 'close' }]));
        assertHttpError(r, 400, 'PROTOCOL_ERROR', what);
        await alive(S, what);
    }
    // The Hrana 3 features are fine on /v3.
    const v3 = await hranaPost(S, pipe([{ type: 'get_autocommit' }, { type: 'batch', batch: { steps: [step('SELECT 1', { type: 'is_autocommit' })] } }, { type: 'close' }]), { path: '/v3/pipeline' });
    assert.equal(okResult(v3, 0, 'get_autocommit on /v3').is_autocommit, true);
    assert.ok(okResult(v3, 1, 'is_autocommit on /v3').result.step_results[0], 'the step ran');
});

itest('wrong value shapes are refused (whole request or that request), never misread', opts(), async (t) => {
    // [what, value, the exact value it may be read as instead of a refusal (or undefined: must be refused)]
    const cases = [
        ['integer as a JSON number', { type: 'integer', value: 5 }, 5n],
        ['integer with junk', { type: 'integer', value: '12abc' }],
        ['integer beyond int64', { type: 'integer', value: '9223372036854775808' }],
        ['integer that is empty', { type: 'integer', value: '' }],
        ['float as a string', { type: 'float', value: '1.5' }, 1.5],
        ['text as a number', { type: 'text', value: 5 }],
        ['blob with bad base64', { type: 'blob', base64: '!!!not base64!!!' }],
        ['blob without base64', { type: 'blob' }],
        ['integer without value', { type: 'integer' }],
    ];
    for (const [what, value, lenient] of cases) {
        const r = await hranaPost(S, pipe([hExecute('SELECT ?', [value]), { type: 'close' }]));
        const res = r.status === 200 ? r.json().results[0] : null;
        if (res && res.type === 'ok' && lenient !== undefined) {
            assert.deepEqual(hRows(res.response)[0], [lenient], `${what}: accepted, so it must be read exactly`);
            t.diagnostic(`${what}: accepted leniently`);
        } else if (r.status === 200) {
            errResult(r, 0, undefined, what);
        } else {
            assertHttpError(r, 400, 'PROTOCOL_ERROR', what);
        }
        await alive(S, what);
    }
    // The accepted forms: padded and unpadded base64, both named-argument spellings.
    const r = await hranaPost(
        S,
        pipe([
            hExecute('SELECT hex(?), hex(?)', [HV.blob([1, 2, 3, 4]), HV.blob([1, 2, 3, 4], { padded: false })]),
            { type: 'execute', stmt: { sql: 'SELECT :a, @b, $c', named_args: [{ name: 'a', value: HV.int(1) }, { name: '@b', value: HV.int(2) }, { name: 'c', value: HV.int(3) }] } },
            { type: 'close' },
        ]),
    );
    assert.deepEqual(hRows(okResult(r, 0, 'base64 forms'))[0], ['01020304', '01020304']);
    assert.deepEqual(hRows(okResult(r, 1, 'named arguments'))[0], [1n, 2n, 3n]);
});

itest('per-request errors: argument mix-ups, SQL store limits, a runaway statement (TIMEOUT), too many rows', opts(), async (t) => {
    let r = await hranaPost(
        S,
        pipe([
            { type: 'execute', stmt: { sql: 'SELECT ?, :n', args: [HV.int(1)], named_args: [{ name: 'n', value: HV.int(2) }] } },
            hExecute('SELECT ?, ?', [HV.int(1)]),
            hExecute('SELECT ?', [HV.int(1), HV.int(2)]),
            hExecute('SELECT 1'),
            { type: 'close' },
        ]),
    );
    errResult(r, 0, 'ARGS_BOTH_POSITIONAL_AND_NAMED', 'positional and named');
    errResult(r, 1, 'ARGS_INVALID', 'too few arguments');
    errResult(r, 2, 'ARGS_INVALID', 'too many arguments');
    okResult(r, 3, 'the pipeline goes on after per-request errors');

    const stores = Array.from({ length: 51 }, (_, i) => ({ type: 'store_sql', sql_id: i, sql: `SELECT ${i}` }));
    r = await hranaPost(S, pipe([...stores, { type: 'execute', stmt: { sql_id: 49 } }, { type: 'close_sql', sql_id: 49 }, { type: 'close' }]));
    for (let i = 0; i < 50; i++) okResult(r, i, `store_sql ${i}`);
    errResult(r, 50, 'SQL_STORE_TOO_MANY', 'the 51st stored SQL');
    assert.equal(hRows(okResult(r, 51, 'execute by sql_id'))[0][0], 49n);
    okResult(r, 52, 'close_sql');

    // A statement that would run forever is cut by --stmt-timeout-ms 300.
    const t0 = Date.now();
    let slowDone = Infinity;
    const slow = hranaPost(S, pipe([hExecute('WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c'), { type: 'close' }])).then((res) => {
        slowDone = Date.now();
        return res;
    });
    const fast = await hranaPost(S, pipe([hExecute('SELECT 1'), { type: 'close' }]));
    const fastDone = Date.now();
    okResult(fast, 0, 'a fast read during a slow one');
    const sr = await slow;
    const e = errResult(sr, 0, 'TIMEOUT', 'the runaway statement');
    assert.ok(e.message.length > 0);
    // (Whether the fast read overtook it depends on the design: one loop per
    // core may put both on one loop. Not asserted; shown.)
    t.diagnostic(`fast read done at ${fastDone - t0} ms, runaway statement stopped at ${slowDone - t0} ms`);
    assert.ok(slowDone - t0 < 5000, `the runaway statement was stopped after ${slowDone - t0} ms`);

    r = await hranaPost(S, pipe([hExecute('WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 5000) SELECT x FROM c'), hExecute('SELECT 2'), { type: 'close' }]));
    errResult(r, 0, 'RESPONSE_TOO_LARGE', '5000 rows with --max-rows 1000');
    okResult(r, 1, 'after RESPONSE_TOO_LARGE');
    await alive();
});

// ---------------------------------------------------------------- batons and tokens

itest('batons: reused, forged, garbage, after close, expired', opts(), async () => {
    // Stream X: an old baton, once the stream has moved on, is BATON_REUSED.
    let r = await hranaPost(S, pipe([hExecute('SELECT 1')]));
    okResult(r, 0, 'open a stream');
    const b1 = r.json().baton;
    assert.equal(typeof b1, 'string', 'an open stream has a baton');
    r = await hranaPost(S, pipe([hExecute('SELECT 2')], b1));
    okResult(r, 0, 'second request');
    const b2 = r.json().baton;
    assert.equal(typeof b2, 'string');
    assert.notEqual(b2, b1, 'each answer carries a new baton');
    r = await hranaPost(S, pipe([hExecute('SELECT 3')], b1));
    assertHttpError(r, 400, 'BATON_REUSED', 'an old baton');

    // Stream Y: forged batons do not touch it; it closes with its real baton.
    r = await hranaPost(S, pipe([hExecute('SELECT 1')]));
    okResult(r, 0, 'open stream Y');
    const y1 = r.json().baton;
    const i = Math.floor(y1.length / 2);
    const forgeries = ['garbage', 'A'.repeat(64), y1.slice(0, -4), `${y1}AAAA`, y1.slice(0, i) + (y1[i] === 'A' ? 'B' : 'A') + y1.slice(i + 1)];
    for (const forged of forgeries) {
        r = await hranaPost(S, pipe([hExecute('SELECT 4')], forged));
        assertHttpError(r, 400, 'BATON_INVALID', `baton ${JSON.stringify(forged.slice(0, 24))}`);
    }
    r = await hranaPost(S, pipe([hExecute('SELECT 6')], 12345));
    assertHttpError(r, 400, 'PROTOCOL_ERROR', 'a baton that is not a string');
    r = await hranaPost(S, pipe([hExecute('SELECT 7'), { type: 'close' }], y1));
    okResult(r, 0, 'the real baton after the forged ones');
    assert.equal(r.json().baton, null, 'closed: no baton');
    r = await hranaPost(S, pipe([hExecute('SELECT 8')], y1));
    const j = assertHttpError(r, 400, undefined, 'a baton of a closed stream');
    assert.ok(['BATON_REUSED', 'BATON_INVALID', 'STREAM_EXPIRED'].includes(j.code), `closed stream: ${j.code}`);

    // Expiry: a stream left idle past --stream-idle-ms.
    r = await hranaPost(S, pipe([hExecute('BEGIN'), hExecute("INSERT INTO t VALUES (50, 'in a transaction')")]));
    okResult(r, 1, 'a write inside an open transaction');
    const b3 = r.json().baton;
    const idleFrom = Date.now();
    await waitFor(() => Date.now() - idleFrom > 3 * IDLE_MS, { timeoutMs: 10 * IDLE_MS, what: 'the stream to sit idle' });
    r = await hranaPost(S, pipe([hExecute('COMMIT')], b3));
    assertHttpError(r, 400, 'STREAM_EXPIRED', 'an expired stream');
    // Rolled back, and the primary's write lock is free again.
    r = await hranaPost(S, pipe([hExecute("INSERT INTO t VALUES (51, 'after expiry')"), hExecute('SELECT count(*) FROM t WHERE id IN (50, 51)'), { type: 'close' }]));
    okResult(r, 0, 'a write after the expiry');
    assert.equal(hRows(okResult(r, 1, 'count'))[0][0], 1n, 'the expired transaction was rolled back');
    await alive();
});

itest('forged tokens are 400 TOKEN_INVALID; a bad header value is 400 BAD_HEADER', opts(), async () => {
    for (const tok of ['garbage', '0', 'x'.repeat(1000), '\u00ff\u00fe']) {
        const r = await S.request({ method: 'POST', path: '/v2/pipeline', headers: { 'Boomerang-Token': Buffer.from(tok, 'latin1').toString('latin1') }, body: pipe([hExecute('SELECT 1'), { type: 'close' }]) });
        assertHttpError(r, 400, 'TOKEN_INVALID', `token ${JSON.stringify(tok.slice(0, 10))}`);
    }
    const r = await hranaPost(S, pipe([hExecute('SELECT 1'), { type: 'close' }]), { headers: { 'Boomerang-Consistency': 'whatever' } });
    assertHttpError(r, 400, 'BAD_HEADER', 'Boomerang-Consistency: whatever');
    await alive();
});

// ---------------------------------------------------------------- refusals

itest('refused operations come back as SQLITE_AUTH naming the operation', opts(), async () => {
    const dir = makeTmpDir('boomerang-refuse-');
    const cases = [
        [`ATTACH DATABASE '${path.join(dir, 'x.db')}' AS x`, /attach/i],
        ['DETACH DATABASE x', /detach/i],
        [`VACUUM INTO '${path.join(dir, 'copy.db')}'`, /vacuum/i],
        ["SELECT load_extension('/nonexistent/ext')", /load_extension/i],
        ['PRAGMA journal_mode = delete', /journal_mode/i],
        ['PRAGMA wal_checkpoint(TRUNCATE)', /wal_checkpoint/i],
        ['PRAGMA writable_schema = ON', /writable_schema/i],
        ['PRAGMA synchronous = OFF', /synchronous/i],
        ['PRAGMA page_size = 1024', /page_size/i],
    ];
    for (const [sql, names] of cases) {
        const r = await hranaPost(S, pipe([hExecute(sql), hExecute('SELECT 1'), { type: 'close' }]));
        const e = errResult(r, 0, 'SQLITE_AUTH', sql);
        assert.match(e.message, names, `${sql}: the message names the operation: ${e.message}`);
        okResult(r, 1, `${sql}: the next request runs`);
        await alive(S, sql);
    }
    assert.equal(fs.existsSync(path.join(dir, 'copy.db')), false, 'VACUUM INTO wrote nothing');
    assert.equal(fs.existsSync(path.join(dir, 'x.db')), false, 'ATTACH created nothing');
    // Through the client: a LibsqlError with that code.
    const c = createClient({ url: S.url });
    clients.push(c);
    await assert.rejects(c.execute(`ATTACH '${path.join(dir, 'y.db')}' AS y`), (e) => e instanceof LibsqlError && e.code === 'SQLITE_AUTH');
    await assert.rejects(c.execute('PRAGMA journal_mode=delete'), (e) => e instanceof LibsqlError && e.code === 'SQLITE_AUTH');
    // Inside a write transaction too.
    const tx = await c.transaction('write');
    await assert.rejects(tx.execute(`VACUUM INTO '${path.join(dir, 'z.db')}'`), (e) => e instanceof LibsqlError && e.code === 'SQLITE_AUTH');
    await tx.rollback();
    // Still a WAL database with the data.
    const rs = await c.execute('PRAGMA journal_mode');
    assert.equal(rs.rows[0][0], 'wal');
});

// ---------------------------------------------------------------- app auth

itest('--app-token-file: no or wrong bearer is 401 UNAUTHORIZED; a listed token passes; /health stays open', opts(), async () => {
    const dir = makeTmpDir('boomerang-apptok-');
    const file = path.join(dir, 'tokens');
    fs.writeFileSync(file, '# app tokens\ntok-one\n\n  tok-two  \n', { mode: 0o600 });
    const T = await startProxy({ primaryUrl: P, args: ['--app-token-file', file] });
    const body = pipe([hExecute('SELECT count(*) FROM t'), { type: 'close' }]);
    const req = (authorization, extra = {}) => httpRequest({ port: T.port, method: 'POST', path: '/v2/pipeline', headers: authorization ? { authorization } : {}, body, ...extra });
    for (const auth of [undefined, 'Bearer wrong', 'Bearer tok-on', 'Bearer tok-one2', 'Basic dG9rLW9uZQ==', 'tok-one', 'Bearer ']) {
        assertHttpError(await req(auth), 401, 'UNAUTHORIZED', `authorization ${JSON.stringify(auth)}`);
    }
    for (const p of ['/metrics', '/v1/status', '/ready']) {
        const r = await httpRequest({ port: T.port, path: p });
        assertHttpError(r, 401, 'UNAUTHORIZED', `GET ${p} without a token`);
    }
    const h = await httpRequest({ port: T.port, path: '/health' });
    assert.equal(h.status, 200, '/health needs no token');
    T.bearer = 'tok-two';
    await T.waitReady();
    for (const tok of ['tok-one', 'tok-two']) {
        const r = await req(`Bearer ${tok}`);
        assert.equal(r.status, 200, `${tok}: ${r.body}`);
    }
    assert.ok(await T.metrics());
    // The client with and without its authToken.
    const good = createClient({ url: T.url, authToken: 'tok-one' });
    const bad = createClient({ url: T.url });
    clients.push(good, bad);
    const rs = await good.execute('SELECT count(*) AS n FROM t');
    assert.ok(Number(rs.rows[0].n) >= 1);
    await assert.rejects(bad.execute('SELECT 1'), (e) => e instanceof LibsqlError && e.code === 'UNAUTHORIZED');
    await alive(T, 'auth');
    assert.equal((await T.stop()).code, 0);
});

itest('a non-loopback --listen without --app-token-file refuses to start (exit 2)', opts(), async () => {
    const dir = makeTmpDir('boomerang-nonloop-');
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('BOOMERANG_')));
    const h = spawnTracked(binPath('boomerang-proxy'), ['--primary', `http://${P.addr}`, '--replica', path.join(dir, 'r.db'), '--listen', '0.0.0.0:0'], { env });
    const st = await waitFor(() => h.exitStatus, { timeoutMs: 10000, what: 'the proxy to refuse to start' }).catch(async (e) => {
        await h.kill9();
        throw e;
    });
    assert.equal(st.code, 2, `exit status ${fmtExit(st)}\n${h.stderr()}`);
    assert.ok(h.stderr().trim().length > 0, 'says why on stderr');
    assert.doesNotMatch(h.stderr(), /listening on/);
});

// ---------------------------------------------------------------- unix socket

itest('the same API over --socket: health, pipelines, errors, the real client, a transaction', opts(), async () => {
    const dir = makeTmpDir('bpx-');
    const sock = path.join(dir, 's.sock');
    const U = await startProxy({ primaryUrl: P, socket: sock });
    await U.waitReady();
    const h = await httpRequest({ socketPath: sock, path: '/health' });
    assert.equal(h.status, 200);
    assert.equal(h.body, 'ok\n');
    let r = await hranaPost(U, pipe([hExecute('SELECT count(*) FROM t'), { type: 'close' }]), { unix: true });
    assert.ok(hRows(okResult(r, 0, 'a read over the socket'))[0][0] >= 1n);
    assert.ok(r.headers['boomerang-token'], 'the token comes over the socket too');
    r = await httpRequest({ socketPath: sock, method: 'POST', path: '/v2/pipeline', headers: { 'content-type': 'application/json' }, body: '{"requests": [' });
    assertHttpError(r, 400, 'PROTOCOL_ERROR', 'bad JSON over the socket');
    r = await hranaPost(U, pipe([hExecute("ATTACH 'a.db' AS a"), { type: 'close' }]), { unix: true });
    errResult(r, 0, 'SQLITE_AUTH', 'ATTACH over the socket');
    const raw = await rawExchange(Buffer.from('GARBAGE\r\n\r\n'), { socketPath: sock });
    assert.equal(raw.responses[0]?.status, 400, 'malformed HTTP over the socket');

    const c = createClient({ url: 'http://unix.invalid', fetch: unixFetch(sock) });
    clients.push(c);
    await c.execute('CREATE TABLE over_unix (id INTEGER PRIMARY KEY, v TEXT)');
    await c.execute({ sql: 'INSERT INTO over_unix VALUES (?, ?)', args: [1n, 'one'] });
    let rs = await c.execute('SELECT v FROM over_unix WHERE id = 1');
    assert.deepEqual(rs.rows.map((x) => x.v), ['one'], 'read-your-writes over the socket');
    const tx = await c.transaction('write');
    await tx.execute({ sql: 'INSERT INTO over_unix VALUES (?, ?)', args: [2n, 'two'] });
    await tx.commit();
    await c.batch([{ sql: 'INSERT INTO over_unix VALUES (?, ?)', args: [3n, 'three'] }], 'write');
    rs = await c.execute('SELECT count(*) AS n FROM over_unix');
    assert.equal(rs.rows[0].n, 3);
    // The TCP side of the same sidecar sees the same data.
    r = await hranaPost(U, pipe([hExecute('SELECT count(*) FROM over_unix'), { type: 'close' }]));
    assert.equal(hRows(okResult(r, 0, 'TCP'))[0][0], 3n);
    await alive(U, 'unix socket');
    assert.equal((await U.stop()).code, 0);
});
