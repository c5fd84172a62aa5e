// boomerang-replica against a real boomerang-primary: it converges (same rows,
// same page checksum, integrity_check ok), resumes without a snapshot after a
// clean restart and after kill -9, follows a restarted primary, and
// re-snapshots (never mixing the two) when the primary is replaced by another
// database (DESIGN.md, replication contract 3, 4, 5).
//
// The replica file is read with bin/sqlq (tests/tools/sqlq.c), a read-only
// SQLite client built with the project's SQLite; the replica's own numbers
// come from its HTTP endpoint, GET /v1/status.
//
// Environment:
//   BOOMERANG_REPLICA_CRASH_ROUNDS   kill -9 rounds (default 20)
//   BOOMERANG_REPLICA_TXNS           transactions in the convergence load (default 600)

import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { after } from 'node:test';

import {
    binPath,
    exec1,
    haveBinary,
    itest,
    makeClient,
    makeTmpDir,
    okResults,
    pause,
    rng,
    run,
    spawnTracked,
    startPrimary,
    stmt,
    stopAll,
    testSeed,
    waitFor,
} from './helpers.js';

const CRASH_ROUNDS = Number(process.env.BOOMERANG_REPLICA_CRASH_ROUNDS || 20);
const TXNS = Number(process.env.BOOMERANG_REPLICA_TXNS || 600);
const SKIP = !haveBinary('boomerang-replica') || !haveBinary('sqlq');
const opts = (timeout) => ({ timeout, ...(SKIP && !process.env.BOOMERANG_BIN ? { skip: 'no boomerang-replica or sqlq' } : {}) });

after(() => stopAll(), { timeout: 60000 });

// ---------------------------------------------------------------- plumbing

function fatal(msg) {
    const e = new Error(msg);
    e.fatal = true;
    return e;
}

/** Start boomerang-replica following primary P into file `replica`, with its HTTP endpoint on an ephemeral port. */
async function startReplica(P, replica, { args = [] } = {}) {
    const argv = ['--primary', `http://${P.addr}`, '--replica', replica, '--listen', '127.0.0.1:0', ...args];
    const env = {};
    for (const [k, v] of Object.entries(process.env)) {
        if (!k.startsWith('BOOMERANG_')) env[k] = v; // flags come only from the test
    }
    const h = spawnTracked(binPath('boomerang-replica'), argv, { env });
    h.server = true; // runs until signalled; exits 0 on SIGTERM
    h.replica = replica;
    const m = await waitFor(
        () => {
            const found = /listening on 127\.0\.0\.1:(\d+) \(http\)/.exec(h.stderr());
            if (found) return found;
            if (h.exitStatus) throw fatal(`replica exited before listening\n${h.tail()}`);
            return null;
        },
        { timeoutMs: 15000, what: 'the replica to listen' },
    );
    h.httpPort = Number(m[1]);
    return h;
}

/** GET a path of the replica's HTTP endpoint: { status, body }. No keep-alive. */
function httpGet(R, p) {
    return new Promise((resolve, reject) => {
        const req = http.get({ host: '127.0.0.1', port: R.httpPort, path: p, agent: false, timeout: 5000 }, (res) => {
            const chunks = [];
            res.on('data', (d) => chunks.push(d));
            res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(chunks).toString('utf8') }));
            res.on('error', reject);
        });
        req.on('timeout', () => req.destroy(new Error(`GET ${p}: timeout`)));
        req.on('error', reject);
    });
}

async function replicaStatus(R) {
    const r = await httpGet(R, '/v1/status');
    assert.equal(r.status, 200, r.body);
    return JSON.parse(r.body);
}

/** Wait until the replica has applied the primary's head (same database id) and is LIVE. */
async function converge(R, c, what = 'the replica to converge', timeoutMs = 30000) {
    const st = await c.status();
    await waitFor(
        async () => {
            const s = await replicaStatus(R);
            return s.database_id === st.database_id && BigInt(s.applied_txid) >= BigInt(st.head_txid) && s.state === 'LIVE' ? s : null;
        },
        { timeoutMs, what: `${what} (primary ${st.database_id} at ${st.head_txid})` },
    );
    return st;
}

/** Rows of a read-only query, one JSON text line each. */
function sqlqLines(db, sql) {
    const out = run(binPath('sqlq'), [db, sql], { maxBuffer: 512 * 1024 * 1024 });
    return out.split('\n').filter((l) => l.length > 0);
}

function sqlq(db, sql) {
    return sqlqLines(db, sql).map((l) => JSON.parse(l));
}

function checksum(db, delta = 0) {
    return JSON.parse(run(binPath('sqlq'), ['--checksum', db, String(delta)]).trim());
}

