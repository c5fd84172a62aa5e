// The sidecar (boomerang-proxy) driven by the real @libsql/client 0.18 over
// http:// (research/hrana.md §2): execute with positional and named
// arguments, batch in write, read and deferred modes, interactive
// transactions (commit, rollback, close, idle expiry), executeMultiple,
// migrate, exact value round trips, constraint errors with their code, and
// read-your-writes through one sidecar with no headers behind a 20 ms relay.
//
// Environment:
//   BOOMERANG_RYW_N   write-then-read rounds through the delayed relay (default 1000)

import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { after, before } from 'node:test';

import { createClient, LibsqlError } from '@libsql/client';

import {
    itest,
    metricValue,
    skipNoProxy,
    skipNoRelay,
    startPrimary,
    startProxy,
    startRelay,
    stopAll,
    waitFor,
} from './helpers.js';

const RYW_N = Number(process.env.BOOMERANG_RYW_N || 1000);
const skip = skipNoProxy() ? 'no boomerang-proxy (set BOOMERANG_BIN)' : undefined;
const opts = (timeout = 60000) => ({ timeout, ...(skip ? { skip } : {}) });

let P; // the primary
let S; // a sidecar straight on the primary, large bodies allowed (1 MiB blobs)
let db; // @libsql/client on S, intMode "number"
let dbBig; // the same with intMode "bigint"
const clients = [];

function client(url, extra = {}) {
    const c = createClient({ url, ...extra });
    clients.push(c);
    return c;
}

/** Expect p to reject with a LibsqlError whose code is one of codes; return the error. */
async function rejectsCode(p, codes, what) {
    const want = Array.isArray(codes) ? codes : [codes];
    try {
        await p;
    } catch (e) {
        assert.ok(e instanceof LibsqlError, `${what}: expected a LibsqlError, got ${e && e.stack}`);
        assert.ok(want.includes(e.code), `${what}: expected code ${want.join(' or ')}, got ${e.code}: ${e.message}`);
        return e;
    }
    assert.fail(`${what}: expected a LibsqlError ${want.join(' or ')}, but it succeeded`);
}

async function count(c, table, where = '1') {
    const rs = await c.execute(`SELECT count(*) AS n FROM ${table} WHERE ${where}`);
    return Number(rs.rows[0].n);
}

before(async () => {
    if (skip) return;
    P = await startPrimary();
    S = await startProxy({ primaryUrl: P, args: ['--max-body-kb', '8192'] });
    await S.waitReady();
    db = client(S.url);
    dbBig = client(S.url, { intMode: 'bigint' });
});

after(async () => {
    for (const c of clients) c.close();
    await stopAll();
});

itest('execute: positional and named arguments, columns, rowsAffected, lastInsertRowid', opts(), async () => {
    await db.execute('CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT NOT NULL, score REAL)');
    let rs = await db.execute({ sql: 'INSERT INTO people VALUES (?, ?, ?)', args: [1n, 'ann', 1.5] });
    assert.equal(rs.rowsAffected, 1);
    assert.equal(rs.lastInsertRowid, 1n);
    rs = await db.execute({ sql: 'INSERT INTO people VALUES (:id, :name, :score)', args: { id: 2n, name: 'bob', score: 2.5 } });
    assert.equal(rs.rowsAffected, 1);
    assert.equal(rs.lastInsertRowid, 2n);
    // The prefix given in the key, and the @ and $ forms with it inferred.
    await db.execute({ sql: 'INSERT INTO people VALUES (@id, @name, @score)', args: { id: 3n, name: 'cy', score: null } });
    await db.execute({ sql: 'INSERT INTO people VALUES ($id, $name, $score)', args: { $id: 4n, $name: 'di', $score: -0.25 } });
    await db.execute({ sql: 'INSERT INTO people VALUES (?1, ?2, ?1)', args: [5n, 'ed'] });
    rs = await db.execute({ sql: 'SELECT id, name, score FROM people WHERE id >= ? ORDER BY id', args: [1n] });
    assert.deepEqual(rs.columns, ['id', 'name', 'score']);
    assert.deepEqual(rs.columnTypes, ['INTEGER', 'TEXT', 'REAL']);
    assert.deepEqual(
        rs.rows.map((r) => [r.id, r.name, r.score]),
        [
            [1, 'ann', 1.5],
            [2, 'bob', 2.5],
            [3, 'cy', null],
            [4, 'di', -0.25],
            [5, 'ed', 5],
        ],
    );
    assert.equal(rs.rows[1][1], 'bob', 'rows are indexable by position too');
    rs = await db.execute({ sql: 'SELECT name FROM people WHERE id = :id', args: { ':id': 2n } });
    assert.deepEqual(rs.rows.map((r) => r.name), ['bob']);
    rs = await db.execute({ sql: 'UPDATE people SET score = score + 1 WHERE id <= ?', args: [2n] });
    assert.equal(rs.rowsAffected, 2);
    rs = await db.execute('DELETE FROM people WHERE id = 5');
    assert.equal(rs.rowsAffected, 1);
    assert.equal(await count(db, 'people'), 4);
    // Argument errors are per-request errors, not protocol failures.
    await rejectsCode(db.execute({ sql: 'SELECT ?, ?', args: [1n] }), 'ARGS_INVALID', 'too few arguments');
    await rejectsCode(db.execute('SELEKT 1'), ['SQLITE_ERROR', 'SQL_PARSE_ERROR'], 'a syntax error');
    await rejectsCode(db.execute('SELECT * FROM no_such_table'), ['SQLITE_ERROR'], 'an unknown table');
});

