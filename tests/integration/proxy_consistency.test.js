// Tokens and consistency across sidecars (DESIGN.md "Tokens and
// consistency", notes/proxy-contract.md "Headers"):
//  - read-your-writes across two sidecars with Boomerang-Token (the real
//    client, given a fetch that carries the token): zero misses;
//  - monotonic reads for a client alternating between sidecars;
//  - Boomerang-Consistency strong, primary and local; Max-Staleness-Ms;
//  - every fallback when the wait budget runs out (error: 503 REPLICA_BEHIND
//    with Retry-After and the lag; stale: Boomerang-Stale: 1; primary: the
//    read forwarded), and a write acknowledged with Boomerang-Applied: 0;
//  - forged, tampered and other-database tokens: 400.
//
// Topology: primary P; sidecar A straight on P; sidecar B behind relay RB
// (20 ms one-way), so that B trails A by at least 20 ms and a read on B
// right after a write on A would miss without the token. A cut of RB
// (partition) stops B's stream.
//
// Environment:
//   BOOMERANG_RYW2_N   write-on-A, read-on-B rounds (default 200)
//   BOOMERANG_MONO_N   alternating reads in the monotonic-reads test (default 300)

import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { after, before } from 'node:test';

import { createClient } from '@libsql/client';

import {
    assertHttpError,
    exec1,
    HV,
    hExecute,
    hranaPost,
    hRows,
    itest,
    makeClient,
    makeTmpDir,
    metricSum,
    metricValue,
    okResult,
    skipNoProxy,
    skipNoRelay,
    startPrimary,
    startProxy,
    startRelay,
    stopAll,
    waitFor,
    spawnTracked,
} from './helpers.js';

const RYW2_N = Number(process.env.BOOMERANG_RYW2_N || 200);
const MONO_N = Number(process.env.BOOMERANG_MONO_N || 300);
const skip = skipNoProxy() || skipNoRelay() ? 'no boomerang-proxy or relay (set BOOMERANG_BIN)' : undefined;
const opts = (timeout = 120000) => ({ timeout, ...(skip ? { skip } : {}) });

const FALLBACKS = 'boomerang_proxy_fallbacks_total';
const READS = 'boomerang_proxy_reads_total';

let P; // primary
let gP; // gRPC client on P (writes that bypass every sidecar)
let A; // sidecar on P
let RB; // relay between B and P, 20 ms one-way
let B; // sidecar behind RB
let secretFile;
let nextId = 1;
const clients = [];