/**
 * The replica's schema-cookie delta: after a snapshot of another history its
 * cookie is the primary's plus this (replica/apply.c, "Schema cookies"). It is
 * the last field of the line of <replica>-boomerang/position ("cur" or "next",
 * whichever the database is at) for the replica's database id and txid.
 */
function cookieDelta(replica, s) {
    const text = fs.readFileSync(`${replica}-boomerang/position`, 'utf8');
    const line = text
        .split('\n')
        .map((l) => l.trim().split(/\s+/))
        .find((f) => (f[0] === 'cur' || f[0] === 'next') && f[1] === (s.database_id || '-') && f[3] === String(s.applied_txid));
    assert.ok(line, `no position line for ${s.database_id} at ${s.applied_txid}:\n${text}`);
    return Number(line[line.length - 1]);
}

/** The logical content: schema and every table's rows in rowid order. */
function dump(db) {
    const parts = sqlqLines(db, 'SELECT type, name, tbl_name, sql FROM sqlite_schema ORDER BY type, name');
    const tables = sqlq(db, "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name");
    for (const [t] of tables) {
        parts.push(`-- ${t}`);
        parts.push(...sqlqLines(db, `SELECT rowid, * FROM "${t}" ORDER BY rowid`));
    }
    return parts.join('\n');
}

/** Replica and primary hold the same content and pages, and the replica is sound. */
async function assertSame(R, P, st, what) {
    assert.deepEqual(sqlq(R.replica, 'PRAGMA integrity_check'), [['ok']], `${what}: integrity_check`);
    assert.deepEqual(sqlq(R.replica, 'PRAGMA journal_mode'), [['wal']], `${what}: the replica is in WAL mode`);
    const s = await replicaStatus(R);
    assert.equal(s.applied_txid, Number(st.head_txid));
    assert.equal(s.checksum, st.checksum, `${what}: the replica's own checksum`);
    const rs = checksum(R.replica, cookieDelta(R.replica, s));
    assert.equal(rs.checksum, checksum(P.db).checksum, `${what}: replica file checksum vs the primary file's`);
    assert.equal(rs.checksum, st.checksum, `${what}: replica file checksum vs the primary's Status at ${st.head_txid}`);
    assert.equal(rs.db_pages, st.db_pages, `${what}: database size in pages`);
    assert.equal(dump(R.replica), dump(P.db), `${what}: dump of replica vs primary`);
}

/** Count of log lines matching re in a process's stderr. */
function count(h, re) {
    return (h.stderr().match(new RegExp(re.source, 'g')) || []).length;
}

// ---------------------------------------------------------------- load

const SCHEMA = [
    'CREATE TABLE t (k INTEGER PRIMARY KEY, v INTEGER NOT NULL, tag TEXT, pad BLOB)',
    'CREATE INDEX t_tag ON t(tag)',
];

/** One random write (sometimes a multi-statement atomic batch, sometimes a big blob). */
function randomWrite(rand, ci, n) {
    const k = Math.floor(rand() * 400);
    const r = rand();
    if (r < 0.45) {
        const big = rand() < 0.05;
        const pad = Buffer.alloc(big ? 20000 + Math.floor(rand() * 30000) : Math.floor(rand() * 300), (ci * 31 + n) & 0xff);
        return { statements: [stmt('INSERT OR REPLACE INTO t VALUES (?, ?, ?, ?)', [BigInt(k), BigInt(n), `c${ci}-${k % 7}`, pad])] };
    }
    if (r < 0.75) return { statements: [stmt('UPDATE t SET v = v + 1, tag = ? WHERE k = ?', [`u${ci}`, BigInt(k)])] };
    if (r < 0.92) return { statements: [stmt('DELETE FROM t WHERE k = ?', [BigInt(k)])] };
    return {
        mode: 'MODE_ATOMIC',
        statements: [
            stmt('INSERT OR REPLACE INTO t VALUES (?, 0, ?, zeroblob(?))', [BigInt(k), 'atomic', BigInt(100 + Math.floor(rand() * 5000))]),
            stmt('UPDATE t SET v = v + 10 WHERE k = ?', [BigInt((k + 1) % 400)]),
        ],
    };
}

/** nTx writes from `clients` concurrent clients. */
async function runLoad(addr, rand, nTx, clients = 4) {
    const cs = Array.from({ length: clients }, () => makeClient(addr));
    let next = 0;
    try {
        await Promise.all(
            cs.map(async (cl, ci) => {
                while (next < nTx) {
                    const n = next++;
                    okResults(await cl.execute(randomWrite(rand, ci, n)));
                }
            }),
        );
    } finally {
        for (const cl of cs) cl.close();
    }
}

