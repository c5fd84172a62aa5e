// Routing in the sidecar, seen through its /metrics counters
// (notes/proxy-contract.md "Routing"): every write form is forwarded to the
// primary (boomerang_proxy_writes_total moves), every read form is answered
// from the local replica (reads_total{route="local"} moves, writes_total and
// reads_total{route="primary"} do not). Also the operational endpoints:
// /health, /ready (503 until the first catch-up, 200 after), /v1/status,
// /metrics, 404 and 405.

import assert from 'node:assert/strict';
import { after, before } from 'node:test';

import { createClient } from '@libsql/client';

import {
    assertHttpError,
    exec1,
    hasMetric,
    hExecute,
    hranaPost,
    itest,
    makeClient,
    metricSum,
    metricValue,
    skipNoProxy,
    skipNoRelay,
    startPrimary,
    startProxy,
    startRelay,
    stopAll,
} from './helpers.js';

const skip = skipNoProxy() ? 'no boomerang-proxy (set BOOMERANG_BIN)' : undefined;
const opts = (timeout = 60000) => ({ timeout, ...(skip ? { skip } : {}) });

const WRITES = 'boomerang_proxy_writes_total';
const READS = 'boomerang_proxy_reads_total';

let P;
let S;
let db;
let grpcP;

before(async () => {
    if (skip) return;
    P = await startPrimary();
    grpcP = makeClient(P.addr);
    S = await startProxy({ primaryUrl: P });
    await S.waitReady();
    db = createClient({ url: S.url });
    await db.execute('CREATE TABLE r (id INTEGER PRIMARY KEY, v TEXT)');
    await db.execute("INSERT INTO r VALUES (1, 'one'), (2, 'two')");
});

after(async () => {
    if (db) db.close();
    if (grpcP) grpcP.close();
    await stopAll();
});

/** Run fn and return the change of the routing counters across it. */
async function routed(fn) {
    const a = await S.metrics();
    const out = await fn();
    const b = await S.metrics();
    const d = (name, labels) => metricValue(b, name, labels) - metricValue(a, name, labels);
    return { writes: d(WRITES), local: d(READS, { route: 'local' }), primary: d(READS, { route: 'primary' }), out };
}

async function n(sql) {
    const rs = await db.execute(sql);
    return Number(Object.values(rs.rows[0])[0]);
}

