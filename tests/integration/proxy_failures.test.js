// The sidecar's own error paths, as a client sees them: the primary
// unreachable (per-request PROXY_ERROR, reads still local, recovery after
// heal), too many open streams (503 TOO_MANY_STREAMS), a primary-side
// transaction that timed out (TRANSACTION_TIMEOUT), two requests racing on one
// baton (STREAM_BUSY), a write inside a READONLY transaction, PRAGMA
// foreign_keys answered by the sidecar, and Hrana 3's describe and
// get_autocommit.

import assert from 'node:assert/strict';
import { after, before } from 'node:test';

import {
    assertHttpError,
    errResult,
    hExecute,
    hranaPost,
    hRows,
    itest,
    metricValue,
    okResult,
    skipNoProxy,
    skipNoRelay,
    startPrimary,
    startProxy,
    startRelay,
    stopAll,
    waitFor,
} from './helpers.js';

const skip = skipNoProxy() || skipNoRelay() ? 'no boomerang-proxy or relay (set BOOMERANG_BIN)' : undefined;
const opts = (timeout = 60000) => ({ timeout, ...(skip ? { skip } : {}) });

let P; // primary with a short interactive-transaction timeout
let R; // relay between S and P
let S; // sidecar through the relay, at most 3 open streams

before(async () => {
    if (skip) return;
    P = await startPrimary({ args: ['--tx-timeout-ms', '300'] });
    R = await startRelay({ target: P });
    S = await startProxy({ primaryUrl: R.url, args: ['--max-streams', '3', '--threads', '4', '--max-wait-ms', '1000'] });
    await S.waitReady();
    okResult(await hranaPost(S, { requests: [hExecute('CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)'), hExecute("INSERT INTO t VALUES (1, 'one')"), { type: 'close' }] }));
});

after(stopAll);

const pipe = (requests, baton) => ({ baton: baton ?? null, requests });

/** Send SIGHUP (reset: RST every connection and refuse new ones) and wait for the relay to log it. */
async function resetRelay() {
    const before = (R.stderr().match(/state \w+ -> reset/g) || []).length;
    process.kill(R.pid, 'SIGHUP');
    await waitFor(() => (R.stderr().match(/state \w+ -> reset/g) || []).length > before, { what: 'relay reset' });
}

itest('primary unreachable: writes fail per request with PROXY_ERROR, reads stay local, heal recovers', opts(), async () => {
    await resetRelay();
    try {
        await waitFor(async () => (await S.status()).primary_connection !== 'CONNECTED', { what: 'the sidecar to see the link down' });
        const w = await hranaPost(S, pipe([hExecute("INSERT INTO t VALUES (2, 'two')"), hExecute('SELECT v FROM t WHERE id = 1'), { type: 'close' }]));
        const e = errResult(w, 0, 'PROXY_ERROR', 'write with the primary unreachable');
        assert.match(e.message, /primary/i);
        // the rest of the pipeline still runs: the read is local
        assert.deepEqual(hRows(okResult(w, 1)), [['one']]);
        const r = await hranaPost(S, pipe([hExecute('SELECT count(*) FROM t'), { type: 'close' }]));
        assert.deepEqual(hRows(okResult(r, 0)), [[1n]]);
        assert.equal((await S.get('/health')).status, 200);
    } finally {
        await R.heal();
    }
    await waitFor(
        async () => {
            const w = await hranaPost(S, pipe([hExecute("INSERT INTO t VALUES (2, 'two')"), { type: 'close' }]));
            return w.json().results[0].type === 'ok';
        },
        { timeoutMs: 15000, what: 'a write to succeed after heal' },
    );
    const r = await hranaPost(S, pipe([hExecute('SELECT v FROM t WHERE id = 2'), { type: 'close' }]));
    assert.deepEqual(hRows(okResult(r, 0)), [['two']], 'the acknowledged write is visible at once');
});

itest('more open streams than --max-streams: 503 TOO_MANY_STREAMS; closing one frees a slot', opts(), async () => {
    const batons = [];
    for (let i = 0; i < 3; i++) {
        const r = await hranaPost(S, pipe([hExecute('SELECT 1')]));
        okResult(r, 0);
        batons.push(r.json().baton);
        assert.equal(typeof batons[i], 'string');
    }
    const full = await hranaPost(S, pipe([hExecute('SELECT 1')]));
    assertHttpError(full, 503, 'TOO_MANY_STREAMS');
    // a one-shot pipeline (ends with close) never needs a slot
    okResult(await hranaPost(S, pipe([hExecute('SELECT 1'), { type: 'close' }])));
    const closed = await hranaPost(S, pipe([{ type: 'close' }], batons.pop()));
    okResult(closed, 0);
    assert.equal(closed.json().baton, null);
    const again = await hranaPost(S, pipe([hExecute('SELECT 1')]));
    okResult(again, 0);
    batons.push(again.json().baton);
    for (const b of batons) okResult(await hranaPost(S, pipe([{ type: 'close' }], b)));
});

itest('a primary transaction that timed out: the next statement fails with TRANSACTION_TIMEOUT', opts(), async () => {
    const begin = await hranaPost(S, pipe([{ type: 'batch', batch: { steps: [{ stmt: { sql: 'BEGIN' } }, { stmt: { sql: "INSERT INTO t VALUES (10, 'tx')" }, condition: { type: 'ok', step: 0 } }] } }]));
    const b = okResult(begin, 0);
    assert.deepEqual(b.result.step_errors, [null, null], JSON.stringify(b.result));
    const baton = begin.json().baton;
    const rolled = (P.stderr().match(/rolled back/g) || []).length;
    await waitFor(() => (P.stderr().match(/rolled back/g) || []).length > rolled, { timeoutMs: 10000, what: 'the primary to roll the idle transaction back' });
    const next = await hranaPost(S, pipe([hExecute("INSERT INTO t VALUES (11, 'tx')"), { type: 'close' }], baton));
    errResult(next, 0, 'TRANSACTION_TIMEOUT', 'statement after the primary timed the transaction out');
    const r = await hranaPost(S, pipe([hExecute('SELECT count(*) FROM t WHERE id IN (10, 11)'), { type: 'close' }]));
    assert.deepEqual(hRows(okResult(r, 0)), [[0n]], 'nothing of the timed-out transaction is visible');
});