/** Writes until stop() is called; resolves to the number done. */
function backgroundLoad(addr, rand) {
    const cl = makeClient(addr);
    let stopped = false;
    let n = 0;
    const done = (async () => {
        while (!stopped) {
            okResults(await cl.execute(randomWrite(rand, 9, n++)));
        }
        cl.close();
        return n;
    })();
    return {
        stop: () => {
            stopped = true;
            return done;
        },
    };
}

// ---------------------------------------------------------------- tests

itest('a new replica snapshots, follows, and converges; restart resumes without a snapshot', opts(120000), async (t) => {
    const seed = testSeed();
    t.diagnostic(`seed ${seed} (rerun with BOOMERANG_SEED=${seed})`);
    const rand = rng(seed);
    const dir = makeTmpDir('boomerang-replica-');
    const P = await startPrimary({ dir });
    const c = makeClient(P.addr);
    try {
        for (const sql of SCHEMA) await exec1(c, sql);
        await runLoad(P.addr, rand, 50);

        const R = await startReplica(P, path.join(dir, 'r.db'));
        let st = await converge(R, c, 'the first snapshot');
        assert.equal(count(R, /snapshot begins/), 1, 'one snapshot for a new replica');
        await assertSame(R, P, st, 'after the snapshot');

        await runLoad(P.addr, rand, TXNS);
        await exec1(c, 'CREATE TABLE extra (a TEXT, b REAL)');
        await exec1(c, "INSERT INTO extra VALUES ('x', 1.5), ('y', NULL)");
        st = await converge(R, c, 'the load');
        await assertSame(R, P, st, 'after the load');
        let s = await replicaStatus(R);
        assert.equal(s.snapshots, 1);
        assert.equal(s.lag_txids, 0);
        assert.equal(s.checksum_mismatches, 0);
        assert.ok(s.txns > 0 && s.applied_txid === Number(st.head_txid), `txns ${s.txns}`);

        // Its HTTP endpoint.
        const health = await httpGet(R, '/health');
        assert.equal(health.status, 200);
        const metrics = await httpGet(R, '/metrics');
        assert.match(metrics.body, new RegExp(`^boomerang_replica_applied_txid ${st.head_txid}$`, 'm'));
        assert.match(metrics.body, /^boomerang_replica_state\{state="LIVE"\} 1$/m);
        assert.equal((await httpGet(R, '/nope')).status, 404);

        // A clean restart resumes from the position, without a snapshot.
        const applied = s.applied_txid;
        assert.equal((await R.stop()).code, 0, 'SIGTERM exits 0');
        await runLoad(P.addr, rand, 100);
        const R2 = await startReplica(P, R.replica);
        st = await converge(R2, c, 'the restarted replica');
        assert.equal(count(R2, /snapshot begins/), 0, `no snapshot after a restart\n${R2.tail()}`);
        assert.match(R2.stderr(), new RegExp(`resuming after txid ${applied}\\b`));
        s = await replicaStatus(R2);
        assert.equal(s.snapshots, 0);
        await assertSame(R2, P, st, 'after the restart');
    } finally {
        c.close();
    }
});

itest(`kill -9 the replica during writes, ${CRASH_ROUNDS} rounds: it resumes without a snapshot and converges`, opts(60000 + CRASH_ROUNDS * 20000), async (t) => {
    const seed = testSeed();
    t.diagnostic(`seed ${seed} (rerun with BOOMERANG_SEED=${seed})`);
    const rand = rng(seed);
    const dir = makeTmpDir('boomerang-replica-crash-');
    const P = await startPrimary({ dir });
    const c = makeClient(P.addr);
    try {
        for (const sql of SCHEMA) await exec1(c, sql);
        await runLoad(P.addr, rand, 30);
        let R = await startReplica(P, path.join(dir, 'r.db'));
        await converge(R, c, 'the first snapshot');

        const load = backgroundLoad(P.addr, rand);
        try {
            for (let round = 0; round < CRASH_ROUNDS; round++) {
                // Let it apply a little, then kill it at an arbitrary point.
                const before = (await replicaStatus(R)).applied_txid;
                await waitFor(async () => (await replicaStatus(R)).applied_txid > before + 5, { timeoutMs: 15000, what: `round ${round}: progress` });
                await pause(Math.floor(rand() * 40)); // random kill delay: the crash lands anywhere in an apply
                await R.kill9();
                assert.deepEqual(sqlq(R.replica, 'PRAGMA integrity_check'), [['ok']], `round ${round}: integrity_check after kill -9`);
                R = await startReplica(P, R.replica);
                await waitFor(async () => (await replicaStatus(R)).state === 'LIVE' || (await replicaStatus(R)).state === 'CATCHING_UP', {
                    timeoutMs: 15000,
                    what: `round ${round}: the restarted replica to resume`,
                });
                // The status can answer before the log line reaches us through the pipe.
                await waitFor(() => /resuming after txid \d+/.test(R.stderr()), {
                    timeoutMs: 5000,
                    what: `round ${round}: "resuming after" in the replica's log`,
                });
                assert.equal(count(R, /snapshot begins/), 0, `round ${round}: no snapshot after kill -9\n${R.tail()}`);
            }
        } finally {
            const n = await load.stop();
            t.diagnostic(`${n} writes during the crashes`);
        }
        const st = await converge(R, c, 'after the crashes');
        await assertSame(R, P, st, 'after the crashes');
        const s = await replicaStatus(R);
        assert.equal(s.snapshots, 0);
        assert.equal(s.checksum_mismatches, 0);
    } finally {
        c.close();
    }
});