itest('every write form is forwarded to the primary', opts(120000), async () => {
    const forms = [
        ['INSERT', () => db.execute("INSERT INTO r VALUES (10, 'ten')"), async () => assert.equal(await n('SELECT count(*) FROM r WHERE id = 10'), 1)],
        [
            'INSERT ... RETURNING',
            async () => {
                const rs = await db.execute("INSERT INTO r (v) VALUES ('ret') RETURNING id, v");
                assert.equal(rs.rows.length, 1, 'RETURNING gives the row');
                assert.equal(rs.rows[0].v, 'ret');
            },
            async () => assert.equal(await n("SELECT count(*) FROM r WHERE v = 'ret'"), 1),
        ],
        ['INSERT ... ON CONFLICT DO UPDATE', () => db.execute("INSERT INTO r VALUES (10, 'x') ON CONFLICT(id) DO UPDATE SET v = 'upserted'"), async () => assert.equal(await n("SELECT count(*) FROM r WHERE v = 'upserted'"), 1)],
        ['REPLACE', () => db.execute("REPLACE INTO r VALUES (2, 'two!')"), async () => assert.equal(await n("SELECT count(*) FROM r WHERE v = 'two!'"), 1)],
        ['WITH ... INSERT', () => db.execute("WITH s(x) AS (VALUES (20), (21)) INSERT INTO r SELECT x, 'cte' FROM s"), async () => assert.equal(await n("SELECT count(*) FROM r WHERE v = 'cte'"), 2)],
        ['UPDATE', () => db.execute("UPDATE r SET v = 'uno' WHERE id = 1"), async () => assert.equal(await n("SELECT count(*) FROM r WHERE v = 'uno'"), 1)],
        ['UPDATE ... RETURNING', () => db.execute("UPDATE r SET v = v || '+' WHERE id = 1 RETURNING v"), async () => assert.equal(await n("SELECT count(*) FROM r WHERE v = 'uno+'"), 1)],
        ['DELETE', () => db.execute('DELETE FROM r WHERE id = 21'), async () => assert.equal(await n('SELECT count(*) FROM r WHERE id = 21'), 0)],
        ['DELETE ... RETURNING', () => db.execute('DELETE FROM r WHERE id = 20 RETURNING id'), async () => assert.equal(await n('SELECT count(*) FROM r WHERE id = 20'), 0)],
        ['CREATE TABLE', () => db.execute('CREATE TABLE r2 (a INTEGER, b TEXT)'), async () => assert.equal(await n("SELECT count(*) FROM sqlite_schema WHERE name = 'r2'"), 1)],
        ['CREATE INDEX', () => db.execute('CREATE INDEX r2_a ON r2(a)'), async () => assert.equal(await n("SELECT count(*) FROM sqlite_schema WHERE name = 'r2_a'"), 1)],
        ['CREATE VIEW', () => db.execute('CREATE VIEW rv AS SELECT id FROM r'), async () => assert.equal(await n("SELECT count(*) FROM sqlite_schema WHERE name = 'rv'"), 1)],
        ['ALTER TABLE', () => db.execute('ALTER TABLE r2 ADD COLUMN c REAL'), async () => assert.equal(await n("SELECT count(*) FROM pragma_table_info('r2') WHERE name = 'c'"), 1)],
        ['DROP INDEX', () => db.execute('DROP INDEX r2_a'), async () => assert.equal(await n("SELECT count(*) FROM sqlite_schema WHERE name = 'r2_a'"), 0)],
        ['DROP VIEW', () => db.execute('DROP VIEW rv'), async () => assert.equal(await n("SELECT count(*) FROM sqlite_schema WHERE name = 'rv'"), 0)],
        ['DROP TABLE', () => db.execute('DROP TABLE r2'), async () => assert.equal(await n("SELECT count(*) FROM sqlite_schema WHERE name = 'r2'"), 0)],
        ['PRAGMA user_version = 7', () => db.execute('PRAGMA user_version = 7'), async () => assert.equal(await n('PRAGMA user_version'), 7)],
    ];
    for (const [what, run, check] of forms) {
        const d = await routed(run);
        assert.equal(d.writes, 1, `${what}: writes_total moved by ${d.writes}`);
        await check();
    }

    // Writes inside a deferred interactive transaction (the transaction is
    // pinned to the primary from BEGIN to COMMIT, reads included).
    let d = await routed(async () => {
        const tx = await db.transaction('deferred');
        const rs = await tx.execute('SELECT count(*) AS c FROM r');
        await tx.execute({ sql: 'INSERT INTO r VALUES (?, ?)', args: [30n, `c${rs.rows[0].c}`] });
        await tx.execute("UPDATE r SET v = 'tx' WHERE id = 30");
        await tx.commit();
    });
    assert.ok(d.writes >= 1, `deferred transaction: writes_total moved by ${d.writes}`);
    assert.equal(d.local, 0, 'nothing in a write transaction is answered locally');
    assert.equal(await n("SELECT count(*) FROM r WHERE id = 30 AND v = 'tx'"), 1);

    // A write transaction, and writes in write and deferred batches.
    d = await routed(async () => {
        const tx = await db.transaction('write');
        await tx.execute('INSERT INTO r VALUES (31, NULL)');
        await tx.commit();
    });
    assert.ok(d.writes >= 1, `write transaction: writes_total moved by ${d.writes}`);
    d = await routed(() => db.batch(['INSERT INTO r VALUES (32, NULL)', 'SELECT count(*) FROM r'], 'deferred'));
    assert.equal(d.writes, 1, `deferred batch with a write: ${d.writes}`);
    d = await routed(() => db.batch(['SELECT 1', 'INSERT INTO r VALUES (33, NULL)'], 'write'));
    assert.equal(d.writes, 1, `write batch: ${d.writes}`);
    d = await routed(() => db.executeMultiple('INSERT INTO r VALUES (34, NULL); INSERT INTO r VALUES (35, NULL);'));
    assert.ok(d.writes >= 1, `executeMultiple with writes: ${d.writes}`);
    assert.equal(await n('SELECT count(*) FROM r WHERE id BETWEEN 31 AND 35'), 5);

    // The primary really has them (not only the replica the sidecar reads).
    const st = await grpcP.status();
    const s = await S.status();
    assert.equal(BigInt(s.applied_txid), BigInt(st.head_txid), 'the sidecar has applied the primary head');
    const rows = await exec1(grpcP, 'SELECT count(*) FROM r WHERE id BETWEEN 30 AND 35');
    assert.equal(rows.rows[0].values[0].integer, '6');
});