itest('batch: write, read and deferred modes; a failing step rolls the whole batch back', opts(), async () => {
    await db.execute('CREATE TABLE items (id INTEGER PRIMARY KEY, label TEXT UNIQUE)');
    let res = await db.batch(
        [
            { sql: 'INSERT INTO items VALUES (?, ?)', args: [1n, 'a'] },
            { sql: 'INSERT INTO items VALUES (?, ?)', args: [2n, 'b'] },
            'SELECT count(*) AS n FROM items',
        ],
        'write',
    );
    assert.equal(res.length, 3);
    assert.equal(res[0].rowsAffected, 1);
    assert.equal(res[2].rows[0].n, 2, 'the batch sees its own writes');

    res = await db.batch(['SELECT label FROM items ORDER BY id', { sql: 'SELECT count(*) AS n FROM items WHERE id > ?', args: [1n] }], 'read');
    assert.deepEqual(res[0].rows.map((r) => r.label), ['a', 'b']);
    assert.equal(res[1].rows[0].n, 1);

    res = await db.batch([{ sql: 'INSERT INTO items VALUES (?, ?)', args: [3n, 'c'] }, 'SELECT max(id) AS m FROM items']); // deferred
    assert.equal(res[1].rows[0].m, 3);
    res = await db.batch(['SELECT count(*) AS n FROM items', 'SELECT 1 AS one'], 'deferred');
    assert.equal(res[0].rows[0].n, 3);

    const e = await rejectsCode(
        db.batch(
            [
                { sql: 'INSERT INTO items VALUES (?, ?)', args: [10n, 'x'] },
                { sql: 'INSERT INTO items VALUES (?, ?)', args: [11n, 'a'] }, // duplicate label
                { sql: 'INSERT INTO items VALUES (?, ?)', args: [12n, 'z'] },
            ],
            'write',
        ),
        'SQLITE_CONSTRAINT',
        'a batch with a constraint violation',
    );
    assert.equal(e.statementIndex, 1, 'LibsqlBatchError names the failing statement');
    assert.equal(await count(db, 'items'), 3, 'the failed batch left nothing behind');
    assert.equal(await count(db, 'items', 'id >= 10'), 0);
});