before(async () => {
    if (skip) return;
    const dir = makeTmpDir('boomerang-consistency-');
    secretFile = path.join(dir, 'cluster-secret');
    fs.writeFileSync(secretFile, `${crypto.randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
    P = await startPrimary();
    gP = makeClient(P.addr);
    await exec1(gP, 'CREATE TABLE kv (id INTEGER PRIMARY KEY, v TEXT NOT NULL)');
    await exec1(gP, 'CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)');
    await exec1(gP, 'INSERT INTO counter VALUES (1, 0)');
    await exec1(gP, 'CREATE TABLE pad (id INTEGER PRIMARY KEY, data BLOB NOT NULL)');
    const secret = ['--cluster-secret-file', secretFile];
    A = await startProxy({ primaryUrl: P, args: secret });
    RB = await startRelay({ target: P, delayMs: 20 });
    B = await startProxy({ primaryUrl: RB, args: secret });
    await A.waitReady();
    await B.waitReady(60000);
});

after(async () => {
    for (const c of clients) c.close();
    if (gP) gP.close();
    await stopAll();
});

// ---------------------------------------------------------------- plumbing

/** A fetch for createClient that sends state.token as Boomerang-Token and keeps the latest one answered. */
function sessionFetch(state) {
    return async (req) => {
        const headers = new Headers(req.headers);
        if (state.token) headers.set('Boomerang-Token', state.token);
        const resp = await fetch(req.url, { method: req.method, headers, body: await req.arrayBuffer() });
        const t = resp.headers.get('boomerang-token');
        if (resp.ok) {
            assert.ok(t, `a 200 pipeline answer from ${req.url} carries a Boomerang-Token`);
            state.token = t;
        }
        return resp;
    };
}

/** Write row id through sidecar px (raw Hrana): asserts success, returns the answer. */
async function writeRow(px, id, headers = {}) {
    const r = await hranaPost(px, { requests: [hExecute('INSERT INTO kv VALUES (?, ?)', [HV.int(id), HV.text(`v${id}`)]), { type: 'close' }] }, { headers });
    okResult(r, 0, `write ${id}`);
    assert.ok(r.headers['boomerang-token'], 'a write answer carries its token');
    return r;
}

/** Read row id through px: { r, ms, found } (found is null when the answer is not 200). */
async function readRow(px, id, headers = {}) {
    const t0 = Date.now();
    const r = await hranaPost(px, { requests: [hExecute('SELECT v FROM kv WHERE id = ?', [HV.int(id)]), { type: 'close' }] }, { headers });
    const ms = Date.now() - t0;
    if (r.status !== 200) return { r, ms, found: null };
    const rows = hRows(okResult(r, 0, `read ${id}`));
    return { r, ms, found: rows.length === 1 && rows[0][0] === `v${id}` };
}

async function appliedTxid(px) {
    return BigInt((await px.status()).applied_txid);
}

/** Counter deltas of sidecar px across fn. */
async function counted(px, fn) {
    const a = await px.metrics();
    const out = await fn();
    const b = await px.metrics();
    const d = (name, labels) => metricValue(b, name, labels) - metricValue(a, name, labels);
    return {
        out,
        local: d(READS, { route: 'local' }),
        primary: d(READS, { route: 'primary' }),
        fbPrimary: d(FALLBACKS, { kind: 'primary' }),
        fbError: d(FALLBACKS, { kind: 'error' }),
        fbStale: d(FALLBACKS, { kind: 'stale' }),
        unapplied: d('boomerang_proxy_writes_unapplied_total'),
        waits: metricSum(b, 'boomerang_proxy_wait_seconds_count') - metricSum(a, 'boomerang_proxy_wait_seconds_count'),
    };
}

/**
 * Cut RB and prove the cut is in force: write through A until one write is
 * not reaching B (B's applied txid stays below A's for a second, 50 times
 * the relay's delay). Returns { id, token } of that write, which B lacks.
 */
async function cutB() {
    await RB.partition();
    for (let attempt = 0; attempt < 20; attempt++) {
        const id = nextId++;
        const w = await writeRow(A, id);
        const want = await appliedTxid(A);
        try {
            await waitFor(async () => (await appliedTxid(B)) >= want, { timeoutMs: 1000, what: 'B to apply (it should not: cut)' });
        } catch {
            return { id, token: w.headers['boomerang-token'] };
        }
    }
    throw new Error('the relay partition never stopped B from applying');
}

/** Heal RB and wait until B has applied everything A has. */
async function healB() {
    await RB.heal();
    const want = await appliedTxid(A);
    await waitFor(async () => (await appliedTxid(B)) >= want, { timeoutMs: 90000, what: 'B to catch up after the heal' });
    await B.waitReady(90000);
}

// ---------------------------------------------------------------- tests

itest(`read-your-writes across two sidecars with the token: ${RYW2_N} rounds, zero misses`, opts(300000), async (t) => {
    const state = { token: null };
    const cA = createClient({ url: A.url, fetch: sessionFetch(state) });
    const cB = createClient({ url: B.url, fetch: sessionFetch(state) });
    clients.push(cA, cB);
    await cA.execute('CREATE TABLE ryw2 (id INTEGER PRIMARY KEY, v TEXT NOT NULL)');
    // B must have the table before the rounds: a statement that does not
    // prepare on a replica goes to the primary (README "Routing"), and the
    // rounds count B's forwarded reads.
    const created = await appliedTxid(A);
    await waitFor(async () => (await appliedTxid(B)) >= created, { timeoutMs: 10000, what: 'B to have the table' });
    let misses = 0;
    let controlMisses = 0;
    const missed = [];
    const d = await counted(B, async () => {
        for (let i = 1; i <= RYW2_N; i++) {
            await cA.execute({ sql: 'INSERT INTO ryw2 VALUES (?, ?)', args: [BigInt(i), `v${i}`] });
            // Control: the same read on B without the token ("local") mostly
            // misses, which shows the token is what makes the next one right.
            const ctl = await hranaPost(B, { requests: [hExecute('SELECT count(*) FROM ryw2 WHERE id = ?', [HV.int(i)]), { type: 'close' }] }, { headers: { 'Boomerang-Consistency': 'local' } });
            if (hRows(okResult(ctl, 0, 'control read'))[0][0] === 0n) controlMisses++;
            const rs = await cB.execute({ sql: 'SELECT v FROM ryw2 WHERE id = ?', args: [BigInt(i)] });
            if (rs.rows.length !== 1 || rs.rows[0].v !== `v${i}`) {
                misses++;
                if (missed.length < 10) missed.push(i);
            }
        }
    });
    t.diagnostic(`misses ${misses}; control reads without the token that missed: ${controlMisses}/${RYW2_N}`);
    assert.equal(misses, 0, `reads on B that missed A's write: ${missed.join(', ')}`);
    assert.ok(controlMisses > 0, 'B never trailed A: the test would not see a missing token');
    assert.equal(d.primary, 0, 'B waited and read locally: nothing forwarded');
    assert.ok(d.local >= 2 * RYW2_N, `B's local reads: ${d.local}`);
    assert.ok(d.waits >= 1, 'boomerang_proxy_wait_seconds counted the reads that waited for the token');
});

itest(`monotonic reads for a client alternating between sidecars (${MONO_N} reads)`, opts(300000), async (t) => {
    let stop = false;
    let writes = 0;
    const writer = (async () => {
        while (!stop) {
            await exec1(gP, 'UPDATE counter SET n = n + 1 WHERE id = 1');
            writes++;
        }
    })();
    const read = async (px, headers) => {
        const r = await hranaPost(px, { requests: [hExecute('SELECT n FROM counter WHERE id = 1'), { type: 'close' }] }, { headers });
        return { n: hRows(okResult(r, 0, 'counter read'))[0][0], token: r.headers['boomerang-token'] };
    };
    try {
        await waitFor(() => writes >= 20, { timeoutMs: 10000, what: 'the writer to get going' });
        // Control: no token. B trails A by the relay's delay, so going A -> B goes back in time.
        let back = 0;
        let last = -1n;
        for (let i = 0; i < 100; i++) {
            const { n } = await read(i % 2 ? B : A, {});
            if (n < last) back++;
            last = n;
        }
        // With the token of the previous answer: never back in time.
        let token = null;
        let regressions = 0;
        const seen = [];
        last = -1n;
        for (let i = 0; i < MONO_N; i++) {
            const { n, token: tk } = await read(i % 2 ? B : A, token ? { 'Boomerang-Token': token } : {});
            assert.ok(tk, 'every answer carries a token');
            if (n < last) {
                regressions++;
                if (seen.length < 10) seen.push(`${last}->${n} at ${i}`);
            }
            last = n;
            token = tk;
        }
        t.diagnostic(`regressions with tokens ${regressions}; without tokens ${back}/100; writes ${writes}`);
        assert.equal(regressions, 0, `reads went back in time: ${seen.join(', ')}`);
        assert.ok(back > 0, 'without tokens no read went back: the sidecars never diverged, the test proves nothing');
    } finally {
        stop = true;
        await writer;
    }
});

itest('consistency strong and primary see a write made straight on the primary; bad headers are 400', opts(), async (t) => {
    // strong: one Status round trip for the head, then a local read.
    let misses = 0;
    let controlMisses = 0;
    const d = await counted(B, async () => {
        for (let i = 0; i < 20; i++) {
            const id = nextId++;
            await exec1(gP, 'INSERT INTO kv VALUES (?, ?)', [BigInt(id), `v${id}`]);
            if (!(await readRow(B, id, { 'Boomerang-Consistency': 'local' })).found) controlMisses++;
            if (!(await readRow(B, id, { 'Boomerang-Consistency': 'strong' })).found) misses++;
        }
    });
    t.diagnostic(`strong: misses ${misses}, control (local) misses ${controlMisses}/20`);
    assert.equal(misses, 0, 'strong reads that missed a committed write');
    assert.ok(controlMisses > 0, 'B was never behind: strong was not put to the test');
    assert.equal(d.primary, 0, 'strong reads locally after the Status round trip');
    assert.equal(d.local, 40);

    // primary: the read runs on the primary.
    const id = nextId++;
    await exec1(gP, 'INSERT INTO kv VALUES (?, ?)', [BigInt(id), `v${id}`]);
    const dp = await counted(B, async () => {
        const { r, found } = await readRow(B, id, { 'Boomerang-Consistency': 'primary' });
        assert.equal(r.status, 200, r.body);
        assert.equal(found, true, 'consistency primary sees the write at once');
        assert.ok(r.headers['boomerang-token']);
    });
    assert.equal(dp.primary, 1, 'counted as forwarded');
    assert.equal(dp.local, 0);
    assert.equal(dp.fbPrimary, 0, 'asked for, not a fallback');

    // session is the default and explicit; local and session answer 200.
    for (const c of ['session', 'local']) {
        const { r } = await readRow(A, id, { 'Boomerang-Consistency': c });
        assert.equal(r.status, 200, `${c}: ${r.body}`);
    }
    // Max-Staleness on a healthy sidecar with a generous bound: local.
    const ds = await counted(A, async () => {
        const { r, found } = await readRow(A, id, { 'Boomerang-Max-Staleness-Ms': '60000' });
        assert.equal(r.status, 200, r.body);
        assert.equal(found, true);
    });
    assert.equal(ds.local, 1);
    assert.equal(ds.primary, 0);

    // Bad header values.
    const bad = [
        { 'Boomerang-Consistency': 'eventual' },
        { 'Boomerang-Max-Wait-Ms': 'soon' },
        { 'Boomerang-Max-Wait-Ms': '-1' },
        { 'Boomerang-Fallback': 'retry' },
        { 'Boomerang-Max-Staleness-Ms': '12abc' },
    ];
    for (const h of bad) {
        const { r } = await readRow(A, id, h);
        assertHttpError(r, 400, 'BAD_HEADER', `header ${JSON.stringify(h)}`);
    }
});

itest('every fallback with B cut off: error (503), stale, local ignores the token, staleness, then heal', opts(180000), async () => {
    const { id, token } = await cutB();
    const H = { 'Boomerang-Token': token };
    try {
        // fallback=error: 503 REPLICA_BEHIND, Retry-After, the lag.
        let d = await counted(B, async () => {
            const { r, ms } = await readRow(B, id, { ...H, 'Boomerang-Fallback': 'error', 'Boomerang-Max-Wait-Ms': '300' });
            const j = assertHttpError(r, 503, 'REPLICA_BEHIND', 'fallback error');
            const ra = r.headers['retry-after'];
            assert.match(String(ra), /^[0-9]+$/, `Retry-After is whole seconds: ${ra}`);
            assert.ok(Number(ra) >= 1, `Retry-After ${ra}`);
            assert.ok(Number.isInteger(j.lag_ms) && j.lag_ms >= 0, `lag_ms ${j.lag_ms}`);
            assert.ok(Number.isInteger(j.lag_txids) && j.lag_txids >= 0, `lag_txids ${j.lag_txids}`);
            assert.ok(ms < 4000, `answered within the request's budget, not the default: ${ms} ms`);
        });
        assert.equal(d.fbError, 1, 'fallbacks_total{kind="error"}');
        assert.equal(d.primary, 0);

        // fallback=stale: answered from the replica, marked.
        d = await counted(B, async () => {
            const { r, found, ms } = await readRow(B, id, { ...H, 'Boomerang-Fallback': 'stale', 'Boomerang-Max-Wait-Ms': '300' });
            assert.equal(r.status, 200, r.body);
            assert.equal(r.headers['boomerang-stale'], '1', 'marked stale');
            assert.equal(found, false, 'stale means from the cut-off replica, which lacks the row');
            assert.ok(ms < 4000, `${ms} ms`);
        });
        assert.equal(d.fbStale, 1, 'fallbacks_total{kind="stale"}');

        // local ignores the token: at once, without the row, not an error.
        const { r: rl, found: fl, ms: msl } = await readRow(B, id, { ...H, 'Boomerang-Consistency': 'local' });
        assert.equal(rl.status, 200, rl.body);
        assert.equal(fl, false);
        assert.ok(msl < 2000, `local did not wait: ${msl} ms`);

        // Without a token B is at its floor: a session read is answered (locally).
        const { r: rn } = await readRow(B, 1, {});
        assert.equal(rn.status, 200, rn.body);

        // Max-Staleness: with no heartbeat getting through, B soon cannot
        // claim to be within 200 ms of the primary.
        await waitFor(
            async () => {
                const { r } = await readRow(B, 1, { 'Boomerang-Max-Staleness-Ms': '200', 'Boomerang-Fallback': 'error', 'Boomerang-Max-Wait-Ms': '100' });
                if (r.status === 200) return false;
                assertHttpError(r, 503, 'REPLICA_BEHIND', 'max staleness while cut off');
                return true;
            },
            { timeoutMs: 20000, what: 'B to refuse a 200 ms staleness bound while cut off' },
        );
    } finally {
        await healB();
    }
    // Healed: the token's write is there, through a plain session read.
    const { r, found } = await readRow(B, id, H);
    assert.equal(r.status, 200, r.body);
    assert.equal(found, true, 'after the heal B has the write');
});

itest('fallback=primary: a sidecar far behind forwards the read and answers right', opts(180000), async () => {
    const RC = await startRelay({ target: P, delayMs: 200 });
    const C = await startProxy({ primaryUrl: RC, args: ['--cluster-secret-file', secretFile] });
    await C.waitReady(90000);
    const id = nextId++;
    const w = await writeRow(A, id);
    const d = await counted(C, async () => {
        // C hears of the write >= 200 ms after A applied it; the budget is 20 ms.
        const { r, found } = await readRow(C, id, { 'Boomerang-Token': w.headers['boomerang-token'], 'Boomerang-Fallback': 'primary', 'Boomerang-Max-Wait-Ms': '20' });
        assert.equal(r.status, 200, r.body);
        assert.equal(found, true, 'the forwarded read sees the write');
        assert.notEqual(r.headers['boomerang-stale'], '1');
    });
    assert.equal(d.fbPrimary, 1, 'fallbacks_total{kind="primary"} grew');
    assert.equal(d.primary, 1, 'reads_total{route="primary"} grew');
    assert.equal(d.local, 0);
    assert.equal((await C.stop()).code, 0, 'the sidecar exits 0 on SIGTERM');
    await RC.stop();
});

// Holds the write lock of an SQLite file from another process for argv[2] ms
// (Debian's python3 sqlite3 module), so the sidecar's applier cannot apply.
const PY_HOLD_LOCK = [
    'import sqlite3, sys, time',
    'c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)',
    'c.execute("BEGIN IMMEDIATE")',
    'print("locked", flush=True)',
    'time.sleep(int(sys.argv[2]) / 1000)',
    'c.execute("ROLLBACK")',
].join('\n');

itest('a write whose apply is late is a 200 with Boomerang-Applied: 0, never an error, and still read back', opts(120000), async () => {
    // The sidecar's writes and its replication stream share one connection,
    // so a relay cut stops both. What can be held up is the *apply*: another
    // process holds the replica's write lock, so the write commits on the
    // primary but cannot be applied within the budget.
    const D = await startProxy({ primaryUrl: P, args: ['--max-wait-ms', '300'] });
    await D.waitReady();
    const holder = spawnTracked('python3', ['-c', PY_HOLD_LOCK, D.replica, '3000']);
    await waitFor(() => holder.stdout().includes('locked'), { what: 'the lock holder to hold the replica' });
    const id = nextId++;
    const d = await counted(D, async () => {
        const w = await writeRow(D, id); // asserts 200, an ok result and a token
        assert.equal(w.headers['boomerang-applied'], '0', 'the answer says the write is not applied yet');
        // Read-your-writes holds anyway: the floor makes the read wait, then
        // fall back to the primary.
        const { r, found } = await readRow(D, id);
        assert.equal(r.status, 200, r.body);
        assert.equal(found, true, 'the write just acknowledged is read back');
    });
    assert.equal(d.unapplied, 1, 'writes_unapplied_total counts it');
    assert.equal(d.fbPrimary, 1, `the read fell back to the primary: ${JSON.stringify({ ...d, out: undefined })}`);
    // Once the lock is gone the replica applies it, and reads are local again.
    const after = await waitFor(
        async () => {
            const x = await counted(D, () => readRow(D, id));
            return x.local === 1 && x.out.found ? x : null;
        },
        { timeoutMs: 20000, what: 'the write to be applied once the lock is released' },
    );
    assert.equal(after.primary, 0);
    assert.equal((await D.stop()).code, 0, 'the sidecar exits 0 on SIGTERM');
});

itest('forged, tampered and other-database tokens are rejected with 400', opts(), async () => {
    const id = nextId++;
    const w = await writeRow(A, id);
    const token = w.headers['boomerang-token'];
    assert.equal((await readRow(B, id, { 'Boomerang-Token': token })).r.status, 200, 'a genuine token from A is good on B');

    for (const forged of ['garbage', 'x'.repeat(300), '!!!!', `${token}x`]) {
        const { r } = await readRow(A, id, { 'Boomerang-Token': forged });
        assertHttpError(r, 400, 'TOKEN_INVALID', `token ${forged.slice(0, 40)}`);
    }
    // One character changed anywhere but the last (which may hold only padding bits).
    for (const frac of [0.1, 0.5, 0.8]) {
        const i = Math.floor((token.length - 1) * frac);
        const c = token[i] === 'A' ? 'B' : 'A';
        const tampered = token.slice(0, i) + c + token.slice(i + 1);
        const { r } = await readRow(A, id, { 'Boomerang-Token': tampered });
        assert.equal(r.status, 400, `tampered at ${i}: ${r.status} ${r.body}`);
        const j = assertHttpError(r, 400, undefined, `tampered at ${i}`);
        assert.ok(['TOKEN_INVALID', 'TOKEN_OTHER_DATABASE'].includes(j.code), `tampered at ${i}: code ${j.code}`);
    }
    // The same database, but a sidecar with another cluster secret: bad MAC.
    const dir = makeTmpDir('boomerang-secret2-');
    const other = path.join(dir, 'secret');
    fs.writeFileSync(other, `${crypto.randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
    const F = await startProxy({ primaryUrl: P, args: ['--cluster-secret-file', other] });
    await F.waitReady();
    let r = (await readRow(F, id, { 'Boomerang-Token': token })).r;
    assertHttpError(r, 400, 'TOKEN_INVALID', 'a token MACed with another secret');

    // Another database (another primary), same secret: TOKEN_OTHER_DATABASE.
    const P2 = await startPrimary();
    const g2 = makeClient(P2.addr);
    try {
        await exec1(g2, 'CREATE TABLE kv (id INTEGER PRIMARY KEY, v TEXT NOT NULL)');
    } finally {
        g2.close();
    }
    const E = await startProxy({ primaryUrl: P2, args: ['--cluster-secret-file', secretFile] });
    await E.waitReady();
    const we = await writeRow(E, 1);
    r = (await readRow(A, id, { 'Boomerang-Token': we.headers['boomerang-token'] })).r;
    assertHttpError(r, 400, 'TOKEN_OTHER_DATABASE', 'a token of another database');
    r = (await readRow(E, 1, { 'Boomerang-Token': token })).r;
    assertHttpError(r, 400, 'TOKEN_OTHER_DATABASE', 'the reverse');
    // Every sidecar is still up.
    for (const px of [A, B, E, F]) assert.equal((await px.get('/health')).status, 200);
    assert.equal((await E.stop()).code, 0, 'the sidecar exits 0 on SIGTERM');
    assert.equal((await F.stop()).code, 0, 'the sidecar exits 0 on SIGTERM');
    await P2.stop();
});