itest('every read form stays local', opts(), async () => {
    await db.execute('CREATE TABLE IF NOT EXISTS rr (k INTEGER PRIMARY KEY, v TEXT)');
    await db.execute("INSERT OR REPLACE INTO rr VALUES (1, 'a'), (2, 'b')");
    const forms = [
        ['SELECT', () => db.execute('SELECT * FROM rr')],
        ['SELECT with arguments', () => db.execute({ sql: 'SELECT v FROM rr WHERE k = ?', args: [1n] })],
        ['SELECT without a table', () => db.execute('SELECT 1 + 1, sqlite_version()')],
        ['WITH ... SELECT', () => db.execute('WITH t AS (SELECT k FROM rr) SELECT count(*) FROM t')],
        ['WITH RECURSIVE ... SELECT', () => db.execute('WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 10) SELECT sum(x) FROM c')],
        ['EXPLAIN', () => db.execute('EXPLAIN SELECT * FROM rr WHERE k = 1')],
        ['EXPLAIN QUERY PLAN', () => db.execute('EXPLAIN QUERY PLAN SELECT * FROM rr WHERE k = 1')],
        ['PRAGMA table_info', () => db.execute('PRAGMA table_info(rr)')],
        ['PRAGMA user_version (read)', () => db.execute('PRAGMA user_version')],
        ['SELECT from a pragma function', () => db.execute("SELECT name FROM pragma_table_info('rr')")],
        ['SELECT from sqlite_schema', () => db.execute('SELECT name FROM sqlite_schema')],
        ['batch "read"', () => db.batch(['SELECT count(*) FROM rr', 'SELECT max(k) FROM rr'], 'read')],
        ['batch "deferred" of reads', () => db.batch(['SELECT count(*) FROM rr', 'SELECT 1'], 'deferred')],
        [
            'transaction("read")',
            async () => {
                const tx = await db.transaction('read');
                await tx.execute('SELECT count(*) FROM rr');
                await tx.execute('SELECT v FROM rr WHERE k = 2');
                await tx.commit();
            },
        ],
        ['executeMultiple of reads', () => db.executeMultiple('SELECT 1; SELECT count(*) FROM rr;')],
    ];
    for (const [what, run] of forms) {
        const d = await routed(run);
        assert.equal(d.writes, 0, `${what}: writes_total moved by ${d.writes}`);
        assert.equal(d.primary, 0, `${what}: reads_total{route="primary"} moved by ${d.primary}`);
        assert.ok(d.local >= 1, `${what}: reads_total{route="local"} moved by ${d.local}`);
    }
    // And the answers are right.
    const rs = await db.execute('WITH t AS (SELECT k FROM rr) SELECT count(*) AS c FROM t');
    assert.equal(rs.rows[0].c, 2);
    const ti = await db.execute('PRAGMA table_info(rr)');
    assert.deepEqual(ti.rows.map((r) => r.name), ['k', 'v']);
});