itest('interactive transactions: commit, rollback, close, read mode', opts(), async () => {
    await db.execute('CREATE TABLE acct (id INTEGER PRIMARY KEY, bal INTEGER NOT NULL)');
    await db.execute('INSERT INTO acct VALUES (1, 100), (2, 0)');

    let tx = await db.transaction('write');
    await tx.execute('UPDATE acct SET bal = bal - 30 WHERE id = 1');
    await tx.execute('UPDATE acct SET bal = bal + 30 WHERE id = 2');
    let rs = await tx.execute('SELECT sum(bal) AS s, (SELECT bal FROM acct WHERE id = 2) AS b FROM acct');
    assert.deepEqual([rs.rows[0].s, rs.rows[0].b], [100, 30], 'the transaction reads its own writes');
    const mid = await db.execute('SELECT bal FROM acct WHERE id = 2');
    assert.equal(mid.rows[0].bal, 0, 'uncommitted writes are invisible outside the transaction');
    const br = await tx.batch(['SELECT count(*) AS n FROM acct', { sql: 'UPDATE acct SET bal = bal + ? WHERE id = 2', args: [1n] }]);
    assert.equal(br[0].rows[0].n, 2);
    await tx.commit();
    assert.equal(tx.closed, true);
    rs = await db.execute('SELECT bal FROM acct ORDER BY id');
    assert.deepEqual(rs.rows.map((r) => r.bal), [70, 31], 'committed, and read at once through the same sidecar');

    tx = await db.transaction('write');
    await tx.execute('UPDATE acct SET bal = 0');
    await tx.rollback();
    rs = await db.execute('SELECT bal FROM acct ORDER BY id');
    assert.deepEqual(rs.rows.map((r) => r.bal), [70, 31], 'rolled back');

    tx = await db.transaction('deferred');
    await tx.execute('INSERT INTO acct VALUES (3, 5)');
    tx.close(); // neither commit nor rollback: the sidecar must roll back
    // The primary-side transaction is gone: a new write is not blocked by it.
    await db.execute('INSERT INTO acct VALUES (4, 7)');
    assert.equal(await count(db, 'acct', 'id = 3'), 0, 'closed without commit: rolled back');
    assert.equal(await count(db, 'acct', 'id = 4'), 1);

    tx = await db.transaction('read');
    rs = await tx.execute('SELECT count(*) AS n FROM acct');
    assert.equal(rs.rows[0].n, 3);
    rs = await tx.execute('SELECT sum(bal) AS s FROM acct');
    assert.equal(rs.rows[0].s, 108);
    await tx.commit();

    // A constraint error inside a transaction leaves it usable; commit keeps the rest.
    tx = await db.transaction('write');
    await tx.execute('INSERT INTO acct VALUES (5, 1)');
    await rejectsCode(tx.execute('INSERT INTO acct VALUES (5, 2)'), 'SQLITE_CONSTRAINT', 'duplicate key in a transaction');
    await tx.execute('INSERT INTO acct VALUES (6, 1)');
    await tx.commit();
    assert.equal(await count(db, 'acct', 'id IN (5, 6)'), 2);

    // executeMultiple inside a transaction.
    tx = await db.transaction('write');
    await tx.executeMultiple('INSERT INTO acct VALUES (7, 1); INSERT INTO acct VALUES (8, 1);');
    await tx.rollback();
    assert.equal(await count(db, 'acct', 'id IN (7, 8)'), 0);
});

itest('interactive transaction: an idle stream expires, rolls back and frees the primary', opts(), async () => {
    const idleMs = 500;
    const E = await startProxy({ primaryUrl: P, args: ['--stream-idle-ms', String(idleMs)] });
    await E.waitReady();
    const c = client(E.url);
    await c.execute('CREATE TABLE exp (id INTEGER PRIMARY KEY)');
    const tx = await c.transaction('write');
    await tx.execute('INSERT INTO exp VALUES (1)');
    const idleFrom = Date.now();
    // Stay idle for three expiry periods: the wait is on the clock, by design.
    await waitFor(() => Date.now() - idleFrom > 3 * idleMs, { timeoutMs: 10 * idleMs, what: 'the stream to sit idle' });
    const e = await rejectsCode(tx.execute('INSERT INTO exp VALUES (2)'), 'STREAM_EXPIRED', 'a statement on an expired stream');
    assert.match(e.message, /STREAM_EXPIRED/);
    tx.close();
    // Expiry rolled the primary-side transaction back: nothing committed, and
    // the write lock is free (this write would otherwise block and time out).
    await c.execute('INSERT INTO exp VALUES (3)');
    const rs = await c.execute('SELECT id FROM exp ORDER BY id');
    assert.deepEqual(rs.rows.map((r) => r.id), [3]);
    // A fresh transaction after the expiry works.
    const tx2 = await c.transaction('write');
    await tx2.execute('INSERT INTO exp VALUES (4)');
    await tx2.commit();
    assert.equal(await count(c, 'exp'), 2);
});

itest('executeMultiple runs in order and stops at the first error', opts(), async () => {
    await db.executeMultiple(`
        CREATE TABLE multi (x INTEGER);
        INSERT INTO multi VALUES (1);
        INSERT INTO multi VALUES (2);
        -- a comment between statements
        INSERT INTO multi VALUES (3);
    `);
    let rs = await db.execute('SELECT x FROM multi ORDER BY x');
    assert.deepEqual(rs.rows.map((r) => r.x), [1, 2, 3]);
    await rejectsCode(
        db.executeMultiple('INSERT INTO multi VALUES (4); INSERT INTO no_such VALUES (1); INSERT INTO multi VALUES (5);'),
        ['SQLITE_ERROR'],
        'executeMultiple with a bad statement in the middle',
    );
    rs = await db.execute('SELECT x FROM multi ORDER BY x');
    assert.deepEqual(rs.rows.map((r) => r.x), [1, 2, 3, 4], 'statements before the error ran, those after did not');
    // Reads only: stays a valid sequence.
    await db.executeMultiple('SELECT 1; SELECT count(*) FROM multi;');
});