itest('two requests racing on one baton: one runs, the other gets 400 STREAM_BUSY (or BATON_REUSED once the first finished)', opts(), async () => {
    const slow = 'WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 3000000) SELECT count(*) FROM c';
    let busy = 0;
    for (let attempt = 0; attempt < 10 && busy === 0; attempt++) {
        const open = await hranaPost(S, pipe([hExecute('SELECT 1')]));
        const baton = open.json().baton;
        // Two connections, so either may be taken first.
        const [a, b] = await Promise.all([hranaPost(S, pipe([hExecute(slow)], baton)), hranaPost(S, pipe([hExecute('SELECT 2')], baton))]);
        const ok = [a, b].filter((r) => r.status === 200);
        const refused = [a, b].filter((r) => r.status !== 200);
        assert.equal(ok.length, 1, `exactly one runs: ${a.status} ${b.status}`);
        const code = assertHttpError(refused[0], 400, undefined, 'the racing request').code;
        assert.ok(code === 'STREAM_BUSY' || code === 'BATON_REUSED', `code ${code}`);
        if (code === 'STREAM_BUSY') busy++;
        const want = ok[0] === a ? 3000000n : 2n;
        assert.deepEqual(hRows(okResult(ok[0], 0)), [[want]], 'the request that ran is unharmed');
        okResult(await hranaPost(S, pipe([{ type: 'close' }], ok[0].json().baton)));
    }
    assert.ok(busy > 0, 'no attempt overlapped: STREAM_BUSY was never seen');
});

itest('a READONLY transaction stays local and cannot write', opts(), async () => {
    const m0 = await S.metrics();
    const r = await hranaPost(S, pipe([{ type: 'batch', batch: { steps: [{ stmt: { sql: 'BEGIN TRANSACTION READONLY' } }, { stmt: { sql: 'SELECT count(*) FROM t' }, condition: { type: 'ok', step: 0 } }] } }]));
    const res = okResult(r, 0).result;
    assert.deepEqual(res.step_errors, [null, null]);
    const w = await hranaPost(S, pipe([hExecute("INSERT INTO t VALUES (20, 'ro')"), hExecute('ROLLBACK'), { type: 'close' }], r.json().baton));
    const e = errResult(w, 0, 'SQLITE_READONLY', 'a write inside BEGIN TRANSACTION READONLY');
    assert.match(e.message, /read-only transaction/);
    okResult(w, 1, 'ROLLBACK');
    const m1 = await S.metrics();
    assert.equal(metricValue(m1, 'boomerang_proxy_writes_total'), metricValue(m0, 'boomerang_proxy_writes_total'), 'nothing was forwarded');
});

itest('PRAGMA foreign_keys = ... is answered by the sidecar without reaching the primary', opts(), async () => {
    const m0 = await S.metrics();
    const r = await hranaPost(S, pipe([hExecute('PRAGMA foreign_keys = OFF'), hExecute('PRAGMA main.foreign_keys=on'), { type: 'close' }]));
    okResult(r, 0);
    okResult(r, 1);
    const m1 = await S.metrics();
    assert.equal(metricValue(m1, 'boomerang_proxy_writes_total'), metricValue(m0, 'boomerang_proxy_writes_total'));
    assert.equal(metricValue(m1, 'boomerang_proxy_reads_total', { route: 'primary' }), metricValue(m0, 'boomerang_proxy_reads_total', { route: 'primary' }));
});

itest('Hrana 3 on /v3/pipeline: describe, and get_autocommit through a primary transaction', opts(), async () => {
    const d = await hranaPost(S, pipe([{ type: 'describe', sql: 'SELECT id, v FROM t WHERE id = :id' }, { type: 'close' }]), { path: '/v3/pipeline' });
    const desc = okResult(d, 0).result;
    assert.deepEqual(desc.params, [{ name: ':id' }]);
    assert.deepEqual(desc.cols.map((c) => [c.name, c.decltype]), [['id', 'INTEGER'], ['v', 'TEXT']]);
    assert.equal(desc.is_readonly, true);
    assert.equal(desc.is_explain, false);
    const a = await hranaPost(S, pipe([{ type: 'get_autocommit' }, hExecute('BEGIN'), hExecute("INSERT INTO t VALUES (30, 'ac')"), { type: 'get_autocommit' }]), { path: '/v3/pipeline' });
    assert.equal(okResult(a, 0).is_autocommit, true);
    assert.equal(okResult(a, 3).is_autocommit, false);
    const c = await hranaPost(S, pipe([hExecute('COMMIT'), { type: 'get_autocommit' }, hExecute('SELECT v FROM t WHERE id = 30'), { type: 'close' }], a.json().baton), { path: '/v3/pipeline' });
    okResult(c, 0, 'COMMIT');
    assert.equal(okResult(c, 1).is_autocommit, true);
    assert.deepEqual(hRows(okResult(c, 2)), [['ac']], 'the committed row is visible in the same pipeline');
    // describe of a statement that does not prepare is a per-request error
    const bad = await hranaPost(S, pipe([{ type: 'describe', sql: 'SELECT * FROM nowhere' }, { type: 'close' }]), { path: '/v3/pipeline' });
    errResult(bad, 0, 'SQLITE_ERROR');
});