itest('/health, 404, 405, /v2, /v3, /metrics and /v1/status', opts(), async () => {
    let r = await S.get('/health');
    assert.equal(r.status, 200);
    assert.equal(r.body, 'ok\n');
    r = await S.get('/no/such/path');
    assertHttpError(r, 404, undefined, 'GET /no/such/path');
    r = await S.request({ method: 'GET', path: '/v2/pipeline' });
    assert.equal(r.status, 405, `GET /v2/pipeline: ${r.status} ${r.body}`);
    r = await S.request({ method: 'DELETE', path: '/health' });
    assert.equal(r.status, 405, `DELETE /health: ${r.status}`);
    for (const p of ['/v2', '/v3']) {
        r = await S.get(p);
        assert.equal(r.status, 200, `GET ${p}`);
        assert.match(r.headers['content-type'], /^text\/plain/);
    }
    // /v3/pipeline serves the same protocol.
    r = await hranaPost(S, { requests: [hExecute('SELECT 42'), { type: 'close' }] }, { path: '/v3/pipeline' });
    assert.equal(r.status, 200, r.body);
    assert.equal(r.json().results[0].response.result.rows[0][0].value, '42');

    // A write through the sidecar, then the status must show it exactly.
    await db.execute("INSERT INTO r VALUES (1000, 'status')");
    const st = await grpcP.status();
    const s = await S.status();
    const ints = ['epoch', 'applied_txid', 'primary_txid', 'lag_txids', 'lag_ms', 'floor_txid'];
    for (const k of ints) assert.ok(Number.isInteger(Number(s[k])) && Number(s[k]) >= 0, `status.${k} = ${JSON.stringify(s[k])}`);
    assert.equal(typeof s.database, 'string');
    if (s.database !== '') assert.equal(s.database, st.database, 'the database name is the primary\'s');
    assert.equal(s.database_id, st.database_id, 'database_id is the primary\'s');
    assert.equal(String(s.epoch), String(st.epoch));
    assert.equal(String(s.applied_txid), String(st.head_txid), 'applied the write it acknowledged');
    assert.equal(String(s.floor_txid), String(st.head_txid), 'the floor is the txid of the last acknowledged write');
    assert.ok(Number(s.primary_txid) >= Number(s.applied_txid));
    assert.equal(s.primary_connection, 'CONNECTED');
    assert.equal(s.state, 'LIVE');
    assert.equal(s.ready, true);

    const m = await S.metrics();
    assert.equal(metricSum(m, 'boomerang_replica_applied_txid'), Number(st.head_txid));
    for (const name of ['boomerang_replica_primary_head_txid', 'boomerang_replica_lag_txids', 'boomerang_replica_lag_seconds', 'boomerang_replica_txns_applied_total', 'boomerang_replica_reconnects_total', 'boomerang_proxy_wait_seconds_count', 'boomerang_proxy_wait_seconds_sum', 'boomerang_proxy_wait_seconds_bucket']) {
        assert.ok(hasMetric(m, name), `/metrics has ${name}`);
    }
    const infBuckets = Object.entries(m).filter(([k]) => k.startsWith('boomerang_proxy_wait_seconds_bucket{') && k.includes('le="+Inf"'));
    assert.ok(infBuckets.length >= 1, 'the histogram has a +Inf bucket');
    assert.equal(infBuckets.reduce((a, [, v]) => a + v, 0), metricSum(m, 'boomerang_proxy_wait_seconds_count'), 'le="+Inf" equals _count');
    assert.ok(metricValue(m, WRITES) >= 1);
});

itest(
    '/ready is 503 until the first catch-up (primary cut off from the start), then 200',
    { timeout: 120000, ...(skip || skipNoRelay() ? { skip: skip || 'no relay (set BOOMERANG_BIN)' } : {}) },
    async () => {
        await exec1(grpcP, 'CREATE TABLE IF NOT EXISTS before_ready (x)');
        await exec1(grpcP, 'INSERT INTO before_ready VALUES (1)');
        const R = await startRelay({ target: P });
        await R.partition(); // before the sidecar exists: it can never reach the primary
        const D = await startProxy({ primaryUrl: R });
        let rd = await D.readyz();
        assert.equal(rd.status, 503, `GET /ready before any catch-up: ${rd.status} ${rd.body}`);
        assert.ok(rd.json, `/ready body is JSON: ${rd.body}`);
        assert.equal(rd.json.ready, false);
        assert.ok(['CATCHING_UP', 'SNAPSHOT', 'CONNECTING', 'DISCONNECTED'].includes(rd.json.state), `state ${rd.json.state}`);
        assert.equal(typeof rd.json.reason, 'string');
        assert.ok(rd.json.reason.length > 0, 'says why');
        // Reads before the first catch-up follow the wait budget and fallback:
        // never an answer from an empty replica as if it were data.
        // (sqlite_schema prepares on an empty file too, and would say 0 tables.)
        const r = await hranaPost(D, { requests: [hExecute('SELECT count(*) FROM sqlite_schema'), { type: 'close' }] }, { headers: { 'Boomerang-Fallback': 'error', 'Boomerang-Max-Wait-Ms': '100' } });
        const j = assertHttpError(r, 503, 'REPLICA_BEHIND', 'a read before the first catch-up');
        assert.ok(Number(r.headers['retry-after']) >= 1, `Retry-After ${r.headers['retry-after']}`);
        assert.equal(typeof j.lag_ms, 'number');
        rd = await D.readyz();
        assert.equal(rd.status, 503, 'still not ready while cut off');
        await R.heal();
        const ready = await D.waitReady(90000);
        rd = await D.readyz();
        assert.equal(rd.status, 200);
        assert.equal(rd.json.ready, true, JSON.stringify(ready));
        assert.equal(rd.json.state, 'LIVE');
        for (const k of ['applied_txid', 'primary_txid', 'lag_txids', 'lag_ms']) assert.ok(Number(rd.json[k]) >= 0, `/ready ${k}`);
        const c = createClient({ url: D.url });
        try {
            const rs = await c.execute('SELECT count(*) AS n FROM before_ready');
            assert.equal(rs.rows[0].n, 1, 'after the catch-up the data is there');
        } finally {
            c.close();
        }
    },
);