itest('migrate: statements run with foreign keys off, all or nothing', opts(), async () => {
    await db.migrate([
        'CREATE TABLE parent (id INTEGER PRIMARY KEY)',
        'CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER REFERENCES parent(id))',
        'INSERT INTO child VALUES (1, 99)', // dangling: allowed while foreign_keys is off
        'INSERT INTO parent VALUES (99)',
    ]);
    let rs = await db.execute('SELECT c.id, p.id AS pid FROM child c JOIN parent p ON p.id = c.parent_id');
    assert.deepEqual(rs.rows.map((r) => [r.id, r.pid]), [[1, 99]]);
    await rejectsCode(
        db.migrate(['CREATE TABLE mig_gone (x)', 'INSERT INTO mig_gone VALUES (1)', 'INSERT INTO no_such VALUES (1)']),
        ['SQLITE_ERROR'],
        'a failing migration',
    );
    rs = await db.execute("SELECT count(*) AS n FROM sqlite_schema WHERE name = 'mig_gone'");
    assert.equal(rs.rows[0].n, 0, 'the failed migration was rolled back');
});

itest('values round trip exactly: int64 extremes, floats, unicode, empty and 1 MiB blobs, null', opts(120000), async () => {
    await dbBig.execute('CREATE TABLE vals (id INTEGER PRIMARY KEY, v)');
    const big = crypto.randomBytes(1024 * 1024);
    const cases = [
        -(2n ** 63n),
        2n ** 63n - 1n,
        0n,
        -1n,
        2n ** 53n + 1n,
        0.1,
        -1.7976931348623157e308,
        5e-324,
        Math.PI,
        1e21,
        'héllo wörld ✓ 中文 🎉 \u{1F600} "quoted" \\ back\nslash',
        '',
        new Uint8Array(0),
        new Uint8Array([0, 1, 2, 253, 254, 255]),
        big,
        null,
    ];
    const types = ['integer', 'integer', 'integer', 'integer', 'integer', 'real', 'real', 'real', 'real', 'real', 'text', 'text', 'blob', 'blob', 'blob', 'null'];
    for (const [i, v] of cases.entries()) {
        await dbBig.execute({ sql: 'INSERT INTO vals VALUES (?, ?)', args: [BigInt(i), v] });
    }
    const rs = await dbBig.execute('SELECT id, v, typeof(v) AS t, length(v) AS n FROM vals ORDER BY id');
    assert.equal(rs.rows.length, cases.length);
    for (const [i, want] of cases.entries()) {
        const row = rs.rows[i];
        assert.equal(row.id, BigInt(i));
        assert.equal(row.t, types[i], `case ${i}: stored type`);
        const got = row.v;
        if (want instanceof Uint8Array) {
            assert.ok(got instanceof ArrayBuffer, `case ${i}: a blob comes back as an ArrayBuffer`);
            assert.equal(got.byteLength, want.length, `case ${i}: blob length`);
            assert.ok(Buffer.from(got).equals(Buffer.from(want)), `case ${i}: blob bytes`);
            assert.equal(row.n, BigInt(want.length), `case ${i}: length() on the server`);
        } else {
            assert.deepEqual(got, want, `case ${i}: ${String(want).slice(0, 40)}`);
        }
    }
    // The same through the server-side arguments: the value bound is the value read.
    for (const [i, v] of cases.entries()) {
        if (v instanceof Uint8Array && v.length > 1000) continue; // covered above; keeps requests small
        const r = await dbBig.execute({ sql: 'SELECT ? AS v, typeof(?) AS t', args: [v, v] });
        assert.equal(r.rows[0].t, types[i], `case ${i}: typeof the bound argument`);
        if (!(v instanceof Uint8Array)) assert.deepEqual(r.rows[0].v, v, `case ${i}: echoed argument`);
    }
    // A JS number is sent as a float (the client's rule) and must stay REAL;
    // a boolean is an integer.
    let r = await dbBig.execute({ sql: 'SELECT typeof(?) AS a, typeof(?) AS b, ? AS c', args: [3, 3n, true] });
    assert.deepEqual([r.rows[0].a, r.rows[0].b, r.rows[0].c], ['real', 'integer', 1n]);
    // intMode "number": safe integers arrive as numbers.
    r = await db.execute('SELECT 9007199254740991 AS m, -42 AS n');
    assert.deepEqual([r.rows[0].m, r.rows[0].n], [9007199254740991, -42]);
    // Text with an embedded NUL survives (lengths are explicit, not C strings).
    await dbBig.execute({ sql: 'INSERT INTO vals VALUES (?, ?)', args: [100n, 'a\u0000b'] });
    r = await dbBig.execute('SELECT v, length(CAST(v AS BLOB)) AS n FROM vals WHERE id = 100');
    assert.equal(r.rows[0].v, 'a\u0000b');
    assert.equal(r.rows[0].n, 3n);
    // The 1 MiB blob read back through a hash computed on the server side agrees.
    r = await dbBig.execute({ sql: 'SELECT v = ? AS same FROM vals WHERE id = ?', args: [big, BigInt(cases.indexOf(big))] });
    assert.equal(r.rows[0].same, 1n);
});