itest('the primary restarts: the replica reconnects and resumes', opts(90000), async (t) => {
    const rand = rng(testSeed());
    const dir = makeTmpDir('boomerang-replica-prestart-');
    let P = await startPrimary({ dir });
    let c = makeClient(P.addr);
    const R = await startReplica(P, path.join(dir, 'r.db'));
    try {
        for (const sql of SCHEMA) await exec1(c, sql);
        await runLoad(P.addr, rand, 100);
        await converge(R, c, 'before the primary restart');
        const port = P.port;

        c.close();
        assert.equal((await P.stop()).code, 0);
        await waitFor(async () => (await replicaStatus(R)).state === 'DISCONNECTED', { timeoutMs: 10000, what: 'the replica to notice' });
        P = await startPrimary({ dir, db: P.db, args: ['--listen', `127.0.0.1:${port}`] });
        c = makeClient(P.addr);
        await runLoad(P.addr, rand, 100);
        const st = await converge(R, c, 'after the primary restart');
        await assertSame(R, P, st, 'after the primary restart');
        const s = await replicaStatus(R);
        assert.equal(s.snapshots, 1, 'only the first snapshot');
        assert.ok(s.reconnects >= 1);
        assert.equal(count(R, /snapshot begins/), 1);
        t.diagnostic(`${s.reconnects} resubscriptions`);
    } finally {
        c.close();
    }
});

itest('the primary is replaced by another database: the replica re-snapshots and never mixes them', opts(90000), async () => {
    const dir = makeTmpDir('boomerang-replica-swap-');
    let P = await startPrimary({ dir, db: path.join(dir, 'one.db') });
    let c = makeClient(P.addr);
    const R = await startReplica(P, path.join(dir, 'r.db'));
    const mixed = [];
    let polls = 0;
    let polling = true;
    try {
        await exec1(c, 'CREATE TABLE one (k INTEGER PRIMARY KEY, v TEXT)');
        for (let i = 0; i < 20; i++) await exec1(c, 'INSERT INTO one (v) VALUES (?)', [`one-${i}`]);
        const first = await converge(R, c, 'the first database');
        const port = P.port;

        // A reader checks, on every read, that it sees exactly one of the two databases.
        const reader = (async () => {
            while (polling) {
                const [[one, two]] = sqlq(R.replica, "SELECT (SELECT count(*) FROM sqlite_schema WHERE name = 'one'), (SELECT count(*) FROM sqlite_schema WHERE name = 'two')");
                if (one + two !== 1) mixed.push([one, two]);
                polls++;
                await pause(1); // poll backoff
            }
        })();

        c.close();
        assert.equal((await P.stop()).code, 0);
        // The new database has its table from its first commit, so that no
        // state of it lacks "two" (an empty database would also be "neither").
        const init = path.join(dir, 'two.sql');
        fs.writeFileSync(init, 'CREATE TABLE two (k INTEGER PRIMARY KEY, w BLOB);\n');
        P = await startPrimary({ dir, db: path.join(dir, 'two.db'), args: ['--listen', `127.0.0.1:${port}`, '--init-sql', init] });
        c = makeClient(P.addr);
        for (let i = 0; i < 5; i++) await exec1(c, 'INSERT INTO two (w) VALUES (randomblob(3000))');
        const st = await converge(R, c, 'the second database');
        assert.notEqual(st.database_id, first.database_id);
        polling = false;
        await reader;
        assert.deepEqual(mixed, [], `reads that saw both databases or neither (of ${polls})`);
        assert.ok(polls > 0);
        await assertSame(R, P, st, 'after the swap');
        assert.deepEqual(sqlq(R.replica, "SELECT count(*) FROM sqlite_schema WHERE name = 'one'"), [[0]]);
        const s = await replicaStatus(R);
        assert.equal(s.snapshots, 2);
        assert.equal(s.database_id, st.database_id);
        assert.equal(count(R, /snapshot begins/), 2);
    } finally {
        polling = false;
        c.close();
    }
});