itest('constraint errors arrive with code SQLITE_CONSTRAINT', opts(), async () => {
    await db.execute('CREATE TABLE uniq (id INTEGER PRIMARY KEY, email TEXT UNIQUE NOT NULL, n INTEGER CHECK (n > 0))');
    await db.execute({ sql: 'INSERT INTO uniq VALUES (1, ?, 1)', args: ['a@x'] });
    let e = await rejectsCode(db.execute({ sql: 'INSERT INTO uniq VALUES (2, ?, 1)', args: ['a@x'] }), 'SQLITE_CONSTRAINT', 'UNIQUE');
    assert.match(e.message, /^SQLITE_CONSTRAINT: .*UNIQUE/i);
    e = await rejectsCode(db.execute('INSERT INTO uniq VALUES (1, \'b@x\', 1)'), 'SQLITE_CONSTRAINT', 'PRIMARY KEY');
    e = await rejectsCode(db.execute('INSERT INTO uniq VALUES (3, NULL, 1)'), 'SQLITE_CONSTRAINT', 'NOT NULL');
    assert.match(e.message, /NOT NULL/i);
    e = await rejectsCode(db.execute("INSERT INTO uniq VALUES (4, 'c@x', 0)"), 'SQLITE_CONSTRAINT', 'CHECK');
    assert.match(e.message, /CHECK/i);
    assert.equal(await count(db, 'uniq'), 1);
});

itest(
    `read-your-writes through one sidecar, no headers, behind a 20 ms relay: ${RYW_N} rounds, zero misses`,
    { timeout: Math.max(300000, RYW_N * 400), ...(skip || skipNoRelay() ? { skip: skip || 'no relay (set BOOMERANG_BIN)' } : {}) },
    async (t) => {
        const R = await startRelay({ target: P, delayMs: 20 });
        const D = await startProxy({ primaryUrl: R });
        await D.waitReady(60000);
        const c = client(D.url);
        await c.execute('CREATE TABLE ryw (id INTEGER PRIMARY KEY, v TEXT NOT NULL)');
        const before = await D.metrics();
        const t0 = Date.now();
        let misses = 0;
        const missed = [];
        for (let i = 1; i <= RYW_N; i++) {
            await c.execute({ sql: 'INSERT INTO ryw VALUES (?, ?)', args: [BigInt(i), `v${i}`] });
            const rs = await c.execute({ sql: 'SELECT v FROM ryw WHERE id = ?', args: [BigInt(i)] });
            if (rs.rows.length !== 1 || rs.rows[0].v !== `v${i}`) {
                misses++;
                if (missed.length < 10) missed.push(i);
            }
        }
        const ms = Date.now() - t0;
        const m = await D.metrics();
        const d = (name, labels) => metricValue(m, name, labels) - metricValue(before, name, labels);
        t.diagnostic(`${RYW_N} rounds in ${ms} ms (${(ms / RYW_N).toFixed(1)} ms each); misses ${misses}`);
        assert.equal(misses, 0, `reads that missed the write just acknowledged: ${missed.join(', ')}`);
        // The relay is really in the path: a write costs at least one 40 ms round trip.
        assert.ok(ms >= RYW_N * 40 * 0.9, `${RYW_N} writes took only ${ms} ms: is the relay's delay in the path?`);
        // The reads were answered locally (waiting), not forwarded.
        assert.equal(d('boomerang_proxy_writes_total'), RYW_N, 'writes forwarded');
        assert.ok(d('boomerang_proxy_reads_total', { route: 'local' }) >= RYW_N, 'reads answered locally');
        assert.equal(d('boomerang_proxy_reads_total', { route: 'primary' }), 0, 'no read forwarded');
        assert.equal(d('boomerang_proxy_writes_unapplied_total'), 0, 'every write was acknowledged after its apply');
    },
);
